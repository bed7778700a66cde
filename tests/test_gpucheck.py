"""`python -m glocal_core gpu-check` keeps its budget and says what it skipped."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from glocal_core.repro import gpucheck as gpc
from glocal_core.repro import experiments as ex
from glocal_core.repro.bench import PAPER, BenchConfig, predicted_global_ratio

TINY = BenchConfig(steps=20, tau=5, sigma=4, m=2, batch_size=32, val_size=64, train_size=512,
                   model="mlp")


def _check_report(report: dict, budget: float) -> None:
    assert report["device"]["backend"] and report["device"]["device_kind"]
    assert report["versions"]["jax"] and report["versions"]["python"]
    assert report["wall_seconds"] <= budget + 3 and report["budget_seconds"] == budget
    bench = report["bench"]
    assert "steps (T) 10000 → " in bench["reduction"]
    if bench["status"] == "ran":
        assert set(bench["result"]["ratios"]) == {"glocal/local", "global/glocal", "glocal/none"}
    else:
        assert any(s.startswith("the bench") for s in report["skipped"])
    plan = gpc.dry_run_plan()
    assert set(report["dry_runs"]) == set(gpc.FULL_EXPERIMENTS)
    for name, section in report["dry_runs"].items():
        problems = [s for s in plan if s["experiment"] == name]
        measured = {row["label"] for row in section["rows"]}
        for stage in problems:  # every problem either measured or listed with the reason
            labels = {spec.label for spec in stage["runs"]}
            assert labels <= measured or any(
                s.startswith(gpc._describe(stage)) for s in section["skipped"])
        for skip in section["skipped"]:
            assert skip == "not requested" or skip in report["skipped"]


def test_a_tiny_budget_on_this_cpu_writes_a_complete_report(tmp_path):
    out = tmp_path / "report.json"
    budget = 30
    report = gpc.gpu_check(budget_seconds=budget, out=out, bench=TINY, bench_steps=20,
                           experiments=("fig4", "table3"), bench_share=0.6, progress=False)
    assert json.loads(out.read_text()) == json.loads(json.dumps(report, default=gpc._plain))
    _check_report(report, budget)
    bench = report["bench"]
    assert "model lenet → mlp" in bench["reduction"]
    if bench["status"] == "ran":  # a few seconds on a CPU, unless others share it
        assert bench["T"] in (10, 15, 20) and f"steps (T) 10000 → {bench['T']}" in \
            bench["reduction"]
    for name in ("fig2", "fig3", "table2"):
        assert report["dry_runs"][name]["skipped"][0] == "not requested"
        assert not report["dry_runs"][name]["rows"]
    assert "skipped" in gpc.format_gpu_check(report)


def test_the_cli_keeps_a_budget_shorter_than_any_stage(tmp_path):
    out = tmp_path / "gpu.json"
    budget = 12
    result = subprocess.run(
        [sys.executable, "-m", "glocal_core", "gpu-check", "--budget", str(budget), "--out",
         str(out)], capture_output=True, text=True, check=True, timeout=60,
        env={**os.environ, "GLOCAL_CACHE_DIR": str(tmp_path / "cache")},
    )
    report = json.loads(out.read_text())
    _check_report(report, budget)
    assert report["bench"]["T_wanted"] == 1000 and report["skipped"]
    assert f"report: {out}" in result.stdout and "skipped (" in result.stdout
    assert not (tmp_path / "cache").exists(), "the GPU check cached something"


def test_bench_steps_follow_the_probe():
    probe = {"config": {"steps": 200, "tau": 100},
             "seconds": {"none": 1.0, "local": 2.0, "glocal": 2.0,
                         "global": 2.0 * predicted_global_ratio(200, 100)},
             "compile_seconds": {"none": 1.0, "local": 1.0, "global": 1.0, "glocal": 1.0}}
    # T = 1000: 5 × (1 + 2 + 2) + 10 · 1000 · 5.5 / 1000 per global step ... plus 4 s compile
    expected = 5 * 5.0 + (2.0 / 200) * 1000 * predicted_global_ratio(1000, 100) + 4.0
    assert gpc.estimate_bench_seconds(probe, 1000) == pytest.approx(expected)
    assert gpc.choose_bench_steps(probe, wanted=1000, seconds=expected) == 1000
    assert gpc.choose_bench_steps(probe, wanted=1000, seconds=expected - 1) == 900
    assert gpc.choose_bench_steps(probe, wanted=1000, seconds=1.0) is None


def test_the_reduction_names_what_changed_and_what_was_kept():
    text = gpc.reduction_statement(dataclasses.replace(PAPER, steps=1000))
    assert text.startswith("reduced from the paper's workload: steps (T) 10000 → 1000; kept: ")
    for kept in ("tau 100", "sigma 80", "m 10", "val_size 6000", "model lenet"):
        assert kept in text
    assert gpc.reduction_statement(PAPER) == "the paper's workload, unreduced"


def test_the_dry_runs_take_the_experiments_in_turns():
    plan = gpc.dry_run_plan()
    assert [s["experiment"] for s in plan[:5]] == list(gpc.FULL_EXPERIMENTS)
    for name in gpc.FULL_EXPERIMENTS:
        exp = ex.experiment(name, "full")
        runs = [spec for s in plan if s["experiment"] == name for spec in s["runs"]]
        assert len(runs) == (len(exp.runs) or 4)  # table3: the bench's four strategies

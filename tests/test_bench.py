import dataclasses

import numpy as np
import pytest

import glocal_core as gc
import glocal_core.repro.tables as gt
from glocal_core.repro.bench import (
    BenchConfig,
    run_bench,
    PAPER,
    PAPER_SECONDS,
    format_table,
    predicted_global_ratio,
)

TINY = BenchConfig(steps=4, tau=2, sigma=2, m=1, batch_size=4, val_size=8, train_size=16,
                      model="mlp")


@pytest.fixture(scope="module")
def report():
    return run_bench(TINY, progress=False)


def test_report_times_every_strategy(report):
    assert report["config"] == dataclasses.asdict(TINY)
    for field in ("seconds", "compile_seconds"):
        assert tuple(report[field]) == gc.STRATEGIES
        assert all(np.isfinite(s) and s >= 0 for s in report[field].values())
    assert all(s > 0 for s in report["seconds"].values())
    assert report["dmd_ms_per_outer_step"] > 0
    assert isinstance(report["device"], str) and report["device"]


def test_ratios_are_computed_from_the_seconds(report):
    s, r = report["seconds"], report["ratios"]
    assert r == pytest.approx({"glocal/local": s["glocal"] / s["local"],
                               "global/glocal": s["global"] / s["glocal"],
                               "glocal/none": s["glocal"] / s["none"]}, rel=1e-12)
    assert report["predicted_global/glocal"] == predicted_global_ratio(TINY.steps, TINY.tau)


def test_predicted_global_ratio_counts_playout_steps():
    # S windows: `global` plays out T − sτ steps after each window s, (S + 1)/2 in ratio.
    assert predicted_global_ratio(4, 2) == 1.5
    assert predicted_global_ratio(100, 25) == 2.5
    assert predicted_global_ratio(10_000, 100) == pytest.approx(50.5)
    assert predicted_global_ratio(100, 100) == 1.0


def test_format_table_shows_the_report_beside_the_paper(report):
    table = format_table(report)
    for name in gc.STRATEGIES:
        assert f"{report['seconds'][name]:.2f}" in table
        assert f"{PAPER_SECONDS[name]:.1f}" in table
    # the book's Table 3 and ratios, formatted once in `tables`
    assert str(gt.runtime_table(report)) in table and str(gt.runtime_ratios(report)) in table


def test_paper_workload_is_the_papers():
    assert (PAPER.steps, PAPER.tau, PAPER.sigma, PAPER.m) == (10_000, 100, 80, 10)
    assert PAPER.batch_size == 128 and PAPER.model == "lenet"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": "resnet"}, "choose 'lenet' or 'mlp'"),
        ({"tau": 3}, "not a multiple of tau=3"),
        ({"sigma": 3}, "1 <= m < sigma <= tau"),
    ],
)
def test_bad_config_says_what_is_wrong(change, message):
    with pytest.raises(ValueError, match=message):
        run_bench(dataclasses.replace(TINY, **change), progress=False)

"""The trust benchmark: its arithmetic on hand-made runs, and one tiny setup run for real."""

import json

import numpy as np
import pytest

import glocal_core.repro.trust as gtr
from glocal_core.repro.cli import main


def _runs(finals: dict[str, list[float]]) -> dict:
    class Run:
        def __init__(self, value):
            self.test_metric = np.array([value])
    return {strategy: [Run(v) for v in values] for strategy, values in finals.items()}


def _rows(finals, setup="digits-cnn", monkeypatch=None):
    runs = _runs(finals)
    scores = type("Scores", (), {"error": np.array([0.5]), "sign": np.array([1.0])})
    monkeypatch.setattr(gtr, "estimator_scores", lambda result, method: scores)
    return {r.strategy: r for r in gtr.trust_rows(gtr.TrustRuns({setup: runs}, {setup: 1.0}))}


def test_rows_pair_each_seed_with_its_local_twin(monkeypatch):
    local = [0.90, 0.92, 0.94, 0.96]
    finals = {s: local for s in gtr.STRATEGIES}
    finals["glocal-cv"] = [0.91, 0.93, 0.95, 0.97]        # one point better on every seed
    finals["glocal-paper"] = [0.80, 0.92, 0.94, 0.96]     # ten points behind on seed 1
    finals["global"] = [0.94, 0.96]                       # two seeds, four points ahead
    rows = _rows(finals, monkeypatch=monkeypatch)
    assert rows["glocal-cv"].versus_local == pytest.approx(0.01)
    assert rows["glocal-cv"].versus_local_se == pytest.approx(0.0, abs=1e-12)
    assert rows["glocal-cv"].gap_closed == pytest.approx(0.25)
    assert rows["glocal-paper"].far_behind == 1 and rows["glocal-paper"].seeds == 4
    assert rows["glocal-paper"].far_ahead == 0 and rows["global"].far_ahead == 2
    assert gtr.meets_targets(rows["glocal-cv"])
    assert not gtr.meets_targets(rows["glocal-paper"]._replace(far_behind=2))
    assert rows["glocal-mean"].gap_closed == pytest.approx(0.0)


def test_a_loss_is_compared_relative_to_local(monkeypatch):
    local = [1.0, 2.0, 1.0, 2.0]
    finals = {s: local for s in gtr.STRATEGIES}
    finals["glocal-cv"] = [1.1, 2.2, 1.1, 2.2]            # 10% worse everywhere
    finals["global"] = [1.0, 2.0]                         # no gap
    rows = _rows(finals, setup="diabetes-mlp", monkeypatch=monkeypatch)
    assert rows["glocal-cv"].versus_local == pytest.approx(-0.1)
    assert rows["glocal-cv"].far_behind == 4
    assert not gtr.meets_targets(rows["glocal-cv"])
    assert np.isnan(rows["glocal-cv"].gap_closed)
    assert "no gap" in gtr.trust_table(list(rows.values())).markdown()


def test_unknown_setup_is_an_error():
    with pytest.raises(ValueError, match="digits-cnn"):
        gtr.run_trust(["cifar"])


def test_a_tiny_setup_runs_every_strategy_and_the_cli_prints_it(monkeypatch, tmp_path, capsys):
    tiny = gtr.Setup("noisy quadratic, tiny", gtr.SETUPS["nqm-high"].build, 200, 20, 16, 3,
                     seeds=2, global_seeds=1, loss=True)
    monkeypatch.setattr(gtr, "SETUPS", {"tiny": tiny})
    trust = gtr.load_or_run(tmp_path, ["tiny"], progress=False)
    assert {s: len(r) for s, r in trust.runs["tiny"].items()} == {
        **{s: 2 for s in gtr.STRATEGIES}, "global": 1}
    default = trust.runs["tiny"]["glocal-cv"][0]
    assert default.used.shape == (10, 1) and set(default.used.ravel()) <= {
        "extrapolated", "mean", "local"}
    assert gtr.cache_path(tmp_path, "tiny").exists()
    monkeypatch.setattr(gtr, "run_trust", lambda *a, **k: pytest.fail("not read from cache"))
    cached = gtr.load_or_run(tmp_path, ["tiny"])
    np.testing.assert_array_equal(cached.runs["tiny"]["glocal-cv"][1].hyperparameters,
                                  trust.runs["tiny"]["glocal-cv"][1].hyperparameters)
    assert main(["fidelity", "--trust", "--json", "--cache-dir", str(tmp_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [r["strategy"] for r in printed["rows"]] == list(gtr.STRATEGIES)
    row = next(r for r in printed["rows"] if r["strategy"] == "glocal-cv")
    assert np.isfinite(row["error"]) and 0 <= row["sign"] <= 1

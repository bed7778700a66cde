"""The fidelity benchmark's scores and its choice of estimator."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import glocal_core as gc
import glocal_core.repro.fidelity as gf


def _global_run_with_trajectories():
    a = jnp.array([2.0, 1.0])
    problem = gc.quadratic_problem(a, a / 1.5, gc.sgd(0.1, 0.5, 0.2, learn=("weight_decay",)),
                                   noise=0.3)
    config = gc.OuterConfig("global", total_steps=200, tau=40, sigma=30, m=4,
                            keep_trajectories=True)
    return gc.run_outer(problem, config, key=jax.random.key(0), progress=False)


def test_estimator_scores_against_the_global_hypergradient():
    run = _global_run_with_trajectories()
    keep = run.step < run.config.total_steps
    target = run.hypergradient[keep]
    local = gf.estimator_scores(run, "local")
    np.testing.assert_allclose(local.error, gf.relative_error(run.local_hypergradient[keep], target))
    assert not local.beats_local.any() and not local.fallback.any()
    mean = gf.estimator_scores(run, "mean")
    expected = gf.relative_error(run.trajectories[keep].mean(axis=1), target)
    np.testing.assert_allclose(mean.error, expected)
    np.testing.assert_array_equal(mean.beats_local, expected < local.error)
    zero = gf.estimator_scores(run, "zero")
    np.testing.assert_allclose(zero.error, 1.0)
    assert len(mean.error) == len(run.step) - 1 == 4


def test_best_estimator_needs_alignment_and_prefers_the_simplest():
    def row(estimator, error, cosine=0.9, sign=0.8):
        return {"recording": "all", "estimator": estimator, "median error": error,
                "median cosine": cosine, "sign agreement": sign}

    rows = [row("local", 0.9, 0.8, 0.7), row("mean", 0.705), row("rre", 0.7),
            row("affine", 0.5, cosine=0.1)]  # lowest error, but pointing elsewhere
    assert gf.best_estimator(rows) == "mean"  # within 0.01 of rre, and simpler
    assert gf.best_estimator(rows, tie=0.001) == "rre"


def test_compact_rows_put_both_conventions_side_by_side():
    def row(recording, estimator, error):
        return {"recording": recording, "estimator": estimator, "median error": error,
                "beats local": 0.5, "median cosine": 0.9, "fallback rate": 0.0,
                "sign agreement": 0.7}

    rows = [row(rec, est, err) for est, errs in (("local", (1.0, 2.0, 1.5)),
                                                 ("mean", (0.8, 1.2, 1.0)),
                                                 ("paper", (0.9, 1.9, 1.4)))
            for rec, err in zip(("all, Z reset", "all, Z carried", "all"), errs)]
    compact = gf.compact_rows(rows)
    assert [r["estimator"] for r in compact] == ["local", "mean", "paper"]
    assert compact[1]["median error, Z reset"] == 0.8
    assert compact[1]["median error, Z carried"] == 1.2
    assert gf.format_fidelity(compact)[1]["beats local, Z reset"] == "0.50"
    lines = gf.summary_lines(rows, "paper", width=60)
    assert all(len(line) <= 60 for text in lines for line in text.split("\n"))
    assert "target on all, Z reset" in lines[-2] and "0.9 against 0.8: not met" in lines[-2]
    assert "closer than local" in lines[-1] and "50.0% against 50.0%: met" in lines[-1]


def test_synthetic_rows_show_where_each_estimator_is_exact():
    rows = {(r["case"], r["estimator"]): r
            for r in gf.synthetic_rows(("cv", "paper", "mean", "local"), count=5)}
    clean = [case for case, (noise_free, _) in gf.SYNTHETIC_CASES.items() if noise_free]
    assert clean and len(clean) < len(gf.SYNTHETIC_CASES)
    for case in clean:  # the default: exact, and never further from the limit than local
        assert rows[(case, "cv")]["max error"] <= 1e-6, case
        assert rows[(case, "cv")]["behind local"] == 0, case
    slow = rows[("slow transient (rate 0.97)", "mean")]
    assert slow["behind local"] == 1 and slow["max error"] > 0.1  # a mean cannot extrapolate
    assert rows[("very slow transient (rate 0.995)", "paper")]["behind local"] > 0  # δ freezes it
    table = gf.synthetic_table(gf.synthetic_rows(("cv", "mean"), count=2))
    assert [r["estimator"] for r in table] == ["cv", "mean"] and len(table[0]) == 8
    assert table[1]["rate 0.97"].endswith("*") and not table[0]["rate 0.97"].endswith("*")
    # Noise around a constant: the default keeps h_τ for a coordinate whose mean does not
    # settle the sign (sign_errors), so it lands between the mean and local; with
    # sign_errors=0 it is the mean wherever the mean forecasts better.
    noisy = rows[("noise around a constant", "cv")]["median error"]
    assert noisy <= rows[("noise around a constant", "local")]["median error"]
    windows, limits = gf.synthetic_windows("noise around a constant", count=5)
    for H, limit in zip(windows, limits):
        greedy = gc.steady_state(H, sign_errors=0.0)
        assert set(greedy.used) == {"mean"}
        np.testing.assert_allclose(greedy.value, H.mean(axis=0))


def test_synthetic_windows_have_their_limit_and_refuse_an_unknown_case():
    windows, limits = gf.synthetic_windows("slow transient (rate 0.97)", sigma=500, q=4,
                                           count=3)
    assert windows.shape == (3, 500, 4) and limits.shape == (3, 4)
    np.testing.assert_allclose(windows[:, -1], limits, atol=1e-5)
    with pytest.raises(ValueError, match="choose one of"):
        gf.synthetic_windows("sawtooth")


def test_estimator_costs_time_each_method_at_each_q():
    rows = gf.estimator_costs(("cv", "mean"), qs=(3, 20), repeats=2)
    assert [r["estimator"] for r in rows] == ["cv", "mean"]
    for row in rows:
        assert row["ms per estimate, q = 3"] > 0 and row["ms per estimate, q = 20"] > 0

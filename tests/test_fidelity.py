"""The fidelity benchmark's scores and its choice of estimator."""

import jax
import jax.numpy as jnp
import numpy as np

import glocal_core as gc
import glocal_core.fidelity as gf


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
    lines = gf.summary_lines(rows, "mean", width=60)
    assert all(len(line) <= 60 for text in lines for line in text.split("\n"))
    assert "target on all, Z reset" in lines[-2] and "0.80x" in lines[-2]

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

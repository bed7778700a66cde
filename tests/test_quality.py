import doctest

import jax
import numpy as np
import pytest

import glocal_core as gc
import glocal_core.repro.quality as gq
import glocal_core.repro.spectra as gs
from glocal_core._dmd import NO_EIGENVALUE, TOO_LARGE
import glocal_core.repro.experiments as ex


def _result(strategy="global", *, target, local, estimate, fallback=None, reasons=None,
            radius=None, total_steps=40, tau=10, sigma=8, m=3, val_loss=None,
            test_accuracy=(0.5,), trajectories=None, stopped=""):
    """A hand-made OuterResult with the fields the analysis reads."""
    target, local, estimate = (np.asarray(v, dtype=float) for v in (target, local, estimate))
    S, q = target.shape
    fallback = np.zeros(S, bool) if fallback is None else np.asarray(fallback, bool)
    return gc.OuterResult(
        config=gc.OuterConfig(strategy, total_steps=total_steps, tau=tau, sigma=sigma, m=m,
                              estimator=gc.EstimatorSettings(method="paper")),
        names=tuple(f"h{i}" for i in range(q)),
        step=tau * np.arange(1, S + 1), phi=np.zeros((S, q)),
        hyperparameters=np.tile(np.arange(1.0, q + 1), (S, 1)),
        hypergradient=target, local_hypergradient=local, estimate=estimate,
        train_loss=np.ones(S), val_loss=np.ones(S) if val_loss is None else np.asarray(val_loss),
        eval_step=np.array([tau * S]), test_metric=np.asarray(test_accuracy),
        spectral_radius=np.full(S, 0.9) if radius is None else np.asarray(radius),
        num_kept=np.ones(S, int), fallback=fallback,
        fallback_reason=tuple(reasons or ("" for _ in range(S))),
        used=np.where(fallback[:, None], "local", np.full((S, q), "extrapolated")),
        reasons=np.tile(np.array(reasons or [""] * S)[:, None], (1, q)),
        seconds_window=np.ones(S), seconds_playout=np.zeros(S), seconds_estimate=np.zeros(S),
        seconds_compile=0.0, stopped=stopped, trajectories=trajectories,
    )


def test_docstring_examples():
    assert doctest.testmod(gq, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0


def test_cosine_and_relative_error_known_values():
    a = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.0, 0.0]])
    b = np.array([[3.0, 0.0], [1.0, 0.0], [-2.0, -2.0], [1.0, 0.0]])
    np.testing.assert_allclose(gq.cosine_similarity(a, b)[:3], [1.0, 0.0, -1.0])
    assert np.isnan(gq.cosine_similarity(a, b)[3])
    np.testing.assert_allclose(gq.relative_error(a, b), [2 / 3, np.sqrt(5), 1.5, 1.0])


def test_estimate_quality_scores_recorded_hypergradients():
    target = [[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [1.0, 1.0]]
    local = [[0.0, 1.0], [0.0, 1.0], [-2.0, 0.0], [1.0, 1.0]]
    estimate = [[1.0, 0.1], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]
    reasons = ("", "no eigenvalue near 1", "", "")
    result = _result(target=target, local=local, estimate=estimate,
                     fallback=[False, True, False, False], reasons=reasons,
                     radius=[0.9, 0.95, 1.2, 1.0])
    q = gq.estimate_quality(result)
    np.testing.assert_array_equal(q.horizon, [30, 20, 10, 0])
    np.testing.assert_allclose(q.cosine_local, [0.0, 1.0, -1.0, 1.0])
    np.testing.assert_allclose(q.error_local, [np.sqrt(2), 0.0, 2.0, 0.0])
    np.testing.assert_allclose(q.error_glocal, [0.1, 0.0, 0.5, 0.0])
    np.testing.assert_array_equal(q.no_eigenvalue_near_one, [False, True, False, False])

    summary = gq.quality_summary(q)  # the last window (horizon 0) is left out
    assert summary.windows == 3
    assert summary.closer == pytest.approx(2 / 3)
    assert summary.tie == pytest.approx(1 / 3)
    assert summary.farther == 0.0
    assert summary.fallback_rate == pytest.approx(1 / 3)
    assert summary.no_eigenvalue_rate == pytest.approx(1 / 3)
    assert summary.radius_above_one_rate == pytest.approx(1 / 3)
    assert summary.median_error_glocal == pytest.approx(0.1)
    np.testing.assert_array_equal(gq.closer(q), [True, False, True])


def test_estimate_quality_needs_a_global_run():
    result = _result("glocal", target=[[1.0]], local=[[1.0]], estimate=[[1.0]])
    with pytest.raises(ValueError, match="global"):
        gq.estimate_quality(result)


def _linear_trajectory(level, amplitude, rate, length):
    t = np.arange(length)[:, None]
    return np.asarray(level) + np.asarray(amplitude) * rate**t


def test_refit_recovers_steady_state_of_linear_trajectory():
    level = np.array([0.5, -2.0])
    windows = np.stack([_linear_trajectory(level, [1.0, 3.0], rate, 20) for rate in (0.7, 0.8)])
    fit = gq.refit(windows, sigma=16, m=3)
    np.testing.assert_allclose(fit.value, np.stack([level, level]), rtol=1e-6, atol=1e-8)
    assert not fit.fallback.any()
    assert not fit.no_eigenvalue_near_one.any()
    assert np.all(fit.num_kept >= 1)
    np.testing.assert_allclose(fit.spectral_radius, 1.0, atol=1e-6)


def test_refit_falls_back_on_pure_decay_and_names_the_kind():
    windows = _linear_trajectory([0.0], [1.0], 0.5, 12)[None]
    fit = gq.refit(windows, sigma=12, m=2)
    assert fit.fallback[0] and fit.no_eigenvalue_near_one[0]
    np.testing.assert_allclose(fit.value[0], windows[0, -1])
    assert fit.states[0].fallback == NO_EIGENVALUE


def test_the_growth_fallback_of_the_library_is_named():
    # The steady state of 1 + 10 (-0.9)^t is 1, below the window's largest row (11): only a
    # max_growth below 1/11 makes the library refuse it.
    H = _linear_trajectory([1.0], [10.0], -0.9, 30)
    state = gc.steady_state(H, sigma=30, m=2, method="paper", max_growth=0.01)
    assert state.fallback == TOO_LARGE


def test_refit_quality_matches_recorded_quality_of_a_real_global_run():
    with jax.enable_x64(True):
        problem = gc.quadratic_problem(np.array([2.0, 1.0]), np.array([2.0, 1.0]) / 1.5,
                                       gc.sgd(0.03, 0.0, 0.3, learn=("weight_decay",)))
        config = gc.OuterConfig("global", total_steps=400, tau=50, sigma=40, m=6,
                                keep_trajectories=True, estimator=gc.EstimatorSettings(method="paper"))
        result = gc.run_outer(problem, config, key=jax.random.key(0), progress=False)
    recorded = gq.estimate_quality(result)
    refitted = gq.estimate_quality(result, sigma=40, m=6)
    np.testing.assert_allclose(refitted.error_glocal, recorded.error_glocal, rtol=1e-8)
    np.testing.assert_array_equal(refitted.fallback, recorded.fallback)
    # on a noiseless quadratic the λ = 1 mode is exact: glocal beats local where it differs
    summary = gq.quality_summary(recorded)
    assert summary.closer > 0.5
    assert summary.median_error_glocal < summary.median_error_local

    terms = gs.error_terms(result)
    np.testing.assert_allclose(terms.total, recorded.error_glocal, rtol=1e-8)
    assert np.all(terms.total <= terms.forecast + terms.dropped + 1e-12)
    pooled_terms = gs.pooled_terms([result, result])
    assert len(pooled_terms.total) == 2 * (len(result.step) - 1)  # the last window: horizon 0
    np.testing.assert_array_equal(pooled_terms.forecast[: len(result.step) - 1],
                                  terms.forecast[:-1])
    spectra = gs.window_spectra(result)
    np.testing.assert_allclose(spectra.spectral_radius, result.spectral_radius)
    np.testing.assert_array_equal(spectra.gap <= 1e-2, result.num_kept > 0)
    pooled = gq.concat_quality([recorded, recorded])
    assert len(pooled.step) == 2 * len(recorded.step)
    sweep = gq.delta_sweep([result], [1e-4, 1e-2])
    assert len(sweep) == 2
    assert sweep[0].fallback_rate >= sweep[1].fallback_rate


def test_bootstrap_interval_is_deterministic_and_brackets_the_mean():
    key = jax.random.key(0)
    assert gq.bootstrap_interval(np.full(7, 0.25), key=key) == (0.25, 0.25)
    mask = np.array([1, 0, 1, 1, 0, 1, 0, 1, 1, 1], float)
    low, high = gq.bootstrap_interval(mask, key=key)
    assert low < mask.mean() < high and 0 <= low and high <= 1
    assert gq.bootstrap_interval(mask, key=key) == (low, high)
    assert all(np.isnan(gq.bootstrap_interval([], key=key)))


def test_dmd_grid_aggregates_over_seeds():
    def run(sigma, m, val, acc, fell):
        return _result("glocal", target=[[1.0], [1.0]], local=[[1.0], [1.0]],
                       estimate=[[1.0], [1.0]], fallback=fell, sigma=sigma, m=m,
                       val_loss=[2.0, val], test_accuracy=[acc])
    results = {
        "a": run(8, 3, 1.0, 0.8, [True, False]),
        "b": run(8, 3, 3.0, 0.6, [False, False]),
        "c": run(5, 1, 2.0, 0.7, [True, True]),
    }
    grid = gs.dmd_grid(results)
    assert [(row.sigma, row.m) for row in grid] == [(5, 1), (8, 3)]
    row = grid[1]
    assert row.seeds == row.finished == 2
    assert row.val_loss == pytest.approx(2.0) and row.val_loss_std == pytest.approx(1.0)
    assert row.test_accuracy == pytest.approx(0.7)
    assert row.fallback_rate == pytest.approx(0.25)
    assert grid[0].fallback_rate == 1.0

"""Steady-state estimators against trajectories whose limit is known."""

import numpy as np
import pytest

import glocal_core as gc
from glocal_core._estimators import METHODS, steady_state

T = np.arange(80)[:, None]
LIMIT = np.array([1.0, -2.0, 0.5])
EXTRAPOLATING = ("paper", "fbdmd", "tlsdmd", "affine", "rre")


def _error(value):
    return np.linalg.norm(value - LIMIT) / np.linalg.norm(LIMIT)


def test_slow_transient_that_the_local_value_misses():
    # Two decaying modes; at t = 79 the slow one is still 3% of the limit away.
    H = LIMIT + np.array([3.0, 1.0, -2.0]) * 0.95**T + np.array([1.0, -1.0, 1.0]) * 0.6**T
    assert _error(steady_state(H, method="local").value) > 0.02
    assert _error(steady_state(H, method="mean").value) > 0.2
    for method in EXTRAPOLATING:
        estimate = steady_state(H, method=method)
        assert estimate.fallback == "" and _error(estimate.value) < 1e-8, method


def test_decaying_complex_pair():
    H = LIMIT + np.array([2.0, -1.0, 1.0]) * 0.97**T * np.cos(0.3 * T)
    for method in EXTRAPOLATING:
        assert _error(steady_state(H, method=method).value) < 1e-8, method


def test_noise_around_a_constant():
    # The mean is the best possible estimate here (sd 0.1 / sqrt(80) per coordinate);
    # the affine fit and RRE must come close to it, the local value cannot.
    H = LIMIT + 0.1 * np.random.default_rng(0).normal(size=(80, 3))
    assert _error(steady_state(H, method="mean").value) < 0.02
    assert _error(steady_state(H, method="local").value) > 0.05
    for method in ("affine", "rre"):
        assert _error(steady_state(H, method=method).value) < 0.02, method


def test_debiased_fits_undo_the_noise_bias_of_a_unit_eigenvalue():
    # Dawson et al. (2016), Fig. 2: a rotation (|λ| = 1) seen through noise. Exact DMD pulls
    # |λ| inside the unit circle; forward-backward and total-least-squares DMD do not.
    t = np.arange(80)
    radius = {None: [], "fb": [], "tls": []}
    for seed in range(30):
        noise = 0.1 * np.random.default_rng(seed).normal(size=(80, 2))
        H = np.stack([np.cos(0.3 * t), np.sin(0.3 * t)], axis=1) + noise
        for debias, found in radius.items():
            found.append(np.mean(np.abs(gc.hankel_dmd(H, 1, rank=2, debias=debias).eigenvalues)))
    assert np.mean(radius[None]) < 0.99
    for debias in ("fb", "tls"):
        assert abs(np.mean(radius[debias]) - 1) < 0.005, debias


@pytest.mark.parametrize("debias", ["fb", "tls"])
def test_debiased_fits_are_exact_without_noise(debias):
    H = LIMIT + np.array([3.0, 1.0, -2.0]) * 0.95**T + np.array([1.0, -1.0, 1.0]) * 0.6**T
    found = np.sort(gc.hankel_dmd(H, 10, debias=debias, rank=3).eigenvalues.real)
    np.testing.assert_allclose(found, [0.6, 0.95, 1.0], atol=1e-8)


def test_fallback_is_local_and_named_as_data():
    # Pure decay to zero: no eigenvalue near one, so Eq. 14 falls back to the last row.
    H = np.array([1.0, 2.0]) * 0.5**T
    estimate = steady_state(H, method="paper")
    assert estimate.fallback == "no eigenvalue near 1" and estimate.fallback in gc.FALLBACK_KINDS
    np.testing.assert_array_equal(estimate.value, H[-1])
    np.testing.assert_array_equal(estimate.local, H[-1])


def test_too_large_extrapolation_falls_back():
    # A growing sequence: the affine fixed point lies far outside the window.
    H = (1.001 ** np.arange(80))[:, None] * np.ones((1, 2)) - 0.999
    estimate = steady_state(H, method="affine", max_growth=2.0)
    assert estimate.fallback in ("too large", "singular")
    np.testing.assert_array_equal(estimate.value, H[-1])


def test_glocal_estimate_is_the_default_method():
    H = LIMIT + 0.1 * np.random.default_rng(1).normal(size=(80, 3))
    for method in METHODS:
        np.testing.assert_array_equal(gc.glocal_estimate(H, 80, 10, method=method),
                                      steady_state(H, 80, 10, method=method).value)
    np.testing.assert_array_equal(gc.glocal_estimate(H), steady_state(H, method=gc.DEFAULT_METHOD).value)


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="median"), "choose one of"),
    (dict(sigma=90), "sigma"),
    (dict(m=0), "m"),
    (dict(m=80), "m"),
    (dict(method="rre", sigma=10, m=9), "rre"),
])
def test_bad_input_says_what_to_do(kwargs, match):
    H = LIMIT + 0.1 * np.random.default_rng(2).normal(size=(80, 3))
    with pytest.raises(ValueError, match=match):
        steady_state(H, **kwargs)


def test_non_finite_window_is_refused():
    H = LIMIT + 0 * T
    H[5, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        steady_state(H, method="mean")

"""Steady-state estimators against trajectories whose limit is known."""

import numpy as np
import pytest

import glocal_core as gc
from glocal_core._estimators import METHODS, steady_state

T = np.arange(80)[:, None]
LIMIT = np.array([1.0, -2.0, 0.5])
EXTRAPOLATING = ("cv", "paper", "fbdmd", "tlsdmd", "affine", "rre")


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
    # the affine fit must come close to it, the local value cannot. RRE's polynomial fitted
    # to noise has roots outside the unit circle: it does not extrapolate, and says so.
    H = LIMIT + 0.1 * np.random.default_rng(0).normal(size=(80, 3))
    assert _error(steady_state(H, method="mean").value) < 0.02
    assert _error(steady_state(H, method="local").value) > 0.05
    for method in ("affine", "cv"):
        assert _error(steady_state(H, method=method).value) < 0.02, method
    rre = steady_state(H, method="rre")
    assert _error(rre.value) < 0.02 or (rre.fallback == gc.estimators.DIVERGENT
                                         and rre.used == ("local",) * 3)


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
    # A growing sequence: the affine map does not contract, and its fixed point would lie
    # far outside the window.
    H = (1.001 ** np.arange(80))[:, None] * np.ones((1, 2)) - 0.999
    estimate = steady_state(H, method="affine", max_growth=2.0)
    assert estimate.fallback in ("too large", "singular", gc.estimators.DIVERGENT)
    np.testing.assert_array_equal(estimate.value, H[-1])
    assert estimate.used == ("local", "local") and estimate.reasons == (estimate.fallback,) * 2


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
    (dict(method="cv", sigma=25, m=10), "2 m \\+ 2"),
    (dict(method="cv", holdout=0.0), "holdout"),
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


def _noise_free_cases(sigma: int, q: int, seed: int = 0) -> dict:
    """Windows `(sigma, q)` whose limit is known exactly, and that limit."""
    rng = np.random.default_rng(seed)
    limit, a, b = rng.normal(size=(3, q))
    t = np.arange(sigma, dtype=float)[:, None]
    rates = rng.uniform(0.8, 0.98, size=(3, q))
    return {
        "constant": (np.tile(limit, (sigma, 1)), limit),
        "slow transient": (limit + a * 0.97 ** (t + 20), limit),
        "rate 0.995 far from its limit": (limit + a * 0.995**t, limit),
        "decaying oscillation": (limit + a * 0.95**t * np.cos(0.3 * t + b), limit),
        "three rates per coordinate": (limit + sum(c * r**t for c, r in zip(
            rng.normal(size=(3, q)), rates)), limit),
        "rise from zero": (limit * (1 - 0.5 * 0.98 ** (t + 1) - 0.5 * 0.9 ** (t + 1)), limit),
    }


@pytest.mark.parametrize("q", [1, 3, 385])
@pytest.mark.parametrize("sigma, m", [(80, 10), (40, 5)])
def test_the_default_is_exact_on_noise_free_windows_and_never_behind_local(sigma, m, q):
    """The default's promise where Eq. 14 was designed to work: to round-off on windows that
    converge to a known limit, and on none of them further from it than the local value."""
    for name, (H, limit) in _noise_free_cases(sigma, q).items():
        value = gc.glocal_estimate(H, sigma, m)
        error = np.linalg.norm(value - limit) / np.linalg.norm(limit)
        behind = np.linalg.norm(H[-1] - limit) / np.linalg.norm(limit)
        assert error <= 1e-6, (name, error)
        assert error <= behind + 1e-12, (name, error, behind)


def test_the_default_keeps_the_mean_on_noise_and_extrapolates_a_noisy_transient():
    """Across windows: on noise around a constant the default is the mean; on a transient
    seen through noise it is, in the median, closer to the limit than the mean."""
    rng = np.random.default_rng(4)
    t = np.arange(80)[:, None]
    flat, moving = [], []
    for _ in range(40):
        noise = 0.1 * rng.normal(size=(80, 3))
        H = LIMIT + noise
        flat.append(_error(gc.glocal_estimate(H)) - _error(H.mean(axis=0)))
        H = LIMIT + np.array([3.0, 1.0, -2.0]) * 0.97**t + noise
        moving.append((_error(gc.glocal_estimate(H)), _error(H.mean(axis=0))))
    assert np.median(np.abs(flat)) < 1e-12
    errors = np.array(moving)
    assert np.median(errors[:, 0]) < 0.5 * np.median(errors[:, 1])


def test_cross_validation_says_what_it_chose():
    H = LIMIT + np.array([3.0, 1.0, -2.0]) * 0.95**T
    estimate = steady_state(H, method="cv")
    assert isinstance(estimate.fit, gc.CrossValidation) and estimate.fit.holdout == 20
    assert set(estimate.fit.choice) <= {"joint", "coord"}
    assert estimate.used == ("extrapolated",) * 3 and estimate.reasons == ("",) * 3
    for j, choice in enumerate(estimate.fit.choice):
        assert estimate.fit.scores[choice][j] < estimate.fit.scores["mean"][j]
    noise = LIMIT + 0.1 * np.random.default_rng(5).normal(size=(80, 3))
    estimate = steady_state(noise, method="cv")
    assert estimate.fit.choice == ("mean",) * 3 and estimate.used == ("mean",) * 3
    assert estimate.reasons == (gc.estimators.UNCONFIRMED,) * 3


def test_the_default_never_returns_an_anti_limit():
    """A window whose hypergradients still grow, keeping one sign: every recurrence fitted to
    it has a root outside the unit circle, and its fixed point lies on the other side of
    zero. The default keeps the sign of the window in every coordinate, and says why."""
    t = np.arange(40, dtype=float)[:, None]
    rng = np.random.default_rng(0)
    flips = 0
    for _ in range(50):
        growth = rng.uniform(1.02, 1.06, size=2)
        H = -0.005 * growth**t * (1 + 0.05 * rng.normal(size=(40, 2)))
        assert np.all(H < 0)
        estimate = steady_state(H, 40, 5)
        flips += np.sum(estimate.value >= 0)
        assert set(estimate.used) <= {"mean", "local"}
        assert set(estimate.reasons) <= {gc.estimators.DIVERGENT, gc.estimators.UNCONFIRMED,
                                         "too large"}
    assert flips == 0
    noise_free = steady_state(-0.005 * 1.04**t * np.ones((1, 2)), 40, 5)
    assert noise_free.reasons == (gc.estimators.DIVERGENT,) * 2
    assert np.all(noise_free.value < 0)


def test_one_coordinate_noise_never_decides_another():
    """A large noisy coordinate beside a small clean transient (a learning rate beside a
    weight decay): the small one is still extrapolated, to its limit."""
    t = np.arange(80, dtype=float)
    rng = np.random.default_rng(1)
    for _ in range(10):
        large = 5.0 + 2.0 * rng.normal(size=80)
        small = 1e-3 * (0.2 + 0.8 * 0.95**t)
        estimate = steady_state(np.stack([large, small], axis=1))
        assert estimate.used[1] == "extrapolated"
        assert abs(estimate.value[1] - 2e-4) <= 1e-6 * 2e-4


def test_correlated_noise_is_not_taken_for_dynamics():
    """AR(1) noise (ρ = 0.8) around a constant: a recurrence forecasts its first held-out
    rows well, but the margin, inflated for the autocorrelation, keeps the baseline in most
    coordinates, and the estimate is never further from the constant than the local value
    by much."""
    rng = np.random.default_rng(2)
    extrapolated, errors = 0, []
    for _ in range(50):
        e = np.zeros((80, 3))
        for i in range(1, 80):
            e[i] = 0.8 * e[i - 1] + 0.1 * rng.normal(size=3)
        estimate = steady_state(LIMIT + e)
        extrapolated += sum(u == "extrapolated" for u in estimate.used)
        errors.append((_error(estimate.value), _error(estimate.local)))
    assert extrapolated / 150 <= 0.15
    errors = np.array(errors)
    assert np.median(errors[:, 0]) <= np.median(errors[:, 1])


@pytest.mark.parametrize("method", ["affine", "rre"])
def test_affine_and_rre_refuse_divergent_fits(method):
    t = np.arange(80, dtype=float)[:, None]
    H = -0.005 * 1.04**t * np.array([[1.0, 2.0]])
    estimate = steady_state(H, method=method)
    assert estimate.fallback in (gc.estimators.DIVERGENT, "too large", "singular")
    np.testing.assert_array_equal(estimate.value, H[-1])


def test_every_method_says_what_each_coordinate_used():
    H = LIMIT + np.array([3.0, 1.0, -2.0]) * 0.95**T
    for method in METHODS:
        estimate = steady_state(H, method=method)
        assert len(estimate.used) == len(estimate.reasons) == 3, method
        assert set(estimate.used) <= set(gc.estimators.USES), method
    assert steady_state(H, method="mean").used == ("mean",) * 3
    assert steady_state(H, method="local").used == ("local",) * 3
    assert steady_state(H, method="paper").used == ("extrapolated",) * 3


def test_the_mean_replaces_the_local_value_only_where_it_settles_the_sign():
    """Where no extrapolation is confirmed, the window mean stands in for h_τ only if it lies
    `sign_errors` standard errors from zero; noise around zero keeps h_τ, noise around a
    clear level takes the mean, and `sign_errors=0` takes the mean wherever it forecasts
    better."""
    noise = 0.1 * np.random.default_rng(6).normal(size=(80, 2))
    around_zero = steady_state(noise + np.array([0.0, 1.0]))
    assert around_zero.used == ("local", "mean")
    np.testing.assert_array_equal(around_zero.value[0], noise[-1, 0])
    assert around_zero.value[1] == pytest.approx(1.0 + noise[:, 1].mean())
    assert steady_state(noise, sign_errors=0.0).used == ("mean", "mean")
    with pytest.raises(ValueError, match="sign_errors"):
        steady_state(noise, sign_errors=-1.0)

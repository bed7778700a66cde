import numpy as np
import pytest

from glocal_core import glocal_estimate, steady_state
from glocal_core._dmd import forecast, hankel, hankel_dmd, mode_contributions, mode_magnitudes


def _closest_distances(found, expected):
    # Distance from each expected eigenvalue to its nearest recovered one; with equal counts
    # and distances below half the spectral gap this is a one-to-one match, and it does not
    # depend on how round-off orders a conjugate pair.
    return np.min(np.abs(np.asarray(expected)[:, None] - found[None, :]), axis=1)


def _stable_system(seed=0):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(4, 4))
    A *= 0.95 / np.max(np.abs(np.linalg.eigvals(A)))
    x = [rng.normal(size=4)]
    for _ in range(79):
        x.append(A @ x[-1])
    return A, np.array(x)


def _transient(L=80, noise=0.0, seed=0):
    # h_t = c + Σ_j a_j μ_j^t; μ = 0.95 keeps the last row ~2e-2 away from c at t = 79.
    rng = np.random.default_rng(seed)
    c = rng.normal(size=4)
    mus, a = np.array([0.95, 0.7, 0.4]), rng.normal(size=(3, 4))
    t = np.arange(L)[:, None, None]
    H = c + np.sum(a * mus[:, None] ** t, axis=1)
    return c, H + noise * rng.normal(size=H.shape)


def test_hankel_columns_are_delay_vectors():
    H = np.arange(12.0).reshape(6, 2)
    G = hankel(H, 3)
    assert G.shape == (6, 4)
    for t in range(4):
        np.testing.assert_array_equal(G[:, t], H[t : t + 3].ravel())


def test_eigenvalues_of_partially_observed_linear_system():
    A, x = _stable_system()
    H = x @ np.random.default_rng(1).normal(size=(4, 2))  # two observed coordinates
    fit = hankel_dmd(H, 6)
    assert fit.rank == 4 and fit.modes.shape == (12, 4) and fit.singular_values.shape == (12,)
    distances = _closest_distances(fit.eigenvalues, np.linalg.eigvals(A))
    np.testing.assert_allclose(distances, 0, atol=1e-8)


def test_frequencies_of_two_sinusoids_from_one_scalar():
    w1, w2 = 0.3, 1.1
    t = np.arange(100)
    h = np.sin(w1 * t) + 0.5 * np.cos(w2 * t + 0.4)
    fit = hankel_dmd(h[:, None], 10)
    expected = np.exp(1j * np.array([w1, -w1, w2, -w2]))
    assert fit.rank == 4
    np.testing.assert_allclose(_closest_distances(fit.eigenvalues, expected), 0, atol=1e-8)


def test_forecast_matches_true_future():
    A, x = _stable_system()
    fit = hankel_dmd(x[:40], 3)
    n = np.arange(40)
    np.testing.assert_allclose(forecast(fit, n), x[39 + n], atol=1e-9)
    np.testing.assert_allclose(forecast(fit, 0), x[39], atol=1e-9)


def test_glocal_recovers_constant_before_transient_dies():
    c, H = _transient()
    assert np.max(np.abs(H[-1] - c)) > 1e-2
    state = steady_state(H, method="paper")
    assert not state.fallback and state.reason == ""
    assert state.fit.kept.sum() == 1
    assert state.fit.spectral_radius == pytest.approx(1, abs=1e-10)
    np.testing.assert_allclose(state.value, c, atol=1e-10)


# Noise 1e-3: over 100 seeds the worst error was 1.9e-3, while the local hypergradient is off
# by 2e-2.
def test_glocal_recovers_constant_from_noisy_trajectory():
    c, H = _transient(noise=1e-3, seed=0)
    state = steady_state(H, method="paper")
    assert not state.fallback
    assert np.max(np.abs(state.value - c)) < 3e-3
    assert np.max(np.abs(state.value - c)) < 0.2 * np.max(np.abs(H[-1] - c))


def test_glocal_recovers_constant_under_decaying_oscillation():
    t = np.arange(80)[:, None]
    c, a1, a2 = np.array([1.0, -2.0, 0.5]), np.array([3.0, 1.0, -1.0]), np.array([0.0, 2.0, 1.0])
    H = c + 0.96**t * (np.cos(0.4 * t) * a1 + np.sin(0.4 * t) * a2)
    assert np.max(np.abs(H[-1] - c)) > 1e-2
    np.testing.assert_allclose(glocal_estimate(H, method="paper"), c, atol=1e-10)


def test_jordan_drift_gives_level_at_middle_of_last_column():
    # h_t = c + d t + a μ^t: λ = 1 is a 2x2 Jordan block, which eig splits into 1 ± O(1e-8)
    # with amplitudes ~1e7 that cancel, losing ~1e7 * 1e-16 relative: hence atol 1e-7. The mean
    # of the m blocks of the last column (times L-m .. L-1) reads the drift line at
    # t_last - (m-1)/2, so it lags the current level c + d t_last by d (m-1)/2.
    rng = np.random.default_rng(3)
    c, d, a = rng.normal(size=3), 0.01 * rng.normal(size=3), rng.normal(size=3)
    t = np.arange(80)[:, None]
    H = c + d * t + a * 0.8**t
    m, t_last = 10, 79
    state = steady_state(H, m=m, method="paper")
    assert not state.fallback and np.all(np.isfinite(state.value))
    kept, fit = state.fit.kept, state.fit.dmd
    assert kept.sum() == 2
    np.testing.assert_allclose(fit.eigenvalues[kept], 1, atol=1e-6)
    assert np.max(np.abs(fit.amplitudes[kept])) > 1e3
    np.testing.assert_allclose(state.value, c + d * (t_last - (m - 1) / 2), atol=1e-7)


@pytest.mark.parametrize(
    "h",
    [
        lambda t: 0.1 * 1.2**t * np.array([1.0, -2.0]),
        lambda t: np.concatenate([np.cos(2.0 * t), np.sin(2.0 * t)], axis=1),
    ],
    ids=["growing", "fast-oscillation"],
)
def test_fallback_without_eigenvalue_near_one(h):
    H = h(np.arange(40.0)[:, None])
    state = steady_state(H, sigma=40, m=5, method="paper")
    assert state.fallback and "no eigenvalue" in state.reason
    assert state.fallback == "no eigenvalue near 1"
    assert not state.fit.kept.any()
    np.testing.assert_array_equal(state.value, H[-1])
    np.testing.assert_array_equal(glocal_estimate(H, sigma=40, m=5, method="paper"), H[-1])


def test_fallback_when_estimate_exceeds_max_growth():
    # h_t = c (1 - 0.97^t) over t < 20 reaches 44% of its limit c: the estimate is 2.3x the
    # largest row, accepted by the default max_growth and rejected by max_growth=2.
    c = np.array([2.0, -1.0])
    H = c * (1 - 0.97 ** np.arange(20.0)[:, None])
    accepted = steady_state(H, sigma=20, m=4, method="paper")
    assert not accepted.fallback
    np.testing.assert_allclose(accepted.value, c, atol=1e-9)
    rejected = steady_state(H, sigma=20, m=4, max_growth=2.0, method="paper")
    assert rejected.fallback == "too large" and "max_growth" in rejected.reason
    np.testing.assert_array_equal(rejected.value, H[-1])


def test_all_zero_trajectory_falls_back_visibly():
    state = steady_state(np.zeros((20, 3)), sigma=20, m=4, method="paper")
    assert state.fit.dmd.rank == 0 and state.fallback and state.reason


_GOOD = np.ones((30, 2)) + 0.9 ** np.arange(30.0)[:, None]
_BAD_ROWS = _GOOD.copy()
_BAD_ROWS[-1, 0] = np.nan


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(H=np.ones(30)), "`H`"),
        (dict(H=_BAD_ROWS), "`H`"),
        (dict(sigma=31), "`sigma`"),
        (dict(sigma=1), "`sigma`"),
        (dict(m=0), "`m`"),
        (dict(m=20, sigma=20), "`m`"),
        (dict(delta=0.0), "`delta`"),
        (dict(rtol=0.0), "`rtol`"),
        (dict(rtol=1.0), "`rtol`"),
        (dict(holdout=1.0), "`holdout`"),
        (dict(margin=-1.0), "`margin`"),
        (dict(max_growth=-1.0), "`max_growth`"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs, name):
    kwargs = dict(dict(H=_GOOD, sigma=20, m=5), **kwargs)
    with pytest.raises(ValueError, match=name):
        glocal_estimate(**kwargs, method="paper")


def test_one_dimensional_trajectory_error_says_what_to_do():
    with pytest.raises(ValueError, match=r"H\[:, None\]"):
        hankel_dmd(np.ones(30), 5)


def test_mode_contributions_are_the_terms_of_the_forecast():
    """Eq. 13 in one place: the forecast is the sum of the modes' terms, and each term
    scales by λ_j per step."""
    t = np.arange(60)
    H = np.stack([1 + 0.5 * 0.9**t, -1 + 0.3 * 0.8**t * np.cos(0.3 * t)], axis=1)
    fit = hankel_dmd(H[:40], 5)
    terms = mode_contributions(fit, np.arange(20))
    assert terms.shape == (20, fit.rank, 2)
    np.testing.assert_allclose(terms.sum(axis=1).real, forecast(fit, np.arange(20)), atol=1e-12)
    np.testing.assert_allclose(forecast(fit, np.arange(20)), H[39:59], atol=1e-8)
    np.testing.assert_allclose(terms[1:], terms[:-1] * fit.eigenvalues[None, :, None],
                               atol=1e-12)
    np.testing.assert_allclose(mode_magnitudes(fit, 3, component=1), np.abs(terms[3, :, 1]))


@pytest.mark.filterwarnings("error")
def test_a_growing_mode_forecasts_infinity_far_ahead_without_warnings():
    """A mode outside the unit circle grows past the largest float: its term is infinite,
    a component it does not touch stays finite, and nothing warns or turns into nan."""
    t = np.arange(80)
    H = np.stack([1.05**t, np.zeros_like(t, dtype=float), 0.5 + 0.9**t], axis=1)
    fit = hankel_dmd(H, 6)
    assert np.abs(fit.eigenvalues).max() > 1.04
    far = forecast(fit, 20_000)
    assert far[0] == np.inf and far[1] == 0.0
    near = forecast(fit, np.arange(3))
    np.testing.assert_allclose(near[:, 0], 1.05 ** np.arange(79, 82), rtol=1e-6)
    sizes = mode_magnitudes(fit, np.array([0, 20_000]))
    assert np.isinf(sizes[1]).any() and not np.isnan(sizes).any()


def test_estimator_defaults_live_in_one_place():
    import inspect

    from glocal_core import DEFAULT_METHOD, ESTIMATOR_DEFAULTS, EstimatorSettings

    assert ESTIMATOR_DEFAULTS == EstimatorSettings() and DEFAULT_METHOD == "cv"
    assert ESTIMATOR_DEFAULTS.method == DEFAULT_METHOD
    for fn in (steady_state, glocal_estimate):  # None: the settings' method, i.e. the default
        assert inspect.signature(fn).parameters["method"].default is None
    H = _GOOD
    assert steady_state(H, 20, 5).method == DEFAULT_METHOD
    with pytest.raises(TypeError, match="rank"):
        steady_state(H, 20, 5, rank=3)

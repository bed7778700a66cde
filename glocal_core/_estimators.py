"""Steady-state estimators: the global hypergradient from a window of local ones.

Every estimator reads the last `sigma` rows of a trajectory `H` of hypergradients and returns
an `Estimate` of its limit `h_∞`, the steady state that Eq. 14 of the paper calls the glocal
hypergradient. They sit behind one entry point, `steady_state(H, sigma, m, method=...)`, with
their settings in one `EstimatorSettings` (defaults: `ESTIMATOR_DEFAULTS`):

| method   | what it computes                                                             |
| -------- | ---------------------------------------------------------------------------- |
| `cv`     | the default: cross-validated linear prediction (`_crossval`), per           |
|          | coordinate: the fixed point of a convergent recurrence where the window's   |
|          | held-out tail confirms it, else the window mean or `h_τ`                    |
| `paper`  | Eq. 14: Hankel DMD, keep the modes with `|λ − 1| ≤ δ`, map back             |
| `fbdmd`  | Eq. 14 on forward-backward DMD (Dawson et al., 2016), less biased by noise    |
| `tlsdmd` | Eq. 14 on total-least-squares DMD (Hemati et al., 2017)                       |
| `affine` | the fixed point of the affine map `g_{t+1} = A g_t + c` fitted to the Hankel  |
|          | observables: a constant observable makes `λ = 1` exact                        |
| `rre`    | reduced-rank extrapolation (Sidi, 2017): the limit of a sequence whose       |
|          | differences obey a fitted linear recurrence of order `m`                      |
| `mean`   | the window's mean                                                             |
| `local`  | the window's last row, `h_τ`: the local hypergradient                         |

Where an estimator cannot give a steady state it falls back to the local hypergradient and
names why in `Estimate.fallback`, one of `FALLBACK_KINDS` (data, not text).

Why `cv` is the default, in the order of what it promises (`../README.md`, "Which
steady-state estimator", has the measurements):

1. Never worse than local. A recurrence's fixed point is used only where every root of the
   recurrence lies inside the unit circle (`max_radius`): the fixed point of a fit to a
   window that still grows is an anti-limit, and returning it turned users' tuning runs
   around. Each coordinate decides alone, on its own held-out errors. Where the window does
   not confirm an extrapolation, the coordinate keeps the window mean only if the mean also
   forecasts the tail better than `h_τ` and settles the sign of the hypergradient (two
   autocorrelation-inflated standard errors from zero); otherwise it keeps `h_τ`, and glocal
   does what local does.
2. Exact where Eq. 14 is exact: on noise-free sums of decaying exponentials and
   oscillations, to round-off (Eq. 14 freezes any mode within `δ` of one).
3. On real minibatch noise, the window mean where the mean is the better forecast.

`python -m glocal_core fidelity` scores every method on the book's recordings and on
synthetic windows with exact limits; `python -m glocal_core fidelity --trust` tunes models
the library does not ship with each of them, against local and global.
"""

import time
from typing import NamedTuple

import numpy as np

from ._crossval import DIVERGENT, EXTRAPOLATORS, UNCONFIRMED, CrossValidation, cross_validated
from ._dmd import (
    _DELTA,
    _MAX_GROWTH,
    _RTOL,
    IMAGINARY,
    NO_EIGENVALUE,
    NOT_FINITE,
    SINGULAR,
    TOO_LARGE,
    DMDFit,
    _check_trajectory,
    _unhankel,
    hankel,
    hankel_dmd,
    unusable,
)

METHODS = ("cv", "paper", "fbdmd", "tlsdmd", "affine", "rre", "mean", "local")
# The DMD-based methods: Eq. 14 on a variant of Hankel DMD (`hankel_dmd`'s `debias`).
EQ14_METHODS = {"paper": None, "fbdmd": "fb", "tlsdmd": "tls"}
# `cv` fits its recurrences with a tighter singular-value cut than the DMD's `rtol`: a
# transient with several rates has small but real directions (at 1e-6, three rates per
# coordinate were recovered only to 1e-5), and noise that the cut lets in is what the held-out
# tail rejects.
_CV_RTOL = 1e-10


class EstimatorSettings(NamedTuple):
    """Every setting of a steady-state estimate; `ESTIMATOR_DEFAULTS` holds the library's,
    which the outer loop, plots, widgets and chapters read instead of copying.

    **Fields:**

    - `method`: one of `METHODS` (default `cv`).
    - `delta`: the `|λ − 1|` tolerance of Eq. 14 (`paper`, `fbdmd`, `tlsdmd`), `> 0`.
    - `rtol`: the relative singular-value cut-off of the DMD and `affine` fits, in `(0, 1)`.
    - `max_growth`: an estimate whose norm exceeds this times the window's largest row norm
      falls back (`TOO_LARGE`), `> 0`.
    - `holdout`: the share of the window `cv` holds out to score its candidates, in `(0, 1)`.
    - `margin`: how many standard errors of its paired difference with the better baseline
      (mean or last value) an extrapolation must beat it by on the held-out rows (`cv`),
      `>= 0`.
    - `max_radius`: the largest modulus a fitted recurrence's characteristic root (`cv`,
      `rre`) or the affine map's eigenvalue (`affine`) may have for its fixed point to be
      used, in `(0, 1)`: a fit with a root outside converges to nothing, and its fixed point
      is an anti-limit (`DIVERGENT`). The default admits a mode of time constant 1,000 steps.
    - `sign_errors`: where `cv` does not extrapolate a coordinate, the window mean replaces
      `h_τ` only if it lies this many standard errors (inflated for autocorrelation) from
      zero, `>= 0`. Where the window does not settle the sign, the mean of noise is no
      better an estimate than `h_τ`, and steadier: the outer optimizer then steps firmly in
      a direction nobody measured (the trust benchmark: over 16 seeds of an over-fitting
      regression, 0 put glocal 7.6% behind local, 3 within 0.5%). 0 takes the mean wherever
      it forecasts better.
    """

    method: str = "cv"
    delta: float = _DELTA
    rtol: float = _RTOL
    max_growth: float = _MAX_GROWTH
    holdout: float = 0.25
    margin: float = 1.0
    max_radius: float = 0.999
    sign_errors: float = 3.0

    def checked(self) -> "EstimatorSettings":
        """These settings, or a `ValueError` that names the bad one and its range."""
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r}: choose one of {', '.join(METHODS)}.")
        bounds = {"delta": self.delta > 0, "rtol": 0 < self.rtol < 1,
                  "max_growth": self.max_growth > 0, "holdout": 0 < self.holdout < 1,
                  "margin": self.margin >= 0, "max_radius": 0 < self.max_radius < 1,
                  "sign_errors": self.sign_errors >= 0}
        for name, ok in bounds.items():
            if not ok:
                raise ValueError(f"`{name}`={getattr(self, name)!r} is out of range; the "
                                 f"default is {getattr(ESTIMATOR_DEFAULTS, name)!r} (see "
                                 "EstimatorSettings).")
        return self


ESTIMATOR_DEFAULTS = EstimatorSettings()
# The default method, for captions and the outer loop: the one in ESTIMATOR_DEFAULTS.
DEFAULT_METHOD = ESTIMATOR_DEFAULTS.method


class ModeFit(NamedTuple):
    """Eq. 14's fit of a window: `dmd`, the `DMDFit`; `kept`, bool `(rank,)`, the modes with
    `|λ − 1| ≤ δ`; `spectral_radius`, the largest `|λ|`."""

    dmd: DMDFit
    kept: np.ndarray
    spectral_radius: float


# What each coordinate of an estimate is, as data: `Estimate.used`.
EXTRAPOLATED, MEAN, LOCAL = "extrapolated", "mean", "local"
USES = (EXTRAPOLATED, MEAN, LOCAL)
# Why a coordinate was not extrapolated, as data (`Estimate.reasons`): a fallback kind of the
# DMD, or one of `cv`'s: the fit diverges, or the held-out rows did not confirm it.
REASONS = (DIVERGENT, UNCONFIRMED)


class Estimate(NamedTuple):
    """A steady-state estimate, and what it used.

    **Fields:**

    - `value` `(q,)`: the estimate (the local hypergradient where it fell back).
    - `local` `(q,)`: the window's last row, `h_τ`.
    - `fallback`: `""`, or why the whole estimate fell back to `h_τ` (one of
      `FALLBACK_KINDS` or `DIVERGENT`); `cv` never falls back as a whole: it chooses per
      coordinate, recorded in `used` and `reasons`.
    - `method`: the estimator's name.
    - `fit`: what the method fitted: a `ModeFit` (`paper`, `fbdmd`, `tlsdmd`), a
      `CrossValidation` (`cv`), else `None`.
    - `used`: per coordinate, one of `USES`: `"extrapolated"` (a steady state the method
      fitted), `"mean"` (the window mean) or `"local"` (`h_τ`); a tuple of `q` strings.
    - `reasons`: per coordinate, `""` where it extrapolated (or the method never does),
      else why not (a `FALLBACK_KINDS` entry, `DIVERGENT` or `UNCONFIRMED`).
    """

    value: np.ndarray
    local: np.ndarray
    fallback: str
    method: str
    fit: ModeFit | CrossValidation | None = None
    used: tuple = ()
    reasons: tuple = ()

    @property
    def reason(self) -> str:
        """Why it fell back, for people (`""` when it did not)."""
        if self.fallback == NO_EIGENVALUE and isinstance(self.fit, ModeFit):
            return f"{NO_EIGENVALUE} (spectral radius {self.fit.spectral_radius:.3g})"
        if self.fallback == TOO_LARGE:
            return f"{TOO_LARGE}: beyond max_growth times the window's largest row norm"
        return self.fallback


def _guarded(value: np.ndarray, window: np.ndarray, max_growth: float) -> tuple[np.ndarray, str]:
    """`value`, or the local hypergradient and why, when `value` is not a usable estimate."""
    kind = unusable(value, window, max_growth)
    return (window[-1], kind) if kind else (value, "")


def affine_fixed_point(window: np.ndarray, m: int, *, rtol: float = _RTOL,
                       max_growth: float = _MAX_GROWTH,
                       max_radius: float = 0.999) -> tuple[np.ndarray, str]:
    """The fixed point of the affine map fitted to the Hankel observables.

    With `G = hankel(window, m)`, fit `G[:, 1:] ≈ A G[:, :-1] + c 1^T` in least squares
    (singular values of `[G[:, :-1]; 1^T]` below `rtol` times the largest are cut), solve
    `(I − A) g_∞ = c` and map back with `g^{-1}`, the mean of the `m` blocks. This is
    Hankel DMD with a constant observable appended: its `λ = 1` mode is exact by
    construction, so no tolerance `δ` decides whether there is a steady state.

    **Returns:** `(value, fallback)`; `fallback` is `SINGULAR` when `I − A` cannot be solved,
    and `DIVERGENT` when an eigenvalue of `A` has modulus above `max_radius` (the fixed point
    of a map that does not contract is an anti-limit).
    """
    G = hankel(window, m)
    X = np.concatenate([G[:, :-1], np.ones((1, G.shape[1] - 1))])
    U, s, Vh = np.linalg.svd(X, full_matrices=False)
    r = int(np.sum(s > rtol * s[0]))
    coefficients = (G[:, 1:] @ Vh[:r].T / s[:r]) @ U[:, :r].T
    A, c = coefficients[:, :-1], coefficients[:, -1]
    system = np.eye(len(c)) - A
    if np.linalg.cond(system) > 1 / np.finfo(np.float64).eps:
        return window[-1], SINGULAR
    if np.max(np.abs(np.linalg.eigvals(A)), initial=0.0) > max_radius:
        return window[-1], DIVERGENT
    g = np.linalg.solve(system, c)
    return _guarded(g.reshape(m, -1).mean(axis=0), window, max_growth)


def _active_radius(roots: np.ndarray, series: np.ndarray, rtol: float = 1e-6) -> float:
    """The largest modulus among the `roots` that `series` `(n, q)` uses: a polynomial of
    degree `k` fitted to fewer modes has spare roots anywhere, with zero amplitude. The
    amplitudes come from least squares on `λ_j^t`, each column scaled to peak 1 in the
    window; a root counts when its amplitude exceeds `rtol` times the largest."""
    if roots.size == 0:
        return 0.0
    t = np.arange(len(series))[:, None]
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        peak = np.where(np.abs(roots) > 1, len(series) - 1, 0)
        V = roots[None, :] ** (t - peak[None, :])
    if not np.all(np.isfinite(V)):
        return float(np.max(np.abs(roots)))
    amplitudes = np.linalg.lstsq(V, series.astype(complex), rcond=None)[0]
    weight = np.linalg.norm(amplitudes, axis=1)
    active = weight > rtol * np.max(weight, initial=0.0)
    return float(np.max(np.abs(roots[active]), initial=0.0))


def reduced_rank_extrapolation(window: np.ndarray, k: int, *, max_growth: float = _MAX_GROWTH,
                               max_radius: float = 0.999) -> tuple[np.ndarray, str]:
    """The limit of the window by reduced-rank extrapolation of order `k`.

    If `h_t = h_∞ + Σ_{j≤k} a_j λ_j^t` with `λ_j ≠ 1`, a polynomial `P(z) = Σ_i γ_i z^i` of
    degree `k` with roots `λ_j` and `P(1) = Σ γ_i = 1` gives `Σ_i γ_i h_{t+i} = h_∞` for
    every `t`, and annihilates the differences: `Σ_i γ_i Δh_{t+i} = 0`. RRE (Sidi, 2017,
    ch. 1; Smith, Ford & Sidi, 1987) picks `γ` minimising `Σ_t ‖Σ_i γ_i Δh_{t+i}‖²` subject
    to `Σ γ_i = 1` over all `t` of the window, and returns the mean over `t` of
    `Σ_i γ_i h_{t+i}`, which also averages noise.

    **Returns:** `(value, fallback)`; `fallback` is `DIVERGENT` when a root of `P` has
    modulus above `max_radius`: the sequence the fit describes does not converge.
    """
    diffs = np.diff(window, axis=0)
    if not np.any(diffs):  # a constant window is its own limit (and M below would be 0)
        return window[-1], ""
    count = len(diffs) - k
    # D[t] = [Δh_t, ..., Δh_{t+k}], q × (k+1); M = Σ_t D[t]^T D[t].
    D = np.stack([diffs[i : i + count] for i in range(k + 1)], axis=-1)
    M = np.einsum("tqi,tqj->ij", D, D)
    M += 1e-12 * np.trace(M) * np.eye(k + 1)
    try:
        gamma = np.linalg.solve(M, np.ones(k + 1))
    except np.linalg.LinAlgError:
        return window[-1], SINGULAR
    gamma /= gamma.sum()
    if _active_radius(np.roots(gamma[::-1]), diffs) > max_radius:
        return window[-1], DIVERGENT
    values = np.stack([window[i : i + count] for i in range(k + 1)], axis=-1) @ gamma
    return _guarded(values.mean(axis=0), window, max_growth)


def _eq14(window: np.ndarray, m: int, settings: EstimatorSettings,
          debias: str | None) -> tuple[np.ndarray, str, ModeFit]:
    """Eq. 14: fit `hankel_dmd(window, m)`, keep the modes with `|λ − 1| <= delta` and map
    `Σ_kept b_j u_j` back with `g^{-1}`. Falls back to the local hypergradient when no
    eigenvalue is within `delta` of one (the sum would be empty, an estimate of exactly zero),
    or when the estimate is not finite, not real or too large. A spectral radius above one
    is reported, not acted on: noise routinely puts spurious eigenvalues just outside the
    unit circle."""
    fit = hankel_dmd(window, m, rtol=settings.rtol, debias=debias)
    kept = np.abs(fit.eigenvalues - 1.0) <= settings.delta
    modes = ModeFit(fit, kept, float(np.max(np.abs(fit.eigenvalues), initial=0.0)))
    local = window[-1]
    if not np.any(kept):
        return local, NO_EIGENVALUE, modes
    estimate = _unhankel(fit, np.where(kept, fit.amplitudes, 0.0), shift=False)
    if not np.all(np.isfinite(estimate)):
        return local, NOT_FINITE, modes
    # Kept modes of a real trajectory come in exact conjugate pairs (|λ - 1| is symmetric), so
    # any imaginary part is round-off, amplified where a Jordan block splits into a near pair.
    largest = np.max(np.linalg.norm(window, axis=1))
    if np.linalg.norm(estimate.imag) > 1e-6 * max(np.linalg.norm(estimate), largest):
        return local, IMAGINARY, modes
    value, kind = _guarded(estimate.real, window, settings.max_growth)
    return value, kind, modes


def steady_state(H, sigma: int = 80, m: int = 10, *, method: str | None = None,
                 settings: EstimatorSettings = ESTIMATOR_DEFAULTS, **overrides) -> Estimate:
    """The steady state of the last `sigma` rows of `H` by `method` (see the module table).

    **Arguments:**

    - `H`: an `(L, q)` trajectory of local hypergradients, `h_t` as rows (Eq. 12).
    - `sigma`: use the last `sigma` rows, `2 <= sigma <= L`.
    - `m`: delays of the Hankel observables (`paper`, `fbdmd`, `tlsdmd`, `affine`), or the
      order of the recurrence (`cv`, `rre`); `1 <= m < sigma` (`cv` needs `sigma` of at
      least `2 m + 2` plus its held-out rows). Ignored by `mean` and `local`.
    - `method`: one of `METHODS`; `None` takes `settings.method` (default `cv`).
    - `settings`: an `EstimatorSettings`; `**overrides` replace its fields by name, e.g.
      `steady_state(H, method="paper", delta=0.05)`.

    **Returns:** an `Estimate`; `Estimate.fit` carries what the method fitted (Eq. 14's
    eigenvalues and kept modes, or `cv`'s choice and scores).
    """
    unknown = set(overrides) - set(EstimatorSettings._fields)
    if unknown:
        raise TypeError(f"unknown setting(s) {sorted(unknown)}: EstimatorSettings has "
                        f"{', '.join(EstimatorSettings._fields)}.")
    settings = settings._replace(**overrides)
    if method is not None:
        settings = settings._replace(method=method)
    settings, method = settings.checked(), settings.method
    window = _check_trajectory(H, m, sigma)
    local, q = window[-1], window.shape[1]

    def everywhere(use: str, reason: str = "") -> dict:
        return dict(used=(use,) * q, reasons=(reason,) * q)

    if method == "local":
        return Estimate(local, local, "", method, **everywhere(LOCAL))
    if method == "mean":
        return Estimate(window.mean(axis=0), local, "", method, **everywhere(MEAN))
    if method == "cv":
        value, fit = cross_validated(window, m, holdout=settings.holdout,
                                     margin=settings.margin, rtol=_CV_RTOL,
                                     max_growth=settings.max_growth,
                                     max_radius=settings.max_radius,
                                     sign_errors=settings.sign_errors)
        used = tuple(EXTRAPOLATED if c in EXTRAPOLATORS else c for c in fit.choice)
        return Estimate(value, local, "", method, fit, used, fit.reasons)
    fit = None
    if method in EQ14_METHODS:
        value, fallback, fit = _eq14(window, m, settings, EQ14_METHODS[method])
    elif method == "affine":
        value, fallback = affine_fixed_point(window, m, rtol=settings.rtol,
                                             max_growth=settings.max_growth,
                                             max_radius=settings.max_radius)
    else:
        if sigma - 1 - m < 1:
            raise ValueError(f"method='rre' needs sigma > m + 1, got sigma={sigma}, m={m}.")
        value, fallback = reduced_rank_extrapolation(window, m, max_growth=settings.max_growth,
                                                     max_radius=settings.max_radius)
    uses = everywhere(LOCAL, fallback) if fallback else everywhere(EXTRAPOLATED)
    return Estimate(value, local, fallback, method, fit, **uses)


def glocal_estimate(H, sigma: int = 80, m: int = 10, *, method: str | None = None,
                    **settings) -> np.ndarray:
    """The glocal hypergradient `ĥ∞`, a real `(q,)` array: `steady_state(...).value`.

    The default `method` is `ESTIMATOR_DEFAULTS.method` (`cv`); `method="paper"` is the
    paper's Eq. 14; other keywords are `EstimatorSettings` fields. Where the estimator falls
    back the value is the local hypergradient `H[-1]`; call `steady_state` to know whether
    that happened.
    """
    return steady_state(H, sigma, m, method=method, **settings).value


def timed_steady_state(H, sigma: int, m: int, **kwargs) -> tuple[Estimate, float]:
    """`steady_state(...)` and the seconds the estimate took."""
    start = time.perf_counter()
    estimate = steady_state(H, sigma, m, **kwargs)
    return estimate, time.perf_counter() - start

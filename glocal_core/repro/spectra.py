"""The DMD behind the estimates, measured: its spectra, the terms of Theorem 3.1, and the
DMD configurations of Figure 4.

Import it as `import glocal_core.repro.spectra as gs`. `window_spectra` and `spectra_row` re-fit
each window's DMD and report where the assumptions of Eq. 14 and Theorem 3.1 (an eigenvalue
near one, a spectral radius of one) hold; `error_terms` and `pooled_terms` split the error
of the estimate as the proof of Theorem 3.1 does (Eq. 16 and 17); `dmd_grid` reduces the
`fig4` runs per (σ, m). Rows are NamedTuples of numbers, which `glocal_core.repro.tables` formats.
"""

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from .. import OuterResult, forecast
from .._dmd import NO_EIGENVALUE
from .quality import refit, relative_error
from .results import final


class WindowSpectra(NamedTuple):
    """Per window of a run with kept trajectories: `spectral_radius`, `gap` (the distance
    `min_j |λ_j − 1|` of the eigenvalue closest to 1; `inf` for an empty spectrum) and
    `fallback`, from the DMD re-fitted with the run's settings."""

    spectral_radius: np.ndarray
    gap: np.ndarray
    fallback: np.ndarray


def window_spectra(result: OuterResult) -> WindowSpectra:
    """`WindowSpectra` of a `glocal` or `global` run with `keep_trajectories`."""
    if result.trajectories is None:
        raise ValueError("window_spectra needs a run with keep_trajectories=True.")
    c = result.config
    fit = refit(result.trajectories, c.sigma, c.m, delta=c.estimator.delta, rtol=c.estimator.rtol)
    gap = np.array([np.min(np.abs(s.fit.dmd.eigenvalues - 1.0), initial=np.inf)
                    for s in fit.states])
    return WindowSpectra(fit.spectral_radius, gap, fit.fallback)


class SpectraRow(NamedTuple):
    """The fitted windows of some runs, pooled. **Fields:** `windows`; `spectral_radius` and
    `gap` (`min_j |λ_j − 1|`) per window; the rates of `fallback`, of `no_eigenvalue` among
    all windows, of `other_fallback` kinds and of a spectral radius above one."""

    windows: int
    spectral_radius: np.ndarray
    gap: np.ndarray
    fallback: float
    no_eigenvalue: float
    other_fallback: float
    radius_above_one: float


def spectra_row(results: Sequence[OuterResult]) -> SpectraRow:
    """`SpectraRow` of runs kept with `keep_trajectories` (their DMD re-fitted)."""
    spectra = [window_spectra(r) for r in results]
    radius = np.concatenate([w.spectral_radius for w in spectra])
    kinds = np.array([k for r in results for k in r.fallback_reason])
    return SpectraRow(radius.size, radius, np.concatenate([w.gap for w in spectra]),
                      float(np.mean(kinds != "")), float(np.mean(kinds == NO_EIGENVALUE)),
                      float(np.mean((kinds != "") & (kinds != NO_EIGENVALUE))),
                      float(np.mean(radius > 1)))


class ErrorTerms(NamedTuple):
    """The two terms of the proof of Theorem 3.1, per window, relative to `‖h_T‖`
    (Eq. 15–17): `horizon` (T − sτ); `total` `‖h_T − ĥ∞‖`; `forecast` `‖h_T − ĥ_T‖`, the
    error of the DMD forecast with all modes (Eq. 16); `dropped` `‖ĥ_T − ĥ∞‖`, the modes
    with λ ≉ 1 at the horizon that Eq. 14 leaves out (Eq. 17); `fallback` (there
    `ĥ∞ = h_τ` and the split does not apply)."""

    horizon: np.ndarray
    total: np.ndarray
    forecast: np.ndarray
    dropped: np.ndarray
    fallback: np.ndarray


def error_terms(result: OuterResult, *, delta: float | None = None) -> ErrorTerms:
    """Split `‖h_T − ĥ∞‖ ≤ ‖h_T − ĥ_T‖ + ‖ĥ_T − ĥ∞‖` per window of a `global` run with kept
    trajectories, re-fitting the DMD with the run's σ and m (and its δ unless given).

    `ĥ_T = forecast(fit, T − sτ)` extrapolates every mode to step T, so where the spectral
    radius exceeds 1 the forecast term grows geometrically with the horizon: this is why the
    theorem assumes a spectral radius of 1.
    """
    if result.config.strategy != "global" or result.trajectories is None:
        raise ValueError("error_terms needs a `global` run with keep_trajectories=True.")
    c = result.config
    fit = refit(result.trajectories, c.sigma, c.m,
                delta=delta if delta is not None else c.estimator.delta, rtol=c.estimator.rtol)
    target = np.asarray(result.hypergradient, dtype=np.float64)
    horizon = c.total_steps - np.asarray(result.step)
    ahead = np.array([forecast(s.fit.dmd, int(n)) for s, n in zip(fit.states, horizon)])
    return ErrorTerms(horizon, relative_error(fit.value, target), relative_error(ahead, target),
                      relative_error(ahead, fit.value, reference=target), fit.fallback)


def pooled_terms(results: Sequence[OuterResult]) -> ErrorTerms:
    """`error_terms` of `global` runs with kept trajectories, pooled over their windows
    with a horizon > 0."""
    terms = [error_terms(r) for r in results]
    joined = ErrorTerms(*(np.concatenate(parts) for parts in zip(*terms)))
    return ErrorTerms(*(v[joined.horizon > 0] for v in joined))


# --- DMD configurations (Figure 4, right) ---------------------------------------------------


class DMDGridRow(NamedTuple):
    """One (σ, m) of `fig4` over seeds. **Fields:** `sigma`, `m`, `seeds`, `finished`;
    `val_loss`, `val_loss_std` (after the last window) and `test_accuracy`,
    `test_accuracy_std` (last evaluation), over the finished runs (`results.final`'s rule);
    `fallback_rate`, `no_eigenvalue_rate`, `radius_above_one_rate` over every window."""

    sigma: int
    m: int
    seeds: int
    finished: int
    val_loss: float
    val_loss_std: float
    test_accuracy: float
    test_accuracy_std: float
    fallback_rate: float
    no_eigenvalue_rate: float
    radius_above_one_rate: float


def dmd_grid(results: Mapping[str, OuterResult]) -> list[DMDGridRow]:
    """The `fig4` runs per (σ, m), over seeds, sorted by (σ, m)."""
    groups: dict[tuple[int, int], list[OuterResult]] = {}
    for r in results.values():
        groups.setdefault((r.config.sigma, r.config.m), []).append(r)
    rows = []
    for (sigma, m), runs in sorted(groups.items()):
        done = final(runs)
        loss = np.array([r.val_loss[-1] for r in runs if not r.stopped and len(r.val_loss)])
        fell = np.concatenate([np.asarray(r.fallback, dtype=bool) for r in runs])
        kinds = np.array([k for r in runs for k in r.fallback_reason])
        radius = np.concatenate([np.asarray(r.spectral_radius) for r in runs])
        rows.append(DMDGridRow(
            sigma, m, len(runs), done.finished,
            float(loss.mean()) if loss.size else float("nan"),
            float(loss.std()) if loss.size else float("nan"),
            done.accuracy_mean, done.accuracy_std,
            float(np.mean(fell)) if fell.size else float("nan"),
            float(np.mean(kinds == NO_EIGENVALUE)) if kinds.size else float("nan"),
            float(np.mean(radius > 1)) if radius.size else float("nan")))
    return rows


def median_split(values: np.ndarray, keys: np.ndarray) -> tuple[float, float, float]:
    """`(split, median of values where keys <= split, where keys > split)`, with `split`
    the median key (NaN for an empty side)."""
    split = float(np.median(keys))
    low, high = values[keys <= split], values[keys > split]
    return (split, float(np.median(low)) if low.size else float("nan"),
            float(np.median(high)) if high.size else float("nan"))

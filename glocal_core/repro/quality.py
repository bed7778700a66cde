"""How close the local and glocal hypergradients come to the global one, measured.

Import it as `import glocal_core.repro.quality as gq`. The paper bounds the error of the glocal
estimate (Theorem 3.1) but never measures it. A `global` run records, per outer step, the
local hypergradient `h_τ`, the estimate `ĥ∞` of the same window and the true global
hypergradient `h_T` of a playout to step T (`OuterResult.hypergradient`), so:

- `estimate_quality` scores `h_τ` and `ĥ∞` against `h_T` (cosine similarity and relative
  error), `quality_summary` condenses that into rates, `window_errors` pools runs and
  `hypergradient_errors` makes curves over seeds;
- `refit`, `estimate_quality(..., sigma=, m=, delta=)` and `delta_sweep` re-fit the DMD to
  the kept trajectories with other settings.

`glocal_core.repro.spectra` looks at the DMD itself (its spectra, Theorem 3.1 term by term, the
configurations of Figure 4).

Everything here reads finished `OuterResult`s and never trains; rows are NamedTuples of
numbers, which `glocal_core.repro.tables` formats.
"""

from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np
from jaxtyping import PRNGKeyArray

from .._dmd import NO_EIGENVALUE
from .. import Estimate, OuterResult, steady_state
from .results import Curve, over_seeds

# --- scores ---------------------------------------------------------------------------------


def cosine_similarity(a, b) -> np.ndarray:
    """Row-wise `⟨a, b⟩ / (‖a‖ ‖b‖)` over the last axis; NaN where either vector is zero.

    ```python
    >>> cosine_similarity([[1.0, 0.0], [1.0, 1.0]], [[2.0, 0.0], [-1.0, -1.0]])
    array([ 1., -1.])

    ```
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, np.sum(a * b, axis=-1) / norms, np.nan)


def relative_error(value, target, *, reference=None) -> np.ndarray:
    """Row-wise `‖value − target‖ / ‖reference‖` over the last axis; NaN where `reference`
    is zero. `reference` defaults to `target`; Theorem 3.1 measures the distance between two
    estimates relative to `h_T` (`spectra.error_terms`).

    ```python
    >>> relative_error([[1.0, 0.0], [0.0, 0.0]], [[2.0, 0.0], [0.0, 3.0]])
    array([0.5, 1. ])
    >>> relative_error([1.0, 0.0], [2.0, 0.0], reference=[0.0, 4.0])
    array(0.25)

    ```
    """
    value, target = np.asarray(value, dtype=np.float64), np.asarray(target, dtype=np.float64)
    reference = target if reference is None else np.asarray(reference, dtype=np.float64)
    norm = np.linalg.norm(reference, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, np.linalg.norm(value - target, axis=-1) / norm, np.nan)


# --- re-fitting the DMD ---------------------------------------------------------------------


class Refit(NamedTuple):
    """Eq. 14 re-fitted to every window of a run: `value` `(S, q)` (h_τ where it fell back),
    per window `fallback`, `no_eigenvalue_near_one`, `spectral_radius`, `num_kept`, and the
    `Estimate`s (`method="paper"`, each with its `ModeFit`)."""

    value: np.ndarray
    fallback: np.ndarray
    no_eigenvalue_near_one: np.ndarray
    spectral_radius: np.ndarray
    num_kept: np.ndarray
    states: tuple[Estimate, ...]


def refit(trajectories, sigma: int, m: int, *, delta: float | None = None,
          rtol: float | None = None) -> Refit:
    """Eq. 14 (`steady_state(..., method="paper")`) on the last `sigma` rows (`1 <= m < sigma <= L`) of every
    window of `trajectories` `(S, L, q)` (e.g. `OuterResult.trajectories`); `delta`, `rtol`:
    its tolerances (`None`: its defaults)."""
    kwargs = {k: v for k, v in (("delta", delta), ("rtol", rtol)) if v is not None}
    trajectories = np.asarray(trajectories, dtype=np.float64)
    if trajectories.ndim != 3:
        raise ValueError(f"`trajectories` must be (S, L, q), got shape {trajectories.shape}.")
    states = tuple(steady_state(H, sigma=sigma, m=m, method="paper", **kwargs)
                   for H in trajectories)
    return Refit(
        value=np.array([s.value for s in states]).reshape(len(states), trajectories.shape[-1]),
        fallback=np.array([bool(s.fallback) for s in states], dtype=bool),
        no_eigenvalue_near_one=np.array([not np.any(s.fit.kept) for s in states], dtype=bool),
        spectral_radius=np.array([s.fit.spectral_radius for s in states]),
        num_kept=np.array([int(np.sum(s.fit.kept)) for s in states]),
        states=states,
    )


# --- how close is glocal to global? ---------------------------------------------------------


class EstimateQuality(NamedTuple):
    """Local (`h_τ`) and glocal (`ĥ∞`) against the global hypergradient `h_T`, per window.

    **Fields** (`(S,)` each): `step` (at the window's end) and `horizon` (`T − step`, 0 for
    the last window, where `h_T = h_τ`); `cosine_*` (similarity with `h_T`) and `error_*`
    (`‖v − h_T‖ / ‖h_T‖`) of `local` and `glocal`; `fallback` (`ĥ∞ = h_τ`), of which
    `no_eigenvalue_near_one`; the DMD's `spectral_radius`.
    """

    step: np.ndarray
    horizon: np.ndarray
    cosine_local: np.ndarray
    cosine_glocal: np.ndarray
    error_local: np.ndarray
    error_glocal: np.ndarray
    fallback: np.ndarray
    no_eigenvalue_near_one: np.ndarray
    spectral_radius: np.ndarray


def estimate_quality(result: OuterResult, *, sigma: int | None = None, m: int | None = None,
                     delta: float | None = None) -> EstimateQuality:
    """Score the local hypergradient and the glocal estimate of every window of a `global`
    run against the global hypergradient its playout computed.

    Without `sigma`, `m` and `delta`, the glocal estimate is the one the run recorded
    (`OuterResult.estimate`, with the run's settings). With any of them, the DMD is re-fitted
    to the kept trajectories (`refit`; the others default to the run's σ, m and δ), which
    needs a run with `keep_trajectories`; `sigma` cannot exceed the run's σ.

    Note that the run followed the global strategy: φ_s is the global run's, and local and
    glocal are what those two strategies *would* have used at that φ_s and state.
    """
    if result.config.strategy != "global":
        raise ValueError(
            f"estimate_quality needs a `global` run (it holds h_T), got "
            f"{result.config.strategy!r}."
        )
    target = np.asarray(result.hypergradient, dtype=np.float64)
    local = np.asarray(result.local_hypergradient, dtype=np.float64)
    if sigma is None and m is None and delta is None:
        glocal = np.asarray(result.estimate, dtype=np.float64)
        fallback = np.asarray(result.fallback, dtype=bool)
        no_one = np.array([kind == NO_EIGENVALUE for kind in result.fallback_reason], dtype=bool)
        radius = np.asarray(result.spectral_radius, dtype=np.float64)
    else:
        if result.trajectories is None:
            raise ValueError("Re-fitting needs a run with keep_trajectories=True.")
        fit = refit(result.trajectories, sigma or result.config.sigma, m or result.config.m,
                    delta=delta if delta is not None else result.config.estimator.delta,
                    rtol=result.config.estimator.rtol)
        glocal, fallback = fit.value, fit.fallback
        no_one, radius = fit.no_eigenvalue_near_one, fit.spectral_radius
    step = np.asarray(result.step)
    return EstimateQuality(
        step=step,
        horizon=result.config.total_steps - step,
        cosine_local=cosine_similarity(local, target),
        cosine_glocal=cosine_similarity(glocal, target),
        error_local=relative_error(local, target),
        error_glocal=relative_error(glocal, target),
        fallback=fallback,
        no_eigenvalue_near_one=no_one,
        spectral_radius=radius,
    )


class QualitySummary(NamedTuple):
    """Medians and rates over the windows with a horizon > 0: `closer`, `tie` (e.g. a
    fallback) and `farther` are the shares where glocal's error is below, equal to or above
    local's."""

    windows: int
    median_cosine_local: float
    median_cosine_glocal: float
    median_error_local: float
    median_error_glocal: float
    closer: float
    tie: float
    farther: float
    fallback_rate: float
    no_eigenvalue_rate: float
    radius_above_one_rate: float


def quality_summary(quality: EstimateQuality, *, tie_rtol: float = 1e-9) -> QualitySummary:
    """Rates and medians over the windows with a horizon > 0 (the last window, where the
    playout has nothing left to run and `h_T = h_τ`, says nothing about an estimate). Two
    errors within `tie_rtol` of each other are a tie."""
    use = quality.horizon > 0
    n = int(np.sum(use))
    el, eg = quality.error_local[use], quality.error_glocal[use]
    tie = np.abs(eg - el) <= tie_rtol * np.maximum(np.abs(el), 1e-300)

    def rate(mask):
        return float(np.mean(mask)) if n else float("nan")

    def median(values):
        return float(np.nanmedian(values)) if n and np.any(np.isfinite(values)) else float("nan")

    return QualitySummary(
        n, median(quality.cosine_local[use]), median(quality.cosine_glocal[use]), median(el),
        median(eg), rate(~tie & (eg < el)), rate(tie), rate(~tie & (eg > el)),
        rate(quality.fallback[use]), rate(quality.no_eigenvalue_near_one[use]),
        rate(quality.spectral_radius[use] > 1))


def closer(quality: EstimateQuality) -> np.ndarray:
    """Per window with a horizon > 0: the glocal estimate was strictly closer to `h_T` than
    the local hypergradient (a fallback, where they are equal, is not)."""
    use = quality.horizon > 0
    return ((quality.error_glocal < quality.error_local) & ~quality.fallback)[use]


def bootstrap_interval(values, *, key: PRNGKeyArray, num_resamples: int = 2000,
                       level: float = 0.9) -> tuple[float, float]:
    """A percentile bootstrap interval of coverage `level` for the mean of the 1-D `values`
    (of a 0/1 mask: for a rate); NaNs for an empty sample. Windows of one run are not
    independent draws: read it as a lower bound on the uncertainty."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return float("nan"), float("nan")
    index = np.asarray(jax.random.randint(key, (num_resamples, values.size), 0, values.size))
    means = values[index].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def concat_quality(qualities: Sequence[EstimateQuality]) -> EstimateQuality:
    """The windows of several runs as one `EstimateQuality` (e.g. to pool seeds)."""
    return EstimateQuality(*(np.concatenate([getattr(q, f) for q in qualities])
                             for f in EstimateQuality._fields))


def delta_sweep(results: Sequence[OuterResult], deltas: Sequence[float]) -> list[QualitySummary]:
    """`quality_summary` of the windows of `global` runs (pooled), re-fitted at every δ in
    `deltas` with each run's σ and m: one summary per δ."""
    return [quality_summary(concat_quality([estimate_quality(r, delta=float(d)) for r in results]))
            for d in deltas]


def window_errors(global_runs: Sequence[OuterResult]) -> EstimateQuality:
    """`estimate_quality` of `global` runs, pooled, without the last window of each (at T
    itself h_T is h_τ)."""
    pooled = concat_quality([estimate_quality(r) for r in global_runs])
    return EstimateQuality(*(np.asarray(v)[pooled.horizon > 0] for v in pooled))


def hypergradient_errors(global_runs: Sequence[OuterResult]) -> dict[str, Curve]:
    """The relative errors of the local hypergradient and of the recorded estimate against
    h_T window by window (the last left out), mean ± std over the seeds of `global` runs:
    `{"local": Curve, "glocal": Curve}`. Both are measured on the global run's states."""
    qualities = [estimate_quality(r) for r in global_runs]
    return {strategy: over_seeds([q.step[q.horizon > 0] for q in qualities],
                                 [getattr(q, f"error_{strategy}")[q.horizon > 0]
                                  for q in qualities])
            for strategy in ("local", "glocal")}

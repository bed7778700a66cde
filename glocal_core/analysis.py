"""What the analysis chapter and the results page compute from cached outer-loop results.

Import it as `import glocal_core.analysis as ga`; `import glocal_core` does not import it (it
needs matplotlib, as `plotting` does). Everything here reads finished `OuterResult`s (from
`experiments.reproduce`) and never trains.

Three questions, one group of functions each:

- **How close is the glocal estimate to the global hypergradient?** The paper bounds the
  error (Theorem 3.1) but never measures it. A `global` run records, per outer step, the
  local hypergradient `h_τ`, the DMD steady state `ĥ∞` of the same window and the true global
  hypergradient `h_T` of a playout to step T (`OuterResult.hypergradient`).
  `estimate_quality` scores `h_τ` and `ĥ∞` against `h_T` (cosine similarity and relative
  error), `quality_summary` condenses that into rates, and `refit` / `estimate_quality(...,
  sigma=, m=, delta=)` re-fit the DMD to the kept trajectories with other settings.
  `error_terms` splits the error as the proof of Theorem 3.1 does (Eq. 16 and 17).
- **Which DMD configuration works best?** (Figure 4, right): `dmd_grid` aggregates the final
  validation loss and test accuracy of the `fig4` runs per (σ, m), over seeds.
- **Ours beside the paper's**: `table2_rows`, `table3_rows`, `final_rows`, `dmd_grid_rows`
  give the results page one list of row dicts per table, every row naming its profile and
  data; `markdown_table` renders them (no pandas needed).
"""

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import numpy as np
from jaxtyping import PRNGKeyArray
from matplotlib.axes import Axes
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

from ._dmd import FALLBACK_KINDS, SteadyState, estimate_steady_state, forecast
from ._outer import OuterResult
from .experiments import PAPER_TABLE2, PAPER_TABLE3, Experiment, RunSpec
from .plotting import STRATEGY_COLORS

# --- scores -------------------------------------------------------------------------------


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


def relative_error(value, target) -> np.ndarray:
    """Row-wise `‖value − target‖ / ‖target‖` over the last axis; NaN where `target` is zero.

    ```python
    >>> relative_error([[1.0, 0.0], [0.0, 0.0]], [[2.0, 0.0], [0.0, 3.0]])
    array([0.5, 1. ])

    ```
    """
    value, target = np.asarray(value, dtype=np.float64), np.asarray(target, dtype=np.float64)
    norm = np.linalg.norm(target, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, np.linalg.norm(value - target, axis=-1) / norm, np.nan)


# --- re-fitting the DMD ---------------------------------------------------------------------


class Refit(NamedTuple):
    """The glocal estimate of every window of a run, re-fitted with other DMD settings.

    **Fields:** `value` `(S, q)` (the local hypergradient where it fell back), `fallback`,
    `no_eigenvalue_near_one`, `spectral_radius`, `num_kept` `(S,)`, and the `SteadyState`s.
    """

    value: np.ndarray
    fallback: np.ndarray
    no_eigenvalue_near_one: np.ndarray
    spectral_radius: np.ndarray
    num_kept: np.ndarray
    states: tuple[SteadyState, ...]


def refit(trajectories, sigma: int, m: int, *, delta: float | None = None,
          rtol: float | None = None) -> Refit:
    """`estimate_steady_state` on the last `sigma` rows of every window's trajectory.

    **Arguments:**

    - `trajectories`: `(S, L, q)`, e.g. `OuterResult.trajectories` (L = the run's σ).
    - `sigma`, `m`: the DMD setting, `1 <= m < sigma <= L`.
    - `delta`, `rtol`: the tolerances of `estimate_steady_state` (`None`: its defaults).

    **Returns:** a `Refit`.
    """
    kwargs = {k: v for k, v in (("delta", delta), ("rtol", rtol)) if v is not None}
    trajectories = np.asarray(trajectories, dtype=np.float64)
    if trajectories.ndim != 3:
        raise ValueError(f"`trajectories` must be (S, L, q), got shape {trajectories.shape}.")
    states = tuple(estimate_steady_state(H, sigma=sigma, m=m, **kwargs) for H in trajectories)
    return Refit(
        value=np.array([s.value for s in states]).reshape(len(states), trajectories.shape[-1]),
        fallback=np.array([s.fallback for s in states], dtype=bool),
        no_eigenvalue_near_one=np.array([not np.any(s.kept) for s in states], dtype=bool),
        spectral_radius=np.array([s.spectral_radius for s in states]),
        num_kept=np.array([int(np.sum(s.kept)) for s in states]),
        states=states,
    )


# --- how close is glocal to global? ---------------------------------------------------------


class EstimateQuality(NamedTuple):
    """Local and glocal against the true global hypergradient, one entry per outer step.

    **Fields:**

    - `step`: inner steps at the end of the window, `(S,)`; `horizon`: `T − step`, how far
      the playout ran beyond the window (0 for the last window, where `h_T = h_τ`).
    - `cosine_local`, `cosine_glocal`: cosine similarity of `h_τ` and `ĥ∞` with `h_T`.
    - `error_local`, `error_glocal`: `‖v − h_T‖ / ‖h_T‖`.
    - `fallback`: the DMD fell back, so `ĥ∞ = h_τ`.
    - `no_eigenvalue_near_one`: of those, because no eigenvalue lay within δ of 1.
    - `spectral_radius`: of the window's DMD.
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


def fallback_kind(reason: str) -> str:
    """A fallback as counted: `""` (none), one of `FALLBACK_KINDS`, or `"other"`."""
    if not reason:
        return ""
    return reason if reason in FALLBACK_KINDS else "other"


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
        no_one = np.array([fallback_kind(r) == "no eigenvalue near 1"
                           for r in result.fallback_reason], dtype=bool)
        radius = np.asarray(result.spectral_radius, dtype=np.float64)
    else:
        if result.trajectories is None:
            raise ValueError("Re-fitting needs a run with keep_trajectories=True.")
        fit = refit(result.trajectories, sigma or result.config.sigma, m or result.config.m,
                    delta=delta if delta is not None else result.config.delta,
                    rtol=result.config.rtol)
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


def quality_summary(quality: EstimateQuality, *, tie_rtol: float = 1e-9) -> dict:
    """Rates and medians over the windows with a horizon > 0 (the last window, where the
    playout has nothing left to run and `h_T = h_τ`, says nothing about an estimate).

    **Returns:** a dict with `windows`; `median cosine local/glocal`; `median error
    local/glocal`; `glocal closer`, `tie`, `glocal farther` (fractions of windows where the
    glocal estimate's error is below, equal to (within `tie_rtol`, e.g. a fallback) or above
    the local one's); `fallback rate`, `no eigenvalue near 1 rate` and `spectral radius > 1
    rate`.
    """
    use = quality.horizon > 0
    n = int(np.sum(use))
    el, eg = quality.error_local[use], quality.error_glocal[use]
    tie = np.abs(eg - el) <= tie_rtol * np.maximum(np.abs(el), 1e-300)

    def rate(mask):
        return float(np.mean(mask)) if n else float("nan")

    def median(values):
        return float(np.nanmedian(values)) if n and np.any(np.isfinite(values)) else float("nan")

    return {
        "windows": n,
        "median cosine local": median(quality.cosine_local[use]),
        "median cosine glocal": median(quality.cosine_glocal[use]),
        "median error local": median(el),
        "median error glocal": median(eg),
        "glocal closer": rate(~tie & (eg < el)),
        "tie": rate(tie),
        "glocal farther": rate(~tie & (eg > el)),
        "fallback rate": rate(quality.fallback[use]),
        "no eigenvalue near 1 rate": rate(quality.no_eigenvalue_near_one[use]),
        "spectral radius > 1 rate": rate(quality.spectral_radius[use] > 1),
    }


def bootstrap_interval(values, *, key: PRNGKeyArray, num_resamples: int = 2000,
                       level: float = 0.9) -> tuple[float, float]:
    """A percentile bootstrap interval for the mean of `values` (a 0/1 mask gives one for a
    rate). Windows of one run are not independent draws, so read it as a lower bound on the
    uncertainty. NaNs for an empty sample.

    **Arguments:**

    - `values`: a 1-D sample.
    - `key`: the PRNG key of the resampling.
    - `num_resamples`, `level`: how many resamples, and the coverage of the interval.
    """
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


def delta_sweep(results: Sequence[OuterResult], deltas: Sequence[float]) -> list[dict]:
    """`quality_summary` of the windows of `global` runs (pooled), re-fitted at every δ in
    `deltas` with each run's σ and m: one dict per δ, with `delta` added."""
    return [{"delta": float(d), **quality_summary(concat_quality(
                [estimate_quality(r, delta=float(d)) for r in results]))}
            for d in deltas]


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
    fit = refit(result.trajectories, c.sigma, c.m, delta=c.delta, rtol=c.rtol)
    gap = np.array([np.min(np.abs(s.fit.eigenvalues - 1.0), initial=np.inf)
                    for s in fit.states])
    return WindowSpectra(fit.spectral_radius, gap, fit.fallback)


class ErrorTerms(NamedTuple):
    """The two terms of the proof of Theorem 3.1, measured per window (Eq. 15–17).

    **Fields** (`(S,)` each): `horizon` (T − sτ); `total` `‖h_T − ĥ∞‖`; `forecast`
    `‖h_T − ĥ_T‖`, the error of the DMD forecast with all modes (Eq. 16); `dropped`
    `‖ĥ_T − ĥ∞‖`, the modes with λ ≉ 1 at the horizon that Eq. 14 leaves out (Eq. 17);
    `target_norm` `‖h_T‖`; `fallback` (there `ĥ∞ = h_τ` and the split does not apply).
    """

    horizon: np.ndarray
    total: np.ndarray
    forecast: np.ndarray
    dropped: np.ndarray
    target_norm: np.ndarray
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
    fit = refit(result.trajectories, result.config.sigma, result.config.m,
                delta=delta if delta is not None else result.config.delta,
                rtol=result.config.rtol)
    target = np.asarray(result.hypergradient, dtype=np.float64)
    horizon = result.config.total_steps - np.asarray(result.step)
    ahead = np.array([forecast(s.fit, int(n)) for s, n in zip(fit.states, horizon)])
    return ErrorTerms(
        horizon=horizon,
        total=np.linalg.norm(target - fit.value, axis=1),
        forecast=np.linalg.norm(target - ahead, axis=1),
        dropped=np.linalg.norm(ahead - fit.value, axis=1),
        target_norm=np.linalg.norm(target, axis=1),
        fallback=fit.fallback,
    )


# --- DMD configurations (Figure 4, right) ---------------------------------------------------


def _mean_std(values) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return float("nan"), float("nan")
    return float(np.mean(values)), float(np.std(values))


def final_test_accuracy(result: OuterResult) -> float:
    """The last evaluated test accuracy (NaN if the run never evaluated)."""
    return float(result.test_accuracy[-1]) if len(result.test_accuracy) else float("nan")


def dmd_grid(results: Mapping[str, OuterResult]) -> list[dict]:
    """The `fig4` runs per (σ, m), over seeds: one dict per configuration, sorted by (σ, m).

    **Returns:** dicts with `sigma`, `m`, `seeds`, `val_loss` and `val_loss_std` (the
    validation loss after the last window), `test_accuracy` and `test_accuracy_std` (the
    last evaluation), `fallback_rate` (over all windows of all seeds), `no_eigenvalue_rate`,
    `radius_above_one_rate` and `stopped` (runs that stopped early).
    """
    groups: dict[tuple[int, int], list[OuterResult]] = {}
    for r in results.values():
        groups.setdefault((r.config.sigma, r.config.m), []).append(r)
    rows = []
    for (sigma, m), runs in sorted(groups.items()):
        val, val_std = _mean_std([r.val_loss[-1] for r in runs if len(r.val_loss)])
        acc, acc_std = _mean_std([final_test_accuracy(r) for r in runs])
        reasons = [fallback_kind(x) for r in runs for x in r.fallback_reason]
        fallback = np.concatenate([np.asarray(r.fallback, dtype=bool) for r in runs])
        radius = np.concatenate([np.asarray(r.spectral_radius) for r in runs])
        rows.append({
            "sigma": sigma, "m": m, "seeds": len(runs),
            "val_loss": val, "val_loss_std": val_std,
            "test_accuracy": acc, "test_accuracy_std": acc_std,
            "fallback_rate": float(np.mean(fallback)) if fallback.size else float("nan"),
            "no_eigenvalue_rate": (float(np.mean([k == "no eigenvalue near 1" for k in reasons]))
                                   if reasons else float("nan")),
            "radius_above_one_rate": float(np.mean(radius > 1)) if radius.size else float("nan"),
            "stopped": sum(bool(r.stopped) for r in runs),
        })
    return rows


# --- the results page ------------------------------------------------------------------------


def _fmt(mean: float, std: float = float("nan"), n: int = 1, digits: int = 3) -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def data_text(spec: RunSpec) -> str:
    """What a run trained on, e.g. `digits (standing in for cifar10), f = 50`."""
    text = (f"{spec.data.name} (standing in for {spec.data.stands_in_for})"
            if spec.data.stands_in_for else spec.data.name)
    if spec.data.imbalance is not None:
        text += f", f = {spec.data.imbalance:g}"
    return text


def provenance(exp: Experiment) -> str:
    """One line naming what produced an experiment's numbers: profile, data, T, τ, σ, m and
    seeds (a setting that varies across runs is given as a set), or, for the `table3`
    benchmark, its workload."""
    if exp.bench is not None:
        b = exp.bench
        model = "MLP 784-32-10" if b.model == "mlp" else "LeNet"
        return (f"profile {exp.profile} · {model} on random 28×28 images (run time does not "
                f"depend on pixel values) · T = {b.steps}, τ = {b.tau}, σ = {b.sigma}, "
                f"m = {b.m}, batch {b.batch_size}, validation {b.val_size}")
    data = ", ".join(dict.fromkeys(
        f"{s.data.name} (standing in for {s.data.stands_in_for})" if s.data.stands_in_for
        else s.data.name for s in exp.runs))
    models = ", ".join(dict.fromkeys(s.model_title for s in exp.runs))
    parts = [f"profile {exp.profile}", f"data: {data}", f"model: {models}"]
    for field, symbol in (("total_steps", "T"), ("tau", "τ"), ("sigma", "σ"), ("m", "m")):
        values = sorted({getattr(s.outer, field) for s in exp.runs})
        parts.append(f"{symbol} = {values[0]}" if len(values) == 1
                     else f"{symbol} ∈ {{{', '.join(map(str, values))}}}")
    parts.append(f"seeds: {len({s.seed for s in exp.runs})}")
    return " · ".join(parts)


def _paired(exp: Experiment, results: Mapping[str, OuterResult]):
    return [(spec, results[spec.label]) for spec in exp.runs if spec.label in results]


def table2_rows(exp: Experiment, results: Mapping[str, OuterResult]) -> list[dict]:
    """Table 2 (test accuracy after data reweighting), ours beside the paper's, one row per
    dataset and imbalance factor, mean ± std over seeds."""
    groups: dict[tuple, dict[str, list[OuterResult]]] = {}
    specs: dict[tuple, RunSpec] = {}
    for spec, result in _paired(exp, results):
        key = (spec.data.paper_name, spec.data.imbalance)
        groups.setdefault(key, {}).setdefault(spec.outer.strategy, []).append(result)
        specs.setdefault(key, spec)
    rows = []
    for key, by_strategy in groups.items():
        paper = PAPER_TABLE2.get((key[0], int(key[1])) if key[1] is not None else key)
        row = {"profile": exp.profile, "paper's dataset / f": f"{key[0]} / {key[1]:g}",
               "our data": data_text(specs[key])}
        for i, strategy in enumerate(("local", "glocal")):
            runs = by_strategy.get(strategy, [])
            row[f"ours {strategy}"] = _fmt(*_mean_std([final_test_accuracy(r) for r in runs]),
                                           len(runs))
            row[f"paper {strategy}"] = f"{paper[i]:.3f}" if paper else "–"
        row["seeds"] = max(len(v) for v in by_strategy.values())
        rows.append(row)
    return rows


def table3_rows(report: Mapping, profile: str) -> tuple[list[dict], list[dict]]:
    """Table 3 (runtime): seconds per strategy and the ratios, ours beside the paper's.

    **Returns:** `(seconds_rows, ratio_rows)`; the ratio rows include the step-count model
    of `global / glocal` for our workload.
    """
    seconds = [{"profile": profile, "strategy": s, "ours (s)": f"{v:.2f}",
                "paper (s)": f"{PAPER_TABLE3[s]:.1f}"} for s, v in report["seconds"].items()]
    paper = PAPER_TABLE3
    paper_ratios = {"glocal/local": paper["glocal"] / paper["local"],
                    "global/glocal": paper["global"] / paper["glocal"],
                    "glocal/none": paper["glocal"] / paper["none"]}
    ratios = []
    for name, value in report["ratios"].items():
        row = {"profile": profile, "ratio": name, "ours": f"{value:.2f}",
               "paper": f"{paper_ratios[name]:.2f}" if name in paper_ratios else "–",
               "step-count model (ours)": "–"}
        if name == "global/glocal":
            row["step-count model (ours)"] = f"{report['predicted_global/glocal']:.2f}"
        ratios.append(row)
    return seconds, ratios


def final_rows(exp: Experiment, results: Mapping[str, OuterResult]) -> list[dict]:
    """Figures 2 and 3 in numbers: per data, optimizer and strategy, the final test
    accuracy and final hyperparameters, mean ± std over seeds, the fallbacks of the DMD and
    the runs that stopped early (the paper gives curves only, no numbers)."""
    groups: dict[tuple, list[tuple[RunSpec, OuterResult]]] = {}
    for spec, result in _paired(exp, results):
        key = (data_text(spec), spec.optimizer, spec.strategy_key)
        groups.setdefault(key, []).append((spec, result))
    rows = []
    for (data, optimizer, strategy), pairs in groups.items():
        runs = [r for _, r in pairs]
        row = {"profile": exp.profile, "data": data, "optimizer": optimizer,
               "strategy": strategy, "seeds": len(runs),
               "final test accuracy": _fmt(*_mean_std([final_test_accuracy(r) for r in runs]),
                                           len(runs))}
        for i, name in enumerate(runs[0].names):
            values = [r.hyperparameters[-1, i] for r in runs if len(r.step)]
            mean, std = _mean_std(values)
            row[f"final {name}"] = (f"{mean:.3g} ± {std:.2g}" if len(values) > 1
                                    else f"{mean:.3g}")
        row["estimator fallbacks"] = (f"{sum(int(np.sum(r.fallback)) for r in runs)}/"
                                      f"{sum(len(r.fallback) for r in runs)}"
                                      if strategy.startswith(("glocal", "global")) else "–")
        row["stopped early"] = sum(bool(r.stopped) for r in runs)
        rows.append(row)
    return rows


def dmd_grid_rows(exp: Experiment, results: Mapping[str, OuterResult]) -> list[dict]:
    """Figure 4 (right) as a table: `dmd_grid` formatted, every row naming profile and data
    (the paper shows a plot and states no numbers)."""
    pairs = _paired(exp, results)
    data = data_text(pairs[0][0]) if pairs else "–"
    return [{
        "profile": exp.profile, "data": data, "σ": row["sigma"], "m": row["m"],
        "seeds": row["seeds"],
        "final val loss": _fmt(row["val_loss"], row["val_loss_std"], row["seeds"]),
        "final test accuracy": _fmt(row["test_accuracy"], row["test_accuracy_std"],
                                    row["seeds"]),
        "fallback rate": _fmt(row["fallback_rate"], digits=2),
        "stopped early": row["stopped"],
    } for row in dmd_grid({s.label: r for s, r in pairs})]


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table of `rows` (dicts), columns in first-seen order.

    ```python
    >>> print(markdown_table([{"a": 1, "b": "x"}, {"a": 2}]))
    | a | b |
    | --- | --- |
    | 1 | x |
    | 2 |  |

    ```
    """
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))

    def cell(value) -> str:
        if isinstance(value, float):
            value = f"{value:.4g}"
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns)
             + " |"]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


# --- plots ------------------------------------------------------------------------------------


def plot_quality(ax: Axes, quality: EstimateQuality, *, metric: str = "cosine") -> Axes:
    """Local and glocal against global per outer step: `metric` is `"cosine"` (similarity)
    or `"error"` (relative error, log scale). Windows where the DMD fell back (glocal =
    local) are marked with a cross; the last window (horizon 0) is left out."""
    if metric not in ("cosine", "error"):
        raise ValueError(f"metric={metric!r}: choose 'cosine' or 'error'.")
    use = quality.horizon > 0
    x = quality.step[use]
    for strategy in ("glocal", "local"):  # local dashed on top: it hides glocal where equal
        y = getattr(quality, f"{metric}_{strategy}")[use]
        ax.plot(x, y, "o-" if strategy == "glocal" else "s--", ms=4, lw=1,
                color=STRATEGY_COLORS[strategy], label=strategy)
    fell = quality.fallback[use]
    if np.any(fell):
        ax.plot(x[fell], getattr(quality, f"{metric}_glocal")[use][fell], "x", ms=9, mew=2,
                color="k", label="DMD fell back (glocal = local)")
    if metric == "cosine":
        ax.axhline(1, color=STRATEGY_COLORS["global"], lw=1, label="global (target)")
        ax.axhline(0, color="k", lw=0.5)
        ax.set(ylim=(-1.05, 1.1), ylabel=r"cosine similarity with $h_T$")
    else:
        ax.set_yscale("log")
        ax.set(ylabel=r"$\|v - h_T\| / \|h_T\|$")
    ax.set(xlabel=r"inner step $s\tau$ at the end of the window")
    return ax


def plot_error_scatter(ax: Axes, qualities: Mapping[str, EstimateQuality]) -> Axes:
    """Relative error of glocal against that of local, one point per window (horizon > 0),
    one marker per run; below the diagonal the glocal estimate was closer to `h_T`.
    Fallback windows lie on the diagonal and are drawn hollow."""
    markers = "osD^v<>"
    low, high = np.inf, -np.inf
    for i, (label, q) in enumerate(qualities.items()):
        use = q.horizon > 0
        el, eg, fell = q.error_local[use], q.error_glocal[use], q.fallback[use]
        for mask, fill in ((~fell, STRATEGY_COLORS["glocal"]), (fell, "none")):
            ax.plot(el[mask], eg[mask], markers[i % len(markers)], ms=7, mfc=fill,
                    color=STRATEGY_COLORS["glocal"], ls="none",
                    label=f"{label}" + (" (fell back)" if fill == "none" else ""))
        finite = np.concatenate([el, eg])
        finite = finite[np.isfinite(finite) & (finite > 0)]
        if finite.size:
            low, high = min(low, finite.min()), max(high, finite.max())
    if np.isfinite(low):
        span = np.array([low / 1.5, high * 1.5])
        ax.plot(span, span, color="0.5", lw=1, ls=":", label="equal error")
        ax.fill_between(span, span / 1e6, span, color=STRATEGY_COLORS["glocal"], alpha=0.06)
        ax.set(xlim=tuple(span), ylim=tuple(span))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_aspect("equal")
    # labels at 1, 2 and 5 per decade: the errors often span less than one decade
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FormatStrFormatter("%g"))
        axis.set_minor_formatter(NullFormatter())
    ax.set(xlabel=r"local: $\|h_\tau - h_T\| / \|h_T\|$",
           ylabel=r"glocal: $\|\hat h_\infty - h_T\| / \|h_T\|$")
    return ax


def plot_dmd_grid(ax: Axes, grid: Sequence[Mapping], *, value: str = "val_loss",
                  cmap: str = "viridis") -> Axes:
    """A σ × m heat map of `value` (a key of `dmd_grid`'s rows), annotated mean ± std;
    combinations not run (m ≥ σ) are blank."""
    sigmas = sorted({row["sigma"] for row in grid})
    ms = sorted({row["m"] for row in grid})
    image = np.full((len(sigmas), len(ms)), np.nan)
    for row in grid:
        image[sigmas.index(row["sigma"]), ms.index(row["m"])] = row[value]
    shown = ax.imshow(image, cmap=cmap, aspect="auto", origin="lower")
    ax.figure.colorbar(shown, ax=ax, label=value.replace("_", " "))
    for row in grid:
        i, j = sigmas.index(row["sigma"]), ms.index(row["m"])
        text = _fmt(row[value], row.get(f"{value}_std", float("nan")), row["seeds"])
        red, green, blue, _ = shown.cmap(shown.norm(row[value]))
        light = 0.299 * red + 0.587 * green + 0.114 * blue > 0.5
        ax.text(j, i, text.replace(" ± ", "\n± "), ha="center", va="center", fontsize=8,
                color="k" if light else "w")
    ax.set_xticks(range(len(ms)), labels=[str(m) for m in ms])
    ax.set_yticks(range(len(sigmas)), labels=[str(s) for s in sigmas])
    ax.set(xlabel="delays $m$", ylabel=r"hypergradients $\sigma$ given to the DMD")
    return ax

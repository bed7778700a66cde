"""The fidelity benchmark: every steady-state estimator against the true global hypergradient.

Experiment `fidelity` records `global` runs that keep the σ hypergradients of every window
beside the h_T of its playout (SGD and Adam, Z reset and carried, φ moving and fixed). Here
every estimator of `glocal_core.METHODS` is re-fitted to every window and scored against
h_T; `best_estimator` states the criterion that chose `glocal_core.DEFAULT_METHOD`.
`python -m glocal_core fidelity` prints the table; chapter 7 and the results page show it
(`plotting.fidelity_figure` draws it).

Beside the real recordings, `synthetic_rows` scores the estimators on windows whose limit is
known exactly: noise-free transients, where an extrapolation should be exact and a mean
cannot be, and noisy ones, where averaging wins; `estimator_costs` times one estimate at a
few hyperparameter counts q.

Import it as `import glocal_core.repro.fidelity as gf`.
"""

import textwrap
import time
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from .. import DEFAULT_METHOD, METHODS, OuterResult, steady_state
from .._estimators import timed_steady_state
from .experiments import Experiment, RunSpec
from .quality import cosine_similarity, relative_error
from .results import estimator_title

# Simplest first: on a tie the earlier one is chosen.
SIMPLICITY = ("local", "mean", "affine", "rre", "paper", "fbdmd", "tlsdmd")


class EstimatorScores(NamedTuple):
    """One estimator on every window of one `global` run but its last (where h_T = h_τ):
    relative `error` to h_T, `cosine` with it, `sign` (share of coordinates whose sign
    matches h_T's), `beats_local` (strictly closer to h_T than h_τ), `fallback`, `seconds`
    per estimate."""

    error: np.ndarray
    cosine: np.ndarray
    sign: np.ndarray
    beats_local: np.ndarray
    fallback: np.ndarray
    seconds: np.ndarray


def estimator_scores(result: OuterResult, method: str, **kwargs) -> EstimatorScores:
    """Re-fit `method` (see `glocal_core.METHODS`, or `"zero"`, the estimate 0) to every
    window of a `global` run kept with `keep_trajectories=True` and score it against the
    run's h_T. Keyword arguments go to `steady_state` (defaults: the run's σ, m and
    `EstimatorSettings`).
    """
    if result.config.strategy != "global" or result.trajectories is None:
        raise ValueError("estimator_scores needs a `global` run with keep_trajectories=True.")
    config = result.config
    options = {"sigma": config.sigma, "m": config.m, "settings": config.estimator, **kwargs}
    keep = np.asarray(result.step) < config.total_steps
    target = np.asarray(result.hypergradient, np.float64)[keep]
    local = np.asarray(result.local_hypergradient, np.float64)[keep]
    values, fallback, seconds = [], [], []
    for H in np.asarray(result.trajectories, np.float64)[keep]:
        if method == "zero":
            estimate, took = None, 0.0
            values.append(np.zeros(H.shape[-1]))
        else:
            estimate, took = timed_steady_state(H, method=method, **options)
            values.append(estimate.value)
        fallback.append(bool(estimate.fallback) if estimate is not None else False)
        seconds.append(took)
    values = np.array(values).reshape(target.shape)
    error = relative_error(values, target)
    return EstimatorScores(
        error=error,
        cosine=cosine_similarity(values, target),
        sign=np.mean(np.sign(values) == np.sign(target), axis=-1),
        beats_local=error < relative_error(local, target),
        fallback=np.array(fallback, dtype=bool),
        seconds=np.array(seconds),
    )


def _pool(scores: Sequence[EstimatorScores]) -> EstimatorScores:
    return EstimatorScores(*(np.concatenate(parts) for parts in zip(*scores)))


def fidelity_rows(exp: Experiment, results: Mapping[str, OuterResult],
                  methods: Sequence[str] = (*METHODS, "zero")) -> list[dict]:
    """The fidelity table: per estimator, medians and rates over the windows of each
    recording of experiment `fidelity`, then pooled per convention for Z and over all.

    **Returns:** rows with `recording`, `estimator`, `windows`, `median error`,
    `median cosine`, `sign agreement`, `beats local`, `fallback rate`, `ms per estimate`.
    """
    recordings: dict[str, list[tuple[RunSpec, OuterResult]]] = {}
    for spec, result in [(s, results[s.label]) for s in exp.runs if s.label in results]:
        z = "Z reset" if spec.outer.reset_tangents else "Z carried"
        phi = "φ fixed" if spec.outer.outer_lr == 0 else "φ moving"
        recordings[f"{spec.optimizer.upper() if spec.optimizer == 'sgd' else 'Adam'}, {z}, "
                   f"{phi}"] = [(spec, result)]
        recordings.setdefault(f"all, {z}", []).append((spec, result))
        recordings.setdefault("all", []).append((spec, result))
    order = sorted(recordings, key=lambda k: (k.startswith("all"), k == "all"))
    cache = {(spec.label, method): estimator_scores(result, method)
             for spec, result in [(s, results[s.label]) for s in exp.runs if s.label in results] for method in methods}
    rows = []
    for name in order:
        for method in methods:
            pooled = _pool([cache[(spec.label, method)] for spec, _ in recordings[name]])
            rows.append({
                "recording": name, "estimator": method, "windows": len(pooled.error),
                "median error": float(np.median(pooled.error)),
                "median cosine": float(np.median(pooled.cosine)),
                "sign agreement": float(np.mean(pooled.sign)),
                "beats local": float(np.mean(pooled.beats_local)),
                "fallback rate": float(np.mean(pooled.fallback)),
                "ms per estimate": 1e3 * float(np.mean(pooled.seconds)),
            })
    return rows


def format_fidelity(rows: Sequence[Mapping]) -> list[dict]:
    """Rows of `fidelity_rows` or `compact_rows` rounded for reading: three significant
    digits, rates (sign agreement, beats local, fallback rate) to two places."""
    def fmt(key, value):
        if not isinstance(value, float):
            return value
        if not np.isfinite(value):
            return "–"
        rate = key.startswith(("sign agreement", "beats local", "fallback rate"))
        return f"{value:.2f}" if rate else f"{value:.3g}"
    return [{k: fmt(k, v) for k, v in row.items()} for row in rows]


def best_estimator(rows: Sequence[Mapping], recording: str = "all", *,
                   tie: float = 0.01) -> str:
    """The estimator the fidelity table finds closest to h_T on `recording`.

    The criterion, in order: the lowest median relative error, among the estimators whose
    median cosine and sign agreement are at least the local hypergradient's (a smaller error
    in the wrong direction does not help the outer Adam); within `tie` of that error, the
    simplest (`SIMPLICITY`).
    """
    candidates = {r["estimator"]: r for r in rows
                  if r["recording"] == recording and r["estimator"] in SIMPLICITY}
    local = candidates["local"]
    fine = {k: r for k, r in candidates.items()
            if r["median cosine"] >= local["median cosine"]
            and r["sign agreement"] >= local["sign agreement"]} or candidates
    best = min(r["median error"] for r in fine.values())
    return next(k for k in SIMPLICITY if k in fine and fine[k]["median error"] <= best + tie)


def compact_rows(rows: Sequence[Mapping]) -> list[dict]:
    """The pooled rows, one per estimator, the two conventions for Z side by side: what fits
    a page (the CLI prints every row)."""
    table = {(r["recording"], r["estimator"]): r for r in rows}
    out = []
    for method in dict.fromkeys(r["estimator"] for r in rows):
        reset, carried = table[("all, Z reset", method)], table[("all, Z carried", method)]
        both = table[("all", method)]
        out.append({
            "estimator": method,
            "median error, Z reset": reset["median error"],
            "median error, Z carried": carried["median error"],
            "beats local, Z reset": reset["beats local"],
            "beats local, Z carried": carried["beats local"],
            "median cosine": both["median cosine"],
            "fallback rate": both["fallback rate"],
        })
    return out


def summary_lines(rows: Sequence[Mapping], default: str = DEFAULT_METHOD, *,
                  width: int = 88) -> list[str]:
    """What a reader wants from the pooled rows, one line each: per pooled group, the
    estimator closest to h_T and where the paper's rule stands beside local and the mean;
    then the default against the bar set for it: a median error at most the window mean's,
    and closer than local at least as often as the mean, under both conventions for Z."""
    def row(recording, estimator):
        return next(r for r in rows if (r["recording"], r["estimator"]) == (recording, estimator))

    lines = []
    groups = dict.fromkeys(r["recording"] for r in rows if r["recording"].startswith("all"))
    for recording in groups:
        paper, local, mean = (row(recording, k) for k in ("paper", "local", "mean"))
        best = row(recording, best_estimator(rows, recording))
        lines.append(
            f"{recording}: closest to h_T: {best['estimator']} "
            f"({estimator_title(best['estimator'])}, median error "
            f"{best['median error']:.3g}, {best['median error'] / local['median error']:.2f}x "
            f"local's; closer than local in {best['beats local']:.1%} of windows). The paper's "
            f"rule ({estimator_title('paper')}): median error {paper['median error']:.3g} "
            f"against local "
            f"{local['median error']:.3g} and the window mean {mean['median error']:.3g}, closer "
            f"than local in {paper['beats local']:.0%} of windows, falls back in "
            f"{paper['fallback rate']:.0%}.")
    lines.append(f"the library's default estimator: {default} ({estimator_title(default)})")
    for recording in ("all, Z reset", "all, Z carried"):
        chosen, mean = row(recording, default), row(recording, "mean")
        error, share = chosen["median error"], chosen["beats local"]
        lines.append(
            f"target on {recording}: median error at most the window mean's ({error:.3g} "
            f"against {mean['median error']:.3g}: "
            f"{'met' if error <= mean['median error'] else 'not met'}), closer than local at "
            f"least as often as the mean ({share:.1%} against {mean['beats local']:.1%}: "
            f"{'met' if share >= mean['beats local'] else 'not met'})")
    return [textwrap.fill(line, width, subsequent_indent="    ") for line in lines]


# Windows whose limit is known exactly: (noise-free?, h_t as a function of t, limit, noise,
# rng); each draws its own amplitudes, rates and phases. t starts at 0 at the window's first
# row.
def _transient(t, limit, rng):
    return limit + rng.normal(size=limit.shape) * 0.97 ** (t + 20)


def _three_rates(t, limit, rng):
    rates = rng.uniform(0.8, 0.98, size=(3, limit.size))
    return limit + sum(a * r**t for a, r in zip(rng.normal(size=(3, limit.size)), rates))


SYNTHETIC_CASES = {
    "constant": (True, lambda t, limit, rng: limit + 0 * t),
    "slow transient (rate 0.97)": (True, _transient),
    "very slow transient (rate 0.995)": (
        True, lambda t, limit, rng: limit + rng.normal(size=limit.shape) * 0.995**t),
    "decaying oscillation": (True, lambda t, limit, rng: limit + rng.normal(
        size=limit.shape) * 0.95**t * np.cos(0.3 * t + rng.uniform(0, 2 * np.pi, limit.shape))),
    "three rates per coordinate": (True, _three_rates),
    "slow transient + noise": (False, lambda t, limit, rng: _transient(t, limit, rng)
                               + 0.3 * rng.normal(size=(len(t), limit.size))),
    "noise around a constant": (False, lambda t, limit, rng: limit
                                + rng.normal(size=(len(t), limit.size))),
}


def synthetic_windows(case: str, *, sigma: int = 80, q: int = 3, count: int = 20,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`count` windows `(count, sigma, q)` of a case of `SYNTHETIC_CASES` and their exact
    limits `(count, q)`, drawn with `seed`."""
    if case not in SYNTHETIC_CASES:
        raise ValueError(f"case={case!r}: choose one of {', '.join(SYNTHETIC_CASES)}.")
    rng = np.random.default_rng(seed)
    t = np.arange(sigma, dtype=float)[:, None]
    limits = rng.normal(size=(count, q))
    windows = np.stack([SYNTHETIC_CASES[case][1](t, limit, rng) for limit in limits])
    return windows, limits


def synthetic_rows(methods: Sequence[str] = METHODS, *, sigma: int = 80, m: int = 10,
                   q: int = 3, count: int = 20, seed: int = 0) -> list[dict]:
    """The estimators on `SYNTHETIC_CASES`, scored against the exact limit.

    **Returns:** rows with `case`, `noise-free`, `estimator`, `max error` (relative, over
    the `count` windows), `median error`, `beats local` (share strictly closer to the limit
    than the window's last row) and `behind local` (share strictly further from it).
    """
    rows = []
    for case, (clean, _) in SYNTHETIC_CASES.items():
        windows, limits = synthetic_windows(case, sigma=sigma, q=q, count=count, seed=seed)
        local = relative_error(windows[:, -1], limits)
        for method in methods:
            values = np.array([steady_state(H, sigma, m, method=method).value for H in windows])
            error = relative_error(values, limits)
            rows.append({"case": case, "noise-free": clean, "estimator": method,
                         "max error": float(np.max(error)),
                         "median error": float(np.median(error)),
                         "beats local": float(np.mean(error < local)),
                         "behind local": float(np.mean(error > local + 1e-12))})
    return rows


def estimator_costs(methods: Sequence[str] = METHODS, *, qs: Sequence[int] = (3, 385),
                    sigma: int = 80, m: int = 10, repeats: int = 5) -> list[dict]:
    """Milliseconds per estimate, the median of `repeats` timings (fewer once they add up to
    a second: `affine` solves an `(m q)²` system and takes seconds at q = 385) on a noisy slow
    transient,
    per estimator and hyperparameter count `q` (3: an optimizer's hyperparameters; 385: the
    meta network of chapter 6). Host NumPy, so it depends on the machine and its load.

    **Returns:** rows with `estimator` and `ms per estimate, q = <q>` for each q.
    """
    windows = {q: synthetic_windows("slow transient + noise", sigma=sigma, q=q, count=1)[0][0]
               for q in qs}
    rows = []
    for method in methods:
        row = {"estimator": method}
        for q, H in windows.items():
            took = []
            while len(took) < repeats and sum(took) < 1.0:  # one timing of a slow estimate
                start = time.perf_counter()
                steady_state(H, sigma, m, method=method)
                took.append(time.perf_counter() - start)
            row[f"ms per estimate, q = {q}"] = 1e3 * float(np.median(took))
        rows.append(row)
    return rows


# Column headers of `synthetic_table`: short, so that eight estimators' rows fit a page.
_SHORT = {"constant": "constant", "slow transient (rate 0.97)": "rate 0.97",
          "very slow transient (rate 0.995)": "rate 0.995",
          "decaying oscillation": "oscillation", "three rates per coordinate": "3 rates",
          "slow transient + noise": "rate 0.97 + noise", "noise around a constant": "noise"}


def synthetic_table(rows: Sequence[Mapping]) -> list[dict]:
    """`synthetic_rows` pivoted to fit a page: one row per estimator, one column per case
    (short names). A noise-free case shows the largest relative error over its windows (is
    the estimator exact?), a noisy one the median; `*` marks an estimator further from the
    limit than the local hypergradient in some window."""
    table: dict[str, dict] = {}
    for r in rows:
        row = table.setdefault(r["estimator"], {"estimator": r["estimator"]})
        shown = r["max error"] if r["noise-free"] else r["median error"]
        row[_SHORT.get(r["case"], r["case"])] = (
            f"{shown:.2g}" + ("*" if r["behind local"] > 0 else ""))
    return list(table.values())

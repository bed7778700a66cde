"""The figures of the reproduction chapters: runs, estimates against h_T, DMD grids and the
fidelity benchmark. Each draws rows and curves that `glocal_core.results` and
`glocal_core.quality` computed; none computes a result itself.
"""

import textwrap
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

from .. import results as gr
from .. import tables as gt
from .._outer import OuterResult
from ..experiments import Experiment
from ..quality import EstimateQuality
from ._base import STRATEGY_COLORS, caption, plot_mean_std, plot_stops, plot_transitions

# One colour per steady-state estimator (the fidelity benchmark), the strategies' where the
# estimator is a strategy's.
ESTIMATOR_COLORS = {"local": STRATEGY_COLORS["local"], "mean": "#1f77b4", "affine": "#17becf",
                    "rre": "#bcbd22", "paper": STRATEGY_COLORS["glocal-paper"],
                    "fbdmd": "#8c564b", "tlsdmd": "#e377c2"}


def panel_caption(panel: gr.Panel, profile: str, width: int = 48) -> str:
    """`caption` of a panel, wrapped to `width` characters for subplot titles."""
    return textwrap.fill(caption(profile, panel.title), width)


def plot_runs(axes: Sequence[Axes], runs: Mapping[str, Sequence[OuterResult]]) -> None:
    """Fill a row of axes for one panel: test accuracy in `axes[0]`, then one hyperparameter
    per axis (the paper's Figures 2, 3 and C.1–C.4), every strategy in its colour, mean ± std
    over seeds; a dotted vertical line where a run stopped early.

    **Arguments:**

    - `axes`: `1 + q` axes.
    - `runs`: `{strategy: [OuterResult, ...]}`, one panel of `group_runs`.
    """
    names = next(iter(runs.values()))[0].names
    if len(axes) != 1 + len(names):
        raise ValueError(f"need 1 + q = {1 + len(names)} axes, got {len(axes)}.")
    for strategy, results in runs.items():
        acc = gr.accuracy_curve(results)
        plot_mean_std(axes[0], acc.x, acc.mean, acc.std, strategy, label=strategy,
                           marker="o" if len(acc.x) < 30 else None)
        hp = gr.hyperparameter_curve(results)
        for i, ax in enumerate(axes[1:]):
            plot_transitions(ax, hp.x, hp.mean[:, i], hp.std[:, i], strategy)
        stops = [r.step[-1] if len(r.step) else 0 for r in results if r.stopped]
        for ax in axes:
            plot_stops(ax, stops, strategy)
    axes[0].set(xlabel="inner step", ylabel="test accuracy")
    for ax, name in zip(axes[1:], names):
        ax.set(xlabel="inner step", ylabel=gr.HYPERPARAMETER_TITLES.get(name, name))


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


def plot_dmd_grid(ax: Axes, grid: Sequence, *, value: str = "val_loss",
                  cmap: str = "viridis") -> Axes:
    """A σ × m heat map of `value` (a field of `quality.dmd_grid`'s rows), annotated mean ± std;
    combinations not run (m ≥ σ) are blank."""
    sigmas = sorted({row.sigma for row in grid})
    ms = sorted({row.m for row in grid})
    image = np.full((len(sigmas), len(ms)), np.nan)
    for row in grid:
        image[sigmas.index(row.sigma), ms.index(row.m)] = getattr(row, value)
    shown = ax.imshow(image, cmap=cmap, aspect="auto", origin="lower")
    ax.figure.colorbar(shown, ax=ax, label=value.replace("_", " "))
    for row in grid:
        i, j = sigmas.index(row.sigma), ms.index(row.m)
        text = gt.mean_std(getattr(row, value), getattr(row, f"{value}_std"), row.finished)
        red, green, blue, _ = shown.cmap(shown.norm(getattr(row, value)))
        light = 0.299 * red + 0.587 * green + 0.114 * blue > 0.5
        ax.text(j, i, text.replace(" ± ", "\n± "), ha="center", va="center", fontsize=8,
                color="k" if light else "w")
    ax.set_xticks(range(len(ms)), labels=[str(m) for m in ms])
    ax.set_yticks(range(len(sigmas)), labels=[str(s) for s in sigmas])
    ax.set(xlabel="delays $m$", ylabel=r"hypergradients $\sigma$ given to the DMD")
    return ax


def plot_fidelity(ax: Axes, rows: Sequence[Mapping], *, value: str = "median error") -> Axes:
    """Grouped bars of `fidelity_rows`: one group per recording, one bar per estimator
    (`value`: a numeric column, e.g. `"median error"` or `"beats local"`). With
    `"median error"` a dashed line at 1 marks what predicting zero scores."""
    recordings = list(dict.fromkeys(r["recording"] for r in rows))
    methods = [m for m in ESTIMATOR_COLORS if any(r["estimator"] == m for r in rows)]
    width = 0.8 / len(methods)
    table = {(r["recording"], r["estimator"]): r[value] for r in rows}
    x = np.arange(len(recordings))
    for i, method in enumerate(methods):
        ax.bar(x - 0.4 + width * (i + 0.5), [table.get((rec, method), np.nan) for rec in recordings],
               width, color=ESTIMATOR_COLORS[method], label=method,
               hatch="//" if method == "local" else None, edgecolor="white", lw=0.3)
    if value == "median error":
        ax.axhline(1, color="k", ls="--", lw=1, label="zero (predict nothing)")
    ax.set_xticks(x, labels=[rec.replace(", ", "\n") for rec in recordings], fontsize=8)
    ax.set(ylabel=value)
    return ax


def fidelity_figure(exp: Experiment, rows: Sequence[Mapping]) -> Figure:
    """Two panels over every recording: median relative error (with predicting zero at 1)
    and the share of windows closer to h_T than local (with one half dotted)."""
    fig, axes = plt.subplots(2, 1, figsize=(8, 7.5), sharex=True, layout="constrained")
    per_recording = [r for r in rows if r["estimator"] != "zero"]
    plot_fidelity(axes[0], per_recording, value="median error")
    plot_fidelity(axes[1], per_recording, value="beats local")
    axes[1].axhline(0.5, color="0.5", ls=":", lw=1)
    axes[0].set(title="Median relative error to the global hypergradient (lower is better)")
    axes[1].set(title="Share of windows closer to $h_T$ than the local hypergradient "
                      "(higher is better)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=4,
               fontsize=9)
    fig.suptitle(f"Steady-state estimators against h_T, per recording\n({gr.provenance(exp)})",
                 fontsize=9)
    return fig

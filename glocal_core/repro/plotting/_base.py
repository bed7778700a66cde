"""The building blocks of every figure (see the package docstring): colours per strategy,
the book's layout (`panel_grid`, `shared_legend`), DMD spectra and modes, curves over seeds.
"""

import math
from collections.abc import Mapping, Sequence

import matplotlib.patches as mpatches
import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np
from matplotlib.axes import Axes

from ... import ESTIMATOR_DEFAULTS, DMDFit, mode_magnitudes
from ..results import benchmark_title, strategy_title

# matplotlib's tab10, fixed per strategy so that every figure of the book agrees; local and
# global keep the orange and green that chapter 2 gives h_tau and h_T.
STRATEGY_COLORS: dict[str, str] = {
    "none": "#7f7f7f",
    "local": "#ff7f0e",
    "global": "#2ca02c",
    "glocal": "#d62728",
    "glocal-paper": "#9467bd",  # glocal with the paper's Eq. 14, where the default differs
}
# Line widths per strategy, widest first in drawing order, so that where a glocal run fell
# back in every window and retraces the local run, both lines stay visible.
STRATEGY_LINEWIDTHS: dict[str, float] = {"none": 1.5, "local": 3.0, "global": 2.2, "glocal": 1.4,
                                         "glocal-paper": 1.8}
# The book's text width in inches at the style's 100 dpi: about 800 px, the width of the
# article column of the book's theme (measured in Chromium at window widths 1100-1920).
BOOK_WIDTH = 8.0
# Eigenvalues and modes that the glocal estimate drops.
OTHER_MODES_COLOR = "#1f77b4"
UNIT_CIRCLE_COLOR = "0.6"


def caption(profile: str, data: str | None = None) -> str:
    """The provenance that every figure title carries: the dataset (`None` for a synthetic
    system) and the `GLOCAL_PROFILE`, e.g. `"digits; profile smoke"`."""
    return f"{data if data is not None else 'synthetic'}; profile {profile}"


def panel_grid(count: int, *, per: int = 1, ncols: int = 2, height: float = 2.8,
               width: float = BOOK_WIDTH, **subplots):
    """A figure of `count` panels at the book's width, at most `ncols` axes per row.

    **Arguments:**

    - `per`: axes per panel; each panel with `per > 1` starts a new row, so its axes stay
        together (e.g. test accuracy and three hyperparameters as a 2×2 block).
    - `height`: inches per row.
    - `subplots`: passed to `plt.subplots` (`sharex`, `sharey`, ...).

    **Returns:**

    `(fig, panels)`: with `per == 1` a list of `count` axes, otherwise a list of `count`
    lists of `per` axes. Axes left over in the last row are removed.
    """
    if count < 1 or per < 1 or ncols < 1:
        raise ValueError(f"need count, per and ncols >= 1, got {count}, {per}, {ncols}.")
    ncols = min(ncols, per if per > 1 else count)
    rows_per = math.ceil(per / ncols)
    nrows = count * rows_per if per > 1 else math.ceil(count / ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(width, height * nrows), squeeze=False,
                             layout="constrained", **subplots)
    if per == 1:
        axes = list(grid.flat)
        used, panels = axes[:count], axes[:count]
    else:
        blocks = [list(grid[i * rows_per:(i + 1) * rows_per].flat)[:per] for i in range(count)]
        used, panels = [ax for block in blocks for ax in block], blocks
    for ax in grid.flat:
        if not any(ax is u for u in used):
            ax.remove()
    return fig, panels


def shared_legend(fig, axes, *, ncol: int = 4, **kwargs):
    """One legend for the whole figure, under its panels: every distinct label of `axes`
    (an `Axes`, or nested lists of them, as `panel_grid` returns), in drawing order."""
    handles = {}
    for ax in np.ravel(np.asarray(axes, dtype=object)):
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if not handles:
        return None
    return fig.legend(handles.values(), handles.keys(), loc="outside lower center",
                      ncol=min(ncol, len(handles)), **kwargs)


def plot_eigenvalues(ax: Axes, fit_or_eigenvalues, *, delta: float = ESTIMATOR_DEFAULTS.delta) -> Axes:
    """The eigenvalues of a `DMDFit` (or a complex array of them) against the unit circle,
    those that Eq. 14 keeps (`|λ - 1| <= delta`, as in `steady_state(..., method="paper")`) highlighted:
    the paper's Figure 4, left. The aspect is set to equal.

    The disc `|λ - 1| <= delta` is shaded, so an eigenvalue that just misses it, and hence
    does not enter the glocal estimate, is visible as such when the caller zooms in with
    `ax.set(xlim=..., ylim=...)`.
    """
    eigenvalues = np.asarray(
        fit_or_eigenvalues.eigenvalues if isinstance(fit_or_eigenvalues, DMDFit)
        else fit_or_eigenvalues
    )
    kept = np.abs(eigenvalues - 1.0) <= delta
    ax.add_patch(mpatches.Circle((0, 0), 1, fill=False, color=UNIT_CIRCLE_COLOR, lw=1))
    ax.add_patch(mpatches.Circle((1, 0), delta, color=STRATEGY_COLORS["glocal"], alpha=0.15,
                                 lw=0, label=rf"$|\lambda - 1| \leq \delta = {delta:g}$"))
    ax.axhline(0, color=UNIT_CIRCLE_COLOR, lw=0.5)
    ax.axvline(0, color=UNIT_CIRCLE_COLOR, lw=0.5)
    ax.plot(eigenvalues[~kept].real, eigenvalues[~kept].imag, "o", ms=5, mfc="none",
            color=OTHER_MODES_COLOR, label=f"other ({np.sum(~kept)})")
    ax.plot(eigenvalues[kept].real, eigenvalues[kept].imag, "o", ms=7,
            color=STRATEGY_COLORS["glocal"], label=f"near 1, kept ({np.sum(kept)})")
    radius = max(1.0, float(np.max(np.abs(eigenvalues), initial=0.0)))
    ax.set(xlim=(-1.1 * radius, 1.1 * radius), ylim=(-1.1 * radius, 1.1 * radius),
           xlabel=r"Re $\lambda$", ylabel=r"Im $\lambda$")
    ax.set_aspect("equal")
    return ax


def plot_mode_decay(
    ax: Axes,
    fit: DMDFit,
    steps,
    *,
    delta: float = ESTIMATOR_DEFAULTS.delta,
    component: int | None = None,
    decades: float = 8,
) -> Axes:
    """Each mode's magnitude `|b_j λ_j^t u_j|` over `t`, log scale (the paper's Figure 4,
    middle); the modes that Eq. 14 keeps (`|λ_j - 1| <= delta`) in the glocal colour, the
    others in blue.

    **Arguments:**

    - `steps`: the times after the window, e.g. `np.arange(T - tau + 1)`.
    - `component`: as in `mode_magnitudes`.
    - `decades`: the y axis spans at most this many decades below the largest magnitude;
        what has decayed further no longer matters to any estimate.
    """
    steps = np.asarray(steps)
    magnitudes = mode_magnitudes(fit, steps, component=component)
    kept = np.abs(fit.eigenvalues - 1.0) <= delta
    for j in np.argsort(kept, kind="stable"):  # kept modes last, on top
        color = STRATEGY_COLORS["glocal"] if kept[j] else OTHER_MODES_COLOR
        ax.plot(steps, magnitudes[:, j], color=color, lw=1.5 if kept[j] else 0.8,
                alpha=1.0 if kept[j] else 0.6)
    ax.plot([], [], color=STRATEGY_COLORS["glocal"], label=rf"$|\lambda_j - 1| \leq {delta:g}$")
    ax.plot([], [], color=OTHER_MODES_COLOR, alpha=0.6, label="other modes")
    ax.set_yscale("log")
    positive = magnitudes[magnitudes > 0]
    if positive.size:
        top = positive.max()
        ax.set_ylim(max(positive.min(), top * 10.0**-decades) / 2, top * 2)
    ax.set(xlabel="steps $t$ after the window", ylabel=r"$|b_j \lambda_j^t u_j|$")
    return ax


def plot_hypergradients(
    ax: Axes,
    names: Sequence[str],
    values: Mapping[str, np.ndarray],
    *,
    reference: str = "global",
) -> Axes:
    """Hypergradients of several strategies side by side, one group of bars per
    hyperparameter, each divided by `|values[reference]|` of that hyperparameter so that
    hyperparameters of very different scales share one axis (the reference bars are ±1).

    **Arguments:**

    - `names`: the hyperparameters' names, in the order of the vectors.
    - `values`: strategy name (a key of `STRATEGY_COLORS`) to a `(q,)` hypergradient; the
        legend shows `results.strategy_title` of each.
    """
    scale = np.abs(np.asarray(values[reference], dtype=float))
    scale = np.where(scale > 0, scale, 1.0)
    width = 0.8 / len(values)
    x = np.arange(len(names))
    for i, (strategy, value) in enumerate(values.items()):
        ax.bar(x + (i - (len(values) - 1) / 2) * width, np.asarray(value) / scale, width,
               color=STRATEGY_COLORS[strategy], label=strategy_title(strategy))
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xticks(x, labels=list(names))
    ax.set(ylabel=f"hypergradient / |{strategy_title(reference)}|")
    return ax


# --- the reproduction chapters: mean ± std over seeds, per strategy -------------------------


class _PlainLogFormatter(mticker.LogFormatter):
    # matplotlib's choice of which log ticks to label, written as 0.6 rather than 6e-01
    def __call__(self, x, pos=None):
        return f"{x:g}" if super().__call__(x, pos) else ""


def log_axis(ax: Axes, axis: str = "y") -> Axes:
    """A logarithmic `axis` (`"x"` or `"y"`) labelled with plain numbers (0.6, 2, 30), minor
    ticks included where the axis spans few decades, instead of powers of ten."""
    getattr(ax, f"set_{axis}scale")("log")
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_formatter(_PlainLogFormatter())
    target.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False,
                                                  minor_thresholds=(2, 0.5)))
    return ax


def plot_mean_std(
    ax: Axes,
    x,
    mean,
    std,
    strategy: str,
    *,
    label: str | None = None,
    marker: str | None = None,
    steps: bool = False,
) -> Axes:
    """A mean curve in the strategy's colour and line width with a band of ± one std (over
    seeds). `x`, `mean` and `std` are `(n,)` arrays; NaN entries are left out.

    **Arguments:**

    - `marker`: a matplotlib marker for the points, e.g. for sparse evaluations.
    - `steps`: draw a staircase, each value held until the next `x` (`steps-post`): a
        hyperparameter held fixed within each window of τ steps, `x` the window edges
        `0, τ, …, T` (the paper's Figures 2 and 3).
    """
    x, mean, std = (np.asarray(a, dtype=float) for a in (x, mean, std))
    color, lw = STRATEGY_COLORS[strategy], STRATEGY_LINEWIDTHS[strategy]
    ax.plot(x, mean, color=color, lw=lw, label=label, marker=marker, ms=2 + 1.5 * lw,
            drawstyle="steps-post" if steps else "default")
    ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, lw=0,
                    step="post" if steps else None)
    return ax


def plot_fallbacks(ax: Axes, steps, spectral_radius, fallback, strategy: str = "glocal", *,
                   label: str | None = None) -> Axes:
    """The DMD's spectral radius per window of one run (the `(S,)` arrays of an
    `OuterResult`), log scale, in the strategy's colour; a cross where the estimate fell back
    to the local hypergradient, and the unit circle's radius as a dashed line."""
    steps, radius = np.asarray(steps, dtype=float), np.asarray(spectral_radius, dtype=float)
    fallback = np.asarray(fallback, dtype=bool)
    color = STRATEGY_COLORS[strategy]
    ax.plot(steps, radius, color=color, lw=1, marker=".", ms=4, label=label)
    ax.plot(steps[fallback], radius[fallback], "x", color=color, ms=8, mew=1.5)
    ax.axhline(1.0, color=UNIT_CIRCLE_COLOR, lw=1, ls="--")
    log_axis(ax)  # radii far above one occur, and the interesting ones are near it
    ax.set(xlabel="inner step", ylabel="spectral radius of the DMD")
    return ax


def plot_runtime(ax: Axes, ours: Mapping[str, float], paper: Mapping[str, float], *,
                 reference: str = "none") -> Axes:
    """Run time of each strategy relative to `reference`, ours (filled bars) beside the
    paper's (hatched), on a log axis, each bar labelled with its ratio (Table 3). Draws its
    own legend (ours / paper). `ours` and `paper` map a strategy to seconds, keyed as the
    benchmark's report (`results.benchmark_title`: its glocal is Eq. 14)."""
    strategies = [s for s in STRATEGY_COLORS if s in ours and s in paper]
    x = np.arange(len(strategies))
    for offset, seconds, hatch, alpha in ((-0.2, ours, None, 1.0), (0.2, paper, "//", 0.45)):
        ratios = np.array([seconds[s] / seconds[reference] for s in strategies])
        bars = ax.bar(x + offset, ratios, 0.38, color=[STRATEGY_COLORS[s] for s in strategies],
                      alpha=alpha, hatch=hatch, edgecolor="k", lw=0.5)
        ax.bar_label(bars, labels=[f"{r:.3g}" for r in ratios], fontsize=8)
    ax.legend(handles=[
        mpatches.Patch(facecolor="0.5", edgecolor="k", lw=0.5, label="ours"),
        mpatches.Patch(facecolor="0.5", alpha=0.45, hatch="//", edgecolor="k", lw=0.5,
                       label="paper"),
    ])
    ax.set_yscale("log")
    ax.set_xticks(x, labels=[benchmark_title(s) for s in strategies])
    ax.set(ylabel=f"run time / run time of {benchmark_title(reference)!r}")
    return ax


def window_figure(h, names: Sequence[str], tau: int, *, sigma: int | None = None,
                  title: str = ""):
    """One tracked window's hypergradients `h` `(T, q)`, one axis per hyperparameter: the
    local `h_τ` and the global `h_T` marked, the DMD's last `sigma` steps shaded (if given),
    on a symmetric log scale with decade ticks (linear around the typical size, logarithmic
    for the swings, signs kept)."""
    h = np.asarray(h)
    T = len(h)
    fig, axes = plt.subplots(len(names), 1, sharex=True, figsize=(7.5, 2.3 * len(names)),
                             layout="constrained", squeeze=False)
    t = np.arange(1, T + 1)
    for i, (ax, name) in enumerate(zip(axes[:, 0], names)):
        if sigma is not None:
            ax.axvspan(tau - sigma + 1, tau, color="0.9", label=rf"DMD window, $\sigma = {sigma}$")
        ax.plot(t, h[:, i], color="0.3", lw=0.8)
        ax.axhline(0, color="k", lw=0.5)
        ax.plot(tau, h[tau - 1, i], "o", ms=8, color=STRATEGY_COLORS["local"],
                label=rf"local $h_\tau$, $\tau = {tau}$")
        ax.plot(T, h[-1, i], "s", ms=8, color=STRATEGY_COLORS["global"],
                label=f"global $h_T$, $T = {T}$")
        size = np.abs(h[:, i])
        typical = 10.0 ** np.floor(np.log10(np.median(size)))
        decades = typical * 10.0 ** np.arange(np.ceil(np.log10(size.max() / typical)) + 1)
        ax.set_yscale("symlog", linthresh=typical)
        ticks = np.concatenate([-decades[::-1], [0.0], decades])
        ax.set_yticks(ticks, labels=[f"{v:g}" for v in ticks])
        ax.set(ylabel=f"$h_t$: {name}")
    axes[-1, 0].set(xlabel="inner step $t$")
    shared_legend(fig, axes[:1, 0])
    fig.suptitle(title)
    return fig

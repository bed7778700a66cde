"""The figures of the analysis chapter (7): estimates against h_T per window, the DMD's
spectra, Theorem 3.1 term by term, the δ sweep, the DMD grid and the fidelity benchmark. Each
draws what `glocal_core.repro.quality`, `glocal_core.repro.spectra` and `glocal_core.repro.fidelity` computed.
"""

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

from ... import _estimators as _estimators
from .. import results as gr
from .. import tables as gt
from .. import trust as gtr
from ..experiments import Experiment
from ..quality import EstimateQuality, QualitySummary
from ..spectra import DMDGridRow, ErrorTerms, SpectraRow
from ._base import BOOK_WIDTH, OTHER_MODES_COLOR, STRATEGY_COLORS, panel_grid, shared_legend

# One colour per steady-state estimator (the fidelity benchmark), the strategies' where the
# estimator is a strategy's.
ESTIMATOR_COLORS = {"cv": STRATEGY_COLORS["glocal"],
                    "local": STRATEGY_COLORS["local"], "mean": "#1f77b4", "affine": "#17becf",
                    "rre": "#bcbd22", "paper": STRATEGY_COLORS["glocal-paper"],
                    "fbdmd": "#8c564b", "tlsdmd": "#e377c2"}


# The estimate that the analysis re-fits (`quality.refit`, `spectra`): Eq. 14.
REFIT = "glocal-paper"


def quality_figure(qualities: Mapping[str, EstimateQuality], profile: str, *,
                   subtitle: str, strategy: str = REFIT) -> Figure:
    """Per run (`{title: quality}`): cosine similarity and relative error of local and
    glocal against h_T, window by window, a cross where the DMD fell back (glocal = local).
    The last window (horizon 0, where h_T = h_τ) is left out.

    `strategy`: the key whose estimate `qualities` scored, named in the legend: `REFIT`
    (Eq. 14) for `estimate_quality(..., delta=)`, `glocal` for the estimates of global runs
    with the default estimator."""
    glocal_title = gr.strategy_title(strategy)
    fig, axes = panel_grid(len(qualities), per=2, height=3.0)
    for (ax_cos, ax_err), (title, quality) in zip(axes, qualities.items()):
        use = quality.horizon > 0
        x, fell = quality.step[use], quality.fallback[use]
        for ax, metric in ((ax_cos, "cosine"), (ax_err, "error")):
            glocal, local = (getattr(quality, f"{metric}_{s}")[use] for s in ("glocal", "local"))
            ax.plot(x, glocal, "o-", ms=4, lw=1, color=STRATEGY_COLORS[strategy],
                    label=glocal_title)
            # local dashed on top: it hides glocal where they are equal
            ax.plot(x, local, "s--", ms=4, lw=1, color=STRATEGY_COLORS["local"], label="local")
            if np.any(fell):
                ax.plot(x[fell], glocal[fell], "x", ms=9, mew=2, color="k",
                        label=f"fell back ({glocal_title} = local)")
            ax.set(xlabel=r"inner step $s\tau$ at the end of the window")
        ax_cos.axhline(1, color=STRATEGY_COLORS["global"], lw=1, label="global (target)")
        ax_cos.axhline(0, color="k", lw=0.5)
        ax_cos.set(ylim=(-1.05, 1.1), ylabel=r"cosine similarity with $h_T$",
                   title=f"{title}: direction")
        ax_err.set_yscale("log")
        ax_err.set(ylabel=r"$\|v - h_T\| / \|h_T\|$", title=f"{title}: relative error")
    fig.suptitle(f"Local and {glocal_title} against the global hypergradient of a playout, "
                 f"per outer step\n({subtitle}; profile {profile})")
    shared_legend(fig, axes)
    return fig


def error_scatter_figure(qualities: Mapping[str, EstimateQuality], profile: str, *,
                         strategy: str = REFIT) -> Figure:
    """The relative error of glocal against that of local, one point per window with a
    horizon > 0, one marker per run (`{label: quality}`); below the diagonal the glocal
    estimate was closer to h_T. Fallback windows lie on the diagonal and are drawn hollow.
    `strategy`: as in `quality_figure`."""
    glocal_title, color = gr.strategy_title(strategy), STRATEGY_COLORS[strategy]
    fig, ax = plt.subplots(figsize=(6, 6))
    markers = "osD^v<>"
    low, high = np.inf, -np.inf
    for i, (label, q) in enumerate(qualities.items()):
        use = q.horizon > 0
        el, eg, fell = q.error_local[use], q.error_glocal[use], q.fallback[use]
        for mask, fill in ((~fell, color), (fell, "none")):
            ax.plot(el[mask], eg[mask], markers[i % len(markers)], ms=7, mfc=fill,
                    color=color, ls="none",
                    label=f"{label}" + (" (fell back)" if fill == "none" else ""))
        finite = np.concatenate([el, eg])
        finite = finite[np.isfinite(finite) & (finite > 0)]
        if finite.size:
            low, high = min(low, finite.min()), max(high, finite.max())
    if np.isfinite(low):
        span = np.array([low / 1.5, high * 1.5])
        ax.plot(span, span, color="0.5", lw=1, ls=":", label="equal error")
        ax.fill_between(span, span / 1e6, span, color=color, alpha=0.06)
        ax.set(xlim=tuple(span), ylim=tuple(span))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_aspect("equal")
    # labels at 1, 2 and 5 per decade: the errors often span less than one decade
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FormatStrFormatter("%g"))
        axis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize=7, loc="upper left")
    ax.set(xlabel=r"local: $\|h_\tau - h_T\| / \|h_T\|$",
           ylabel=glocal_title + r": $\|\hat h_\infty - h_T\| / \|h_T\|$",
           title=f"{glocal_title} against local error, every outer step\n(global runs of "
                 f"fig2; profile {profile})")
    return fig


def spectra_figure(rows: Mapping[str, tuple[SpectraRow, str]], delta: float,
                   profile: str) -> Figure:
    """Every fitted window: its spectral radius against the distance of its eigenvalue
    closest to one, `{name: (row, strategy)}` drawn in the strategy's colour."""
    fig, ax = plt.subplots(figsize=(7, 5))
    for (name, (row, strategy)), marker in zip(rows.items(), "so^v"):
        ax.plot(row.spectral_radius, row.gap, marker, ms=5, mfc="none",
                color=STRATEGY_COLORS[strategy], label=name)
    ax.axvline(1, color="k", lw=0.8, label="spectral radius 1")
    ax.axhline(delta, color="0.4", ls="--", lw=0.8, label=rf"$\delta = {delta:g}$")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set(xlabel="spectral radius of the window's DMD", ylabel=r"$\min_j |\lambda_j - 1|$",
           title="Where the assumptions of Eq. (14) and Theorem 3.1 hold\n(every fitted "
                 f"window of fig2's global and fig4's runs; profile {profile})")
    return fig


def error_terms_figure(terms: ErrorTerms, profile: str) -> Figure:
    """The terms of Theorem 3.1 (`spectra.pooled_terms`) against the horizon: forecast error
    (Eq. 16), dropped modes (Eq. 17) and the glocal error, where the DMD acted; the glocal
    error where it fell back. The estimate is Eq. 14's (`REFIT`), as `spectra` re-fits it."""
    glocal_title, color = gr.strategy_title(REFIT), STRATEGY_COLORS[REFIT]
    acts = ~terms.fallback
    fig, ax = plt.subplots()
    ax.plot(terms.horizon, terms.forecast, "^", color="0.45", mfc="none",
            label=r"forecast error $\|h_T - \hat h_T\|$ (Eq. 16)")
    ax.plot(terms.horizon[acts], terms.dropped[acts], "v", color=OTHER_MODES_COLOR,
            mfc="none", label=r"dropped modes $\|\hat h_T - \hat h_\infty\|$ (Eq. 17)")
    ax.plot(terms.horizon[acts], terms.total[acts], "o", color=color,
            label=glocal_title + r" error $\|h_T - \hat h_\infty\|$")
    ax.plot(terms.horizon[~acts], terms.total[~acts], "o", mfc="none", color=color,
            label=f"{glocal_title} error, fell back (= local)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set(xlabel=r"horizon $T - s\tau$ (inner steps)", ylabel=r"relative to $\|h_T\|$",
           title=f"The terms of Theorem 3.1, measured\n(global runs of fig2; profile {profile})")
    return fig


def delta_sweep_figure(deltas: Sequence[float], sweep: Sequence[QualitySummary],
                       delta: float, profile: str) -> Figure:
    """How often glocal (Eq. 14, re-fitted: `REFIT`) was closer, farther or tied (fell back)
    at every re-fitted δ."""
    fig, ax = plt.subplots()
    ax.plot(deltas, [s.closer for s in sweep], "o-", color=STRATEGY_COLORS[REFIT],
            label=f"{gr.strategy_title(REFIT)} closer to global")
    ax.plot(deltas, [s.farther for s in sweep], "s--", color=STRATEGY_COLORS["local"],
            label="local closer to global")
    ax.plot(deltas, [s.fallback_rate for s in sweep], "k:", label="fell back (tie)")
    ax.axvline(delta, color="0.5", lw=0.8, label=rf"default $\delta = {delta:g}$")
    ax.set_xscale("log")
    ax.legend(fontsize=8)
    ax.set(xlabel=r"tolerance $\delta$", ylabel="fraction of outer steps", ylim=(-0.02, 1.02),
           title=f"Re-fitting every window at other δ\n(global runs of fig2; profile {profile})")
    return fig


def dmd_grid_figure(grid: Sequence[DMDGridRow], exp: Experiment) -> Figure:
    """Figure 4 (right): final validation loss and test accuracy per (σ, m) as σ × m heat
    maps, annotated mean ± std; combinations not run (m ≥ σ) are blank."""
    sigmas = sorted({row.sigma for row in grid})
    ms = sorted({row.m for row in grid})
    fig, axes = panel_grid(2, height=3.8)
    for ax, value, cmap, title in (
        (axes[0], "val_loss", "viridis_r", "validation loss after the last outer step"),
        (axes[1], "test_accuracy", "viridis", "final test accuracy"),
    ):
        image = np.full((len(sigmas), len(ms)), np.nan)
        for row in grid:
            image[sigmas.index(row.sigma), ms.index(row.m)] = getattr(row, value)
        shown = ax.imshow(image, cmap=cmap, aspect="auto", origin="lower")
        fig.colorbar(shown, ax=ax, label=value.replace("_", " "))
        for row in grid:
            text = gt.plus_minus(getattr(row, value), getattr(row, f"{value}_std"), row.finished)
            # black text on light cells, white on dark (luma of the cell's colour)
            red, green, blue, _ = shown.cmap(shown.norm(getattr(row, value)))
            light = 0.299 * red + 0.587 * green + 0.114 * blue > 0.5
            ax.text(ms.index(row.m), sigmas.index(row.sigma), text.replace(" ± ", "\n± "),
                    ha="center", va="center", fontsize=8, color="k" if light else "w")
        ax.set_xticks(range(len(ms)), labels=[str(m) for m in ms])
        ax.set_yticks(range(len(sigmas)), labels=[str(s) for s in sigmas])
        ax.set(xlabel="delays $m$", ylabel=r"hypergradients $\sigma$ given to the DMD",
               title=title)
    model = ", ".join(dict.fromkeys(s.model_title for s in exp.runs))
    glocal = ", ".join(dict.fromkeys(gr.strategy_title(s.strategy_key) for s in exp.runs))
    fig.suptitle(f"{glocal} with different DMD settings, {model} + SGD\n"
                 f"({gr.provenance(exp)})", fontsize=10)
    return fig


def fidelity_figure(exp: Experiment, rows: Sequence[Mapping]) -> Figure:
    """The fidelity benchmark (`fidelity_rows`) as grouped bars, one group per recording and
    one bar per estimator (hatched: local): the median relative error (dashed: what
    predicting zero scores) and the share of windows closer to h_T than local (dotted: one
    half)."""
    rows = [r for r in rows if r["estimator"] != "zero"]
    recordings = list(dict.fromkeys(r["recording"] for r in rows))
    methods = [m for m in ESTIMATOR_COLORS if any(r["estimator"] == m for r in rows)]
    x, width = np.arange(len(recordings)), 0.8 / len(methods)
    fig, axes = plt.subplots(2, 1, figsize=(8, 7.5), sharex=True, layout="constrained")
    for ax, value in zip(axes, ("median error", "beats local")):
        table = {(r["recording"], r["estimator"]): r[value] for r in rows}
        for i, method in enumerate(methods):
            ax.bar(x - 0.4 + width * (i + 0.5),
                   [table.get((rec, method), np.nan) for rec in recordings], width,
                   color=ESTIMATOR_COLORS[method],
                   label=f"{method}: {gr.estimator_title(method)}"
                         + (" (default)" if method == _estimators.DEFAULT_METHOD else ""),
                   hatch="//" if method == "local" else None, edgecolor="white", lw=0.3)
        ax.set_xticks(x, labels=[rec.replace(", ", "\n") for rec in recordings], fontsize=8)
        ax.set(ylabel=value)
    axes[0].axhline(1, color="k", ls="--", lw=1, label="zero (predict nothing)")
    axes[1].axhline(0.5, color="0.5", ls=":", lw=1)
    axes[0].set(title="Median relative error to the global hypergradient (lower is better)")
    axes[1].set(title="Share of windows closer to $h_T$ than the local hypergradient "
                      "(higher is better)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=4,
               fontsize=9)
    fig.suptitle(f"Steady-state estimators against h_T, per recording\n({gr.provenance(exp)})",
                 fontsize=9)
    return fig


def trust_figure(rows: Sequence) -> Figure:
    """The trust benchmark (`trust.trust_rows`): one panel per setup, one bar per strategy,
    its mean paired difference from local on the same seeds (positive: better than local;
    points of accuracy, or relative loss), with two standard errors as whiskers; the shaded
    band is what `trust.meets_targets` tolerates."""
    setups = list(dict.fromkeys(r.setup for r in rows))
    columns = 2
    rows_ = -(-len(setups) // columns)
    fig, axes = plt.subplots(rows_, columns, figsize=(BOOK_WIDTH, 2.6 * rows_ + 0.6),
                             squeeze=False, layout="constrained")
    for ax in axes.flat[len(setups):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, setups):
        mine = [r for r in rows if r.setup == name and r.strategy != "local"]
        y = np.arange(len(mine))[::-1]
        colors = [ESTIMATOR_COLORS.get(r.strategy.split("-", 1)[-1], "0.5")
                  if r.strategy.startswith("glocal") else STRATEGY_COLORS[r.strategy]
                  for r in mine]
        ax.barh(y, [r.versus_local for r in mine], xerr=[2 * np.nan_to_num(r.versus_local_se)
                                                           for r in mine],
                color=colors, capsize=2)
        band = 0.01 if gtr.SETUPS[name].loss else 0.005
        ax.axvspan(-band, band, color="0.85", zorder=0)
        # A bar far beyond the others (no tuning from a diverging rate) is cut at the edge and
        # labelled, so that it does not flatten the bars a reader compares.
        tuned = [abs(r.versus_local) + 2 * np.nan_to_num(r.versus_local_se)
                 for r in mine if r.strategy != "none"]
        edge = 1.3 * max(max(tuned, default=0.0), band)
        for yi, r in zip(y, mine):
            if abs(r.versus_local) > 3 * edge:
                ax.annotate(f"{r.versus_local:+.0%}" if gtr.SETUPS[name].loss
                            else f"{r.versus_local:+.3f}", (np.sign(r.versus_local) * edge, yi),
                            ha="right" if r.versus_local > 0 else "left", va="center",
                            fontsize=7, color="white", xytext=(3 if r.versus_local < 0 else -3, 0),
                            textcoords="offset points")
                ax.set_xlim(-edge, edge)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(y, labels=[gr.strategy_title(r.strategy).replace(" (", "\n(")
                                 for r in mine], fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("relative loss gain" if gtr.SETUPS[name].loss else "accuracy gain",
                      fontsize=8)
    fig.suptitle("Final metric against local on the same seed (right of 0: better than local; "
                 "whiskers: 2 standard errors)\nown models, the same at every profile",
                 fontsize=9)
    return fig

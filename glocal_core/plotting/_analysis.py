"""The figures of the analysis chapter (7): estimates against h_T per window, the DMD's
spectra, Theorem 3.1 term by term, the δ sweep and the DMD grid. Each draws what
`glocal_core.quality` and `glocal_core.spectra` computed.
"""

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from .. import results as gr
from ..quality import EstimateQuality, QualitySummary
from ..spectra import DMDGridRow, PooledTerms, SpectraRow
from ._base import OTHER_MODES_COLOR, STRATEGY_COLORS, panel_grid, shared_legend
from ._results import plot_dmd_grid, plot_error_scatter, plot_quality


def quality_figure(qualities: Mapping[str, EstimateQuality], profile: str, *,
                   subtitle: str) -> Figure:
    """Per run (`{title: quality}`): cosine similarity and relative error of local and
    glocal against h_T, window by window."""
    fig, axes = panel_grid(len(qualities), per=2, height=3.0)
    for (ax_cos, ax_err), (title, quality) in zip(axes, qualities.items()):
        plot_quality(ax_cos, quality, metric="cosine")
        plot_quality(ax_err, quality, metric="error")
        ax_cos.set(title=f"{title}: direction")
        ax_err.set(title=f"{title}: relative error")
    fig.suptitle("Local and glocal against the global hypergradient of a playout, per outer "
                 f"step\n({subtitle}; profile {profile})")
    shared_legend(fig, axes)
    return fig


def error_scatter_figure(qualities: Mapping[str, EstimateQuality], profile: str) -> Figure:
    """Glocal's error against local's, every window of every run."""
    fig, ax = plt.subplots(figsize=(6, 6))
    plot_error_scatter(ax, qualities)
    ax.legend(fontsize=7, loc="upper left")
    ax.set(title=f"Glocal against local error, every outer step\n(global runs of fig2; "
                 f"profile {profile})")
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


def error_terms_figure(terms: PooledTerms, profile: str) -> Figure:
    """The terms of Theorem 3.1 against the horizon: forecast error (Eq. 16), dropped modes
    (Eq. 17) and the glocal error, where the DMD acted; the glocal error where it fell back."""
    acts = ~terms.fallback
    fig, ax = plt.subplots()
    ax.plot(terms.horizon, terms.forecast, "^", color="0.45", mfc="none",
            label=r"forecast error $\|h_T - \hat h_T\|$ (Eq. 16)")
    ax.plot(terms.horizon[acts], terms.dropped[acts], "v", color=OTHER_MODES_COLOR,
            mfc="none", label=r"dropped modes $\|\hat h_T - \hat h_\infty\|$ (Eq. 17)")
    ax.plot(terms.horizon[acts], terms.total[acts], "o", color=STRATEGY_COLORS["glocal"],
            label=r"glocal error $\|h_T - \hat h_\infty\|$")
    ax.plot(terms.horizon[~acts], terms.total[~acts], "o", mfc="none",
            color=STRATEGY_COLORS["glocal"], label="glocal error, fell back (= local)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set(xlabel=r"horizon $T - s\tau$ (inner steps)", ylabel=r"relative to $\|h_T\|$",
           title=f"The terms of Theorem 3.1, measured\n(global runs of fig2; profile {profile})")
    return fig


def delta_sweep_figure(deltas: Sequence[float], sweep: Sequence[QualitySummary],
                       delta: float, profile: str) -> Figure:
    """How often glocal was closer, farther or tied (fell back) at every re-fitted δ."""
    fig, ax = plt.subplots()
    ax.plot(deltas, [s.closer for s in sweep], "o-", color=STRATEGY_COLORS["glocal"],
            label="glocal closer to global")
    ax.plot(deltas, [s.farther for s in sweep], "s--", color=STRATEGY_COLORS["local"],
            label="local closer to global")
    ax.plot(deltas, [s.fallback_rate for s in sweep], "k:", label="fell back (tie)")
    ax.axvline(delta, color="0.5", lw=0.8, label=rf"default $\delta = {delta:g}$")
    ax.set_xscale("log")
    ax.legend(fontsize=8)
    ax.set(xlabel=r"tolerance $\delta$", ylabel="fraction of outer steps", ylim=(-0.02, 1.02),
           title=f"Re-fitting every window at other δ\n(global runs of fig2; profile {profile})")
    return fig


def dmd_grid_figure(grid: Sequence[DMDGridRow], exp) -> Figure:
    """Figure 4 (right): final validation loss and test accuracy per (σ, m)."""
    fig, (ax_loss, ax_acc) = panel_grid(2, height=3.8)
    plot_dmd_grid(ax_loss, grid, value="val_loss", cmap="viridis_r")
    plot_dmd_grid(ax_acc, grid, value="test_accuracy")
    ax_loss.set(title="validation loss after the last outer step")
    ax_acc.set(title="final test accuracy")
    model = ", ".join(dict.fromkeys(s.model_title for s in exp.runs))
    fig.suptitle(f"Glocal with different DMD settings, {model} + SGD\n({gr.provenance(exp)})",
                 fontsize=10)
    return fig


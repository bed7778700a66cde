"""The figures of the reproduction chapters (4-6), one function per figure: each takes the
grouped runs of `results.group_runs` and the profile, lays out one panel per dataset with
`panel_grid`, and returns the figure with one legend and a title naming the profile. The
numbers they draw come from `glocal_core.repro.results` and `glocal_core.repro.quality`.
"""

import textwrap
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .. import quality as gq
from .. import results as gr
from .. import tables as gt
from ..._data import NUM_CLASSES
from ... import OuterResult
from ..experiments import PAPER_TABLE2, PAPER_TABLE3
from ._base import (
    BOOK_WIDTH,
    STRATEGY_COLORS,
    caption,
    log_axis,
    panel_grid,
    plot_fallbacks,
    plot_mean_std,
    plot_runtime,
    shared_legend,
)

Groups = Mapping[gr.Panel, Mapping[str, Sequence[OuterResult]]]


def panel_caption(panel: gr.Panel, profile: str, width: int = 48) -> str:
    """`caption` of a panel, wrapped to `width` characters for subplot titles."""
    return textwrap.fill(caption(profile, panel.title), width)


def plot_runs(axes: Sequence[Axes], runs: Mapping[str, Sequence[OuterResult]]) -> None:
    """Fill the `1 + q` axes of one panel (`runs`: `{strategy: [OuterResult, ...]}`, as in
    `group_runs`): test accuracy in `axes[0]`, then one hyperparameter per axis as a
    staircase over the windows (the paper's Figures 2, 3 and C.1–C.4), every strategy in its
    colour, mean ± std over seeds. A dotted vertical line in the strategy's colour marks
    where a run stopped early, so a curve that ends there is read as a divergence."""
    names = next(iter(runs.values()))[0].names
    if len(axes) != 1 + len(names):
        raise ValueError(f"need 1 + q = {1 + len(names)} axes, got {len(axes)}.")
    for strategy, results in runs.items():
        acc = gr.accuracy_curve(results)
        plot_mean_std(axes[0], acc.x, acc.mean, acc.std, strategy,
                      label=gr.strategy_title(strategy),
                      marker="o" if len(acc.x) < 30 else None)
        hp = gr.hyperparameter_curve(results)
        for i, ax in enumerate(axes[1:]):
            plot_mean_std(ax, hp.x, hp.mean[:, i], hp.std[:, i], strategy, steps=True)
        stops = [r.step[-1] if len(r.step) else 0 for r in results if r.stopped]
        for ax in axes:
            for step in stops:
                ax.axvline(step, color=STRATEGY_COLORS[strategy], ls=":", lw=1.2)
    axes[0].set(xlabel="inner step", ylabel="test accuracy")
    for ax, name in zip(axes[1:], names):
        ax.set(xlabel="inner step", ylabel=gr.HYPERPARAMETER_TITLES.get(name, name))


def strategies_figure(groups: Groups, profile: str, *, title: str) -> Figure:
    """Test accuracy and every learned hyperparameter of each panel (the paper's Figures 2,
    3 and C.1-C.4), the `1 + q` axes of a panel together, every strategy in its colour."""
    q = len(next(iter(next(iter(groups.values())).values()))[0].names)
    fig, blocks = panel_grid(len(groups), per=1 + q)
    for block, (panel, runs) in zip(blocks, groups.items()):
        plot_runs(block, runs)
        block[0].set(title=panel_caption(panel, profile))
    shared_legend(fig, blocks)
    fig.suptitle(f"{title}\n(mean ± std over seeds; profile {profile})")
    return fig


def hypergradient_error_figure(groups: Groups, profile: str) -> Figure:
    """Per panel with global runs: the relative error of the local and the glocal
    hypergradient against the global one, window by window (`quality.hypergradient_errors`);
    the legend names the estimator the global runs recorded."""
    panels = [p for p in groups if "global" in groups[p]]
    fig, axes = panel_grid(len(panels), height=3.6)
    for ax, panel in zip(axes, panels):
        runs = groups[panel]["global"]
        titles = {"local": "local", "glocal": gr.strategy_title(
            f"glocal-{runs[0].config.estimator.method}")}
        for strategy, curve in gq.hypergradient_errors(runs).items():
            plot_mean_std(ax, curve.x, curve.mean, curve.std, strategy, marker="o",
                          label=f"{titles[strategy]} vs global")
        log_axis(ax)
        ax.set(xlabel="inner step", ylabel=r"relative error against $h_T$",
               title=panel_caption(panel, profile))
    shared_legend(fig, axes)
    fig.suptitle("Local and glocal hypergradients against the global one, along the global "
                 f"runs\n(profile {profile})")
    return fig


def fallback_figure(groups: Groups, profile: str, *, strategies=("glocal-paper", "glocal"),
                    title: str = "Glocal runs") -> Figure:
    """Per panel, the spectral radius of each window's DMD for the runs of the first of
    `strategies` the panel has, its `results.strategy_title` in the legend; a cross where the
    estimator fell back to local."""
    panels = [p for p in groups if any(s in groups[p] for s in strategies)]
    fig, axes = panel_grid(len(panels), height=3.2, sharey=True)
    for ax, panel in zip(axes, panels):
        strategy = next(s for s in strategies if s in groups[panel])
        for r in groups[panel][strategy]:
            plot_fallbacks(ax, r.step, r.spectral_radius, r.fallback, strategy,
                           label=gr.strategy_title(strategy))
        ax.set(title=panel_caption(panel, profile))
    shared_legend(fig, axes)
    fig.suptitle(f"{title}: DMD spectral radius per window,\n× = fell back to local "
                 f"(profile {profile})")
    return fig


def runtime_figure(report: Mapping, profile: str) -> Figure:
    """Our benchmark's seconds relative to plain training beside the paper's Table 3."""
    fig, ax = plt.subplots(figsize=(7, 4))
    plot_runtime(ax, report["seconds"], PAPER_TABLE3)
    ax.set(title=f"Run time relative to plain training: ours (T = {report['config']['steps']}, "
                 f"{report['device'].split(',')[0]}; profile {profile})\n"
                 "beside the paper's Table 3 (T = 10,000, RTX 6000 Ada)")
    return fig


def used_update_figure(groups: Groups, profile: str, name: str = "learning_rate", *,
                       strategy: str = "glocal") -> Figure:
    """Per panel, the runs of `strategy` (a glocal key): their last hypergradient of each
    window `h_τ` beside the update they used (their estimate, or `h_τ` where it fell back) for
    hyperparameter `name`."""
    glocal = gr.strategy_title(strategy)
    fig, axes = panel_grid(len(groups), height=3.6)
    for ax, (panel, runs) in zip(axes, groups.items()):
        for r in runs[strategy]:
            i = r.names.index(name)
            ax.plot(r.step, r.local_hypergradient[:, i], "o-", ms=4,
                    color=STRATEGY_COLORS["local"], label=r"$h_\tau$ (local)")
            ax.plot(r.step, r.hypergradient[:, i], "s--", ms=4, mfc="none",
                    color=STRATEGY_COLORS[strategy], label=rf"$\hat h_\infty$ used ({glocal})")
            ax.plot(r.step[r.fallback], r.hypergradient[r.fallback, i], "x", ms=9,
                    color=STRATEGY_COLORS[strategy], label="fell back")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_yscale("symlog", linthresh=float(np.median(np.abs(r.local_hypergradient[:, i]))))
        ax.set(xlabel="inner step", ylabel=f"{gr.HYPERPARAMETER_TITLES.get(name, name)} "
               "hypergradient", title=panel_caption(panel, profile))
    shared_legend(fig, axes)
    fig.suptitle(f"Runs of {glocal}: the window's last hypergradient and the update used "
                 f"(profile {profile})")
    return fig


def class_share_figure(shares: Mapping[str, np.ndarray], profile: str) -> Figure:
    """The class shares of imbalanced training sets, `{label: shares}` (most frequent first)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, share in shares.items():
        ax.plot(np.arange(len(share)) / (len(share) - 1), share,
                "o-" if len(share) <= 10 else "-", ms=4, label=label)
    ax.set_yscale("log")
    ax.set(xlabel="class index c / (C - 1)", ylabel="share of the training set",
           title=f"Class shares of the imbalanced training sets (profile {profile})")
    ax.legend()
    return fig


def table2_figure(groups: Groups, profile: str) -> Figure:
    """Table 2 as bars: final test accuracy of each strategy of `tables.TABLE2_STRATEGIES`
    that ran, ours (mean ± std over the finished seeds) beside the paper's local and glocal
    (Eq. 14, hatched), each titled with `results.strategy_title`."""
    panels = list(groups)
    ours = [s for s in gt.TABLE2_STRATEGIES if any(s in groups[p] for p in panels)]
    # the paper's bar beside ours of the same strategy; its glocal is Eq. 14
    paper = {"local": 0, gt.PAPER_GLOCAL: 1}
    bars = [(s, "ours") for s in ours]
    for s in paper:
        at = max((i + 1 for i, (t, _) in enumerate(bars) if t == s), default=len(bars))
        bars.insert(at, (s, "paper"))
    fig, ax = plt.subplots(figsize=(BOOK_WIDTH, 4))
    x, width = np.arange(len(panels)), 0.8 / len(bars)
    for i, (strategy, whose) in enumerate(bars):
        offset, color = x - 0.4 + width * (i + 0.5), STRATEGY_COLORS[strategy]
        label = f"{whose}: {gr.strategy_title(strategy)}"
        if whose == "ours":
            finals = [gr.final(groups[p][strategy]) if strategy in groups[p] else None
                      for p in panels]
            ax.bar(offset, [f.accuracy_mean if f else np.nan for f in finals], width,
                   yerr=[f.accuracy_std if f else np.nan for f in finals], color=color,
                   label=label)
        else:
            values = [PAPER_TABLE2.get((p.data.paper_name, p.data.imbalance),
                                       (np.nan,) * 2)[paper[strategy]] for p in panels]
            ax.bar(offset, values, width, color=color, alpha=0.45, hatch="//", edgecolor="k",
                   lw=0.5, label=label)
    ax.set_xticks(x, labels=[f"{gr.dataset_title(p.data.name)} f = {p.data.imbalance:g}\n"
                             f"(paper: {gr.dataset_title(p.data.paper_name)})" for p in panels])
    ax.set(ylabel="test accuracy", ylim=(0, 1),
           title=f"Table 2: our runs ({', '.join(dict.fromkeys(p.model for p in panels))}; "
                 f"profile {profile}) beside the paper's (WideResNet-28-2)")
    ax.legend(ncol=2, fontsize=8)
    return fig


def reweighting_curves_figure(groups: Groups, profile: str) -> Figure:
    """Per panel: test accuracy (dotted: chance, 1 / C), unweighted validation loss and
    weighted training loss over inner steps, every strategy, mean ± std over seeds."""
    fig, blocks = panel_grid(len(groups), per=3)
    labels = ("test accuracy", "validation loss (unweighted)", "training loss (weighted)")
    for block, (panel, runs) in zip(blocks, groups.items()):
        for strategy, results in runs.items():
            curves = (gr.accuracy_curve(results), gr.loss_curve(results, "val_loss"),
                      gr.loss_curve(results, "train_loss"))
            for ax, curve in zip(block, curves):
                plot_mean_std(ax, curve.x, curve.mean, curve.std, strategy,
                              label=gr.strategy_title(strategy),
                              marker="o" if len(curve.x) < 30 else None)
        for ax, label in zip(block, labels):
            ax.set(xlabel="inner step", ylabel=label)
        block[0].axhline(1 / NUM_CLASSES.get(panel.data.name, 10), color="0.5", ls=":", lw=1)
        block[0].set(ylim=(0, 1), title=panel_caption(panel, profile))
    shared_legend(fig, blocks)
    fig.suptitle(f"Data reweighting: training curves (mean ± std over seeds; profile "
                 f"{profile});\ndotted: 1 / C")
    return fig


def weighting_figure(groups: Groups, profile: str) -> Figure:
    """Per panel: the learned weighting function μ_φ(L) of the last window, every strategy
    (mean ± std over seeds), beside the initial one; dotted: L = ln C."""
    fig, axes = panel_grid(len(groups), height=3.6, sharey=True)
    for ax, (panel, runs) in zip(axes, groups.items()):
        log_c = np.log(NUM_CLASSES.get(panel.data.name, 10))
        losses = np.linspace(0.0, 2 * log_c, 200)
        initial = gr.weighting_curve(next(iter(runs.values())), losses, window=0)
        ax.plot(losses, initial.mean, "--", color=STRATEGY_COLORS["none"], label="initial")
        for strategy, results in runs.items():
            curve = gr.weighting_curve(results, losses)
            plot_mean_std(ax, curve.x, curve.mean, curve.std, strategy,
                          label=f"{gr.strategy_title(strategy)}, last window")
        ax.axvline(log_c, color="0.7", lw=1, ls=":")
        ax.set(xlabel="per-example cross-entropy L (dotted: ln C)", ylabel=r"weight $\mu_\phi(L)$",
               ylim=(-0.02, 1.02), title=panel_caption(panel, profile))
    shared_legend(fig, axes)
    fig.suptitle(f"The learned weighting function (profile {profile})")
    return fig

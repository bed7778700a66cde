"""The book's figure layout (panels at most two per row at the book's width, one legend) and
the DMD plots' highlighting of the modes that Eq. 14 keeps."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

import glocal_core as gc
import glocal_core.repro.plotting as gplt


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.mark.parametrize("count, rows", [(1, 1), (2, 1), (3, 2), (4, 2)])
def test_single_panels_flow_two_per_row(count, rows):
    fig, axes = gplt.panel_grid(count, height=3.0)
    assert len(axes) == count == len(fig.axes)
    assert len({round(ax.get_position().y0, 3) for ax in axes}) == rows
    assert tuple(fig.get_size_inches()) == pytest.approx((gplt.BOOK_WIDTH, 3.0 * rows))


def test_multi_axis_panels_start_their_own_rows():
    fig, blocks = gplt.panel_grid(2, per=3)  # e.g. accuracy, learning rate, weight decay
    assert [len(b) for b in blocks] == [3, 3] and len(fig.axes) == 6
    fig.canvas.draw()
    top = [b[0].get_position().y0 for b in blocks]
    # The second panel starts below every axis of the first: no row mixes two panels.
    assert top[1] < min(ax.get_position().y0 for ax in blocks[0])
    assert fig.get_size_inches()[1] == pytest.approx(4 * 2.8)


def test_bad_layouts_raise():
    with pytest.raises(ValueError, match="count, per and ncols"):
        gplt.panel_grid(0)


def test_shared_legend_has_each_label_once_under_the_panels():
    fig, axes = gplt.panel_grid(2)
    for ax in axes:
        ax.plot([0, 1], [0, 1], color=gplt.STRATEGY_COLORS["local"], label="local")
        ax.plot([0, 1], [1, 0], color=gplt.STRATEGY_COLORS["glocal"], label="glocal")
    axes[1].plot([0, 1], [0.5, 0.5], label="global")
    legend = gplt.shared_legend(fig, axes)
    assert [t.get_text() for t in legend.get_texts()] == ["local", "glocal", "global"]
    assert all(ax.get_legend() is None for ax in axes)
    fig.canvas.draw()
    box = legend.get_window_extent().transformed(fig.transFigure.inverted())
    assert box.y1 <= min(ax.get_position().y0 for ax in axes) + 1e-6
    assert gplt.shared_legend(*gplt.panel_grid(1)) is None  # nothing labelled: no legend


def test_house_style_sizes_figures_for_the_book():
    with plt.style.context("glocal_core.repro.book"):
        fig, axes = gplt.panel_grid(2)
        assert fig.dpi == 100
        assert fig.get_size_inches()[0] * fig.dpi <= 805  # the article column, in px
        assert all(t.get_fontsize() >= 10 for ax in axes for t in ax.get_xticklabels())


def test_highlighted_eigenvalues_and_modes_are_those_that_eq14_keeps():
    t = np.arange(30.0)
    H = np.stack([1 + 0.5**t, 2 - 0.9**t], axis=1)  # eigenvalues 1 (kept), 0.9 and 0.5
    fit = gc.steady_state(H, sigma=30, m=4, method="paper", delta=0.05).fit
    assert 0 < fit.kept.sum() < fit.kept.size
    _, (left, right) = plt.subplots(1, 2)
    gplt.plot_eigenvalues(left, fit.dmd, delta=0.05)
    (kept,) = (line for line in left.get_lines() if line.get_label().startswith("near 1"))
    np.testing.assert_array_equal(kept.get_xdata(), fit.dmd.eigenvalues[fit.kept].real)
    gplt.plot_mode_decay(right, fit.dmd, np.arange(10), delta=0.05)
    glocal = [line for line in right.get_lines() if len(line.get_xdata())
              and line.get_color() == gplt.STRATEGY_COLORS["glocal"]]
    assert len(glocal) == fit.kept.sum()


def test_hypergradient_bars_name_glocal_by_its_estimator(monkeypatch):
    _, ax = plt.subplots()
    values = {"local": np.ones(2), "glocal": np.ones(2), "glocal-paper": np.ones(2),
              "global": np.ones(2)}
    monkeypatch.setattr(gc._estimators, "DEFAULT_METHOD", "mean")
    gplt.plot_hypergradients(ax, ["a", "b"], values)
    ax.legend()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "local", "glocal (window mean)", "glocal (Eq. 14)", "global"]

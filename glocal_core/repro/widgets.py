"""Sliders for τ, σ and m of the glocal estimate on one recorded hypergradient trajectory.

On the hypergradients `H = h_1, ..., h_T` of one window with φ held fixed, a setting (τ, σ, m)
fits a Hankel DMD with m delays (Eq. 10 on the observable `[h_t; ...; h_{t+m-1}]`) to the last
σ hypergradients `h_{τ-σ+1}, ..., h_τ` of the local window (local hypergradient `h_τ`, Eq. 6),
which gives a glocal estimate (Eq. 14) to compare with the global `h_T` (Eq. 5). `fit_point`
computes every point; an invalid setting (σ > τ, m ≥ σ, ...) is not an error but a `GridPoint`
whose `invalid` sentence both front ends show instead of a figure.

`explorer` shows either `live_explorer`, ipywidgets that re-fit on every move (needs a kernel),
or, when the environment variable `STATIC_ENV` (`GLOCAL_STATIC_WIDGETS`) is `"1"`, as the book
build sets it, `static_explorer_html`: range sliders over a grid precomputed by `explorer_grid`,
drawn as SVG by the package's `explorer.js`. That page needs no kernel and loads no URL, so the
built book works offline, and it holds no ipywidgets state, so Jupyter Book adds no widget
manager (which it would load from a CDN).

This module imports matplotlib (through `glocal_core.repro.plotting`); ipywidgets only when a live
explorer is built. `import glocal_core` imports neither.
"""

import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from .. import ESTIMATOR_DEFAULTS, Estimate, steady_state
from .quality import relative_error
from .static_explorer import describe, grid_json, static_explorer_html  # noqa: F401
from .plotting import plot_eigenvalues, plot_hypergradients, plot_mode_decay

STATIC_ENV = "GLOCAL_STATIC_WIDGETS"


class GridPoint(NamedTuple):
    """One setting (τ, σ, m) of an explorer, fitted or explained.

    `invalid` says why the setting cannot be fitted, as a sentence for the reader; then `state`
    is `None` and both errors are NaN. Otherwise `invalid` is `""`, `state` is the `Estimate`
    of Eq. 14, `steady_state(H[:tau], sigma, m, method="paper")`, with its `ModeFit` (its
    `fallback` and `reason` say whether the
    estimate is the local one), and the errors are `‖ĥ − h_T‖ / ‖h_T‖` of the glocal estimate
    and of the local hypergradient `h_τ`.
    """

    tau: int
    sigma: int
    m: int
    invalid: str
    state: Estimate | None
    error_glocal: float
    error_local: float


class ExplorerGrid(NamedTuple):
    """`points[(tau, sigma, m)]` for every combination of the increasing slider values `taus`,
    `sigmas` and `ms`, and what they are compared with: `target` is the global hypergradient
    `h_T`, `(q,)`; `horizon` is T, so the modes of hyperparameter `component` are shown over
    the `T − τ` steps from the end of the window to T. `delta` is the tolerance of Eq. (14) of
    every point, `initial` the (τ, σ, m) the sliders start at, `title` names data and profile.
    """

    taus: tuple[int, ...]
    sigmas: tuple[int, ...]
    ms: tuple[int, ...]
    points: dict[tuple[int, int, int], GridPoint]
    target: np.ndarray
    horizon: int
    names: tuple[str, ...]
    delta: float
    component: int
    initial: tuple[int, int, int]
    title: str


def check_setting(tau: int, sigma: int, m: int, length: int) -> str:
    """Why (τ, σ, m) cannot be fitted to a trajectory of `length` rows, or `""` if it can."""
    if not 1 <= tau <= length:
        return f"τ = {tau} lies outside the recorded trajectory of {length} steps."
    if sigma > tau:
        return (f"σ = {sigma} > τ = {tau}: the DMD reads the last σ hypergradients of the "
                f"window, and the window has only τ. Lower σ or raise τ.")
    if sigma < 2:
        return f"σ = {sigma}: a trajectory needs at least two steps to have dynamics."
    if m < 1:
        return f"m = {m}: the observable needs at least one block (m ≥ 1)."
    if m >= sigma:
        return (f"m = {m} ≥ σ = {sigma}: a Hankel matrix of m delays over σ steps has "
                f"σ − m + 1 columns, and DMD needs at least two. Lower m or raise σ.")
    return ""


def fit_point(
    H, target, tau: int, sigma: int, m: int, *, delta: float = ESTIMATOR_DEFAULTS.delta
) -> GridPoint:
    """The glocal estimate (Eq. 14) from `H[tau-sigma:tau]` with `m` delays, against `target`.

    `H` is the `(T, q)` trajectory `h_1, ..., h_T` of one window with φ fixed, `target` usually
    `H[-1]`, and `delta` the tolerance of Eq. 14.

    **Returns:** a `GridPoint`. It never raises for a bad setting or a non-finite window: the
    sentence of `check_setting` or of the library's `ValueError` becomes its `invalid`.
    """
    H, target = np.asarray(H, dtype=np.float64), np.asarray(target, dtype=np.float64)
    invalid = check_setting(tau, sigma, m, len(H))
    if not invalid:
        try:
            state = steady_state(H[:tau], sigma=sigma, m=m, method="paper", delta=delta)
        except ValueError as error:
            invalid = str(error)
    if invalid:
        return GridPoint(tau, sigma, m, invalid, None, float("nan"), float("nan"))
    return GridPoint(tau, sigma, m, "", state, float(relative_error(state.value, target)),
                     float(relative_error(state.local, target)))


def explorer_grid(
    H,
    target=None,
    *,
    taus: Sequence[int],
    sigmas: Sequence[int],
    ms: Sequence[int],
    names: Sequence[str],
    initial: tuple[int, int, int] | None = None,
    delta: float = ESTIMATOR_DEFAULTS.delta,
    component: int = 0,
    title: str = "",
    fit: bool = True,
) -> ExplorerGrid:
    """Fit every combination of `taus`, `sigmas` and `ms` (pure NumPy, milliseconds each).

    **Arguments:**

    - `H`: the `(T, q)` trajectory.
    - `target`: the global hypergradient; `H[-1]` (that is, `h_T`) if omitted.
    - `taus`, `sigmas`, `ms`: the slider values, in any order; duplicates are dropped.
    - `names`: the `q` hyperparameters' names.
    - `initial`: where the sliders start, each entry one of the slider values; the middle
        values if omitted.
    - `delta`: the tolerance of Eq. (14).
    - `component`: the hyperparameter whose modes are drawn (the paper: the learning rate).
    - `title`: a title naming the data and the profile.
    - `fit`: with `False`, fit nothing: the grid holds the checked settings only (`points` is
        empty), all that `plot_point` and `live_explorer` read.

    **Returns:** an `ExplorerGrid`. A malformed `H`, an empty list of slider values or an
    `initial`, `names` or `component` that does not fit raises `ValueError`.
    """
    H = np.asarray(H, dtype=np.float64)
    if H.ndim != 2:
        raise ValueError(f"`H` must be a (T, q) trajectory, got shape {H.shape}.")
    target = H[-1] if target is None else np.asarray(target, dtype=np.float64)
    axes = tuple(tuple(sorted({int(v) for v in values})) for values in (taus, sigmas, ms))
    for label, values in zip(("taus", "sigmas", "ms"), axes):
        if not values:
            raise ValueError(f"`{label}` is empty; give at least one slider value.")
    if initial is None:
        initial = tuple(values[len(values) // 2] for values in axes)
    initial = tuple(int(v) for v in initial)
    for label, value, values in zip(("tau", "sigma", "m"), initial, axes):
        if value not in values:
            raise ValueError(f"initial {label}={value} is not one of the slider values {values}.")
    if len(names) != H.shape[1]:
        raise ValueError(f"{len(names)} names for q={H.shape[1]} hyperparameters.")
    if not 0 <= component < H.shape[1]:
        raise ValueError(f"component={component} must index one of the q={H.shape[1]} columns.")
    points = {(tau, sigma, m): fit_point(H, target, tau, sigma, m, delta=delta)
              for tau in axes[0] for sigma in axes[1] for m in axes[2]} if fit else {}
    return ExplorerGrid(*axes, points, target, len(H), tuple(names), float(delta),
                        int(component), initial, title)


def plot_point(point: GridPoint, grid_like: ExplorerGrid, axes) -> None:
    """Draw a fitted `GridPoint` on three matplotlib axes: its eigenvalues, the decay of its
    modes until T and the local, glocal and global hypergradients. Of `grid_like` only the
    metadata is read, not its `points`.
    """
    state, g = point.state, grid_like
    ax_eig, ax_modes, ax_bars = axes
    plot_eigenvalues(ax_eig, state.fit.dmd, delta=g.delta)
    ax_eig.legend(loc="lower left", fontsize=7)
    ax_eig.set(title=f"eigenvalues (rank {state.fit.dmd.rank})")
    plot_mode_decay(ax_modes, state.fit.dmd, np.arange(max(g.horizon - point.tau, 1) + 1),
                    delta=g.delta, component=g.component)
    ax_modes.legend(loc="lower left", fontsize=7)
    ax_modes.set(title=f"modes of {g.names[g.component]} until T = {g.horizon}")
    plot_hypergradients(ax_bars, g.names,
                        {"local": state.local, "glocal": state.value, "global": g.target})
    ax_bars.legend(fontsize=7, title_fontsize=7,
                   title="glocal fell back to local" if state.fallback else None)
    ax_bars.set(title=f"error vs global: glocal {point.error_glocal:.3g}, "
                      f"local {point.error_local:.3g}")


def live_explorer(H, target=None, **settings):
    """An ipywidgets explorer: integer sliders from the smallest to the largest of `taus`,
    `sigmas` and `ms` re-fit the DMD at every release and redraw. Keyword arguments as in
    `explorer_grid`; returns a widget.
    """
    # The settings are checked first, so that a mistake is reported even without ipywidgets.
    frame = explorer_grid(H, target, fit=False, **settings)
    H = np.asarray(H, dtype=np.float64)
    import ipywidgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    sliders = {
        name: ipywidgets.IntSlider(value=value, min=min(values), max=max(values),
                                   description=label, continuous_update=False)
        for name, label, value, values in zip(("tau", "sigma", "m"), ("τ", "σ", "m"),
                                               frame.initial, (frame.taus, frame.sigmas, frame.ms))
    }

    def show(tau, sigma, m):
        point = fit_point(H, frame.target, tau, sigma, m, delta=frame.delta)
        if point.invalid:
            print(point.invalid)
            return
        fig, panels = plt.subplots(1, 3, figsize=(13, 4))
        plot_point(point, frame, panels)
        setting = f"τ = {tau}, σ = {sigma}, m = {m}"
        fig.suptitle(f"{frame.title}: {setting}" if frame.title else setting)
        fig.tight_layout()
        # display + close rather than plt.show(): the same under every matplotlib backend.
        display(fig)
        plt.close(fig)
        print(describe(point, frame.delta))

    output = ipywidgets.interactive_output(show, sliders)
    return ipywidgets.VBox([ipywidgets.HBox(list(sliders.values())), output])


def static_mode() -> bool:
    """Whether `explorer` renders the static page: `GLOCAL_STATIC_WIDGETS=1`."""
    return os.environ.get(STATIC_ENV, "") == "1"


def explorer(H, target=None, *, static: bool | None = None, **settings):
    """The τ/σ/m explorer for a notebook: live ipywidgets, or the static page in the book.

    **Arguments:** `H`, `target` and keyword arguments as in `explorer_grid`; `static` forces
    one front end, by default `static_mode()`.

    **Returns:** an object that Jupyter displays: an `IPython.display.HTML` (static) or an
    ipywidgets widget (live). In the live widget the sliders take every integer between the
    smallest and the largest of the given values; the static page has exactly the given values.
    """
    if static_mode() if static is None else static:
        from IPython.display import HTML

        return HTML(static_explorer_html(explorer_grid(H, target, **settings)))
    return live_explorer(H, target, **settings)

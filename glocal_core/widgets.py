"""Sliders for τ, σ and m of the glocal estimate on one recorded hypergradient trajectory.

Given `H`, the hypergradients `h_1, ..., h_T` of one window with φ held fixed, a choice of

- τ: the local window ends at step τ (the local hypergradient is `h_τ`, Eq. 6),
- σ: the Hankel DMD reads its last σ hypergradients `h_{τ-σ+1}, ..., h_τ`,
- m: with m delays (Eq. 10 on the observable `[h_t; ...; h_{t+m-1}]`),

gives a glocal estimate (Eq. 14) to compare with the global hypergradient `h_T` (Eq. 5).
Two front ends show it; both compute every point with `fit_point`:

- `live_explorer`: ipywidgets sliders that re-fit the DMD on every move and redraw with the
  helpers of `glocal_core.plotting`. Needs a kernel (Jupyter, Colab).
- `static_explorer_html` (in `_static_explorer`, re-exported here): the same three sliders as
  HTML `<input type="range">` over a grid precomputed by `explorer_grid`, drawn as SVG by the
  package's `explorer.js` from embedded JSON.
  It needs no kernel, no ipywidgets and no external URL, so it works in the built book,
  offline.

`explorer` picks one: the static page when the environment variable named by `STATIC_ENV`
(`GLOCAL_STATIC_WIDGETS`) is `"1"`, as the book build sets it, and the live widget otherwise.
A static book therefore holds no ipywidgets state, and Jupyter Book adds no widget manager,
which it would load from a CDN.

Invalid combinations (σ > τ, m ≥ σ, ...) are not errors here: they become a `GridPoint` whose
`invalid` says why, and both front ends show that sentence instead of a figure.

This module imports matplotlib (through `glocal_core.plotting`); ipywidgets is imported only
when a live explorer is built. `import glocal_core` imports neither.
"""

import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from ._dmd import SteadyState, estimate_steady_state
from ._estimators import DMD_DEFAULTS
from ._static_explorer import describe, grid_json, static_explorer_html  # noqa: F401
from .plotting import (
    plot_eigenvalues,
    plot_hypergradients,
    plot_mode_decay,
)

STATIC_ENV = "GLOCAL_STATIC_WIDGETS"


class GridPoint(NamedTuple):
    """One (τ, σ, m) of an explorer.

    **Fields:**

    - `tau`, `sigma`, `m`: the setting.
    - `invalid`: why the setting cannot be fitted, as a sentence for the reader; `""` when
        it was fitted.
    - `state`: the `SteadyState` of `estimate_steady_state(H[:tau], sigma, m)`, or `None`
        when invalid. Its `fallback` and `reason` say whether the estimate is the local one.
    - `error_glocal`, `error_local`: `‖ĥ - h_T‖ / ‖h_T‖` for the glocal estimate and the
        local hypergradient `h_τ` (NaN when invalid).
    """

    tau: int
    sigma: int
    m: int
    invalid: str
    state: SteadyState | None
    error_glocal: float
    error_local: float


class ExplorerGrid(NamedTuple):
    """`GridPoint`s for every combination of the slider values, and what they compare with.

    **Fields:**

    - `taus`, `sigmas`, `ms`: the slider values, increasing.
    - `points`: `points[(tau, sigma, m)]` for every combination.
    - `target`: the global hypergradient `h_T`, `(q,)`.
    - `horizon`: T, the length of the trajectory; modes are shown over the `T - τ` steps
        from the end of the window to T.
    - `names`: the hyperparameters' names.
    - `delta`: the tolerance of Eq. (14) used for every point.
    - `component`: the index of the hyperparameter whose modes are shown.
    - `initial`: the (τ, σ, m) the sliders start at.
    - `title`: the figure title, naming data and profile.
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


def _relative_error(value: np.ndarray, target: np.ndarray) -> float:
    return float(np.linalg.norm(value - target) / np.linalg.norm(target))


def fit_point(H, target, tau: int, sigma: int, m: int, *, delta: float = DMD_DEFAULTS.delta) -> GridPoint:
    """The glocal estimate from `H[tau-sigma:tau]` with `m` delays, against `target`.

    **Arguments:**

    - `H`: the `(T, q)` trajectory `h_1, ..., h_T` of one window with φ fixed.
    - `target`: the global hypergradient to compare with, usually `H[-1]`.
    - `tau`, `sigma`, `m`: the setting; an invalid one gives a `GridPoint` with `invalid` set.
    - `delta`: the tolerance of `estimate_steady_state`.

    **Returns:**

    A `GridPoint`. It never raises for a bad setting or a non-finite window: the library's
    `ValueError` becomes the `invalid` sentence.
    """
    H, target = np.asarray(H, dtype=np.float64), np.asarray(target, dtype=np.float64)
    invalid = check_setting(tau, sigma, m, len(H))
    if not invalid:
        try:
            state = estimate_steady_state(H[:tau], sigma=sigma, m=m, delta=delta)
        except ValueError as error:
            invalid = str(error)
    if invalid:
        return GridPoint(tau, sigma, m, invalid, None, float("nan"), float("nan"))
    return GridPoint(tau, sigma, m, "", state, _relative_error(state.value, target),
                     _relative_error(state.local, target))


def _slider_values(H, target, taus, sigmas, ms, names, initial, component):
    """Checked arrays, sorted slider values and initial setting shared by both front ends."""
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
    return H, target, axes, initial


def explorer_grid(
    H,
    target=None,
    *,
    taus: Sequence[int],
    sigmas: Sequence[int],
    ms: Sequence[int],
    names: Sequence[str],
    initial: tuple[int, int, int] | None = None,
    delta: float = DMD_DEFAULTS.delta,
    component: int = 0,
    title: str = "",
) -> ExplorerGrid:
    """Fit every combination of `taus`, `sigmas` and `ms` (pure NumPy, milliseconds each).

    **Arguments:**

    - `H`: the `(T, q)` trajectory.
    - `target`: the global hypergradient; `H[-1]` (that is, `h_T`) if omitted.
    - `taus`, `sigmas`, `ms`: the slider values.
    - `names`: the `q` hyperparameters' names.
    - `initial`: where the sliders start; the middle values if omitted. Each entry must be
        one of the slider values.
    - `delta`: the tolerance of Eq. (14).
    - `component`: the hyperparameter whose modes are drawn (the paper: the learning rate).
    - `title`: a title naming the data and the profile.

    **Returns:**

    An `ExplorerGrid`.
    """
    H, target, axes, initial = _slider_values(H, target, taus, sigmas, ms, names, initial,
                                              component)
    points = {
        (tau, sigma, m): fit_point(H, target, tau, sigma, m, delta=delta)
        for tau in axes[0] for sigma in axes[1] for m in axes[2]
    }
    return ExplorerGrid(*axes, points, target, len(H), tuple(names), float(delta),
                        int(component), initial, title)


def plot_point(point: GridPoint, grid_like: ExplorerGrid, axes) -> None:
    """Draw one setting on three axes: eigenvalues, mode decay and the three hypergradients.

    **Arguments:**

    - `point`: a fitted (valid) `GridPoint`.
    - `grid_like`: an `ExplorerGrid` for `target`, `horizon`, `names`, `delta`, `component`
        (its `points` are not read).
    - `axes`: three matplotlib axes.
    """
    state, g = point.state, grid_like
    ax_eig, ax_modes, ax_bars = axes
    plot_eigenvalues(ax_eig, state.fit, delta=g.delta)
    ax_eig.legend(loc="lower left", fontsize=7)
    ax_eig.set(title=f"eigenvalues (rank {state.fit.rank})")
    plot_mode_decay(ax_modes, state.fit, np.arange(max(g.horizon - point.tau, 1) + 1),
                    delta=g.delta, component=g.component)
    ax_modes.legend(loc="lower left", fontsize=7)
    ax_modes.set(title=f"modes of {g.names[g.component]} until T = {g.horizon}")
    plot_hypergradients(ax_bars, g.names,
                        {"local": state.local, "glocal": state.value, "global": g.target})
    ax_bars.legend(fontsize=7, title_fontsize=7,
                   title="glocal fell back to local" if state.fallback else None)
    ax_bars.set(title=f"error vs global: glocal {point.error_glocal:.3g}, "
                      f"local {point.error_local:.3g}")


def live_explorer(
    H,
    target=None,
    *,
    taus: Sequence[int],
    sigmas: Sequence[int],
    ms: Sequence[int],
    names: Sequence[str],
    initial: tuple[int, int, int] | None = None,
    delta: float = DMD_DEFAULTS.delta,
    component: int = 0,
    title: str = "",
):
    """An ipywidgets explorer: integer sliders spanning `taus`, `sigmas` and `ms` re-fit the
    DMD at every release and redraw. Arguments as in `explorer_grid`; returns a widget.
    """
    import ipywidgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    H, target, axes, initial = _slider_values(H, target, taus, sigmas, ms, names, initial,
                                              component)
    # `plot_point` reads only the grid's metadata, so a grid without points serves.
    frame = ExplorerGrid(*axes, {}, target, len(H), tuple(names), float(delta), int(component),
                         initial, title)
    sliders = {
        name: ipywidgets.IntSlider(value=value, min=min(values), max=max(values),
                                   description=label, continuous_update=False)
        for name, label, value, values in zip(("tau", "sigma", "m"), ("τ", "σ", "m"),
                                               initial, axes)
    }

    def show(tau, sigma, m):
        point = fit_point(H, target, tau, sigma, m, delta=delta)
        if point.invalid:
            print(point.invalid)
            return
        fig, panels = plt.subplots(1, 3, figsize=(13, 4))
        plot_point(point, frame, panels)
        fig.suptitle(f"{title}: τ = {tau}, σ = {sigma}, m = {m}" if title
                     else f"τ = {tau}, σ = {sigma}, m = {m}")
        fig.tight_layout()
        # display + close rather than plt.show(): the same under every matplotlib backend.
        display(fig)
        plt.close(fig)
        print(describe(point, delta))

    output = ipywidgets.interactive_output(show, sliders)
    return ipywidgets.VBox([ipywidgets.HBox(list(sliders.values())), output])


def static_mode() -> bool:
    """Whether `explorer` renders the static page: `GLOCAL_STATIC_WIDGETS=1`."""
    return os.environ.get(STATIC_ENV, "") == "1"


def explorer(
    H,
    target=None,
    *,
    taus: Sequence[int],
    sigmas: Sequence[int],
    ms: Sequence[int],
    names: Sequence[str],
    initial: tuple[int, int, int] | None = None,
    delta: float = DMD_DEFAULTS.delta,
    component: int = 0,
    title: str = "",
    static: bool | None = None,
):
    """The τ/σ/m explorer for a notebook: live ipywidgets, or the static page in the book.

    **Arguments:**

    - as in `explorer_grid`;
    - `static`: force one front end; by default `static_mode()`, i.e. the environment
        variable `GLOCAL_STATIC_WIDGETS=1` selects the static page.

    **Returns:**

    An object that Jupyter displays: an `IPython.display.HTML` (static) or an ipywidgets
    widget (live). In the live widget the sliders take every integer between the smallest
    and the largest of the given values; the static page has exactly the given values.
    """
    kwargs = dict(taus=taus, sigmas=sigmas, ms=ms, names=names, initial=initial, delta=delta,
                  component=component, title=title)
    if static if static is not None else static_mode():
        from IPython.display import HTML

        return HTML(static_explorer_html(explorer_grid(H, target, **kwargs)))
    return live_explorer(H, target, **kwargs)

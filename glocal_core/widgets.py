"""Sliders for τ, σ and m of the glocal estimate on one recorded hypergradient trajectory.

Given `H`, the hypergradients `h_1, ..., h_T` of one window with φ held fixed, a choice of

- τ: the local window ends at step τ (the local hypergradient is `h_τ`, Eq. 6),
- σ: the Hankel DMD reads its last σ hypergradients `h_{τ-σ+1}, ..., h_τ`,
- m: with m delays (Eq. 10 on the observable `[h_t; ...; h_{t+m-1}]`),

gives a glocal estimate (Eq. 14) to compare with the global hypergradient `h_T` (Eq. 5).
Two front ends show it; both compute every point with `fit_point`:

- `live_explorer`: ipywidgets sliders that re-fit the DMD on every move and redraw with the
  helpers of `glocal_core.plotting`. Needs a kernel (Jupyter, Colab).
- `static_explorer_html`: the same three sliders as HTML `<input type="range">` over a grid
  precomputed by `explorer_grid`, drawn as SVG by an inline script from embedded JSON.
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

import hashlib
import json
import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from ._dmd import SteadyState, estimate_steady_state
from .plotting import (
    OTHER_MODES_COLOR,
    STRATEGY_COLORS,
    mode_magnitudes,
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


def fit_point(H, target, tau: int, sigma: int, m: int, *, delta: float = 1e-2) -> GridPoint:
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
    delta: float = 1e-2,
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


def _describe(point: GridPoint, delta: float) -> str:
    state = point.state
    kept = int(np.sum(state.kept))
    closest = state.fit.eigenvalues[np.argmin(np.abs(state.fit.eigenvalues - 1))] \
        if state.fit.rank else None
    near = (f"; closest to 1: {closest.real:.4f}{closest.imag:+.4f}i "
            f"(|λ − 1| = {abs(closest - 1):.3g})" if closest is not None else "")
    outcome = f"fell back to the local hypergradient: {state.reason}" if state.fallback \
        else f"{kept} eigenvalue(s) within δ = {delta:g} of 1 kept"
    return (f"rank {state.fit.rank}, spectral radius {state.spectral_radius:.4f}{near}. "
            f"Glocal {outcome}. Relative error against the global h_T: glocal "
            f"{point.error_glocal:.3g}, local h_τ {point.error_local:.3g}.")


def live_explorer(
    H,
    target=None,
    *,
    taus: Sequence[int],
    sigmas: Sequence[int],
    ms: Sequence[int],
    names: Sequence[str],
    initial: tuple[int, int, int] | None = None,
    delta: float = 1e-2,
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
        print(_describe(point, delta))

    output = ipywidgets.interactive_output(show, sliders)
    return ipywidgets.VBox([ipywidgets.HBox(list(sliders.values())), output])


def _round(values, digits: int = 4) -> list:
    """Floats to `digits` significant digits, for a compact JSON; `null` where not finite
    (JSON has no NaN or infinity)."""
    return [float(f"{v:.{digits}g}") if np.isfinite(v) else None
            for v in np.asarray(values, dtype=float).ravel()]


def _point_json(point: GridPoint, grid: ExplorerGrid) -> dict:
    if point.invalid:
        return {"invalid": point.invalid}
    state = point.state
    return {
        "re": _round(state.fit.eigenvalues.real, 6),
        "im": _round(state.fit.eigenvalues.imag, 6),
        "kept": [int(k) for k in state.kept],
        "mag": _round(mode_magnitudes(state.fit, 0, component=grid.component)),
        "est": _round(state.value),
        "local": _round(state.local),
        "fallback": bool(state.fallback),
        "errGlocal": _round([point.error_glocal])[0],
        "errLocal": _round([point.error_local])[0],
        "text": _describe(point, grid.delta),
    }


def grid_json(grid: ExplorerGrid) -> dict:
    """The JSON-ready content of a static explorer: slider values, and per point (τ-major,
    then σ, then m) the eigenvalues, the kept mask, each mode's size at the end of the window
    (the page draws `size_j |λ_j|^t`), the hypergradients and a sentence on the fit; an
    invalid point holds only its `invalid` sentence."""
    return {
        "taus": list(grid.taus), "sigmas": list(grid.sigmas), "ms": list(grid.ms),
        "initial": list(grid.initial), "horizon": grid.horizon, "names": list(grid.names),
        "component": grid.component, "delta": grid.delta, "target": _round(grid.target),
        "title": grid.title, "colors": {**STRATEGY_COLORS, "other": OTHER_MODES_COLOR},
        "points": [_point_json(grid.points[(tau, sigma, m)], grid)
                   for tau in grid.taus for sigma in grid.sigmas for m in grid.ms],
    }


_STYLE = """
#{uid} {{ font-family: sans-serif; font-size: 13px; margin: 0.5em 0; }}
#{uid} .gx-title {{ font-weight: bold; margin-bottom: 0.3em; }}
#{uid} .gx-controls {{ display: flex; flex-wrap: wrap; gap: 0.4em 1.5em; }}
#{uid} label {{ display: flex; align-items: center; gap: 0.4em; }}
#{uid} input[type=range] {{ width: 11em; }}
#{uid} output {{ display: inline-block; min-width: 2.5em; font-variant-numeric: tabular-nums; }}
#{uid} svg {{ width: 100%; height: auto; max-width: 960px; display: block; }}
#{uid} .gx-invalid {{ border: 1px solid #d62728; background: #fdf0f0; padding: 0.8em;
  margin: 0.5em 0; max-width: 940px; }}
#{uid} .gx-text {{ max-width: 940px; }}
"""

# Vanilla JS, no dependency: draws three SVG panels from the embedded JSON on every slider
# input. Kept free of `$` and backslashes so that neither MathJax nor Python escaping
# touches it.
_SCRIPT = r"""
(function () {
  var root = document.getElementById("__UID__");
  // A failure is shown on the page and recorded in data-error, never left in the console only.
  function fail(error) {
    root.setAttribute("data-error", String(error));
    var box = root.querySelector(".gx-invalid");
    box.style.display = "";
    box.textContent = "The explorer could not draw this setting: " + error;
  }
  try {
  var data = JSON.parse(document.getElementById("__UID__-data").textContent);
  var svg = root.querySelector("svg"), invalid = root.querySelector(".gx-invalid");
  var text = root.querySelector(".gx-text"), inputs = root.querySelectorAll("input");
  var NS = "http://www.w3.org/2000/svg", C = data.colors;
  var axes = [data.taus, data.sigmas, data.ms];

  function el(tag, attrs, parent, content) {
    var node = document.createElementNS(NS, tag);
    for (var k in attrs) node.setAttribute(k, attrs[k]);
    if (content !== undefined) node.textContent = content;
    (parent || svg).appendChild(node);
    return node;
  }
  function fmt(v) { return Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3)
    ? v.toExponential(0) : String(+v.toPrecision(3)); }
  // A panel: origin (x0, y0), size (w, h), data ranges; returns coordinate maps.
  function panel(x0, y0, w, h, xr, yr, title, xlabel, ylabel) {
    el("rect", {x: x0, y: y0, width: w, height: h, fill: "none", stroke: "#444"});
    el("text", {x: x0 + w / 2, y: y0 - 8, "text-anchor": "middle", "font-size": 12}, null, title);
    el("text", {x: x0 + w / 2, y: y0 + h + 32, "text-anchor": "middle", "font-size": 11}, null, xlabel);
    el("text", {x: x0 - 40, y: y0 + h / 2, "text-anchor": "middle", "font-size": 11,
                transform: "rotate(-90 " + (x0 - 40) + " " + (y0 + h / 2) + ")"}, null, ylabel);
    return {
      x: function (v) { return x0 + (v - xr[0]) / (xr[1] - xr[0]) * w; },
      y: function (v) { return y0 + h - (v - yr[0]) / (yr[1] - yr[0]) * h; },
      xtick: function (v, label) {
        var X = this.x(v);
        el("line", {x1: X, x2: X, y1: y0 + h, y2: y0 + h + 4, stroke: "#444"});
        el("text", {x: X, y: y0 + h + 16, "text-anchor": "middle", "font-size": 10}, null, label);
      },
      ytick: function (v, label) {
        var Y = this.y(v);
        el("line", {x1: x0 - 4, x2: x0, y1: Y, y2: Y, stroke: "#444"});
        el("text", {x: x0 - 6, y: Y + 3, "text-anchor": "end", "font-size": 10}, null, label);
      }
    };
  }

  function eigenvalues(p) {
    var R = 1.1, i;
    for (i = 0; i < p.re.length; i++) R = Math.max(R, 1.1 * Math.hypot(p.re[i], p.im[i]));
    var P = panel(60, 40, 240, 240, [-R, R], [-R, R], "eigenvalues λ (rank " + p.re.length + ")",
                  "Re λ", "Im λ");
    [-1, 0, 1].forEach(function (v) { P.xtick(v, String(v)); P.ytick(v, String(v)); });
    var s = P.x(1) - P.x(0);
    el("line", {x1: P.x(-R), x2: P.x(R), y1: P.y(0), y2: P.y(0), stroke: "#ccc"});
    el("line", {x1: P.x(0), x2: P.x(0), y1: P.y(-R), y2: P.y(R), stroke: "#ccc"});
    el("circle", {cx: P.x(0), cy: P.y(0), r: s, fill: "none", stroke: "#999"});
    el("circle", {cx: P.x(1), cy: P.y(0), r: Math.max(s * data.delta, 1.5), fill: C.glocal,
                  "fill-opacity": 0.2});
    for (i = 0; i < p.re.length; i++) {
      var kept = p.kept[i] === 1;
      el("circle", {cx: P.x(p.re[i]), cy: P.y(p.im[i]), r: kept ? 4.5 : 3.5,
                    fill: kept ? C.glocal : "none", stroke: kept ? C.glocal : C.other,
                    "class": kept ? "gx-kept" : "gx-other"});
    }
  }

  function modes(p, tau) {
    var steps = Math.max(data.horizon - tau, 1), n = 60, lines = [], lo = Infinity, hi = 0, i, k;
    for (i = 0; i < p.mag.length; i++) {
      var a = Math.hypot(p.re[i], p.im[i]), pts = [];
      for (k = 0; k <= n; k++) {
        var t = steps * k / n, v = p.mag[i] * Math.pow(a, t);
        if (v > 0 && isFinite(v)) { pts.push([t, Math.log10(v)]); hi = Math.max(hi, v); lo = Math.min(lo, v); }
      }
      lines.push(pts);
    }
    if (!(hi > 0)) { hi = 1; lo = 0.1; }
    var top = Math.ceil(Math.log10(hi)), bottom = Math.max(Math.floor(Math.log10(lo)), top - 8);
    if (bottom === top) bottom = top - 1;
    var name = data.names[data.component];
    var P = panel(370, 40, 250, 240, [0, steps], [bottom, top],
                  "modes of " + name + " until T = " + data.horizon,
                  "steps t after the window", "|b λ^t u|");
    [0, Math.round(steps / 2), steps].forEach(function (v) { P.xtick(v, String(v)); });
    var every = Math.ceil((top - bottom) / 6);
    for (k = bottom; k <= top; k += every) P.ytick(k, "1e" + k);
    var order = p.kept.map(function (kept, j) { return [kept, j]; }).sort(function (a, b) { return a[0] - b[0]; });
    order.forEach(function (o) {
      var j = o[1], pts = lines[j].filter(function (q) { return q[1] >= bottom; });
      if (pts.length < 2) return;
      el("polyline", {points: pts.map(function (q) { return P.x(q[0]) + "," + P.y(q[1]); }).join(" "),
                      fill: "none", stroke: o[0] ? C.glocal : C.other,
                      "stroke-width": o[0] ? 2 : 1, "stroke-opacity": o[0] ? 1 : 0.6});
    });
  }

  function bars(p) {
    var series = [["local", p.local], ["glocal", p.est], ["global", data.target]];
    var q = data.names.length, M = 1.2, i, j;
    var scale = data.target.map(function (v) { return Math.abs(v) > 0 ? Math.abs(v) : 1; });
    series.forEach(function (s) { s[1].forEach(function (v, i) { M = Math.max(M, 1.1 * Math.abs(v / scale[i])); }); });
    var P = panel(700, 40, 240, 240, [0, q], [-M, M],
                  "error vs global: glocal " + fmt(p.errGlocal) + ", local " + fmt(p.errLocal),
                  "hyperparameter", "hypergradient / |global|");
    el("line", {x1: P.x(0), x2: P.x(q), y1: P.y(0), y2: P.y(0), stroke: "#000"});
    [-M, 0, M].forEach(function (v) { P.ytick(v, fmt(v)); });
    for (i = 0; i < q; i++) {
      P.xtick(i + 0.5, data.names[i]);
      for (j = 0; j < 3; j++) {
        var v = series[j][1][i] / scale[i], x = P.x(i + 0.1 + 0.8 * j / 3), w = P.x(0.8 / 3) - P.x(0);
        el("rect", {x: x, y: Math.min(P.y(v), P.y(0)), width: w, height: Math.abs(P.y(v) - P.y(0)),
                    fill: C[series[j][0]]});
      }
    }
    series.forEach(function (s, j) {
      el("rect", {x: 712, y: 50 + 14 * j, width: 10, height: 10, fill: C[s[0]]});
      el("text", {x: 726, y: 59 + 14 * j, "font-size": 10},
         null, s[0] + (s[0] === "glocal" && p.fallback ? " (fell back: local)" : ""));
    });
  }

  function render() {
    var idx = [], i;
    for (i = 0; i < 3; i++) {
      idx.push(+inputs[i].value);
      inputs[i].nextElementSibling.textContent = axes[i][idx[i]];
    }
    var p = data.points[(idx[0] * data.sigmas.length + idx[1]) * data.ms.length + idx[2]];
    root.setAttribute("data-setting", axes[0][idx[0]] + "," + axes[1][idx[1]] + "," + axes[2][idx[2]]);
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    if (p.invalid) {
      svg.style.display = "none"; text.textContent = "";
      invalid.style.display = ""; invalid.textContent = p.invalid;
      return;
    }
    svg.style.display = ""; invalid.style.display = "none";
    eigenvalues(p); modes(p, axes[0][idx[0]]); bars(p);
    text.textContent = p.text;
  }
  function update() {
    try { render(); } catch (error) { fail(error); }
  }
  for (var i = 0; i < inputs.length; i++) inputs[i].addEventListener("input", update);
  update();
  } catch (error) { fail(error); }
})();
"""


def static_explorer_html(grid: ExplorerGrid) -> str:
    """A self-contained HTML fragment: three range sliders over the grid's values, an inline
    SVG redrawn by an inline script from embedded JSON, and the explanation of an invalid
    setting in place of the figure. It loads nothing: no external URL, no CDN, no require.js.
    """
    payload = json.dumps(grid_json(grid), separators=(",", ":"), ensure_ascii=False,
                         allow_nan=False)
    uid = "glocal-explorer-" + hashlib.sha1(payload.encode()).hexdigest()[:10]
    sliders = "".join(
        f'<label>{label} <input type="range" name="{name}" min="0" max="{len(values) - 1}" '
        f'step="1" value="{values.index(start)}" aria-label="{name}"><output></output></label>'
        for name, label, values, start in zip(("tau", "sigma", "m"), ("τ", "σ", "m"),
                                              (grid.taus, grid.sigmas, grid.ms), grid.initial)
    )
    return (
        f'<div id="{uid}" class="glocal-explorer">'
        f"<style>{_STYLE.format(uid=uid)}</style>"
        f'<div class="gx-title">{_escape(grid.title)}</div>'
        f'<div class="gx-controls">{sliders}</div>'
        f'<div class="gx-invalid" style="display:none"></div>'
        f'<svg viewBox="0 0 960 320" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'aria-label="DMD eigenvalues, mode magnitudes and hypergradients"></svg>'
        f'<div class="gx-text"></div>'
        f'<script type="application/json" id="{uid}-data">'
        f"{payload.replace('</', '<' + chr(92) + '/')}</script>"
        f"<script>{_SCRIPT.replace('__UID__', uid)}</script>"
        f"</div>"
    )


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


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
    delta: float = 1e-2,
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

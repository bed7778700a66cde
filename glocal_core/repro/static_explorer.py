"""The static τ/σ/m explorer of `glocal_core.repro.widgets`: an explorer grid as a self-contained
HTML fragment (sliders, an SVG, embedded JSON and the package file `explorer.js`), for the
built book, where no kernel runs.
"""

import hashlib
import html
import importlib.resources
import json

import numpy as np

from .. import mode_magnitudes
from .plotting import OTHER_MODES_COLOR, STRATEGY_COLORS


def describe(point, delta: float) -> str:
    """One sentence on a fitted `GridPoint`: rank, spectral radius, the eigenvalue closest
    to 1, what the estimate kept or why it fell back, and both errors against h_T."""
    state, fit = point.state, point.state.fit
    kept = int(np.sum(fit.kept))
    closest = fit.dmd.eigenvalues[np.argmin(np.abs(fit.dmd.eigenvalues - 1))] \
        if fit.dmd.rank else None
    near = (f"; closest to 1: {closest.real:.4f}{closest.imag:+.4f}i "
            f"(|λ − 1| = {abs(closest - 1):.3g})" if closest is not None else "")
    outcome = f"fell back to the local hypergradient: {state.reason}" if state.fallback \
        else f"{kept} eigenvalue(s) within δ = {delta:g} of 1 kept"
    return (f"rank {fit.dmd.rank}, spectral radius {fit.spectral_radius:.4f}{near}. "
            f"Glocal {outcome}. Relative error against the global h_T: glocal "
            f"{point.error_glocal:.3g}, local h_τ {point.error_local:.3g}.")


def _round(values, digits: int = 4) -> list:
    """Floats to `digits` significant digits, for a compact JSON; `null` where not finite
    (JSON has no NaN or infinity)."""
    return [float(f"{v:.{digits}g}") if np.isfinite(v) else None
            for v in np.asarray(values, dtype=float).ravel()]


def _point_json(point, grid) -> dict:
    if point.invalid:
        return {"invalid": point.invalid}
    state = point.state
    steps = max(grid.horizon - point.tau, 1)
    magnitudes = mode_magnitudes(state.fit.dmd, [0, steps], component=grid.component)
    return {
        "re": _round(state.fit.dmd.eigenvalues.real, 6),
        "im": _round(state.fit.dmd.eigenvalues.imag, 6),
        "kept": [int(k) for k in state.fit.kept],
        "mag": _round(magnitudes[0]),
        "magEnd": _round(magnitudes[1]),
        "est": _round(state.value),
        "local": _round(state.local),
        "fallback": bool(state.fallback),
        "errGlocal": _round([point.error_glocal])[0],
        "errLocal": _round([point.error_local])[0],
        "text": describe(point, grid.delta),
    }


def grid_json(grid) -> dict:
    """The JSON-ready content of a static explorer: slider values, and per point (τ-major,
    then σ, then m) the eigenvalues, the kept mask, each mode's size at the end of the window
    and at T (`mode_magnitudes`: the page draws the straight line between them on its log
    scale), the hypergradients and a sentence on the fit; an invalid point holds only its
    `invalid` sentence."""
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


def _script(uid: str) -> str:
    """The explorer's JavaScript (the package file `explorer.js`) for the element `uid`."""
    source = importlib.resources.files(__package__).joinpath("explorer.js").read_text("utf-8")
    return source.replace("__UID__", uid)


def static_explorer_html(grid) -> str:
    """A self-contained HTML fragment: three range sliders over the grid's values, an inline
    SVG redrawn by an inline script from embedded JSON, and the explanation of an invalid
    setting in place of the figure. It loads nothing: no external URL, no CDN, no require.js.
    """
    payload = json.dumps(grid_json(grid), separators=(",", ":"), ensure_ascii=False,
                         allow_nan=False)
    uid = "glocal-explorer-" + hashlib.sha1(payload.encode()).hexdigest()[:10]
    # `<\/` reads as `</` in JSON, but cannot end the script element that holds it.
    payload = payload.replace("</", "<\\/")
    sliders = "".join(
        f'<label>{label} <input type="range" name="{name}" min="0" max="{len(values) - 1}" '
        f'step="1" value="{values.index(start)}" aria-label="{name}"><output></output></label>'
        for name, label, values, start in zip(("tau", "sigma", "m"), ("τ", "σ", "m"),
                                              (grid.taus, grid.sigmas, grid.ms), grid.initial)
    )
    return (
        f'<div id="{uid}" class="glocal-explorer">'
        f"<style>{_STYLE.format(uid=uid)}</style>"
        f'<div class="gx-title">{html.escape(grid.title, quote=False)}</div>'
        f'<div class="gx-controls">{sliders}</div>'
        f'<div class="gx-invalid" style="display:none"></div>'
        f'<svg viewBox="0 0 960 320" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'aria-label="DMD eigenvalues, mode magnitudes and hypergradients"></svg>'
        f'<div class="gx-text"></div>'
        f'<script type="application/json" id="{uid}-data">{payload}</script>'
        f"<script>{_script(uid)}</script>"
        f"</div>"
    )

"""The τ/σ/m explorer: its grid of fits, its static HTML, and that page in a real browser.

The browser tests drive Debian's headless Chromium, offline (`tests/_browser.py`); they skip
when Chromium is missing, unless `GLOCAL_REQUIRE_BROWSER=1` (CI), where they fail instead.
`GLOCAL_BOOK_HTML=<path to the built 03_glocal_estimation.html>` also tests the built
chapter, and `GLOCAL_SCREENSHOT_DIR=<dir>` saves screenshots before and after each move.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import glocal_core.repro.widgets as gw
from _browser import Chromium, browser_or_skip, screenshot_dir
from glocal_core import hankel_dmd
from glocal_core import mode_magnitudes

TAUS, SIGMAS, MS = (20, 40, 60), (10, 20, 30), (2, 4, 30)
NAMES = ("learning_rate", "weight_decay")


def _linear_trajectory(T=80, noise=0.0, seed=0):
    """h_t = c + a_1 0.95^t + a_2 0.85^t: steady state c, known exactly. Both transients stay
    well above the rank cut-off of the DMD up to t = 60, so every window sees all three modes."""
    rng = np.random.default_rng(seed)
    c, a = rng.normal(size=2), rng.normal(size=(2, 2))
    t = np.arange(1, T + 1)[:, None]
    H = c + a[0] * 0.95**t + a[1] * 0.85**t
    return c, H + noise * rng.normal(size=H.shape)


def _grid(noise=0.0, **kwargs):
    c, H = _linear_trajectory(noise=noise)
    kwargs = dict(taus=TAUS, sigmas=SIGMAS, ms=MS, names=NAMES, initial=(40, 20, 4),
                  title="synthetic; profile test") | kwargs
    return c, H, gw.explorer_grid(H, **kwargs)


def test_grid_recovers_the_steady_state_at_every_valid_point():
    c, H, grid = _grid()
    valid = [p for p in grid.points.values() if not p.invalid]
    assert len(grid.points) == len(TAUS) * len(SIGMAS) * len(MS)
    assert valid
    for point in valid:
        assert not point.state.fallback, (point.tau, point.sigma, point.m)
        np.testing.assert_allclose(point.state.value, c, atol=1e-8, err_msg=str(point[:3]))
        np.testing.assert_array_equal(point.state.local, H[point.tau - 1])
        target = H[-1]
        assert point.error_glocal == pytest.approx(
            np.linalg.norm(c - target) / np.linalg.norm(target))
        assert point.error_local == pytest.approx(
            np.linalg.norm(H[point.tau - 1] - target) / np.linalg.norm(target))


def test_invalid_settings_are_marked_not_raised():
    _, _, grid = _grid()
    for (tau, sigma, m), point in grid.points.items():
        invalid = sigma > tau or m >= sigma
        assert bool(point.invalid) == invalid, (tau, sigma, m)
        if invalid:
            assert point.state is None and np.isnan(point.error_glocal)
    assert "σ = 30 > τ = 20" in grid.points[(20, 30, 2)].invalid
    assert "m = 30 ≥ σ = 20" in grid.points[(40, 20, 30)].invalid


def test_non_finite_window_is_an_explanation():
    _, H = _linear_trajectory()
    H[35] = np.nan
    point = gw.fit_point(H, H[-1], 40, 20, 4)
    assert point.invalid and "non-finite" in point.invalid
    assert not gw.fit_point(H, H[-1], 60, 20, 4).invalid  # the window 41..60 is clean


def test_fallback_is_recorded():
    # Pure decay, no constant: no eigenvalue near 1, so the estimate is the local one.
    t = np.arange(1, 81)[:, None]
    H = np.hstack([0.8**t, 0.6**t])
    point = gw.fit_point(H, H[-1], 60, 30, 4)
    assert point.state.fallback and "no eigenvalue" in point.state.reason
    np.testing.assert_array_equal(point.state.value, H[59])


def test_mode_magnitudes_decay_geometrically():
    c, H = _linear_trajectory()
    fit = hankel_dmd(H[:40], 4)
    magnitudes = mode_magnitudes(fit, np.arange(5))
    one = np.argmin(np.abs(fit.eigenvalues - 1))
    np.testing.assert_allclose(magnitudes[:, one], np.linalg.norm(c), rtol=1e-8)
    ratios = magnitudes[1:] / magnitudes[:-1]
    np.testing.assert_allclose(ratios, np.broadcast_to(np.abs(fit.eigenvalues), ratios.shape))
    assert mode_magnitudes(fit, 0, component=1).shape == (fit.rank,)


def test_bad_arguments_raise():
    _, H = _linear_trajectory()
    with pytest.raises(ValueError, match="initial"):
        gw.explorer_grid(H, taus=TAUS, sigmas=SIGMAS, ms=MS, names=NAMES, initial=(41, 20, 4))
    with pytest.raises(ValueError, match="names"):
        gw.explorer_grid(H, taus=TAUS, sigmas=SIGMAS, ms=MS, names=NAMES[:1])
    with pytest.raises(ValueError, match="names"):  # checked even when nothing is fitted
        gw.live_explorer(H, taus=TAUS, sigmas=SIGMAS, ms=MS, names=NAMES[:1])
    with pytest.raises(TypeError, match="sigma"):
        gw.explorer(H, taus=TAUS, sigma=SIGMAS, ms=MS, names=NAMES)
    frame = gw.explorer_grid(H, taus=TAUS, sigmas=SIGMAS, ms=MS, names=NAMES, fit=False)
    full = gw.explorer_grid(H, taus=TAUS, sigmas=SIGMAS, ms=MS, names=NAMES)
    assert frame.points == {} and len(full.points) == len(TAUS) * len(SIGMAS) * len(MS)
    np.testing.assert_array_equal(frame.target, full.target)
    assert frame[:3] == full[:3] and frame[5:] == full[5:]  # all but points and target


def _payload(html):
    match = re.search(r'<script type="application/json" id="[^"]+">(.*?)</script>', html, re.S)
    return json.loads(match.group(1))


def test_static_html_is_self_contained():
    _, _, grid = _grid()
    html = gw.static_explorer_html(grid)
    assert html.count('<input type="range"') == 3
    for name in ("tau", "sigma", "m"):
        assert f'name="{name}"' in html
    # The only URL is the SVG namespace, an identifier that is never fetched.
    urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.\w+[^\s\"'<>)]*", html))
    assert urls <= {"http://www.w3.org/2000/svg"}, urls
    assert not re.search(r"\b(src|href)\s*=|require\(|import\(|fetch\(|XMLHttpRequest", html)
    data = _payload(html)
    assert len(data["points"]) == len(grid.points)
    assert sum("invalid" in p for p in data["points"]) == sum(
        bool(p.invalid) for p in grid.points.values())
    assert len(html) < 200_000


def test_explorer_switches_on_the_environment(monkeypatch, capsys):
    _, H = _linear_trajectory()
    kwargs = dict(taus=TAUS, sigmas=SIGMAS, ms=MS, names=NAMES, initial=(40, 20, 4))
    monkeypatch.setenv(gw.STATIC_ENV, "1")
    static = gw.explorer(H, **kwargs)
    assert 'type="range"' in static.data
    monkeypatch.delenv(gw.STATIC_ENV)
    ipywidgets = pytest.importorskip("ipywidgets")
    pytest.importorskip("matplotlib").use("Agg")
    live = gw.explorer(H, **kwargs)
    assert isinstance(live, ipywidgets.VBox)
    sliders = live.children[0].children
    assert [s.value for s in sliders] == [40, 20, 4]
    capsys.readouterr()
    sliders[1].value = 30  # redraws at τ = 40, σ = 30, m = 4: a figure and its description
    out = capsys.readouterr().out
    assert "Figure(" in out and "spectral radius" in out and "σ = 30 >" not in out
    sliders[0].value = 20  # σ > τ is explained in the output, not raised
    assert "σ = 30 > τ = 20" in capsys.readouterr().out


def test_import_glocal_core_skips_the_book_modules():
    code = ("import sys, glocal_core; print(sorted(m for m in ('matplotlib', 'ipywidgets', "
            "'glocal_core.repro.widgets', 'glocal_core.repro.plotting') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


# --- the static page in headless Chromium ----------------------------------------------

class _Explorer(Chromium):
    """The page's static explorer, moved and read as a reader sees it."""

    def move_slider(self, root: str, name: str, fraction: float):
        """Click the slider's track at `fraction` of its width, as a reader would."""
        left, top, width, height = self.evaluate(
            f"(() => {{ const s = document.querySelector('{root} input[name={name}]');"
            "s.scrollIntoView({block: 'center'}); const r = s.getBoundingClientRect();"
            "return [r.left, r.top, r.width, r.height]; })()"
        )
        x, y = left + 8 + fraction * (width - 16), top + height / 2  # 8 px: half the thumb
        self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                      clickCount=1)

    def figure(self, root: str):
        """What the reader sees: the setting, the SVG's content and the invalid message."""
        return self.evaluate(
            f"(() => {{ const r = document.querySelector('{root}');"
            "const msg = r.querySelector('.gx-invalid');"
            "return {setting: r.dataset.setting, error: r.dataset.error || '',"
            "svg: r.querySelector('svg').innerHTML,"
            "svgShown: getComputedStyle(r.querySelector('svg')).display !== 'none',"
            "invalid: getComputedStyle(msg).display !== 'none' ? msg.textContent : ''}; })()"
        )


@pytest.fixture
def chromium(tmp_path):
    browser = _Explorer(browser_or_skip(), tmp_path / "profile")
    yield browser
    browser.close()


def _check_sliders(chromium, root, moves, shots=None, prefix=""):
    """Each move, `(name, fraction)` or a bare name for the farther end of its slider,
    changes the setting and the figure; returns the last state."""
    chromium.evaluate(f"document.querySelector('{root}').scrollIntoView({{block: 'center'}})")
    before = chromium.figure(root)
    assert not before["error"], before["error"]
    assert before["svgShown"] and before["svg"], "no figure before any move"
    for i, move in enumerate(moves):
        name, fraction = move if isinstance(move, tuple) else (move, chromium.evaluate(
            f"(() => {{ const s = document.querySelector('{root} input[name={move}]');"
            "return 2 * s.value > +s.max ? 0.0 : 1.0; })()"))
        if shots:
            chromium.screenshot(shots / f"{prefix}{i}_{name}_before.png")
        chromium.move_slider(root, name, fraction)
        after = chromium.figure(root)
        assert not after["error"], after["error"]
        if shots:
            chromium.screenshot(shots / f"{prefix}{i}_{name}_after.png")
        assert after["setting"] != before["setting"], f"moving {name} changed nothing"
        assert (after["svg"], after["invalid"]) != (before["svg"], before["invalid"]), (
            f"moving {name} to {after['setting']} left the figure unchanged")
        before = after
    return before


@pytest.mark.browser
def test_static_sliders_redraw_in_chromium(chromium, tmp_path):
    _, _, grid = _grid(noise=1e-3)  # noise: every m gives a different fit, hence figure
    page = tmp_path / "explorer.html"
    page.write_text("<!doctype html><html><head><meta charset='utf-8'></head><body>"
                    + gw.static_explorer_html(grid) + "</body></html>", encoding="utf-8")
    chromium.open(page)
    root = ".glocal-explorer"
    assert chromium.figure(root)["setting"] == "40,20,4"
    last = _check_sliders(chromium, root, [("tau", 1.0), ("sigma", 1.0), ("m", 0.0)],
                          screenshot_dir(), "synthetic_")
    assert last["setting"] == "60,30,2" and last["svgShown"] and not last["invalid"]
    # σ = 30 > τ = 20: the figure gives way to the explanation.
    chromium.move_slider(root, "tau", 0.0)
    shown = chromium.figure(root)
    assert shown["setting"] == "20,30,2" and not shown["svgShown"]
    assert "σ = 30 > τ = 20" in shown["invalid"]
    chromium.move_slider(root, "tau", 1.0)
    assert chromium.figure(root)["svgShown"]
    assert not chromium.errors(), chromium.errors()
    # A page that cannot draw says so where the figure would be.
    broken = tmp_path / "broken.html"
    broken.write_text(page.read_text(encoding="utf-8").replace('"points":[', '"points":[}', 1),
                      encoding="utf-8")
    chromium.open(broken)
    shown = chromium.figure(root)
    assert shown["error"] and "could not draw" in shown["invalid"], shown


@pytest.mark.browser
def test_built_chapter_sliders_redraw_in_chromium(chromium):
    built = os.environ.get("GLOCAL_BOOK_HTML")
    if not built:
        pytest.skip("set GLOCAL_BOOK_HTML to the built 03_glocal_estimation.html to test it")
    html = Path(built).read_text(encoding="utf-8")
    assert "glocal-explorer" in html, "the page has no static explorer (GLOCAL_STATIC_WIDGETS=1?)"
    # No widget manager and hence none of its CDN scripts.
    assert not re.search(r"@jupyter-widgets|html-manager|embed-amd|require(\.min)?\.js|"
                         r"application/vnd\.jupyter\.widget", html)
    chromium.open(Path(built))
    _check_sliders(chromium, ".glocal-explorer", ["tau", "sigma", "m"], screenshot_dir(), "book_")
    assert not chromium.errors(), chromium.errors()

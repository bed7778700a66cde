"""Every page of the built book, loaded in a headless, offline Chromium (`tests/_browser.py`).

Each page must load with nothing but its own files (no request to another host; `data:`
URIs inlined in the theme's own stylesheets are part of those files), log no console error,
show every image, at a scale where its labels read (`MIN_SCALE`), and typeset every formula:
MathJax output where the source has maths, and no raw TeX left in the text a reader sees.
The window is 1100 px wide, where the article column is about 800 px.

`GLOCAL_BOOK_DIR=<the built _build/html>` selects the build (`make browser` sets it);
without it the test skips. `GLOCAL_SCREENSHOT_DIR=<dir>` saves a full-page screenshot of
every page.
"""

import os
import re
from pathlib import Path

import pytest

from _browser import Chromium, browser_or_skip, screenshot_dir

ROOT = Path(__file__).resolve().parents[1]

# Inline content, not a request to anywhere.
LOCAL_SCHEMES = ("file:", "data:", "blob:")
# The MathJax typesetting promise, resolved once every formula is rendered.
TYPESET = ("(window.MathJax && MathJax.startup && MathJax.startup.promise"
           " ? MathJax.startup.promise.then(() => true) : Promise.resolve(false))")
# A figure shown at 80% of its pixels or more: its 10 pt tick labels read at 8 pt or more
# (plotting.BOOK_WIDTH and glocal_core/book.mplstyle size figures for this).
MIN_SCALE = 0.8
PAGE_STATE = """(() => {
  const text = (() => {
    const article = document.querySelector('article') || document.body;
    const copy = article.cloneNode(true);
    copy.querySelectorAll('pre, code, script, style, mjx-container, mjx-assistive-mml')
        .forEach(e => e.remove());
    return copy.innerText;
  })();
  const images = [...document.querySelectorAll('img')];
  return {
    maths: document.querySelectorAll('.math').length,
    typeset: document.querySelectorAll('mjx-container').length,
    rawTeX: [...text.matchAll(/\\\\\\(|\\\\\\[|\\$\\$/g)].map(m =>
        text.slice(Math.max(0, m.index - 30), m.index + 30)),
    unloaded: images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src),
    shrunk: images.filter(i => i.closest('article') && i.naturalWidth > 0
                          && i.getBoundingClientRect().width < MIN_SCALE * i.naturalWidth)
        .map(i => `${i.src.split('/').pop()}: ${i.naturalWidth} px shown at ` +
                  `${Math.round(i.getBoundingClientRect().width)} px`),
  };
})()""".replace("MIN_SCALE", str(MIN_SCALE))


def _pages(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.html")
                  if not p.relative_to(root).parts[0].startswith("_"))


def _redirect(page: Path) -> Path | None:
    """The target of a page that only redirects (the root index.html), else `None`."""
    match = re.fullmatch(r'\s*<meta http-equiv="Refresh" content="0; url=([^"]+)" />\s*',
                         page.read_text(encoding="utf-8"))
    return page.parent / match.group(1) if match else None


@pytest.fixture(scope="module")
def book():
    built = os.environ.get("GLOCAL_BOOK_DIR")
    if not built:
        pytest.skip("set GLOCAL_BOOK_DIR to the built book's _build/html to test every page")
    root = Path(built)
    assert (root / "index.html").is_file(), f"no built book in {root}: run `make book`"
    return root


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    browser = Chromium(browser_or_skip(), tmp_path_factory.mktemp("profile"))
    yield browser
    browser.close()


def test_the_book_has_its_pages(book):
    names = {p.relative_to(book).as_posix() for p in _pages(book)}
    chapters = {f"notebooks/{p.stem}.html" for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert chapters and chapters <= names, chapters - names
    assert {"index.html", "book/results.html", "book/reproducing.html"} <= names


@pytest.mark.browser
def test_every_page_loads_offline_with_typeset_maths(book, chromium):
    shots, problems, checked = screenshot_dir(), {}, 0
    for page in _pages(book):
        target = _redirect(page)
        if target is not None:
            assert target.is_file(), f"{page} redirects to a missing {target}"
            continue
        chromium.open(page)
        typeset = chromium.evaluate(TYPESET, await_promise=True)
        state = chromium.evaluate(PAGE_STATE)
        found = {
            "requests off the machine": [u for u in chromium.requests()
                                         if not u.startswith(LOCAL_SCHEMES)],
            "console errors": chromium.errors(),
            "images not loaded": state["unloaded"],
            "raw TeX in the text": state["rawTeX"],
            "figures too small to read": state["shrunk"],
        }
        if state["maths"]:
            if not typeset:
                found["MathJax"] = ["MathJax did not load"]
            elif state["typeset"] < state["maths"]:
                found["MathJax"] = [f"{state['typeset']} of {state['maths']} formulas typeset"]
        found = {k: v for k, v in found.items() if v}
        if found:  # every problem of every page, not just the first
            problems[page.relative_to(book).as_posix()] = found
        if shots:
            chromium.screenshot(shots / (page.relative_to(book).as_posix()
                                         .replace("/", "_") + ".png"), full_page=True)
        checked += 1
    assert checked >= 10
    assert not problems, "\n".join(f"{page}: {found}" for page, found in problems.items())

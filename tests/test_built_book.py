"""Every page of the built book, loaded in a headless, offline Chromium (`tests/_browser.py`).

Each page must load with nothing but its own files (no request to another host; `data:`
URIs inlined in the theme's own stylesheets are part of those files), log no console error,
show every image, at a scale where its labels read (`MIN_SCALE`), and typeset every formula:
MathJax output where the source has maths, and no raw TeX left in the text a reader sees.
The window is 1100 px wide, where the article column is about 800 px.

It also reads each page's text as a reader does, and fails on what a reader should never
see: a line that looks like a Markdown table row (a table that reached the page as a
paragraph of pipes), an absolute path of the machine that built the book (its checkout, its
result cache or `$HOME`), a `Warning:` or `Traceback` in a cell's output, and an output or a
displayed formula wider than its column, which hides numbers behind a sideways scroll bar
(code input may scroll).

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
  const article = document.querySelector('article') || document.body;
  const text = (() => {
    const copy = article.cloneNode(true);
    copy.querySelectorAll('pre, code, script, style, mjx-container, mjx-assistive-mml')
        .forEach(e => e.remove());
    return copy.innerText;
  })();
  const reading = (() => {  // what a reader sees: the page less code input and hidden MathML
    const copy = article.cloneNode(true);
    copy.querySelectorAll('.cell_input, script, style, mjx-assistive-mml')
        .forEach(e => e.remove());
    return copy.innerText;
  })();
  const column = article.getBoundingClientRect();
  const describe = e => `${e.tagName.toLowerCase()}${e.className ? '.' +
      String(e.className).trim().split(/\\s+/).join('.') : ''} "` +
      e.innerText.trim().replace(/\\s+/g, ' ').slice(0, 70) + '"';
  const boxes = [...article.querySelectorAll(
      '.cell_output, .cell_output .output, .cell_output pre, .cell_output table, ' +
      'div.math, mjx-container[display="true"], table')];
  const images = [...document.querySelectorAll('img')];
  return {
    reading: reading,
    outputs: [...article.querySelectorAll('.cell_output')].map(e => e.innerText),
    wide: boxes.filter(e => e.getClientRects().length && !e.closest('.cell_input') &&
                       (e.scrollWidth > e.clientWidth + 1 ||
                        e.getBoundingClientRect().right > column.right + 1))
        .map(e => `${describe(e)}: ${e.scrollWidth} px in ${e.clientWidth} px`),
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


# A Markdown table row shown as text: pipes around a `---` rule or an em-dash cell.
MARKDOWN_ROW = re.compile(r"\|\s*:?-{3,}:?\s*\||\|\s*—\s*\|")
OUTPUT_NOISE = re.compile(r"Warning:|Traceback")


def _build_paths(book: Path) -> list[str]:
    """Absolute paths of the machine that built the book, which no page may show: the
    checkout it was built from, this checkout, the result cache and `$HOME`."""
    candidates = {book.resolve().parents[1], ROOT, Path.home()}
    if os.environ.get("GLOCAL_CACHE_DIR"):
        candidates.add(Path(os.environ["GLOCAL_CACHE_DIR"]).resolve())
    return sorted({str(p) for p in candidates if len(p.parts) > 1}, key=len, reverse=True)


def reading_problems(state: dict, build_paths: list[str]) -> dict[str, list[str]]:
    """What the text of a page shows that a reader should not see (see the module's
    docstring), from `PAGE_STATE`: a dict from problem to its excerpts, empty if none."""
    lines = [line.strip() for line in state["reading"].splitlines()]
    return {
        "Markdown table rows": [line[:100] for line in lines if MARKDOWN_ROW.search(line)],
        "build paths": [line[:120] for line in lines
                        if any(path in line for path in build_paths)],
        "warnings or tracebacks in outputs": [
            line.strip()[:120] for output in state["outputs"] for line in output.splitlines()
            if OUTPUT_NOISE.search(line)],
        "wider than the column": state["wide"],
    }


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
def test_every_page_loads_offline_typeset_and_readable(book, chromium):
    shots, problems, checked = screenshot_dir(), {}, 0
    build_paths = _build_paths(book)
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
            **reading_problems(state, build_paths),
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


def _state(reading="", outputs=(), wide=()):
    return {"reading": reading, "outputs": list(outputs), "wide": list(wide)}


def test_reading_problems_are_found_in_the_text_a_reader_sees():
    paths = ["/srv/build/glocal-book", "/home/reader"]
    found = reading_problems(_state(
        reading="Setup\n| data | strategy | finished | | --- | --- | --- | | FMNIST | local | 2/2 |\n"
                "| local | 0.85 | — | — |\nresults cached under /srv/build/glocal-book/_build/cache\n"
                "loaded from /home/reader/data",
        outputs=["/srv/x.py:231: RuntimeWarning: overflow encountered in power",
                 "Traceback (most recent call last):"],
        wide=['pre "glocal (mean) minus global": 1200 px in 800 px']), paths)
    assert len(found["Markdown table rows"]) == 2
    assert len(found["build paths"]) == 2
    assert len(found["warnings or tracebacks in outputs"]) == 2
    assert found["wider than the column"]


def test_a_readable_page_has_no_reading_problems():
    found = reading_problems(_state(
        reading="strategy\tfinal test accuracy\nlocal\t0.853 ± 0.009\n"
                "a | b is a set, and x — y a dash; the root of a\n| x | = 1",
        outputs=["glocal (window mean) minus global: −0.2 points", "warnings: none"]),
        ["/srv/build/glocal-book"])
    assert not any(found.values()), found


def test_build_paths_name_the_checkout_and_home(tmp_path):
    book = tmp_path / "checkout" / "_build" / "html"
    paths = _build_paths(book)
    assert str(tmp_path / "checkout") in paths and str(ROOT) in paths
    assert str(Path.home()) in paths or len(Path.home().parts) <= 1

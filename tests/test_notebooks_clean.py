"""Notebooks are stored without outputs, and the book's table of contents matches them."""

import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
STRIP = "jupyter nbconvert --clear-output --inplace notebooks/*.ipynb"


def _toc_files(entries):
    """Every `file:` in a jb-book ToC, recursing into parts, chapters and sections."""
    for entry in entries:
        if "file" in entry:
            yield entry["file"]
        for key in ("parts", "chapters", "sections"):
            yield from _toc_files(entry.get(key, []))


def _toc():
    """The ToC's entries as paths relative to the repository root, without suffix."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    entries = [toc["root"], *_toc_files([toc])]
    return [entry.removesuffix(".md").removesuffix(".ipynb") for entry in entries]


def test_notebooks_exist():
    # Guards the parametrization below: an empty glob would silently test nothing.
    assert NOTEBOOKS, f"no notebooks found in {ROOT / 'notebooks'}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_has_no_outputs(path):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] != "code":
            continue
        assert not cell.get("outputs") and cell.get("execution_count") is None, (
            f"{path.name}, cell {index} has outputs or an execution count; "
            f"strip them with `{STRIP}`"
        )


def test_toc_lists_every_notebook():
    listed = set(_toc())
    missing = [
        path.name
        for path in NOTEBOOKS
        if path.relative_to(ROOT).with_suffix("").as_posix() not in listed
    ]
    assert not missing, f"notebooks missing from _toc.yml: {missing}"


def test_toc_files_exist():
    absent = [
        entry
        for entry in _toc()
        if not any((ROOT / f"{entry}{suffix}").is_file() for suffix in (".md", ".ipynb"))
    ]
    assert not absent, f"_toc.yml lists files that do not exist: {absent}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_has_one_cell_timeout_for_nbmake_and_the_book(path):
    # A hung cell must fail within a small multiple of its measured time, in `make test`
    # (nbmake reads metadata.execution.timeout) and in `make book` (myst-nb reads
    # metadata.mystnb.execution_timeout), never after the hour a global default would allow.
    metadata = json.loads(path.read_text(encoding="utf-8"))["metadata"]
    nbmake = metadata.get("execution", {}).get("timeout")
    book = metadata.get("mystnb", {}).get("execution_timeout")
    assert isinstance(nbmake, int) and nbmake == book, (
        f"{path.name}: set metadata.execution.timeout and metadata.mystnb.execution_timeout "
        f"to the same per-cell limit in seconds (found {nbmake} and {book})"
    )
    assert 60 <= nbmake <= 1800, f"{path.name}: a per-cell timeout of {nbmake} s"

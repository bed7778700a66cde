"""The house's size limits, checked: `make sizes` runs this file alone.

A notebook code cell configures, calls the library and plots, in at most `MAX_CELL_LINES`
lines (logic belongs in `glocal_core`, checks in `tests/`); a module of `glocal_core` holds
one idea, in at most `MAX_MODULE_LINES` lines. Each test lists every offender.
"""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_CELL_LINES = 15
MAX_MODULE_LINES = 400


def _code_cells():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        for i, cell in enumerate(cells):
            if cell["cell_type"] == "code":
                yield f"{path.name} cell {i}", "".join(cell["source"])
    for path in sorted((ROOT / "book").glob("*.md")):
        blocks = re.findall(r"```\{code-cell\}[^\n]*\n(?::[^\n]*\n)*\n?(.*?)```",
                            path.read_text(encoding="utf-8"), re.S)
        for i, block in enumerate(blocks):
            yield f"{path.name} code cell {i}", block


def test_no_notebook_code_cell_is_longer_than_15_lines():
    long = {name: n for name, source in _code_cells()
            if (n := len(source.rstrip("\n").split("\n"))) > MAX_CELL_LINES}
    assert not long, f"code cells over {MAX_CELL_LINES} lines: {long}"


def test_no_module_is_longer_than_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in sorted((ROOT / "glocal_core").rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"

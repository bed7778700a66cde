"""The engine (`glocal_core`) stands on its own: it never imports the reproduction
(`glocal_core.repro`), and each of its public names is documented."""

import ast
import functools
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import glocal_core as gc

PACKAGE = Path(gc.__file__).resolve().parent
# __main__ is the one engine-level file that may import the reproduction: it only hands
# `python -m glocal_core` to the reproduction's command line.
ENGINE_MODULES = sorted(p for p in PACKAGE.glob("*.py") if p.name != "__main__.py")
PUBLIC = sorted(n for n in dir(gc)
                if not n.startswith("_") and not inspect.ismodule(getattr(gc, n)))


def _is_repro(dotted: str) -> bool:
    return dotted == "glocal_core.repro" or dotted.startswith("glocal_core.repro.")


def repro_imports(source: str) -> list[str]:
    """Every import of the reproduction in `source`, a module of the package `glocal_core`:
    relative (`from .repro...`, `from . import repro`), absolute (`import glocal_core.repro`,
    `from glocal_core import repro`) and by name (`importlib.import_module("glocal_core.repro")`).
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if _is_repro(a.name)]
        elif isinstance(node, ast.ImportFrom):
            base = "glocal_core" if node.level == 1 else "" if node.level == 0 else None
            if base is None:
                continue
            module = ".".join(filter(None, [base, node.module]))
            found += [f"{module}.{a.name}" for a in node.names if _is_repro(f"{module}.{a.name}")]
        elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith(
                ("import_module", "__import__")):
            first = node.args[0] if node.args else None
            name = first.value if isinstance(first, ast.Constant) else None
            if isinstance(name, str) and (_is_repro(name) or name.startswith(".repro")):
                found.append(name)
    return found


@pytest.mark.parametrize("snippet", [
    "from .repro import cli", "from .repro.cli import main", "from . import repro",
    "from . import _dmd, repro", "import glocal_core.repro.results as gr",
    "from glocal_core import repro", "from glocal_core.repro import plotting",
    "def f():\n    from .repro import tables", "importlib.import_module('glocal_core.repro')",
    "importlib.import_module('.repro.cli', 'glocal_core')",
])
def test_repro_imports_finds_every_way_to_import_the_reproduction(snippet):
    assert repro_imports(snippet), snippet


def test_repro_imports_passes_the_engine_s_own_imports():
    clean = ("from . import _dmd\nfrom ._outer import run_outer\nimport glocal_core as gc\n"
             "from glocal_core import learnable\nimport reprolib\nfrom .reprod import x")
    assert repro_imports(clean) == []
    assert repro_imports((PACKAGE / "__main__.py").read_text()), "the checker misses __main__"


@pytest.mark.parametrize("path", ENGINE_MODULES, ids=lambda p: p.name)
def test_no_engine_module_imports_the_reproduction(path):
    assert repro_imports(path.read_text()) == [], f"{path.name} imports the reproduction"


def test_importing_the_engine_loads_no_module_of_the_reproduction():
    script = ("import sys, glocal_core; print(sorted(m for m in sys.modules "
              "if m == 'glocal_core.repro' or m.startswith('glocal_core.repro.')))")
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                         text=True).stdout
    assert out.strip() == "[]", out


def test_the_public_api_is_small():
    assert 30 <= len(PUBLIC) <= 70, f"{len(PUBLIC)} public names: {PUBLIC}"


@functools.cache
def _engine_docstrings() -> str:
    texts = []
    for path in ENGINE_MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
                texts.append(ast.get_docstring(node) or "")
    return "\n".join(texts)


# A constant (a tuple of names, a settings instance) has no docstring of its own: its
# `__doc__`, if any, is its type's. It counts as documented where a reader meets it: named in
# a docstring of the engine (its module's, or that of the function or class taking its
# values), so that `help()` on the thing that uses it explains it.
UNDOCUMENTED: dict[str, str] = {}


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=UNDOCUMENTED[n]))
    if n in UNDOCUMENTED else n for n in PUBLIC])
def test_every_public_name_is_documented(name):
    obj = getattr(gc, name)
    if inspect.isclass(obj) or callable(obj):
        assert obj.__module__.startswith("glocal_core._"), f"{name} is not the engine's own"
        doc = vars(obj).get("__doc__") if inspect.isclass(obj) else obj.__doc__
        # NamedTuple and dataclass fill in `Name(field, ...)` when a class has no docstring.
        assert doc and doc.strip() and not doc.startswith(f"{obj.__name__}("), name
        assert inspect.isclass(obj) or doc != type(obj).__doc__, name
    else:
        assert re.search(rf"\b{name}\b", _engine_docstrings()), f"no docstring names {name}"

"""Colab: every chapter installs the library first, and that install works from scratch.

The cell is run as Colab would run it (a `google.colab` module present), with IPython's own
cell transformer; its `%pip` line is recorded instead of run. The install it names is then
run for real in a fresh virtual environment, from this checkout instead of the repository's
URL, followed by `colab_setup` fetching Fashion-MNIST from a local copy of the files.
What cannot be tested here: Colab itself, its GPU runtime, and the download from GitHub.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from glocal_core._idx import FASHION_MNIST_DEBIAN_DIR, CorruptDatasetError, has_fashion_mnist_idx
from glocal_core.repro.colab import colab_setup, fetch_fashion_mnist, runtime_line

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
REPOSITORY = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]


def _first_code_cell(path: Path) -> dict:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return next(c for c in cells if c["cell_type"] == "code")


def _run_as_colab(source: str, *, gpu: bool, monkeypatch) -> tuple[list[str], dict]:
    """Run a cell as in Colab; returns the `%pip` lines it asked for (variables expanded)
    and its namespace. `colab_setup` is replaced by a recorder: the data and the runtime
    are tested on their own below."""
    from IPython.core.inputtransformer2 import TransformerManager

    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/nvidia-smi" if gpu else None)
    monkeypatch.setattr("glocal_core.repro.colab.colab_setup", lambda: "runtime line")
    magics = []
    namespace = {}

    class Shell:
        def run_line_magic(self, name, line):
            magics.append(f"%{name} {line.format(**namespace)}")

    namespace["get_ipython"] = lambda: Shell()
    exec(TransformerManager().transform_cell(source), namespace)
    return magics, namespace


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_first_code_cell_installs_the_library_in_colab(path, monkeypatch, capsys):
    cell = _first_code_cell(path)
    source = "".join(cell["source"])
    assert 'if "google.colab" in sys.modules:' in source, "the first code cell is not Colab's"
    assert "hide-cell" in cell["metadata"].get("tags", [])
    assert not cell["outputs"]
    magics, namespace = _run_as_colab(source, gpu=False, monkeypatch=monkeypatch)
    assert magics == [f'%pip install --quiet "glocal_core @ git+{REPOSITORY}"']
    assert capsys.readouterr().out == "runtime line\n"
    magics, _ = _run_as_colab(source, gpu=True, monkeypatch=monkeypatch)
    assert magics == [f'%pip install --quiet "glocal_core[cuda12] @ git+{REPOSITORY}"']


def test_the_colab_cell_does_nothing_elsewhere(monkeypatch):
    from IPython.core.inputtransformer2 import TransformerManager

    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    namespace = {"get_ipython": lambda: pytest.fail("ran a magic outside Colab")}
    for path in NOTEBOOKS:
        exec(TransformerManager().transform_cell("".join(_first_code_cell(path)["source"])),
             namespace)
    assert "REPOSITORY" not in namespace


def _copy_fashion_mnist_or_skip() -> Path:
    if not has_fashion_mnist_idx(FASHION_MNIST_DEBIAN_DIR):
        if os.environ.get("GLOCAL_REQUIRE_DATA") == "1":
            pytest.fail("GLOCAL_REQUIRE_DATA=1 but Debian's dataset-fashion-mnist is missing")
        pytest.skip("apt-get install dataset-fashion-mnist")
    return FASHION_MNIST_DEBIAN_DIR


def test_fetch_fashion_mnist_downloads_checks_and_keeps(tmp_path):
    source = _copy_fashion_mnist_or_skip()
    target = fetch_fashion_mnist(tmp_path / "data", base_url=source.as_uri())
    assert has_fashion_mnist_idx(target)
    assert not list(target.glob("*.part"))
    # A file already there and readable is not fetched again (a dead URL proves it) ...
    fetch_fashion_mnist(target, base_url=(tmp_path / "nowhere").as_uri())
    # ... a damaged one is, and a damaged download is an error naming the file.
    damaged = target / "t10k-labels-idx1-ubyte.gz"
    damaged.write_bytes(damaged.read_bytes()[:100])
    fetch_fashion_mnist(target, base_url=source.as_uri())
    assert damaged.stat().st_size == (source / damaged.name).stat().st_size
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in source.iterdir():
        (bad / f.name).write_bytes(f.read_bytes()[:-10])
    with pytest.raises(CorruptDatasetError, match="train-images-idx3-ubyte.gz"):
        fetch_fashion_mnist(tmp_path / "other", base_url=bad.as_uri())


def test_colab_setup_points_the_loader_at_the_files(tmp_path, monkeypatch):
    source = _copy_fashion_mnist_or_skip()
    monkeypatch.delenv("GLOCAL_FASHION_MNIST_DIR", raising=False)
    line = colab_setup(tmp_path / "fm", base_url=source.as_uri())
    assert os.environ["GLOCAL_FASHION_MNIST_DIR"] == str(tmp_path / "fm")
    assert line == runtime_line()
    assert "backend cpu" in line and "No GPU runtime" in line  # this machine has no GPU


def test_the_colab_install_works_in_a_fresh_environment(tmp_path):
    """The cell's `%pip install`, from this checkout, into a new virtual environment; then
    the cell's `colab_setup` there. Downloads the package's dependencies from PyPI."""
    source = _copy_fashion_mnist_or_skip()
    line = re.search(r'%pip install (.*)"glocal_core\{EXTRA\} @ git\+\{REPOSITORY\}"',
                     "".join(_first_code_cell(NOTEBOOKS[0])["source"]))
    assert line, "the Colab cell's install line changed; update this test"
    checkout = tmp_path / "checkout"  # pip builds in the source tree: not in ours
    shutil.copytree(ROOT / "glocal_core", checkout / "glocal_core",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, checkout / name)
    subprocess.run([sys.executable, "-m", "venv", tmp_path / "venv"], check=True)
    python = tmp_path / "venv" / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", *line.group(1).split(),
                    f"glocal_core @ {checkout.as_uri()}"], check=True, cwd=tmp_path)
    script = ("from glocal_core.repro.colab import colab_setup; "
              f"print(colab_setup({str(tmp_path / 'fm')!r}, base_url={source.as_uri()!r})); "
              "from glocal_core._data import load_fashion_mnist; print(load_fashion_mnist().train.images.shape)")
    env = {k: v for k, v in os.environ.items() if k != "GLOCAL_FASHION_MNIST_DIR"}
    out = subprocess.run([python, "-c", script], check=True, capture_output=True, text=True,
                         cwd=tmp_path, env=env).stdout
    assert "backend cpu" in out and "(54000, 28, 28, 1)" in out, out

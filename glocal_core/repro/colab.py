"""Running the book's chapters in Colab.

Each chapter's first code cell installs this package when (and only when) it runs in Colab,
then calls `colab_setup`: it fetches Fashion-MNIST's four IDX files (the smoke profile's
data; Colab has no Debian package) and points `GLOCAL_FASHION_MNIST_DIR` at them, and says
whether the runtime has a GPU. The full profile's other datasets are prepared with
`python -m glocal_core data prepare NAME` (Colab has TensorFlow and internet).
"""

import os
import shutil
import urllib.request
from pathlib import Path

from .. import CorruptDatasetError
from .._idx import FASHION_MNIST_ENV, FASHION_MNIST_FILES, read_idx

# The upstream files as raw bytes (FASHION_MNIST_URL in _idx is their page).
FASHION_MNIST_RAW_URL = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion"
)
COLAB_DATA_DIR = Path("/content/fashion-mnist")


def fetch_fashion_mnist(directory: str | os.PathLike, *,
                        base_url: str = FASHION_MNIST_RAW_URL) -> Path:
    """Download the four gzipped IDX files into `directory` and check each by reading it.

    A file already there and readable is kept. A download is written under a temporary name
    and renamed once complete, so an interrupted one is never taken for a file.

    **Raises:**

    `urllib.error.URLError` when a file cannot be downloaded; `CorruptDatasetError` naming
    the file when what arrived is not the IDX file it should be.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for images, labels, count in FASHION_MNIST_FILES.values():
        for stem in (images, labels):
            path = directory / f"{stem}.gz"
            if not _readable(path, count):
                partial = path.with_suffix(".gz.part")
                with urllib.request.urlopen(f"{base_url}/{stem}.gz", timeout=60) as source, \
                        open(partial, "wb") as target:
                    shutil.copyfileobj(source, target)
                partial.replace(path)
                _check(path, count)
    return directory


def _check(path: Path, count: int) -> None:
    if len(read_idx(path)) != count:
        raise CorruptDatasetError(f"{path} does not hold {count} examples: delete it and "
                                  "run again.")


def _readable(path: Path, count: int) -> bool:
    try:
        _check(path, count)
    except (OSError, CorruptDatasetError):  # missing or damaged: fetch it again
        return False
    return True


def runtime_line() -> str:
    """One line on the JAX backend: which devices, and what to do when there is no GPU."""
    import jax

    devices = ", ".join(str(d) for d in jax.devices())
    line = f"JAX {jax.__version__}, backend {jax.default_backend()}: {devices}"
    if jax.default_backend() != "gpu":
        line += ("\nNo GPU runtime: the smoke profile still runs, slowly. For a GPU: "
                 "Runtime > Change runtime type > GPU, then run this cell again.")
    return line


def colab_setup(data_dir: str | os.PathLike = COLAB_DATA_DIR, *,
                base_url: str = FASHION_MNIST_RAW_URL) -> str:
    """Fetch Fashion-MNIST into `data_dir`, set `GLOCAL_FASHION_MNIST_DIR` to it (unless the
    variable is already set), and return what the runtime is (`runtime_line`)."""
    if FASHION_MNIST_ENV not in os.environ:
        os.environ[FASHION_MNIST_ENV] = str(fetch_fashion_mnist(data_dir, base_url=base_url))
    return runtime_line()

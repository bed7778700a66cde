"""The original Fashion-MNIST files: where they live, and the IDX format they are in.

Debian's `dataset-fashion-mnist` installs the four files of Xiao et al. (2017) gzipped in
`/usr/share/datasets/fashion-mnist`; `$GLOCAL_FASHION_MNIST_DIR` points anywhere else.
`read_idx` parses one file and refuses, naming it, anything truncated or damaged.
"""

import gzip
import os
from pathlib import Path

import numpy as np


class CorruptDatasetError(ValueError):
    """A dataset file is there but truncated or not what its name says."""


# Fashion-MNIST's original files (Xiao et al., 2017), as Debian's `dataset-fashion-mnist`
# installs them and as upstream distributes them; gzipped or not.
FASHION_MNIST_ENV = "GLOCAL_FASHION_MNIST_DIR"
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_URL = "https://github.com/zalandoresearch/fashion-mnist/tree/master/data/fashion"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60_000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10_000),
}
# IDX type codes (LeCun et al.'s format): only unsigned bytes occur in (Fashion-)MNIST.
_IDX_UBYTE = 0x08


def fashion_mnist_dir() -> Path:
    """Where the Fashion-MNIST IDX files are read from: `$GLOCAL_FASHION_MNIST_DIR` if set,
    else the folder Debian's `dataset-fashion-mnist` installs."""
    env = os.environ.get(FASHION_MNIST_ENV)
    return Path(env).expanduser() if env else FASHION_MNIST_DEBIAN_DIR


def _idx_file(directory: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def has_fashion_mnist_idx(directory: str | os.PathLike | None = None) -> bool:
    """Whether all four Fashion-MNIST IDX files (gzipped or not) are in `directory`
    (default `fashion_mnist_dir()`)."""
    directory = fashion_mnist_dir() if directory is None else Path(directory)
    return all(_idx_file(directory, stem) is not None
               for images, labels, _ in FASHION_MNIST_FILES.values() for stem in (images, labels))


def fashion_mnist_missing_message(directory: Path) -> str:
    """The one error text for missing Fashion-MNIST: what to install, set or download."""
    return (
        f"Fashion-MNIST's IDX files are not in {directory}. Either\n"
        "  - on Debian/Ubuntu: `apt-get install dataset-fashion-mnist` (as root), or\n"
        f"  - elsewhere: download the four files train-images-idx3-ubyte.gz, "
        f"train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz "
        f"from {FASHION_MNIST_URL} into a folder and set {FASHION_MNIST_ENV} to it, or\n"
        "  - prepare it with tensorflow-datasets: "
        "`python -m glocal_core data prepare fashion_mnist`."
    )


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (LeCun et al.'s MNIST format), gzipped if its name ends in `.gz`.

    The header is two zero bytes, a type code (only `0x08`, unsigned bytes, is accepted),
    the number of dimensions `d`, then `d` big-endian uint32 sizes; the data follows.

    **Raises:**

    `CorruptDatasetError` naming the file if the header is wrong, the data is shorter or
    longer than the sizes say, or the gzip stream is damaged: never an array of wrong shape.
    """
    path = Path(path)
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise CorruptDatasetError(
            f"{path} could not be read ({type(err).__name__}: {err}); it is damaged or "
            "truncated: reinstall or download it again."
        ) from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE or raw[3] < 1:
        raise CorruptDatasetError(
            f"{path} is not an IDX file of unsigned bytes (header {raw[:4].hex() or 'empty'}); "
            "reinstall or download it again."
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CorruptDatasetError(f"{path} ends inside its header; it is truncated.")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise CorruptDatasetError(
            f"{path} holds {len(raw) - header} data bytes, but its header promises "
            f"{expected} for shape {shape}; it is truncated or damaged: reinstall or "
            "download it again."
        )
    return np.frombuffer(raw, np.uint8, expected, offset=header).reshape(shape)

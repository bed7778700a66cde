"""Files that are either complete or absent: a crash mid-write never leaves a truncated file
that a later run would load as valid (cached arrays, checkpoints, results)."""

import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call `write(f)` on a temporary file beside `path`, then rename it onto `path`.

    The rename is atomic on POSIX file systems, so readers see the old file or the new one.
    Parent directories are created. **Returns:** `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def save_pickle(path: str | os.PathLike, obj: Any) -> Path:
    """Pickle `obj` to `path` atomically (see `write_atomic`)."""
    return write_atomic(path, lambda f: pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL))


def load_pickle(path: str | os.PathLike) -> Any:
    """Unpickle `path`; only for files this package wrote itself."""
    with open(path, "rb") as f:
        return pickle.load(f)

"""The paper's datasets from tensorflow-datasets, read without TensorFlow.

`tfds.data_source` reads the array_record format, which needs no TensorFlow; each split is
decoded once into `.npy` files that later loads read without tfds at all. Preparing a dataset
the first time does need TensorFlow and internet; see `prepare_tfds`.
"""

import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ._io import write_atomic
from ._splits import (
    NORMALIZATION,
    NUM_CLASSES,
    TFDS_NAMES,
    Dataset,
    DatasetNotPreparedError,
    Splits,
    _normalize,
    _split,
)


def _check_tfds_name(name: str) -> None:
    if name not in TFDS_NAMES:
        raise ValueError(f"Unknown dataset {name!r}; tfds datasets: {', '.join(TFDS_NAMES)}.")


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The tensorflow-datasets directory: `data_dir` if given, else `$TFDS_DATA_DIR`,
    else tfds' default `~/tensorflow_datasets`."""
    if data_dir is None:
        data_dir = os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return Path(data_dir).expanduser()


def prepare_tfds(name: str, *, data_dir: str | os.PathLike | None = None) -> Path:
    """Download and prepare `name` in tfds' array_record format, once, so that `load_tfds`
    can read it without TensorFlow. Needs internet and TensorFlow
    (`pip install tensorflow-cpu`; tfds' preparation uses it) besides the `data` extra.

    **Arguments:**

    - `name`: one of `TFDS_NAMES`.
    - `data_dir`: where to prepare it; see `resolve_data_dir`.

    **Returns:**

    The data directory it was prepared in.
    """
    _check_tfds_name(name)
    try:
        import tensorflow  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"Preparing {name!r} with tensorflow-datasets needs TensorFlow, which the `data` "
            "extra leaves out: run `pip install tensorflow-cpu` (internet needed once), then "
            "prepare again. Reading the prepared data later needs neither."
        ) from err
    tfds = _import_tfds()
    data_dir = resolve_data_dir(data_dir)
    builder = tfds.builder(name, data_dir=str(data_dir))
    builder.download_and_prepare(file_format="array_record")
    return data_dir


def _import_tfds():
    # Only decoding needs tfds; cached `.npy` arrays load without it.
    try:
        import tensorflow_datasets
    except ImportError as err:
        raise ImportError(
            "Reading the tfds datasets needs tensorflow-datasets: "
            "`pip install -e .[data]` (or `pip install tensorflow-datasets`)."
        ) from err
    return tensorflow_datasets


def _read_tfds_split(name: str, split: str, data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    tfds = _import_tfds()
    try:
        # download=False: a missing dataset must fail here, not start a download.
        source = tfds.data_source(name, split=split, data_dir=str(data_dir), download=False)
    except Exception as err:
        command = f"python -m glocal_core data prepare {name} --data-dir {data_dir}"
        raise DatasetNotPreparedError(
            f"No prepared copy of {name!r} (split {split!r}, array_record format) under "
            f"{data_dir}. Prepare it once, with internet and TensorFlow "
            f"(`pip install tensorflow-cpu`):\n\n    {command}\n\n"
            "or set TFDS_DATA_DIR / data_dir to a directory where it is prepared.\n"
            f"(tensorflow-datasets said: {type(err).__name__}: {err})"
        ) from err
    decoding = tqdm(range(len(source)), desc=f"decoding {name}/{split}", leave=False)
    records = [source[i] for i in decoding]
    images = np.stack([r["image"] for r in records]).astype(np.uint8)
    labels = np.array([r["label"] for r in records], dtype=np.int32)
    return images, labels


def _load_tfds_split(
    name: str, split: str, data_dir: Path, cache_dir: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Decoded uint8 images and int32 labels, from the `.npy` cache when present."""
    image_path = cache_dir / f"{split}_images.npy"
    label_path = cache_dir / f"{split}_labels.npy"
    if image_path.exists() and label_path.exists():
        return np.load(image_path), np.load(label_path)
    images, labels = _read_tfds_split(name, split, data_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(image_path, lambda f: np.save(f, images))
    write_atomic(label_path, lambda f: np.save(f, labels))
    return images, labels



def load_tfds(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    val_size: float | int = 0.1,
    imbalance: float | None = None,
) -> Splits:
    """Load one of the paper's datasets from prepared tensorflow-datasets files.

    **Arguments:**

    - `name`: one of `TFDS_NAMES`: mnist, fashion_mnist, kmnist, cifar10, cifar100.
    - `data_dir`: the tfds directory; see `resolve_data_dir`.
    - `cache_dir`: where the decoded arrays are cached as `{split}_{images,labels}.npy`;
        defaults to `<data_dir>/glocal_npy/<name>`.
    - `seed`: fixes the validation hold-out and the imbalanced subsample.
    - `val_size`: validation examples held out of the training split: a fraction
        (default 0.1, Appendix B.1) or a count (1000 for reweighting, Appendix B.2).
    - `imbalance`: if given, the imbalance factor of the training set (see
        `make_imbalanced`); validation is then class-balanced.

    **Returns:**

    The `Splits`; pixels scaled to [0, 1] and normalised with `NORMALIZATION[name]`.

    **Raises:**

    `DatasetNotPreparedError` naming the command that prepares the dataset, if it is not
    prepared under `data_dir`.
    """
    _check_tfds_name(name)
    data_dir = resolve_data_dir(data_dir)
    cache_dir = Path(cache_dir) if cache_dir is not None else data_dir / "glocal_npy" / name
    mean, std = NORMALIZATION[name]
    train_images, train_labels = _load_tfds_split(name, "train", data_dir, cache_dir)
    test_images, test_labels = _load_tfds_split(name, "test", data_dir, cache_dir)
    test = Dataset(_normalize(test_images, mean, std, scale=1 / 255), test_labels)
    return _split(
        _normalize(train_images, mean, std, scale=1 / 255),
        train_labels,
        test,
        name=name,
        num_classes=NUM_CLASSES[name],
        seed=seed,
        val_size=val_size,
        imbalance=imbalance,
    )

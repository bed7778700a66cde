"""Datasets as host arrays, split into train / validation / test, and device-side batching.

Every loader returns a `Splits`: normalised float32 images `(N, H, W, C)` and int32 labels
for the train, validation and test sets. The validation set is held out of the original
training split (Sec. 4, "hold-out validation data from the original training data"); the
test set is the dataset's own test split.

The paper's datasets come from tensorflow-datasets, read with `tfds.data_source` (the
array_record format, which needs no TensorFlow) and decoded once into `.npy` files.
Preparing them the first time does need TensorFlow and internet; see `prepare_tfds`.
Fashion-MNIST, the paper's main dataset, is also read straight from its original IDX files
(Debian's `dataset-fashion-mnist` package, or `$GLOCAL_FASHION_MNIST_DIR`) with no
TensorFlow at all; the `smoke` profile runs on it. scikit-learn's 8×8 `digits` (shipped with
scikit-learn) serves unit tests and the stand-ins of the chapters whose models cannot run at
the paper's scale on a CPU.
"""

import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray
from tqdm.auto import tqdm

from ._idx import (
    FASHION_MNIST_ENV,
    FASHION_MNIST_FILES,
    CorruptDatasetError,
    _idx_file,
    fashion_mnist_dir,
    fashion_mnist_missing_message,
    has_fashion_mnist_idx,
    read_idx,
)
from ._io import write_atomic


class Dataset(NamedTuple):
    """Images `(N, H, W, C)` (normalised float32) and their int32 labels `(N,)`, as numpy
    arrays on the host or, after `to_device`, as jax arrays."""

    images: Float[np.ndarray | Array, "N H W C"]
    labels: Int[np.ndarray | Array, " N"]


class Splits(NamedTuple):
    """A dataset split three ways, with what a model needs to know about it."""

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    name: str
    image_shape: tuple[int, int, int]


class DatasetNotPreparedError(RuntimeError):
    """The dataset is not on this machine in any form this package reads."""


# Per-channel mean and std of the training split, after scaling pixels to [0, 1]; the
# values in common use (CIFAR std is the pixel std, not the mean of per-image stds).
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "kmnist": ((0.1918,), (0.3483,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
NUM_CLASSES = {"mnist": 10, "fashion_mnist": 10, "kmnist": 10, "cifar10": 10, "cifar100": 100}
TFDS_NAMES = tuple(NORMALIZATION)
DATASET_NAMES = ("digits", *TFDS_NAMES)

# Independent random streams per purpose, so that e.g. changing the imbalance factor
# does not change which examples are held out for validation.
_VAL_STREAM, _IMBALANCE_STREAM, _TEST_STREAM = 0, 1, 2


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


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


def _normalize(
    images: np.ndarray, mean: Sequence[float], std: Sequence[float], *, scale: float = 1.0
) -> np.ndarray:
    # In place on one float32 copy: CIFAR's training split is 600 MB as float32.
    out = images.astype(np.float32)
    out *= np.float32(scale)
    out -= np.asarray(mean, np.float32)
    out /= np.asarray(std, np.float32)
    return out


def _resolve_count(size: float | int, total: int, what: str) -> int:
    # An integer is a count, a float a fraction.
    count = int(size) if isinstance(size, numbers.Integral) else int(round(size * total))
    if not 0 < count < total:
        raise ValueError(f"{what}={size} selects {count} of {total} examples; need 0 < n < N.")
    return count


def imbalanced_counts(n_max: int, num_classes: int, factor: float) -> list[int]:
    """Per-class example counts of a long-tailed dataset (Cui et al., 2019):
    n_c = ⌊n_max · factor^(−c/(C−1))⌋ for c = 0, …, C−1, so class 0 keeps `n_max` and the
    last class keeps ⌊n_max / factor⌋.

    The paper (Sec. 4.2) writes ⌊1/f^{c/C}⌋, which omits n_max and uses C instead of C−1
    (so its last class would keep n_max / f^{(C−1)/C}); we follow Cui et al.

    **Arguments:**

    - `n_max`: the count of the largest class.
    - `num_classes`: C.
    - `factor`: the imbalance factor f ≥ 1, the ratio of the largest to the smallest class.

    **Returns:**

    The counts, largest first.
    """
    if factor < 1:
        raise ValueError(f"The imbalance factor must be >= 1, got {factor}.")
    if num_classes == 1:
        return [n_max]
    # The small tolerance keeps exact cases exact, e.g. 4900 / 100 = 49, not 48.
    return [
        int(np.floor(n_max * factor ** (-c / (num_classes - 1)) + 1e-9))
        for c in range(num_classes)
    ]


def _imbalanced_indices(
    labels: np.ndarray, factor: float, num_classes: int, seed: int
) -> np.ndarray:
    class_counts = np.bincount(labels, minlength=num_classes)
    counts = imbalanced_counts(int(class_counts.min()), num_classes, factor)
    rng = _rng(seed, _IMBALANCE_STREAM)
    keep = [rng.permutation(np.flatnonzero(labels == c))[:n] for c, n in enumerate(counts)]
    return np.sort(np.concatenate(keep))


def make_imbalanced(
    images: np.ndarray,
    labels: np.ndarray,
    factor: float,
    *,
    seed: int,
    num_classes: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Subsample a dataset per class to the long-tailed counts of `imbalanced_counts`, with
    n_max the size of its smallest class (so every class can supply its count). Examples
    keep their original order.

    **Arguments:**

    - `images`, `labels`: the (balanced) training set.
    - `factor`: the imbalance factor, e.g. 50 or 100 as in the paper's Table 2.
    - `seed`: which examples of each class are kept.
    - `num_classes`: defaults to `labels.max() + 1`.

    **Returns:**

    The subsampled `(images, labels)`.
    """
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    keep = _imbalanced_indices(labels, factor, num_classes, seed)
    return images[keep], labels[keep]


def _balanced_holdout(
    labels: np.ndarray, count: int, num_classes: int, perm: np.ndarray
) -> np.ndarray:
    # count // C per class, the remainder spread over the first classes: exact total size.
    quotas = [count // num_classes + (c < count % num_classes) for c in range(num_classes)]
    chosen = []
    for c, quota in enumerate(quotas):
        members = perm[labels[perm] == c]
        if len(members) < quota:
            raise ValueError(f"Class {c} has {len(members)} examples, < {quota} for validation.")
        chosen.append(members[:quota])
    return np.concatenate(chosen)


def _split(
    images: np.ndarray,
    labels: np.ndarray,
    test: Dataset,
    *,
    name: str,
    num_classes: int,
    seed: int,
    val_size: float | int,
    imbalance: float | None,
) -> Splits:
    """Hold out validation from the training data, then make the rest imbalanced if asked.
    With `imbalance`, validation is class-balanced, as reweighting needs (Sec. 4.2)."""
    count = _resolve_count(val_size, len(labels), "val_size")
    perm = _rng(seed, _VAL_STREAM).permutation(len(labels))
    if imbalance is None:
        val_idx = perm[:count]
    else:
        val_idx = _balanced_holdout(labels, count, num_classes, perm)
    train_mask = np.ones(len(labels), bool)
    train_mask[val_idx] = False
    train_idx = np.flatnonzero(train_mask)
    if imbalance is not None:
        train_idx = train_idx[_imbalanced_indices(labels[train_idx], imbalance, num_classes, seed)]
    val_idx = np.sort(val_idx)
    return Splits(
        train=Dataset(images[train_idx], labels[train_idx]),
        val=Dataset(images[val_idx], labels[val_idx]),
        test=test,
        num_classes=num_classes,
        name=name,
        image_shape=tuple(int(d) for d in images.shape[1:]),
    )


def _read_fashion_mnist_split(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    image_stem, label_stem, count = FASHION_MNIST_FILES[split]
    image_path, label_path = _idx_file(directory, image_stem), _idx_file(directory, label_stem)
    if image_path is None or label_path is None:
        raise DatasetNotPreparedError(fashion_mnist_missing_message(directory))
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.shape != (count, 28, 28):
        raise CorruptDatasetError(
            f"{image_path} has shape {images.shape}; Fashion-MNIST's {split} images are "
            f"({count}, 28, 28)."
        )
    if labels.shape != (count,) or labels.max(initial=0) >= 10:
        raise CorruptDatasetError(
            f"{label_path} has shape {labels.shape} (max {labels.max(initial=0)}); "
            f"Fashion-MNIST's {split} labels are ({count},) in 0..9."
        )
    return images[..., None], labels.astype(np.int32)


def load_fashion_mnist(
    *,
    directory: str | os.PathLike | None = None,
    seed: int = 0,
    val_size: float | int = 0.1,
    imbalance: float | None = None,
) -> Splits:
    """Fashion-MNIST from its original IDX files, with no TensorFlow.

    **Arguments:**

    - `directory`: the folder of the four files (gzipped or not); default
        `fashion_mnist_dir()`.
    - `seed`, `val_size`, `imbalance`: as in `load_tfds` (the same seeded hold-out).

    **Returns:**

    The `Splits` named `"fashion_mnist"`: 28×28×1 images normalised like the tfds route.

    **Raises:**

    `DatasetNotPreparedError` saying what to install or set when the files are missing;
    `CorruptDatasetError` naming the file when one is damaged.
    """
    directory = fashion_mnist_dir() if directory is None else Path(directory)
    mean, std = NORMALIZATION["fashion_mnist"]
    train_images, train_labels = _read_fashion_mnist_split(directory, "train")
    test_images, test_labels = _read_fashion_mnist_split(directory, "test")
    test = Dataset(_normalize(test_images, mean, std, scale=1 / 255), test_labels)
    return _split(
        _normalize(train_images, mean, std, scale=1 / 255),
        train_labels,
        test,
        name="fashion_mnist",
        num_classes=10,
        seed=seed,
        val_size=val_size,
        imbalance=imbalance,
    )


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


def load_digits(
    *,
    seed: int = 0,
    val_size: float | int = 0.1,
    test_size: float | int = 0.2,
    image_shape: tuple[int, int, int] = (28, 28, 1),
    imbalance: float | None = None,
) -> Splits:
    """scikit-learn's handwritten digits (1797 8×8 images, 10 classes), offline, shaped
    like the paper's datasets: the `smoke` profile's real data.

    Images are scaled from 0..16 to [0, 1], resized bilinearly to `image_shape` (grey
    replicated to 3 channels for the CIFAR chapters) and normalised with the mean and std
    of the non-test images. The test set is held out first, then validation from the rest.

    **Arguments:**

    - `seed`: fixes the test and validation hold-outs and the imbalanced subsample.
    - `val_size`: fraction or count of the non-test images held out for validation.
    - `test_size`: fraction or count of all images held out for testing.
    - `image_shape`: `(28, 28, 1)` (LeNet chapters) or `(32, 32, 3)` (WideResNet chapters);
        any `(H, W, 1)` or `(H, W, 3)` works.
    - `imbalance`: as in `load_tfds`.

    **Returns:**

    The `Splits`, named `"digits"`.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    height, width, channels = image_shape
    if channels not in (1, 3):
        raise ValueError(f"image_shape must have 1 or 3 channels, got {image_shape}.")
    digits = sklearn_digits()
    pixels = jnp.asarray(digits.images / 16.0, jnp.float32)
    resized = np.asarray(jax.image.resize(pixels, (len(pixels), height, width), "bilinear"))
    images = np.repeat(resized[..., None], channels, axis=-1)
    labels = digits.target.astype(np.int32)

    n_test = _resolve_count(test_size, len(labels), "test_size")
    perm = _rng(seed, _TEST_STREAM).permutation(len(labels))
    test_idx, rest_idx = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    rest = images[rest_idx]
    mean, std = rest.mean(axis=(0, 1, 2)), rest.std(axis=(0, 1, 2))
    test = Dataset(_normalize(images[test_idx], mean, std), labels[test_idx])
    return _split(
        _normalize(rest, mean, std),
        labels[rest_idx],
        test,
        name="digits",
        num_classes=10,
        seed=seed,
        val_size=val_size,
        imbalance=imbalance,
    )


def load_dataset(name: str, **kwargs) -> Splits:
    """`load_digits(**kwargs)` for `"digits"`, `load_tfds(name, **kwargs)` for the tfds
    datasets; any other name raises a `ValueError` listing `DATASET_NAMES`.

    `"fashion_mnist"` is read from its IDX files (`load_fashion_mnist`) when they are in
    `fashion_mnist_dir()`, else from tensorflow-datasets; when it is in neither place, the
    error says how to get it both ways. A `$GLOCAL_FASHION_MNIST_DIR` that is set but lacks
    the files is an error, never a silent switch to tfds.
    """
    if name == "digits":
        return load_digits(**kwargs)
    if name == "fashion_mnist" and (has_fashion_mnist_idx() or FASHION_MNIST_ENV in os.environ):
        kwargs.pop("data_dir", None)
        kwargs.pop("cache_dir", None)
        return load_fashion_mnist(**kwargs)
    if name == "fashion_mnist":
        try:
            return load_tfds(name, **kwargs)
        except DatasetNotPreparedError as err:
            raise DatasetNotPreparedError(
                f"{fashion_mnist_missing_message(fashion_mnist_dir())}\n"
                f"(tensorflow-datasets has no prepared copy either: {err})"
            ) from err
    if name in TFDS_NAMES:
        return load_tfds(name, **kwargs)
    raise ValueError(f"Unknown dataset {name!r}; choose one of: {', '.join(DATASET_NAMES)}.")


def to_device(data: Dataset | Splits) -> Dataset | Splits:
    """Put a `Dataset`'s arrays, or every set of a `Splits`, on the default device once,
    so that batches are then gathered on device."""
    if isinstance(data, Splits):
        return data._replace(
            train=to_device(data.train), val=to_device(data.val), test=to_device(data.test)
        )
    return Dataset(jax.device_put(data.images), jax.device_put(data.labels))


def sample_batch(
    images: Float[Array, "N H W C"],
    labels: Int[Array, " N"],
    key: PRNGKeyArray,
    batch_size: int,
) -> tuple[Float[Array, "B H W C"], Int[Array, " B"]]:
    """A minibatch of `batch_size` examples drawn independently and uniformly (with
    replacement), as a pure function of `key`: reproducible, jittable and usable inside
    `lax.scan`. Drawing without replacement permutes all N indices, an O(N log N) sort that
    measured 18 ms of a 20 ms step of the smoke profile's MLP on real Fashion-MNIST
    (N = 54,000, 2 CPU cores); independent draws cost O(`batch_size`), and at N = 54,000 a
    batch of 128 repeats an example about once in seven batches.

    **Arguments:**

    - `images`, `labels`: a dataset, ideally already on device (`to_device`).
    - `key`: PRNG key choosing the examples.
    - `batch_size`: static.

    **Returns:**

    `(x, y)`, the batch's images and labels.
    """
    index = jr.randint(key, (batch_size,), 0, images.shape[0])
    return jnp.take(images, index, axis=0), jnp.take(labels, index, axis=0)

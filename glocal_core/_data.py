"""Every dataset by name, as host arrays split into train / validation / test, and
device-side batching.

Every loader returns a `Splits` (see `_splits` for the types and the seeded hold-outs).
The paper's datasets come from tensorflow-datasets (`_tfds`: read without TensorFlow,
decoded once into `.npy` files; preparing them the first time needs TensorFlow and
internet, see `prepare_tfds`). Fashion-MNIST, the paper's main dataset, is also read
straight from its original IDX files (Debian's `dataset-fashion-mnist` package, or
`$GLOCAL_FASHION_MNIST_DIR`) with no TensorFlow at all; the `smoke` profile runs on it.
scikit-learn's 8×8 `digits` (shipped with scikit-learn) serves unit tests and the stand-ins
of the chapters whose models cannot run at the paper's scale on a CPU. `load_dataset` picks
the route by name; names defined in `_splits` and `_tfds` are re-exported here.
"""

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

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
from ._splits import _TEST_STREAM, _normalize, _resolve_count, _rng
from ._splits import DATASET_NAMES as DATASET_NAMES
from ._splits import NORMALIZATION as NORMALIZATION
from ._splits import NUM_CLASSES as NUM_CLASSES
from ._splits import TFDS_NAMES as TFDS_NAMES
from ._splits import Dataset as Dataset
from ._splits import DatasetNotPreparedError as DatasetNotPreparedError
from ._splits import Splits as Splits
from ._splits import _split as _split  # glocal_core.repro.dryrun imports it from here
from ._splits import imbalanced_counts as imbalanced_counts
from ._splits import make_imbalanced as make_imbalanced
from ._tfds import load_tfds as load_tfds
from ._tfds import prepare_tfds as prepare_tfds
from ._tfds import resolve_data_dir as resolve_data_dir


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

"""What every loader returns, and how a dataset is cut into train / validation / test.

A `Splits` holds normalised float32 images `(N, H, W, C)` and int32 labels for the train,
validation and test sets. The validation set is held out of the original training split
(Sec. 4, "hold-out validation data from the original training data"), class-balanced when
the training set is made long-tailed for reweighting (Sec. 4.2); the test set is the
dataset's own test split. Every hold-out and subsample is a pure function of the seed.
"""

import numbers
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from jaxtyping import Array, Float, Int


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

import gzip
import os
import sys

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from glocal_core import _data, _idx


try:
    import tensorflow_datasets as tfds
except ImportError:  # the `data` extra is optional; digits needs no tfds
    tfds = None
needs_tfds = pytest.mark.skipif(tfds is None, reason="needs tensorflow-datasets (`data` extra)")

N_MOCK = 200  # examples per split in tfds' mock data


def _rows(images: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in images.reshape(len(images), -1)}


def _raw_train(name, data_dir):
    source = tfds.data_source(name, split="train", data_dir=str(data_dir), download=False)
    return np.stack([source[i]["image"] for i in range(len(source))])


def _pixels(images: np.ndarray, name: str) -> np.ndarray:
    """Undo the normalisation: back to uint8 pixels."""
    mean, std = (np.asarray(v, np.float32) for v in _data.NORMALIZATION[name])
    return np.round((images * std + mean) * 255).astype(np.uint8)


@needs_tfds
@pytest.mark.parametrize("name", _data.TFDS_NAMES)
def test_load_tfds(name, tmp_path):
    with tfds.testing.mock_data(num_examples=N_MOCK):
        splits = _data.load_tfds(name, data_dir=tmp_path, seed=1)
        raw = _raw_train(name, tmp_path)
    shape = (28, 28, 1) if "mnist" in name else (32, 32, 3)
    assert splits.name == name
    assert splits.image_shape == shape
    assert splits.num_classes == _data.NUM_CLASSES[name]
    assert len(splits.val.labels) == N_MOCK // 10
    assert len(splits.train.labels) == N_MOCK - N_MOCK // 10
    assert len(splits.test.labels) == N_MOCK
    for part in (splits.train, splits.val, splits.test):
        assert part.images.shape[1:] == shape
        assert part.images.dtype == np.float32
        assert part.labels.dtype == np.int32
        assert part.labels.min() >= 0 and part.labels.max() < splits.num_classes
    # Normalisation is exactly (x / 255 - mean) / std, and train + val is the tfds train
    # split cut in two disjoint parts.
    train_rows = _rows(_pixels(splits.train.images, name))
    val_rows = _rows(_pixels(splits.val.images, name))
    assert not train_rows & val_rows
    assert train_rows | val_rows == _rows(raw)
    assert abs(float(splits.train.images.mean())) < 3

    # The decoded arrays are cached; a second load must not touch tfds.
    cache = tmp_path / "glocal_npy" / name
    for split in ("train", "test"):
        assert (cache / f"{split}_images.npy").exists()
        assert (cache / f"{split}_labels.npy").exists()
    assert not list(cache.glob("*.tmp"))


@needs_tfds
def test_second_load_reads_cache(tmp_path, monkeypatch):
    with tfds.testing.mock_data(num_examples=N_MOCK):
        first = _data.load_tfds("mnist", data_dir=tmp_path, val_size=37)

    def unavailable(*args, **kwargs):
        raise AssertionError("tfds.data_source called despite the .npy cache")

    monkeypatch.setattr(tfds, "data_source", unavailable)
    second = _data.load_tfds("mnist", data_dir=tmp_path, val_size=37)
    assert len(second.val.labels) == 37
    for a, b in zip(first[:3], second[:3]):
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)


@needs_tfds
def test_load_tfds_imbalanced(tmp_path):
    with tfds.testing.mock_data(num_examples=600):
        splits = _data.load_tfds("cifar10", data_dir=tmp_path, val_size=100, imbalance=10)
    raw_labels = np.load(tmp_path / "glocal_npy" / "cifar10" / "train_labels.npy")
    assert np.array_equal(np.bincount(splits.val.labels, minlength=10), np.full(10, 10))
    # n_max is the smallest class of the pool left after the validation hold-out.
    n_max = int((np.bincount(raw_labels, minlength=10) - 10).min())
    expected = _data.imbalanced_counts(n_max, 10, 10)
    assert np.bincount(splits.train.labels, minlength=10).tolist() == expected
    assert not _rows(splits.train.images) & _rows(splits.val.images)


@needs_tfds
def test_val_size_variants(tmp_path):
    def n_val(val_size):
        return len(_data.load_tfds("kmnist", data_dir=tmp_path, val_size=val_size).val.labels)

    with tfds.testing.mock_data(num_examples=N_MOCK):
        assert n_val(0.25) == 50
        assert n_val(np.int64(13)) == 13
        with pytest.raises(ValueError, match="val_size"):
            _data.load_tfds("kmnist", data_dir=tmp_path, val_size=N_MOCK)


def test_unknown_names():
    with pytest.raises(ValueError, match="mnist, fashion_mnist, kmnist, cifar10, cifar100"):
        _data.load_tfds("svhn")
    with pytest.raises(ValueError, match="digits, mnist"):
        _data.load_dataset("imagenet")


@needs_tfds
def test_missing_dataset_names_prepare_command(tmp_path):
    with pytest.raises(_data.DatasetNotPreparedError) as info:
        _data.load_tfds("fashion_mnist", data_dir=tmp_path)
    message = str(info.value)
    assert f"python -m glocal_core data prepare fashion_mnist --data-dir {tmp_path}" in message
    assert "pip install tensorflow-cpu" in message
    assert not (tmp_path / "glocal_npy").exists()


def test_prepare_without_tensorflow(tmp_path, monkeypatch):
    # None in sys.modules makes `import tensorflow` fail even where it is installed.
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(ImportError, match="pip install tensorflow-cpu"):
        _data.prepare_tfds("mnist", data_dir=tmp_path)


def test_resolve_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "env"))
    assert _data.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert _data.resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("TFDS_DATA_DIR")
    assert _data.resolve_data_dir().name == "tensorflow_datasets"


def test_imbalanced_counts():
    expected = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert _data.imbalanced_counts(5000, 10, 100) == expected
    counts = _data.imbalanced_counts(4900, 100, 50)
    assert counts[0] == 4900 and counts[-1] == 98
    assert all(a >= b for a, b in zip(counts, counts[1:]))
    with pytest.raises(ValueError):
        _data.imbalanced_counts(10, 10, 0.5)


def test_make_imbalanced():
    labels = np.repeat(np.arange(5, dtype=np.int32), 40)
    images = np.arange(len(labels), dtype=np.float32)[:, None, None, None]
    x, y = _data.make_imbalanced(images, labels, 8.0, seed=3)
    assert np.bincount(y).tolist() == _data.imbalanced_counts(40, 5, 8.0) == [40, 23, 14, 8, 5]
    np.testing.assert_array_equal(labels[x[:, 0, 0, 0].astype(int)], y)
    x2, _ = _data.make_imbalanced(images, labels, 8.0, seed=3)
    np.testing.assert_array_equal(x, x2)


@pytest.fixture(scope="module")
def digits():
    return _data.load_digits(seed=0)


@pytest.mark.parametrize("image_shape", [(28, 28, 1), (32, 32, 3)])
def test_digits_shapes(image_shape):
    splits = _data.load_dataset("digits", image_shape=image_shape)
    assert splits.image_shape == image_shape and splits.num_classes == 10
    assert [len(p.labels) for p in splits[:3]] == [1294, 144, 359]
    for part in splits[:3]:
        assert part.images.shape[1:] == image_shape and part.images.dtype == np.float32
        assert part.labels.dtype == np.int32
    assert abs(float(splits.train.images.mean())) < 0.05
    assert abs(float(splits.train.images.std()) - 1) < 0.05
    if image_shape[-1] == 3:
        np.testing.assert_array_equal(splits.train.images[..., 0], splits.train.images[..., 2])


def test_digits_splits_disjoint(digits):
    rows = [_rows(p.images) for p in digits[:3]]
    assert sum(len(r) for r in rows) == len(set().union(*rows)) == 1797


def test_digits_deterministic(digits):
    again = _data.load_digits(seed=0)
    other = _data.load_digits(seed=1)
    for a, b in zip(digits[:3], again[:3]):
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(digits.test.labels, other.test.labels)


def test_digits_imbalanced(digits):
    splits = _data.load_digits(seed=0, val_size=100, imbalance=10)
    assert np.bincount(splits.val.labels).tolist() == [10] * 10
    pool = np.concatenate([digits.train.labels, digits.val.labels])  # same test hold-out
    n_max = int((np.bincount(pool) - 10).min())
    assert np.bincount(splits.train.labels).tolist() == _data.imbalanced_counts(n_max, 10, 10)
    assert not _rows(splits.train.images) & _rows(splits.val.images)
    np.testing.assert_array_equal(splits.test.labels, digits.test.labels)


def test_sample_batch():
    n = 50
    images = jnp.broadcast_to(jnp.arange(n, dtype=jnp.float32)[:, None, None, None], (n, 2, 2, 1))
    data = _data.to_device(_data.Dataset(images, jnp.arange(n, dtype=jnp.int32)))
    assert isinstance(data.images, jax.Array)
    x, y = _data.sample_batch(data.images, data.labels, jr.key(0), 16)
    assert x.shape == (16, 2, 2, 1) and y.shape == (16,)
    np.testing.assert_array_equal(x[:, 0, 0, 0], y.astype(jnp.float32))  # pairs kept
    x2, y2 = jax.jit(_data.sample_batch, static_argnums=3)(data.images, data.labels, jr.key(0), 16)
    np.testing.assert_array_equal(y, y2)
    _, y3 = _data.sample_batch(data.images, data.labels, jr.key(1), 16)
    assert not np.array_equal(y, y3)

    def step(carry, key):
        return carry, _data.sample_batch(data.images, data.labels, key, 8)[1]

    _, ys = jax.lax.scan(step, None, jr.split(jr.key(2), 3))
    assert ys.shape == (3, 8)


def test_sample_batch_is_uniform():
    # 200 batches of 25 from 10 examples: every count near 500 (binomial sd ≈ 21).
    labels = jnp.arange(10, dtype=jnp.int32)
    images = jnp.zeros((10, 1, 1, 1))
    draw = jax.vmap(lambda k: _data.sample_batch(images, labels, k, 25)[1])
    counts = np.bincount(np.asarray(draw(jr.split(jr.key(3), 200))).ravel(), minlength=10)
    assert counts.sum() == 5000
    assert np.all(np.abs(counts - 500) < 100), counts


def test_to_device_splits(digits):
    on_device = _data.to_device(digits)
    assert isinstance(on_device.val.images, jax.Array)
    assert on_device.name == "digits" and on_device.image_shape == digits.image_shape


# --- Fashion-MNIST from its IDX files ---------------------------------------------------

REQUIRE_DATA = os.environ.get("GLOCAL_REQUIRE_DATA") == "1"
needs_fashion_mnist = pytest.mark.skipif(
    not _idx.has_fashion_mnist_idx() and not REQUIRE_DATA,
    reason=f"Fashion-MNIST's IDX files are not in {_idx.fashion_mnist_dir()}: "
           "`apt-get install dataset-fashion-mnist` (CI installs it and sets GLOCAL_REQUIRE_DATA=1)",
)


@pytest.fixture(scope="module")
def fashion_mnist():
    return _data.load_dataset("fashion_mnist", seed=0)


@needs_fashion_mnist
def test_fashion_mnist_real_files(fashion_mnist):
    s = fashion_mnist
    assert s.name == "fashion_mnist" and s.num_classes == 10 and s.image_shape == (28, 28, 1)
    assert len(s.train.labels) + len(s.val.labels) == 60_000
    assert len(s.val.labels) == 6_000 and len(s.test.labels) == 10_000
    # The original files are class-balanced: 6,000 training and 1,000 test images per class.
    np.testing.assert_array_equal(
        np.bincount(np.concatenate([s.train.labels, s.val.labels]), minlength=10), 6_000)
    np.testing.assert_array_equal(np.bincount(s.test.labels, minlength=10), 1_000)
    for part in (s.train, s.val, s.test):
        assert part.images.shape[1:] == (28, 28, 1) and part.images.dtype == np.float32
        assert part.labels.dtype == np.int32
    # Normalised with the training statistics: mean ≈ 0 and std ≈ 1.
    assert abs(float(s.train.images.mean())) < 0.01
    assert abs(float(s.train.images.std()) - 1) < 0.01
    assert not _rows(s.train.images[:2000]) & _rows(s.val.images)


@needs_fashion_mnist
def test_fashion_mnist_holdout_is_seeded(fashion_mnist):
    again = _data.load_fashion_mnist(seed=0)
    other = _data.load_fashion_mnist(seed=1, val_size=1000)
    np.testing.assert_array_equal(again.val.labels, fashion_mnist.val.labels)
    np.testing.assert_array_equal(again.val.images[:50], fashion_mnist.val.images[:50])
    assert len(other.val.labels) == 1000
    assert not np.array_equal(other.val.images[:50], fashion_mnist.val.images[:50])


def _write_idx(path, array, *, gz=True, cut=0):
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    raw = (header + array.astype(np.uint8).tobytes())[: -cut or None]
    (gzip.open if gz else open)(path, "wb").write(raw)
    return path


def _fake_fashion_mnist(folder, *, n_train=60_000, n_test=10_000):
    rng = np.random.default_rng(0)
    for split, (images, labels, count) in _idx.FASHION_MNIST_FILES.items():
        n = n_train if split == "train" else n_test
        _write_idx(folder / f"{images}.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(folder / f"{labels}.gz", np.arange(n) % 10)


def test_read_idx_round_trip(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    for gz in (True, False):
        path = _write_idx(tmp_path / ("a.gz" if gz else "a"), array, gz=gz)
        np.testing.assert_array_equal(_idx.read_idx(path), array)


@pytest.mark.parametrize("damage", ["truncated", "bad magic", "bad gzip", "empty"])
def test_read_idx_corrupt_names_the_file(tmp_path, damage):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    array = np.zeros((3, 28, 28))
    if damage == "truncated":
        _write_idx(path, array, cut=5)
    elif damage == "bad magic":
        raw = bytes([0, 0, 0x0D, 3]) + np.asarray(array.shape, ">u4").tobytes()
        gzip.open(path, "wb").write(raw + bytes(3 * 28 * 28 * 4))
    elif damage == "bad gzip":
        _write_idx(path, array)
        path.write_bytes(path.read_bytes()[:-20])
    else:
        gzip.open(path, "wb").write(b"")
    with pytest.raises(_idx.CorruptDatasetError, match="train-images-idx3-ubyte.gz"):
        _idx.read_idx(path)


def test_fashion_mnist_wrong_count_is_an_error(tmp_path):
    _fake_fashion_mnist(tmp_path, n_test=9_999)
    with pytest.raises(_idx.CorruptDatasetError, match="t10k-images-idx3-ubyte"):
        _data.load_fashion_mnist(directory=tmp_path)


def test_fashion_mnist_env_directory(tmp_path, monkeypatch):
    _fake_fashion_mnist(tmp_path, n_train=60_000, n_test=10_000)
    monkeypatch.setenv(_idx.FASHION_MNIST_ENV, str(tmp_path))
    splits = _data.load_dataset("fashion_mnist", seed=0, val_size=600)
    assert len(splits.val.labels) == 600 and len(splits.train.labels) == 59_400
    assert len(splits.test.labels) == 10_000


def test_fashion_mnist_missing_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv(_idx.FASHION_MNIST_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(_data.DatasetNotPreparedError) as err:
        _data.load_dataset("fashion_mnist")
    text = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in text
    assert _idx.FASHION_MNIST_ENV in text and "t10k-images-idx3-ubyte.gz" in text
    assert _idx.FASHION_MNIST_URL in text

"""Tests for growth.tasks.data: embedded MNIST-1D, its caches, and the batch iterator."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest

from growth.errors import GrowthError
from growth.tasks import data
from growth.tasks.data import DATASETS, Dataset, MNIST1DConfig, iterate_batches, load_dataset

SMALL = MNIST1DConfig(num_samples=300, n_train=250, seed=7)


def test_shapes_dtypes_and_split() -> None:
    ds = load_dataset()
    assert isinstance(ds, Dataset) and ds.name == "mnist1d"
    assert ds.x_train.shape == (10000, 40) and ds.x_test.shape == (2000, 40)
    assert ds.y_train.shape == (10000,) and ds.y_test.shape == (2000,)
    assert ds.x_train.dtype == np.float32 and ds.x_test.dtype == np.float32
    assert ds.y_train.dtype == np.int32 and ds.y_test.dtype == np.int32
    assert ds.num_classes == 10 and ds.input_dim == 40
    for y in (ds.y_train, ds.y_test):
        assert set(np.unique(y).tolist()) == set(range(10))
    assert np.isfinite(ds.x_train).all() and np.isfinite(ds.x_test).all()


def test_standardization() -> None:
    ds = load_dataset()
    np.testing.assert_allclose(ds.x_train.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(ds.x_train.std(axis=0), 1.0, atol=1e-3)
    # test set uses train statistics: close to, but not exactly, standardised
    assert abs(float(ds.x_test.mean())) < 0.1 and 0.8 < float(ds.x_test.std()) < 1.2


def test_memoised_and_read_only() -> None:
    a, b = load_dataset(), load_dataset("mnist1d")
    assert a is b
    with pytest.raises(ValueError):
        a.x_train[0, 0] = 1.0


def test_fresh_generation_matches_cached_dataset() -> None:
    ds = load_dataset()
    fresh = data._build_mnist1d(MNIST1DConfig(), cache_dir=None)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(ds, name), getattr(fresh, name))


def test_generation_deterministic_and_leaves_global_rng_alone() -> None:
    np.random.seed(123)
    random.seed(123)
    a = data._build_mnist1d(SMALL, cache_dir=None)
    after_np, after_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    assert (np.random.rand(), random.random()) == (after_np, after_py)
    b = data._build_mnist1d(SMALL, cache_dir=None)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert a.x_train.shape == (250, 40) and a.x_test.shape == (50, 40)
    other = data._build_mnist1d(MNIST1DConfig(300, 250, seed=8), cache_dir=None)
    assert not np.array_equal(a.x_train, other.x_train)


def test_disk_cache_written_atomically_and_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = data._build_mnist1d(SMALL, cache_dir=tmp_path)
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].endswith(".npz"), files

    def boom(cfg: MNIST1DConfig) -> None:
        raise AssertionError("should have used the disk cache")

    monkeypatch.setattr(data, "_generate_mnist1d", boom)
    again = data._build_mnist1d(SMALL, cache_dir=tmp_path)
    np.testing.assert_array_equal(ref.x_train, again.x_train)


@pytest.mark.parametrize("garbage", [b"", b"not a zip file", b"PK\x03\x04truncated"])
def test_corrupt_cache_is_regenerated(tmp_path: Path, garbage: bytes) -> None:
    ref = data._build_mnist1d(SMALL, cache_dir=None)
    data._build_mnist1d(SMALL, cache_dir=tmp_path)
    (cache_file,) = tmp_path.iterdir()
    cache_file.write_bytes(garbage)
    ds = data._build_mnist1d(SMALL, cache_dir=tmp_path)
    np.testing.assert_array_equal(ref.x_train, ds.x_train)
    assert os.listdir(tmp_path) == [cache_file.name]
    assert cache_file.stat().st_size > 1000  # rewritten with valid data


def test_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MFGROW_CACHE_DIR", str(tmp_path))
    assert data._cache_dir() == tmp_path
    monkeypatch.setenv("MFGROW_CACHE_DIR", "")
    assert data._cache_dir() is None


def test_unknown_dataset_name() -> None:
    with pytest.raises(GrowthError, match="'cifar'.*mnist1d"):
        load_dataset("cifar")
    assert set(DATASETS) == {"mnist1d", "mnist1d-large"}


def _take(it, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [next(it) for _ in range(k)]


def test_iterate_batches_deterministic() -> None:
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    y = np.arange(20)
    a = _take(iterate_batches(x, y, 4, seed=3), 12)
    b = _take(iterate_batches(x, y, 4, seed=3), 12)
    c = _take(iterate_batches(x, y, 4, seed=4), 12)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert any(not np.array_equal(ya, yc) for (_, ya), (_, yc) in zip(a, c, strict=True))


def test_iterate_batches_epoch_coverage_and_reshuffle() -> None:
    n = 30
    x = np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    y = np.arange(n)
    batches = _take(iterate_batches(x, y, 5, seed=0), 12)  # two full epochs
    for xb, yb in batches:
        assert xb.shape == (5, 3) and yb.shape == (5,)
        np.testing.assert_array_equal(xb[:, 0], yb)  # x and y stay aligned
    epoch1 = np.concatenate([yb for _, yb in batches[:6]])
    epoch2 = np.concatenate([yb for _, yb in batches[6:]])
    assert sorted(epoch1.tolist()) == list(range(n)) == sorted(epoch2.tolist())
    assert not np.array_equal(epoch1, epoch2)


def test_iterate_batches_drops_partial_batch() -> None:
    y = np.arange(10)
    batches = _take(iterate_batches(y[:, None], y, 3, seed=1), 3)  # one epoch: 3 of 3
    seen = np.concatenate([yb for _, yb in batches])
    assert len(set(seen.tolist())) == 9
    assert all(len(yb) == 10 for _, yb in _take(iterate_batches(y, y, 10, seed=1), 3))


@pytest.mark.parametrize("bad", [0, -1, 11, 2.5, True, None])
def test_iterate_batches_bad_batch_size(bad: object) -> None:
    y = np.arange(10)
    with pytest.raises(GrowthError, match="batch_size"):
        iterate_batches(y, y, bad, seed=0)  # type: ignore[arg-type]


def test_iterate_batches_length_mismatch() -> None:
    with pytest.raises(GrowthError, match="same leading length"):
        iterate_batches(np.zeros((5, 2)), np.zeros(4), 2, seed=0)

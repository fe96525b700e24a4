"""Embedded datasets for growth experiments; nothing is ever downloaded.

The default task is MNIST-1D (Greydanus 2020, "Scaling down deep learning", arXiv 2011.14439):
ten 1-D "digit" templates of 12 points are padded, scaled, translated, sheared, corrupted with
correlated and i.i.d. noise and resampled to 40 points. It suits model growth because it is small
enough to train in seconds on a CPU yet hard enough that capacity matters: logistic regression
reaches only ~30-40% test accuracy, a small MLP clearly underfits, and wider/deeper models do
markedly better, so a grown model has room to improve on its parent. The data are generated
procedurally from the templates shipped inside the ``mnist1d`` package
(``mnist1d.data.make_dataset``); the package's download path (``get_dataset``) is never used.

We generate 12000 samples (1200 per class, shuffled) with a fixed seed and split them into a fixed
10000 train / 2000 test partition. Features are standardised per feature with train-set statistics.
Generation takes a few seconds, so the raw arrays are cached in memory and on disk as ``.npz``
under ``$MFGROW_CACHE_DIR`` (default ``~/.cache/mfgrow``; set it to the empty string to disable
the disk cache). Cache files are keyed by the generation parameters, written atomically, and a
corrupt or mismatched cache file is ignored and regenerated.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import operator
import os
import random
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from growth.errors import GrowthError

__all__ = ["DATASETS", "Dataset", "load_dataset", "iterate_batches"]

_CACHE_FORMAT = 1
_CACHE_ENV = "MFGROW_CACHE_DIR"


class Dataset(NamedTuple):
    """A classification dataset held in host memory (arrays are read-only).

    Attributes:
        name: registry name of the dataset.
        x_train: [n_train, d] float32 standardised features.
        y_train: [n_train] int32 labels in ``[0, num_classes)``.
        x_test: [n_test, d] float32 features, standardised with the train statistics.
        y_test: [n_test] int32 labels.
        num_classes: number of classes.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_dim(self) -> int:
        """Feature dimension ``d``."""
        return int(self.x_train.shape[1])


@dataclass(frozen=True)
class MNIST1DConfig:
    """Generation parameters of MNIST-1D; every field enters the disk-cache key.

    Attributes:
        num_samples: total samples generated (a multiple of 10: equal count per class).
        n_train: the first ``n_train`` (shuffled) samples form the train split, the rest the test.
        seed: seed passed to ``make_dataset`` (which seeds the global numpy/random RNGs).
    """

    num_samples: int = 12000
    n_train: int = 10000
    seed: int = 42


def _generate_mnist1d(cfg: MNIST1DConfig) -> tuple[np.ndarray, np.ndarray]:
    """Generate raw MNIST-1D offline.

    ``make_dataset`` seeds and consumes the *global* ``numpy.random`` and ``random`` states; they
    are saved and restored so that calling this has no effect on the caller's RNG streams.

    Returns:
        x: [num_samples, 40] float64 signals (globally centred by ``make_dataset``).
        y: [num_samples] int64 labels; the first ``n_train`` rows are the train split.
    """
    from mnist1d.data import get_dataset_args, make_dataset  # heavy import (matplotlib)

    args = get_dataset_args()
    args.num_samples = cfg.num_samples
    args.train_split = cfg.n_train / cfg.num_samples  # we re-split exactly below
    args.seed = cfg.seed
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        raw = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    x = np.concatenate([raw["x"], raw["x_test"]]).astype(np.float64)
    y = np.concatenate([raw["y"], raw["y_test"]]).astype(np.int64)
    return x, y


def _cache_dir() -> Path | None:
    """Disk-cache directory from ``$MFGROW_CACHE_DIR`` (empty string: disabled)."""
    env = os.environ.get(_CACHE_ENV)
    if env is None:
        return Path.home() / ".cache" / "mfgrow"
    return Path(env).expanduser() if env else None


def _cache_key(cfg: MNIST1DConfig) -> str:
    """Stable hash of everything that determines the generated arrays."""
    try:
        version = importlib.metadata.version("mnist1d")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - dependency
        version = "unknown"
    payload = {"format": _CACHE_FORMAT, "mnist1d": version, **asdict(cfg)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _read_cache(path: Path, cfg: MNIST1DConfig, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Return cached ``(x, y)`` if ``path`` holds a valid cache for ``cfg``; else ``None``."""
    try:
        with np.load(path, allow_pickle=False) as f:
            x, y, stored_key = f["x"], f["y"], str(f["key"])
    except Exception:  # missing, truncated, not a zip, wrong members: regenerate
        return None
    ok = (
        stored_key == key
        and x.dtype == np.float64
        and x.ndim == 2
        and x.shape[0] == cfg.num_samples
        and y.shape == (cfg.num_samples,)
        and np.issubdtype(y.dtype, np.integer)
        and bool(np.isfinite(x).all())
    )
    return (x, y.astype(np.int64)) if ok else None


def _write_cache(path: Path, x: np.ndarray, y: np.ndarray, key: str) -> None:
    """Atomically write the cache (temp file + ``os.replace``); failures are silently skipped."""
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, x=x, y=y, key=np.array(key))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
    except OSError:
        pass  # the cache is an optimisation only (e.g. read-only home directory)
    finally:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass


def _raw_mnist1d(cfg: MNIST1DConfig, cache_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """Raw ``(x [n, 40] float64, y [n] int64)`` from the disk cache, generating on a miss."""
    key = _cache_key(cfg)
    path = None
    if cache_dir is not None:
        path = cache_dir / f"mnist1d-n{cfg.num_samples}-s{cfg.seed}-{key}.npz"
        cached = _read_cache(path, cfg, key)
        if cached is not None:
            return cached
    x, y = _generate_mnist1d(cfg)
    if path is not None:
        _write_cache(path, x, y, key)
    return x, y


def _standardize(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature standardisation with train statistics.

    Args:
        x_train: [n_train, d]; x_test: [n_test, d].

    Returns:
        float32 arrays of the same shapes; train features have mean 0 and std 1.
    """
    mean = x_train.mean(axis=0, keepdims=True)
    std = x_train.std(axis=0, keepdims=True)
    std = np.where(std > 1e-12, std, 1.0)
    return (
        ((x_train - mean) / std).astype(np.float32),
        ((x_test - mean) / std).astype(np.float32),
    )


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


def _build_mnist1d(cfg: MNIST1DConfig, cache_dir: Path | None) -> Dataset:
    """Assemble the standardised MNIST-1D :class:`Dataset` for ``cfg``."""
    if cfg.num_samples % 10 or not 0 < cfg.n_train < cfg.num_samples:
        raise GrowthError(
            f"MNIST-1D config {cfg}: num_samples must be a multiple of 10 and "
            f"0 < n_train < num_samples"
        )
    x, y = _raw_mnist1d(cfg, cache_dir)
    x_train, x_test = _standardize(x[: cfg.n_train], x[cfg.n_train :])
    return Dataset(
        name="mnist1d",
        x_train=_readonly(x_train),
        y_train=_readonly(y[: cfg.n_train].astype(np.int32)),
        x_test=_readonly(x_test),
        y_test=_readonly(y[cfg.n_train :].astype(np.int32)),
        num_classes=10,
    )


@functools.cache  # in-memory cache (lru_cache without a bound)
def _load_mnist1d() -> Dataset:
    """MNIST-1D, 10000 train / 2000 test, 40 features, 10 classes (memoised)."""
    return _build_mnist1d(MNIST1DConfig(), _cache_dir())


@functools.cache
def _load_mnist1d_large() -> Dataset:
    """MNIST-1D, 60000 train / 4000 test: enough data that the demo's budgets do not overfit."""
    return _build_mnist1d(MNIST1DConfig(num_samples=64000, n_train=60000), _cache_dir())


DATASETS: dict[str, Callable[[], Dataset]] = {
    "mnist1d": _load_mnist1d,
    "mnist1d-large": _load_mnist1d_large,
}


def load_dataset(name: str = "mnist1d") -> Dataset:
    """Load a registered dataset (memoised; returned arrays are read-only, copy to modify).

    Args:
        name: a key of :data:`DATASETS`.

    Raises:
        GrowthError: ``name`` is not registered (the message lists the available names).
    """
    try:
        factory = DATASETS[name]
    except (KeyError, TypeError):
        raise GrowthError(
            f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}"
        ) from None
    return factory()


def iterate_batches(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int) -> BatchStream:
    """Infinite stream of shuffled minibatches.

    Each epoch draws a fresh permutation from ``np.random.default_rng(seed)`` and yields
    ``len(x) // batch_size`` batches (the last partial batch is dropped), so the stream is fully
    determined by ``seed``. Arguments are validated eagerly, when this function is called.

    Args:
        x: [n, ...] inputs.
        y: [n, ...] targets.
        batch_size: examples per batch, ``1 <= batch_size <= n``.
        seed: shuffling seed.

    Yields:
        ``(x_batch [batch_size, ...], y_batch [batch_size, ...])`` (fresh copies).

    Raises:
        GrowthError: mismatched lengths, empty data or a batch size outside ``1..n``.
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
        raise GrowthError(
            f"x and y must have the same leading length; got shapes {x.shape} and {y.shape}"
        )
    n = len(x)
    try:
        if isinstance(batch_size, bool):
            raise TypeError
        bs = operator.index(batch_size)
    except TypeError:
        raise GrowthError(f"batch_size must be an integer, got {batch_size!r}") from None
    if not 1 <= bs <= n:
        raise GrowthError(f"batch_size must be in 1..{n} (len(x)), got {bs}")
    return BatchStream(x, y, bs, seed)


class BatchStream:
    """The iterator :func:`iterate_batches` returns, with a resumable position: :meth:`state`
    (the RNG's bit-generator state, the epoch's permutation and the offset in it) and
    :meth:`set_state`, after which the stream goes on exactly as the saved one would have."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.rng = np.random.default_rng(seed)
        self.perm, self.start = np.zeros(len(x), np.int64), len(x)  # a new epoch first

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        if self.start + self.batch_size > len(self.x):
            self.perm, self.start = self.rng.permutation(len(self.x)), 0
        idx = self.perm[self.start : self.start + self.batch_size]
        self.start += self.batch_size
        return self.x[idx], self.y[idx]

    def state(self) -> dict:
        """``{"rng": bit-generator state (JSON), "perm": int array [n], "start": int}``."""
        return {"rng": self.rng.bit_generator.state, "perm": self.perm.copy(),
                "start": self.start}  # fmt: skip

    def set_state(self, state: dict) -> None:
        perm = np.asarray(state["perm"])
        if perm.shape != (len(self.x),) or not 0 <= state["start"] <= len(self.x):
            raise GrowthError(f"batch stream state does not fit {len(self.x)} examples")
        self.rng.bit_generator.state = state["rng"]
        self.perm, self.start = perm.astype(np.int64), int(state["start"])

"""A byte-level language-modelling task that needs no download: Python's own standard library.

The corpus is the ``.py`` source of the running interpreter's standard library
(``sysconfig.get_paths()["stdlib"]``), read as raw bytes (vocabulary 256):

- files: every ``*.py`` under the stdlib directory, excluding ``site-packages`` (not stdlib),
  the test suites (``test``/``tests`` directories) and the generated data tables
  (``encodings``, ``pydoc_data``); sorted by relative POSIX path, and taken in that order until
  ``max_bytes`` is reached (the file that crosses the cap is the last one);
- split: by file -- every ``test_every``-th file of that list is held out -- so held-out text is
  never seen in training, not even as a window overlapping a training file;
- documents are joined with a 0 byte (which never occurs in source text) as separator.

The corpus is a pure function of the interpreter's stdlib (the project pins Python 3.11), and
``ByteCorpus.fingerprint`` (SHA-256 of both splits) identifies it in run summaries.
Batches: :func:`lm_batches` draws ``[batch, seq_len + 1]`` windows at uniform random offsets of
the training stream from a seeded NumPy generator (inputs ``w[:, :-1]``, targets ``w[:, 1:]``);
:func:`eval_windows` gives a fixed set of evenly spaced held-out windows.
"""

from __future__ import annotations

import functools
import hashlib
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from growth.errors import GrowthError

__all__ = ["ByteCorpus", "eval_windows", "lm_batches", "load_corpus", "stdlib_files"]

VOCAB = 256
SEPARATOR = 0
_EXCLUDED_TOP = frozenset({"site-packages", "test", "encodings", "pydoc_data"})


LM_DATASET = "stdlib-bytes"  # the dataset name checkpoints of byte LMs record in meta.json

class ByteCorpus(NamedTuple):
    """Train and held-out byte streams (uint8, read-only) and the files they came from."""

    train: np.ndarray
    test: np.ndarray
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    fingerprint: str

    @property
    def vocab(self) -> int:
        return VOCAB


def stdlib_files(root: str | Path | None = None) -> list[Path]:
    """The corpus's candidate files: stdlib ``*.py`` sources sorted by relative path."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise GrowthError(f"standard library directory {str(root)!r} not found")
    out = []
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).parts
        if parts[0] in _EXCLUDED_TOP or "tests" in parts or "__pycache__" in parts:
            continue
        out.append(path)
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


@functools.lru_cache(maxsize=4)
def load_corpus(max_bytes: int = 4_000_000, test_every: int = 10) -> ByteCorpus:
    """Read the stdlib corpus (about ``max_bytes`` bytes), held out by file (1 in
    ``test_every``). Cached per process; the arrays are read-only."""
    if max_bytes < 1 or test_every < 2:
        raise GrowthError(
            f"load_corpus(max_bytes={max_bytes}, test_every={test_every}): expected "
            "max_bytes >= 1 and test_every >= 2"
        )
    root = Path(sysconfig.get_paths()["stdlib"])
    train, test, train_files, test_files = [], [], [], []
    total = 0
    for i, path in enumerate(stdlib_files(root)):
        data = path.read_bytes().replace(bytes([SEPARATOR]), b"")
        name = path.relative_to(root).as_posix()
        held_out = i % test_every == test_every - 1
        (test if held_out else train).append(data)
        (test_files if held_out else train_files).append(name)
        total += len(data)
        if total >= max_bytes:
            break
    if not test:
        raise GrowthError(f"corpus of {total} bytes has no held-out file; raise max_bytes")
    sep = bytes([SEPARATOR])
    streams = []
    for docs in (train, test):
        a = np.frombuffer(sep.join(docs), np.uint8).copy()
        a.setflags(write=False)
        streams.append(a)
    digest = hashlib.sha256(streams[0].tobytes() + sep + streams[1].tobytes()).hexdigest()
    return ByteCorpus(streams[0], streams[1], tuple(train_files), tuple(test_files), digest)


def lm_batches(tokens: np.ndarray, batch: int, seq_len: int, seed: int) -> Iterator[np.ndarray]:
    """Endless windows int32 ``[batch, seq_len + 1]`` at uniform random offsets (seeded)."""
    if batch < 1 or seq_len < 1 or len(tokens) < seq_len + 2:
        raise GrowthError(
            f"lm_batches(batch={batch}, seq_len={seq_len}): need positive sizes and a stream "
            f"longer than seq_len + 1 (got {len(tokens)} tokens)"
        )
    rng = np.random.default_rng(seed)
    offsets = np.arange(seq_len + 1)
    while True:
        starts = rng.integers(0, len(tokens) - seq_len, size=batch)
        yield tokens[starts[:, None] + offsets].astype(np.int32)


def eval_windows(tokens: np.ndarray, seq_len: int, n: int) -> np.ndarray:
    """``n`` fixed, evenly spaced windows int32 ``[n, seq_len + 1]`` of a held-out stream."""
    if n < 1 or len(tokens) < seq_len + 1:
        raise GrowthError(f"eval_windows: need n >= 1 and at least {seq_len + 1} tokens")
    starts = np.linspace(0, len(tokens) - seq_len - 1, n).astype(np.int64)
    return tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int32)

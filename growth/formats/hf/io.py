"""Shared I/O of Hugging Face checkpoint directories (``config.json`` + ``model.safetensors``
or shards listed in ``model.safetensors.index.json``; no torch): the config check, lazy tensors
read one at a time, the one checkpoint writer (sharded, atomic, non-weight files carried) and
growth-target parsing. Used by :mod:`growth.formats.hf.bert` (BERT),
:mod:`growth.formats.hf.decoder` (in memory) and :mod:`growth.formats.hf.stream` (streaming)."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from growth.errors import CheckpointError, GrowthError
from growth.formats import outdir
from growth.formats.stream import LazyTensor, read_header, safetensors_header, write_all

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
SUPPORTED = ("bert", "gpt2", "llama", "mistral", "qwen2")
DECODERS = ("gpt2", "llama", "mistral", "qwen2")  # handled by growth.formats.hf.decoder / stream
PRIVATE = "_mfgrow"  # config key holding import facts (prefix, buffers, dtypes); not exported
#: Hugging Face's ``save_pretrained`` default ``max_shard_size`` (decimal gigabytes)
DEFAULT_SHARD_SIZE = "5GB"
#: files never carried to a grown checkpoint: weights (of any framework) and their indexes
WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json",
                "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.gguf", "*.onnx")  # fmt: skip
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip


def read_config(path: Path) -> dict:
    """``config.json`` of a HF checkpoint directory (which must also hold ``model.safetensors``
    or ``model.safetensors.index.json``), checked to be a JSON object with a supported
    ``model_type``. An interrupted replace
    of ``path`` by this tool is completed or rolled back first (``outdir.recover``)."""
    outdir.recover(Path(path).absolute())
    if not path.is_dir():
        raise CheckpointError(f"HF checkpoint {str(path)!r}: no such directory")
    if not (path / CONFIG).is_file():
        raise CheckpointError(f"HF checkpoint {str(path)!r}: missing {CONFIG!r}")
    if not (path / WEIGHTS).is_file() and not (path / INDEX).is_file():
        raise CheckpointError(
            f"HF checkpoint {str(path)!r}: missing {WEIGHTS!r} (or {INDEX!r} with its shards); "
            ".bin / pickle checkpoints are not supported"
        )
    try:
        config = json.loads((path / CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path / CONFIG}: not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{path / CONFIG}: expected a JSON object")
    kind = config.get("model_type")
    if kind not in SUPPORTED:
        arch = config.get("architectures")
        raise GrowthError(
            f"HF checkpoint {str(path)!r}: unsupported architecture model_type={kind!r} "
            f"(architectures={arch}); supported: {list(SUPPORTED)} (BERT-family encoders; "
            "GPT-2, Llama, Mistral and Qwen2 decoders)"
        )
    return config


def _shard_files(path: Path) -> dict[str, str]:
    """tensor name -> file of the index (``{}`` for a single ``model.safetensors``)."""
    if (path / WEIGHTS).is_file():
        return {}
    try:
        weight_map = json.loads((path / INDEX).read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path / INDEX}: not a safetensors index ({e!r})") from e
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{path / INDEX}: 'weight_map' must be a non-empty object")
    for name, file in weight_map.items():
        if not isinstance(file, str) or Path(file).name != file:
            raise CheckpointError(f"{path / INDEX}: tensor {name!r} -> {file!r}: not a file name")
    return weight_map


class Tensors(Mapping[str, LazyTensor]):
    """The tensors of a HF checkpoint directory, lazily: names, shapes and dtypes from the
    safetensors headers; each tensor's data read (``pread``) only on ``np.asarray``, or copied
    byte for byte by the writer. Sharded checkpoints: every file of the index, each tensor where
    the index says. ``metadata``: the ``__metadata__`` of the (first) file. Close it (or use it
    as a context manager) to release the file descriptors."""

    def __init__(self, path: Path):
        self.path, self._fds, self._tensors = path, [], {}
        self.metadata: dict[str, str] = {}
        weight_map = _shard_files(path)
        try:
            for file in sorted(set(weight_map.values())) or [WEIGHTS]:
                self._add_file(path / file, weight_map)
        except BaseException:
            self.close()
            raise
        missing = sorted(set(weight_map) - set(self._tensors))
        if missing:
            raise CheckpointError(f"{path / INDEX}: tensors {missing[:5]} not in their shard")
        self._expect_digests(path)

    def _expect_digests(self, path: Path) -> None:
        """In a directory this tool wrote: check the JSON files now, and give every tensor its
        recorded SHA-256, which reading or copying it verifies."""
        marker = outdir.read_marker(path)
        outdir.verify_files(path, marker)
        if marker is None:
            return
        recorded = marker["tensors"]
        if set(recorded) != set(self._tensors):
            raise CheckpointError(
                f"{path}: holds tensors {sorted(set(self._tensors) ^ set(recorded))[:5]} that "
                "differ from the ones recorded at save"
            )
        for name, tensor in self._tensors.items():
            tensor.digest = recorded[name]

    def _add_file(self, file: Path, weight_map: dict[str, str]) -> None:
        try:
            fd = os.open(file, os.O_RDONLY)
        except OSError as e:
            raise CheckpointError(f"{file}: cannot open ({e.strerror})") from e
        self._fds.append(fd)
        try:
            base, header, metadata = read_header(fd)
        except CheckpointError as e:
            raise CheckpointError(f"{file}: {e}") from e
        self.metadata = self.metadata or metadata
        for name, entry in header.items():
            if weight_map and weight_map.get(name) != file.name:
                continue  # a stray copy: the index names another file
            try:
                self._tensors[name] = LazyTensor(fd, base, name, entry)
            except (CheckpointError, KeyError, TypeError, ValueError) as e:
                raise CheckpointError(f"{file}: tensor {name!r}: bad header entry ({e})") from e

    def __getitem__(self, name: str) -> LazyTensor:
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.pop())

    def __enter__(self) -> Tensors:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_tensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``(tensors, safetensors metadata)`` of a (single-file or sharded) checkpoint, in memory."""
    with Tensors(path) as lazy:
        return {k: np.asarray(v) for k, v in lazy.items()}, dict(lazy.metadata)


def parse_size(value: int | str, what: str = "shard_size") -> int:
    """Bytes of ``5000000``, ``"5GB"`` (decimal, as Hugging Face), ``"2GiB"``, ``"500MB"``."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        n = int(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(value))
        unit = m.group(2).upper() if m else None
        if unit not in _UNITS:
            raise GrowthError(
                f"{what}={value!r}: expected bytes or a size like '5GB', '500MB', '2GiB'"
            )
        n = int(float(m.group(1)) * _UNITS[unit])
    if n < 1:
        raise GrowthError(f"{what}={value!r}: must be positive")
    return n


class Pending(NamedTuple):
    """An output tensor computed when the writer reaches it: ``compute()`` returns an array of
    exactly ``shape`` and ``dtype``."""

    shape: tuple[int, ...]
    dtype: np.dtype
    compute: Callable[[], np.ndarray]


def _spec(x: Any) -> tuple[tuple[int, ...], np.dtype, int]:
    shape, dtype = tuple(x.shape), np.dtype(x.dtype)
    return shape, dtype, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def _shards(names: list[str], sizes: list[int], limit: int) -> list[list[str]]:
    """Greedy in order, as Hugging Face: a tensor opens a new shard when it would take the
    current one past ``limit`` (a tensor larger than ``limit`` gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, size in zip(names, sizes, strict=True):
        if shards[-1] and used + size > limit:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def _write_shard(
    file: Path, tensors: Mapping[str, Any], metadata: Mapping[str, str]
) -> dict[str, str]:
    """One safetensors file (fsynced): the header, then each tensor as it comes (a
    :class:`LazyTensor` is copied byte for byte, a :class:`Pending` computed, an array
    written). Returns each tensor's SHA-256."""
    digests = {}
    names = list(tensors)
    specs = [_spec(tensors[n]) for n in names]
    head = safetensors_header(names, [s[0] for s in specs], [s[1] for s in specs], metadata)
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        write_all(fd, head)
        for name, (shape, dtype, _) in zip(names, specs, strict=True):
            x = tensors[name]
            if isinstance(x, LazyTensor):
                digests[name] = outdir.tensor_digest(x)  # (verified if the source records one)
                x.copy_to(fd)
                continue
            arr = np.asarray(x.compute() if isinstance(x, Pending) else x)
            if arr.shape != shape or arr.dtype != dtype:
                raise CheckpointError(
                    f"tensor {name!r}: computed {arr.dtype}{list(arr.shape)}, header says "
                    f"{dtype}{list(shape)}"
                )
            write_all(fd, np.ascontiguousarray(arr).reshape(-1).view(np.uint8))
            digests[name] = outdir.tensor_digest(arr)
            del arr
        os.fsync(fd)
    finally:
        os.close(fd)
    return digests


def _carry_files(source: Path, target: Path) -> list[str]:
    """Copy every file and folder of ``source`` but ``config.json`` and weight files
    (:data:`WEIGHT_FILES`): tokenizer, generation config, model card, sentence-transformers
    modules... Returns the relative paths copied."""
    copied = []
    for item in sorted(source.rglob("*")):
        rel = item.relative_to(source)
        if item.is_dir() or rel.as_posix() == CONFIG or ".tmp-" in rel.as_posix():
            continue
        if any(fnmatch.fnmatch(item.name, p) for p in WEIGHT_FILES):
            continue
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(item, target / rel)
        copied.append(rel.as_posix())
    return copied


def resized_side_files(source: Path, hidden_size: int) -> dict[str, dict]:
    """JSON side files of ``source`` that state another hidden size (sentence-transformers'
    ``*/config.json`` with ``word_embedding_dimension``), with the new ``hidden_size``."""
    out = {}
    for file in sorted(source.glob("*/config.json")):
        try:
            data = json.loads(file.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("word_embedding_dimension", hidden_size) != (
            hidden_size
        ):
            rel = file.relative_to(source).as_posix()
            out[rel] = data | {"word_embedding_dimension": int(hidden_size)}
    return out


def write_checkpoint(
    path: str | os.PathLike,
    tensors: Mapping[str, Any],
    config: Mapping[str, Any],
    metadata: Mapping[str, str],
    *,
    overwrite: bool = False,
    shard_size: int | str = DEFAULT_SHARD_SIZE,
    source: str | os.PathLike | None = None,
    side_files: Mapping[str, Mapping] | None = None,
) -> Path:
    """Write a HF checkpoint directory: ``config.json``, the tensors (``model.safetensors``, or
    ``model-0000i-of-0000n.safetensors`` shards of at most ``shard_size`` bytes plus
    ``model.safetensors.index.json``), the non-weight files of ``source`` (tokenizer,
    generation config, ...) and ``side_files`` (relative path -> JSON, replacing a carried copy).

    tensors: name -> array, :class:`~growth.formats.stream.LazyTensor` (copied byte for byte)
    or :class:`Pending` (computed when its turn comes), written in this order; memory holds one
    tensor at a time. Written the safe way (``growth.formats.outdir``): a temporary sibling
    directory, files fsynced (mode per umask), the marker with every tensor's SHA-256 last,
    then a rename; ``path`` is replaced only with ``overwrite`` and only if this tool wrote it.
    """
    names = list(tensors)
    shards = _shards(names, [_spec(tensors[n])[2] for n in names], parse_size(shard_size))

    def fill(tmp: Path) -> tuple[dict[str, str], list[str]]:
        if source is not None:
            _carry_files(Path(source), tmp)
        files = [WEIGHTS] if len(shards) == 1 else [
            f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))
        ]  # fmt: skip
        digests: dict[str, str] = {}
        for file, group in zip(files, shards, strict=True):
            digests |= _write_shard(tmp / file, {n: tensors[n] for n in group}, metadata)
        checked = [CONFIG]
        if len(shards) > 1:
            index = {
                "metadata": {"total_size": sum(_spec(tensors[n])[2] for n in names)},
                "weight_map": {n: f for f, g in zip(files, shards, strict=True) for n in g},
            }
            index["weight_map"] = dict(sorted(index["weight_map"].items()))
            outdir.write_file(tmp / INDEX, json.dumps(index, indent=2) + "\n")
            checked.append(INDEX)
        for rel, data in (side_files or {}).items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            outdir.write_file(tmp / rel, json.dumps(dict(data), indent=2) + "\n")
        outdir.write_file(tmp / CONFIG, json.dumps(dict(config), indent=2) + "\n")
        return digests, checked

    return outdir.write_directory(path, fill, kind="hf", overwrite=overwrite)


def parse_growth_targets(spec_sizes: Mapping[str, int], value: Any, what: str) -> dict[str, int]:
    """``{space: new size}`` from a dict (as is), a factor (``2`` -> ``"x2"``: every space) or a
    ``"x2"`` / ``"d=768,heads=x2"`` string (``growth.spec.parse_targets``)."""
    if value is None or isinstance(value, Mapping):
        return dict(value or {})
    from growth.spec import parse_targets

    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = f"x{value}"
    return parse_targets(str(value), spec_sizes, what)


def refuse_unused(path: Path, tensors: Mapping[str, Any], used: set[str], supported: str) -> None:
    """GrowthError naming (up to five of) the tensors an importer did not consume."""
    extra = sorted(set(tensors) - used)
    if extra:
        raise GrowthError(
            f"HF checkpoint {str(path)!r}: unsupported tensors {extra[:5]}"
            f"{' ...' if len(extra) > 5 else ''} ({supported})"
        )


_LAYER_INDEX = re.compile(r"\.\d+\.")


def restore_dtypes(
    tensors: Mapping[str, np.ndarray], recorded: Mapping[str, str], layers_moved: bool
) -> dict:
    """Cast each exported tensor back to the dtype its name had at import (``recorded``), so a
    checkpoint of mixed dtypes keeps them although its layers were stacked (and promoted) for
    growth. After depth growth (``layers_moved``) a layer's index no longer names its source,
    so per-layer tensors keep their stack's (promoted, lossless) dtype."""
    out = {}
    for name, x in tensors.items():
        dtype = None if layers_moved and _LAYER_INDEX.search(name) else recorded.get(name)
        out[name] = x if dtype is None else x.astype(dtype, order="C", copy=False)
    return out


def numpy_tree(tree: Any) -> Any:
    """Nested dict of arrays -> the same nesting of (copied, C-contiguous) numpy arrays."""
    if isinstance(tree, Mapping):
        return {k: numpy_tree(v) for k, v in tree.items()}
    return np.array(tree)

"""Growth of checkpoints larger than memory: leaf by leaf, safetensors file to safetensors file.

The plan needs only the shapes and, per leaf, the spread of its entries (the noise scale) and a
finiteness check, so it reads the source one tensor at a time. The output header (names, dtypes,
shapes, offsets) is known from the plan before any tensor is grown, so the output file is
written front to back: header, then each grown tensor as soon as it is computed. Peak memory is
therefore about the largest leaf's input plus its output (plus XLA's temporaries for that
leaf), whatever the model size. The file is written to a temporary sibling and renamed into
place, so a failed growth never leaves a loadable output. The result equals in-memory growth of
the same tensors bit for bit (noise is keyed by each leaf's position in the tree).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from growth.engine import GrowthReport, apply_leaves, plan_growth
from growth.errors import CheckpointError
from growth.methods import Method
from growth.spec import NeuronSpec

_DTYPES = {"float32": "F32", "float16": "F16", "float64": "F64", "bfloat16": "BF16",
           "int32": "I32", "int64": "I64"}  # fmt: skip


def _numpy_dtype(code: str, name: str) -> np.dtype:
    for dt, c in _DTYPES.items():
        if c == code:
            return np.dtype(dt) if dt != "bfloat16" else np.dtype(jnp.bfloat16)
    raise CheckpointError(f"tensor {name!r}: unsupported safetensors dtype {code!r}")


class LazyTensor:
    """A tensor of a safetensors file: shape/dtype now, data read (not memory-mapped) on
    ``np.asarray``, so it leaves no pages behind once dropped."""

    def __init__(self, fd: int, base: int, name: str, entry: dict):
        self.name, self._fd = name, fd
        self.shape = tuple(entry["shape"])
        self.dtype = _numpy_dtype(entry["dtype"], name)
        start, end = entry["data_offsets"]
        self._start, self._size = base + start, end - start

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        buf = os.pread(self._fd, self._size, self._start)
        if len(buf) != self._size:
            raise CheckpointError(f"tensor {self.name!r}: file truncated")
        x = np.frombuffer(buf, self.dtype).reshape(self.shape)
        return x if dtype is None else x.astype(dtype)


def read_header(fd: int) -> tuple[int, dict]:
    """(offset of the data section, header dict without ``__metadata__``) of a safetensors file."""
    raw = os.pread(fd, 8, 0)
    if len(raw) != 8:
        raise CheckpointError("not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", raw)
    try:
        header = json.loads(os.pread(fd, n, 8))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"not a safetensors file (bad header: {e})") from e
    header.pop("__metadata__", None)
    return 8 + n, header


def _header(names: list[str], shapes: list[tuple], dtypes: list[np.dtype]) -> bytes:
    meta, offset = {}, 0
    for name, shape, dt in zip(names, shapes, dtypes, strict=True):
        size = int(np.prod(shape)) * np.dtype(dt).itemsize
        meta[name] = {"dtype": _DTYPES[np.dtype(dt).name], "shape": list(shape),
                      "data_offsets": [offset, offset + size]}  # fmt: skip
        offset += size
    text = json.dumps(meta, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def grow_safetensors(
    source: str | os.PathLike,
    out: str | os.PathLike,
    spec: NeuronSpec,
    *,
    width: dict[str, int] | None = None,
    depth: dict[str, int] | None = None,
    method: str | Method = "exact",
    key: int = 0,
) -> GrowthReport:
    """Grow the flat tensor dict in ``source`` (a ``.safetensors`` file) into ``out``.

    ``spec`` patterns match the tensor names (one path component each, e.g. ``"w1"``).
    """
    source, out = Path(source), Path(out)
    if not source.is_file():
        raise CheckpointError(f"{str(source)!r}: no such safetensors file")
    if out.exists():
        raise CheckpointError(f"{str(out)!r} exists; refusing to overwrite it")
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    fd = os.open(source, os.O_RDONLY)
    try:
        base, header = read_header(fd)
        names = sorted(header)
        lazy = {n: LazyTensor(fd, base, n, header[n]) for n in names}
        plan = plan_growth(lazy, spec, width=width, depth=depth, method=method, key=key)
        after = plan.report.sizes_after
        shapes = [
            tuple(after[a.space] if a else n for a, n in zip(s.axes, lazy[name].shape, strict=True))
            for name, s in zip(names, plan.resolved.leaves, strict=True)
        ]
        dtypes = [lazy[n].dtype for n in names]
        with open(tmp, "wb") as w:
            w.write(_header(names, shapes, dtypes))
            for j, name in enumerate(names):
                (y,) = apply_leaves(plan, [np.asarray(lazy[name])], j, keep_sharding=False)
                w.write(np.ascontiguousarray(np.asarray(y, dtypes[j])).tobytes())
                del y
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    return plan.report

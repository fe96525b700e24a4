"""Growth of checkpoints larger than memory: leaf by leaf, from a safetensors file or a
``growth.formats.checkpoint`` directory (orbax) into a safetensors file or a checkpoint directory.

The plan needs only the shapes and, per leaf, the spread of its entries (the noise scale) and a
finiteness check, so it reads the source one tensor at a time (safetensors: ``pread`` of the
tensor's bytes; checkpoint: shapes and dtypes from orbax's metadata, then a tensorstore read
of that one array with the spec orbax itself reads it with). The output layout (names, dtypes,
shapes) is known from the plan before any tensor is grown, and each grown tensor is written as
soon as it is computed:

- safetensors: header first, then the tensors front to back;
- checkpoint: one orbax save whose type handler computes and writes the grown leaves one after
  the other (each write awaited before the next leaf is computed); the directory has exactly
  the layout of :func:`growth.formats.checkpoint.save_checkpoint` and loads with
  ``load_checkpoint``.

Peak memory is therefore about the largest leaf's input plus its output (plus XLA's temporaries
for that leaf and the runtime's baseline), whatever the model size. Output goes to a temporary
sibling renamed into place, so a failed growth never leaves a loadable output. The result equals
in-memory growth (``growth.grow`` of the loaded source) bit for bit: noise is keyed by each
leaf's position in the tree.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from etils import epath

from growth.engine import GrowthReport, apply_leaves, grown_nbytes, plan_growth
from growth.errors import CheckpointError, GrowthError, SpecError
from growth.formats import outdir, size_bound
from growth.formats.checkpoint import checkpoint_digests, read_checkpoint_info, write_checkpoint
from growth.methods import DEFAULT_EXTERNAL_METHOD, Method
from growth.spec import NeuronSpec, path_str

_DTYPES = {"float32": "F32", "float16": "F16", "float64": "F64", "bfloat16": "BF16",
           "int32": "I32", "int64": "I64", "int16": "I16", "int8": "I8", "uint8": "U8",
           "bool": "BOOL"}  # fmt: skip


def _numpy_dtype(code: str, name: str) -> np.dtype:
    for dt, c in _DTYPES.items():
        if c == code:
            return np.dtype(dt) if dt != "bfloat16" else np.dtype(jnp.bfloat16)
    raise CheckpointError(f"tensor {name!r}: unsupported safetensors dtype {code!r}")


# ----------------------------------------------------------------------------------- sources


class LazyTensor:
    """A tensor of a safetensors file: shape/dtype now, data read (not memory-mapped) on
    ``np.asarray``, so it leaves no pages behind once dropped."""

    def __init__(self, fd: int, base: int, name: str, entry: dict):
        self.name, self._fd = name, fd
        self.digest: str | None = None  # SHA-256 recorded at save, checked on every read
        self.shape = tuple(entry["shape"])
        self.dtype = _numpy_dtype(entry["dtype"], name)
        start, end = entry["data_offsets"]
        self._start, self._size = base + start, end - start

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        buf = os.pread(self._fd, self._size, self._start)
        if len(buf) != self._size:
            raise CheckpointError(f"tensor {self.name!r}: file truncated")
        x = np.frombuffer(buf, self.dtype).reshape(self.shape)
        outdir.verify_tensor(x, self.digest, repr(self.name), "safetensors data")
        return x if dtype is None else x.astype(dtype)

    @property
    def nbytes(self) -> int:
        return self._size

    def copy_to(self, out_fd: int) -> None:
        """Append this tensor's bytes, as stored, to ``out_fd`` at its file position
        (``copy_file_range``: kernel-side, no decode, no user-space buffer; falls back to
        ``pread`` / ``write`` in 64 MiB chunks where the kernel refuses)."""
        done = 0
        while done < self._size:
            n = self._size - done
            try:
                step = os.copy_file_range(self._fd, out_fd, n, self._start + done)
            except OSError:
                step = write_all(out_fd, os.pread(self._fd, min(n, 1 << 26), self._start + done))
            if step == 0:
                raise CheckpointError(f"tensor {self.name!r}: file truncated")
            done += step


def same_bytes(a: LazyTensor, b: LazyTensor, chunk: int = 1 << 26) -> bool:
    """Whether two stored tensors have the same dtype, shape and bytes (read in ``chunk``-byte
    pieces, so comparing two large tensors costs O(chunk) memory)."""
    if (a.dtype, a.shape, a.nbytes) != (b.dtype, b.shape, b.nbytes):
        return False
    for off in range(0, a.nbytes, chunk):
        n = min(chunk, a.nbytes - off)
        if os.pread(a._fd, n, a._start + off) != os.pread(b._fd, n, b._start + off):
            return False
    return True


def write_all(fd: int, data: Any) -> int:
    """Write all of ``data`` (bytes or a C-contiguous array) to ``fd``; returns its length."""
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        done += os.write(fd, view[done:])
    return done


class CheckpointLeaf:
    """A leaf of a ``growth.formats.checkpoint`` directory: shape/dtype now (from ``tree.json``,
    checked
    against orbax's metadata), data read alone on ``np.asarray`` through tensorstore with the
    spec orbax itself reads it with (``ocp.type_handlers.get_json_tspec_read``), in a fresh
    tensorstore context that is dropped afterwards (no cache grows with the number of leaves).
    Reading a leaf costs O(its size), not O(tree). Zero-size leaves, which the format does not
    store, come back as zeros."""

    def __init__(
        self, info: dict | None, where: str, shape: tuple[int, ...], dtype: np.dtype,
        digest: str | None = None,
    ):  # fmt: skip
        self._info, self.name = info, where  # info: ParamInfo fields but the context
        self.shape, self.dtype, self._digest = shape, dtype, digest

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        if self._info is None:
            x = np.zeros(self.shape, self.dtype)
        else:
            ocdbt = self._info["is_ocdbt_checkpoint"]
            context = ocp.type_handlers.get_ts_context(use_ocdbt=ocdbt)
            info = ocp.type_handlers.ParamInfo(**self._info, ts_context=context)
            try:
                spec = ocp.type_handlers.get_json_tspec_read(info, use_ocdbt=ocdbt)
                store = ts.open(ts.Spec(spec), open=True, context=context).result()
                x = np.asarray(store.read().result())
            except Exception as e:
                raise CheckpointError(
                    f"{self.name}: reading {info.path} failed: {type(e).__name__}: {e}"
                ) from e
            finally:
                del context, info
            if x.shape != self.shape or x.dtype != self.dtype:
                raise CheckpointError(
                    f"{self.name}: params/ holds {x.dtype}{list(x.shape)}, "
                    f"tree.json says {self.dtype}{list(self.shape)}"
                )
            outdir.verify_tensor(x, self._digest, self.name, "params/")
        return x if dtype is None else x.astype(dtype)


def read_header(fd: int) -> tuple[int, dict, dict]:
    """``(offset of the data section, header without __metadata__, __metadata__ or {})`` of a
    safetensors file."""
    raw = os.pread(fd, 8, 0)
    if len(raw) != 8:
        raise CheckpointError("not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", raw)
    if 8 + n > os.fstat(fd).st_size:
        raise CheckpointError(f"not a safetensors file (header length {n} exceeds the file)")
    try:
        header = json.loads(os.pread(fd, n, 8))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"not a safetensors file (bad header: {e})") from e
    if not isinstance(header, dict):
        raise CheckpointError("not a safetensors file (header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    return 8 + n, header, metadata


@dataclass
class _Source:
    tree: Any  # nested dicts of lazy leaves (LazyTensor / CheckpointLeaf)
    meta: dict | None
    close: Callable[[], None]


def _open_safetensors(path: Path) -> _Source:
    fd = os.open(path, os.O_RDONLY)
    try:
        base, header, _ = read_header(fd)
        tree = {n: LazyTensor(fd, base, n, header[n]) for n in sorted(header)}
    except CheckpointError as e:
        os.close(fd)
        raise CheckpointError(f"{str(path)!r}: {e}") from e
    except BaseException:
        os.close(fd)
        raise
    return _Source(tree, None, lambda: os.close(fd))


def _lazy_tree(
    skel: Any, meta: Any, make_info: Callable, ckpt: Path, digests: dict, keys: tuple = ()
):
    """Rebuild the saved nested dict (true key types) with :class:`CheckpointLeaf` leaves;
    ``meta`` is orbax's metadata tree of ``params/``, ``make_info(name)`` a leaf's ParamInfo
    fields, ``digests`` the recorded checksums by leaf name."""
    where = "params" + "".join(f"[{k!r}]" for k in keys)
    if not isinstance(skel, dict):
        raise CheckpointError(f"checkpoint {ckpt}: {where}: malformed tree.json entry {skel!r}")
    if "dict" in skel:
        meta = meta if isinstance(meta, Mapping) else {}
        return {
            k: _lazy_tree(child, meta.get(str(k)), make_info, ckpt, digests, (*keys, k))
            for k, child in skel["dict"]
        }
    try:
        shape, dtype, stored = tuple(skel["shape"]), np.dtype(skel["dtype"]), skel["stored"]
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {ckpt}: {where}: malformed tree.json entry") from e
    info = None
    if stored:
        if meta is None or not hasattr(meta, "shape") or not hasattr(meta, "name"):
            raise CheckpointError(f"checkpoint {ckpt}: {where}: array missing from params/")
        if tuple(meta.shape) != shape or np.dtype(meta.dtype) != dtype:
            raise CheckpointError(
                f"checkpoint {ckpt}: {where}: params/ holds {np.dtype(meta.dtype)}"
                f"{list(meta.shape)}, tree.json says {dtype}{list(shape)}"
            )
        info = make_info(meta.name)
    return CheckpointLeaf(info, f"checkpoint {ckpt}: {where}", shape, dtype, digests.get(where))


def _open_checkpoint(path: Path) -> _Source:
    ckpt, skeleton, meta = read_checkpoint_info(path)
    params_dir = ckpt / "params"
    tree_meta, use_zarr3, use_ocdbt = None, False, True
    if any(True for _ in params_dir.iterdir()):
        try:
            with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
                item = ckptr.metadata(params_dir).item_metadata
            tree_meta, use_zarr3 = item.tree, bool(item.use_zarr3)
            use_ocdbt = ocp.type_handlers.is_ocdbt_checkpoint(epath.Path(params_dir))
        except Exception as e:
            raise CheckpointError(
                f"checkpoint {ckpt}: cannot read orbax metadata of params/: {type(e).__name__}: {e}"
            ) from e

    def make_info(name: str) -> dict:
        return dict(name=name, parent_dir=epath.Path(params_dir), is_ocdbt_checkpoint=use_ocdbt,
                    use_zarr3=use_zarr3, value_typestr="np.ndarray")  # fmt: skip

    tree = _lazy_tree(skeleton, tree_meta, make_info, ckpt, checkpoint_digests(ckpt))
    return _Source(tree, meta, lambda: None)


def _open(source: Path) -> _Source:
    if source.is_file():
        return _open_safetensors(source)
    if source.is_dir():
        return _open_checkpoint(source)
    raise CheckpointError(f"{str(source)!r}: no such safetensors file or checkpoint directory")


# ------------------------------------------------------------------------------------- sinks


def safetensors_header(
    names: list[str], shapes: list[tuple], dtypes: list[np.dtype], metadata: dict | None = None
) -> bytes:
    """A safetensors header (8-byte length + JSON, space-padded to 8 bytes) for tensors
    stored back to back in this order; ``metadata`` becomes ``__metadata__``."""
    meta: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, shape, dt in zip(names, shapes, dtypes, strict=True):
        size = int(np.prod(shape)) * np.dtype(dt).itemsize
        meta[name] = {"dtype": _DTYPES[np.dtype(dt).name], "shape": list(shape),
                      "data_offsets": [offset, offset + size]}  # fmt: skip
        offset += size
    text = json.dumps(meta, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def _write_safetensors(out: Path, names, shapes, dtypes, grown: Callable[[int], np.ndarray]):
    for name, dt in zip(names, dtypes, strict=True):
        if np.dtype(dt).name not in _DTYPES:
            raise CheckpointError(f"tensor {name!r}: dtype {dt} cannot be written to safetensors")
    tmp = outdir.temp_path(out)
    try:
        with open(tmp, "wb") as w:
            w.write(safetensors_header(names, shapes, dtypes))
            for j in range(len(names)):
                w.write(np.ascontiguousarray(grown(j)).tobytes())
            w.flush()
            os.fsync(w.fileno())
        os.link(tmp, out)  # fails if out appeared meanwhile: never replaces anything
        tmp.unlink()
        outdir.fsync_dir(out.parent)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise CheckpointError(f"writing {out} failed: {outdir.describe_os_error(e)}") from e
        raise


class _Grown:
    """A grown leaf not computed yet: ``compute()`` returns it (numpy, final dtype)."""

    def __init__(self, compute: Callable[[], np.ndarray]):
        self.compute = compute


class _GrownHandler(ocp.type_handlers.NumpyHandler):
    """Orbax handler writing :class:`_Grown` leaves as plain numpy arrays (same on-disk format
    and ``np.ndarray`` type string, so the standard handler restores them), one at a time: a
    leaf is computed only after the previous one's write has completed."""

    def __init__(self):
        super().__init__(deepcopy_host_arrays=False)

    async def serialize(self, values, infos, args=None):
        args = args or [ocp.type_handlers.SaveArgs()] * len(values)

        async def one_by_one():
            for value, info, arg in zip(values, infos, args, strict=True):
                x = value.compute()
                await self._background_serialize([x], [info], [arg])
                del x

        return [ocp.future.CommitFutureAwaitingContractedSignals(one_by_one(), name="grown")]


def _orbax_save_grown(directory: Path, tree: dict | None) -> None:
    if tree is None:  # nothing stored (all leaves zero-size)
        directory.mkdir()
        return
    registry = ocp.type_handlers.create_type_handler_registry(
        (_Grown, _GrownHandler()),
        (jax.Array, ocp.type_handlers.get_type_handler(jax.Array)),  # unused; avoids a warning
    )
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler(type_handler_registry=registry)) as ck:
        ck.save(directory, args=ocp.args.PyTreeSave(tree))


def _checkpoint_layout(tree: Any, index: dict, shapes, dtypes, grown, keys: tuple = ()):
    """(orbax tree of :class:`_Grown` leaves or None, tree.json skeleton) of the grown tree, in
    the source's key order with its key types; ``index`` maps a leaf's key path to its
    position in tree order."""
    if isinstance(tree, Mapping):
        items, out = [], {}
        for k, child in tree.items():
            sub, skel = _checkpoint_layout(child, index, shapes, dtypes, grown, (*keys, k))
            items.append([k, skel])
            if sub is not None:
                out[str(k)] = sub
        return (out or None), {"dict": items}
    j = index[keys]
    size = int(np.prod(shapes[j]))
    skel = {"shape": list(shapes[j]), "dtype": np.dtype(dtypes[j]).name, "stored": size > 0}
    return (_Grown(lambda: grown(j)) if size > 0 else None), skel


# -------------------------------------------------------------------------------------- growth


def grow_stream(
    source: str | os.PathLike,
    out: str | os.PathLike,
    spec: NeuronSpec,
    *,
    width: dict[str, int] | None = None,
    depth: dict[str, int] | None = None,
    method: str | Method = DEFAULT_EXTERNAL_METHOD,
    key: int = 0,
    meta: dict | None = None,
    out_format: str | None = None,
    max_bytes: int | None = None,
) -> GrowthReport:
    """Grow ``source`` into ``out`` one leaf at a time.

    source: a ``.safetensors`` file (a flat dict of tensors) or a ``growth.formats.checkpoint``
        directory (nested dicts, int keys kept).
    out: a path ending in ``.safetensors`` (tensors named by their tree path, ``"a/b/0"``,
        which the same ``spec`` matches again) or a checkpoint directory (the source's
        structure; ``meta`` is its ``meta.json``, by default ``{"source", "source_meta",
        "growth"}``). Existing outputs are never overwritten.
    out_format: ``"safetensors"`` or ``"checkpoint"``; by default from ``out``'s suffix.
    max_bytes: bound on the grown size (default: the free disk at ``out``), checked before
        anything is computed.

    ``spec`` patterns match the tree paths of the source (for safetensors, the tensor names).
    The grown tensors equal ``growth.grow(loaded source, spec, ...)`` bit for bit.
    Raises CheckpointError naming the path for a missing/invalid source or an existing ``out``,
    SpecError (prefixed with the source path) when the spec does not fit the source, and
    GrowthError for a non-finite leaf, before anything is written.
    """
    source, out = Path(source).expanduser().absolute(), Path(out).expanduser().absolute()
    out_format = out_format or ("safetensors" if out.suffix == ".safetensors" else "checkpoint")
    if out_format not in ("safetensors", "checkpoint"):
        raise ValueError(f"out_format={out_format!r}: expected 'safetensors' or 'checkpoint'")
    outdir.check_out(out, overwrite=False, protect=[source])
    src = _open(source)
    try:
        try:
            nbytes = grown_nbytes(spec.resolve(src.tree), src.tree, width or {}, depth or {})
            size_bound.check_size(nbytes, out, max_bytes=max_bytes, in_memory=False)
            plan = plan_growth(src.tree, spec, width=width, depth=depth, method=method, key=key)
        except SpecError as e:
            raise SpecError(f"{source}: {e}") from e
        if plan.fitted or plan.report.unit_balance:
            what = "draws from a measure fitted to" if plan.fitted else "balances units over"
            raise GrowthError(
                f"method {plan.method.name!r} {what} all of a space's leaves at once; it "
                "cannot be streamed leaf by leaf (use growth.grow)"
            )
        flat, _ = jax.tree_util.tree_flatten_with_path(src.tree)
        leaves = [leaf for _, leaf in flat]
        after = plan.report.sizes_after
        shapes = [
            tuple(after[a.space] if a else n for a, n in zip(s.axes, x.shape, strict=True))
            for x, s in zip(leaves, plan.resolved.leaves, strict=True)
        ]
        dtypes = [np.dtype(x.dtype) for x in leaves]

        digests: dict[str, str] = {}

        def grown(j: int) -> np.ndarray:
            (y,) = apply_leaves(plan, [np.asarray(leaves[j])], j, keep_sharding=False)
            y = np.asarray(y, dtypes[j])
            digests["params" + "".join(f"[{k.key!r}]" for k in flat[j][0])] = (
                outdir.tensor_digest(y)
            )
            return y

        if out_format == "safetensors":
            names = [path_str(p) for p, _ in flat]
            _write_safetensors(out, names, shapes, dtypes, grown)
        else:
            index = {tuple(k.key for k in p): j for j, (p, _) in enumerate(flat)}
            tree, skeleton = _checkpoint_layout(src.tree, index, shapes, dtypes, grown)
            if meta is None:
                meta = {"source": str(source), "source_meta": src.meta,
                        "growth": plan.report.to_dict()}  # fmt: skip
            write = lambda d: _orbax_save_grown(d, tree)  # noqa: E731
            write_checkpoint(out, skeleton, meta, write, digests)
    finally:
        src.close()
    return plan.report

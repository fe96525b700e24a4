"""Atomic checkpoints: an orbax array store plus JSON metadata.

Layout of a checkpoint directory ``<path>``::

    params/     orbax ``StandardCheckpointer`` save of the parameter pytree (nested dicts)
    tree.json   exact key structure (int vs str keys) and shape/dtype of every leaf
    meta.json   caller's JSON metadata (model family, config, training info, ...)
    COMPLETE    format line; a directory without it is rejected by ``load_checkpoint``
    mfgrow-output.json  written last (``growth.formats.outdir``): marks the directory as written
                by this tool (only such directories are ever overwritten) and records the
                SHA-256 of every leaf, of tree.json and of meta.json, verified at load

Keys: orbax stringifies dict keys on restore, so int keys are saved as ``str(key)`` inside
``params/`` and the true key types are recorded in ``tree.json``; ``load_checkpoint`` restores
them, so ``{0: ...}`` round-trips as ``{0: ...}``. A dict holding both ``1`` and ``"1"`` is
rejected. Leaves are converted with ``np.asarray`` before saving (so no device sharding is
stored and a GPU checkpoint loads on a CPU-only host); zero-size arrays, which orbax refuses,
live only in ``tree.json``. Loaded leaves are always **numpy** arrays with the saved dtype
(bfloat16 via ``ml_dtypes``) and shape; mappings come back as plain ``dict``.

Multi-host: a leaf that is a ``jax.Array`` spanning other processes' devices (not fully
addressable) is saved as it is, each process writing its own shards through orbax; the save is
then a collective: every process calls :func:`save_checkpoint` with the same path and tree
(process 0 alone writes the JSON files and renames; the others wait for its outcome and raise
the same error). It loads anywhere as numpy, whatever the saving topology. Trees of numpy or
fully addressable arrays are saved by the calling process alone, as usual.

Atomicity (``growth.formats.outdir``): everything is written into a sibling
``<path>.tmp-<pid>-<random>`` and renamed into place; on any error the temporary directory is
removed. Overwriting replaces only a checkpoint this tool wrote, never a source or the current
directory; a replace interrupted between its two renames is completed or rolled back by the next
save or load of ``<path>``, which also removes the debris of killed runs.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import ml_dtypes  # noqa: F401  (registers bfloat16 & co. with numpy, for dtype names)
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from growth.errors import CheckpointError, GrowthError
from growth.formats import outdir

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint_info",
    "checkpoint_digests",
    "write_checkpoint",
]

PyTree = Any
_FORMAT = 1
_PARAMS, _TREE, _META, _COMPLETE = "params", "tree.json", "meta.json", "COMPLETE"
_BAD_KINDS = frozenset("OSUMm")  # object, bytes, str, datetime, timedelta


def _fmt(keys: tuple) -> str:
    return "params" + "".join(f"[{k!r}]" for k in keys)


def _encode(tree: Any, digests: dict[str, str], keys: tuple = ()) -> tuple[Any, Any]:
    """Split a nested-dict pytree into an orbax tree (str keys, non-empty leaves) and a skeleton;
    ``digests[name]`` receives the SHA-256 of each leaf held by this process (not of a leaf
    sharded across processes), ``name`` as in error messages (``params['a'][0]``).

    Returns:
        ``(orbax_tree, skeleton)``; ``orbax_tree`` is ``None`` where nothing needs storing.
        Skeleton: ``{"dict": [[key, child], ...]}`` or ``{"shape": [...], "dtype": str,
        "stored": bool}`` per leaf.
    """
    if isinstance(tree, Mapping):
        items, out, seen = [], {}, {}
        for key, child in tree.items():
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise CheckpointError(f"{_fmt(keys)}: dict keys must be str or int, got {key!r}")
            skey = str(key)
            if skey in seen:
                raise CheckpointError(
                    f"{_fmt(keys)}: keys {seen[skey]!r} and {key!r} collide when stringified"
                )
            seen[skey] = key
            sub, skel = _encode(child, digests, (*keys, key))
            items.append([key, skel])
            if sub is not None:
                out[skey] = sub
        return (out or None), {"dict": items}
    if tree is None or isinstance(tree, (list, tuple, str, bytes)):
        raise CheckpointError(
            f"{_fmt(keys)}: expected a nested dict of arrays, got {type(tree).__name__}"
        )
    if isinstance(tree, jax.Array) and not tree.is_fully_addressable:
        arr = tree  # other processes hold some shards: orbax writes each process's own
    else:
        try:
            arr = np.asarray(tree)
        except Exception as e:
            raise CheckpointError(
                f"{_fmt(keys)}: cannot convert {type(tree).__name__} to an array: {e}"
            ) from e
    dtype = np.dtype(arr.dtype)
    if dtype.kind in _BAD_KINDS or dtype.fields is not None:
        raise CheckpointError(f"{_fmt(keys)}: unsupported dtype {dtype}")
    if isinstance(arr, np.ndarray):
        digests[_fmt(keys)] = outdir.tensor_digest(arr)
    skel = {"shape": list(arr.shape), "dtype": dtype.name, "stored": arr.size > 0}
    return (arr if arr.size > 0 else None), skel


def _decode(skel: Any, stored: Any, digests: Mapping[str, str], keys: tuple = ()) -> Any:
    """Rebuild the saved pytree from its skeleton and the orbax-restored tree (str keys),
    checking each leaf against its recorded SHA-256 (``digests``, by name)."""
    if not isinstance(skel, dict):
        raise CheckpointError(f"{_fmt(keys)}: malformed tree.json entry {skel!r}")
    if "dict" in skel:
        stored = {} if stored is None else stored
        if not isinstance(stored, Mapping):
            raise CheckpointError(f"{_fmt(keys)}: expected a dict in params/, got {type(stored)}")
        return {
            k: _decode(child, stored.get(str(k)), digests, (*keys, k)) for k, child in skel["dict"]
        }
    shape, dtype = tuple(skel["shape"]), np.dtype(skel["dtype"])
    if not skel["stored"]:
        return np.zeros(shape, dtype)
    if stored is None:
        raise CheckpointError(f"{_fmt(keys)}: array missing from params/")
    arr = np.asarray(stored)
    if arr.shape != shape or arr.dtype != dtype:
        raise CheckpointError(
            f"{_fmt(keys)}: params/ holds {arr.dtype}{list(arr.shape)}, "
            f"tree.json says {dtype}{list(shape)}"
        )
    outdir.verify_tensor(arr, digests.get(_fmt(keys)), _fmt(keys), "params/")
    return arr


def _check_meta_keys(obj: Any, where: str = "meta") -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise CheckpointError(f"{where}: JSON object keys must be str, got {k!r}")
            _check_meta_keys(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_meta_keys(v, f"{where}[{i}]")


def _dump_meta(meta: dict) -> str:
    """Serialise ``meta`` (NaN/inf allowed, as Python's json writes them; tuples -> lists)."""
    if not isinstance(meta, dict):
        raise CheckpointError(f"meta must be a dict, got {type(meta).__name__}")
    _check_meta_keys(meta)
    try:
        return json.dumps(meta, indent=2, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"meta is not JSON-serialisable: {type(e).__name__}: {e}") from e


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _orbax_save(directory: Path, tree: dict) -> None:
    """Blocking orbax save of ``tree`` (nested str-keyed dicts of numpy arrays) to ``directory``."""
    options = ocp.options.AsyncOptions(create_directories_asynchronously=False)
    ckptr = ocp.StandardCheckpointer(async_options=options)
    try:
        ckptr.save(directory, tree)
        ckptr.wait_until_finished()
    finally:
        ckptr.close()


def _orbax_restore(directory: Path) -> Any:
    """Every stored leaf as numpy, whatever devices (or processes) saved it."""
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
        stored = ckptr.metadata(directory).item_metadata.tree
        numpy = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), stored)
        return ckptr.restore(directory, args=ocp.args.PyTreeRestore(restore_args=numpy))


def save_checkpoint(
    path: str | os.PathLike, params: PyTree, meta: dict, *, overwrite: bool = False
) -> Path:
    """Atomically save ``params`` and ``meta`` as a checkpoint directory at ``path``.

    Args:
        path: target directory (its parents are created).
        params: nested mapping (str/int keys) whose leaves are arrays of any shape
            (numpy, jax, numpy/python scalars).
        meta: JSON-serialisable dict with str keys.
        overwrite: replace an existing checkpoint (or empty directory) at ``path``.

    Returns:
        The absolute checkpoint path.

    Raises:
        CheckpointError: invalid ``params``/``meta`` (checked before anything is created),
            ``path`` exists (without ``overwrite``, or is not a checkpoint), or writing failed
            (wrapping the underlying exception); no directory is left at ``path`` on failure.
    """
    target = outdir.out_path(path)
    meta_text = _dump_meta(meta)
    if not isinstance(params, Mapping):
        raise CheckpointError(f"params must be a nested dict, got {type(params).__name__}")
    digests: dict[str, str] = {}
    orbax_tree, skeleton = _encode(params, digests)
    collective = any(
        isinstance(x, jax.Array) and not x.is_fully_addressable
        for x in jax.tree_util.tree_leaves(orbax_tree)
    )
    write = lambda d: _write_params(d, orbax_tree)  # noqa: E731
    return _commit(target, skeleton, meta_text, write, digests, overwrite, collective)


def _write_params(directory: Path, orbax_tree: dict | None) -> None:
    if orbax_tree is None:
        directory.mkdir()
    else:
        _orbax_save(directory, orbax_tree)


def write_checkpoint(
    path: str | os.PathLike,
    skeleton: dict,
    meta: dict,
    write_params: Callable[[Path], None],
    digests: Mapping[str, str],
    *,
    overwrite: bool = False,
) -> Path:
    """Lower-level :func:`save_checkpoint` for callers that write ``params/`` themselves (e.g.
    ``growth.formats.stream``, one leaf at a time): ``write_params(dir)`` must create ``dir`` as an
    orbax PyTree save of the stored leaves of ``skeleton`` (the ``tree.json`` tree, see
    ``_encode``) and fill ``digests`` (leaf name -> ``outdir.tensor_digest``), which is
    recorded once it returns. Same atomicity: nothing is left at ``path`` if it raises."""
    target = outdir.out_path(path)
    return _commit(target, skeleton, _dump_meta(meta), write_params, digests, overwrite)


def _commit(
    target: Path,
    skeleton: dict,
    meta_text: str,
    write_params: Callable[[Path], None],
    digests: Mapping[str, str],
    overwrite: bool,
    collective: bool = False,
) -> Path:
    """Write the checkpoint into a temporary sibling, then rename it to ``target``
    (``growth.formats.outdir``: only an output this tool wrote is replaced, interrupted
    replaces are recovered, the marker with the leaves' checksums is written last).

    ``collective``: every process runs this with the same arguments (a multi-host save): they
    agree on the temporary name, all write their shards via ``write_params``, process 0 alone
    checks, creates, finishes and renames, and each step's outcome on process 0 is shared, so
    all processes return or raise together.
    """
    token = _shared_token() if collective else None
    tmp = outdir.temp_path(target, token)
    primary = not collective or jax.process_index() == 0
    err: Exception | None = None
    exists = False
    if primary:
        try:
            exists = outdir.check_out(target, overwrite=overwrite)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
        except CheckpointError as e:
            err = e
        except OSError as e:
            err = CheckpointError(f"cannot create {tmp}: {outdir.describe_os_error(e)}")
    _raise_together(err, collective, f"process 0 could not create {tmp}")
    try:
        write_params(tmp / _PARAMS)
        if primary:
            tree_text = json.dumps({"format": _FORMAT, "tree": skeleton})
            _finish(tmp, target, exists, tree_text, meta_text, digests)
    except BaseException as e:
        if primary:
            outdir.remove(tmp)
        if not isinstance(e, Exception):
            raise
        if isinstance(e, GrowthError):
            err = e
        else:
            why = outdir.describe_os_error(e)
            err = CheckpointError(f"saving checkpoint to {target} failed: {why}")
            err.__cause__ = e
    _raise_together(err, collective, f"saving checkpoint to {target} failed on process 0")
    return target


def _finish(
    tmp: Path, target: Path, exists: bool, tree_text: str, meta_text: str, digests: Mapping
) -> None:
    """Write the JSON files, the COMPLETE file and the marker (checksums) into ``tmp``, then
    rename it to ``target`` (``outdir.install``)."""
    _write_text(tmp / _TREE, tree_text)
    _write_text(tmp / _META, meta_text)
    _write_text(tmp / _COMPLETE, f"mfgrow checkpoint format {_FORMAT}\n")
    outdir.seal(tmp, "checkpoint", digests, [_TREE, _META])
    outdir.install(tmp, target, exists)


def _shared_token() -> str:
    """Process 0's ``"<pid>-<random hex>"`` token, on every process (a collective)."""
    mine = np.frombuffer(os.getpid().to_bytes(4, "little") + secrets.token_bytes(6), np.uint8)
    raw = bytes(np.asarray(multihost_utils.broadcast_one_to_all(mine), np.uint8))
    return f"{int.from_bytes(raw[:4], 'little')}-{raw[4:].hex()}"


_MESSAGE_BYTES = 2048


def _raise_together(err: Exception | None, collective: bool, what: str) -> None:
    """Raise ``err``; in a collective save, every process also raises when process 0 failed,
    with process 0's message (``what`` if it has none)."""
    if collective:
        text = "" if err is None else (str(err) or what)
        raw = np.zeros(_MESSAGE_BYTES + 1, np.uint8)
        data = text.encode()[:_MESSAGE_BYTES]
        raw[0], raw[1 : 1 + len(data)] = err is not None, np.frombuffer(data, np.uint8)
        got = np.asarray(multihost_utils.broadcast_one_to_all(raw), np.uint8)
        if got[0] and err is None:
            err = CheckpointError(bytes(got[1:]).rstrip(b"\0").decode(errors="replace") or what)
    if err is not None:
        raise err


def _read_json(path: Path, ckpt: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {ckpt} is missing {path.name}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {ckpt}: cannot read {path.name}: {type(e).__name__}: {e}"
        ) from e


def read_checkpoint_info(path: str | os.PathLike) -> tuple[Path, dict, dict]:
    """Validate a checkpoint directory without reading any array.

    Returns:
        ``(absolute path, tree skeleton from tree.json, meta)``; ``path / "params"`` is the
        orbax directory holding the skeleton's stored leaves.

    Raises:
        CheckpointError: as :func:`load_checkpoint`, for everything but the orbax restore.
    """
    ckpt = Path(path).expanduser().absolute()
    outdir.recover(ckpt)
    if not os.path.lexists(ckpt):
        raise CheckpointError(f"checkpoint {ckpt} does not exist")
    if not ckpt.is_dir():
        raise CheckpointError(f"checkpoint {ckpt} is not a directory")
    if not (ckpt / _COMPLETE).is_file():
        raise CheckpointError(
            f"checkpoint {ckpt} is incomplete (no {_COMPLETE} marker): "
            "interrupted save or not a checkpoint"
        )
    meta = _read_json(ckpt / _META, ckpt)
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {ckpt}: {_META} must hold a JSON object")
    info = _read_json(ckpt / _TREE, ckpt)
    if not isinstance(info, dict) or info.get("format") != _FORMAT or "tree" not in info:
        raise CheckpointError(f"checkpoint {ckpt}: {_TREE} has an unknown format")
    params_dir = ckpt / _PARAMS
    if not params_dir.is_dir():
        raise CheckpointError(f"checkpoint {ckpt} is missing its {_PARAMS}/ directory")
    return ckpt, info["tree"], meta


def checkpoint_digests(ckpt: Path) -> dict[str, str]:
    """The SHA-256 of every leaf recorded at save (by name, ``params['a'][0]``), after checking
    ``tree.json`` and ``meta.json`` against theirs; empty for a checkpoint written before
    checksums existed (no marker)."""
    marker = outdir.read_marker(ckpt)
    outdir.verify_files(ckpt, marker)
    return dict(marker["tensors"]) if marker else {}


def load_checkpoint(path: str | os.PathLike) -> tuple[PyTree, dict]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Returns:
        ``(params, meta)``: ``params`` has the saved nested-dict structure (int keys restored)
        with numpy-array leaves of the saved shapes and dtypes; ``meta`` is the saved dict.

    Raises:
        CheckpointError: ``path`` missing / not a directory / incomplete (no ``COMPLETE``),
            ``meta.json`` or ``tree.json`` missing, invalid or altered, ``params/`` missing, the
            orbax restore failed (the message names the path and the underlying error), or a
            leaf does not match its recorded checksum (the message names the leaf).
    """
    ckpt, skeleton, meta = read_checkpoint_info(path)
    digests = checkpoint_digests(ckpt)
    params_dir = ckpt / _PARAMS
    stored = None
    if any(True for _ in params_dir.iterdir()):
        try:
            stored = _orbax_restore(params_dir)
        except Exception as e:
            raise CheckpointError(
                f"checkpoint {ckpt}: orbax restore of {_PARAMS}/ failed: {type(e).__name__}: {e}"
            ) from e
    try:
        params = _decode(skeleton, stored, digests)
    except CheckpointError as e:
        raise CheckpointError(f"checkpoint {ckpt}: {e}") from e
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {ckpt}: {_TREE} is malformed: {type(e).__name__}: {e}"
        ) from e
    return params, meta

"""Safe output directories: the rules every writer (orbax checkpoints, HF directories, training
state) follows, so that no command ever loses data it did not write.

Writing ``<parent>/<name>``:

1. :func:`check_out` refuses an empty path, the current directory or one of its ancestors, a
   protected path (the source being read) or one of its ancestors, and an existing path unless
   ``overwrite`` is set and the path is a directory **this tool wrote** (it holds :data:`MARKER`
   with a known ``marker_version``, or is a checkpoint of format 1 whose ``COMPLETE`` file says so;
   an empty directory holds nothing to lose and is accepted too). Before checking it finishes an
   interrupted replace of the same path and removes the debris of killed runs
   (:func:`recover`).
2. The writer fills :func:`temp_path` (``<name>.tmp-<pid>-<token>``, a sibling, so the final
   rename stays on one file system) and calls :func:`seal` last: the marker, which records the
   per-tensor SHA-256 checksums, is the proof that the temporary directory is complete.
3. :func:`install` renames it into place. Replacing an existing output takes two renames,
   ``name -> name.old-<pid>-<token>`` then ``tmp -> name``; a crash between them leaves both
   siblings, and the next write or load of ``name`` completes the replace when the temporary
   directory is sealed and rolls it back otherwise.

Debris (``.tmp-``/``.old-`` siblings) carries the writer's process id; only debris of processes
that no longer run is touched, so concurrent writers never remove each other's work.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from growth.errors import CheckpointError

__all__ = ["MARKER", "check_out", "recover", "temp_path", "seal", "install", "read_marker",
           "verify_tensor", "verify_files", "tensor_digest",
           "write_directory", "check_file_out", "write_json_output"]  # fmt: skip

MARKER = "mfgrow-output.json"
MARKER_VERSION = 1
_LEGACY_COMPLETE = "mfgrow checkpoint format 1\n"  # orbax checkpoints written before MARKER
_between_renames: Callable[[Path, Path], None] | None = None  # test hook: crash there


def _debris(name: str) -> re.Pattern:
    return re.compile(rf"^{re.escape(name)}\.(tmp|old)-(\d+)-([0-9a-f]+)$")


def temp_path(target: Path, token: str | None = None) -> Path:
    """``<name>.tmp-<pid>-<token>`` beside ``target`` (``token``: ``"<pid>-<hex>"`` shared by
    the processes of a collective save; default this process and a fresh random hex)."""
    token = token or f"{os.getpid()}-{secrets.token_hex(6)}"
    return target.with_name(f"{target.name}.tmp-{token}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove(path: Path) -> None:
    """Remove a file, link or directory tree; silently if it is already gone."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def recover(target: Path) -> None:
    """Finish or undo an interrupted replace of ``target`` and remove the ``.tmp-``/``.old-``
    siblings that dead processes left behind.

    An ``.old-`` sibling whose writer is dead means a replace stopped after its first rename:
    if ``target`` is missing, its sealed twin ``.tmp-`` (same pid and token) is renamed into
    place (the replace completes), else the old directory is renamed back (rolled back). Then
    the old copy and every dead writer's ``.tmp-`` are removed.
    """
    parent = target.parent
    if not parent.is_dir():
        return
    pattern, found = _debris(target.name), []
    with contextlib.suppress(OSError):
        found = [(m, parent / m.group(0)) for m in map(pattern.match, os.listdir(parent)) if m]
    dead = [(m, p) for m, p in found if not _alive(int(m.group(2)))]
    for m, old in (x for x in dead if x[0].group(1) == "old"):
        twin = temp_path(target, f"{m.group(2)}-{m.group(3)}")
        if not os.path.lexists(target):
            source = twin if _sealed(twin) else old
            with contextlib.suppress(OSError):
                os.rename(source, target)
                fsync_dir(parent)
    for _, path in dead:
        remove(path)


def _sealed(path: Path) -> bool:
    try:
        return read_marker(path) is not None
    except CheckpointError:
        return False


def read_marker(path: Path) -> dict | None:
    """The marker of a directory this tool wrote, or None if there is none.

    Raises:
        CheckpointError: the marker exists but is unreadable or of an unknown version.
    """
    marker = path / MARKER
    if not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{marker}: unreadable marker ({type(e).__name__}: {e})") from e
    version = data.get("marker_version") if isinstance(data, dict) else None
    if version != MARKER_VERSION or not isinstance(data.get("tensors"), dict):
        raise CheckpointError(
            f"{marker}: unknown marker version {version!r} (this mfgrow writes {MARKER_VERSION})"
        )
    return data


def _written_by_us(path: Path) -> bool:
    if read_marker(path) is not None:
        return True
    complete = path / "COMPLETE"
    with contextlib.suppress(OSError, UnicodeDecodeError):
        return complete.is_file() and complete.read_text(encoding="utf-8") == _LEGACY_COMPLETE
    return False


def _within(inner: Path, outer: Path) -> bool:
    """True if ``inner`` is ``outer`` or lies below it (both resolved)."""
    return inner == outer or outer in inner.parents


def out_path(path: str | os.PathLike) -> Path:
    """``path`` made absolute; an empty path (which would mean the current directory) is an
    error."""
    if not str(path).strip():
        raise CheckpointError("output path '': give a directory name")
    return Path(path).expanduser().absolute()


def check_out(
    path: str | os.PathLike, *, overwrite: bool, protect: Iterable[str | os.PathLike] = ()
) -> bool:
    """Validate an output path before anything is computed or written.

    Args:
        path: the output directory (or file, for single-file outputs).
        overwrite: allow replacing an existing output this tool wrote.
        protect: paths being read (sources): the output may be neither one of them nor one of
            their ancestors.

    Returns:
        Whether ``path`` exists (after crash recovery), i.e. whether the write will replace it.

    Raises:
        CheckpointError: naming the path and the reason.
    """
    target = out_path(path)
    real = target.resolve()
    if _within(Path.cwd().resolve(), real):
        raise CheckpointError(
            f"output path {str(target)!r} is the current directory or one of its ancestors"
        )
    for src in protect:
        if _within(Path(src).expanduser().resolve(), real):
            raise CheckpointError(
                f"output path {str(target)!r} would replace the source {str(src)!r} "
                "(it is the source or one of its ancestors)"
            )
    recover(target)
    if not os.path.lexists(target):
        return False
    if not overwrite:
        raise CheckpointError(f"output path {str(target)!r} already exists (pass --overwrite)")
    if target.is_symlink() or not target.is_dir():
        raise CheckpointError(
            f"refusing to overwrite {str(target)!r}: not a directory, so not a checkpoint or "
            "run directory this tool wrote"
        )
    if any(target.iterdir()) and not _written_by_us(target):
        raise CheckpointError(
            f"refusing to overwrite {str(target)!r}: not a checkpoint or run directory this "
            f"tool wrote (no {MARKER})"
        )
    return True


def tensor_digest(x: Any) -> str:
    """SHA-256 (hex) of an array's raw C-order bytes; shape and dtype are checked separately."""
    a = np.ascontiguousarray(np.asarray(x))
    return hashlib.sha256(a.reshape(-1).view(np.uint8) if a.size else b"").hexdigest()


def verify_tensor(x: Any, expected: str | None, name: str, where: str | os.PathLike) -> None:
    """Raise CheckpointError naming ``name`` if ``x`` does not hash to ``expected`` (None:
    nothing recorded, e.g. an output of an older version or of another tool)."""
    if expected is not None and tensor_digest(x) != expected:
        raise CheckpointError(
            f"{where}: tensor {name} is corrupt (its SHA-256 checksum does not match the one "
            "recorded at save)"
        )


def verify_files(path: Path, marker: Mapping[str, Any] | None) -> None:
    """Raise CheckpointError if a file whose digest the marker records has changed."""
    for name, digest in ((marker or {}).get("files") or {}).items():
        if not (path / name).is_file() or _file_digest(path / name) != digest:
            raise CheckpointError(
                f"{path}: {name} is missing or corrupt (its SHA-256 checksum does not match)"
            )


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Best-effort fsync of a directory so a completed rename survives a crash."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def seal(tmp: Path, kind: str, tensors: Mapping[str, str], files: Iterable[str] = ()) -> None:
    """Write the marker into the finished temporary directory ``tmp`` (last, fsynced).

    tensors: per-tensor SHA-256 (:func:`tensor_digest`) by name; files: names of small files
    in ``tmp`` (JSON configs) whose SHA-256 is recorded too (:func:`verify_files`).
    """
    record = {"written_by": "mfgrow", "marker_version": MARKER_VERSION, "kind": kind,
              "checksum": "sha256", "tensors": dict(tensors),
              "files": {name: _file_digest(tmp / name) for name in files}}  # fmt: skip
    text = json.dumps(record, indent=1)
    with open(tmp / MARKER, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(tmp)


def install(tmp: Path, target: Path, replace: bool) -> None:
    """Rename the sealed ``tmp`` to ``target``; with ``replace``, the existing ``target`` is
    first renamed to its ``.old-`` twin (restored if the second rename fails) and removed."""
    if not replace:
        os.rename(tmp, target)
    else:
        old = target.with_name(tmp.name.replace(".tmp-", ".old-", 1))
        os.rename(target, old)
        if _between_renames is not None:
            _between_renames(tmp, target)
        try:
            os.rename(tmp, target)
        except BaseException:
            os.rename(old, target)
            raise
        remove(old)
    fsync_dir(target.parent)


def write_directory(
    path: str | os.PathLike,
    fill: Callable[[Path], tuple[Mapping[str, str], list[str]]],
    *,
    kind: str,
    overwrite: bool,
) -> Path:
    """Write a directory output the safe way, in one process: :func:`check_out`, then
    ``fill(tmp)`` (creates the files in the existing ``tmp`` and returns ``(tensor digests,
    names of files to digest)``), :func:`seal`, :func:`install`. On any error the temporary
    directory is removed and a CheckpointError names ``path`` (a full disk says so).
    """
    target = out_path(path)
    replace = check_out(target, overwrite=overwrite)
    tmp = temp_path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        tensors, files = fill(tmp)
        seal(tmp, kind, tensors, files)
        install(tmp, target, replace)
    except BaseException as e:
        remove(tmp)
        if isinstance(e, CheckpointError) or not isinstance(e, Exception):
            raise
        raise CheckpointError(f"writing {target} failed: {describe_os_error(e)}") from e
    return target


def write_file(path: Path, data: str | bytes) -> None:
    """Create ``path`` with ``data`` (mode per umask), flushed to disk."""
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())


def replace_file(target: Path, data: str | bytes) -> None:
    """Atomically make ``target`` a file holding ``data``: written and fsynced as a
    :func:`temp_path` sibling, then renamed over ``target`` (``os.replace``), so a crash at any
    point leaves the old file whole or the new one complete. The sibling is removed on error."""
    tmp = temp_path(target)
    try:
        write_file(tmp, data)
        os.replace(tmp, target)
    except BaseException:
        remove(tmp)
        raise
    fsync_dir(target.parent)


_TAG_MAX_BYTES = 1 << 30  # a larger file is not a small JSON output of this tool


def _tagged(path: Path, kind: str) -> bool:
    """True if ``path`` is a JSON object tagged ``"written_by": "mfgrow"`` and ``kind``."""
    with contextlib.suppress(OSError, UnicodeDecodeError, ValueError):
        if path.stat().st_size <= _TAG_MAX_BYTES:
            data = json.loads(path.read_text(encoding="utf-8"))
            ours = isinstance(data, dict) and data.get("written_by") == "mfgrow"
            return ours and data.get("kind") == kind
    return False


def check_file_out(path: str | os.PathLike, *, kind: str) -> Path:
    """Validate a single-file JSON output (``kind``: e.g. ``"track"``) before anything is
    computed; returns it made absolute. A missing path is fine (its dead writers' debris is
    removed, :func:`recover`); an existing one is replaced only if it is a regular file this
    tool wrote as ``kind`` (:func:`write_json_output`'s tag). No flag is needed for that, as
    for a demo run folder.

    Raises:
        CheckpointError: naming the path and the reason.
    """
    target = out_path(path)
    recover(target)
    if os.path.lexists(target) and (
        target.is_symlink() or not target.is_file() or not _tagged(target, kind)
    ):
        raise CheckpointError(
            f"refusing to replace {str(target)!r}: not a {kind} result this tool wrote (no "
            f'"written_by": "mfgrow", "kind": "{kind}"); remove it or choose another path'
        )
    return target


def write_json_output(path: str | os.PathLike, data: Mapping[str, Any], *, kind: str) -> Path:
    """Write ``{"written_by": "mfgrow", "kind": kind, **data}`` to ``path`` as indented JSON,
    atomically (:func:`check_file_out`, then :func:`replace_file`; ``data`` must not use the two
    tag keys). On error the old file is untouched and a CheckpointError names ``path``."""
    target = check_file_out(path, kind=kind)
    text = json.dumps({"written_by": "mfgrow", "kind": kind, **data}, indent=1)
    try:
        replace_file(target, text)
    except Exception as e:
        raise CheckpointError(f"writing {target} failed: {describe_os_error(e)}") from e
    return target


def normal_mode(path: Path) -> None:
    """Give a file written by a library with private permissions the umask's mode (0644)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def describe_os_error(e: BaseException) -> str:
    """One line for a failed write; a full disk is named as such."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device ({e})"
    return f"{type(e).__name__}: {e}"

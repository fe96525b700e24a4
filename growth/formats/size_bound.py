"""The size bound: refuse an output too large for the memory or disk that would hold it, from
its byte count alone, before anything is allocated or written (``--max-bytes`` overrides it).

The bound guards against runaway requests (``--width x1000000``); it is not a promise that a
request below it fits, since a grow also holds the source and temporaries (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from growth.errors import CheckpointError

__all__ = ["check_size", "available_memory", "free_disk"]


def available_memory() -> int:
    """Bytes of memory available to a new allocation (``MemAvailable``; else free pages)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def free_disk(path: Path) -> int:
    """Free bytes on the file system that would hold ``path`` (its nearest existing ancestor)."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def check_size(
    nbytes: int, out: str | os.PathLike | None, *, max_bytes: int | None, in_memory: bool = True
) -> None:
    """Refuse an output of ``nbytes`` before allocating it.

    The bound is ``max_bytes`` when given (the user's override, ``--max-bytes``), else the
    available memory (when the output is built in memory) and the free disk at ``out``.

    Raises:
        CheckpointError: stating the estimate and the bound it exceeds.
    """
    gib = 2.0**30
    if max_bytes is not None:
        if nbytes > max_bytes:
            raise CheckpointError(
                f"the output would take {nbytes / gib:.3g} GiB, above --max-bytes "
                f"({max_bytes / gib:.3g} GiB)"
            )
        return
    limits = []
    if in_memory:
        limits.append(("available memory", available_memory()))
    if out is not None:
        limits.append((f"free disk at {str(out)!r}", free_disk(Path(out))))
    for what, limit in limits:
        if nbytes > limit:
            raise CheckpointError(
                f"the output would take {nbytes / gib:.3g} GiB, more than the {what} "
                f"({limit / gib:.3g} GiB); pass --max-bytes to override"
            )

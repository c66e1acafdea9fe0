"""Small file-system helpers: sync a directory, sync data, write fully."""

from __future__ import annotations

import os

_HAS_FDATASYNC = hasattr(os, "fdatasync")


def datasync(fd: int) -> None:
    """fdatasync where the platform has it (it skips metadata such as mtime
    that recovery does not need; a size change is still synced)."""
    if _HAS_FDATASYNC:
        os.fdatasync(fd)
    else:
        os.fsync(fd)


def fsync_dir(path: str) -> None:
    """Make file creations, renames and deletions in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """pwrite until everything is written (a short write is retried; the
    error behind it, e.g. ENOSPC, surfaces from the retry)."""
    view = memoryview(data)
    done = 0
    total = len(view)
    while done < total:
        written = os.pwrite(fd, view[done:], offset + done)
        if written <= 0:
            raise OSError(f"pwrite wrote {written} bytes")
        done += written


def write_all(fd: int, parts: list[bytes | bytearray | memoryview]) -> None:
    """writev until every part is written."""
    views = [memoryview(p) for p in parts if len(p)]
    while views:
        written = os.writev(fd, views)
        if written <= 0:
            raise OSError(f"writev wrote {written} bytes")
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if written:
            views[0] = views[0][written:]


def preallocate(fd: int, size: int) -> bool:
    """Reserve ``size`` bytes for the file, so that appends do not change its
    size (cheaper fdatasync) and a full disk shows up here rather than in the
    middle of a record. Returns False where the platform cannot."""
    allocate = getattr(os, "posix_fallocate", None)
    if allocate is None:
        return False
    try:
        allocate(fd, 0, size)
    except OSError as exc:
        import errno

        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            return False
        raise
    return True

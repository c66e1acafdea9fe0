"""Errors the storage raises.

Every error that can stop a node names the file (and, for damage, the byte
offset) and tells the operator what to do: a node must never silently serve
a shorter or a different log than the one it acknowledged.
"""

from __future__ import annotations

REJOIN_HINT = (
    "Do not edit the file by hand. Replace the node: `ramraft members remove ID` through "
    "another node, move this data directory aside, start the node with --join and "
    "`ramraft members add ID HOST:PORT`; it copies the log and a snapshot from the leader "
    "(restarted empty under its old membership it would forget the votes it gave). Keep "
    "the moved directory if you want to investigate."
)


class StorageError(Exception):
    """Base class of every storage error."""


class CorruptionError(StorageError):
    """A file fails its checksum or is inconsistent: the node must not start from it."""

    def __init__(self, path: str, offset: int | None, problem: str, hint: str = REJOIN_HINT):
        where = path if offset is None else f"{path} at byte offset {offset}"
        super().__init__(f"storage damaged: {where}: {problem}. {hint}")
        self.path = path
        self.offset = offset
        self.problem = problem


class UnsupportedVersionError(StorageError):
    """A file carries a format version this build cannot read."""

    def __init__(self, path: str, version: int, supported: int):
        super().__init__(
            f"{path} has storage format version {version}, but this build of ramraft reads "
            f"only version {supported}. Run a ramraft release that supports format "
            f"{version}, or wipe this node's data directory and let it rejoin from the leader."
        )
        self.path = path
        self.version = version


class DataDirLockedError(StorageError):
    """Another process holds the data directory."""


class SnapshotNotFoundError(StorageError, LookupError):
    """No snapshot with the asked-for index exists."""


class StorageIOError(StorageError):
    """An operating-system I/O call failed (disk full, EIO, permissions...)."""


class StorageFailedError(StorageIOError):
    """The log store hit an I/O error and refuses all further writes.

    Nothing the failed call was persisting has been acknowledged; what was on
    disk before it is intact (a partly written record is a torn tail that the
    next start truncates). The node must stop taking writes (answer
    UNAVAILABLE) and be restarted once the disk is fixed.
    """

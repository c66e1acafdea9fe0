"""Durable storage of a node: write-ahead log, snapshots, crash recovery.

The runtime opens a data directory with open_storage() (or, in the simulator
and unit tests, open_memory_storage()), calls ``log_store.load()`` once, and
then persists every Ready with one ``log_store.save(...)`` call. A
snapshot's data starts with the node's header (snapshot_header.py).
"""

from .datadir import DataDirLock, open_storage
from .errors import (
    CorruptionError,
    DataDirLockedError,
    SnapshotNotFoundError,
    StorageError,
    StorageFailedError,
    StorageIOError,
    UnsupportedVersionError,
)
from .interface import LogStore, RecoveredState, SnapshotReader, SnapshotStore, SnapshotWriter
from .memory import (
    MemoryDisk,
    MemoryLogStore,
    MemorySnapshotReader,
    MemorySnapshotStore,
    MemorySnapshotWriter,
    open_memory_storage,
)
from .snapshot_header import (
    SNAPSHOT_DATA_MAGIC,
    SnapshotHeader,
    encode_snapshot_header,
    read_snapshot_header,
    write_snapshot_header,
)
from .snapshots import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_KEEP,
    FileSnapshotReader,
    FileSnapshotStore,
    FileSnapshotWriter,
)
from .wal import DEFAULT_SEGMENT_SIZE, FileLogStore

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_KEEP",
    "DEFAULT_SEGMENT_SIZE",
    "SNAPSHOT_DATA_MAGIC",
    "CorruptionError",
    "DataDirLock",
    "DataDirLockedError",
    "FileLogStore",
    "FileSnapshotReader",
    "FileSnapshotStore",
    "FileSnapshotWriter",
    "LogStore",
    "MemoryDisk",
    "MemoryLogStore",
    "MemorySnapshotReader",
    "MemorySnapshotStore",
    "MemorySnapshotWriter",
    "RecoveredState",
    "SnapshotHeader",
    "SnapshotNotFoundError",
    "SnapshotReader",
    "SnapshotStore",
    "SnapshotWriter",
    "StorageError",
    "StorageFailedError",
    "StorageIOError",
    "UnsupportedVersionError",
    "encode_snapshot_header",
    "open_memory_storage",
    "open_storage",
    "read_snapshot_header",
    "write_snapshot_header",
]

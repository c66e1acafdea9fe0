"""In-memory twins of the stores, for the simulator and unit tests.

A MemoryDisk is what survives a simulated crash of one node: the synced log
and the committed snapshots. A crash is simulated by dropping the stores and
opening new ones on the same disk: batches saved with ``sync=False`` and not
yet followed by a synced save are lost, as they may be on a real disk.
Setting ``disk.fail_writes`` to an OSError makes the next write fail the way a
full or broken disk does.

The rules (what a save accepts, the snapshot-marker rule, recovery against
the newest snapshot) are the LogModel's, shared with the file store.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from ramraft.consensus.types import Entry, HardState, SnapshotMeta

from .encoding import check_entries
from .errors import SnapshotNotFoundError, StorageFailedError, StorageIOError
from .interface import RecoveredState, SnapshotStore
from .model import LogModel, reconcile
from .snapshots import DEFAULT_BLOCK_SIZE, DEFAULT_KEEP


@dataclass(eq=False)
class MemoryDisk:
    """The durable state of one simulated node."""

    log: LogModel = field(default_factory=lambda: LogModel(keep_entries=True))
    snapshots: dict[int, tuple[SnapshotMeta, bytes]] = field(default_factory=dict)
    # When set, the next write fails with it (and the log store stays failed).
    fail_writes: OSError | None = None
    syncs: int = 0  # synced batches, for tests that count syncs


_Batch = tuple[SnapshotMeta | None, bool, Sequence[Entry], HardState | None]


class MemoryLogStore:
    """LogStore kept in a MemoryDisk."""

    def __init__(self, snapshots: SnapshotStore, disk: MemoryDisk | None = None) -> None:
        self.disk = disk if disk is not None else MemoryDisk()
        self._snapshots = snapshots
        self._view: LogModel | None = None  # durable log + unsynced batches
        self._unsynced: list[_Batch] = []
        self._failure: StorageFailedError | None = None
        self._closed = False

    @property
    def failure(self) -> StorageFailedError | None:
        return self._failure

    @property
    def last_index(self) -> int:
        if self._view is None:
            raise RuntimeError("call load() first")
        return self._view.last_index

    def load(self) -> RecoveredState:
        if self._view is not None:
            raise RuntimeError("load() may be called only once")
        durable = self.disk.log
        newest = self._snapshots.latest()
        retain = reconcile(durable, newest, "memory WAL", "memory snapshot store")
        if retain is not None and newest is not None:
            durable.apply_marker(newest, retain)
        entries = durable.entries_after(newest.index if newest is not None else 0)
        hard_state = durable.hard_state
        if newest is not None and hard_state.commit < newest.index:
            hard_state = HardState(term=hard_state.term, vote=hard_state.vote, commit=newest.index)
        self._view = durable.copy()
        return RecoveredState(hard_state=hard_state, snapshot=newest, entries=entries)

    def save(
        self,
        *,
        snapshot: SnapshotMeta | None = None,
        entries: Sequence[Entry] = (),
        hard_state: HardState | None = None,
        sync: bool = True,
    ) -> None:
        view = self._writable()
        if snapshot is not None or entries or hard_state is not None:
            check_entries(entries)
            retain = view.check(snapshot, entries, hard_state)
            self._io_point()
            batch = (snapshot, retain, tuple(entries), hard_state)
            view.apply(*batch)
            self._unsynced.append(batch)
        if sync and self._unsynced:
            self._io_point()
            for pending in self._unsynced:
                self.disk.log.apply(*pending)
            self._unsynced.clear()
            self.disk.syncs += 1

    def compact(self, snapshot_index: int) -> None:
        view = self._writable()
        newest = self._snapshots.latest()
        if newest is None or snapshot_index > newest.index:
            raise ValueError(
                f"cannot compact to {snapshot_index}: no committed snapshot covers it "
                f"(newest: {newest.index if newest else 'none'})"
            )
        view.compact(snapshot_index)
        if not self._unsynced:
            self.disk.log.compact(snapshot_index)

    def close(self) -> None:
        if not self._closed and self._failure is None and self._unsynced:
            for pending in self._unsynced:
                self.disk.log.apply(*pending)
            self._unsynced.clear()
        self._closed = True

    def _writable(self) -> LogModel:
        if self._closed:
            raise RuntimeError("the log store is closed")
        if self._failure is not None:
            raise StorageFailedError(
                f"the log failed earlier and refuses writes until the node is restarted "
                f"({self._failure})"
            ) from self._failure
        if self._view is None:
            raise RuntimeError("call load() first")
        return self._view

    def _io_point(self) -> None:
        exc = self.disk.fail_writes
        if exc is not None:
            self.disk.fail_writes = None
            self._failure = StorageFailedError(
                f"memory WAL: write failed: {exc.strerror or exc} (errno {exc.errno}); "
                "nothing from this batch was acknowledged; the log now refuses writes"
            )
            raise self._failure from exc


class MemorySnapshotWriter:
    def __init__(self, store: MemorySnapshotStore, meta: SnapshotMeta) -> None:
        self._store = store
        self._meta = meta
        self._parts: list[bytes] = []
        self._done = False

    @property
    def meta(self) -> SnapshotMeta:
        return self._meta

    @property
    def bytes_written(self) -> int:
        return sum(len(p) for p in self._parts)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._done:
            raise ValueError("snapshot writer is closed")
        exc = self._store.disk.fail_writes
        if exc is not None:
            self._store.disk.fail_writes = None
            self.abort()
            raise StorageIOError(f"writing snapshot {self._meta.index} failed: {exc}") from exc
        chunk = bytes(data)
        self._parts.append(chunk)
        return len(chunk)

    def commit(self) -> SnapshotMeta:
        if self._done:
            raise ValueError("snapshot writer is closed")
        self._done = True
        self._store._commit(self._meta, b"".join(self._parts))
        self._parts = []
        return self._meta

    def abort(self) -> None:
        self._done = True
        self._parts = []

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()


class MemorySnapshotReader:
    def __init__(self, meta: SnapshotMeta, data: bytes, block_size: int) -> None:
        self._meta = meta
        self._data = memoryview(data)
        self._pos = 0
        self._block_size = block_size

    @property
    def meta(self) -> SnapshotMeta:
        return self._meta

    @property
    def size(self) -> int:
        return len(self._data)

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else min(len(self._data), self._pos + n)
        chunk = bytes(self._data[self._pos : end])
        self._pos = end
        return chunk

    def __iter__(self) -> Iterator[bytes]:
        while self._pos < len(self._data):
            yield self.read(self._block_size)

    def close(self) -> None:
        self._pos = len(self._data)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class MemorySnapshotStore:
    def __init__(
        self,
        disk: MemoryDisk | None = None,
        *,
        keep: int = DEFAULT_KEEP,
        block_size: int = DEFAULT_BLOCK_SIZE,
    ) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.disk = disk if disk is not None else MemoryDisk()
        self.keep = keep
        self.block_size = block_size

    def create(self, meta: SnapshotMeta) -> MemorySnapshotWriter:
        if meta.index <= 0:
            raise ValueError(f"snapshot index must be positive, got {meta.index}")
        return MemorySnapshotWriter(self, meta)

    def latest(self) -> SnapshotMeta | None:
        if not self.disk.snapshots:
            return None
        return self.disk.snapshots[max(self.disk.snapshots)][0]

    def list(self) -> list[SnapshotMeta]:
        return [self.disk.snapshots[i][0] for i in sorted(self.disk.snapshots)]

    def open(self, index: int | None = None) -> MemorySnapshotReader:
        snapshots = self.disk.snapshots
        if index is None:
            index = max(snapshots) if snapshots else None
        if index is None or index not in snapshots:
            what = "no snapshot" if index is None else f"no snapshot at index {index}"
            raise SnapshotNotFoundError(f"{what} in the memory snapshot store")
        meta, data = snapshots[index]
        return MemorySnapshotReader(meta, data, self.block_size)

    def _commit(self, meta: SnapshotMeta, data: bytes) -> None:
        snapshots = self.disk.snapshots
        snapshots[meta.index] = (meta, data)
        for index in sorted(snapshots)[: -self.keep]:
            del snapshots[index]


def open_memory_storage(
    disk: MemoryDisk | None = None, *, snapshot_keep: int = DEFAULT_KEEP
) -> tuple[MemoryLogStore, MemorySnapshotStore]:
    """The in-memory twin of open_storage(): reopen on the same ``disk`` to
    simulate a restart (load() must still be called)."""
    disk = disk if disk is not None else MemoryDisk()
    snapshots = MemorySnapshotStore(disk, keep=snapshot_keep)
    return MemoryLogStore(snapshots, disk), snapshots

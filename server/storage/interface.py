"""The storage interface the node runtime programs against.

Two implementations of each: files (FileLogStore, FileSnapshotStore) and
memory (MemoryLogStore, MemorySnapshotStore) for the simulator and unit
tests. Both pass the same interface tests.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, Self

from ramraft.consensus.types import Entry, HardState, SnapshotMeta


@dataclass(slots=True)
class RecoveredState:
    """What a node restarts from.

    ``entries`` are contiguous and all come after ``snapshot.index`` (after 0
    when there is no snapshot). ``hard_state.commit`` is at least
    ``snapshot.index`` (a snapshot holds only committed entries).
    """

    hard_state: HardState
    snapshot: SnapshotMeta | None
    entries: list[Entry] = field(default_factory=list)

    @property
    def first_index(self) -> int:
        """Index of the first entry the log could hold (snapshot.index + 1)."""
        return (self.snapshot.index if self.snapshot is not None else 0) + 1

    @property
    def last_index(self) -> int:
        if self.entries:
            return self.entries[-1].index
        return self.first_index - 1


class LogStore(Protocol):
    """Durable Raft log, hard state and snapshot markers.

    Call ``load()`` once, before anything else. Every later call is a batch
    persisted in the order: snapshot marker, entries, hard state.
    """

    def load(self) -> RecoveredState:
        """Recover the state: the newest snapshot and the log after it."""
        ...

    def save(
        self,
        *,
        snapshot: SnapshotMeta | None = None,
        entries: Sequence[Entry] = (),
        hard_state: HardState | None = None,
        sync: bool = True,
    ) -> None:
        """Persist one batch with one sync; return only once it is durable.

        ``snapshot``: a snapshot installed from the leader (its data already
        committed in the snapshot store). The log restarts after its index;
        entries after it are kept only if the stored entry at ``index`` has
        ``term`` (Raft paper, InstallSnapshot steps 6-7).
        ``entries`` replace any stored entries at the same or higher indexes.
        ``sync=False`` writes without syncing (durable at the next synced
        save); never acknowledge anything to a peer or client on it.

        Raises ValueError (nothing written) for a batch that breaks the log's
        rules, StorageFailedError on an I/O error (nothing acknowledged; the
        store refuses every later write).
        """
        ...

    def compact(self, snapshot_index: int) -> None:
        """Drop log data up to ``snapshot_index``, which a snapshot already
        committed in the snapshot store covers."""
        ...

    def close(self) -> None: ...


class SnapshotWriter(Protocol):
    """Streams one snapshot in. Nothing is visible until ``commit()``."""

    @property
    def meta(self) -> SnapshotMeta: ...

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append data; returns len(data) (file-like, so a state machine can
        write to it as to a stream)."""
        ...

    def commit(self) -> SnapshotMeta:
        """Make the snapshot durable and the newest visible one (if newest)."""
        ...

    def abort(self) -> None:
        """Throw the partial snapshot away (idempotent; no-op after commit)."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Aborts unless commit() was called."""
        ...


class SnapshotReader(Protocol):
    """Streams one snapshot out, verified as it goes.

    A damaged block raises CorruptionError before any of its bytes are
    returned; a missing end raises it at the end.
    """

    @property
    def meta(self) -> SnapshotMeta: ...

    @property
    def size(self) -> int:
        """Total bytes of snapshot data."""
        ...

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all the rest if n < 0); b"" at the end."""
        ...

    def __iter__(self) -> Iterator[bytes]:
        """The remaining data in chunks (at most one block each)."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class SnapshotStore(Protocol):
    def create(self, meta: SnapshotMeta) -> SnapshotWriter: ...

    def latest(self) -> SnapshotMeta | None:
        """The newest committed snapshot. Raises CorruptionError if its
        header or trailer is damaged (its data is checked as it is read)."""
        ...

    def list(self) -> list[SnapshotMeta]:
        """Committed snapshots, oldest first (headers not verified)."""
        ...

    def open(self, index: int | None = None) -> SnapshotReader:
        """Reader for the snapshot at ``index`` (the newest if None).
        Raises SnapshotNotFoundError."""
        ...

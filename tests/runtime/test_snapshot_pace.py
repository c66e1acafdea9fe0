"""When a snapshot is due (runtime/snapshotting.py): by bytes of entries in
RAM at once, by entry count only once the last snapshot's cost has been
paid back (SNAPSHOT_PACE times its duration), so a large state written fast
is not snapshotted back to back; and an entry's bytes count its object."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from ramraft.server.runtime.snapshotting import (
    ENTRY_OVERHEAD_BYTES,
    SNAPSHOT_PACE,
    SnapshotScheduler,
)
from ramraft.server.storage import MemoryDisk
from tests.runtime.test_runtime_single import make_runtime


def scheduler() -> SnapshotScheduler:
    runtime, _ = make_runtime(MemoryDisk(), snapshot_entries=1000, snapshot_bytes=1 << 20)
    return runtime.snapshotting


def core(applied: int, snapshot: int = 0) -> Any:
    return SimpleNamespace(applied_index=applied, latest_snapshot=SimpleNamespace(index=snapshot))


def test_entries_make_a_snapshot_due_once_the_last_ones_cost_is_paid_back() -> None:
    s = scheduler()
    assert not s.due(core(999), now=0.0)
    assert s.due(core(1000), now=0.0), "no snapshot yet: nothing to pay back"
    s.last_seconds, s.last_done = 2.0, 100.0  # the last one took 2 s and ended at 100
    assert not s.due(core(5000, snapshot=1000), now=100.0 + SNAPSHOT_PACE * 2.0 - 0.1)
    assert s.due(core(5000, snapshot=1000), now=100.0 + SNAPSHOT_PACE * 2.0)


def test_bytes_make_a_snapshot_due_at_once_and_count_each_entrys_object() -> None:
    s = scheduler()
    s.last_seconds, s.last_done = 2.0, 100.0
    per_entry = 100 + ENTRY_OVERHEAD_BYTES
    for _ in range((1 << 20) // per_entry):
        s.note_applied(100)
    assert not s.due(core(10), now=100.0)
    s.note_applied(100)
    assert s.due(core(10), now=100.0), "the log in RAM is bounded whatever the pace"

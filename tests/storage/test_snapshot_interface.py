"""SnapshotStore behaviour, run against the file store and its memory twin."""

from __future__ import annotations

import os

import pytest

from ramraft.consensus.types import ConfState
from ramraft.server.storage import SnapshotNotFoundError

from .conftest import Harness
from .helpers import meta, snapshot_bytes


def test_no_snapshot_yet(harness: Harness) -> None:
    _, snaps = harness.open()
    assert snaps.latest() is None
    assert snaps.list() == []
    with pytest.raises(SnapshotNotFoundError):
        snaps.open()
    with pytest.raises(SnapshotNotFoundError):
        snaps.open(5)


@pytest.mark.parametrize("size", [0, 1, 4095, 1 << 20, (3 << 20) + 17])
def test_streamed_round_trip(harness: Harness, size: int) -> None:
    _, snaps = harness.open()
    data = os.urandom(size)
    m = meta(42, 3, ConfState(voters=frozenset({"a", "b"}), learners=frozenset({"c"})))
    with snaps.create(m) as writer:
        for start in range(0, size, 100_003):  # odd chunk sizes straddle blocks
            writer.write(memoryview(data)[start : start + 100_003])
        assert writer.commit() == m
    assert snaps.latest() == m
    with snaps.open() as reader:
        assert reader.meta == m
        assert reader.size == size
        got = bytearray()
        while chunk := reader.read(70_000):
            got += chunk
        assert got == data
        assert reader.read(10) == b""
    with snaps.open(42) as reader:
        chunks = list(reader)
        assert b"".join(chunks) == data
        assert all(len(c) <= (1 << 20) for c in chunks)


def test_nothing_is_visible_before_commit_and_abort_leaves_nothing(harness: Harness) -> None:
    _, snaps = harness.open()
    writer = snaps.create(meta(10, 1))
    writer.write(b"partial")
    assert snaps.latest() is None
    writer.abort()
    writer.abort()  # idempotent
    with pytest.raises(ValueError, match="snapshot writer is closed"):
        writer.write(b"more")
    with pytest.raises(ZeroDivisionError), snaps.create(meta(11, 1)) as w:
        w.write(b"half")
        raise ZeroDivisionError  # the state machine failed half-way
    assert snaps.latest() is None
    if harness.kind == "file":
        assert os.listdir(harness.data_dir / "snap") == []


def test_newest_wins_and_old_ones_are_pruned(harness: Harness) -> None:
    _, snaps = harness.open()
    for index in (5, 9, 7, 12):
        with snaps.create(meta(index, 1)) as writer:
            writer.write(snapshot_bytes(index))
            writer.commit()
    assert snaps.latest() == meta(12, 1)
    assert [m.index for m in snaps.list()] == [9, 12]  # keep=2 by default
    with snaps.open(9) as reader:
        assert reader.read() == snapshot_bytes(9)


def test_snapshots_survive_restart(harness: Harness) -> None:
    log, snaps = harness.open()
    log.load()
    with snaps.create(meta(3, 1)) as writer:
        writer.write(snapshot_bytes(3))
        writer.commit()
    log, snaps = harness.restart()
    assert snaps.latest() == meta(3, 1)
    with snaps.open() as reader:
        assert reader.read() == snapshot_bytes(3)


def test_a_reader_keeps_reading_a_pruned_snapshot(harness: Harness) -> None:
    _, snaps = harness.open()
    with snaps.create(meta(1, 1)) as writer:
        writer.write(snapshot_bytes(1, 200_000))
        writer.commit()
    reader = snaps.open(1)
    first = reader.read(1000)
    for index in (2, 3):
        with snaps.create(meta(index, 1)) as writer:
            writer.write(b"x")
            writer.commit()
    assert [m.index for m in snaps.list()] == [2, 3]
    assert first + reader.read() == snapshot_bytes(1, 200_000)
    reader.close()


def test_invalid_index_is_refused(harness: Harness) -> None:
    _, snaps = harness.open()
    with pytest.raises(ValueError, match="snapshot index must be positive, got 0"):
        snaps.create(meta(0, 0))

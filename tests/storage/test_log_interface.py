"""LogStore behaviour, run against the file store and its memory twin."""

from __future__ import annotations

import errno
import random

import pytest

from ramraft.consensus.types import Entry, EntryKind, HardState, SnapshotMeta
from ramraft.server.storage import StorageFailedError

from .conftest import Harness, SnapStoreT
from .helpers import ents, meta, snapshot_bytes


def commit_snapshot(snaps: SnapStoreT, m: SnapshotMeta, size: int = 3000) -> None:
    with snaps.create(m) as writer:
        writer.write(snapshot_bytes(m.index, size))
        writer.commit()


def test_fresh_store_is_empty(harness: Harness) -> None:
    log, _ = harness.open()
    state = log.load()
    assert state.hard_state == HardState()
    assert state.snapshot is None
    assert state.entries == []
    assert (state.first_index, state.last_index) == (1, 0)


def test_entries_and_hard_state_survive_restart(harness: Harness) -> None:
    log, _ = harness.open()
    log.load()
    log.save(entries=ents(1, 3, 1), hard_state=HardState(1, "n1", 0))
    log.save(entries=ents(4, 10, 1), hard_state=HardState(1, "n1", 7))
    log.save(hard_state=HardState(2, "", 7))
    log, _ = harness.restart()
    state = log.load()
    assert state.entries == ents(1, 10, 1)
    assert state.hard_state == HardState(2, "", 7)
    assert state.snapshot is None


def test_conf_change_entries_and_binary_data_round_trip(harness: Harness) -> None:
    log, _ = harness.open()
    log.load()
    batch = [
        Entry(1, 1, b""),
        Entry(1, 2, bytes(range(256)), EntryKind.CONF_CHANGE),
        Entry(1, 3, b"\x00" * 5000),
    ]
    log.save(entries=batch)
    log, _ = harness.restart()
    assert log.load().entries == batch


def test_entries_replace_the_stored_suffix(harness: Harness) -> None:
    """A follower's conflicting suffix is replaced (Raft 5.3)."""
    log, _ = harness.open()
    log.load()
    log.save(entries=ents(1, 10, 1), hard_state=HardState(1, "", 3))
    log.save(entries=ents(6, 7, 2), hard_state=HardState(2, "", 3))  # shorter than before
    log, _ = harness.restart()
    state = log.load()
    assert state.entries == ents(1, 5, 1) + ents(6, 7, 2)
    log.save(entries=ents(4, 12, 3), hard_state=HardState(3, "", 3))
    log, _ = harness.restart()
    assert log.load().entries == ents(1, 3, 1) + ents(4, 12, 3)


def test_rejected_batches_change_nothing(harness: Harness) -> None:
    log, _ = harness.open()
    log.load()
    log.save(entries=ents(1, 5, 2), hard_state=HardState(2, "n1", 3))
    # (batch, what the refusal must say): each is refused for its own reason
    bad_batches: list[tuple[dict[str, object], str]] = [
        ({"entries": ents(7, 8, 2)}, "start at index 7, but the log holds 1..5"),  # a gap
        # not consecutive: the file store sees first that 3..2 would also
        # discard committed entry 3, the memory store sees the order first
        ({"entries": ents(2, 3, 2)[::-1]}, "consecutive indexes|would discard committed"),
        (
            {"entries": [Entry(2, 6, b"a"), Entry(1, 7, b"b")]},  # term goes down in the batch
            "non-decreasing terms: got index 7 term 1 after index 6 term 2",
        ),
        ({"entries": ents(6, 6, 1)}, "entry 6 has term 1, below the term 2"),
        ({"entries": ents(3, 4, 3)}, "refusing to overwrite committed entry 3"),
        ({"hard_state": HardState(1, "", 3)}, "term would go back from 2 to 1"),
        ({"hard_state": HardState(2, "n2", 3)}, "would change the vote in term 2"),
        ({"entries": [Entry(2, 6, b"x", 7)]}, "unknown entry kind 7"),  # type: ignore[arg-type]
    ]
    for bad, reason in bad_batches:
        with pytest.raises(ValueError, match=reason):
            log.save(**bad)  # type: ignore[arg-type]
    log.save(entries=ents(6, 6, 2))  # the store still takes good batches
    log, _ = harness.restart()
    state = log.load()
    assert state.entries == ents(1, 6, 2)
    assert state.hard_state == HardState(2, "n1", 3)


def test_rewriting_committed_entries_with_the_same_term_is_allowed(harness: Harness) -> None:
    log, _ = harness.open()
    log.load()
    log.save(entries=ents(1, 5, 1), hard_state=HardState(1, "", 5))
    log.save(entries=ents(4, 6, 1))
    log, _ = harness.restart()
    assert log.load().entries == ents(1, 6, 1)


def test_leader_snapshot_with_matching_entry_keeps_the_suffix(harness: Harness) -> None:
    """InstallSnapshot step 6: the entry at the snapshot index has its term,
    so the entries after it are kept."""
    log, snaps = harness.open()
    log.load()
    log.save(entries=ents(1, 10, 1), hard_state=HardState(1, "", 2))
    m = meta(6, 1)
    commit_snapshot(snaps, m)
    log.save(snapshot=m, hard_state=HardState(1, "", 6))
    log, _ = harness.restart()
    state = log.load()
    assert state.snapshot == m
    assert state.entries == ents(7, 10, 1)
    assert state.hard_state.commit == 6


def test_leader_snapshot_with_conflicting_entry_discards_the_log(harness: Harness) -> None:
    """InstallSnapshot step 7: the log does not contain the snapshot's last
    entry, so all of it goes; the log restarts after the snapshot."""
    log, snaps = harness.open()
    log.load()
    log.save(entries=ents(1, 10, 1), hard_state=HardState(2, "", 2))
    m = meta(6, 2)  # the leader's entry 6 has term 2; ours has term 1
    commit_snapshot(snaps, m)
    log.save(snapshot=m, hard_state=HardState(2, "", 6))
    log, _ = harness.restart()
    state = log.load()
    assert state.snapshot == m
    assert state.entries == []
    log.save(entries=ents(7, 8, 2))
    with pytest.raises(ValueError, match=r"start at index 10, but the log holds 7\.\.8"):
        log.save(entries=ents(10, 10, 2))
    log, _ = harness.restart()
    assert log.load().entries == ents(7, 8, 2)


def test_leader_snapshot_beyond_the_log_and_entries_in_one_batch(harness: Harness) -> None:
    log, snaps = harness.open()
    log.load()
    log.save(entries=ents(1, 3, 1))
    m = meta(20, 3)
    commit_snapshot(snaps, m)
    log.save(snapshot=m, entries=ents(21, 25, 3), hard_state=HardState(3, "n2", 20))
    # nothing may be written at or below the snapshot
    with pytest.raises(ValueError, match=r"start at index 20, but the log holds 21\.\.25"):
        log.save(entries=ents(20, 21, 3))
    log, _ = harness.restart()
    state = log.load()
    assert state.snapshot == m
    assert state.entries == ents(21, 25, 3)
    assert state.hard_state == HardState(3, "n2", 20)


@pytest.mark.parametrize("ours", [1, 2])
def test_snapshot_committed_but_marker_not_saved(harness: Harness, ours: int) -> None:
    """A crash between committing a received snapshot and saving its marker:
    recovery applies the same rule as the marker would have, once and for all."""
    log, snaps = harness.open()
    log.load()
    log.save(entries=ents(1, 10, ours), hard_state=HardState(2, "", 2))
    m = meta(6, 2)
    commit_snapshot(snaps, m)
    for _ in range(2):  # the decision is stable across restarts
        log, _ = harness.restart()
        state = log.load()
        assert state.snapshot == m
        assert state.entries == (ents(7, 10, 2) if ours == 2 else [])
        assert state.hard_state.commit == 6
    log.save(entries=ents(7, 8, 3), hard_state=HardState(3, "", 6))
    log, _ = harness.restart()
    assert log.load().entries == ents(7, 8, 3)


def test_compaction_keeps_what_the_snapshot_does_not_cover(harness: Harness) -> None:
    log, snaps = harness.open()
    log.load()
    for first in range(1, 400, 20):
        log.save(entries=ents(first, first + 19, 1), hard_state=HardState(1, "n1", first + 9))
    with pytest.raises(ValueError, match="no committed snapshot covers it"):
        log.compact(150)
    m = meta(250, 1)
    commit_snapshot(snaps, m)
    log.compact(250)
    log.save(entries=ents(401, 410, 1))
    log, snaps = harness.restart()
    state = log.load()
    assert state.snapshot == m
    assert state.entries == ents(251, 410, 1)
    assert state.hard_state == HardState(1, "n1", 390)
    with snaps.open() as reader:
        assert reader.read() == snapshot_bytes(250)


def test_unsynced_batch_is_durable_after_a_synced_one(harness: Harness) -> None:
    log, _ = harness.open()
    log.load()
    log.save(entries=ents(1, 2, 1), sync=False)
    log.save(hard_state=HardState(1, "", 1))
    log.save(entries=ents(3, 3, 1), sync=False)
    log.save()  # an empty synced save flushes
    log, _ = harness.restart()
    assert log.load().entries == ents(1, 3, 1)


def test_memory_crash_loses_only_unsynced_batches(tmp_path: object) -> None:
    from ramraft.server.storage import MemoryDisk, open_memory_storage

    disk = MemoryDisk()
    log, _ = open_memory_storage(disk)
    log.load()
    log.save(entries=ents(1, 2, 1))
    log.save(entries=ents(3, 4, 1), sync=False)
    # crash: the store object is dropped without close()
    log, _ = open_memory_storage(disk)
    assert log.load().entries == ents(1, 2, 1)


def test_call_order_is_enforced(harness: Harness) -> None:
    log, _ = harness.open()
    with pytest.raises(RuntimeError, match=r"call load\(\) first"):
        log.save(entries=ents(1, 1, 1))
    log.load()
    with pytest.raises(RuntimeError, match="may be called only once"):
        log.load()
    log.close()
    with pytest.raises(RuntimeError, match="the log store is closed"):
        log.save(entries=ents(1, 1, 1))


def inject_write_failure(harness: Harness, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    error = OSError(errno.ENOSPC, "No space left on device")
    if harness.kind == "memory":
        harness.disk.fail_writes = error
        return
    import os

    real_pwrite = os.pwrite

    def failing(*args: object, **kwargs: object) -> int:
        raise error

    def short_then_fail(fd: int, data: bytes, offset: int) -> int:
        monkeypatch.setattr(os, "pwrite", failing)
        return real_pwrite(fd, bytes(data)[: len(data) // 2], offset)

    if where == "write":
        monkeypatch.setattr(os, "pwrite", short_then_fail)
    else:
        monkeypatch.setattr(os, "fdatasync", failing)


@pytest.mark.parametrize("where", ["write", "sync"])
def test_io_error_fails_the_store_and_keeps_acknowledged_data(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    log, _ = harness.open()
    log.load()
    log.save(entries=ents(1, 5, 1), hard_state=HardState(1, "", 2))
    inject_write_failure(harness, monkeypatch, where)
    with pytest.raises(StorageFailedError, match="No space left on device"):
        log.save(entries=ents(6, 9, 1), hard_state=HardState(1, "", 5))
    monkeypatch.undo()
    with pytest.raises(StorageFailedError, match="refuses writes"):
        log.save(hard_state=HardState(2, "", 5))
    with pytest.raises(StorageFailedError, match="refuses writes"):
        log.compact(1)
    assert "No space left on device" in str(log.failure), log.failure
    log, _ = harness.restart()
    state = log.load()
    # The failed batch was never acknowledged; it may be there (its write
    # reached the page cache before the sync failed) or not, but nothing else.
    assert state.entries in (ents(1, 5, 1), ents(1, 9, 1))
    assert state.hard_state in (HardState(1, "", 2), HardState(1, "", 5))
    if where == "write":
        assert state.entries == ents(1, 5, 1)
    log.save(entries=ents(len(state.entries) + 1, 12, 1))  # a restarted store works


def _random_history(seed: int, harness: Harness, steps: int) -> None:
    """Random valid histories against a plain-list reference model,
    restarting now and then; every restart must give back the reference."""
    rng = random.Random(seed)
    log, snaps = harness.open()
    log.load()
    term, commit, vote = 1, 0, ""
    log.save(hard_state=HardState(term, vote, commit))
    base = (0, 0)  # (index, term) the reference log restarts after
    ref: list[Entry] = []  # entries after base

    def last() -> int:
        return base[0] + len(ref)

    def term_at(i: int) -> int | None:
        if i == base[0]:
            return base[1]
        return ref[i - base[0] - 1].term if base[0] < i <= last() else None

    def expect(state_snapshot: SnapshotMeta | None) -> list[Entry]:
        s = state_snapshot.index if state_snapshot else 0
        if s > base[0] and term_at(s) != (state_snapshot.term if state_snapshot else 0):
            return []
        return [e for e in ref if e.index > s]

    for _ in range(steps):
        op = rng.random()
        if op < 0.45:  # append
            n = rng.randint(1, 8)
            batch = [
                Entry(term, i, rng.randbytes(rng.randint(0, 40)))
                for i in range(last() + 1, last() + n + 1)
            ]
            log.save(entries=batch, hard_state=HardState(term, vote, commit))
            ref.extend(batch)
        elif op < 0.55 and last() > max(commit, base[0]):  # conflict: new term overwrites a suffix
            term += 1
            vote = ""
            start = rng.randint(max(commit, base[0]) + 1, last())
            batch = [Entry(term, i, b"c%d" % i) for i in range(start, start + rng.randint(1, 4))]
            log.save(entries=batch, hard_state=HardState(term, vote, commit))
            del ref[start - base[0] - 1 :]
            ref.extend(batch)
        elif op < 0.7:  # commit advances, or a new term with a vote
            if rng.random() < 0.5:
                commit = rng.randint(commit, last())
            else:
                term += 1
                vote = rng.choice(["", "n2", "n3"])
            log.save(hard_state=HardState(term, vote, commit))
        elif op < 0.78 and commit > base[0]:  # local snapshot, then compaction
            i = rng.randint(base[0] + 1, commit)
            t = term_at(i)
            assert t is not None
            commit_snapshot(snaps, meta(i, t), size=rng.randint(0, 5000))
            log.compact(i)
        elif op < 0.83:  # snapshot from a leader, beyond our commit
            i = rng.randint(commit + 1, last() + 5)
            matching = term_at(i) if rng.random() < 0.5 else None
            t = matching if matching is not None else term
            m = meta(i, t)
            commit_snapshot(snaps, m)
            if rng.random() < 0.2:  # crash before the marker was saved
                log, snaps = harness.restart()
                state = log.load()
            else:
                log.save(snapshot=m, hard_state=HardState(term, vote, i))
            keep = term_at(i) == t
            ref = [e for e in ref if e.index > i] if keep else []
            base = (i, t)
            commit = i
        else:  # restart
            log, snaps = harness.restart()
            state = log.load()
            assert state.entries == expect(state.snapshot)
            assert state.hard_state.term == term
            assert state.hard_state.vote == vote
            assert state.hard_state.commit == max(
                commit, state.snapshot.index if state.snapshot else 0
            )
            # recovery may drop a prefix covered by the snapshot; follow it
            if state.snapshot and state.snapshot.index > base[0]:
                s = state.snapshot
                ref = [e for e in ref if e.index > s.index] if term_at(s.index) == s.term else []
                base = (s.index, s.term)
    log, snaps = harness.restart()
    state = log.load()
    assert state.entries == expect(state.snapshot)


@pytest.mark.parametrize("seed", range(6))
def test_random_histories_match_a_reference_model(harness: Harness, seed: int) -> None:
    _random_history(seed, harness, steps=250)

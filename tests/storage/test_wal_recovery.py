"""Crash points, bit flips and damaged directories: the file WAL's recovery."""

from __future__ import annotations

import os
import random
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
from crc32c import crc32c
from structlog.testing import capture_logs

from ramraft.consensus.types import Entry, HardState
from ramraft.server.storage import (
    CorruptionError,
    FileLogStore,
    FileSnapshotStore,
    UnsupportedVersionError,
    open_storage,
)
from ramraft.server.storage import encoding as codec

from .helpers import ents, meta, rewrite, snapshot_bytes

SEGMENT = 4096


@dataclass
class Written:
    """A WAL written one batch at a time, with where each batch ended."""

    wal_dir: Path
    snap_dir: Path
    batches: list[tuple[list[Entry], HardState]]
    ends: list[tuple[str, int]]  # (segment path, file size) after each batch

    def expected(self, count: int) -> tuple[list[Entry], HardState]:
        entries: list[Entry] = []
        hard_state = HardState()
        for batch, hs in self.batches[:count]:
            del entries[batch[0].index - 1 :]
            entries.extend(batch)
            hard_state = hs
        return entries, hard_state

    def in_segment(self, path: str) -> list[int]:
        """Numbers of the batches that ended in segment ``path``."""
        return [i for i, (p, _) in enumerate(self.ends) if p == path]


def write_log(tmp_path: Path, batches: int = 150, seed: int = 7) -> Written:
    rng = random.Random(seed)
    log, _ = open_storage(tmp_path / "data", segment_size=SEGMENT, preallocate=False)
    log.load()
    written: list[tuple[list[Entry], HardState]] = []
    ends = []
    last, term, commit = 0, 1, 0
    for _ in range(batches):
        if rng.random() < 0.1 and last > commit + 2:  # a conflicting suffix replaced
            term += 1
            first = rng.randint(commit + 1, last)
        else:
            first = last + 1
        batch = ents(first, first + rng.randint(0, 3), term)
        last = batch[-1].index
        commit = max(commit, last - rng.randint(0, 4))
        hs = HardState(term, "n1", commit)
        log.save(entries=batch, hard_state=hs)
        written.append((batch, hs))
        path = log.segments[-1]
        ends.append((path, os.path.getsize(path)))
    log.close()
    return Written(tmp_path / "data" / "wal", tmp_path / "data" / "snap", written, ends)


def recover(w: Written) -> tuple[list[Entry], HardState]:
    log = FileLogStore(
        str(w.wal_dir), FileSnapshotStore(str(w.snap_dir)), segment_size=SEGMENT, preallocate=False
    )
    try:
        state = log.load()
    finally:
        log.close()
    return state.entries, state.hard_state


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Written:
    return write_log(tmp_path_factory.mktemp("wal"))


@pytest.fixture
def written(pristine: Written, tmp_path: Path) -> Written:
    shutil.copytree(pristine.wal_dir.parent, tmp_path / "data")
    return Written(
        tmp_path / "data" / "wal",
        tmp_path / "data" / "snap",
        pristine.batches,
        [(str(tmp_path / "data" / "wal" / Path(p).name), s) for p, s in pristine.ends],
    )


def test_the_log_spans_several_segments(written: Written) -> None:
    assert len(os.listdir(written.wal_dir)) >= 5
    assert recover(written) == written.expected(len(written.batches))


@pytest.mark.parametrize("tail", ["cut", "zeros", "garbage"])
def test_cut_at_every_byte_of_the_last_records(written: Written, tail: str) -> None:
    """The last segment ends at every byte offset of its last records (a
    crash in the middle of a write): recovery keeps exactly the records that
    were whole, and warns when it drops a torn one."""
    last_path = written.ends[-1][0]
    in_last = written.in_segment(last_path)
    records = 5 if tail == "cut" else 3
    assert len(in_last) > records
    original = Path(last_path).read_bytes()
    start = written.ends[in_last[-records - 1]][1]
    rng = random.Random(1)
    for offset in range(start, len(original) + 1):
        data = original[:offset]
        if tail == "zeros":
            data += bytes(len(original) + 100 - offset)
        elif tail == "garbage":
            data += rng.randbytes(rng.randint(1, 64)).replace(codec.FRAME_MAGIC[:1], b"\x00")
        rewrite(last_path, data)
        whole = sum(1 for i in in_last if written.ends[i][1] <= offset) + in_last[0]
        with capture_logs() as logs:
            assert recover(written) == written.expected(whole), f"cut at {offset}"
        torn = [e for e in logs if e["event"] == "wal_torn_tail_truncated"]
        at_boundary = offset in {written.ends[i][1] for i in in_last}
        clean_end = at_boundary and tail != "garbage"
        assert bool(torn) == (not clean_end), f"cut at {offset}: {logs}"
        if torn:
            assert torn[0]["log_level"] == "warning" and torn[0]["offset"] <= offset
    # and the truncated log takes new writes that a later restart sees
    rewrite(last_path, original[: len(original) - 3])
    entries, hs = recover(written)
    log = FileLogStore(
        str(written.wal_dir),
        FileSnapshotStore(str(written.snap_dir)),
        segment_size=SEGMENT,
        preallocate=False,
    )
    log.load()
    more = ents(entries[-1].index + 1, entries[-1].index + 3, hs.term)
    log.save(entries=more)
    log.close()
    assert recover(written)[0] == entries + more


def frames_end(data: bytes) -> int:
    """Where the valid frames of a segment end."""
    pos = codec.SEGMENT_HEADER_SIZE
    while True:
        try:
            pos = codec.read_frame(data, pos)[1]
        except codec.FrameError:
            return pos


def flip(path: str, offset: int, bit: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ (1 << bit)]))


def assert_refuses(written: Written, path: str, offset: int) -> None:
    with pytest.raises(CorruptionError) as info:
        recover(written)
    message = str(info.value)
    assert Path(path).name in message and "byte offset" in message, message
    assert "data directory" in message and "members remove" in message, message
    assert info.value.offset is not None and info.value.offset <= offset


def test_bit_flip_in_the_middle_of_the_last_segment_is_refused(written: Written) -> None:
    last_path = written.ends[-1][0]
    in_last = written.in_segment(last_path)
    victim = in_last[len(in_last) // 2]
    start, end = written.ends[victim - 1][1], written.ends[victim][1]
    original = Path(last_path).read_bytes()
    for offset in range(start, end):  # every byte of one record, header and payload
        flip(last_path, offset, offset % 8)
        assert_refuses(written, last_path, offset)
        rewrite(last_path, original)
    assert recover(written) == written.expected(len(written.batches))


@pytest.mark.parametrize("which", ["middle", "last record", "header", "checkpoint"])
def test_bit_flip_in_an_older_segment_is_refused(written: Written, which: str) -> None:
    segments = sorted({p for p, _ in written.ends})
    path = segments[len(segments) // 2]
    in_seg = written.in_segment(path)
    size = os.path.getsize(path)
    offsets = {
        "middle": written.ends[in_seg[len(in_seg) // 2]][1] - 5,
        "last record": size - 2,  # a torn-looking end is damage in a segment that is not the last
        "header": 9,
        "checkpoint": codec.SEGMENT_HEADER_SIZE + 20,
    }
    flip(path, offsets[which], 3)
    assert_refuses(written, path, offsets[which])


def test_damage_to_the_very_last_record_reads_as_a_torn_tail(written: Written) -> None:
    """Documented limit: a flipped bit in the newest record cannot be told
    from a torn write. It is dropped with a warning; that is safe because a
    write whose sync did not finish was never acknowledged."""
    last_path = written.ends[-1][0]
    flip(last_path, os.path.getsize(last_path) - 4, 0)
    with capture_logs() as logs:
        assert recover(written) == written.expected(len(written.batches) - 1)
    assert any(e["event"] == "wal_torn_tail_truncated" for e in logs)


def test_missing_middle_segment_is_refused(written: Written) -> None:
    segments = sorted(os.listdir(written.wal_dir))
    os.unlink(written.wal_dir / segments[2])
    with pytest.raises(CorruptionError, match=f"{segments[2]}.*missing"):
        recover(written)


def test_missing_first_segment_is_refused(written: Written) -> None:
    segments = sorted(os.listdir(written.wal_dir))
    os.unlink(written.wal_dir / segments[0])
    with pytest.raises(CorruptionError, match="missing"):
        recover(written)


def test_lost_snapshot_after_compaction_is_refused(tmp_path: Path) -> None:
    log, snaps = open_storage(tmp_path / "d", segment_size=4096)
    log.load()
    for first in range(1, 300, 10):
        log.save(entries=ents(first, first + 9, 1), hard_state=HardState(1, "", first + 9))
    with snaps.create(meta(200, 1)) as writer:
        writer.write(snapshot_bytes(200))
        writer.commit()
    log.compact(200)
    log.close()
    (snap_file,) = os.listdir(tmp_path / "d" / "snap")
    os.unlink(tmp_path / "d" / "snap" / snap_file)
    log, _ = open_storage(tmp_path / "d", segment_size=4096)
    with pytest.raises(CorruptionError, match="missing"):
        log.load()
    log.close()


def test_unknown_segment_version_is_refused_with_a_clear_message(written: Written) -> None:
    path = sorted(written.wal_dir.iterdir())[0]
    data = bytearray(path.read_bytes())
    struct.pack_into("<H", data, 8, 9)
    struct.pack_into("<I", data, 20, crc32c(bytes(data[:20])))
    rewrite(path, bytes(data))
    with pytest.raises(UnsupportedVersionError, match=r"format version 9.*reads only version 1"):
        recover(written)


def test_leftover_temporary_segment_is_removed(written: Written) -> None:
    stray = written.wal_dir / "wal-00000000000000000999.log.tmp"
    stray.write_bytes(b"half a segment")
    assert recover(written) == written.expected(len(written.batches))
    assert not stray.exists()


def test_segments_are_bounded_and_preallocated(tmp_path: Path) -> None:
    log, _ = open_storage(tmp_path / "d", segment_size=16384)
    log.load()
    for first in range(1, 2000, 50):
        log.save(entries=ents(first, first + 49, 1))
    big = [Entry(1, 2001, b"z" * 40_000)]  # larger than a segment: gets one of its own
    log.save(entries=big)
    log.save(entries=ents(2002, 2002, 1))
    segments = log.segments
    log.close()
    sizes = [os.path.getsize(p) for p in segments]
    assert len(segments) > 5
    assert all(s == 16384 for s in sizes[:-3])  # preallocated to the segment size
    assert max(sizes) > 40_000
    log, _ = open_storage(tmp_path / "d", segment_size=16384)
    entries = log.load().entries
    assert entries[-2:] == big + ents(2002, 2002, 1)
    assert [e.index for e in entries] == list(range(1, 2003))
    log.close()


def test_compaction_deletes_whole_segments_oldest_first(tmp_path: Path) -> None:
    log, snaps = open_storage(tmp_path / "d", segment_size=4096)
    log.load()
    for first in range(1, 600, 10):
        log.save(entries=ents(first, first + 9, 1), hard_state=HardState(1, "n3", first + 9))
    before = log.segments
    with snaps.create(meta(400, 1)) as writer:
        writer.write(snapshot_bytes(400))
        writer.commit()
    log.compact(400)
    after = log.segments
    log.close()
    assert len(after) < len(before) and after == before[len(before) - len(after) :]
    assert sorted(os.listdir(tmp_path / "d" / "wal")) == [Path(p).name for p in after]
    log, _ = open_storage(tmp_path / "d", segment_size=4096)
    state = log.load()
    assert state.entries == ents(401, 600, 1)
    assert state.hard_state == HardState(1, "n3", 600)
    log.close()


def test_a_crash_half_way_through_compaction_recovers(tmp_path: Path) -> None:
    """Compaction deletes oldest first; a crash after some deletions leaves a
    gapless run of segments that recovers to the same log."""
    log, snaps = open_storage(tmp_path / "d", segment_size=4096)
    log.load()
    for first in range(1, 600, 10):
        log.save(entries=ents(first, first + 9, 1), hard_state=HardState(1, "", first + 9))
    with snaps.create(meta(400, 1)) as writer:
        writer.write(snapshot_bytes(400))
        writer.commit()
    segments = log.segments
    log.close()
    os.unlink(segments[0])
    os.unlink(segments[1])  # the crash came before the others went
    log, _ = open_storage(tmp_path / "d", segment_size=4096)
    assert log.load().entries == ents(401, 600, 1)
    log.close()


def test_truncation_is_crash_safe_at_every_byte(tmp_path: Path) -> None:
    """A suffix replacement torn at any byte leaves the old log or the new
    one, never a mix."""
    log, _ = open_storage(tmp_path / "d", segment_size=1 << 20, preallocate=False)
    log.load()
    log.save(entries=ents(1, 20, 1), hard_state=HardState(1, "", 5))
    path = log.segments[-1]
    before = os.path.getsize(path)
    log.save(entries=ents(8, 9, 2), hard_state=HardState(2, "", 5))
    log.close()
    original = Path(path).read_bytes()
    for offset in range(before, len(original) + 1):
        rewrite(path, original[:offset])
        log = FileLogStore(
            str(tmp_path / "d" / "wal"),
            FileSnapshotStore(str(tmp_path / "d" / "snap")),
            preallocate=False,
        )
        with capture_logs():
            entries = log.load().entries
        log.close()
        if offset == len(original):
            assert entries == ents(1, 7, 1) + ents(8, 9, 2)
        else:
            assert entries == ents(1, 20, 1)


@pytest.mark.parametrize("seek_data", [True, False])
def test_torn_tail_inside_a_preallocated_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seek_data: bool
) -> None:
    if not seek_data:  # a file system without SEEK_DATA: the whole file is read
        monkeypatch.delattr(os, "SEEK_DATA", raising=False)
    log, _ = open_storage(tmp_path / "d", segment_size=1 << 16)
    log.load()
    for i in range(1, 21):
        log.save(entries=ents(i, i, 1), hard_state=HardState(1, "", i - 1))
    path = log.segments[-1]
    log.close()
    assert os.path.getsize(path) == 1 << 16
    end = frames_end(Path(path).read_bytes())
    torn = codec.encode_frame(entries=ents(21, 25, 1))
    fd = os.open(path, os.O_WRONLY)
    os.pwrite(fd, bytes(torn[: len(torn) // 2]), end)  # the crash came mid-write
    os.close(fd)
    log, _ = open_storage(tmp_path / "d", segment_size=1 << 16)
    with capture_logs() as logs:
        state = log.load()
    assert state.entries == ents(1, 20, 1)
    assert [e["event"] for e in logs].count("wal_torn_tail_truncated") == 1
    assert os.path.getsize(path) == 1 << 16  # preallocated again
    log.save(entries=ents(21, 22, 2))
    log.close()
    log, _ = open_storage(tmp_path / "d", segment_size=1 << 16)
    with capture_logs() as logs:
        assert log.load().entries == ents(1, 20, 1) + ents(21, 22, 2)
    assert "wal_torn_tail_truncated" not in [e["event"] for e in logs]
    log.close()


def test_one_data_sync_per_batch_and_directory_syncs_for_new_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log, _ = open_storage(tmp_path / "d", segment_size=1 << 16)
    log.load()
    calls: list[str] = []
    real_datasync, real_fsync = os.fdatasync, os.fsync

    def datasync(fd: int) -> None:
        calls.append("datasync")
        real_datasync(fd)

    def fsync(fd: int) -> None:
        calls.append("fsync-dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync")
        real_fsync(fd)

    monkeypatch.setattr(os, "fdatasync", datasync)
    monkeypatch.setattr(os, "fsync", fsync)
    log.save(entries=ents(1, 100, 1), hard_state=HardState(1, "", 0))  # a group commit
    assert calls == ["datasync"]
    calls.clear()
    log.save(entries=ents(101, 102, 1), sync=False)
    log.save(hard_state=HardState(1, "", 50), sync=False)
    assert calls == []
    log.save()
    assert calls == ["datasync"]
    calls.clear()
    segments = len(log.segments)
    while len(log.segments) == segments:  # until a batch starts a new segment
        log.save(entries=ents(log.last_index + 1, log.last_index + 20, 1))
    # the new segment file is synced, renamed, and the directory synced, then
    # the batch written into it is synced once
    assert calls[-3:] == ["fsync", "fsync-dir", "datasync"]
    log.close()


def test_compaction_after_a_truncation_below_a_segment_checkpoint(tmp_path: Path) -> None:
    """The oldest surviving segment may hold a batch that replaced entries
    from a deleted segment (it overwrote uncommitted entries back then).
    Replaying it must give the same log, not a false alarm."""
    big = b"B" * 3000
    log, snaps = open_storage(tmp_path / "d", segment_size=4096, preallocate=False)
    log.load()
    log.save(entries=ents(1, 40, 1), hard_state=HardState(1, "", 10))  # segment 1
    log.save(entries=[Entry(1, 41, big)])  # does not fit: segment 2 (checkpoint: last 40)
    log.save(entries=ents(20, 25, 2), hard_state=HardState(2, "", 10))  # conflict, in segment 2
    log.save(entries=[Entry(2, 26, big)])  # segment 3 (checkpoint: last 25)
    log.save(entries=ents(27, 60, 2), hard_state=HardState(2, "", 60))
    assert len(log.segments) >= 3
    with snaps.create(meta(40, 2)) as writer:
        writer.write(b"state at 40")
        writer.commit()
    log.compact(40)  # deletes segment 1 only: segment 2 holds entry 41
    assert Path(log.segments[0]).name == "wal-00000000000000000002.log"
    log.close()
    log, _ = open_storage(tmp_path / "d", segment_size=4096, preallocate=False)
    state = log.load()
    assert state.entries == ents(41, 60, 2)
    log.close()


def test_a_batch_may_not_discard_committed_entries(tmp_path: Path) -> None:
    log, _ = open_storage(tmp_path / "d")
    log.load()
    log.save(entries=ents(1, 10, 1), hard_state=HardState(1, "", 8))
    with pytest.raises(ValueError, match="discard committed"):
        log.save(entries=ents(5, 6, 1))  # same terms, but 7..8 (committed) would go
    log.save(entries=ents(5, 8, 1))  # up to the commit index is fine
    log.close()


def test_repeated_compaction_keeps_the_wal_small(tmp_path: Path) -> None:
    """A long-lived node snapshots again and again: each compaction must be
    able to delete what the last snapshot covers, so the WAL (and the time a
    restart spends replaying it) stays bounded instead of growing until a
    large segment fills up (found by the 30-minute chaos soak)."""
    log, snaps = open_storage(tmp_path / "d")  # default 64 MiB segments
    log.load()
    first_segment = log.segments[0]
    index = 0
    big = b"x" * 2000
    for _ in range(8):
        batch = [Entry(1, index + n + 1, big) for n in range(1000)]  # about 2 MB
        log.save(entries=batch, hard_state=HardState(1, "n1", index + 1000))
        index += 1000
        with snaps.create(meta(index, 1)) as writer:
            writer.write(snapshot_bytes(index))
            writer.commit()
        log.compact(index)
    segments = log.segments
    log.close()
    assert len(segments) <= 2, segments
    assert first_segment not in segments, "the segment the snapshots cover is still replayed"
    log, _ = open_storage(tmp_path / "d")
    state = log.load()
    assert state.snapshot is not None and state.snapshot.index == index
    assert state.entries == []
    log.close()

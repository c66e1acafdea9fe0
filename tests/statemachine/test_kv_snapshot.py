"""Snapshots of the key-value machine: round trip, the copy-on-write view under
concurrent writes, corruption, and job lifecycle."""

from __future__ import annotations

import gc
import io
import random
import threading
from collections.abc import Callable

import pytest

from ramraft.server.machines import kv
from ramraft.server.machines.kv import (
    CasResult,
    KVMachine,
    PutResult,
    encode_cas,
    encode_delete,
    encode_put,
)
from ramraft.server.machines.statemachine import (
    CommandError,
    ErrorCode,
    SnapshotAbortedError,
    SnapshotFormatError,
    SnapshotInProgressError,
    SnapshotJob,
)


def snapshot_bytes(m: KVMachine) -> bytes:
    buf = io.BytesIO()
    job = m.snapshot()
    assert isinstance(job, SnapshotJob)
    n = job.write_to(buf)
    assert n == len(buf.getvalue())
    return buf.getvalue()


def restored(data: bytes, **kwargs: int | None) -> KVMachine:
    m = KVMachine(**kwargs)  # type: ignore[arg-type]
    m.restore(io.BytesIO(data))
    return m


def populated(n: int = 50, seed: int = 1) -> KVMachine:
    rng = random.Random(seed)
    m = KVMachine()
    for i in range(1, n + 1):
        m.apply(i, encode_put(f"k{rng.randrange(n * 2):04d}", rng.randbytes(rng.randrange(20))))
    return m


def test_round_trip_with_sessions() -> None:
    m = KVMachine()
    m.apply(1, encode_put("a", b"1", (10, 1)))
    m.apply(2, encode_cas("b", None, b"2", (11, 1)))
    m.apply(3, encode_delete("a", (12, 1)))
    m.apply(4, encode_put("é/\U0001f600", b"\x00" * 1000))
    data = snapshot_bytes(m)
    r = restored(data)
    assert list(r.items()) == list(m.items())
    assert r.applied_index == 4
    assert r.range("é")[0] == [("é/\U0001f600", b"\x00" * 1000)]
    # sessions survived: retries get the first replies and are not re-applied
    assert r.apply(5, encode_put("a", b"1", (10, 1))) == PutResult(1)
    assert r.get("a") == (False, b"")
    assert r.apply(6, encode_cas("b", None, b"2", (11, 1))) == CasResult(True, False, b"2", 2)
    stale = r.apply(7, encode_put("x", b"", (99, 3)))
    assert isinstance(stale, CommandError) and stale.code is ErrorCode.SESSION_EXPIRED
    # and the restored machine's own snapshot is identical up to what we just did
    assert snapshot_bytes(restored(data)) == data


def test_session_lru_order_survives_restore() -> None:
    m = KVMachine(max_sessions=2, session_idle_entries=None)
    m.apply(1, encode_put("k", b"", (1, 1)))
    m.apply(2, encode_put("k", b"", (2, 1)))
    m.apply(3, encode_put("k", b"", (1, 1)))  # 2 is now least recently used
    r = restored(snapshot_bytes(m), max_sessions=2, session_idle_entries=None)
    for machine in (m, r):
        machine.apply(4, encode_put("k", b"", (3, 1)))
        assert 2 not in machine.sessions and 1 in machine.sessions


def test_empty_machine_round_trip() -> None:
    r = restored(snapshot_bytes(KVMachine()))
    assert len(r) == 0 and r.applied_index == 0


def test_replicas_write_identical_snapshots() -> None:
    rng = random.Random(3)
    log = []
    for _ in range(300):
        k = f"k{rng.randrange(40)}"
        op = rng.random()
        session = (rng.randrange(1, 5), rng.randrange(1, 4)) if rng.random() < 0.5 else None
        if op < 0.5:
            log.append(encode_put(k, rng.randbytes(5), session))
        elif op < 0.7:
            log.append(encode_delete(k, session))
        else:
            log.append(encode_cas(k, rng.choice([None, b"x"]), b"x", session))
    a, b = KVMachine(), KVMachine()
    for i, entry in enumerate(log, 1):
        assert a.apply(i, entry) == b.apply(i, entry)
    assert snapshot_bytes(a) == snapshot_bytes(b)


def test_large_values_make_bounded_frames() -> None:
    m = KVMachine()
    for i in range(40):
        m.apply(i + 1, encode_put(f"k{i:02d}", bytes([i]) * 300_000))
    data = snapshot_bytes(m)
    assert list(restored(data).items()) == list(m.items())
    # walk the frames: none much above the 1 MiB target
    import struct

    pos, biggest = 5, 0
    while pos < len(data):
        length, _ = struct.unpack_from("<II", data, pos)
        biggest = max(biggest, length)
        pos += 8 + length
    assert biggest < 4 * (1 << 20)


# -- copy-on-write view under concurrent writes -------------------------------------


class CallbackStream(io.BytesIO):
    """Runs ``on_write`` after each write: lets a test change the machine
    between the snapshot job's chunks, deterministically."""

    def __init__(self, on_write: Callable[[], None]) -> None:
        super().__init__()
        self.on_write = on_write

    def write(self, data: bytes) -> int:  # type: ignore[override]
        n = super().write(data)
        self.on_write()
        return n


def random_command(rng: random.Random, keyspace: int) -> bytes:
    k = f"k{rng.randrange(keyspace):03d}"
    r = rng.random()
    if r < 0.45:
        return encode_put(k, rng.randbytes(rng.randrange(8)))
    if r < 0.8:
        return encode_delete(k)
    return encode_cas(k, rng.choice([None, b""]), rng.randbytes(3))


@pytest.mark.parametrize("seed", range(60))
def test_view_is_the_state_at_snapshot_time_despite_writes(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tiny chunks so that many writes land between chunks, on keys behind,
    # at and ahead of the cursor.
    monkeypatch.setattr(kv, "_MIN_CHUNK_KEYS", 1)
    monkeypatch.setattr(kv, "_MAX_CHUNK_KEYS", 1 + seed % 4)
    rng = random.Random(seed)
    keyspace = 60
    m = KVMachine()
    index = 0
    for _ in range(rng.randrange(0, 120)):
        index += 1
        m.apply(index, random_command(rng, keyspace))
    expected = list(m.items())
    expected_index = m.applied_index

    def mutate() -> None:
        nonlocal index
        for _ in range(rng.randrange(4)):
            index += 1
            m.apply(index, random_command(rng, keyspace))

    stream = CallbackStream(mutate)
    job = m.snapshot()
    job.write_to(stream)
    r = restored(stream.getvalue())
    assert list(r.items()) == expected
    assert r.applied_index == expected_index
    # the live machine was not disturbed, and the view is gone
    assert m._views == []
    live = dict(m.items())
    assert [k for k, _ in m.range()[0]] == sorted(live)


@pytest.fixture
def frequent_thread_switches():
    """Make the interpreter switch threads every microsecond so that races
    between the job's thread and apply() show up (they fail this test at once
    when apply() stops taking the machine's lock)."""
    import sys

    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


@pytest.mark.parametrize("seed", range(4))
def test_view_in_a_worker_thread_while_the_loop_applies(
    seed: int, frequent_thread_switches: None
) -> None:
    m = KVMachine()
    n = 20_000
    for i in range(1, n + 1):
        m.apply(i, encode_put(f"key/{i:06d}", i.to_bytes(4, "big")))
    expected = list(m.items())
    job = m.snapshot()
    buf = io.BytesIO()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            job.write_to(buf)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=write)
    thread.start()
    rng = random.Random(seed)
    index = n
    while thread.is_alive() or index < n + 2000:
        index += 1
        k = f"key/{rng.randrange(1, n + 2000):06d}"
        if rng.random() < 0.5:
            m.apply(index, encode_put(k, b"changed"))
        else:
            m.apply(index, encode_delete(k))
    thread.join()
    assert not errors
    assert list(restored(buf.getvalue()).items()) == expected


def test_views_beyond_the_limit_are_refused() -> None:
    m = populated()
    jobs = [m.snapshot() for _ in range(kv.MAX_VIEWS)]
    with pytest.raises(SnapshotInProgressError, match="views are still open"):
        m.snapshot()
    jobs[0].close()
    job2 = m.snapshot()
    job2.write_to(io.BytesIO())
    m.snapshot().close()


def test_two_open_views_each_keep_their_own_state() -> None:
    """A state check's view and a snapshot's view, taken at different
    indexes, both write the state as of their own index while writes go on."""
    m = populated(200)
    first_expected = snapshot_bytes(populated(200))
    first = m.snapshot()
    for i in range(1000, 1100, 2):
        m.apply(i, encode_put(f"k{i % 300:04d}", b"changed"))
        m.apply(i + 1, encode_delete(f"k{(i * 7) % 400:04d}"))
    twin = KVMachine()
    twin.restore(io.BytesIO(snapshot_bytes(m)))
    second_expected = snapshot_bytes(twin)
    second = m.snapshot()
    for i in range(2000, 2100):
        m.apply(i, encode_put(f"k{i % 250:04d}", b"later"))
    out_second, out_first = io.BytesIO(), io.BytesIO()
    second.write_to(out_second)
    first.write_to(out_first)
    assert out_first.getvalue() == first_expected
    assert out_second.getvalue() == second_expected
    assert m._views == []


def test_closed_or_written_job_cannot_be_written() -> None:
    m = populated()
    job = m.snapshot()
    job.close()
    with pytest.raises(SnapshotAbortedError):
        job.write_to(io.BytesIO())
    job = m.snapshot()
    job.write_to(io.BytesIO())
    with pytest.raises(SnapshotAbortedError):
        job.write_to(io.BytesIO())


def test_abandoned_job_is_released_by_garbage_collection() -> None:
    m = populated()
    m.snapshot()  # dropped at once
    gc.collect()
    assert m._views == []
    m.snapshot().close()


def test_restore_aborts_a_running_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kv, "_MAX_CHUNK_KEYS", 2)
    m = populated(100)
    other = snapshot_bytes(populated(10, seed=9))
    job = m.snapshot()
    restored_once = False

    def restore_midway() -> None:
        nonlocal restored_once
        if not restored_once:
            restored_once = True
            m.restore(io.BytesIO(other))

    with pytest.raises(SnapshotAbortedError):
        job.write_to(CallbackStream(restore_midway))
    assert m._views == []
    assert list(m.items()) == list(populated(10, seed=9).items())


def test_journal_is_dropped_when_the_job_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kv, "_MAX_CHUNK_KEYS", 1)
    m = populated(30)
    job = m.snapshot()
    assert len(m._views) == 1
    view = m._views[0]
    for i in range(100, 120):
        m.apply(i, encode_put(f"new{i}", b"x"))
    assert view.before  # writes during the snapshot are journalled
    job.write_to(io.BytesIO())
    assert not view.before
    assert m._views == []
    # after the job, writes are no longer journalled
    m.apply(200, encode_put("after", b"x"))
    assert not view.before


# -- bad streams --------------------------------------------------------------------


def test_every_single_byte_corruption_is_detected() -> None:
    m = KVMachine()
    m.apply(1, encode_put("a", b"1", (1, 1)))
    m.apply(2, encode_put("b", b"22"))
    data = snapshot_bytes(m)
    target = KVMachine()
    target.apply(1, encode_put("mine", b"keep"))
    for pos in range(len(data)):
        for flip in (0x01, 0x80):
            bad = bytearray(data)
            bad[pos] ^= flip
            with pytest.raises(SnapshotFormatError):
                target.restore(io.BytesIO(bytes(bad)))
    # failed restores changed nothing
    assert list(target.items()) == [("mine", b"keep")] and target.applied_index == 1


def test_every_truncation_is_detected() -> None:
    data = snapshot_bytes(populated(20))
    target = KVMachine()
    for cut in range(len(data)):
        with pytest.raises(SnapshotFormatError):
            target.restore(io.BytesIO(data[:cut]))
    assert len(target) == 0


def test_well_framed_but_wrong_contents_are_rejected() -> None:
    import msgpack

    from ramraft.server.machines.statemachine import FrameWriter

    def stream(*frames: object) -> io.BytesIO:
        buf = io.BytesIO()
        w = FrameWriter(buf, b"RRKV", 2)
        for f in frames:
            w.frame(msgpack.packb(f, use_bin_type=True))
        buf.seek(0)
        return buf

    header = {"index": 3, "sessions": 0, "max_sessions": 1, "idle_entries": None}
    cases = [
        stream([1, 2]),  # header not a map
        stream({"index": "x", "sessions": 0}),
        stream(header, [2, ["b", "a"], [b"", b""]], [3, 2, 0]),  # unsorted keys
        stream(header, [2, ["a", "b"], [b"", b""]], [2, ["b"], [b""]], [3, 3, 0]),  # repeat
        stream(header, [2, ["a"], ["text"]], [3, 1, 0]),  # value not bytes
        stream(header, [2, ["a"], []], [3, 1, 0]),  # lengths differ
        stream(header, [2, ["a"], [b""]], [3, 5, 0]),  # count mismatch
        stream(header, [7]),  # unknown frame kind
        stream(header, [1, [[0, 1, 1, [[1, [1, 1]]]]]], [3, 0, 1]),  # bad session id
        stream(header, [1, [[5, 3, 1, [[2, [1, 1]]]]]], [3, 0, 1]),  # reply below floor
        stream(header, [1, [[5, 1, 1, [[3, [1, 1]], [2, [1, 1]]]]]], [3, 0, 1]),  # unsorted
        stream(header, [1, [[5, 1, 1, [[1, [9, 1]]]]]], [3, 0, 1]),  # unknown reply kind
        stream(header, [1, [[5, 1, 1, [[1, [2, 1, 7]]]]]], [3, 0, 1]),  # deleted not a bool
        stream(header, [1, [[5, 1, 1, [[1, [3, True, True, b"x"]]]]]], [3, 0, 1]),  # short
        stream(header, [1, [[5, 1, 1, [[1, [1, 1]]]], [5, 1, 1, []]]], [3, 0, 2]),  # repeat
        stream(header, [1, [[5, 0, 1, []]]], [3, 0, 1]),  # floor 0
        stream(header, [2, ["a"], [b""]]),  # no trailer
    ]
    m = KVMachine()
    for case in cases:
        with pytest.raises(SnapshotFormatError):
            m.restore(case)


def test_other_snapshot_kinds_are_rejected_with_a_clear_error() -> None:
    with pytest.raises(SnapshotFormatError, match="not a RRKV snapshot"):
        KVMachine().restore(io.BytesIO(b"RRMD\x01" + b"\x00" * 20))
    with pytest.raises(SnapshotFormatError, match="version 9"):
        KVMachine().restore(io.BytesIO(b"RRKV\x09"))
    with pytest.raises(SnapshotFormatError, match="claims"):
        KVMachine().restore(io.BytesIO(b"RRKV\x02\xff\xff\xff\xff\x00\x00\x00\x00"))


def test_clear() -> None:
    m = populated()
    job = m.snapshot()
    m.clear()
    assert len(m) == 0 and m.applied_index == 0 and len(m.sessions) == 0
    with pytest.raises(SnapshotAbortedError):
        job.write_to(io.BytesIO())


def test_reads_during_a_restore_in_a_worker_thread_see_old_or_new_state(
    frequent_thread_switches: None,
) -> None:
    old_state = KVMachine()
    for i in range(1, 3001):
        old_state.apply(i, encode_put(f"a/{i:05d}", b"old"))
    new_state = KVMachine()
    for i in range(1, 3001):
        new_state.apply(i, encode_put(f"b/{i:05d}", b"new"))
    data = snapshot_bytes(new_state)
    m = KVMachine()
    m.restore(io.BytesIO(snapshot_bytes(old_state)))
    errors: list[BaseException] = []
    thread = threading.Thread(target=lambda: m.restore(io.BytesIO(data)))
    thread.start()
    seen = set()
    while thread.is_alive():
        try:
            items, _ = m.range(limit=50)
            first = {v for _, v in items}
            assert len(first) == 1
            seen |= first
            assert m.get("a/00001") in ((True, b"old"), (False, b""))
        except BaseException as exc:
            errors.append(exc)
            break
    thread.join()
    assert not errors
    assert list(m.items()) == list(new_state.items())

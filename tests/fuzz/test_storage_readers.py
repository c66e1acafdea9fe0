"""Fuzz the WAL and snapshot readers: whatever the bytes on disk, reading
them ends in a clean result or a StorageError naming the damage -- never
another exception, a hang, or data that differs from what was written."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from ramraft.consensus.types import ConfState, Entry, EntryKind, HardState, SnapshotMeta
from ramraft.server.storage import StorageError
from ramraft.server.storage import encoding as codec
from ramraft.server.storage.snapshots import FileSnapshotStore
from ramraft.server.storage.wal import FileLogStore
from tests.fuzz.budget import fuzz_settings

CONF = ConfState(voters=frozenset({"n1", "n2", "n3"}))


Batch = tuple[SnapshotMeta | None, bool, list[Entry], HardState | None]


@st.composite
def batches(draw: st.DrawFn) -> Batch:
    """What the WAL writer takes in one save: a snapshot marker, contiguous
    entries with terms that never go down, a hard state (each optional)."""
    ids = st.text(alphabet="abcn0123456789", min_size=1, max_size=4)
    snapshot = draw(
        st.none()
        | st.builds(
            SnapshotMeta,
            index=st.integers(0, 2**40),
            term=st.integers(0, 2**20),
            conf=st.builds(
                ConfState,
                st.frozensets(ids.map("v{}".format), max_size=3),  # voters and learners
                st.frozensets(ids.map("l{}".format), max_size=2),  # are disjoint
            ),
        )
    )
    first, term = draw(st.integers(1, 2**40)), draw(st.integers(0, 2**20))
    entries = []
    for n, data in enumerate(draw(st.lists(st.binary(max_size=40), max_size=6))):
        term += draw(st.integers(0, 2))
        entries.append(Entry(term, first + n, data, draw(st.sampled_from(EntryKind))))
    hard_state = draw(
        st.none() | st.builds(HardState, st.integers(0, 2**20), ids, st.integers(0, 2**40))
    )
    return snapshot, draw(st.booleans()), entries, hard_state


def encoded(batch: Batch) -> bytes:
    buf = bytearray()
    codec.encode_payload(buf, *batch)
    return bytes(buf)


def expected_items(batch: Batch) -> list[codec.Item]:
    snapshot, retain, entries, hard_state = batch
    items: list[codec.Item] = [] if snapshot is None else [codec.SnapshotItem(snapshot, retain)]
    return items + entries + ([] if hard_state is None else [hard_state])


@fuzz_settings()
@given(batches())
def test_payload_decodes_to_what_was_encoded(batch: Batch) -> None:
    data = encoded(batch)
    assert codec.decode_payload(data, 0, len(data)) == expected_items(batch)


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """A valid payload with one byte changed, or cut short."""
    data = bytearray(encoded(draw(batches())))
    if not data:
        return bytes(data)
    at = draw(st.integers(0, len(data) - 1))
    if draw(st.booleans()):
        data[at] ^= draw(st.integers(1, 255))
        return bytes(data)
    return bytes(data[:at])


def reencode(items: list[codec.Item]) -> bytes | None:
    """The bytes the writer makes of ``items``, if they are a batch it writes."""
    snapshot: codec.SnapshotItem | None = None
    rest = list(items)
    if rest and isinstance(rest[0], codec.SnapshotItem):
        snapshot = rest.pop(0)
    hard_state = rest.pop() if rest and isinstance(rest[-1], HardState) else None
    if not all(isinstance(item, Entry) for item in rest):
        return None
    buf = bytearray()
    try:
        codec.encode_payload(
            buf,
            None if snapshot is None else snapshot.meta,
            snapshot is not None and snapshot.retain,
            rest,  # type: ignore[arg-type]
            hard_state,
        )
    except ValueError:
        return None  # not a batch the writer makes (a gap, a term going down)
    return bytes(buf)


@fuzz_settings()
@given(st.binary(max_size=2048) | damaged())
def test_payload_decoder_raises_only_decode_error(data: bytes) -> None:
    try:
        items = codec.decode_payload(data, 0, len(data))
    except codec.DecodeError:
        return
    kinds = (Entry, HardState, codec.SnapshotItem, codec.CheckpointItem)
    assert all(isinstance(item, kinds) for item in items), items
    # What decodes is data the writer could have written: written again, it
    # reads back as the same items (the bytes may differ only where the
    # writer is canonical, e.g. member ids in sorted order).
    again = reencode(items)
    if again is not None:
        assert codec.decode_payload(again, 0, len(again)) == items


@fuzz_settings()
@given(st.binary(max_size=512), st.integers(min_value=0, max_value=64))
def test_frame_and_segment_header_readers(data: bytes, pos: int) -> None:
    with contextlib.suppress(ValueError):
        codec.decode_segment_header(data)
    pos = min(pos, len(data))
    try:
        start, end = codec.read_frame(data, pos)
    except codec.FrameError:
        pass
    else:
        assert pos + codec.FRAME_HEADER_SIZE == start <= end <= len(data)
    found = codec.find_valid_frame(data, pos)
    assert found is None or found > pos


# -- whole files ---------------------------------------------------------------------------

Mutation = tuple[str, int, bytes]
mutations = st.lists(
    st.tuples(
        st.sampled_from(["flip", "overwrite", "insert", "delete", "truncate"]),
        st.integers(min_value=0, max_value=1 << 16),
        st.binary(min_size=1, max_size=16),
    ),
    min_size=1,
    max_size=4,
)


def mutate(data: bytes, changes: list[Mutation]) -> bytes:
    out = bytearray(data)
    for kind, where, blob in changes:
        if not out:
            break
        at = where % len(out)
        if kind == "flip":
            out[at] ^= blob[0] or 1
        elif kind == "overwrite":
            out[at : at + len(blob)] = blob
        elif kind == "insert":
            out[at:at] = blob
        elif kind == "delete":
            del out[at : at + len(blob)]
        else:
            del out[at:]
    return bytes(out)


def _wal_entries() -> list[Entry]:
    return [
        Entry(1 + i // 4, i, f"cmd-{i}".encode() * (i % 5), EntryKind.NORMAL) for i in range(1, 25)
    ]


_WAL_TEMPLATE: dict[str, bytes] = {}


def wal_template() -> dict[str, bytes]:
    """A small WAL (several frames with entries and hard states) as file bytes."""
    if not _WAL_TEMPLATE:
        with tempfile.TemporaryDirectory() as tmp:
            store = FileLogStore(tmp, FileSnapshotStore(tmp), preallocate=False)
            store.load()
            entries = _wal_entries()
            for n in range(0, len(entries), 6):
                store.save(entries=entries[n : n + 6], hard_state=HardState(3, "n1", n), sync=False)
            store.close()
            for name in sorted(os.listdir(tmp)):
                if (Path(tmp) / name).is_file():
                    _WAL_TEMPLATE[name] = (Path(tmp) / name).read_bytes()
    assert any(name.endswith(".log") for name in _WAL_TEMPLATE), _WAL_TEMPLATE.keys()
    return _WAL_TEMPLATE


@fuzz_settings(share=0.5)
@given(mutations)
def test_wal_recovery_of_damaged_segments(changes: list[Mutation]) -> None:
    files = wal_template()
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(mutate(data, changes) if name.endswith(".log") else data)
        store = FileLogStore(tmp, FileSnapshotStore(tmp), preallocate=False)
        try:
            state = store.load()
        except StorageError:
            return  # damage reported, with the file and offset
        finally:
            store.close()
        # Recovered: what it returns is a prefix of what was written.
        written = {e.index: e for e in _wal_entries()}
        for entry in state.entries:
            assert written.get(entry.index) == entry


_SNAPSHOT_DATA = b"".join(f"key-{i}=value-{i};".encode() for i in range(400))


@fuzz_settings(share=0.5)
@given(mutations)
def test_snapshot_reader_of_damaged_files(changes: list[Mutation]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = FileSnapshotStore(tmp, block_size=512)
        with store.create(SnapshotMeta(40, 3, CONF)) as writer:
            writer.write(_SNAPSHOT_DATA)
            writer.commit()
        (path,) = [Path(tmp) / n for n in os.listdir(tmp) if n.endswith(".snap")]
        path.write_bytes(mutate(path.read_bytes(), changes))
        try:
            with FileSnapshotStore(tmp, block_size=512).open(40) as reader:
                data = b"".join(reader)
        except StorageError:
            return
        assert data == _SNAPSHOT_DATA, "a damaged snapshot was read as different data"


def test_a_refused_snapshot_file_does_not_close_another_files_descriptor(tmp_path: Path) -> None:
    """Found by the fuzzer above: a reader whose header check failed closed
    its descriptor but kept the number, and closed that number again when
    collected -- by then, perhaps, a WAL segment's or a socket's."""
    import gc

    from ramraft.server.storage.snapshots import FileSnapshotReader

    bad = tmp_path / "snap-bad.snap"
    bad.write_bytes(b"RRAFTSNP" + b"\x00" * 40)
    held: list[BaseException] = []
    try:
        FileSnapshotReader(str(bad))
    except StorageError as e:
        held.append(e)  # its traceback keeps the half-built reader alive, as a log might
    assert held, "a damaged header was accepted"
    other = tmp_path / "other"
    other.write_bytes(b"innocent")
    fd = os.open(other, os.O_RDONLY)  # the lowest free number: the one the reader had
    try:
        held.clear()
        gc.collect()
        assert os.read(fd, 8) == b"innocent"
    finally:
        os.close(fd)

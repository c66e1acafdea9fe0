"""Property tests of the WAL record codec."""

from __future__ import annotations

import contextlib
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from ramraft.consensus.types import ConfState, Entry, EntryKind, HardState, SnapshotMeta
from ramraft.server.storage import encoding as codec

U64 = st.integers(min_value=0, max_value=2**64 - 1)
node_ids = st.text(max_size=12)


@st.composite
def conf_states(draw: st.DrawFn) -> ConfState:
    voters = draw(st.frozensets(node_ids, max_size=5))
    learners = draw(st.frozensets(node_ids, max_size=3)) - voters
    return ConfState(voters=voters, learners=learners)


@st.composite
def batches(
    draw: st.DrawFn,
) -> tuple[SnapshotMeta | None, bool, list[Entry], HardState | None]:
    snapshot = draw(st.none() | st.builds(SnapshotMeta, U64, U64, conf_states()))
    retain = draw(st.booleans())
    first = draw(st.integers(min_value=1, max_value=2**63))
    term = draw(st.integers(min_value=0, max_value=2**62))
    entries = []
    for i in range(draw(st.integers(min_value=0, max_value=12))):
        term += draw(st.integers(min_value=0, max_value=2))
        data = draw(st.binary(max_size=300))
        kind = draw(st.sampled_from(list(EntryKind)))
        entries.append(Entry(term, first + i, data, kind))
    hard_state = draw(st.none() | st.builds(HardState, U64, node_ids, U64))
    return snapshot, retain, entries, hard_state


def expected_items(snapshot, retain, entries, hard_state) -> list[object]:
    items: list[object] = []
    if snapshot is not None:
        items.append(codec.SnapshotItem(snapshot, retain))
    items.extend(entries)
    if hard_state is not None:
        items.append(hard_state)
    return items


@given(batches())
@settings(max_examples=60, deadline=None)
def test_frame_round_trip(batch) -> None:
    frame = bytes(codec.encode_frame(*batch))
    start, end = codec.read_frame(frame, 0)
    assert end == len(frame)
    assert codec.decode_payload(frame, start, end) == expected_items(*batch)


@given(batches(), st.data())
@settings(deadline=None)
def test_every_single_bit_flip_is_detected(batch, data) -> None:
    frame = bytearray(codec.encode_frame(*batch))
    bit = data.draw(st.integers(min_value=0, max_value=len(frame) * 8 - 1))
    frame[bit // 8] ^= 1 << (bit % 8)
    try:
        codec.read_frame(bytes(frame), 0)
    except codec.FrameError:
        return
    raise AssertionError(f"flipped bit {bit} went unnoticed")


@given(batches(), st.data())
@settings(max_examples=60, deadline=None)
def test_every_truncation_is_detected(batch, data) -> None:
    frame = bytes(codec.encode_frame(*batch))
    cut = data.draw(st.integers(min_value=0, max_value=len(frame) - 1))
    try:
        codec.read_frame(frame[:cut], 0)
    except codec.FrameError as err:
        assert err.offset == 0
        return
    raise AssertionError(f"frame cut at {cut} was accepted")


@given(st.binary(max_size=400))
@settings(max_examples=300)
def test_garbage_never_crashes_the_decoder(blob: bytes) -> None:
    try:
        start, end = codec.read_frame(blob, 0)
    except codec.FrameError:
        pass
    else:  # astronomically unlikely: a valid frame by chance
        codec.decode_payload(blob, start, end)
    with contextlib.suppress(codec.DecodeError):
        codec.decode_payload(blob, 0, len(blob))


@given(st.binary(max_size=200))
def test_checksummed_garbage_payload_fails_cleanly(blob: bytes) -> None:
    """A payload that passes its checksum but does not parse (a bug, or a
    file from another program) raises DecodeError, nothing else."""
    frame = codec.new_frame()
    frame += blob
    sealed = bytes(codec.seal_frame(frame))
    start, end = codec.read_frame(sealed, 0)
    with contextlib.suppress(codec.DecodeError):
        codec.decode_payload(sealed, start, end)


@given(st.lists(batches(), min_size=1, max_size=5), st.binary(max_size=50))
@settings(max_examples=40, deadline=None)
def test_a_valid_frame_after_damage_is_found(frames, junk: bytes) -> None:
    encoded = [bytes(codec.encode_frame(*b)) for b in frames]
    blob = junk.replace(codec.FRAME_MAGIC[:1], b"") + b"".join(encoded)
    assert codec.find_valid_frame(b"\x00" + blob, 0) == 1 + blob.index(encoded[0])


def test_entries_out_of_order_are_refused_before_encoding() -> None:
    import pytest

    with pytest.raises(ValueError, match="consecutive"):
        codec.encode_frame(entries=[Entry(1, 5), Entry(1, 7)])
    with pytest.raises(ValueError, match="non-decreasing"):
        codec.encode_frame(entries=[Entry(2, 5), Entry(1, 6)])
    with pytest.raises(ValueError, match="out of range"):
        codec.encode_frame(entries=[Entry(2**64, 5)])


def test_segment_header_round_trip_and_damage() -> None:
    import pytest

    header = codec.encode_segment_header(42)
    assert codec.decode_segment_header(header) == codec.SegmentHeader(codec.FORMAT_VERSION, 42)
    damaged = bytearray(header)
    damaged[15] ^= 4
    with pytest.raises(ValueError, match="checksum"):
        codec.decode_segment_header(bytes(damaged))
    with pytest.raises(ValueError, match="magic"):
        codec.decode_segment_header(b"X" + header[1:])
    assert struct.calcsize("<8sHHQI") == codec.SEGMENT_HEADER_SIZE

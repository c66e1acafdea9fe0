"""Byte formats of the write-ahead log: segment headers, frames and items.

A segment file is::

    segment header (24 bytes)
        magic "RRAFTWAL" | version u16 | reserved u16 | sequence u64 | crc32c u32
    frame, frame, ...              (then zeros, if the file was preallocated)

A frame is one ``save()`` call, the unit that is atomic on recovery::

    frame header (16 bytes)
        magic b"\\xd5RF1" | payload length u32 | payload crc32c u32 | header crc32c u32
    payload: items back to back

The header checksum covers the first 12 header bytes (so a damaged length is
caught before it is trusted); the payload checksum covers the payload. The
magic lets recovery look for whole frames after a damaged one, which is how it
tells a torn tail (nothing valid after it) from damage in the middle.

Items (all integers little-endian)::

    ENTRY       type u8 | term u64 | index u64 | kind u8 | data length u32 | data
    HARD_STATE  type u8 | term u64 | commit u64 | vote length u16 | vote utf-8
    SNAPSHOT    type u8 | retain u8 | index u64 | term u64 | conf
    CHECKPOINT  type u8 | last index u64 | last term u64 | hard-state body
                | has snapshot u8 | [index u64 | term u64 | conf]
    conf        voters u16 | learners u16 | (id length u16 | id utf-8) ...

Everything here is pure (no I/O) so that hypothesis can hammer it.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NamedTuple

from crc32c import crc32c

from ramraft.consensus.types import ConfState, Entry, EntryKind, HardState, SnapshotMeta

FORMAT_VERSION = 1

SEGMENT_MAGIC = b"RRAFTWAL"
_SEGMENT_HEADER = struct.Struct("<8sHHQ")
SEGMENT_HEADER_SIZE = _SEGMENT_HEADER.size + 4

FRAME_MAGIC = b"\xd5RF1"
_FRAME_HEADER = struct.Struct("<4sII")
FRAME_HEADER_SIZE = _FRAME_HEADER.size + 4
# One save() may not exceed this (a Raft batch is far smaller; the bound keeps a
# damaged length from making recovery allocate gigabytes).
MAX_FRAME_PAYLOAD = 1 << 30

ITEM_ENTRY = 1
ITEM_HARD_STATE = 2
ITEM_SNAPSHOT = 3
ITEM_CHECKPOINT = 4

_ENTRY = struct.Struct("<BQQBI")
_HARD_STATE = struct.Struct("<BQQH")
_HARD_STATE_BODY = struct.Struct("<QQH")
_SNAPSHOT = struct.Struct("<BBQQ")
_CHECKPOINT = struct.Struct("<BQQ")
_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_QQ = struct.Struct("<QQ")
_CONF_COUNTS = struct.Struct("<HH")

_KINDS: dict[int, EntryKind] = {int(k): k for k in EntryKind}
_MAX_U16 = 0xFFFF
_MAX_U32 = 0xFFFFFFFF


class DecodeError(ValueError):
    """A checksummed payload does not parse (a bug or a foreign file)."""

    def __init__(self, offset: int, problem: str):
        super().__init__(f"{problem} (payload offset {offset})")
        self.offset = offset
        self.problem = problem


class FrameError(ValueError):
    """No valid frame at this offset."""

    def __init__(self, offset: int, problem: str, *, zero: bool = False):
        super().__init__(f"{problem} at offset {offset}")
        self.offset = offset
        self.problem = problem
        # The 16 bytes at ``offset`` are all zero: the end of the written data
        # in a preallocated file (if the rest is zero too).
        self.zero = zero


class SnapshotItem(NamedTuple):
    """A snapshot marker: the log restarts after ``meta.index``.

    ``retain``: entries after ``meta.index`` stay (the entry at ``meta.index``
    had ``meta.term``, so by Log Matching the log agrees with the snapshot);
    otherwise the whole log is discarded. Decided once, when saved.
    """

    meta: SnapshotMeta
    retain: bool


class CheckpointItem(NamedTuple):
    """The log's state when a segment was started, so that older segments
    can be deleted without losing the hard state or the snapshot marker."""

    last_index: int
    last_term: int
    hard_state: HardState
    snapshot: SnapshotMeta | None


Item = Entry | HardState | SnapshotItem | CheckpointItem


# -- encoding -----------------------------------------------------------------


def _put_id(buf: bytearray, node_id: str) -> None:
    raw = node_id.encode()
    if len(raw) > _MAX_U16:
        raise ValueError(f"node id too long ({len(raw)} bytes)")
    buf += _U16.pack(len(raw))
    buf += raw


def _put_conf(buf: bytearray, conf: ConfState) -> None:
    if len(conf.voters) > _MAX_U16 or len(conf.learners) > _MAX_U16:
        raise ValueError("too many members in a ConfState")
    buf += _CONF_COUNTS.pack(len(conf.voters), len(conf.learners))
    for node_id in sorted(conf.voters):
        _put_id(buf, node_id)
    for node_id in sorted(conf.learners):
        _put_id(buf, node_id)


def _put_hard_state_body(buf: bytearray, hs: HardState) -> None:
    vote = hs.vote.encode()
    if len(vote) > _MAX_U16:
        raise ValueError(f"vote node id too long ({len(vote)} bytes)")
    buf += _HARD_STATE_BODY.pack(hs.term, hs.commit, len(vote))
    buf += vote


def encode_payload(
    buf: bytearray,
    snapshot: SnapshotMeta | None,
    retain: bool,
    entries: Sequence[Entry],
    hard_state: HardState | None,
) -> None:
    """Append the items of one batch to ``buf``.

    Checks what only needs the batch itself: entries contiguous, terms not
    decreasing, kinds known, data bytes-like. Raises ValueError/TypeError
    (before anything is written anywhere).
    """
    if snapshot is not None:
        buf += _SNAPSHOT.pack(ITEM_SNAPSHOT, 1 if retain else 0, snapshot.index, snapshot.term)
        _put_conf(buf, snapshot.conf)
    if entries:
        pack = _ENTRY.pack
        expected = entries[0].index
        last_term = 0
        try:
            for entry in entries:
                term, index, data, kind = entry.term, entry.index, entry.data, entry.kind
                if index != expected or term < last_term or kind not in _KINDS:
                    check_entries(entries)  # raises with the precise reason
                buf += pack(ITEM_ENTRY, term, index, kind, len(data))
                buf += data
                expected += 1
                last_term = term
        except struct.error as exc:
            raise ValueError(f"entry field out of range: {exc}") from None
    if hard_state is not None:
        buf += _U8.pack(ITEM_HARD_STATE)
        try:
            _put_hard_state_body(buf, hard_state)
        except struct.error as exc:
            raise ValueError(f"hard state field out of range: {exc}") from None


def check_entries(entries: Sequence[Entry]) -> None:
    """Raise ValueError unless the batch has consecutive indexes,
    non-decreasing terms, known kinds and bytes-like data (the checks the
    encoder makes on its way; the memory store, which encodes nothing,
    calls this)."""
    if not entries:
        return
    expected = entries[0].index
    last_term = 0
    for entry in entries:
        term, index, data, kind = entry.term, entry.index, entry.data, entry.kind
        if index != expected or term < last_term:
            raise ValueError(
                f"entries must have consecutive indexes and non-decreasing terms: "
                f"got index {index} term {term} after index {expected - 1} term {last_term}"
            )
        if kind not in _KINDS:
            raise ValueError(f"unknown entry kind {kind!r} at index {index}")
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"entry {index} data must be bytes, not {type(data).__name__}")
        if term < 0 or index < 0 or term > 2**64 - 1 or index > 2**64 - 1 or len(data) > _MAX_U32:
            raise ValueError(f"entry {index} field out of range")
        expected += 1
        last_term = term


def encode_checkpoint(
    buf: bytearray,
    last_index: int,
    last_term: int,
    hard_state: HardState,
    snapshot: SnapshotMeta | None,
) -> None:
    buf += _CHECKPOINT.pack(ITEM_CHECKPOINT, last_index, last_term)
    _put_hard_state_body(buf, hard_state)
    if snapshot is None:
        buf += _U8.pack(0)
    else:
        buf += _U8.pack(1)
        buf += _QQ.pack(snapshot.index, snapshot.term)
        _put_conf(buf, snapshot.conf)


def new_frame() -> bytearray:
    """A buffer with room for the frame header; append items, then seal_frame()."""
    return bytearray(FRAME_HEADER_SIZE)


def seal_frame(buf: bytearray) -> bytearray:
    """Fill in the header of a frame built on new_frame(); returns ``buf``."""
    length = len(buf) - FRAME_HEADER_SIZE
    if length > MAX_FRAME_PAYLOAD:
        raise ValueError(f"batch too large: {length} bytes (limit {MAX_FRAME_PAYLOAD})")
    with memoryview(buf) as view:
        payload_crc = crc32c(view[FRAME_HEADER_SIZE:])
        _FRAME_HEADER.pack_into(buf, 0, FRAME_MAGIC, length, payload_crc)
        _U32.pack_into(buf, _FRAME_HEADER.size, crc32c(view[: _FRAME_HEADER.size]))
    return buf


def encode_frame(
    snapshot: SnapshotMeta | None = None,
    retain: bool = False,
    entries: Sequence[Entry] = (),
    hard_state: HardState | None = None,
) -> bytearray:
    buf = new_frame()
    encode_payload(buf, snapshot, retain, entries, hard_state)
    return seal_frame(buf)


def encode_segment_header(sequence: int) -> bytes:
    head = _SEGMENT_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, 0, sequence)
    return head + _U32.pack(crc32c(head))


# -- decoding -----------------------------------------------------------------


class SegmentHeader(NamedTuple):
    version: int
    sequence: int


def decode_segment_header(data: bytes | memoryview) -> SegmentHeader:
    """Raises ValueError if this is no segment header; the version is returned
    unchecked (the caller refuses unknown ones with a clear message)."""
    if len(data) < SEGMENT_HEADER_SIZE:
        raise ValueError(f"file too short for a segment header ({len(data)} bytes)")
    magic, version, _reserved, sequence = _SEGMENT_HEADER.unpack_from(data, 0)
    if magic != SEGMENT_MAGIC:
        raise ValueError("not a ramraft WAL segment (bad magic)")
    (stored,) = _U32.unpack_from(data, _SEGMENT_HEADER.size)
    if crc32c(data[: _SEGMENT_HEADER.size]) != stored:
        raise ValueError("segment header fails its checksum")
    return SegmentHeader(version, sequence)


def read_frame(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Check the frame at ``pos``; return (payload start, payload end).

    Raises FrameError if there is no whole, valid frame there.
    """
    end = len(data)
    if end - pos < FRAME_HEADER_SIZE:
        zero = not any(data[pos:end])
        raise FrameError(pos, "incomplete frame header", zero=zero)
    magic, length, payload_crc = _FRAME_HEADER.unpack_from(data, pos)
    (header_crc,) = _U32.unpack_from(data, pos + _FRAME_HEADER.size)
    if magic != FRAME_MAGIC or crc32c(data[pos : pos + _FRAME_HEADER.size]) != header_crc:
        zero = not any(data[pos : pos + FRAME_HEADER_SIZE])
        raise FrameError(pos, "bad frame header", zero=zero)
    start = pos + FRAME_HEADER_SIZE
    if length > MAX_FRAME_PAYLOAD:
        raise FrameError(pos, f"frame length {length} over the limit")
    if start + length > end:
        raise FrameError(pos, f"frame of {length} bytes runs past the end of the file")
    if crc32c(data[start : start + length]) != payload_crc:
        raise FrameError(pos, "frame payload fails its checksum")
    return start, start + length


def find_valid_frame(data: bytes | memoryview, pos: int) -> int | None:
    """Offset of the first whole, valid frame starting after ``pos``, if any."""
    raw = data if isinstance(data, bytes) else bytes(data)
    probe = raw.find(FRAME_MAGIC, pos + 1)
    while probe != -1:
        try:
            read_frame(raw, probe)
        except FrameError:
            probe = raw.find(FRAME_MAGIC, probe + 1)
        else:
            return probe
    return None


def _get_id(data: bytes | memoryview, pos: int, end: int) -> tuple[str, int]:
    if pos + 2 > end:
        raise DecodeError(pos, "truncated node id")
    (n,) = _U16.unpack_from(data, pos)
    pos += 2
    if pos + n > end:
        raise DecodeError(pos, "truncated node id")
    try:
        return bytes(data[pos : pos + n]).decode(), pos + n
    except UnicodeDecodeError:
        raise DecodeError(pos, "node id is not UTF-8") from None


def _get_conf(data: bytes | memoryview, pos: int, end: int) -> tuple[ConfState, int]:
    if pos + _CONF_COUNTS.size > end:
        raise DecodeError(pos, "truncated conf state")
    n_voters, n_learners = _CONF_COUNTS.unpack_from(data, pos)
    pos += _CONF_COUNTS.size
    voters = []
    for _ in range(n_voters):
        node_id, pos = _get_id(data, pos, end)
        voters.append(node_id)
    learners = []
    for _ in range(n_learners):
        node_id, pos = _get_id(data, pos, end)
        learners.append(node_id)
    try:
        return ConfState(frozenset(voters), frozenset(learners)), pos
    except ValueError as exc:
        raise DecodeError(pos, str(exc)) from None


def _get_hard_state_body(data: bytes | memoryview, pos: int, end: int) -> tuple[HardState, int]:
    if pos + _HARD_STATE_BODY.size > end:
        raise DecodeError(pos, "truncated hard state")
    term, commit, n = _HARD_STATE_BODY.unpack_from(data, pos)
    pos += _HARD_STATE_BODY.size
    if pos + n > end:
        raise DecodeError(pos, "truncated vote")
    try:
        vote = bytes(data[pos : pos + n]).decode()
    except UnicodeDecodeError:
        raise DecodeError(pos, "vote is not UTF-8") from None
    return HardState(term=term, vote=vote, commit=commit), pos + n


def decode_payload(data: bytes | memoryview, start: int, end: int) -> list[Item]:
    """Decode the items of the payload ``data[start:end]``.

    Raises DecodeError on anything that does not parse exactly.
    """
    items: list[Item] = []
    append = items.append
    unpack_entry = _ENTRY.unpack_from
    entry_size = _ENTRY.size
    kinds = _KINDS
    pos = start
    try:
        while pos < end:
            kind_byte = data[pos]
            if kind_byte == ITEM_ENTRY:
                if pos + entry_size > end:
                    raise DecodeError(pos - start, "truncated entry")
                _, term, index, kind, n = unpack_entry(data, pos)
                pos += entry_size
                if pos + n > end:
                    raise DecodeError(pos - start, "entry data runs past the payload")
                append(Entry(term, index, bytes(data[pos : pos + n]), kinds[kind]))
                pos += n
            elif kind_byte == ITEM_HARD_STATE:
                hs, pos = _get_hard_state_body(data, pos + 1, end)
                append(hs)
            elif kind_byte == ITEM_SNAPSHOT:
                if pos + _SNAPSHOT.size > end:
                    raise DecodeError(pos - start, "truncated snapshot marker")
                _, retain, index, term = _SNAPSHOT.unpack_from(data, pos)
                if retain > 1:
                    raise DecodeError(pos - start, "bad retain flag")
                conf, pos = _get_conf(data, pos + _SNAPSHOT.size, end)
                append(SnapshotItem(SnapshotMeta(index, term, conf), bool(retain)))
            elif kind_byte == ITEM_CHECKPOINT:
                if pos + _CHECKPOINT.size > end:
                    raise DecodeError(pos - start, "truncated checkpoint")
                _, last_index, last_term = _CHECKPOINT.unpack_from(data, pos)
                hs, pos = _get_hard_state_body(data, pos + _CHECKPOINT.size, end)
                if pos >= end:
                    raise DecodeError(pos - start, "truncated checkpoint")
                has_snapshot = data[pos]
                pos += 1
                snapshot: SnapshotMeta | None = None
                if has_snapshot == 1:
                    if pos + _QQ.size > end:
                        raise DecodeError(pos - start, "truncated checkpoint snapshot")
                    s_index, s_term = _QQ.unpack_from(data, pos)
                    conf, pos = _get_conf(data, pos + _QQ.size, end)
                    snapshot = SnapshotMeta(s_index, s_term, conf)
                elif has_snapshot != 0:
                    raise DecodeError(pos - start, "bad checkpoint flag")
                append(CheckpointItem(last_index, last_term, hs, snapshot))
            else:
                raise DecodeError(pos - start, f"unknown item type {kind_byte}")
    except KeyError as exc:
        raise DecodeError(pos - start, f"unknown entry kind {exc}") from None
    return items

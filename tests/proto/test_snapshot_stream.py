"""The InstallSnapshot stream: codec.snapshot_chunks and SnapshotReceiver."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ramraft.consensus.types import ConfState, Message, MsgType, SnapshotMeta
from ramraft.proto import raft_pb2
from ramraft.server.runtime.wire import (
    CodecError,
    SnapshotReceiver,
    encode_message,
    snapshot_chunks,
)

META = SnapshotMeta(index=120, term=4, conf=ConfState(frozenset({"a", "b"}), frozenset({"c"})))
MSG = Message(MsgType.SNAPSHOT, "a", "c", 4, snapshot=META, snapshot_data="handle")


def receive(chunks, max_bytes: int = 1 << 20) -> tuple[SnapshotReceiver, bytes]:
    out = bytearray()
    receiver = SnapshotReceiver(out.extend, max_bytes)
    for chunk in chunks:
        # Through the wire, as the transport would.
        receiver.feed(raft_pb2.SnapshotChunk.FromString(chunk.SerializeToString()))
    return receiver, bytes(out)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=5), st.integers(1, 128))
def test_round_trip(pieces: list[bytes], chunk_bytes: int) -> None:
    data = b"".join(pieces)
    chunks = list(snapshot_chunks(MSG, pieces, len(data), chunk_bytes))
    assert all(len(c.data) <= chunk_bytes for c in chunks)
    receiver, received = receive(chunks)
    assert receiver.done and received == data
    assert receiver.message == MSG and receiver.message.snapshot == META
    assert receiver.message.snapshot_data is None


def test_one_bytes_object_is_chunked() -> None:
    chunks = list(snapshot_chunks(MSG, b"x" * 10, 10, chunk_bytes=4))
    assert [c.WhichOneof("part") for c in chunks] == ["header", "data", "data", "data", "trailer"]


def test_sender_checks_its_input() -> None:
    with pytest.raises(CodecError, match="SNAPSHOT message"):
        list(snapshot_chunks(Message(MsgType.APPEND, "a", "b", 1), b"", 0))
    with pytest.raises(CodecError, match="exceeds the declared"):
        list(snapshot_chunks(MSG, b"abcd", 3))
    with pytest.raises(CodecError, match="3 bytes, 5 declared"):
        list(snapshot_chunks(MSG, b"abc", 5))


def _stream(data: bytes = b"snapshot-bytes") -> list[raft_pb2.SnapshotChunk]:
    return list(snapshot_chunks(MSG, data, len(data), chunk_bytes=4))


def test_corrupted_data_fails_the_checksum() -> None:
    chunks = _stream()
    chunks[2] = raft_pb2.SnapshotChunk(data=b"XXXX")
    with pytest.raises(CodecError, match="checksum mismatch"):
        receive(chunks)


@pytest.mark.parametrize(
    ("edit", "error"),
    [
        (lambda c: c[1:], "starts with data, not a header"),
        (lambda c: c[:1] + c, "a second snapshot header"),
        (lambda c: c + c[-1:], "after the trailer"),
        (lambda c: c[:2] + c[3:], "truncated or padded"),
        (
            lambda c: [*c[:-1], raft_pb2.SnapshotChunk(data=b"more"), *c[-1:]],
            "exceeds the declared",
        ),
        (lambda c: [*c[:1], raft_pb2.SnapshotChunk()], "empty snapshot chunk"),
    ],
)
def test_protocol_violations_are_rejected(edit, error: str) -> None:
    with pytest.raises(CodecError, match=error):
        receive(edit(_stream()))


def test_header_must_carry_snapshot_metadata_within_the_limit() -> None:
    vote = raft_pb2.SnapshotChunk(
        header=raft_pb2.SnapshotHeader(message=encode_message(Message(MsgType.VOTE, "a", "b", 1)))
    )
    with pytest.raises(CodecError, match="carries a VOTE message"):
        receive([vote])
    with pytest.raises(CodecError, match="exceeds the limit of 10"):
        receive(_stream(b"x" * 11), max_bytes=10)


def test_not_done_until_the_trailer() -> None:
    receiver, _ = receive(_stream()[:-1])
    assert not receiver.done and receiver.message == MSG

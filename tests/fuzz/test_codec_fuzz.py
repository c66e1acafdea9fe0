"""Fuzz the protobuf-to-core codec (server/runtime/wire.py) and what it feeds: any
bytes a peer sends are either refused with CodecError or decode into
messages that re-encode to the same messages, and that the Raft core steps
through without raising -- whatever their terms, indexes, ids or entries."""

from __future__ import annotations

import random

from hypothesis import event, given
from hypothesis import strategies as st

from ramraft.consensus.raft import Config, RaftNode
from ramraft.consensus.types import ConfState, EntryKind, Message, MsgType
from ramraft.proto import raft_pb2
from ramraft.server.runtime.wire import CodecError, SnapshotReceiver, parse_batch, serialize_batch
from tests.fuzz.budget import fuzz_settings

U64 = st.integers(min_value=0, max_value=2**64 - 1)
SMALL = st.integers(min_value=0, max_value=12)
NUMBER = st.one_of(SMALL, U64)
IDS = st.sampled_from(["n1", "n2", "n3", "n9", "", "n1\x00", "é" * 3, "x" * 300])
MEMBERS = ConfState(frozenset({"n1", "n2", "n3"}))


def core(role_ticks: int) -> RaftNode:
    """A member n1 of n1..n3 after ``role_ticks`` ticks (a follower, or a
    (pre-)candidate once its election timeout passed)."""
    node = RaftNode(Config(id="n1", rng=random.Random(7)), bootstrap=MEMBERS)
    for _ in range(role_ticks):
        node.tick()
    _drain(node)
    return node


def _drain(node: RaftNode) -> None:
    while node.has_ready():
        node.advance(node.ready())


def step_all(messages: list[Message], role_ticks: int) -> None:
    node = core(role_ticks)
    for m in messages:
        node.step(m)
        _drain(node)
        node.check_invariants()


@st.composite
def pb_messages(draw: st.DrawFn) -> raft_pb2.Message:
    pb = raft_pb2.Message(
        type=draw(st.integers(0, len(MsgType) - 1))
        if draw(st.integers(0, 9))
        else draw(st.integers(0, 40)),
        src=draw(IDS),
        dst=draw(st.sampled_from(["n1", "n1", "n2", ""])),
        term=draw(NUMBER),
        log_term=draw(NUMBER),
        index=draw(NUMBER),
        commit=draw(NUMBER),
        reject=draw(st.booleans()),
        reject_hint=draw(NUMBER),
        context=draw(st.binary(max_size=16)),
    )
    n = draw(st.integers(min_value=0, max_value=5))
    start = draw(NUMBER)
    plausible = draw(st.integers(0, 9)) > 0
    if plausible:  # a run of entries with consistent columns...
        pb.entry_indexes.extend(min(start + i, 2**64 - 1) for i in range(n))
        pb.entry_terms.extend(sorted(draw(st.lists(SMALL, min_size=n, max_size=n))))
        kinds = st.integers(0, len(EntryKind) - 1)
        pb.entry_kinds.extend(draw(st.just([]) | st.lists(kinds, min_size=n, max_size=n)))
    else:  # ...or anything
        pb.entry_indexes.extend(draw(st.lists(NUMBER, max_size=5)))
        pb.entry_terms.extend(draw(st.lists(NUMBER, max_size=5)))
        pb.entry_kinds.extend(draw(st.lists(st.integers(-3, 5), max_size=n)))
    pb.entry_data.extend(draw(st.lists(st.binary(max_size=8), min_size=n, max_size=n)))
    if draw(st.booleans()):
        pb.snapshot.index = draw(NUMBER)
        pb.snapshot.term = draw(NUMBER)
        pb.snapshot.conf.voters.extend(draw(st.lists(IDS, max_size=3)))
        pb.snapshot.conf.learners.extend(draw(st.lists(IDS, max_size=2)))
    return pb


def check_decoded(messages: list[Message]) -> None:
    again = parse_batch(serialize_batch(messages))
    assert again == messages, "decode(encode(decode(x))) != decode(x)"


@fuzz_settings()
@given(st.binary(max_size=512), st.sampled_from([0, 40]))
def test_arbitrary_bytes(data: bytes, role_ticks: int) -> None:
    try:
        messages = parse_batch(data)
    except CodecError:
        return
    check_decoded(messages)
    step_all(messages, role_ticks)


@fuzz_settings()
@given(st.lists(pb_messages(), min_size=1, max_size=4), st.sampled_from([0, 40]))
def test_structured_batches(pbs: list[raft_pb2.Message], role_ticks: int) -> None:
    batch = raft_pb2.MessageBatch(messages=pbs)
    try:
        messages = parse_batch(batch.SerializeToString())
    except CodecError as e:
        event(f"refused: {str(e).split(':')[0][:40]}")
        return
    event("decoded")
    check_decoded(messages)
    step_all(messages, role_ticks)


@st.composite
def chunks(draw: st.DrawFn) -> raft_pb2.SnapshotChunk:
    kind = draw(st.sampled_from(["header", "data", "trailer", "empty"]))
    if kind == "header":
        return raft_pb2.SnapshotChunk(
            header=raft_pb2.SnapshotHeader(message=draw(pb_messages()), size=draw(NUMBER))
        )
    if kind == "data":
        return raft_pb2.SnapshotChunk(data=draw(st.binary(max_size=64)))
    if kind == "trailer":
        return raft_pb2.SnapshotChunk(
            trailer=raft_pb2.SnapshotTrailer(crc32c=draw(NUMBER) % 2**32, size=draw(NUMBER))
        )
    return raft_pb2.SnapshotChunk()


@fuzz_settings()
@given(st.lists(chunks(), max_size=6))
def test_snapshot_streams(stream: list[raft_pb2.SnapshotChunk]) -> None:
    written: list[bytes] = []
    receiver = SnapshotReceiver(written.append, max_bytes=1 << 20)
    try:
        for chunk in stream:
            receiver.feed(chunk)
    except CodecError:
        return
    total = sum(map(len, written))
    assert total == receiver.received <= receiver.size <= 1 << 20
    if receiver.done:
        assert receiver.message is not None and total == receiver.size

"""server/runtime/wire.py: exact round trips, and clear errors for bad input."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ramraft.consensus.types import ConfState, Entry, EntryKind, Message, MsgType, SnapshotMeta
from ramraft.proto import raft_pb2
from ramraft.server.runtime import wire as codec
from ramraft.server.runtime.wire import CodecError

U64 = st.integers(min_value=0, max_value=2**64 - 1)
# Node ids are strings; protobuf strings must be valid UTF-8 (no surrogates).
node_ids = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
entries = st.builds(
    Entry,
    term=U64,
    index=U64,
    data=st.binary(max_size=64),
    kind=st.sampled_from(EntryKind),
)


@st.composite
def conf_states(draw: st.DrawFn) -> ConfState:
    ids = draw(st.lists(node_ids, unique=True, max_size=6))
    split = draw(st.integers(min_value=0, max_value=len(ids)))
    return ConfState(voters=frozenset(ids[:split]), learners=frozenset(ids[split:]))


snapshot_metas = st.builds(SnapshotMeta, index=U64, term=U64, conf=conf_states())
messages = st.builds(
    Message,
    type=st.sampled_from(MsgType),
    src=node_ids,
    dst=node_ids,
    term=U64,
    log_term=U64,
    index=U64,
    entries=st.lists(entries, max_size=20).map(tuple),
    commit=U64,
    reject=st.booleans(),
    reject_hint=U64,
    context=st.binary(max_size=32),
    snapshot=st.none() | snapshot_metas,
)


def _assert_same(decoded: Message, original: Message) -> None:
    assert decoded == original
    # == treats EntryKind.NORMAL and 0 alike; the core wants the real types.
    assert type(decoded.type) is MsgType
    assert type(decoded.entries) is tuple
    for entry in decoded.entries:
        assert type(entry) is Entry
        assert type(entry.kind) is EntryKind
        assert type(entry.data) is bytes
    assert decoded.snapshot_data is None


@settings(max_examples=300, deadline=None)
@given(st.lists(messages, max_size=4))
def test_batch_round_trip_is_exact(batch: list[Message]) -> None:
    decoded = codec.parse_batch(codec.serialize_batch(batch))
    assert len(decoded) == len(batch)
    for d, m in zip(decoded, batch, strict=True):
        _assert_same(d, m)


@settings(max_examples=200, deadline=None)
@given(messages)
def test_message_round_trip_without_the_wire(msg: Message) -> None:
    _assert_same(codec.decode_message(codec.encode_message(msg)), msg)


@given(snapshot_metas)
def test_snapshot_meta_round_trip(meta: SnapshotMeta) -> None:
    pb = raft_pb2.SnapshotMeta.FromString(codec.encode_snapshot_meta(meta).SerializeToString())
    assert codec.decode_snapshot_meta(pb) == meta


def test_every_message_type_and_entry_kind_round_trips() -> None:
    for t in MsgType:
        for kind in EntryKind:
            msg = Message(t, "a", "b", 1, entries=(Entry(1, 2, b"x", kind),))
            _assert_same(codec.parse_batch(codec.serialize_batch([msg]))[0], msg)


def test_snapshot_data_is_not_sent() -> None:
    meta = SnapshotMeta(7, 2, ConfState(frozenset({"a", "b"})))
    msg = Message(MsgType.SNAPSHOT, "a", "b", 2, snapshot=meta, snapshot_data=b"x" * 1000)
    wire = codec.serialize_batch([msg])
    assert b"x" * 1000 not in wire
    (decoded,) = codec.parse_batch(wire)
    assert decoded.snapshot == meta and decoded.snapshot_data is None


def test_snapshot_absent_and_empty_snapshot_differ() -> None:
    empty = Message(MsgType.SNAPSHOT, "a", "b", 2, snapshot=SnapshotMeta())
    none = Message(MsgType.SNAPSHOT, "a", "b", 2)
    assert codec.parse_batch(codec.serialize_batch([empty]))[0].snapshot == SnapshotMeta()
    assert codec.parse_batch(codec.serialize_batch([none]))[0].snapshot is None


def test_membership_encodes_deterministically() -> None:
    a = ConfState(frozenset({"n3", "n1", "n2"}), frozenset({"n5", "n4"}))
    pb = codec.encode_conf_state(a)
    assert list(pb.voters) == ["n1", "n2", "n3"] and list(pb.learners) == ["n4", "n5"]


@pytest.mark.parametrize("value", [-1, 2**64])
@pytest.mark.parametrize("where", ["term", "index", "commit", "entry_term", "entry_index", "snap"])
def test_unencodable_numbers_raise_codec_error(value: int, where: str) -> None:
    if where == "entry_term":
        msg = Message(MsgType.APPEND, "a", "b", 1, entries=(Entry(value, 1),))
    elif where == "entry_index":
        msg = Message(MsgType.APPEND, "a", "b", 1, entries=(Entry(1, value),))
    elif where == "snap":
        msg = Message(MsgType.SNAPSHOT, "a", "b", 1, snapshot=SnapshotMeta(index=value))
    else:
        fields = {"term": 1, "index": 0, "commit": 0} | {where: value}
        msg = Message(
            MsgType.APPEND, "a", "b", fields["term"], index=fields["index"], commit=fields["commit"]
        )
    with pytest.raises(CodecError, match=r"cannot encode .*out of range"):
        codec.serialize_batch([msg])


def test_unencodable_strings_and_data_raise_codec_error() -> None:
    with pytest.raises(CodecError, match=r"cannot encode .*surrogates not allowed"):
        codec.serialize_batch([Message(MsgType.VOTE, "\ud800", "b", 1)])
    bad_entry = Entry(1, 1, "not bytes")  # type: ignore[arg-type]
    with pytest.raises(CodecError, match=r"cannot encode .*expected bytes, str found"):
        codec.serialize_batch([Message(MsgType.APPEND, "a", "b", 1, entries=(bad_entry,))])


# -- malformed input --------------------------------------------------------


def _wire(pb: raft_pb2.Message) -> bytes:
    return raft_pb2.MessageBatch(messages=[pb]).SerializeToString()


def _valid() -> raft_pb2.Message:
    return codec.encode_message(
        Message(
            MsgType.APPEND,
            "a",
            "b",
            3,
            entries=(Entry(3, 1, b"x"), Entry(3, 2, b"y", EntryKind.CONF_CHANGE)),
        )
    )


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda pb: setattr(pb, "type", 12), "unknown message type 12"),
        (lambda pb: setattr(pb, "type", -1), "unknown message type -1"),
        (lambda pb: pb.entry_kinds.append(0), "entry columns differ"),
        (lambda pb: pb.entry_terms.append(3), "entry columns differ"),
        (lambda pb: pb.entry_indexes.append(3), "entry columns differ"),
        (lambda pb: pb.entry_data.append(b""), "entry columns differ"),
        (lambda pb: pb.entry_kinds.__setitem__(0, 2), "unknown entry kind 2"),
        (lambda pb: pb.entry_kinds.__setitem__(1, -5), "unknown entry kind -5"),
        (
            lambda pb: pb.snapshot.conf.MergeFrom(raft_pb2.ConfState(voters=["x"], learners=["x"])),
            "both voter and learner",
        ),
    ],
)
def test_structurally_bad_messages_raise_codec_error(mutate, message: str) -> None:
    pb = _valid()
    mutate(pb)
    with pytest.raises(CodecError, match=message):
        codec.parse_batch(_wire(pb))
    with pytest.raises(CodecError, match=message):
        codec.decode_message(pb)


def test_entry_columns_without_terms_are_rejected() -> None:
    pb = raft_pb2.Message(type=raft_pb2.MSG_APPEND, entry_indexes=[1], entry_data=[b""])
    with pytest.raises(CodecError, match="entry columns differ"):
        codec.decode_message(pb)


def test_invalid_utf8_node_id_is_rejected() -> None:
    # Field 2 (src), length-delimited, holding the bytes ff fe.
    inner = b"\x12\x02\xff\xfe"
    wire = b"\x0a" + bytes([len(inner)]) + inner
    with pytest.raises(CodecError, match="malformed"):
        codec.parse_batch(wire)


def test_oversized_input_is_refused_before_parsing() -> None:
    with pytest.raises(CodecError, match="exceeds the limit"):
        codec.parse_batch(b"\x00" * 101, max_bytes=100)


def test_codec_error_is_a_value_error() -> None:
    assert issubclass(CodecError, ValueError)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_decode_or_raise_codec_error(data: bytes) -> None:
    try:
        result = codec.parse_batch(data)
    except CodecError:
        return
    assert all(isinstance(m, Message) for m in result)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages, min_size=1, max_size=3), st.data())
def test_corrupted_valid_batches_decode_or_raise_codec_error(batch, data) -> None:
    wire = bytearray(codec.serialize_batch(batch))
    if not wire:
        return
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(wire) - 1))
        wire[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(wire)))
    try:
        result = codec.parse_batch(bytes(wire[:cut]))
    except CodecError:
        return
    assert all(isinstance(m, Message) for m in result)


def test_fast_message_builder_is_in_use_and_matches_the_constructor() -> None:
    # If Message gains or renames a field, the codec falls back to the plain
    # constructor; this test says so, so that the builder gets updated.
    assert codec._build_message is not Message, "Message's fields changed: update codec"
    args = (MsgType.APPEND, "a", "b", 1, 2, 3, (Entry(1, 4, b"x"),), 5, True, 6, b"c", None)
    fast, slow = codec._build_message(*args), Message(*args)
    assert fast == slow
    assert [getattr(fast, n) for n in codec._MESSAGE_FIELDS] == [
        getattr(slow, n) for n in codec._MESSAGE_FIELDS
    ]

"""Measures server/runtime/wire.py against the obvious alternative: one protobuf
submessage per entry (the etcd raftpb shape), built in the same run.

    python -m tests.proto.measure_codec [--entries 1,10,100,1000] [--size 64]

Prints microseconds per entry for encode+serialize and parse+decode, and the
ratio baseline/codec (above 1 means the codec is faster). Not a test: speed is
reported, never asserted.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from ramraft.consensus.types import Entry, EntryKind, Message, MsgType
from ramraft.server.runtime import wire as codec

_KINDS = tuple(EntryKind)
_TYPES = tuple(MsgType)


def _baseline_classes() -> tuple[Any, Any]:
    """Batch/Message/Entry types with entries as repeated submessages."""
    f = descriptor_pb2.FileDescriptorProto(
        name="baseline.proto", package="baseline", syntax="proto3"
    )
    entry = f.message_type.add(name="Entry")
    for number, (name, kind) in enumerate(
        [("term", "UINT64"), ("index", "UINT64"), ("kind", "UINT32"), ("data", "BYTES")], 1
    ):
        entry.field.add(
            name=name,
            number=number,
            type=getattr(descriptor_pb2.FieldDescriptorProto, f"TYPE_{kind}"),
        )
    msg = f.message_type.add(name="Message")
    scalars = [
        ("type", "UINT32"),
        ("src", "STRING"),
        ("dst", "STRING"),
        ("term", "UINT64"),
        ("log_term", "UINT64"),
        ("index", "UINT64"),
        ("commit", "UINT64"),
    ]
    for number, (name, kind) in enumerate(scalars, 1):
        msg.field.add(
            name=name,
            number=number,
            type=getattr(descriptor_pb2.FieldDescriptorProto, f"TYPE_{kind}"),
        )
    msg.field.add(
        name="entries",
        number=20,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
        type_name=".baseline.Entry",
    )
    batch = f.message_type.add(name="Batch")
    batch.field.add(
        name="messages",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
        type_name=".baseline.Message",
    )
    classes = message_factory.GetMessages([f], pool=descriptor_pool.DescriptorPool())
    return classes["baseline.Batch"], classes["baseline.Entry"]


BatchPB, EntryPB = _baseline_classes()


def baseline_serialize(messages: Sequence[Message]) -> bytes:
    batch = BatchPB()
    for m in messages:
        pb = batch.messages.add(
            type=m.type,
            src=m.src,
            dst=m.dst,
            term=m.term,
            log_term=m.log_term,
            index=m.index,
            commit=m.commit,
        )
        add = pb.entries.add
        for e in m.entries:
            add(term=e.term, index=e.index, kind=e.kind, data=e.data)
    result: bytes = batch.SerializeToString()
    return result


def baseline_parse(data: bytes) -> list[Message]:
    return [
        Message(
            type=_TYPES[pb.type],
            src=pb.src,
            dst=pb.dst,
            term=pb.term,
            log_term=pb.log_term,
            index=pb.index,
            commit=pb.commit,
            entries=tuple(Entry(e.term, e.index, e.data, _KINDS[e.kind]) for e in pb.entries),
        )
        for pb in BatchPB.FromString(data).messages
    ]


def _best(fn: Callable[[], object], budget: float = 0.2) -> float:
    number = max(1, int(budget / max(timeit.timeit(fn, number=1), 1e-7)))
    return min(timeit.repeat(fn, number=number, repeat=5)) / number


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", default="1,10,100,1000")
    parser.add_argument("--size", type=int, default=64, help="bytes of data per entry")
    args = parser.parse_args(argv)
    print(f"{'entries':>8} {'size':>5} | {'encode us/entry':>28} | {'decode us/entry':>28}")
    print(
        f"{'':>8} {'':>5} | {'submsg':>8} {'codec':>8} {'ratio':>8}  "
        f"| {'submsg':>8} {'codec':>8} {'ratio':>8}"
    )
    for n in (int(x) for x in args.entries.split(",")):
        entries = tuple(Entry(7, 1000 + i, bytes(args.size)) for i in range(n))
        batch = [Message(MsgType.APPEND, "ramraft-0", "ramraft-1", 7, 7, 999, entries, commit=990)]
        assert baseline_parse(baseline_serialize(batch)) == batch
        assert codec.parse_batch(codec.serialize_batch(batch)) == batch
        wire_base, wire_codec = baseline_serialize(batch), codec.serialize_batch(batch)
        enc_b = _best(lambda b=batch: baseline_serialize(b)) / n * 1e6  # type: ignore[misc]
        enc_c = _best(lambda b=batch: codec.serialize_batch(b)) / n * 1e6  # type: ignore[misc]
        dec_b = _best(lambda w=wire_base: baseline_parse(w)) / n * 1e6  # type: ignore[misc]
        dec_c = _best(lambda w=wire_codec: codec.parse_batch(w)) / n * 1e6  # type: ignore[misc]
        print(
            f"{n:>8} {args.size:>5} | {enc_b:8.3f} {enc_c:8.3f} {enc_b / enc_c:7.2f}x  "
            f"| {dec_b:8.3f} {dec_c:8.3f} {dec_b / dec_c:7.2f}x"
        )
    small = [
        Message(MsgType.APPEND_RESP, "ramraft-1", "ramraft-0", 7, index=1234) for _ in range(100)
    ]
    wire = codec.serialize_batch(small)
    enc = _best(lambda: codec.serialize_batch(small)) / 100 * 1e6
    dec = _best(lambda: codec.parse_batch(wire)) / 100 * 1e6
    print(
        f"small messages (APPEND_RESP, no entries): "
        f"encode {enc:.3f} us/msg, decode {dec:.3f} us/msg"
    )


if __name__ == "__main__":
    main()

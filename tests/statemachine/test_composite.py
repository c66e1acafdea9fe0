"""Framing helpers and the composite machine (KV + an application model in one log)."""

from __future__ import annotations

import asyncio
import io

import pytest

from ramraft.server.machines.embed import (
    LocalProposer,
    ModelMachine,
    ReplicatedModel,
    command,
    encode_call,
)
from ramraft.server.machines.kv import KVMachine, PutResult, encode_put
from ramraft.server.machines.statemachine import (
    TAG_KV,
    TAG_MODEL,
    CommandError,
    CompositeMachine,
    ErrorCode,
    FrameReader,
    FrameWriter,
    SnapshotFormatError,
    StateMachine,
)


class Counter(ReplicatedModel):
    def __init__(self) -> None:
        self.value = 0

    @command
    def bump(self, by: int) -> int:
        self.value += by
        return self.value


def node() -> tuple[CompositeMachine, KVMachine, Counter]:
    kv = KVMachine()
    counter = Counter()
    return CompositeMachine({TAG_MODEL: ModelMachine(counter), TAG_KV: kv}), kv, counter


def test_routes_by_tag() -> None:
    machine, kv, counter = node()
    assert isinstance(machine, StateMachine)
    assert machine.apply(1, encode_put("k", b"v")) == PutResult(1)
    assert machine.apply(2, encode_call("bump", [5])) == 5
    assert machine.apply(3, b"") is None
    result = machine.apply(4, b"\x7fjunk")
    assert isinstance(result, CommandError) and result.code is ErrorCode.BAD_COMMAND
    assert kv.get("k") == (True, b"v") and counter.value == 5
    assert machine.applied_index == 4


def test_embedded_model_through_the_composite() -> None:
    machine, _, counter = node()
    model_machine = machine.machine(TAG_MODEL)
    assert isinstance(model_machine, ModelMachine)
    model_machine.bind(LocalProposer(machine))
    assert asyncio.run(counter.bump(2)) == 2
    assert counter.value == 2


def test_snapshot_round_trip() -> None:
    machine, _, _ = node()
    for i in range(1, 200):
        machine.apply(i, encode_put(f"k{i}", bytes(i)) if i % 2 else encode_call("bump", [i]))
    machine.apply(200, b"")  # seen by the composite only
    buf = io.BytesIO()
    job = machine.snapshot()
    machine.apply(500, encode_put("late", b"not in the snapshot"))
    job.write_to(buf)
    data = buf.getvalue()

    other, other_kv, other_counter = node()
    other.restore(io.BytesIO(data))
    assert other.applied_index == 200
    with pytest.raises(ValueError, match="after applied index"):
        other.apply(200, encode_put("k", b""))
    assert other_counter.value == sum(range(2, 200, 2))
    assert len(other_kv) == 100 and other_kv.get("late") == (False, b"")

    for cut in range(0, len(data), max(1, len(data) // 300)):
        with pytest.raises(SnapshotFormatError):
            node()[0].restore(io.BytesIO(data[:cut]))

    lonely = CompositeMachine({TAG_KV: KVMachine()})
    with pytest.raises(SnapshotFormatError, match="sections"):
        lonely.restore(io.BytesIO(data))


def test_composite_validates_tags() -> None:
    with pytest.raises(ValueError, match="needs at least one machine"):
        CompositeMachine({})
    with pytest.raises(ValueError, match="machine tag 0 is not a byte value"):
        CompositeMachine({0: KVMachine()})


def test_frames_round_trip_and_partial_writes() -> None:
    class Trickle(io.RawIOBase):
        """A raw stream that accepts at most 3 bytes per write."""

        def __init__(self) -> None:
            self.data = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, b: bytes) -> int:  # type: ignore[override]
            self.data += bytes(b[:3])
            return min(3, len(b))

    class Dribble(io.RawIOBase):
        """Returns at most 2 bytes per read."""

        def __init__(self, data: bytes) -> None:
            self.src = io.BytesIO(data)

        def read(self, n: int = -1) -> bytes:
            return self.src.read(min(n, 2) if n >= 0 else 2)

    out = Trickle()
    w = FrameWriter(out, b"TEST", 3)
    payloads = [b"", b"x", bytes(range(256)) * 50]
    for p in payloads:
        w.frame(p)
    assert w.bytes_written == len(out.data)
    r = FrameReader(Dribble(bytes(out.data)), b"TEST", 3)
    assert [r.frame() for _ in payloads] == payloads
    with pytest.raises(SnapshotFormatError, match="truncated"):
        r.frame()
    with pytest.raises(SnapshotFormatError, match="version"):
        FrameReader(io.BytesIO(bytes(out.data)), b"TEST", 4)

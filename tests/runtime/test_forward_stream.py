"""A follower's writes reach the leader over one ``Peer.ForwardStream``
(server/runtime/forwarding.py; the leader's side is transport.py
``PeerServicer.forward_batches``), many to a message, each keeping
Forward's rules: its answer or refusal, whether it may have been applied,
its own deadline; a stream that breaks leaves its writes maybe applied; a
leader without the stream gets Forward calls. Real gRPC on loopback, the
real PeerServicer, a scripted leader runtime."""

from __future__ import annotations

import asyncio
import random
import types
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from ramraft.proto import raft_pb2
from ramraft.server.request_errors import NotLeader, Unavailable
from ramraft.server.runtime.deadline import Deadline
from ramraft.server.runtime.forwarding import ForwardStreams
from ramraft.server.runtime.node_api import NodeAPI, RetryElsewhere
from ramraft.server.runtime.transport import MAX_FORWARD_BATCH, PeerServicer
from tests.runtime.fakes import Offers
from tests.runtime.test_forward_refusal import (
    LIMITS,
    FollowerRuntime,
    decode,
    encode,
    with_leader,
)

HANG_GUARD = 10.0  # seconds: a stream that is not ended would wait for ever


class Leader(Offers):
    """A leader runtime: answers each command after a random pause (so
    answers complete in another order than they came), at the index it was
    proposed at; refuses a command with the next of ``refusals[command]``;
    ``hold`` makes it never answer."""

    def __init__(
        self, refusals: dict[bytes, list[Exception]] | None = None, hold: bool = False
    ) -> None:
        self.refusals = refusals or {}
        self.hold = hold
        self.proposed: list[bytes] = []
        self.remaining: list[float | None] = []
        self.rng = random.Random(7)

    async def propose(self, command: bytes) -> tuple[int, object]:
        self.proposed.append(command)
        index = len(self.proposed)
        if self.refusals.get(command):
            raise self.refusals[command].pop(0)
        if self.hold:
            await asyncio.Event().wait()
        await asyncio.sleep(self.rng.uniform(0, 0.02))
        return index, command.decode()


async def with_stream_leader(
    leader: Leader,
    body: Callable[[NodeAPI], Awaitable[None]],
    servicers: list[PeerServicer] | None = None,
) -> None:
    """A leader serving Peer (Forward and ForwardStream) with this
    release's servicer (appended to ``servicers``), and a follower's
    NodeAPI that forwards to it."""
    serving = NodeAPI(leader, encode, decode, LIMITS)  # type: ignore[arg-type]

    async def serve_forward(command: bytes, context: Any) -> raft_pb2.ForwardResponse:
        remaining = context.time_remaining()
        leader.remaining.append(remaining)
        return await serving.serve_forward(command, context)

    servicer = PeerServicer(
        lambda messages: None,
        None,  # type: ignore[arg-type]
        lambda message: None,
        serve_forward,
        lambda: 1,
    )
    if servicers is not None:
        servicers.append(servicer)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((servicer.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    follower = FollowerRuntime(f"127.0.0.1:{port}")
    api = NodeAPI(follower, encode, decode, LIMITS)  # type: ignore[arg-type]
    try:
        await body(api)
    finally:
        await api.close()
        await follower.transport.leader.close()
        await server.stop(None)


def test_writes_share_messages_and_each_gets_its_own_answer() -> None:
    """100 writes at once, answered in another order than they were sent:
    each gets its own result, in far fewer messages than writes."""
    leader = Leader()
    commands = [f"w{n}".encode() for n in range(100)]
    results: list[tuple[int, object]] = []

    async def body(api: NodeAPI) -> None:
        results.extend(
            await asyncio.wait_for(asyncio.gather(*(api.write(c, timeout=5) for c in commands)), 30)
        )
        assert api.forward_streams.messages_sent < 20, api.forward_streams.messages_sent

    asyncio.run(with_stream_leader(leader, body))
    assert [result for _, result in results] == [f"'{c.decode()}'" for c in commands]
    assert sorted(leader.proposed) == sorted(commands)  # each proposed once
    assert len({index for index, _ in results}) == 100


def test_a_refusal_before_proposal_is_sent_again_a_maybe_applied_one_is_not() -> None:
    """The leader's ForwardRefusal travels in the answer: a write refused
    before it was proposed goes again, one that may be in the log fails as
    "may or may not have been applied" (no session) and is not repeated."""
    leader = Leader(
        {
            b"first": [NotLeader("leader", "")],
            b"second": [Unavailable("leadership changed before it committed")],
        }
    )

    async def body(api: NodeAPI) -> None:
        assert await api.write(b"first", timeout=5) == (2, "'first'")
        with pytest.raises(Unavailable, match="may or may not have been applied"):
            await api.write(b"second", timeout=5)

    asyncio.run(with_stream_leader(leader, body))
    assert leader.proposed == [b"first", b"first", b"second"]


def test_each_write_keeps_its_deadline() -> None:
    """The leader gets the write's time left (timeout_ms); when it does not
    answer, the follower gives up at the deadline with a timeout."""
    leader = Leader(hold=True)

    async def body(api: NodeAPI) -> None:
        with pytest.raises(TimeoutError):
            await api.write(b"slow", timeout=0.5)

    asyncio.run(with_stream_leader(leader, body))
    (remaining,) = leader.remaining
    assert remaining is not None and 0.2 < remaining <= 0.5


def test_a_broken_stream_leaves_its_writes_maybe_applied() -> None:
    """The leader goes away with a write in service: without a session the
    write fails as maybe applied (never sent again); the next write opens a
    new stream."""
    leader = Leader(hold=True)
    outcome: list[BaseException] = []

    async def body(api: NodeAPI) -> None:
        pending = asyncio.ensure_future(api.write(b"lost", timeout=10))
        while not leader.proposed:
            await asyncio.sleep(0.01)
        pipe = next(iter(api.forward_streams._pipes.values()))
        pipe._call.cancel()  # the stream breaks, as when the leader's process dies
        with pytest.raises(Unavailable, match="may or may not have been applied") as caught:
            await asyncio.wait_for(pending, 5)
        outcome.append(caught.value)
        leader.hold = False
        assert (await api.write(b"next", timeout=5))[1] == "'next'"

    asyncio.run(with_stream_leader(leader, body))
    assert leader.proposed == [b"lost", b"next"]
    assert outcome


class GatedLeader(Leader):
    """A leader whose writes wait for ``gate`` before they are answered."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def propose(self, command: bytes) -> tuple[int, object]:
        self.proposed.append(command)
        await self.gate.wait()
        return len(self.proposed), command.decode()


def test_a_stopping_leader_answers_what_it_read_and_proposed_nothing_else() -> None:
    """The leader stops (``end_streams``) with one write in service and one
    sent but not read: the first is answered as usual; the stream then ends
    saying the leader proposed none of the writes it did not answer, so the
    second is refused before proposal (sent to the next leader, never
    "maybe applied"), and so is a write that comes after."""
    leader = GatedLeader()
    servicers: list[PeerServicer] = []

    async def body(api: NodeAPI) -> None:
        streams = api.forward_streams
        first = asyncio.ensure_future(streams("leader", b"first", Deadline(10)))
        while not leader.proposed:
            await asyncio.sleep(0.01)
        second = asyncio.ensure_future(streams("leader", b"second", Deadline(10)))
        await asyncio.sleep(0)  # queued at the follower; the leader reads no more
        servicers[0].end_streams()
        await asyncio.sleep(0.1)
        assert not first.done()  # the leader waits for the write it read
        leader.gate.set()
        assert await asyncio.wait_for(first, HANG_GUARD) == (1, "'first'")
        with pytest.raises(RetryElsewhere) as caught:
            await asyncio.wait_for(second, HANG_GUARD)
        assert not caught.value.maybe_applied
        assert streams.messages_sent == 2  # the second write left: sent, never read
        with pytest.raises(RetryElsewhere) as late:
            await asyncio.wait_for(streams("leader", b"late", Deadline(10)), HANG_GUARD)
        assert not late.value.maybe_applied

    asyncio.run(with_stream_leader(leader, body, servicers))
    assert leader.proposed == [b"first"]


def test_a_leader_without_the_stream_gets_forward_calls() -> None:
    """A leader of an earlier release answers UNIMPLEMENTED: the write goes
    by Forward, and so do the next ones, without trying the stream again."""

    class OldLeader(Offers):
        def __init__(self) -> None:
            self.proposed: list[bytes] = []

        async def propose(self, command: bytes) -> tuple[int, object]:
            self.proposed.append(command)
            return 7, "applied"

    old = OldLeader()
    serving = NodeAPI(old, encode, decode, LIMITS)  # type: ignore[arg-type]

    async def body(api: NodeAPI) -> None:
        assert await api.write(b"a", timeout=5) == (7, "'applied'")
        # The stream's writer may count the first write's message (unread)
        # after the write went by Forward: wait until it is stopped.
        pipe = api.forward_streams._pipes["leader"]
        await asyncio.wait({pipe._writer}, timeout=HANG_GUARD)
        tried = api.forward_streams.messages_sent
        assert tried <= 1
        assert await api.write(b"b", timeout=5) == (7, "'applied'")
        assert api.forward_streams.messages_sent == tried  # not tried again
        assert list(api.forward_streams._unserved) == ["leader"]

    asyncio.run(with_leader(serving.serve_forward, body))
    assert old.proposed == [b"a", b"b"]


def test_a_batch_over_the_limit_ends_the_stream() -> None:
    """The leader reads no more than MAX_FORWARD_BATCH writes in a message."""
    leader = Leader()

    async def body(api: NodeAPI) -> None:
        channel = api.runtime.transport.channel("leader")
        call = channel.stream_stream(
            "/ramraft.peer.v1.Peer/ForwardStream",
            request_serializer=raft_pb2.ForwardBatch.SerializeToString,
            response_deserializer=raft_pb2.ForwardAnswers.FromString,
        )()
        items = [
            raft_pb2.ForwardItem(id=n, command=b"x", timeout_ms=1000)
            for n in range(MAX_FORWARD_BATCH + 1)
        ]
        await call.write(raft_pb2.ForwardBatch(items=items))
        await call.done_writing()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "the limit is" in (caught.value.details() or "")

    asyncio.run(with_stream_leader(leader, body))
    assert leader.proposed == []


def _internal_error() -> grpc.aio.AioRpcError:
    """What grpc.aio gives both the failed write and the call."""
    empty = grpc.aio.Metadata()
    return grpc.aio.AioRpcError(grpc.StatusCode.INTERNAL, empty, empty, "Internal error from Core")


class _RefusedCall:
    """A ForwardStream call whose leader ended it before the first message
    left: grpc.aio fails the write with its own INTERNAL."""

    def __init__(self) -> None:
        self.ended = asyncio.Event()

    async def write(self, message: object) -> None:
        self.ended.set()
        raise _internal_error()

    def __aiter__(self) -> _RefusedCall:
        return self

    async def __anext__(self) -> object:
        await self.ended.wait()
        raise _internal_error()

    def cancel(self) -> None:
        self.ended.set()


class _RefusingTransport:
    def channel(self, leader: str) -> object:
        return types.SimpleNamespace(stream_stream=lambda *a, **k: lambda **kw: _RefusedCall())

    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()


def test_a_write_that_never_left_a_broken_stream_goes_by_forward() -> None:
    """Whatever status the stream ends with, a write whose message was never
    sent is safe to send again: it goes by the unary Forward."""
    unary: list[bytes] = []

    async def forward(leader: str, command: bytes, deadline: object) -> tuple[int, object]:
        unary.append(command)
        return 7, "applied"

    def answer(found: object) -> tuple[int, object]:
        raise AssertionError(f"answered from the broken stream: {found!r}")

    async def main() -> tuple[int, object]:
        streams = ForwardStreams(lambda: _RefusingTransport(), forward, answer)  # type: ignore[arg-type,return-value]
        try:
            return await streams("leader", b"cmd", Deadline(5))
        finally:
            await streams.close()

    assert asyncio.run(main()) == (7, "applied")
    assert unary == [b"cmd"]

"""How a peer's stream ends, on both sides (transport.py).

A stopping node ends its peers' Stream calls itself
(``PeerServicer.end_streams``): each closes with OK and the summary of what
it carried, and a Stream opened after that closes at once. Otherwise a
peer's stream, open for as long as both nodes run, held the gRPC server's
graceful stop for its whole grace and was then aborted (grpc's warning
"Aborting method ... due to server stop"). Real gRPC on loopback.

The sending side logs why its calls fail: the first failure, and the first
of every other kind, since grpc reports a call the peer refused at once as
"INTERNAL: Internal error from Core" about a third of the time."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import structlog

from ramraft.consensus.types import Message, MsgType
from ramraft.proto import raft_pb2
from ramraft.server.runtime.transport import PEER_SERVICE, PeerServicer, PeerTransport
from ramraft.server.runtime.wire import serialize_batch

HANG_GUARD = 10.0  # seconds: a stream that is not ended would wait for ever


def heartbeat(term: int) -> bytes:
    return serialize_batch([Message(MsgType.HEARTBEAT, "n2", "n1", term)])


async def serve(received: list[Message]) -> tuple[grpc.aio.Server, PeerServicer, Any]:
    servicer = PeerServicer(
        received.extend,
        None,  # type: ignore[arg-type]  # no snapshots in these tests
        lambda message: None,
        lambda command, context: None,
        lambda: 1,
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((servicer.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stream = channel.stream_unary(
        f"/{PEER_SERVICE}/Stream",
        request_serializer=lambda b: b,
        response_deserializer=raft_pb2.StreamSummary.FromString,
    )
    return server, servicer, (channel, stream)


def test_a_stopping_node_ends_its_peers_streams_with_ok() -> None:
    async def main() -> None:
        received: list[Message] = []
        server, servicer, (channel, stream) = await serve(received)
        try:
            calls = [stream(), stream()]
            for term, call in enumerate(calls, start=1):
                await call.write(heartbeat(term))
            while len(received) < 2:
                await asyncio.sleep(0.01)
            servicer.end_streams()
            for call in calls:
                summary = await asyncio.wait_for(call, HANG_GUARD)
                assert summary.batches == 1
                assert await call.code() == grpc.StatusCode.OK
            # A peer that reconnects meanwhile is ended at once too.
            late = stream()
            assert (await asyncio.wait_for(late, HANG_GUARD)).batches == 0
            assert sorted(m.term for m in received) == [1, 2]
        finally:
            await channel.close()
            await server.stop(None)

    asyncio.run(main())


def test_streams_go_on_until_the_node_stops() -> None:
    """Without end_streams, a Stream stays open and keeps delivering."""

    async def main() -> None:
        received: list[Message] = []
        server, _, (channel, stream) = await serve(received)
        try:
            call = stream()
            for term in (1, 2, 3):
                await call.write(heartbeat(term))
                while len(received) < term:
                    await asyncio.sleep(0.01)
            assert not call.done()
            await call.done_writing()
            assert (await asyncio.wait_for(call, HANG_GUARD)).batches == 3
        finally:
            await channel.close()
            await server.stop(None)

    asyncio.run(main())


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def test_the_link_logs_the_first_failure_of_each_kind() -> None:
    """A peer of another cluster refuses every call; grpc turns one refusal
    in three into INTERNAL. Logged: the first failure, and the first one
    that says why, not every failure."""
    internal = rpc_error(grpc.StatusCode.INTERNAL, "Internal error from Core")
    refused = rpc_error(
        grpc.StatusCode.FAILED_PRECONDITION, "peer refused: it belongs to cluster 'c-old'"
    )
    failures = [internal, refused, refused, internal, refused]

    async def main() -> None:
        transport = PeerTransport(
            "n1",
            {"n2": "127.0.0.1:1"},
            None,
            lambda peer: None,
            lambda peer, ok: None,  # type: ignore[arg-type]
        )
        link = transport.link("n2")
        done = asyncio.Event()

        async def failing_stream() -> None:
            if not failures:
                done.set()
                await asyncio.Event().wait()  # the link's next call: never ends
            raise failures.pop(0)

        link._stream = failing_stream  # type: ignore[method-assign]
        link.wake.set()
        await asyncio.wait_for(done.wait(), HANG_GUARD)
        await transport.close()

    with structlog.testing.capture_logs() as logs:
        asyncio.run(main())
    logged = [(e["failures"], e["error"]) for e in logs if e["event"] == "peer_unreachable"]
    assert logged == [
        (1, "INTERNAL: Internal error from Core"),
        (2, "FAILED_PRECONDITION: peer refused: it belongs to cluster 'c-old'"),
    ]

"""A stopping node ends its clients' long-lived streams itself
(server/rpc/ending.py): KV.StreamBatch and KV.Stream, Watch and
Lease.KeepAlive each answer what they read, then end UNAVAILABLE with
"this node is shutting down", which clients take as "ask another node".
Before, the gRPC server waited its grace for them and then aborted them, so
a node stopped 0.5 s late as soon as one client was connected. A real
one-node cluster over gRPC on loopback; the StreamServer's part (what it
read is answered, nothing after) with a scripted servicer."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import structlog
import structlog.testing
from aiohttp import web

from ramraft import Application, ReplicatedModel
from ramraft.proto import kv_pb2, kv_pb2_grpc
from ramraft.server.node import Node
from ramraft.server.rpc.ending import SHUTTING_DOWN, until_set
from ramraft.server.rpc.streams import StreamServer
from ramraft.server.runtime.ending import StreamsEnding
from ramraft.server.web import tier
from tests.server.test_stream_rounds import StreamContext
from tests.web.solo import start_solo

HANG_GUARD = 10.0  # seconds: a stream that is not ended would wait for ever


async def solo_node(root: Path, app: Application | None = None) -> Node:
    node = await start_solo(root, app)
    for _ in range(1000):  # leases and watches: key-value version 2, switched to at once
        if node.kv.active_version >= 2:
            return node
        await asyncio.sleep(0.01)
    raise AssertionError("the one-node cluster did not switch to key-value version 2")


async def assert_ended_by_the_stop(*calls: Any) -> None:
    """Each of ``calls`` (streaming calls), read to its end, ended
    UNAVAILABLE "shutting down"."""
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(_drain(call), HANG_GUARD)
        error = caught.value
        assert (error.code(), error.details()) == (grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)


async def _drain(call: Any) -> None:
    while await call.read() is not grpc.aio.EOF:
        pass
    raise AssertionError(f"the stream ended {await call.code()}, not with an error")


def test_a_stopping_node_ends_its_clients_streams(tmp_path: Path) -> None:
    """A client's StreamBatch, Watch and KeepAlive, idle on a node that
    stops, each end UNAVAILABLE "shutting down" after what they carried:
    the put's answer, the watch's event, the renewal's answer."""

    async def main() -> None:
        node = await solo_node(tmp_path / "n")
        channel = grpc.aio.insecure_channel(node.listening()["grpc"])
        try:
            kv = kv_pb2_grpc.KVStub(channel)
            leases = kv_pb2_grpc.LeaseStub(channel)
            lease = await leases.Grant(kv_pb2.LeaseGrantRequest(ttl=60), timeout=10)

            watch = kv.Watch()
            await watch.write(kv_pb2.WatchRequest(create=kv_pb2.WatchCreateRequest(key="k")))
            created = await asyncio.wait_for(watch.read(), HANG_GUARD)
            assert isinstance(created, kv_pb2.WatchResponse) and created.created

            batch = kv.StreamBatch()
            put = kv_pb2.StreamRequest(id=1, put=kv_pb2.PutRequest(key="k", value=b"v"))
            await batch.write(kv_pb2.StreamBatchRequest(requests=[put]))
            answer = await asyncio.wait_for(batch.read(), HANG_GUARD)
            assert isinstance(answer, kv_pb2.StreamBatchResponse)
            assert [(r.id, r.code) for r in answer.responses] == [(1, 0)]

            event = await asyncio.wait_for(watch.read(), HANG_GUARD)
            assert isinstance(event, kv_pb2.WatchResponse)
            assert [e.kv.key for e in event.events] == ["k"]

            keepalive = leases.KeepAlive()
            await keepalive.write(kv_pb2.LeaseKeepAliveRequest(id=lease.id))
            renewed = await asyncio.wait_for(keepalive.read(), HANG_GUARD)
            assert isinstance(renewed, kv_pb2.LeaseKeepAliveResponse)
            assert renewed.id == lease.id and renewed.ttl > 0

            with structlog.testing.capture_logs() as logs:
                await node.stop(transfer=False, grace=HANG_GUARD)
            await assert_ended_by_the_stop(batch, watch, keepalive)
            (ended,) = [e for e in logs if e["event"] == "streams_ended"]
            assert (ended["client_streams"], ended["watch_streams"]) == (2, 1), ended
        finally:
            await channel.close()
            await node.stop(transfer=False, grace=1)

    asyncio.run(main())


def test_a_stream_opened_as_the_node_stops_is_refused_at_once(tmp_path: Path) -> None:
    """Once the node ends its clients' streams, a new Stream, Watch or
    KeepAlive ends at once the same way."""

    async def main() -> None:
        node = await solo_node(tmp_path / "n")
        channel = grpc.aio.insecure_channel(node.listening()["grpc"])
        try:
            node.end_streams()
            # Nothing written: a write racing the node's refusal can turn
            # it into grpc.aio's own "INTERNAL: Internal error from Core".
            kv = kv_pb2_grpc.KVStub(channel)
            stream = kv.Stream()
            watch = kv.Watch()
            keepalive = kv_pb2_grpc.LeaseStub(channel).KeepAlive()
            await assert_ended_by_the_stop(stream, watch, keepalive)
        finally:
            await channel.close()
            await node.stop(transfer=False, grace=1)

    asyncio.run(main())


def test_a_stopping_node_ends_its_http_watches(tmp_path: Path) -> None:
    """An HTTP watch (Server-Sent Events) on a stopping node sends what it
    has and ends its response properly, so that the event source resumes
    elsewhere; left open, it held the web tier's shutdown (aiohttp waited
    60 s for it, then cut it)."""

    async def main() -> None:
        node = await solo_node(tmp_path / "n")
        http = node.listening()["http"]
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://{http}/v1/watch?key=k") as response,
            ):
                assert response.status == 200
                created = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 10)
                assert b"event: created" in created
                for key in ("k", "other"):
                    async with session.put(f"http://{http}/v1/kv/{key}", data=b"v") as put:
                        assert put.status == 200
                stopping = asyncio.ensure_future(node.stop(transfer=False, grace=HANG_GUARD))
                # The whole rest of the body, ended as a response ends (a
                # cut one raises ClientPayloadError).
                rest = await asyncio.wait_for(response.content.read(), HANG_GUARD)
                await asyncio.wait_for(stopping, HANG_GUARD)
            assert b"event: change" in rest and b'"key": "k"' in rest, rest
            # Its last word is the node's revision, with an id: the event
            # source resumes after it (rpc/watch.py, WatchStream.shut_down).
            # (a revision past the watch's last event: "other" was put too).
            last = rest.strip().split(b"\n\n")[-1].split(b"\n")
            assert b"event: progress" in last, rest
            assert f"id: {node.kv.revision}".encode() in last and node.kv.revision == 3, rest
        finally:
            await node.stop(transfer=False, grace=1)

    asyncio.run(main())


class _Longpoll(ReplicatedModel):
    """An application whose one page waits for ever (a long poll)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()


def _longpoll_app() -> Application:
    model = _Longpoll()

    async def wait(request: web.Request) -> web.Response:
        model.started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    application = Application(model, routes=[web.get("/wait", wait)], title="long poll")
    application.model = model
    return application


def test_a_request_that_never_ends_does_not_hold_the_stop(tmp_path: Path) -> None:
    """An application's handler that waits for ever is cancelled after the
    stop's grace (as a gRPC call is), not after aiohttp's default 60 s."""

    async def main() -> None:
        application = _longpoll_app()
        node = await solo_node(tmp_path / "n", application)
        http = node.listening()["http"]
        async with aiohttp.ClientSession() as session:
            waiting = asyncio.ensure_future(session.get(f"http://{http}/app/wait"))
            try:
                await asyncio.wait_for(application.model.started.wait(), HANG_GUARD)  # type: ignore[attr-defined]
            finally:
                stopping = asyncio.ensure_future(node.stop(transfer=False, grace=60))
            try:
                await asyncio.wait({stopping}, timeout=HANG_GUARD)
                assert stopping.done(), "the node's stop still waits for the request"
            finally:
                await stopping  # bounded either way: aiohttp's shutdown timeout
            with contextlib.suppress(aiohttp.ClientError):
                (await waiting).close()

    asyncio.run(main())


def test_an_app_hook_that_never_returns_does_not_hold_the_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An application's on_shutdown hook (added by its ``setup``) that
    never returns: the node names it and stops without it."""
    monkeypatch.setattr(tier, "CLEANUP_LIMIT", 0.5)
    hook_ran = asyncio.Event

    def application() -> tuple[Application, asyncio.Event]:
        ran = hook_ran()

        async def hang(app: web.Application) -> None:
            ran.set()
            await asyncio.Event().wait()

        def setup(sub: web.Application) -> None:
            sub.on_shutdown.append(hang)

        return Application(_Longpoll(), setup=setup, title="hangs at shutdown"), ran

    async def main() -> None:
        app, ran = application()
        node = await solo_node(tmp_path / "n", app)
        with structlog.testing.capture_logs() as logs:
            stopping = asyncio.ensure_future(node.stop(transfer=False, grace=60))
            try:
                await asyncio.wait({stopping}, timeout=HANG_GUARD)
                assert stopping.done(), "the node's stop still waits for the hook"
            finally:
                if not stopping.done():
                    stopping.cancel()
        assert ran.is_set()
        assert [e for e in logs if e["event"] == "web_tier_cleanup_timed_out"], logs
        assert [e for e in logs if e["event"] == "node_stopped"]

    asyncio.run(main())


def test_an_ended_stream_answers_what_it_read_and_reads_nothing_more() -> None:
    """Request 1 is in service when the stream is ended: it is answered,
    then ``run`` returns; request 2, which the client sends after, is never
    read, so never served."""
    gate = asyncio.Event
    served: list[int] = []

    async def main() -> list[int]:
        release, sent_first, send_second = gate(), gate(), gate()

        async def serve_one(
            request: kv_pb2.StreamRequest, op: str, stream: Any, arrived: float
        ) -> kv_pb2.StreamResponse:
            served.append(request.id)
            await release.wait()
            return kv_pb2.StreamResponse(id=request.id)

        async def requests() -> AsyncIterator[kv_pb2.StreamBatchRequest]:
            for n in (1, 2):
                if n == 2:
                    await send_second.wait()
                put = kv_pb2.PutRequest(key="k", value=b"v")
                yield kv_pb2.StreamBatchRequest(requests=[kv_pb2.StreamRequest(id=n, put=put)])
                sent_first.set()
            await asyncio.Event().wait()  # the client keeps its stream open

        context = StreamContext()
        ending = StreamsEnding()
        server = StreamServer(serve_one, {"put": "Put"}, context, None, True)  # type: ignore[arg-type]

        async def run() -> None:
            with ending.track(server.end):
                await server.run(requests())

        running = asyncio.create_task(run())
        await sent_first.wait()
        while not served:
            await asyncio.sleep(0)
        ending.end_all()
        send_second.set()
        for _ in range(20):  # turns in which the second request could be read
            await asyncio.sleep(0)
        assert not running.done()  # the first is still in service
        release.set()
        await asyncio.wait_for(running, HANG_GUARD)
        assert server.ended
        return [r.id for message in context.written for r in message.responses]

    assert asyncio.run(main()) == [1]
    assert served == [1]


def test_a_reader_cancelled_while_it_waits_leaves_no_read_behind() -> None:
    """A keep-alive stream whose client goes away is cancelled while
    ``until_set`` waits for its next request; the read it left running ended
    with the stream and asyncio logged "Task exception was never retrieved"
    at error level (seen on every rolling restart with `ramraft lease
    keep-alive` connected)."""

    async def main() -> list[dict[str, Any]]:
        errors: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
        ended = asyncio.Event()

        async def requests() -> AsyncIterator[int]:
            await ended.wait()  # the client sends nothing, then goes away
            return
            yield 0  # an async generator

        async def serve() -> None:
            async for _ in until_set(requests(), asyncio.Event()):
                raise AssertionError("no request was sent")

        server = asyncio.ensure_future(serve())
        await asyncio.sleep(0.01)
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server
        ended.set()
        for _ in range(5):
            await asyncio.sleep(0)
        gc.collect()
        return errors

    assert asyncio.run(main()) == []

"""Server-Sent Events (server/web/sse.py): the wire format, the application's
event feed (ids, topics, resuming, resets), its bounds, and the stream over
HTTP on a real node in this process (``/v1/events``, the notes board's
``/app/events``): resumable, a slow reader is cut off with bounded memory,
and an open stream does not hold one of the node's --max-inflight slots."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from examples.notes import app as notes_app
from examples.notes.model import Board
from ramraft.server.config import NodeConfig, NodeLimits
from ramraft.server.node import ListenError, Node
from ramraft.server.request_errors import BadRequest, Overloaded
from ramraft.server.web.sse import EventFeed, Subscription, encode_event
from tests.server.procs import free_ports


def frames(subscription: Subscription) -> list[str]:
    return [f.decode() for f in asyncio.run(subscription.take(0))]


def test_the_wire_format() -> None:
    assert (
        encode_event("a\nb", event="notes", id="7") == b"id: 7\nevent: notes\ndata: a\ndata: b\n\n"
    )
    assert encode_event("x") == b"data: x\n\n"
    with pytest.raises(ValueError, match="one line"):
        encode_event("x", event="a\nb")


def test_events_carry_the_applied_index_and_resume_after_it() -> None:
    feed = EventFeed()
    feed.publish(5, [("notes", '{"id":1}')])
    feed.publish(7, [("notes", '"a"'), ("other", '"b"'), ("notes", '"c"')])
    everything = feed.subscribe(None, after="0")
    assert [f.split("\n")[0] for f in frames(everything)] == [
        "id: 5",
        "id: 7.0",
        "id: 7.1",
        "id: 7",
    ]
    # A browser that saw "7.0" gets the rest of entry 7, on its topics only.
    resumed = feed.subscribe(["notes"], after="7.0")
    assert frames(resumed) == ['id: 7\nevent: notes\ndata: "c"\n\n']
    assert frames(feed.subscribe(["notes"], after="7")) == []
    live = feed.subscribe(["other"])  # no id: from now on
    feed.publish(8, [("notes", "1"), ("other", "2")])
    assert frames(live) == ["id: 8\nevent: other\ndata: 2\n\n"]


def test_a_resume_from_before_what_is_known_gets_a_reset() -> None:
    feed = EventFeed(history_events=3)
    for index in range(10, 15):
        feed.publish(index, [("t", str(index))])
    # 10 and 11 fell out of the history: a browser that saw 10 missed 11.
    assert frames(feed.subscribe(None, after="10")) == [
        'id: 14\nevent: reset\ndata: {"index":14}\n\n'
    ]
    assert [f[:6] for f in frames(feed.subscribe(None, after="11"))] == [
        "id: 12",
        "id: 13",
        "id: 14",
    ]
    # The node installed a snapshot at 20: nothing before it is known.
    open_stream = feed.subscribe(None)
    feed.restart_at(20)
    assert frames(open_stream) == ['id: 20\nevent: reset\ndata: {"index":20}\n\n']
    assert frames(feed.subscribe(None, after="14"))[0].startswith("id: 20\nevent: reset")


def test_a_resume_with_more_to_replay_than_a_queue_holds_gets_a_reset() -> None:
    feed = EventFeed(max_queue_events=4)
    for index in range(1, 11):
        feed.publish(index, [("t", str(index))])
    assert frames(feed.subscribe(None, after="0"))[0].startswith("id: 10\nevent: reset")
    assert len(frames(feed.subscribe(None, after="7"))) == 3


def test_a_slow_reader_is_dropped_and_the_feed_forgets_it() -> None:
    feed = EventFeed(max_queue_events=100, max_queue_bytes=10_000)
    slow = feed.subscribe(["t"])
    for index in range(1, 30):
        feed.publish(index, [("t", "x" * 500)])
    assert slow.closed.startswith("the client reads too slowly")
    assert len(slow) == 0 and slow.queued_bytes == 0
    assert feed.streams == 0 and feed.dropped_streams == 1


def test_bad_ids_and_too_many_streams_are_refused() -> None:
    feed = EventFeed(max_streams=2)
    for bad in ("x", "-1", "3.x", "1.-2"):
        with pytest.raises(BadRequest, match="not an event id"):
            feed.subscribe(None, after=bad)
    feed.subscribe(None)
    second = feed.subscribe(None)
    with pytest.raises(Overloaded, match="2 event streams"):
        feed.subscribe(None)
    second.close("done")
    feed.subscribe(None)


def test_a_stopping_node_sends_what_it_holds_then_its_applied_index_as_the_last_id() -> None:
    """The page's browser then resumes elsewhere from the node's applied
    index, not from its last event, which a node restarted from a later
    snapshot no longer remembers (it would start with a reset)."""
    feed = EventFeed(applied=lambda: 9)
    feed.publish(5, [("notes", '"a"')])
    page = feed.subscribe(["notes"], after="3")
    feed.publish(7, [("notes", '"b"'), ("other", '"x"')])
    feed.close_all("the node is shutting down")
    assert frames(page) == [
        'id: 5\nevent: notes\ndata: "a"\n\n',
        'id: 7.0\nevent: notes\ndata: "b"\n\n',
        "id: 9\n\n",  # an id alone: the browser's last event id, no event
    ]
    assert page.finishing and not page.closed  # closed once the stream wrote it


def test_a_node_behind_the_page_sends_it_nothing_it_had() -> None:
    """A browser that saw up to 9 on one node reconnects to a node that has
    applied only 6: that node's events 7 to 9 are not sent again, and its
    keep-alive ids never go back before 9."""
    applied = [6]
    feed = EventFeed(applied=lambda: applied[0], committed=lambda: 10)
    feed.publish(6, [("t", "6")])
    page = feed.subscribe(None, after="9")
    assert frames(page) == []
    assert feed.progress_frame(page) == b"id: 9\n\n"
    for index in (7, 8, 9, 10):
        feed.publish(index, [("t", str(index))])
        applied[0] = index
    assert [f.split("\n")[0] for f in frames(page)] == ["id: 10"]
    assert feed.progress_frame(page) == b"id: 10\n\n"


def test_an_id_past_what_the_cluster_committed_gets_a_reset() -> None:
    """An id of another life of the cluster (restored from a backup, or
    wiped, so its indexes start lower): waiting for the index to get there
    would leave the page stale, so it reloads; then it gets every event."""
    feed = EventFeed(applied=lambda: 6, committed=lambda: 7)
    feed.publish(6, [("t", "6")])
    page = feed.subscribe(None, after="500")
    assert frames(page) == ['id: 6\nevent: reset\ndata: {"index":6}\n\n']
    feed.publish(7, [("t", "7")])
    assert [f.split("\n")[0] for f in frames(page)] == ["id: 7"]
    # Within what was committed (a node that lags): held back, not reset.
    lagging = feed.subscribe(None, after="7")
    assert frames(lagging) == []


def test_a_quiet_stream_keeps_its_last_id_current_and_ends_after_it_at_a_stop() -> None:
    """Over HTTP: a page with no events of its topics gets, as its
    keep-alive, the node's applied index as an id, so a crash leaves its
    resume point that recent; at the node's stop the response ends, after
    what it held, with that id."""
    applied = [40]
    feed = EventFeed(applied=lambda: applied[0])

    async def page(request: web.Request) -> web.StreamResponse:
        return await feed.stream(request, ["notes"], heartbeat=0.05)

    async def scenario() -> bytes:
        app = web.Application()
        app.router.add_get("/events", page)
        async with (
            TestServer(app) as server,
            aiohttp.ClientSession() as session,
            session.get(server.make_url("/events")) as response,
        ):
            first = await asyncio.wait_for(response.content.readuntil(b"id: 40\n\n"), 10)
            applied[0] = 52
            feed.publish(51, [("other", "1")])  # not this page's topic
            more = await asyncio.wait_for(response.content.readuntil(b"id: 52\n\n"), 10)
            applied[0] = 60
            feed.publish(60, [("notes", '"n"')])
            feed.close_all("the node is shutting down")
            rest = await asyncio.wait_for(response.content.read(), 10)
        return first + more + rest

    body = asyncio.run(scenario())
    assert b"other" not in body and b": keep-alive" not in body
    assert body.endswith(b'id: 60\nevent: notes\ndata: "n"\n\nid: 60\n\n'), body


def test_publishing_is_for_commands_and_takes_json_only() -> None:
    from ramraft.server.machines.embed import LocalProposer, ModelMachine

    board = Board()
    machine = ModelMachine(board)
    published: list[tuple[int, list[tuple[str, str]]]] = []
    machine.on_published = lambda index, events: published.append((index, events))
    machine.bind(LocalProposer(machine))
    with pytest.raises(RuntimeError, match="is for commands"):
        board.publish("notes", {})
    note_id = asyncio.run(board.add("t", "", "", 0.0))
    assert published == [(1, [("notes", f'{{"change":"added","id":{note_id}}}')])]


# ---- over HTTP, on a real node in this process ----------------------------------------------


class SoloNode:
    """A one-node cluster with the notes board and the web tier."""

    def __init__(self, root: Path, limits: NodeLimits | None = None) -> None:
        self.root = root
        self.limits = limits or NodeLimits()
        self.node: Node | None = None
        self.base = ""

    async def __aenter__(self) -> SoloNode:
        for _ in range(5):
            (port,) = free_ports(1)
            config = NodeConfig(
                node_id="solo",
                peers={"solo": f"127.0.0.1:{port}"},
                data_dir=str(self.root),
                http="127.0.0.1:0",
                tick_ms=10,
                fsync=False,
                limits=self.limits,
            )
            self.node = Node(config, app=notes_app())
            try:
                await self.node.start()
                break
            except ListenError as e:
                if not e.in_use:
                    raise
        assert self.node is not None and self.node.runtime is not None
        await self.node.runtime.wait_for_leader(10)
        self.base = f"http://{self.node.listening()['http']}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.node is not None
        await self.node.stop(transfer=False, grace=1)

    @property
    def board(self) -> Board:
        assert self.node is not None and self.node.app is not None
        board = self.node.app.app.model
        assert isinstance(board, Board)
        return board

    @property
    def feed(self) -> EventFeed:
        assert self.node is not None and self.node.app is not None
        assert self.node.app.events is not None
        return self.node.app.events


async def read_events(
    response: aiohttp.ClientResponse, count: int
) -> AsyncIterator[dict[str, str]]:
    """Parse ``count`` events off an SSE response (comments and retry skipped)."""
    event: dict[str, str] = {}
    seen = 0
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if not line:
            if event:
                yield event
                seen += 1
                if seen == count:
                    return
            event = {}
        elif not line.startswith((":", "retry:")):
            name, _, value = line.partition(": ")
            event[name] = value


def test_a_browser_follows_the_board_and_resumes_by_last_event_id(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with SoloNode(tmp_path) as solo, aiohttp.ClientSession() as http:
            async with http.get(f"{solo.base}/app/events") as stream:
                assert stream.headers["Content-Type"] == "text/event-stream"
                first = await solo.board.add("one", "", "", time.time())
                second = await solo.board.add("two", "", "", time.time())
                events = [e async for e in read_events(stream, 2)]
            assert [e["event"] for e in events] == ["notes", "notes"]
            assert events[1]["data"] == f'{{"change":"added","id":{second}}}'
            third = await solo.board.add("three", "", "", time.time())
            # Reconnecting with the last id it saw: what it missed, in order.
            headers = {"Last-Event-ID": events[0]["id"]}
            async with http.get(f"{solo.base}/v1/events?topic=notes", headers=headers) as again:
                missed = [e async for e in read_events(again, 2)]
            assert [e["data"] for e in missed] == [
                f'{{"change":"added","id":{n}}}' for n in (second, third)
            ]
            assert first < second < third
            async with http.get(f"{solo.base}/v1/events?last_event_id=bad") as refused:
                assert refused.status == 400
                assert (await refused.json())["error"] == "invalid_argument"

    asyncio.run(scenario())


def test_a_reader_that_stops_reading_is_cut_off_with_bounded_memory(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with SoloNode(tmp_path) as solo:
            host, port = solo.base.removeprefix("http://").rsplit(":", 1)
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
            _reader, writer = await asyncio.open_connection(sock=sock)
            writer.write(b"GET /v1/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
            await writer.drain()
            while solo.feed.streams == 0:
                await asyncio.sleep(0.01)
            (subscription,) = solo.feed._subscribers
            # Never read: the socket buffers fill, then the stream's queue,
            # which the feed then drops (as the model's commands publish).
            big = '"' + "x" * (64 << 10) + '"'
            for index in range(1, 1000):
                solo.feed.publish(10_000 + index, [("notes", big)])
                assert subscription.queued_bytes <= solo.feed.max_queue_bytes
                await asyncio.sleep(0)
                if solo.feed.streams == 0:
                    break
            assert solo.feed.streams == 0 and solo.feed.dropped_streams == 1
            writer.close()

    asyncio.run(scenario())


def test_an_open_stream_holds_no_request_slot(tmp_path: Path) -> None:
    async def scenario() -> None:
        limits = NodeLimits(max_inflight=2, max_inflight_per_connection=2)
        async with SoloNode(tmp_path, limits) as solo, aiohttp.ClientSession() as http:
            streams = [await http.get(f"{solo.base}/v1/events") for _ in range(4)]
            assert [s.status for s in streams] == [200] * 4
            assert solo.feed.streams == 4
            async with http.get(f"{solo.base}/v1/status") as status:
                assert status.status == 200
            for stream in streams:
                stream.close()

    asyncio.run(scenario())

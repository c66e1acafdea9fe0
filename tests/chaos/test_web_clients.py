"""The web clients of ``ramraft chaos`` (tools/chaos_web.py): what each
answer of a web tier makes of an operation's outcome, and the count of
forwarded writes read from /metrics. Against a stand-in web tier whose
answers the test picks; the real one runs in tests/chaos/test_workload.py
and under the nemesis in test_cluster_chaos.py."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from ramraft.tools.chaos_web import (
    ForwardCounter,
    WebClient,
    client_session,
    forwarded,
    parse_web_urls,
    run_web_clients,
)
from ramraft.tools.history import Record

Answer = Callable[[web.Request], web.StreamResponse | Awaitable[web.StreamResponse]]
Seen = list[tuple[str, str, bytes]]  # method, path and query, body


@asynccontextmanager
async def stand_in(answer: Answer, seen: Seen | None = None) -> AsyncIterator[str]:
    """A web tier answering every request with answer(request), noting
    each request in `seen`."""

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if seen is not None:
            seen.append((request.method, request.path_qs, body))
        reply = answer(request)
        return await reply if inspect.isawaitable(reply) else reply

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def record(kind: str, **fields: Any) -> Record:
    return Record(op=1, client=9, kind=kind, key="k/1", invoke=time.monotonic(), **fields)


async def run_one(answer: Answer, rec: Record, timeout: float = 2.0) -> Record:
    async with stand_in(answer) as url, client_session() as http:
        await WebClient(http, url, timeout).run(rec)
    return rec


def error(status: int, code: str) -> Answer:
    return lambda _: web.json_response({"error": code, "detail": "no"}, status=status)


@pytest.mark.parametrize(
    ("status", "code", "outcome"),
    [
        # Refused before the node proposed the write: certainly not applied.
        (400, "invalid_argument", "failed"),
        (429, "overloaded", "failed"),
        (403, "permission_denied", "failed"),
        # May come after the proposal: the write may have been applied.
        (503, "unavailable", "unknown"),
        (504, "deadline_exceeded", "unknown"),
        (409, "failed_precondition", "unknown"),
        (500, "internal", "unknown"),
    ],
)
def test_a_write_without_a_success_is_failed_only_when_refused_before_proposal(
    status: int, code: str, outcome: str
) -> None:
    rec = asyncio.run(run_one(error(status, code), record("put", value="c9.1")))
    assert rec.outcome == outcome and rec.result is None, rec
    assert rec.error is not None and f"HTTP {status} {code}" in rec.error
    assert rec.complete is not None and rec.complete >= rec.invoke


def test_a_read_without_an_answer_failed_and_a_404_is_absent() -> None:
    rec = asyncio.run(run_one(error(503, "unavailable"), record("get")))
    assert rec.outcome == "failed"
    rec = asyncio.run(run_one(error(404, "not_found"), record("get")))
    assert rec.outcome == "ok" and rec.result == {"found": False, "value": None}


def test_a_write_that_timed_out_is_unknown() -> None:
    """The client gives up a second after the node's own deadline: the
    write may still be applied."""

    async def slow(_: web.Request) -> web.StreamResponse:
        await asyncio.sleep(5)
        return web.json_response({})

    rec = asyncio.run(run_one(slow, record("cas", value="c9.2", expected=None), timeout=0.2))
    assert rec.outcome == "unknown" and "TimeoutError" in (rec.error or ""), rec


def test_no_connection_means_not_applied() -> None:
    async def refused() -> Record:
        async with stand_in(lambda _: web.json_response({})) as url:
            pass  # closed: nothing listens there now
        rec = record("delete")
        async with client_session() as http:
            await WebClient(http, url, 1.0).run(rec)
        return rec

    rec = asyncio.run(refused())
    assert rec.outcome == "failed" and "ClientConnectorError" in (rec.error or "")


def test_a_write_sent_before_its_node_died_is_unknown_though_the_retry_was_refused() -> None:
    """The node reads a PUT on a reused connection and dies before it
    answers (the listening socket closes, then the connection). aiohttp sends
    the PUT again on a new connection, which is refused: the error says
    "cannot connect", yet the node had the write, and may have applied it.
    (Under the nemesis a write recorded as failed this way was seen by the
    watchers: the first version judged by the error.) A write that was never
    sent, to a node that is down, certainly was not applied."""

    async def run() -> tuple[Record, Record]:
        requests = 0
        server: asyncio.Server | None = None

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal requests
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                requests += 1
                if requests == 1:
                    body = b'{"key": "k/1", "index": 1}'
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                    )
                    await writer.drain()
                    continue
                assert server is not None
                server.close()  # the node dies: nothing listens any more
                writer.transport.abort()
                return

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        first, second = record("put", value="c9.5"), record("put", value="c9.6")
        async with client_session() as http:
            client = WebClient(http, url, 2.0)
            await client.run(first)
            await client.run(second)
            assert requests == 2
            never_sent = record("put", value="c9.7")
            await client.run(never_sent)
        assert first.outcome == "ok"
        assert "ClientConnectorError" in (never_sent.error or ""), never_sent
        assert never_sent.outcome == "failed"
        return second, never_sent

    second, _ = asyncio.run(run())
    assert "ClientConnectorError" in (second.error or ""), second  # aiohttp's retry
    assert second.outcome == "unknown", second


def test_successful_answers_fill_in_results_index_and_revision() -> None:
    seen: Seen = []

    def answer(request: web.Request) -> web.StreamResponse:
        if request.method == "PUT":
            return web.json_response({"key": "k/1", "index": 7, "revision": 5})
        if request.method == "DELETE":
            return web.json_response({"key": "k/1", "deleted": True, "index": 8, "revision": 6})
        if request.method == "POST":
            return web.json_response(
                {
                    "swapped": False,
                    "found": True,
                    "current": "c1.1",
                    "encoding": "utf-8",
                    "index": 9,
                }
            )
        return web.json_response({"key": "k/1", "value": "c1.1", "encoding": "utf-8", "index": 9})

    async def run() -> list[Record]:
        recs = [
            record("put", value="c9.3"),
            record("delete"),
            record("cas", value="c9.4", expected="c9.3"),
            record("get"),
        ]
        async with stand_in(answer, seen) as url, client_session() as http:
            client = WebClient(http, url, 3.0, serializable=True)
            for rec in recs:
                await client.run(rec)
        return recs

    put, delete, cas, get = asyncio.run(run())
    assert (put.outcome, put.result, put.index, put.revision) == ("ok", {}, 7, 5)
    assert (delete.result, delete.revision) == ({"deleted": True}, 6)
    assert cas.result == {"swapped": False, "found": True, "current": "c1.1"}
    assert cas.revision is None  # no revision in the answer: none recorded
    assert get.result == {"found": True, "value": "c1.1"} and get.index == 9
    # What went over the wire: the key percent-encoded, the deadline, the
    # value as the raw body, the CAS as JSON, the read's consistency.
    assert seen[0] == ("PUT", "/v1/kv/k%2F1?timeout=3", b"c9.3")
    assert seen[1][:2] == ("DELETE", "/v1/kv/k%2F1?timeout=3")
    assert seen[2][:2] == ("POST", "/v1/cas/k%2F1?timeout=3")
    assert json.loads(seen[2][2]) == {"value": "c9.4", "expected": "c9.3"}
    assert seen[3][1] == "/v1/kv/k%2F1?timeout=3&consistency=serializable"


def test_the_forwarded_count_survives_a_restarted_node() -> None:
    page = "# HELP x\nramraft_forwarded_writes_total {}\nramraft_is_leader 0.0\n"
    readings = iter([3.0, 10.0, 2.0, 5.0])  # 10 -> 2: the node restarted

    async def run() -> ForwardCounter:
        metrics = stand_in(lambda _: web.Response(text=page.format(next(readings))))
        async with metrics as url, client_session() as http:
            counter = ForwardCounter(http, [url])
            for _ in range(4):
                await counter.read(url)
        return counter

    counter = asyncio.run(run())
    # 3 at the first reading, +7, +2 (after the restart, from 0), +3.
    assert counter.summary() == {"forwarded_writes": 15, "metric_readings": 4}
    assert forwarded("ramraft_is_leader 1.0\n") is None


def test_clients_take_the_urls_in_turn_with_ids_after_the_others() -> None:
    async def run() -> list[tuple[int, str]]:
        ran: list[tuple[int, str]] = []
        async with (
            stand_in(lambda _: web.Response(text="")) as a,
            stand_in(lambda _: web.Response(text="")) as b,
        ):

            async def operations(cid: int, op: Any) -> None:
                ran.append((cid, op.__self__.base))

            summary = await run_web_clients(
                [a, b], 3, 10, operations, timeout=1.0, tls=None, token=None
            )
        assert summary["clients"] == 3 and summary["urls"] == [a, b]
        return [(cid, "a" if base == a else "b") for cid, base in ran]

    assert sorted(asyncio.run(run())) == [(10, "a"), (11, "b"), (12, "a")]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "at least one"),
        ("ftp://h:1", "http:// or https://"),
        ("http://h:8080/v1", "no path"),
        ("h:8080", "http:// or https://"),
    ],
)
def test_bad_web_urls_are_refused(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_web_urls(text)
    assert parse_web_urls("https://a:8080/, http://b:80") == ["https://a:8080", "http://b:80"]

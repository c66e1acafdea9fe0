"""The clients' KV.Stream transport against fake nodes: the cases a stream
adds to the unary calls' (which tests/client/test_client.py and
test_async_client.py check on both transports). A stream that breaks with
writes in flight, a deadline on a healthy stream, many calls on one stream,
a node without the stream, requests the stream does not carry, and a stream
the node refuses."""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
import time
from collections import Counter
from collections.abc import Coroutine
from typing import Any

import grpc
import pytest

from ramraft.client import (
    AsyncClient,
    Client,
    DeadlineExceeded,
    Unauthenticated,
    Unavailable,
    _stream,
    _sync,
)
from ramraft.client._async import _Stream as _AsyncStream
from ramraft.client._sync import _END_OF_REQUESTS
from ramraft.client._sync import _Stream as _SyncStream
from ramraft.proto import kv_pb2
from tests.client.fake_server import Failure, FakeServer

T = 5.0


@pytest.fixture(autouse=True)
def _stream_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about the stream, whatever RAMRAFT_TRANSPORT the
    suite runs under (it runs under both)."""
    monkeypatch.setenv("RAMRAFT_TRANSPORT", "stream")


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout=30))


def test_key_value_calls_share_one_stream_admin_calls_stay_unary(server: FakeServer) -> None:
    with Client(server.address, timeout=T) as c:
        c.put("a", b"1")
        assert c.get("a") == b"1"
        assert c.cas("a", b"1", b"2").swapped
        assert c.range("").items == [("a", b"2")]
        assert c.delete("a")
        c.status()
    assert server.node.transports() == ["stream"] * 5 + ["unary"]
    assert server.node.streams_opened == 1
    # Each stream request carries its deadline, for the node to stop in time.
    assert all(0 < call.timeout_ms <= T * 1000 for call in server.node.calls[:5])


def test_a_broken_stream_retries_its_writes_once_with_their_sessions(server: FakeServer) -> None:
    """The stream breaks after five writes arrived, none answered: each is
    sent again, once, on a new stream, under its own session (client id,
    sequence), so that the node can apply it at most once."""
    server.node.break_stream_after = 5

    async def main() -> None:
        async with AsyncClient(server.address, client_id=11, timeout=T) as c:
            indexes = await asyncio.gather(*(c.put(f"k{i}", b"%d" % i) for i in range(5)))
            assert sorted(indexes) == [1, 2, 3, 4, 5]  # each applied once, on the new stream
            assert c._sessions.in_flight == 0

    run(main())
    node = server.node
    assert node.streams_opened == 2
    per_write = Counter((s[0], s[1]) for s in node.sessions() if s)
    assert per_write == {(11, n): 2 for n in range(1, 6)}
    # first_unacked never passes a write still waiting for its answer
    assert all(s[2] <= s[1] for s in node.sessions() if s)
    assert node.data == {f"k{i}": b"%d" % i for i in range(5)}


def test_a_broken_stream_retries_the_blocking_clients_writes(server: FakeServer) -> None:
    server.node.break_stream_after = 4
    with Client(server.address, client_id=12, timeout=T) as c:
        threads = [threading.Thread(target=c.put, args=(f"k{i}", b"v")) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert c._sessions.in_flight == 0
    per_write = Counter(s[1] for s in server.node.sessions() if s)
    assert per_write == {n: 2 for n in range(1, 5)}
    assert server.node.streams_opened == 2
    assert sorted(server.node.data) == [f"k{i}" for i in range(4)]


def test_a_deadline_on_a_healthy_stream_is_deadline_exceeded(server: FakeServer) -> None:
    """The node holds the request (until released): the call still ends,
    DEADLINE_EXCEEDED at its own deadline, is not retried, and the stream
    goes on serving later calls."""
    server.node.hold_next(1)

    async def main() -> None:
        async with AsyncClient(server.address, timeout=T) as c:
            with pytest.raises(DeadlineExceeded):
                await c.put("slow", b"v", timeout=0.3)
            server.node.release()  # only now: the client gave up on its own
            assert await c.put("fast", b"v") > 0

    run(main())
    assert server.node.methods() == ["Put", "Put"]  # the slow one was not retried
    assert 0 < server.node.calls[0].timeout_ms <= 300
    assert server.node.streams_opened == 1

    server.node.hold_next(1)
    with Client(server.address, timeout=T) as c:
        with pytest.raises(DeadlineExceeded):
            c.get("slow", timeout=0.3)
        server.node.release()
        assert c.get("fast") == b"v"
    assert server.node.streams_opened == 2  # one per client


def test_many_concurrent_calls_on_one_stream(server: FakeServer) -> None:
    n = 1000

    async def main() -> None:
        async with AsyncClient(server.address, client_id=5, timeout=20) as c:
            await asyncio.gather(*(c.put(f"k{i}", b"%d" % i) for i in range(n)))
            values = await asyncio.gather(*(c.get(f"k{i}") for i in range(n)))
            assert values == [b"%d" % i for i in range(n)]

    run(main())
    assert server.node.streams_opened == 1
    sessions = [s for s in server.node.sessions() if s]
    assert sorted(s[1] for s in sessions) == list(range(1, n + 1))
    assert all(first <= seq for _, seq, first in sessions)

    with Client(server.address, timeout=20) as c:
        threads = [
            threading.Thread(target=lambda i=i: [c.put(f"t{i}-{j}", b"v") for j in range(25)])
            for i in range(16)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert server.node.streams_opened == 2
    assert sum(1 for k in server.node.data if k.startswith("t")) == 16 * 25


def test_a_node_without_the_stream_gets_unary_calls(server: FakeServer) -> None:
    """An older node (UNIMPLEMENTED): the call is sent unary at once, in the
    same attempt, and later calls skip the stream."""
    server.node.serve_stream = False
    with Client(server.address, client_id=3, timeout=T) as c:
        c.put("a", b"1")
        assert server.address in c._unary_only
        asked = server.node.stream_attempts
        assert c.get("a") == b"1"
        c.put("b", b"2")
        assert server.node.stream_attempts == asked  # remembered: no new stream
    assert server.node.transports() == ["unary"] * 3
    assert server.node.sessions()[0] == (3, 1, 1)

    async def main() -> None:
        async with AsyncClient(server.address, timeout=T) as c:
            # Calls that start while the first stream is being refused go
            # unary too, once the refusal is known, without a stream each.
            await asyncio.gather(*(c.put(f"k{i}", b"v") for i in range(10)))
            assert server.address in c._unary_only
            asked = server.node.stream_attempts
            await c.put("later", b"v")
            assert server.node.stream_attempts == asked

    run(main())
    assert server.node.transports() == ["unary"] * 14


def test_requests_queued_together_leave_in_one_batch(server: FakeServer) -> None:
    """While the stream writes one message, the calls issued meanwhile
    queue; the next message carries all of them (each still answered, and
    retried, on its own). The node is held until all 200 calls were issued,
    so the first message holds one call and the rest leave together."""
    n = 200

    async def main() -> None:
        async with AsyncClient(server.address, client_id=21, timeout=T) as c:
            server.node.hold_next(1)
            first = asyncio.ensure_future(c.put("first", b"v"))
            await asyncio.to_thread(server.node.wait_for_calls, 1)
            rest = [asyncio.ensure_future(c.put(f"k{i}", b"v")) for i in range(n - 1)]
            await asyncio.sleep(0.2)
            server.node.release()
            await asyncio.gather(first, *rest)

    run(main())
    node = server.node
    assert node.batch_streams == node.streams_opened == 1
    assert sum(node.batch_sizes) == n and len(node.batch_sizes) < n // 4, node.batch_sizes
    assert sorted(s[1] for s in node.sessions() if s) == list(range(1, n + 1))


@pytest.mark.parametrize("client", ["sync", "async"])
def test_a_batch_takes_what_is_queued_within_its_limits(client: str) -> None:
    """What each client's writer sends next, from what is queued: every
    queued request in one StreamBatchRequest, cut at MAX_BATCH requests and
    at BATCH_BYTES; each request whole and in order."""
    small = [
        _stream.stream_request(i, "put", kv_pb2.PutRequest(key=f"k{i}", value=b"v"), 5.0)
        for i in range(1, _stream.MAX_BATCH + 11)
    ]
    large = [
        _stream.stream_request(i, "put", kv_pb2.PutRequest(key="k", value=b"x" * 20_000), 5.0)
        for i in range(1, 6)
    ]
    for requests, expected in (
        (small[:7], [7]),
        (small, [_stream.MAX_BATCH, 10]),
        (large, [3, 2]),  # 3 x 20 KB fit in BATCH_BYTES, 4 do not
    ):
        entries = [_stream.batch_entry(r) for r in requests]
        if client == "sync":
            stream: Any = _bare_sync_stream()
            for entry in [*entries, _END_OF_REQUESTS]:
                stream._outbox.put(entry)
            sent = list(stream._messages())
        else:
            stream = _AsyncStream.__new__(_AsyncStream)
            stream._batched, stream._outbox = True, collections.deque(entries)
            sent = []
            while stream._outbox:
                sent.append(stream._next_message())
        batches = [kv_pb2.StreamBatchRequest.FromString(m).requests for m in sent]
        assert [len(b) for b in batches] == expected
        assert [r.SerializeToString() for b in batches for r in b] == requests


def _bare_sync_stream() -> Any:
    """The blocking client's batched stream without a channel: what its
    writer (``_messages``) and ``_enqueue`` use."""
    stream: Any = _SyncStream.__new__(_SyncStream)
    stream._batched, stream._outbox = True, queue.SimpleQueue()
    stream._last_batch = 1
    stream._gathered = threading.Condition(threading.Lock())
    return stream


def test_the_blocking_clients_batch_waits_for_the_last_ones_callers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Threads come back one by one, so the blocking client's next batch
    waits (GATHER_SECONDS at most) for as many requests as the last one
    held, and leaves as soon as they are queued; a batch whose callers do
    not all come back leaves when the wait ends, and the one after it does
    not wait at all."""
    monkeypatch.setattr(_sync, "GATHER_SECONDS", 30.0)
    stream = _bare_sync_stream()
    messages = stream._messages()

    def entry(n: int) -> bytes:
        put = kv_pb2.PutRequest(key=f"k{n}", value=b"v")
        return _stream.batch_entry(_stream.stream_request(n, "put", put, 5.0))

    def sizes(message: bytes) -> int:
        return len(kv_pb2.StreamBatchRequest.FromString(message).requests)

    for n in range(1, 5):
        stream._enqueue(entry(n))
    assert sizes(next(messages)) == 4  # all queued: one batch
    # The next one: its first request alone waits for three more, which a
    # thread queues 0.2 s later; they leave together, long before 30 s.
    stream._enqueue(entry(5))
    later = threading.Timer(0.2, lambda: [stream._enqueue(entry(n)) for n in range(6, 9)])
    started = time.monotonic()
    later.start()
    assert sizes(next(messages)) == 4
    assert 0.15 < time.monotonic() - started < 10
    # Only one comes back: it leaves when the wait ends, alone; the next
    # lone request then leaves at once.
    monkeypatch.setattr(_sync, "GATHER_SECONDS", 0.3)
    stream._enqueue(entry(9))
    started = time.monotonic()
    assert sizes(next(messages)) == 1
    assert time.monotonic() - started >= 0.25
    # A wait now would be 30 s: "at once" is then far from it, however
    # loaded the machine (0.25 s against 0.3 s was not).
    monkeypatch.setattr(_sync, "GATHER_SECONDS", 30.0)
    stream._enqueue(entry(10))
    started = time.monotonic()
    assert sizes(next(messages)) == 1
    assert time.monotonic() - started < 10


def test_a_node_without_batches_gets_the_plain_stream(server: FakeServer) -> None:
    """A node of the release before KV.StreamBatch (UNIMPLEMENTED): the call
    goes over KV.Stream at once, in the same attempt, and so do later ones."""
    server.node.serve_batch = False
    with Client(server.address, client_id=4, timeout=T) as c:
        c.put("a", b"1")
        assert server.address in c._no_batch and server.address not in c._unary_only
        assert c.get("a") == b"1"

    async def main() -> None:
        async with AsyncClient(server.address, timeout=T) as c:
            await asyncio.gather(*(c.put(f"k{i}", b"v") for i in range(10)))
            assert server.address in c._no_batch

    run(main())
    node = server.node
    assert node.transports() == ["stream"] * 12
    assert node.batch_streams == 0 and node.streams_opened == 2
    assert node.stream_attempts == 4  # per client: the refused batch, then the stream


def test_unary_transport_by_option_or_environment(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Client(server.address, timeout=T, transport="unary") as c:
        c.put("a", b"1")
    monkeypatch.setenv("RAMRAFT_TRANSPORT", "unary")
    with Client(server.address, timeout=T) as c:
        assert c.transport == "unary"
        c.get("a")
    monkeypatch.setenv("RAMRAFT_TRANSPORT", "stream")
    with Client(server.address, timeout=T, transport="unary") as c:
        c.get("a")  # the option wins over the environment
    assert server.node.transports() == ["unary"] * 3
    assert server.node.stream_attempts == 0
    with pytest.raises(ValueError, match="transport"):
        Client(server.address, transport="carrier-pigeon")
    monkeypatch.setenv("RAMRAFT_TRANSPORT", "smoke")
    with pytest.raises(ValueError, match="RAMRAFT_TRANSPORT"):
        AsyncClient(server.address)


def test_large_requests_go_unary(server: FakeServer) -> None:
    """A request over 64 KiB is not put on the stream: one over the node's
    message limit would end the stream with every request on it."""
    with Client(server.address, timeout=T) as c:
        c.put("small", b"x" * 100)
        c.put("big", b"x" * (100 * 1024))
        assert c.get("big") == b"x" * (100 * 1024)
    assert server.node.transports() == ["stream", "unary", "stream"]


def test_a_refused_stream_fails_its_calls_with_the_refusal(server: FakeServer) -> None:
    """A stream the node refuses for the caller's credentials ends every call
    on it with that error, not retried, as the unary call would."""
    server.node.stream_refusal = Failure(grpc.StatusCode.UNAUTHENTICATED, "token unknown")
    # Not retried: a client that retried the refusal would go on until its
    # deadline T (dozens of attempts). Not exactly one attempt either: when
    # the client's first write races the node's refusal, grpc's asyncio
    # client replaces the stream's status with INTERNAL "Internal error from
    # Core" (about 1 stream in 15 here), which is retried like a broken
    # stream, and the next stream gets the refusal itself.
    with Client(server.address, timeout=T) as c, pytest.raises(Unauthenticated, match="token") as e:
        c.put("a", b"1")
    assert e.value.attempts <= 3

    async def main() -> None:
        async with AsyncClient(server.address, timeout=T) as c:
            with pytest.raises(Unauthenticated) as e:
                await c.get("a")
            assert e.value.attempts <= 3

    run(main())
    assert server.node.stream_attempts >= 2
    assert server.node.calls == []  # no request was served, over the stream or unary


def test_closing_the_client_ends_its_streams(server: FakeServer) -> None:
    async def main() -> None:
        c = AsyncClient(server.address, timeout=T)
        await c.put("a", b"1")
        stream = c._streams[server.address]
        await c.close()
        assert stream.ended is not None
        with pytest.raises(RuntimeError, match="closed"):
            await c.put("b", b"2")

    run(main())
    c = Client(server.address, timeout=T)
    c.put("a", b"1")
    c.close()
    with pytest.raises(RuntimeError, match="closed"):
        c.put("b", b"2")


def test_a_broken_stream_leaves_no_thread_behind() -> None:
    """Each stream to a node that is down breaks at once; the client opens
    a new one on each attempt. gRPC sends a stream's requests from a thread
    of its own, which must end with the stream, or a client retrying
    through an outage gains a thread per attempt, for good."""
    before = threading.active_count()
    with Client("127.0.0.1:1", timeout=1) as c, pytest.raises(Unavailable):
        c.put("a", b"1")
    deadline = time.monotonic() + 5
    while threading.active_count() > before + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before + 1, [t.name for t in threading.enumerate()]

"""The asyncio client against fake nodes (the same rules as the blocking one)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

import grpc
import pytest

from ramraft.client import (
    SERIALIZABLE,
    AsyncClient,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    Unavailable,
    WatchEvent,
)
from tests.client.fake_server import Failure, FakeServer, dead_address


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout=20))


def test_key_value_and_admin_round_trip(server: FakeServer) -> None:
    async def main() -> None:
        async with AsyncClient([server.address], timeout=3) as c:
            assert await c.get("k") is None
            assert await c.put("k", b"v") == 1
            assert await c.get("k", consistency=SERIALIZABLE) == b"v"
            assert (await c.cas("k", b"v", b"w")).swapped
            assert not (await c.cas("k", None, b"x")).swapped
            assert (await c.range("")).items == [("k", b"w")]
            assert [kv async for kv in c.scan("", page_size=1)] == [("k", b"w")]
            assert await c.delete("k") is True
            assert (await c.status()).node.id == "n1"
            assert [m.id for m in await c.members()] == ["n1"]
            assert await c.transfer_leadership() == "n2"
            assert len(await c.add_member("n9", "127.0.0.1:7009")) == 2
            with pytest.raises(NotFound):
                await c.remove_member("zz")
            assert await c.snapshot() == 4

    run(main())


def test_retries_reuse_the_session_and_rotate(servers) -> None:
    bad, good = servers(), servers()
    bad.node.always = Failure(grpc.StatusCode.UNAVAILABLE, "no leader")
    good.node.fail_next(2)

    async def main() -> None:
        async with AsyncClient([dead_address(), bad.address, good.address], client_id=9) as c:
            assert await c.put("k", b"v") == 1
            await c.delete("k")

    run(main())
    write_sessions = {s for s in bad.node.sessions() + good.node.sessions() if s and s[1] == 1}
    assert write_sessions == {(9, 1, 1)}
    assert good.node.sessions()[-1] == (9, 2, 2)


def test_many_concurrent_writes_number_their_sessions(server: FakeServer) -> None:
    async def main() -> None:
        async with AsyncClient(server.address, client_id=5) as c:
            await asyncio.gather(*(c.put(f"k{i}", b"v") for i in range(50)))

    run(main())
    sessions = [s for s in server.node.sessions() if s]
    assert sorted(s[1] for s in sessions) == list(range(1, 51))
    # first_unacked never passes a write that was still waiting for its reply
    assert all(first <= seq for _, seq, first in sessions)


def test_leader_hint(servers) -> None:
    follower, leader = servers(), servers()
    follower.node.fail_next(1, leader=leader.address)

    async def main() -> None:
        async with AsyncClient(follower.address, timeout=3) as c:
            await c.put("k", b"v")

    run(main())
    assert leader.node.methods() == ["Put"]


def test_deadline_is_honoured(servers) -> None:
    down = servers()
    down.node.always = Failure(grpc.StatusCode.UNAVAILABLE)
    hung = servers()
    hung.node.hold_next(1)  # answers only once the call below has ended

    async def main() -> None:
        async with AsyncClient(down.address, timeout=0.6) as c:
            started = time.monotonic()
            with pytest.raises(Unavailable, match=r"within 0\.6s") as refused:
                await c.put("k", b"v")
            # retried until the deadline, not less (slowness cannot fail this)
            assert time.monotonic() - started >= 0.59
            assert refused.value.attempts == len(down.node.calls) >= 2
        async with AsyncClient(hung.address, timeout=0.4) as c:
            with pytest.raises(DeadlineExceeded, match="Get: DEADLINE_EXCEEDED") as late:
                await c.get("k")
            hung.node.release()
            assert late.value.attempts == 1 and len(hung.node.calls) == 1  # no retry after it
        # every attempt had only what was left of the call's one deadline
        left = [call.deadline for call in down.node.calls]
        assert None not in left and left == sorted(left, reverse=True), left
        assert hung.node.calls[0].deadline is not None and hung.node.calls[0].deadline < 0.41

    run(main())


def test_errors_are_mapped_and_final(server: FakeServer) -> None:
    server.node.fail_next(1, grpc.StatusCode.INVALID_ARGUMENT, details="value exceeds 1 MiB")

    async def main() -> None:
        async with AsyncClient(server.address) as c:
            with pytest.raises(InvalidArgument, match="value exceeds 1 MiB"):
                await c.put("k", b"v")

    run(main())
    assert len(server.node.calls) == 1


def test_cancelling_a_write_releases_its_session(server: FakeServer) -> None:
    server.node.hold_next(1)

    async def main() -> None:
        async with AsyncClient(server.address, timeout=5) as c:
            task = asyncio.create_task(c.put("k", b"v"))
            await asyncio.to_thread(server.node.wait_for_calls, 1)  # the write is at the node
            assert c._sessions.in_flight == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert c._sessions.in_flight == 0

    run(main())


def test_a_client_used_on_a_second_event_loop_says_so(server: FakeServer) -> None:
    """A client's channels belong to the loop it first ran on; a second
    asyncio.run with the same client got "Event loop is closed" from grpc
    (and warnings of coroutines never awaited)."""
    for transport in ("stream", "unary"):
        c = AsyncClient(server.address, timeout=3, transport=transport)  # built outside a loop
        run(_put(c))
        with pytest.raises(RuntimeError, match="one client per event loop"):
            asyncio.run(c.get("k"))
        with pytest.raises(RuntimeError, match="one client per event loop"):
            asyncio.run(c.status())


async def _put(c: AsyncClient) -> None:
    assert await c.put("k", b"v") >= 1


def test_closing_the_client_ends_its_watches(server: FakeServer) -> None:
    """A watch has a channel of its own: closing the client closes the
    watches it made (one dropped without aclose() kept its channel open),
    and an iteration waiting for events ends; a closed client makes none."""
    server.node.changes = [("PUT", "w", b"1")]

    async def main() -> None:
        c = AsyncClient([server.address], timeout=3, transport="unary")
        dropped = c.watch("w", start_revision=1)
        assert await anext(dropped) == WatchEvent("PUT", "w", b"1", 1)
        kept = c.watch("w", start_revision=1)
        assert await anext(kept) == WatchEvent("PUT", "w", b"1", 1)
        waiting = asyncio.ensure_future(anext(kept))  # nothing more comes
        await asyncio.sleep(0.2)
        await c.close()
        assert dropped.is_closed() and kept.is_closed()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(waiting, 5)
        with pytest.raises(RuntimeError, match="closed"):
            c.watch("w")

    run(main())

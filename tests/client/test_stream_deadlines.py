"""The deadlines of a stream's calls (client/_async.py _Deadlines): one
timer for the calls queued in deadline order, a timer of its own for a
call whose deadline comes before the last one queued. Each unanswered call
ends DEADLINE_EXCEEDED at its own deadline, never before it; an answered
one is left alone; the queue does not keep answered calls."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from ramraft.client._async import _Deadlines
from ramraft.client._stream import StreamStatus


def test_each_call_ends_at_its_own_deadline() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        deadlines = _Deadlines(loop)
        ended: dict[str, float] = {}
        calls: dict[str, tuple[float, asyncio.Future[Any]]] = {}

        def add(name: str, timeout: float) -> asyncio.TimerHandle | None:
            answer: asyncio.Future[Any] = loop.create_future()
            answer.add_done_callback(lambda _: ended.setdefault(name, loop.time()))
            calls[name] = (loop.time() + timeout, answer)
            return deadlines.add(timeout, answer)

        assert add("a", 0.05) is None
        assert add("b", 0.2) is None
        assert add("c", 0.02) is not None, "before the last queued: a timer of its own"
        assert add("d", 0.3) is None
        calls["b"][1].set_result("answered")
        await asyncio.wait_for(asyncio.wait([f for _, f in calls.values()]), 5)
        assert calls["b"][1].result() == "answered"
        for name in ("a", "c", "d"):
            deadline, answer = calls[name]
            error = answer.exception()
            assert (
                isinstance(error, StreamStatus)
                and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            )
            assert ended[name] >= deadline - 1e-6, f"{name} ended before its deadline"
        assert ended["c"] < ended["a"] < ended["d"]
        assert deadlines._timer is None, "no timer left once nothing waits"

    asyncio.run(run())


def test_answered_calls_leave_the_queue() -> None:
    """Calls answered in the order they began (the common case) do not pile
    up in the queue until their deadlines."""

    async def run() -> None:
        loop = asyncio.get_running_loop()
        deadlines = _Deadlines(loop)
        for _ in range(1000):
            answer: asyncio.Future[Any] = loop.create_future()
            assert deadlines.add(30.0, answer) is None
            answer.set_result(None)
        assert len(deadlines._queue) == 1
        deadlines.close()
        assert deadlines._timer is None and not deadlines._queue

    asyncio.run(run())


def test_a_short_deadline_after_a_long_one_was_answered() -> None:
    """The timer set for a long deadline whose call was answered does not
    hold back a shorter one queued after it (found by hand: a 0.3 s call
    after a 1 s one ended at 1 s)."""

    async def run() -> None:
        loop = asyncio.get_running_loop()
        deadlines = _Deadlines(loop)
        answered: asyncio.Future[Any] = loop.create_future()
        assert deadlines.add(30.0, answered) is None
        answered.set_result(None)
        short: asyncio.Future[Any] = loop.create_future()
        assert deadlines.add(0.05, short) is None
        # Far beyond 0.05 s, far short of 30 s: ended by its own deadline.
        with pytest.raises(StreamStatus):
            await asyncio.wait_for(short, 10)
        deadlines.close()

    asyncio.run(run())


@pytest.mark.parametrize("timeout", [0.0, -1.0])
def test_a_deadline_already_past_ends_the_call_at_once(timeout: float) -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Any] = loop.create_future()
        _Deadlines(loop).add(timeout, answer)
        with pytest.raises(StreamStatus):
            await asyncio.wait_for(answer, 5)

    asyncio.run(run())

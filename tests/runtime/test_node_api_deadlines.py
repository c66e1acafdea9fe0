"""NodeAPI's deadlines on the runtime's futures (node_api.py ``_within``).

A write or a linearizable read waits for a future the runtime settles
(applied, confirmed, refused). At the caller's deadline that future fails
with TimeoutError, so the runtime, finding it done, drops a command it has
not proposed yet; a caller that gives up is cancelled, not timed out; and a
future settled in time is never touched by its deadline afterwards.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ramraft.server.runtime.node_api import NodeAPI
from tests.runtime.test_forward_refusal import LIMITS, decode, encode


class Silent:
    """A leader's runtime that takes every write and read and settles none
    unless the test does."""

    failed = None
    stopping = False

    def __init__(self) -> None:
        self.offered: list[asyncio.Future[Any]] = []

    def _future(self) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.offered.append(fut)
        return fut

    def offer(self, command: bytes, *, term: int = 0) -> asyncio.Future[tuple[int, object]]:
        return self._future()

    def ask_read_index(self) -> asyncio.Future[int]:
        return self._future()


def run(body: Any) -> list[dict[str, Any]]:
    """Run ``body(api, runtime)``; returns what the loop's exception
    handler was given (callbacks that raised)."""
    errors: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: errors.append(ctx))
        runtime = Silent()
        await body(NodeAPI(runtime, encode, decode, LIMITS), runtime)  # type: ignore[arg-type]

    asyncio.run(main())
    return errors


def test_a_write_past_its_deadline_times_out_and_its_proposal_is_settled() -> None:
    async def body(api: NodeAPI, runtime: Silent) -> None:
        with pytest.raises(TimeoutError, match="deadline"):
            await api.write(b"cmd", timeout=0.05)
        (proposal,) = runtime.offered
        # Settled, so the loop drops the command if it has not proposed it.
        assert isinstance(proposal.exception(), TimeoutError)

    assert run(body) == []


def test_a_linearizable_read_past_its_deadline_times_out_and_is_settled() -> None:
    async def body(api: NodeAPI, runtime: Silent) -> None:
        with pytest.raises(TimeoutError, match="deadline"):
            await api.linearizable(timeout=0.05)
        (read,) = runtime.offered
        assert isinstance(read.exception(), TimeoutError)

    assert run(body) == []


def test_a_caller_that_gives_up_is_cancelled_not_timed_out() -> None:
    async def body(api: NodeAPI, runtime: Silent) -> None:
        write = asyncio.create_task(api.write(b"cmd", timeout=0.05))
        while not runtime.offered:
            await asyncio.sleep(0)
        write.cancel()
        with pytest.raises(asyncio.CancelledError):
            await write
        assert runtime.offered[0].cancelled()
        await asyncio.sleep(0.1)  # past the deadline: nothing fires on the cancelled wait

    assert run(body) == []


def test_an_answer_in_time_is_returned_and_its_deadline_never_fires() -> None:
    async def body(api: NodeAPI, runtime: Silent) -> None:
        write = asyncio.create_task(api.write(b"cmd", timeout=0.05))
        read = asyncio.create_task(api.linearizable(timeout=0.05))
        while len(runtime.offered) < 2:
            await asyncio.sleep(0)
        proposal, confirmed = runtime.offered
        proposal.set_result((7, b"done"))
        confirmed.set_result(7)
        assert await write == (7, b"done")
        assert await read == 7
        await asyncio.sleep(0.1)  # past both deadlines
        assert proposal.result() == (7, b"done") and confirmed.result() == 7

    assert run(body) == []

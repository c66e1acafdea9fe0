"""The linearizable reads of one KV.StreamBatch message share one ReadIndex
round (server/rpc/streams.py RoundShare), asked for once the message is
read: the other requests of the batch are served at once, the reads only
when the round is done (and each on its own, as unshared reads, should it
fail). A servicer stand-in and a scripted round, in one event loop; the
node's side (tests/server/test_stream.py) shows that such a read is never
answered from a leader that cannot confirm its leadership."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from ramraft.proto import kv_pb2
from ramraft.server.request_errors import Unavailable
from ramraft.server.rpc.services import _confirmed
from ramraft.server.rpc.streams import ROUND_CONFIRMED, StreamServer

OPS = {"put": "Put", "get": "Get"}
LINEARIZABLE, SERIALIZABLE = kv_pb2.LINEARIZABLE, kv_pb2.SERIALIZABLE


class StreamContext:
    """The part of a ServicerContext StreamServer uses."""

    def __init__(self) -> None:
        self.written: list[kv_pb2.StreamBatchResponse] = []

    async def write(self, message: kv_pb2.StreamBatchResponse) -> None:
        self.written.append(message)

    def time_remaining(self) -> float | None:
        return None


class _Round:
    """A ReadIndex round the test ends: ``done`` set, with ``outcome``."""

    def __init__(self, outcome: bool) -> None:
        self.outcome = outcome
        self.done = asyncio.Event()
        self.asked: list[list[int]] = []  # the request ids of each round

    def wants(self, request: kv_pb2.StreamRequest, op: str | None) -> bool:
        return op == "get" and request.get.consistency == LINEARIZABLE

    def ask(self, requests: list[tuple[kv_pb2.StreamRequest, float]], stream: Any) -> Any:
        self.asked.append([request.id for request, _ in requests])
        self.out = asyncio.ensure_future(self._outcome())
        return self.out

    async def _outcome(self) -> bool:
        await self.done.wait()
        return self.outcome


def _batch() -> kv_pb2.StreamBatchRequest:
    def get(n: int, consistency: int) -> kv_pb2.StreamRequest:
        return kv_pb2.StreamRequest(id=n, get=kv_pb2.GetRequest(key="k", consistency=consistency))

    return kv_pb2.StreamBatchRequest(
        requests=[
            get(1, LINEARIZABLE),
            kv_pb2.StreamRequest(id=2, put=kv_pb2.PutRequest(key="k", value=b"v")),
            get(3, LINEARIZABLE),
            get(4, SERIALIZABLE),
            get(5, LINEARIZABLE),
        ]
    )


def _server(
    served: list[tuple[int, bool]], stream: StreamContext, rounds: _Round | None
) -> StreamServer:
    """A StreamServer whose requests are served by noting (id,
    ROUND_CONFIRMED) in ``served``."""

    async def serve_one(
        request: kv_pb2.StreamRequest, op: str, stream: Any, arrived: float
    ) -> kv_pb2.StreamResponse:
        served.append((request.id, ROUND_CONFIRMED.get()))
        return kv_pb2.StreamResponse(id=request.id)

    return StreamServer(serve_one, OPS, stream, None, True, rounds)  # type: ignore[arg-type]


async def _one_batch() -> AsyncIterator[kv_pb2.StreamBatchRequest]:
    yield _batch()


async def _serve(outcome: bool) -> tuple[_Round, list[tuple[int, bool]], list[tuple[int, bool]]]:
    """Serve one batch; returns the round, what was served before the round
    ended and what after, each as (request id, ROUND_CONFIRMED)."""
    served: list[tuple[int, bool]] = []
    stream = StreamContext()
    round_ = _Round(outcome)
    running = asyncio.create_task(_server(served, stream, round_).run(_one_batch()))
    for _ in range(20):  # every turn the batch could take without the round
        await asyncio.sleep(0)
    before = list(served)
    round_.done.set()
    await asyncio.wait_for(running, 5)
    answered = sorted(r.id for message in stream.written for r in message.responses)
    assert answered == [1, 2, 3, 4, 5]
    return round_, before, served[len(before) :]


def test_the_reads_of_a_batch_wait_for_one_round_and_read_confirmed() -> None:
    round_, before, after = asyncio.run(_serve(True))
    assert round_.asked == [[1, 3, 5]]  # one round, for the linearizable reads alone
    assert sorted(before) == [(2, False), (4, False)]  # the others did not wait
    assert sorted(after) == [(1, True), (3, True), (5, True)]


def test_a_failed_round_leaves_each_read_to_its_own() -> None:
    round_, before, after = asyncio.run(_serve(False))
    assert round_.asked == [[1, 3, 5]]
    assert sorted(before) == [(2, False), (4, False)]
    # Unconfirmed: each read asks for its own round (and answers its own error).
    assert sorted(after) == [(1, False), (3, False), (5, False)]


def test_without_a_round_share_every_read_is_served_at_once() -> None:
    served: list[tuple[int, bool]] = []

    async def run() -> None:
        await asyncio.wait_for(_server(served, StreamContext(), None).run(_one_batch()), 5)

    asyncio.run(run())
    assert sorted(served) == [(n, False) for n in range(1, 6)]


def test_a_stream_that_ends_gives_up_its_round() -> None:
    """The stream's call is cancelled (the client went away) while its
    round is out: the round's waiter is cancelled too, nothing is served."""
    served: list[tuple[int, bool]] = []
    round_ = _Round(True)

    async def run() -> None:
        running = asyncio.create_task(_server(served, StreamContext(), round_).run(_one_batch()))
        for _ in range(20):
            await asyncio.sleep(0)
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await asyncio.sleep(0)
        assert round_.out.cancelled()

    asyncio.run(run())
    assert sorted(served) == [(2, False), (4, False)]  # the reads never ran


def test_a_rounds_outcome_is_its_read_index_in_time() -> None:
    """services.py _confirmed: True once the read index comes (and is
    applied), False when it fails or the earliest deadline passes first;
    a round that timed out, or whose stream ended, gives up its index,
    which the runtime then skips (runtime/loop.py: a done future is never
    set again)."""

    async def run() -> None:
        loop = asyncio.get_running_loop()
        came: asyncio.Future[int] = loop.create_future()
        confirmed = asyncio.ensure_future(_confirmed(came, 5.0))
        came.set_result(7)
        assert await asyncio.wait_for(confirmed, 1) is True

        failed: asyncio.Future[int] = loop.create_future()
        refused = asyncio.ensure_future(_confirmed(failed, 5.0))
        failed.set_exception(Unavailable("leadership changed while confirming the read"))
        assert await asyncio.wait_for(refused, 1) is False

        late: asyncio.Future[int] = loop.create_future()
        timed_out = asyncio.ensure_future(_confirmed(late, 0.01))
        assert await asyncio.wait_for(timed_out, 1) is False
        assert late.cancelled(), "given up: the runtime skips it when the round comes"

        given_up: asyncio.Future[int] = loop.create_future()
        abandoned = asyncio.ensure_future(_confirmed(given_up, 5.0))
        await asyncio.sleep(0)  # waiting for the index
        abandoned.cancel()
        await asyncio.sleep(0)
        assert given_up.cancelled(), "the runtime skips a cancelled read index"

    asyncio.run(run())

"""A ticker: a leader job appends a tick every 100 ms, recording the term
and node it ran on, and how many ticks it saw before its own (to check
that a new leader's job starts only once it has applied everything
committed before its term). A second job sends the same kind of record
(an echo) from a task it does not wait for, so that cancelling the job does
not cancel the command: only the rule that a job's commands are proposed by
its leader in its term keeps a deposed leader's echo from landing after its
successor's. tests/server/test_jobs*.py use it."""

from __future__ import annotations

import asyncio

from aiohttp import web

from ramraft import Application, JobContext, ReplicatedModel, background, command
from ramraft.server.hosting import CONTEXT

TICK_EVERY = 0.1


class Ticker(ReplicatedModel):
    def __init__(self) -> None:
        self.ticks: list[list[object]] = []  # [term, node, seen]
        self.echoes: list[list[object]] = []  # [term, node]

    @command
    def tick(self, term: int, node: str, seen: int) -> int:
        self.ticks.append([term, node, seen])
        return len(self.ticks)

    @command
    def echo(self, term: int, node: str) -> None:
        self.echoes.append([term, node])


@background(every=TICK_EVERY)
async def ticking(ticker: Ticker, job: JobContext) -> None:
    await ticker.tick(job.term, job.node_id, len(ticker.ticks))


_DETACHED: set[asyncio.Task[None]] = set()


@background(every=TICK_EVERY)
async def echoing(ticker: Ticker, job: JobContext) -> None:
    async def send() -> None:
        # Fails once this node no longer leads in job.term; that is the point.
        await ticker.echo(job.term, job.node_id)

    task = asyncio.get_running_loop().create_task(send())
    _DETACHED.add(task)
    task.add_done_callback(_DETACHED.discard)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved


def routes(ticker: Ticker) -> list[web.RouteDef]:
    async def ticks(request: web.Request) -> web.Response:
        await request.app[CONTEXT].linearizable()
        return web.json_response({"ticks": ticker.ticks, "echoes": ticker.echoes})

    return [web.get("/ticks", ticks)]


def app() -> Application:
    ticker = Ticker()
    return Application(ticker, routes=routes(ticker), title="ticker", jobs=[ticking, echoing])

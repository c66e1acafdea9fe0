"""A ticker: a leader job appends a tick every 100 ms, recording the term
and node it ran on, and how many ticks it saw before its own (to check
that a new leader's job starts only once it has applied everything
committed before its term). tests/server/test_jobs*.py use it."""

from __future__ import annotations

from aiohttp import web

from ramraft import Application, JobContext, ReplicatedModel, background, command
from ramraft.server.hosting import CONTEXT

TICK_EVERY = 0.1


class Ticker(ReplicatedModel):
    def __init__(self) -> None:
        self.ticks: list[list[object]] = []  # [term, node, seen]

    @command
    def tick(self, term: int, node: str, seen: int) -> int:
        self.ticks.append([term, node, seen])
        return len(self.ticks)


@background(every=TICK_EVERY)
async def ticking(ticker: Ticker, job: JobContext) -> None:
    await ticker.tick(job.term, job.node_id, len(ticker.ticks))


def routes(ticker: Ticker) -> list[web.RouteDef]:
    async def ticks(request: web.Request) -> web.Response:
        await request.app[CONTEXT].linearizable()
        return web.json_response({"ticks": ticker.ticks})

    return [web.get("/ticks", ticks)]


def app() -> Application:
    ticker = Ticker()
    return Application(ticker, routes=routes(ticker), title="ticker", jobs=[ticking])

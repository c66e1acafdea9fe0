"""A model whose command reads the environment (the bug a state check is
for): a node started with another FLAVOUR holds other state than its peers."""

from __future__ import annotations

import os

from aiohttp import web

from ramraft import Application, ReplicatedModel, command


class Tastes(ReplicatedModel):
    def __init__(self) -> None:
        self.tastes: list[str] = []

    @command
    def taste(self) -> int:
        self.tastes.append(os.environ.get("FLAVOUR", "plain"))
        return len(self.tastes)


def routes(model: Tastes) -> list[web.RouteDef]:
    async def taste(request: web.Request) -> web.Response:
        return web.json_response({"count": await model.taste()})

    return [web.post("/taste", taste)]


def app() -> Application:
    model = Tastes()
    return Application(model, routes=routes(model), title="tastes")

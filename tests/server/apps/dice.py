"""A model whose command is NOT deterministic (it rolls a die inside the
command): every node applies a different value, which only a state check
can notice."""

from __future__ import annotations

import random

from aiohttp import web

from ramraft import Application, ReplicatedModel, command


class Dice(ReplicatedModel):
    def __init__(self) -> None:
        self.rolls: list[float] = []

    @command
    def roll(self) -> int:
        self.rolls.append(random.random())  # the bug a state check is for
        return len(self.rolls)


def routes(dice: Dice) -> list[web.RouteDef]:
    async def roll(request: web.Request) -> web.Response:
        return web.json_response({"count": await dice.roll()})

    return [web.post("/roll", roll)]


def app() -> Application:
    dice = Dice()
    return Application(dice, routes=routes(dice), title="dice")

"""Version 2 of the notes board: notes become {"text", "author"} mappings
(``upgrade`` converts the old ones at the switch), and ``add_by`` is new."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ramraft import Application, ReplicatedModel, command


class Board(ReplicatedModel):
    app_version = 2

    def __init__(self) -> None:
        self.notes: list[Any] = []

    @command
    def add(self, text: str) -> int:
        # An entry written before the switch keeps its version-1 meaning,
        # also when it is replayed by version-2 code after a restart.
        if self.active_app_version < 2:
            self.notes.append(text)
        else:
            self.notes.append({"text": text, "author": ""})
        return len(self.notes)

    @command(since=2)
    def add_by(self, text: str, author: str) -> int:
        self.notes.append({"text": text, "author": author})
        return len(self.notes)

    def upgrade(self, from_version: int) -> None:
        if from_version == 1:
            self.notes = [{"text": n, "author": ""} for n in self.notes]


def routes(board: Board) -> list[web.RouteDef]:
    async def add(request: web.Request) -> web.Response:
        return web.json_response({"count": await board.add(await request.text())})

    async def add_by(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"count": await board.add_by(body["text"], body["author"])})

    async def notes(request: web.Request) -> web.Response:
        return web.json_response({"notes": board.notes, "active": board.active_app_version})

    return [web.post("/add", add), web.post("/add_by", add_by), web.get("/notes", notes)]


def app() -> Application:
    board = Board()
    return Application(board, routes=routes(board), title="board v2")

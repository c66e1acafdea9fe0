"""Version 1 of a notes board: notes are strings."""

from __future__ import annotations

from aiohttp import web

from ramraft import Application, ReplicatedModel, command


class Board(ReplicatedModel):
    def __init__(self) -> None:
        self.notes: list[object] = []

    @command
    def add(self, text: str) -> int:
        self.notes.append(text)
        return len(self.notes)


def routes(board: Board) -> list[web.RouteDef]:
    async def add(request: web.Request) -> web.Response:
        return web.json_response({"count": await board.add(await request.text())})

    async def notes(request: web.Request) -> web.Response:
        return web.json_response({"notes": board.notes, "active": board.active_app_version})

    return [web.post("/add", add), web.get("/notes", notes)]


def app() -> Application:
    board = Board()
    return Application(board, routes=routes(board), title="board v1")

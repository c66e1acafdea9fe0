"""A model that keeps references to blobs and says so (``blob_refs``), for
the blob collection tests: ``POST /app/keep/{sha256}`` refers to a blob,
``POST /app/drop/{sha256}`` stops referring to it."""

from __future__ import annotations

from aiohttp import web

from ramraft import Application, ReplicatedModel, command


class Album(ReplicatedModel):
    def __init__(self) -> None:
        self.kept: list[str] = []

    @command
    def keep(self, sha256: str) -> int:
        if sha256 not in self.kept:
            self.kept.append(sha256)
        return len(self.kept)

    @command
    def drop(self, sha256: str) -> int:
        if sha256 in self.kept:
            self.kept.remove(sha256)
        return len(self.kept)

    def blob_refs(self) -> list[str]:
        return list(self.kept)


def routes(album: Album) -> list[web.RouteDef]:
    async def keep(request: web.Request) -> web.Response:
        return web.json_response({"count": await album.keep(request.match_info["sha256"])})

    async def drop(request: web.Request) -> web.Response:
        return web.json_response({"count": await album.drop(request.match_info["sha256"])})

    return [web.post("/keep/{sha256}", keep), web.post("/drop/{sha256}", drop)]


def app() -> Application:
    album = Album()
    return Application(album, routes=routes(album), title="album")

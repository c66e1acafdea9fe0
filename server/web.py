"""The web tier: an HTTP server on the node's own event loop (aiohttp).

So far: ``/healthz`` (the process is alive) and ``/readyz`` (knows a leader
and has applied what it knows to be committed), matching the gRPC health
service.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from server.config import parse_address

if TYPE_CHECKING:
    from server.node import Node


class WebTier:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.app = web.Application()
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/readyz", self.readyz)
        self.runner: web.AppRunner | None = None

    async def start(self, address: str) -> None:
        host, port = parse_address(address, "--http")
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, host, port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def healthz(self, request: web.Request) -> web.Response:
        runtime = self.node.runtime
        if runtime is not None and runtime.failed is not None:
            return web.json_response({"alive": False, "error": str(runtime.failed)}, status=503)
        return web.json_response({"alive": True})

    async def readyz(self, request: web.Request) -> web.Response:
        ready = self.node.ready()
        return web.json_response({"ready": ready}, status=200 if ready else 503)

"""A one-node cluster in this process, serving HTTP, for tests that send
the web tier raw or random requests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from ramraft import Application
from ramraft.server.config import NodeConfig
from ramraft.server.node import ListenError, Node
from ramraft.tools.bench import free_ports

T = TypeVar("T")


async def start_solo(root: Path, app: Application | None = None) -> Node:
    """A one-node cluster serving gRPC and HTTP on this event loop, its
    leader elected."""
    # HTTP on port 0 (the node reports the port it got); the gRPC port is
    # this node's --peers entry and must be known: a fresh pick when the one
    # picked was taken meanwhile.
    for attempt in range(5):
        (grpc_port,) = free_ports(1)
        config = NodeConfig(
            node_id="solo",
            peers={"solo": f"127.0.0.1:{grpc_port}"},
            data_dir=str(root),
            http="127.0.0.1:0",
            tick_ms=10,
            fsync=False,
        )
        node = Node(config, app=app)
        try:
            await node.start()
        except ListenError as e:
            if not e.in_use or attempt == 4:
                raise
            continue
        assert node.runtime is not None
        await node.runtime.wait_for_leader(10)
        return node
    raise AssertionError("unreachable")


class InProcessNode:
    """A one-node cluster on its own event loop in a thread."""

    def __init__(self, root: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.node = self.call(start_solo(root))
        self.http = self.node.listening()["http"]

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.call(self.node.stop(transfer=False, grace=1))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def __enter__(self) -> InProcessNode:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

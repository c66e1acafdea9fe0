"""A put that runs out of time after its catalog entry may have been
proposed keeps its bytes: once the entry is applied on the node, the file is
stored (and offered to the peers), so the catalog never names a blob that no
node holds because a client gave up. A put refused before anything was
proposed keeps nothing."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ramraft.server.blobs.manager import NodeBlobs
from ramraft.server.blobs.store import BlobStore
from ramraft.server.machines.blobs import BlobCatalog, encode_put_args
from ramraft.server.request_errors import Unavailable

DATA = b"bytes a client gave up on"
DIGEST = hashlib.sha256(DATA).hexdigest()


class Runtime:
    """What NodeBlobs needs of a one-voter node, with the log applied by hand."""

    def __init__(self) -> None:
        self.id = "n1"
        self.machine = SimpleNamespace(applied_index=5)
        self.core = SimpleNamespace(conf=SimpleNamespace(voters={"n1"}, members={"n1"}))
        self.applied = asyncio.Event()

    def cluster_state(self) -> Any:
        return SimpleNamespace(kv_version=2)

    async def wait_applied(self, index: int, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while self.machine.applied_index < index:
                self.applied.clear()
                await self.applied.wait()

    def apply(self) -> None:
        self.machine.applied_index += 1
        self.applied.set()


class Api:
    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    async def write(self, command: bytes, timeout: float, *, retry_unsafe: bool) -> Any:
        self.calls += 1
        raise self.error


def _node(tmp_path: Path, error: Exception) -> tuple[NodeBlobs, Runtime, BlobCatalog]:
    runtime = Runtime()
    store = BlobStore(tmp_path, max_blob_bytes=1 << 20, reserve_bytes=0)
    store.open()
    catalog = BlobCatalog()
    node = NodeBlobs(runtime, Api(error), store, catalog)  # type: ignore[arg-type]
    return node, runtime, catalog


def test_the_bytes_of_a_put_that_timed_out_are_stored_once_its_entry_applies(
    tmp_path: Path,
) -> None:
    async def run() -> None:
        node, runtime, catalog = _node(tmp_path, TimeoutError("the request's deadline passed"))
        try:
            with pytest.raises(TimeoutError):
                await node.put(DATA, timeout=5)
            assert not node.store.has(DIGEST)
            # The entry was committed after all, and is applied here now.
            runtime.apply()
            catalog.put(runtime.machine.applied_index, encode_put_args(DIGEST, len(DATA), "a/b", 1))
            runtime.apply()
            for _ in range(200):
                if node.store.has(DIGEST):
                    break
                await asyncio.sleep(0.01)
            assert node.store.path(DIGEST).read_bytes() == DATA
            assert list(node.store.tmp.iterdir()) == []
        finally:
            await node.close()

    asyncio.run(run())


def test_a_put_refused_before_it_was_proposed_keeps_nothing(tmp_path: Path) -> None:
    async def run() -> None:
        node, _, _ = _node(tmp_path, Unavailable("shutting down", before_proposal=True))
        try:
            with pytest.raises(Unavailable):
                await node.put(DATA, timeout=5)
            assert not node._background and list(node.store.tmp.iterdir()) == []
        finally:
            await node.close()

    asyncio.run(run())

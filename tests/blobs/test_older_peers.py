"""A node of the previous release has no blob RPCs: it answers HoldBlob and
ReadBlob with UNIMPLEMENTED, which counts as not holding the blob (never as
an error that stops a put or a fetch from asking the others)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from ramraft.server.blobs.manager import NodeBlobs
from ramraft.server.blobs.store import BlobStore
from ramraft.server.machines.blobs import BlobCatalog, BlobEntry
from ramraft.server.request_errors import Unavailable
from ramraft.server.runtime.transport import PEER_SERVICE, PeerServicer

DIGEST = "ab" * 32


async def _serve(handler: grpc.GenericRpcHandler) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def _node(tmp_path: Path, channel: grpc.aio.Channel) -> NodeBlobs:
    runtime: Any = SimpleNamespace(
        id="n1",
        core=SimpleNamespace(conf=SimpleNamespace(members={"n1", "n2"}, voters={"n1", "n2"})),
        transport=SimpleNamespace(channel=lambda peer: channel, call_metadata=lambda: ()),
    )
    store = BlobStore(tmp_path, max_blob_bytes=1 << 20, reserve_bytes=0)
    store.open()
    catalog = BlobCatalog()
    catalog.entries[DIGEST] = BlobEntry(10, "text/plain", 0)
    return NodeBlobs(runtime, api=Any, store=store, catalog=catalog)  # type: ignore[arg-type]


def _old_release() -> grpc.GenericRpcHandler:
    """The Peer service as a node of the previous release serves it: no blob methods."""
    return grpc.method_handlers_generic_handler(PEER_SERVICE, {})


def _without_blobs() -> grpc.GenericRpcHandler:
    """This release's PeerServicer on a node that keeps no blobs."""
    servicer = PeerServicer(
        receive=lambda messages: None,
        snapshots=None,  # type: ignore[arg-type]
        deliver_snapshot=lambda message: None,
        forward=lambda command, context: None,
        current_term=lambda: 0,
    )
    return servicer.handler()


@pytest.mark.parametrize("handler", [_old_release, _without_blobs], ids=["old", "no-blobs"])
def test_unimplemented_counts_as_not_holding(tmp_path: Path, handler: Any) -> None:
    async def run() -> None:
        server, address = await _serve(handler())
        channel = grpc.aio.insecure_channel(address)
        node = _node(tmp_path, channel)
        try:
            assert await node._hold_at("n2", DIGEST, 10, 1, 5.0) is False
            with pytest.raises(Unavailable, match="UNIMPLEMENTED"):
                await node.ensure(DIGEST, timeout=5.0)
        finally:
            node.store.close()
            await channel.close()
            await server.stop(None)

    asyncio.run(run())

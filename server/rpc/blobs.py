"""The gRPC Blobs service (proto/blobs.proto): decode, call the node's blobs
(server/blobs/manager.py), encode. Errors come from the one table in
server/request_errors.py, as for the other services."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from ramraft.proto import blobs_pb2, blobs_pb2_grpc
from ramraft.server.blobs.manager import PUT_TIMEOUT, NodeBlobs
from ramraft.server.machines.blobs import DEFAULT_CONTENT_TYPE, BlobRef
from ramraft.server.request_errors import BadRequest
from ramraft.server.rpc.services import rpc, rpc_stream
from ramraft.server.runtime.loop import RaftRuntime


def _timeout(context: grpc.aio.ServicerContext[Any, Any]) -> float:
    """A blob call's time limit: its deadline, at most PUT_TIMEOUT (also
    what a call without one gets). Not --max-deadline-ms: a large blob takes
    longer to move than any key-value call should wait; a client that stops
    sending is cut by the gatekeeper's per-message timeout instead."""
    remaining = context.time_remaining()
    return PUT_TIMEOUT if remaining is None else max(0.0, min(remaining, PUT_TIMEOUT))


def blob_info(ref: BlobRef) -> blobs_pb2.BlobInfo:
    return blobs_pb2.BlobInfo(sha256=ref.sha256, size=ref.size, content_type=ref.content_type)


class BlobsService(blobs_pb2_grpc.BlobsServiceServicer):
    def __init__(self, blobs: NodeBlobs, runtime: RaftRuntime) -> None:
        self.blobs = blobs
        self.runtime = runtime  # for the leader's address in UNAVAILABLE answers
        self.observers: list[Callable[[str, str, float], None]] = []

    @rpc("PutBlob")
    async def PutBlob(
        self,
        requests: AsyncIterator[blobs_pb2.PutBlobRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> blobs_pb2.PutBlobResponse:
        first = await anext(aiter(requests), None)
        if first is None:
            raise BadRequest("an upload starts with a message carrying its content type")
        size = first.size if first.HasField("size") else None

        async def pieces() -> AsyncIterator[bytes]:
            if first.data:
                yield first.data
            async for request in requests:
                if request.content_type or request.HasField("size") or request.sha256:
                    raise BadRequest("content_type, size and sha256 go in the first message only")
                yield request.data

        ref, index = await self.blobs.put_with_index(
            pieces(),
            content_type=first.content_type or DEFAULT_CONTENT_TYPE,
            size=size,
            sha256=first.sha256 or None,
            timeout=_timeout(context),
        )
        return blobs_pb2.PutBlobResponse(blob=blob_info(ref), index=index)

    @rpc_stream("GetBlob")
    async def GetBlob(
        self, request: blobs_pb2.GetBlobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[blobs_pb2.GetBlobResponse]:
        reader = await self.blobs.open(
            request.sha256,
            offset=request.offset,
            length=request.length or None,
            timeout=_timeout(context),
        )
        info: blobs_pb2.BlobInfo | None = blob_info(reader.ref)
        async with reader:
            async for piece in reader:
                yield blobs_pb2.GetBlobResponse(blob=info, data=piece)
                info = None
        if info is not None:  # an empty blob, or an empty range
            yield blobs_pb2.GetBlobResponse(blob=info)

    @rpc("DeleteBlob")
    async def DeleteBlob(
        self, request: blobs_pb2.DeleteBlobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> blobs_pb2.DeleteBlobResponse:
        deleted, index = await self.blobs.delete(request.sha256, timeout=_timeout(context))
        return blobs_pb2.DeleteBlobResponse(deleted=deleted, index=index)

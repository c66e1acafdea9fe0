"""The peer transport: Raft messages between nodes over gRPC.

- One long-lived client stream per ordered peer pair (``Peer.Stream``): the
  sender coalesces everything queued for a peer since its last write into
  one MessageBatch, serialized once (server/runtime/wire.py), so a loop turn costs
  one write per peer however many messages it made.
- Snapshots travel on their own stream (``Peer.InstallSnapshot``) in chunks
  read from the snapshot store, so a multi-GB snapshot never sits in RAM;
  the outcome is reported back to the core (``report_snapshot``).
- A peer that cannot be reached is retried with exponential back-off; the
  core is told (``report_unreachable``) so it stops pipelining to it.
  Messages queued for an unreachable peer are dropped beyond a bound: Raft
  tolerates loss, and an unbounded queue would not.

Raw bytes cross the gRPC boundary (identity serializers): the codec does
the only protobuf work, once per batch.

Security (with TLS, server/security/tls.py): every peer connection is mutual TLS.
The receiving side (``PeerServicer``) first checks the caller's certificate
-- signed by the cluster CA (the handshake checked that), with a
``ramraft-node:<id>`` identity that is a member (``is_member``) -- and
refuses anything else with PERMISSION_DENIED before it reads a single
message. Then every message must name that identity as its ``src``: the
Raft core trusts ``src`` (consensus/raft.py ``malformed``), so a member must
not speak for another; a message with another ``src`` is dropped, counted
(``dropped_messages``) and logged (rate-limited). The same holds for
InstallSnapshot (the header's ``src``) and Forward (a member's identity).
HoldBlob and ReadBlob (blobs, server/blobs/) are served only to members, too.

On a port shared with clients (no ``--peer-listen``), TLS requires a client
certificate from every caller (grpc-python cannot ask for one without
requiring it); the Peer service still requires a member's identity, so a
client's certificate gets it nowhere.

Clusters: every call carries the caller's cluster id (``ramraft-cluster-id``
metadata) once the caller knows one (machines/cluster.py); a node that knows
another id refuses the call with FAILED_PRECONDITION, so a node of another
cluster (an old cluster next to one restored from its backup, a node pointed
at the wrong peers) can neither vote, append nor forward here. A caller
without an id (a new node, a node of release 0.1.0) is not refused.

Without TLS the peer protocol is unauthenticated: anyone who can reach the
peer port can act as a peer. Keep it on a private network (k8s/ admits it
only from the set's pods) or turn TLS on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import grpc
import structlog

from ramraft.consensus.types import Message, MsgType, NodeId, SnapshotMeta
from ramraft.proto import raft_pb2
from ramraft.server.config import PEER_MESSAGE_BYTES
from ramraft.server.logs import RateLimitedLog
from ramraft.server.request_errors import RequestAborted, RequestContext
from ramraft.server.runtime.ending import StreamsEnding
from ramraft.server.runtime.wire import (
    CodecError,
    SnapshotReceiver,
    parse_batch,
    serialize_batch,
    snapshot_chunks,
)
from ramraft.server.security.tls import TLSFiles, fingerprint, peer_certificate, peer_node_id
from ramraft.server.storage import SnapshotStore, StorageError

log = structlog.get_logger("ramraft.transport")

PEER_SERVICE = "ramraft.peer.v1.Peer"
ADMIN_SERVICE = "ramraft.v1.Admin"
CLUSTER_ID_METADATA = "ramraft-cluster-id"
MAX_QUEUED_MESSAGES = 10_000
# A peer stream open this long counts as the peer reachable again (seconds).
REACHABLE_AFTER = 1.0
# The binary trailing metadata of a failed Forward: a ForwardRefusal.
FORWARD_REFUSAL_KEY = "ramraft-forward-refusal-bin"
# Most writes one ForwardBatch may carry (a follower's own admission limits
# what it forwards; this bounds one message's tasks).
MAX_FORWARD_BATCH = 1024
MAX_SNAPSHOT_BYTES = 1 << 40
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", PEER_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", PEER_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    # Reconnect fast after a peer restarts: the defaults back off to minutes.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 100),
]


class _BadBatch(Exception):
    """A ForwardBatch over MAX_FORWARD_BATCH: the stream ends with INVALID_ARGUMENT."""


async def _refuse_unread_writes(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """End a ForwardStream of a stopping node: the writes it did not answer
    were never read, so never proposed (the refusal says so, as a Forward
    call's does)."""
    refusal = raft_pb2.ForwardRefusal(before_proposal=True)
    context.set_trailing_metadata(((FORWARD_REFUSAL_KEY, refusal.SerializeToString()),))
    await context.abort(
        grpc.StatusCode.UNAVAILABLE,
        "this node is shutting down; the writes it did not answer were not proposed",
    )


def _identity(data: bytes) -> bytes:
    return data


class PeerBlobs(Protocol):
    """The blob calls peers make (server/blobs/manager.py NodeBlobs)."""

    async def serve_hold(
        self, request: raft_pb2.HoldBlobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> raft_pb2.HoldBlobResponse: ...

    def serve_read(
        self, request: raft_pb2.ReadBlobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[raft_pb2.ReadBlobResponse]: ...


class PeerLink:
    """Everything this node sends to one peer."""

    def __init__(self, transport: PeerTransport, peer: NodeId) -> None:
        self.transport = transport
        self.peer = peer
        self.queue: list[Message] = []
        self.wake = asyncio.Event()
        self.channel: grpc.aio.Channel | None = None
        self.channel_address = ""
        self.channel_generation = 0  # the TLS material the channel was made with
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"send-{peer}")
        self.snapshot_task: asyncio.Task[None] | None = None
        self.failures = 0
        # The kinds of failure logged in this run of failures (see _run).
        self.failure_kinds: set[str] = set()

    def enqueue(self, messages: list[Message]) -> None:
        self.queue.extend(messages)
        if len(self.queue) > MAX_QUEUED_MESSAGES:
            # The peer is not keeping up (or is down): keep the newest.
            del self.queue[: len(self.queue) - MAX_QUEUED_MESSAGES]
        self.wake.set()

    def get_channel(self) -> grpc.aio.Channel:
        """The channel to the peer; a new one when its address or our
        certificate changed (calls already running finish on the old one)."""
        address = self.transport.addresses.get(self.peer, "")
        tls = self.transport.tls
        if tls is not None:
            tls.refresh()
        generation = tls.generation if tls is not None else 0
        if (
            self.channel is None
            or address != self.channel_address
            or generation != self.channel_generation
        ):
            if self.channel is not None:
                old = self.channel
                asyncio.get_running_loop().call_later(30.0, _close_later, old)
            if tls is not None:
                self.channel = grpc.aio.secure_channel(
                    address, tls.channel_credentials(), options=CHANNEL_OPTIONS
                )
            else:
                self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
            self.channel_address = address
            self.channel_generation = generation
        return self.channel

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            await self.wake.wait()
            if not self.transport.addresses.get(self.peer):
                self.queue.clear()
                self.wake.clear()
                continue
            try:
                await self._stream()
                backoff = 0.05
            except asyncio.CancelledError:
                raise
            except Exception as e:  # any failure: report, back off, reconnect
                self.failures += 1
                # The first failure, every 50th, and the first of each other
                # kind: grpc reports a call the peer ended at once as often
                # as not as "INTERNAL: Internal error from Core" (the write
                # raced the peer's status, which is lost), so the first
                # failure alone may not say why (a peer of another cluster
                # refuses every call with FAILED_PRECONDITION and the reason).
                kind = _failure_kind(e)
                if self.failures == 1:
                    self.failure_kinds.clear()  # so the first failure is logged
                if kind not in self.failure_kinds or self.failures % 50 == 0:
                    self.failure_kinds.add(kind)
                    log.info(
                        "peer_unreachable", peer=self.peer, error=_short(e), failures=self.failures
                    )
                self.transport.on_unreachable(self.peer)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 0.3)  # a healed peer is back within a heartbeat or so

    async def _stream(self) -> None:
        method = self.get_channel().stream_unary(
            f"/{PEER_SERVICE}/Stream",
            request_serializer=_identity,
            response_deserializer=raft_pb2.StreamSummary.FromString,
        )
        call = method(wait_for_ready=False, metadata=self.transport.call_metadata())
        opened = time.monotonic()
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                if not self.queue:
                    continue
                batch, self.queue = self.queue, []
                # Several writes when the batch would exceed what the peer's
                # port accepts (NodeConfig.peer_message_bytes).
                for part in split_batch(batch, self.transport.max_message_bytes):
                    try:
                        await call.write(serialize_batch(part))
                    except asyncio.InvalidStateError:
                        # The peer ended the call (it refused us: another
                        # cluster, not a member; or it stopped): raise its
                        # status, which says why, not "RPC already finished".
                        await call
                        # OK: the peer ended it as it stopped (end_streams).
                        raise ConnectionError("the peer ended the stream: it is stopping") from None
                # Reachable once a call has lasted: a peer that refuses us
                # takes a first write, then ends the call (its status says
                # why), and must not read as reachable again each time.
                if self.failures and time.monotonic() - opened >= REACHABLE_AFTER:
                    log.info("peer_reachable", peer=self.peer, after_failures=self.failures)
                    self.failures = 0
        finally:
            call.cancel()

    def send_snapshot(self, message: Message) -> None:
        if self.snapshot_task is not None and not self.snapshot_task.done():
            return  # one at a time; the core retries after report_snapshot
        self.snapshot_task = asyncio.get_running_loop().create_task(
            self._send_snapshot(message), name=f"snapshot-{self.peer}"
        )

    async def _send_snapshot(self, message: Message) -> None:
        meta = message.snapshot
        assert meta is not None
        ok = False
        try:
            ok = await self._stream_snapshot(message, meta)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("snapshot_send_failed", peer=self.peer, index=meta.index, error=_short(e))
        self.transport.on_snapshot_status(self.peer, ok)

    async def _stream_snapshot(self, message: Message, meta: SnapshotMeta) -> bool:
        store = self.transport.snapshots
        reader = await asyncio.to_thread(store.open, meta.index)
        log.info("snapshot_send_started", peer=self.peer, index=meta.index, bytes=reader.size)

        async def chunks() -> AsyncIterator[bytes]:
            # The reader yields one block (1 MiB) at a time, read lazily as
            # gRPC asks for chunks.
            pieces = iter(reader)
            chunk_bytes = self.transport.snapshot_chunk_bytes
            async for chunk in _aiter_sync(
                snapshot_chunks(message, pieces, reader.size, chunk_bytes)
            ):
                yield chunk.SerializeToString()

        method = self.get_channel().stream_unary(
            f"/{PEER_SERVICE}/InstallSnapshot",
            request_serializer=_identity,
            response_deserializer=raft_pb2.InstallSnapshotResponse.FromString,
        )
        try:
            response = await method(chunks(), metadata=self.transport.call_metadata())
        finally:
            reader.close()
        log.info(
            "snapshot_send_finished",
            peer=self.peer,
            index=meta.index,
            accepted=response.accepted,
            error=response.error or None,
        )
        return bool(response.accepted)

    async def close(self) -> None:
        self.task.cancel()
        if self.snapshot_task is not None:
            self.snapshot_task.cancel()
        with contextlib.suppress(BaseException):
            await self.task
        if self.channel is not None:
            await self.channel.close()


def _close_later(channel: grpc.aio.Channel) -> None:
    """Close a replaced channel once the calls still on it had time to end."""
    asyncio.get_running_loop().create_task(channel.close())


# Protobuf framing per message and per entry in a MessageBatch, over-estimated.
_MESSAGE_OVERHEAD = 128
_ENTRY_OVERHEAD = 32


def split_batch(messages: list[Message], max_bytes: int) -> list[list[Message]]:
    """``messages`` in order, cut into batches whose encoding stays within
    ``max_bytes`` (estimated from the entries' sizes; a message larger than
    that on its own travels alone: the core keeps each AppendEntries within
    its max_msg_bytes, which the runtime sets below this limit)."""
    parts: list[list[Message]] = [[]]
    size = 0
    for m in messages:
        cost = (
            _MESSAGE_OVERHEAD
            + len(m.context)
            + sum(len(e.data) + _ENTRY_OVERHEAD for e in m.entries)
        )
        if parts[-1] and size + cost > max_bytes:
            parts.append([])
            size = 0
        parts[-1].append(m)
        size += cost
    return parts


async def _aiter_sync(iterator: Any) -> AsyncIterator[Any]:
    for item in iterator:
        yield item
        await asyncio.sleep(0)  # let the event loop breathe between blocks


def _failure_kind(e: BaseException) -> str:
    """A failure's status code, or its type: what tells one kind of failure
    of a peer's link from another."""
    if isinstance(e, grpc.aio.AioRpcError):
        return e.code().name
    return type(e).__name__


def _short(e: BaseException) -> str:
    if isinstance(e, grpc.aio.AioRpcError):
        return f"{e.code().name}: {e.details()}"
    return f"{type(e).__name__}: {e}"


class PeerTransport:
    """Sends the core's messages; receives the peers' (see PeerServicer)."""

    def __init__(
        self,
        node_id: NodeId,
        addresses: dict[NodeId, str],
        snapshots: SnapshotStore,
        on_unreachable: Callable[[NodeId], None],
        on_snapshot_status: Callable[[NodeId, bool], None],
        *,
        tls: TLSFiles | None = None,
        snapshot_chunk_bytes: int = 1 << 20,
        max_message_bytes: int = PEER_MESSAGE_BYTES,
        cluster_id: Callable[[], str] = lambda: "",
    ) -> None:
        self.node_id = node_id
        self.max_message_bytes = max_message_bytes
        self.cluster_id = cluster_id
        self.addresses = addresses  # id -> peer address; the runtime keeps it current
        self.snapshots = snapshots
        self.tls = tls
        self.snapshot_chunk_bytes = snapshot_chunk_bytes
        self.on_unreachable = on_unreachable
        self.on_snapshot_status = on_snapshot_status
        self.links: dict[NodeId, PeerLink] = {}

    def link(self, peer: NodeId) -> PeerLink:
        link = self.links.get(peer)
        if link is None:
            link = self.links[peer] = PeerLink(self, peer)
        return link

    def send(self, messages: list[Message]) -> None:
        by_peer: dict[NodeId, list[Message]] = {}
        for m in messages:
            if m.type == MsgType.SNAPSHOT:
                self.link(m.dst).send_snapshot(m)
            else:
                by_peer.setdefault(m.dst, []).append(m)
        for peer, batch in by_peer.items():
            self.link(peer).enqueue(batch)

    def channel(self, peer: NodeId) -> grpc.aio.Channel:
        return self.link(peer).get_channel()

    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        """What every call to a peer carries: this node's cluster id."""
        cluster_id = self.cluster_id()
        return ((CLUSTER_ID_METADATA, cluster_id),) if cluster_id else ()

    async def info(
        self, peer: NodeId, request: raft_pb2.InfoRequest, timeout: float
    ) -> raft_pb2.InfoResponse | None:
        """Ask ``peer`` what it is (Peer.Info). None when it is a node of
        release 0.1.0 (UNIMPLEMENTED); raises grpc.aio.AioRpcError otherwise."""
        method = self.channel(peer).unary_unary(
            f"/{PEER_SERVICE}/Info",
            request_serializer=raft_pb2.InfoRequest.SerializeToString,
            response_deserializer=raft_pb2.InfoResponse.FromString,
        )
        try:
            response: raft_pb2.InfoResponse = await method(
                request, timeout=timeout, metadata=self.call_metadata()
            )
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                return None
            raise
        return response

    async def forget(self, peer: NodeId) -> None:
        """Close and drop the link to ``peer``: a node that is not a member
        (its addition was refused after the link was opened to ask it)."""
        link = self.links.pop(peer, None)
        if link is not None:
            await link.close()

    async def close(self) -> None:
        await asyncio.gather(*(link.close() for link in self.links.values()))
        self.links.clear()


class PeerServicer:
    """The receiving side of the peer protocol, as generic gRPC handlers so
    batches arrive as raw bytes and are parsed once, by the codec.

    With ``authenticate`` (TLS on), each call first proves the caller is a
    member (see the module docstring); without it, callers are trusted."""

    def __init__(
        self,
        receive: Callable[[list[Message]], None],
        snapshots: SnapshotStore,
        deliver_snapshot: Callable[[Message], None],
        forward: Callable[[bytes, Any], Any],  # NodeAPI.serve_forward (a context or RequestContext)
        current_term: Callable[[], int],
        *,
        authenticate: bool = False,
        is_member: Callable[[str], bool] = lambda node_id: True,
        refusals: RateLimitedLog | None = None,
        cluster_id: Callable[[], str] = lambda: "",
        info: Callable[[raft_pb2.InfoRequest], raft_pb2.InfoResponse] | None = None,
        blobs: PeerBlobs | None = None,
    ) -> None:
        self.receive = receive
        self.blobs = blobs
        self.cluster_id = cluster_id
        self.info = info
        self.snapshots = snapshots
        self.deliver_snapshot = deliver_snapshot
        self.forward = forward
        self.current_term = current_term
        self.authenticate = authenticate
        self.is_member = is_member
        self.refusals = refusals or RateLimitedLog()
        self.dropped_messages = 0  # well-formed, but not from the authenticated sender
        self.refused_calls = 0
        self._installing: set[str] = set()  # peers with an InstallSnapshot stream open
        # The peers' Stream calls and ForwardStream calls, which end_streams() ends.
        self._streams = StreamsEnding()
        self._forward_streams = StreamsEnding()

    async def identify(self, context: grpc.aio.ServicerContext[Any, Any], what: str) -> str | None:
        """The caller's member id (None when TLS is off); aborts the call with
        PERMISSION_DENIED if the caller is not a member, and with
        FAILED_PRECONDITION if it belongs to another cluster."""
        await self._same_cluster(context, what)
        if not self.authenticate:
            return None
        node_id = peer_node_id(context)
        if node_id is not None and self.is_member(node_id):
            return node_id
        self.refused_calls += 1
        reason = (
            "no node certificate (ramraft-node:<id> URI SAN)"
            if node_id is None
            else f"{node_id} is not a member of this cluster"
        )
        self.refusals.warning(
            "peer_refused", call=what, peer=context.peer(), node=node_id, reason=reason
        )
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"peer refused: {reason}")
        raise AssertionError("abort returns only by raising")  # pragma: no cover

    async def _same_cluster(self, context: grpc.aio.ServicerContext[Any, Any], what: str) -> None:
        ours = self.cluster_id()
        if not ours:
            return
        theirs = next(
            (str(v) for k, v in (context.invocation_metadata() or ()) if k == CLUSTER_ID_METADATA),
            "",
        )
        if theirs and theirs != ours:
            self.refused_calls += 1
            self.refusals.warning(
                "peer_of_another_cluster",
                call=what,
                peer=context.peer(),
                theirs=theirs,
                ours=ours,
            )
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"peer refused: it belongs to cluster {theirs!r}, this node to {ours!r}",
            )

    def _from_sender(self, messages: list[Message], sender: str | None, peer: str) -> list[Message]:
        """The messages whose src is the authenticated sender; the rest are dropped."""
        if sender is None:
            return messages
        kept = [m for m in messages if m.src == sender]
        if len(kept) != len(messages):
            dropped = len(messages) - len(kept)
            self.dropped_messages += dropped
            wrong = next(m for m in messages if m.src != sender)
            self.refusals.warning(
                "peer_message_dropped",
                sender=sender,
                claimed_src=wrong.src,
                type=wrong.type.name,
                dropped=dropped,
                peer=peer,
                reason="a message's src must be the authenticated peer",
            )
        return kept

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            PEER_SERVICE,
            {
                "Stream": grpc.stream_unary_rpc_method_handler(
                    self.stream,
                    request_deserializer=_identity,
                    response_serializer=raft_pb2.StreamSummary.SerializeToString,
                ),
                "InstallSnapshot": grpc.stream_unary_rpc_method_handler(
                    self.install_snapshot,
                    request_deserializer=raft_pb2.SnapshotChunk.FromString,
                    response_serializer=raft_pb2.InstallSnapshotResponse.SerializeToString,
                ),
                # A client stream of one message: the caller is identified
                # before its request is read.
                "Forward": grpc.stream_unary_rpc_method_handler(
                    self.forward_stream,
                    request_deserializer=raft_pb2.ForwardRequest.FromString,
                    response_serializer=raft_pb2.ForwardResponse.SerializeToString,
                ),
                "ForwardStream": grpc.stream_stream_rpc_method_handler(
                    self.forward_batches,
                    request_deserializer=raft_pb2.ForwardBatch.FromString,
                    response_serializer=raft_pb2.ForwardAnswers.SerializeToString,
                ),
                "Info": grpc.unary_unary_rpc_method_handler(
                    self.info_call,
                    request_deserializer=raft_pb2.InfoRequest.FromString,
                    response_serializer=raft_pb2.InfoResponse.SerializeToString,
                ),
                "HoldBlob": grpc.unary_unary_rpc_method_handler(
                    self.hold_blob,
                    request_deserializer=raft_pb2.HoldBlobRequest.FromString,
                    response_serializer=raft_pb2.HoldBlobResponse.SerializeToString,
                ),
                "ReadBlob": grpc.unary_stream_rpc_method_handler(
                    self.read_blob,
                    request_deserializer=raft_pb2.ReadBlobRequest.FromString,
                    response_serializer=raft_pb2.ReadBlobResponse.SerializeToString,
                ),
            },
        )

    async def _blobs(self, context: grpc.aio.ServicerContext[Any, Any], what: str) -> PeerBlobs:
        await self.identify(context, what)
        if self.blobs is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this node keeps no blobs")
        assert self.blobs is not None
        return self.blobs

    async def hold_blob(
        self, request: raft_pb2.HoldBlobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> raft_pb2.HoldBlobResponse:
        blobs = await self._blobs(context, "HoldBlob")
        return await blobs.serve_hold(request, context)

    async def read_blob(
        self, request: raft_pb2.ReadBlobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[raft_pb2.ReadBlobResponse]:
        blobs = await self._blobs(context, "ReadBlob")
        async for response in blobs.serve_read(request, context):
            yield response

    async def info_call(
        self, request: raft_pb2.InfoRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> raft_pb2.InfoResponse:
        await self.identify(context, "Info")
        if self.info is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no node information here")
            raise AssertionError("abort returns only by raising")  # pragma: no cover
        return self.info(request)

    def admin_status_handler(
        self,
        status: Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any],
        request_deserializer: Callable[[bytes], Any],
        response_serializer: Callable[[Any], bytes],
    ) -> grpc.GenericRpcHandler:
        """``Admin.Status`` for members on a separate peer port: how a node's
        web tier asks the leader for its followers' progress."""

        async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await self.identify(context, "Admin.Status")
            return await status(request, context)

        return grpc.method_handlers_generic_handler(
            ADMIN_SERVICE,
            {
                "Status": grpc.unary_unary_rpc_method_handler(
                    guarded,
                    request_deserializer=request_deserializer,
                    response_serializer=response_serializer,
                )
            },
        )

    async def stream(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> raft_pb2.StreamSummary:
        sender = await self.identify(context, "Stream")
        if sender is not None:
            pem = peer_certificate(context)
            log.info(
                "peer_stream_opened",
                sender=sender,
                peer=context.peer(),
                certificate=fingerprint(pem) if pem is not None else None,
            )
        if self._streams.ended:
            return raft_pb2.StreamSummary()
        batches = 0
        task = asyncio.current_task()
        assert task is not None
        try:
            with self._streams.track(task.cancel):
                async for raw in requests:
                    try:
                        messages = parse_batch(raw)
                    except CodecError as e:
                        self.refusals.warning(
                            "peer_batch_rejected", error=str(e), peer=context.peer()
                        )
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad batch: {e}")
                    batches += 1
                    messages = self._from_sender(messages, sender, context.peer())
                    if messages:
                        self.receive(messages)
        except asyncio.CancelledError:
            if not self._streams.ended:
                raise
            # end_streams(): the node is stopping. The call ends with OK
            # (the peer reconnects with its back-off, as to any node that
            # went away).
        return raft_pb2.StreamSummary(batches=batches)

    def end_streams(self) -> tuple[int, int]:
        """End the peers' Stream and ForwardStream calls, and refuse new
        ones, as the node stops; returns how many of each it ended.

        A peer keeps its streams to this node open for as long as both run,
        so the server's graceful stop would wait its whole grace for them
        and then abort them (grpc logs "Aborting method ... due to server
        stop" at warning level). Ended here, a Stream closes with OK at
        once; a ForwardStream reads nothing more, answers the writes it
        read, and ends saying that it proposed none of the others
        (``forward_batches``)."""
        return self._streams.end_all(), self._forward_streams.end_all()

    async def install_snapshot(
        self,
        requests: AsyncIterator[raft_pb2.SnapshotChunk],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> raft_pb2.InstallSnapshotResponse:
        sender = await self.identify(context, "InstallSnapshot")
        key = sender or context.peer()
        if key in self._installing:
            # One snapshot at a time per peer: a second stream would only
            # fill the disk with another copy.
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "a snapshot from this peer is being received"
            )
        self._installing.add(key)
        try:
            return await self._install_snapshot(requests, context, sender)
        finally:
            self._installing.discard(key)

    async def _install_snapshot(
        self,
        requests: AsyncIterator[raft_pb2.SnapshotChunk],
        context: grpc.aio.ServicerContext[Any, Any],
        sender: str | None,
    ) -> raft_pb2.InstallSnapshotResponse:
        writer: Any = None

        def write(data: bytes) -> None:
            nonlocal writer
            if writer is None:
                assert receiver.message is not None and receiver.message.snapshot is not None
                writer = self.snapshots.create(receiver.message.snapshot)
            writer.write(data)

        receiver = SnapshotReceiver(write, MAX_SNAPSHOT_BYTES)
        try:
            async for chunk in requests:
                receiver.feed(chunk)
                message = receiver.message
                if sender is not None and message is not None and message.src != sender:
                    self._from_sender([message], sender, context.peer())
                    raise CodecError(f"the snapshot's src {message.src!r} is not the sender")
            if not receiver.done or receiver.message is None:
                raise CodecError("snapshot stream ended before its trailer")
            message = receiver.message
            assert message.snapshot is not None
            if writer is None:  # an empty snapshot: no data chunks came
                writer = self.snapshots.create(message.snapshot)
            await asyncio.to_thread(writer.commit)
            writer = None
        except (CodecError, StorageError) as e:
            self.refusals.warning("snapshot_receive_failed", error=str(e), peer=context.peer())
            return raft_pb2.InstallSnapshotResponse(
                term=self.current_term(), accepted=False, error=str(e)
            )
        finally:
            if writer is not None:
                writer.abort()
        log.info("snapshot_received", index=message.snapshot.index, src=message.src)
        self.deliver_snapshot(message)
        return raft_pb2.InstallSnapshotResponse(term=self.current_term(), accepted=True)

    async def forward_stream(
        self,
        requests: AsyncIterator[raft_pb2.ForwardRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> raft_pb2.ForwardResponse:
        await self.identify(context, "Forward")
        request = await anext(aiter(requests), None)
        if request is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no request message")
        return await self.forward_call(request, context)

    async def forward_call(
        self, request: raft_pb2.ForwardRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> raft_pb2.ForwardResponse:
        """The write of an identified caller (``forward_stream`` checked it)."""
        result: raft_pb2.ForwardResponse = await self.forward(request.command, context)
        return result

    async def forward_batches(
        self,
        requests: AsyncIterator[raft_pb2.ForwardBatch],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[raft_pb2.ForwardAnswers]:
        """``Peer.ForwardStream``: each item served as a Forward call would
        be (``self.forward``, with the item's own deadline and a context
        that turns its abort into the answer's code), answered as it
        completes; the answers ready together leave in one message.

        When the node stops (``end_streams``) the stream reads no more
        writes, answers those it read, and ends UNAVAILABLE with a
        ForwardRefusal before proposal: every write the follower has no
        answer for was never read, so it goes to the next leader at once
        rather than failing as maybe applied."""
        await self.identify(context, "ForwardStream")
        if self._forward_streams.ended:
            await _refuse_unread_writes(context)
        ready: list[raft_pb2.ForwardAnswer] = []
        wakeup: asyncio.Event = asyncio.Event()
        running: set[asyncio.Task[None]] = set()
        reading = True
        loop = asyncio.get_running_loop()

        async def serve(item: raft_pb2.ForwardItem) -> None:
            try:
                answer = await self._forward_item(item)
                # Appended after the await: ``ready`` is another list by
                # then (``ready.append(await ...)`` would take the list
                # before it, one the answers may have left in already).
                ready.append(answer)
            finally:
                # Here, not in a done callback: the loop below must not see
                # this task still running once its wakeup has passed.
                running.discard(asyncio.current_task())
                wakeup.set()

        async def read_all() -> None:
            nonlocal reading
            try:
                async for batch in requests:
                    if len(batch.items) > MAX_FORWARD_BATCH:
                        limit = f"the limit is {MAX_FORWARD_BATCH}"
                        raise _BadBatch(f"{len(batch.items)} items; {limit}")
                    for item in batch.items:
                        running.add(loop.create_task(serve(item)))
            finally:
                reading = False
                wakeup.set()

        def read_failed() -> BaseException | None:
            if not reader.done() or reader.cancelled():  # cancelled: end_streams()
                return None
            return reader.exception()

        reader = loop.create_task(read_all())
        try:
            with self._forward_streams.track(reader.cancel):
                while reading or running or ready:
                    if not ready:
                        await wakeup.wait()
                        wakeup.clear()
                        if read_failed() is not None:
                            break
                        continue
                    answers, ready = ready, []
                    yield raft_pb2.ForwardAnswers(answers=answers)
            failure = read_failed()
            if isinstance(failure, _BadBatch):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(failure))
            if reader.cancelled():
                await _refuse_unread_writes(context)
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()

    async def _forward_item(self, item: raft_pb2.ForwardItem) -> raft_pb2.ForwardAnswer:
        context = RequestContext(item.timeout_ms, time.monotonic())
        try:
            response: raft_pb2.ForwardResponse = await self.forward(item.command, context)
        except RequestAborted as e:
            refusal = raft_pb2.ForwardRefusal.FromString(context.metadata(FORWARD_REFUSAL_KEY, b""))
            return raft_pb2.ForwardAnswer(
                id=item.id, code=e.code.value[0], message=e.details, refusal=refusal
            )
        except Exception as e:  # a bug: answer this write, keep the stream
            log.exception("forward_item_failed")
            return raft_pb2.ForwardAnswer(
                id=item.id, code=grpc.StatusCode.INTERNAL.value[0], message=f"internal error: {e}"
            )
        return raft_pb2.ForwardAnswer(id=item.id, response=response)

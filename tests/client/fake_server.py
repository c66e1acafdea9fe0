"""An in-process stand-in for a ramraft node: the KV, Admin and Blobs
services over dicts, on 127.0.0.1 with a free port, that records every call and can be
told to fail, hint at a leader, or hang (until the test releases it, so a
test can tell "the client gave up on its own" from "the node answered").

``KV.Stream`` serves the same calls as the unary methods, each request in
its own thread (answers come in completion order), with the same injected
failures (as the answer's code and leader); a node can also be told not to
serve it (UNIMPLEMENTED, as an older node) or to break its streams."""

from __future__ import annotations

import contextlib
import hashlib
import io
import queue
import socket
import threading
from collections import deque
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc
import structlog
import structlog.testing

from ramraft.proto import (
    admin_pb2,
    admin_pb2_grpc,
    blobs_pb2,
    blobs_pb2_grpc,
    kv_pb2,
    kv_pb2_grpc,
)
from ramraft.server.machines.kv import KVMachine, encode_put
from ramraft.server.storage.backup import BackupHeader, encode_prefix

# How long a held call waits for release() at most: a guard against a test
# that forgets to release, far beyond any deadline the tests give a client.
HOLD_GUARD_SECONDS = 30.0


@dataclass
class Call:
    method: str
    session: tuple[int, int, int] | None  # (client_id, sequence, first_unacked)
    request: Any
    # Seconds the caller's deadline had left on arrival: the gRPC deadline of a
    # unary call, a stream request's own timeout_ms.
    deadline: float | None
    transport: str = "unary"  # or "stream"
    timeout_ms: int = 0  # a stream request's own deadline


@dataclass
class Failure:
    code: grpc.StatusCode
    details: str = "injected"
    leader: str | None = None  # sent as trailing metadata ramraft-leader
    client_id: int | None = None  # only calls of this session's client fail


@dataclass
class FakeNode:
    node_id: str = "n1"
    data: dict[str, bytes] = field(default_factory=dict)
    blobs: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # sha256 -> (type, bytes)
    calls: list[Call] = field(default_factory=list)
    failures: deque[Failure] = field(default_factory=deque)
    always: Failure | None = None  # fail every call with this
    to_hold: int = 0  # the next this many calls hang until release()
    success_hint: str | None = None  # leader hint on successful answers
    index: int = 0
    address: str = ""
    # Admin Status: the defaults are what a node of release 0.1.0 reports.
    pid: int = 0
    version: str = ""
    # Key-value version 2: leases by id -> ttl; the changes a Watch sends
    # (type "PUT"/"DELETE", key, value), revisions 1, 2, ...
    leases: dict[int, int] = field(default_factory=dict)
    changes: list[tuple[str, str, bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    released: threading.Event = field(default_factory=threading.Event)
    arrived: threading.Condition = field(init=False)
    serve_stream: bool = True  # False: KV.Stream is UNIMPLEMENTED, as on an older node
    serve_batch: bool = True  # False: KV.StreamBatch is UNIMPLEMENTED (but KV.Stream may not be)
    batch_streams: int = 0  # of streams_opened, those that were KV.StreamBatch
    batch_sizes: list[int] = field(default_factory=list)  # requests per StreamBatchRequest
    stream_refusal: Failure | None = None  # end every new stream at once with this
    stream_attempts: int = 0  # streams asked for
    streams_opened: int = 0  # streams served
    # End the current stream (UNAVAILABLE) once this many requests arrived on
    # it, before answering them; then serve new streams normally.
    break_stream_after: int | None = None

    def __post_init__(self) -> None:
        self.arrived = threading.Condition(self.lock)

    def fail_next(self, n: int, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE, **kw: Any):
        for _ in range(n):
            self.failures.append(Failure(code, **kw))

    def hold_next(self, n: int = 1) -> None:
        """The next ``n`` calls hang (a hung node) until ``release()``."""
        with self.lock:
            self.released.clear()
            self.to_hold = n

    def release(self) -> None:
        """Let every held call answer (and no later call hang)."""
        with self.lock:
            self.to_hold = 0
            self.released.set()

    def wait_for_calls(self, n: int, timeout: float = HOLD_GUARD_SECONDS) -> None:
        """Block until this node has received ``n`` calls."""
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.calls) >= n, timeout):
                raise AssertionError(f"{self.node_id}: {len(self.calls)} calls, not {n}")

    def methods(self) -> list[str]:
        return [c.method for c in self.calls]

    def sessions(self) -> list[tuple[int, int, int] | None]:
        return [c.session for c in self.calls]

    def transports(self) -> list[str]:
        return [c.transport for c in self.calls]

    def _enter(
        self, method: str, request: Any, context: Any, transport: str = "unary", timeout_ms: int = 0
    ) -> None:
        session = None
        if hasattr(request, "session") and request.HasField("session"):
            s = request.session
            session = (s.client_id, s.sequence, s.first_unacked)
        with self.lock:
            if transport == "stream":
                left = timeout_ms / 1000 if timeout_ms else None
            else:
                left = context.time_remaining()
            self.calls.append(Call(method, session, request, left, transport, timeout_ms))
            self.arrived.notify_all()
            failure = self.always
            if self.failures and (
                self.failures[0].client_id is None
                or (session is not None and session[0] == self.failures[0].client_id)
            ):
                failure = self.failures.popleft()
            held = self.to_hold > 0
            if held:
                self.to_hold -= 1
        if held:
            self.released.wait(HOLD_GUARD_SECONDS)
        if failure is not None:
            if failure.leader is not None:
                context.set_trailing_metadata((("ramraft-leader", failure.leader),))
            context.abort(failure.code, failure.details)
        if self.success_hint is not None:
            context.set_trailing_metadata((("ramraft-leader", self.success_hint),))

    def _write(self) -> int:
        self.index += 1
        return self.index


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _OpContext:
    """What the unary handlers use of a ServicerContext, for one request of a
    stream: abort ends the request, a leader hint goes into the answer."""

    def __init__(self) -> None:
        self.leader = ""

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Aborted(code, details)

    def set_trailing_metadata(self, metadata: Any) -> None:
        for key, value in metadata:
            if key == "ramraft-leader":
                self.leader = value


_STREAM_OPS = {
    "put": "Put",
    "get": "Get",
    "delete": "Delete",
    "compare_and_swap": "CompareAndSwap",
    "range": "Range",
}


# How long a refused stream's requests are taken before the refusal is sent.
REFUSAL_DRAIN_SECONDS = 0.2


def _refuse(requests: Any, context: Any, code: grpc.StatusCode, details: str) -> NoReturn:
    """End a stream with ``code`` once what its client wrote meanwhile has
    been taken (for at most REFUSAL_DRAIN_SECONDS), as a node's Gatekeeper
    does (server/security/auth.py _drain): grpc-python's asyncio client
    turns a write in flight when the status arrives into its own INTERNAL
    (which it retries), and the tests count attempts."""

    def drain() -> None:
        with contextlib.suppress(Exception):
            for _ in requests:
                pass

    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    drainer.join(REFUSAL_DRAIN_SECONDS)
    context.abort(code, details)
    raise AssertionError("context.abort returned")


class _KV(kv_pb2_grpc.KVServicer):
    def __init__(self, node: FakeNode) -> None:
        self.node = node

    def StreamBatch(self, batches, context):
        """KV.Stream's requests, many to a message; each answer in a message
        of its own (a node may group them; the clients take either)."""
        if not self.node.serve_batch:
            with self.node.lock:
                self.node.stream_attempts += 1
            _refuse(batches, context, grpc.StatusCode.UNIMPLEMENTED, "Method not found!")

        def requests():
            for batch in batches:
                with self.node.lock:
                    self.node.batch_sizes.append(len(batch.requests))
                yield from batch.requests

        for answer in self._serve_stream(requests(), context, batched=True):
            yield kv_pb2.StreamBatchResponse(responses=[answer])

    def Stream(self, requests, context):
        yield from self._serve_stream(requests, context, batched=False)

    def _serve_stream(self, requests, context, batched):
        node = self.node
        with node.lock:
            node.stream_attempts += 1
        if not node.serve_stream:
            _refuse(requests, context, grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        if node.stream_refusal is not None:
            _refuse(requests, context, node.stream_refusal.code, node.stream_refusal.details)
        with node.lock:
            node.streams_opened += 1
            node.batch_streams += batched
            break_after = node.break_stream_after
            node.break_stream_after = None
        answers: queue.SimpleQueue[kv_pb2.StreamResponse | int] = queue.SimpleQueue()
        broken = threading.Event()

        def serve(request: kv_pb2.StreamRequest) -> None:
            answers.put(self._stream_one(request))

        def pump() -> None:
            received = 0
            try:
                for request in requests:
                    received += 1
                    op = request.WhichOneof("op")
                    if break_after is not None:
                        # Recorded as arrived, never answered: what a node
                        # that dies with requests in flight leaves behind.
                        sub = getattr(request, op)
                        node._enter(
                            _STREAM_OPS[op], sub, _OpContext(), "stream", request.timeout_ms
                        )
                        if received >= break_after:
                            broken.set()
                            break
                        continue
                    threading.Thread(target=serve, args=(request,), daemon=True).start()
            except Exception:  # the client went away
                pass
            answers.put(received)  # no more requests: this many were started

        threading.Thread(target=pump, daemon=True).start()
        answered, started = 0, None
        while context.is_active() and (started is None or answered < started):
            try:
                item = answers.get(timeout=0.05)
            except queue.Empty:
                continue
            if broken.is_set():
                context.abort(grpc.StatusCode.UNAVAILABLE, "injected: the stream broke")
            if isinstance(item, int):
                started = item
                continue
            answered += 1
            yield item

    def _stream_one(self, request: kv_pb2.StreamRequest) -> kv_pb2.StreamResponse:
        op = request.WhichOneof("op")
        method = _STREAM_OPS[op]
        context = _OpContext()
        handler = getattr(self, method)
        try:
            result = handler(getattr(request, op), context, "stream", request.timeout_ms)
        except _Aborted as e:
            return kv_pb2.StreamResponse(
                id=request.id, code=e.code.value[0], message=e.details, leader=context.leader
            )
        response = kv_pb2.StreamResponse(id=request.id, leader=context.leader)
        getattr(response, op).CopyFrom(result)
        return response

    def Put(self, request, context, transport="unary", timeout_ms=0):
        self.node._enter("Put", request, context, transport, timeout_ms)
        with self.node.lock:
            self.node.data[request.key] = request.value
            return kv_pb2.PutResponse(index=self.node._write())

    def Get(self, request, context, transport="unary", timeout_ms=0):
        self.node._enter("Get", request, context, transport, timeout_ms)
        with self.node.lock:
            value = self.node.data.get(request.key)
            return kv_pb2.GetResponse(
                found=value is not None, value=value or b"", index=self.node.index
            )

    def Delete(self, request, context, transport="unary", timeout_ms=0):
        self.node._enter("Delete", request, context, transport, timeout_ms)
        with self.node.lock:
            existed = self.node.data.pop(request.key, None) is not None
            return kv_pb2.DeleteResponse(deleted=existed, index=self.node._write())

    def CompareAndSwap(self, request, context, transport="unary", timeout_ms=0):
        self.node._enter("CompareAndSwap", request, context, transport, timeout_ms)
        with self.node.lock:
            current = self.node.data.get(request.key)
            absent_wanted = not request.HasField("expected")
            ok = current is None if absent_wanted else current == request.expected
            if ok:
                self.node.data[request.key] = request.value
            return kv_pb2.CompareAndSwapResponse(
                swapped=ok,
                found=current is not None,
                current=current or b"",
                index=self.node._write(),
            )

    def Range(self, request, context, transport="unary", timeout_ms=0):
        self.node._enter("Range", request, context, transport, timeout_ms)
        limit = request.limit or 1000
        with self.node.lock:
            keys = sorted(
                k
                for k in self.node.data
                if k.startswith(request.prefix) and k > request.start_after
            )
            page = keys[:limit]
            return kv_pb2.RangeResponse(
                items=[kv_pb2.KeyValue(key=k, value=self.node.data[k]) for k in page],
                more=len(keys) > limit,
                index=self.node.index,
            )

    def DeleteRange(self, request, context):
        self.node._enter("DeleteRange", request, context)
        with self.node.lock:
            doomed = [k for k in self.node.data if k.startswith(request.prefix)]
            for key in doomed:
                del self.node.data[key]
            return kv_pb2.DeleteRangeResponse(deleted=len(doomed), index=self.node._write())

    def Txn(self, request, context):
        """Compares on value and version (1 when present), and every op."""
        self.node._enter("Txn", request, context)
        with self.node.lock:
            data = self.node.data

            def holds(c: kv_pb2.Compare) -> bool:
                current = data.get(c.key)
                target = c.WhichOneof("target")
                if target == "value":
                    actual: object = current
                    if current is None:
                        return False
                else:
                    actual = 0 if current is None else 1
                want = getattr(c, target or "value")
                return {0: actual == want, 1: actual > want, 2: actual < want, 3: actual != want}[
                    c.result
                ]

            ok = all(holds(c) for c in request.compare)
            index = self.node._write()
            out = []
            for op in request.success if ok else request.failure:
                kind = op.WhichOneof("request")
                if kind == "put":
                    data[op.put.key] = op.put.value
                    out.append(kv_pb2.ResponseOp(put=kv_pb2.PutResponse(index=index)))
                elif kind == "get":
                    value = data.get(op.get.key)
                    got = kv_pb2.GetResponse(
                        found=value is not None, value=value or b"", version=int(value is not None)
                    )
                    out.append(kv_pb2.ResponseOp(get=got))
                elif kind == "delete":
                    gone = data.pop(op.delete.key, None) is not None
                    out.append(kv_pb2.ResponseOp(delete=kv_pb2.DeleteResponse(deleted=gone)))
                elif kind == "range":
                    items = [
                        kv_pb2.KeyValue(key=k, value=data[k])
                        for k in sorted(data)
                        if k.startswith(op.range.prefix)
                    ]
                    out.append(kv_pb2.ResponseOp(range=kv_pb2.RangeResponse(items=items)))
                else:
                    doomed = [k for k in data if k.startswith(op.delete_range.prefix)]
                    for key in doomed:
                        del data[key]
                    deleted = kv_pb2.DeleteRangeResponse(deleted=len(doomed))
                    out.append(kv_pb2.ResponseOp(delete_range=deleted))
            return kv_pb2.TxnResponse(
                succeeded=ok,
                responses=out,
                index=index,
                header=kv_pb2.ResponseHeader(member_id=self.node.node_id, revision=index),
            )

    def Watch(self, request_iterator, context):
        """Sends the node's ``changes`` from the start revision on (from the
        first: they happen after the watch starts), then waits until the
        client hangs up."""
        first = next(request_iterator)
        self.node._enter("Watch", first, context)
        start = first.create.start_revision or 1
        header = kv_pb2.ResponseHeader(member_id=self.node.node_id, revision=start - 1)
        yield kv_pb2.WatchResponse(watch_id=1, created=True, header=header)
        for revision, (kind, key, value) in enumerate(self.node.changes, 1):
            if revision < start:
                continue
            event = kv_pb2.Event(
                type=kv_pb2.EVENT_TYPE_DELETE if kind == "DELETE" else kv_pb2.EVENT_TYPE_PUT,
                kv=kv_pb2.KeyValue(key=key, value=value, mod_revision=revision),
            )
            header = kv_pb2.ResponseHeader(member_id=self.node.node_id, revision=revision)
            yield kv_pb2.WatchResponse(watch_id=1, header=header, events=[event])
        while context.is_active():
            self.node.released.wait(0.05)


class _Lease(kv_pb2_grpc.LeaseServicer):
    def __init__(self, node: FakeNode) -> None:
        self.node = node

    def Grant(self, request, context):
        self.node._enter("LeaseGrant", request, context)
        with self.node.lock:
            lease_id = request.id or max(self.node.leases, default=0) + 1
            self.node.leases[lease_id] = request.ttl
            return kv_pb2.LeaseGrantResponse(id=lease_id, ttl=request.ttl, index=self.node._write())

    def Revoke(self, request, context):
        self.node._enter("LeaseRevoke", request, context)
        with self.node.lock:
            if self.node.leases.pop(request.id, None) is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"lease {request.id} not found")
            return kv_pb2.LeaseRevokeResponse(deleted=0, index=self.node._write())

    def KeepAlive(self, request_iterator, context):
        for request in request_iterator:
            self.node._enter("LeaseKeepAlive", request, context)
            ttl = self.node.leases.get(request.id, 0)
            yield kv_pb2.LeaseKeepAliveResponse(id=request.id, ttl=ttl)

    def TimeToLive(self, request, context):
        self.node._enter("LeaseTimeToLive", request, context)
        ttl = self.node.leases.get(request.id)
        return kv_pb2.LeaseTimeToLiveResponse(
            id=request.id, ttl=-1 if ttl is None else ttl, granted_ttl=ttl or 0
        )


class _Admin(admin_pb2_grpc.AdminServicer):
    def __init__(self, node: FakeNode) -> None:
        self.node = node

    def Status(self, request, context):
        self.node._enter("Status", request, context)
        n = self.node
        return admin_pb2.StatusResponse(
            node=admin_pb2.NodeStatus(
                id=n.node_id,
                address=n.address,
                role=admin_pb2.ROLE_LEADER,
                term=3,
                leader=n.node_id,
                leader_address=n.address,
                commit_index=n.index,
                applied_index=n.index,
                last_index=n.index,
                pid=n.pid,
                version=n.version,
            ),
            members=[
                admin_pb2.MemberStatus(
                    id=n.node_id,
                    address=n.address,
                    match_index=n.index,
                    active=True,
                ),
                admin_pb2.MemberStatus(
                    id="n2",
                    address="127.0.0.1:1",
                    suffrage=admin_pb2.LEARNER,
                    match_index=max(0, n.index - 2),
                    lag=min(2, n.index),
                ),
            ],
            members_from_leader=True,
        )

    def Members(self, request, context):
        self.node._enter("Members", request, context)
        return admin_pb2.MembersResponse(
            members=[admin_pb2.Member(id=self.node.node_id, address=self.node.address)]
        )

    def TransferLeadership(self, request, context):
        self.node._enter("TransferLeadership", request, context)
        return admin_pb2.TransferLeadershipResponse(leader=request.target or "n2")

    def AddMember(self, request, context):
        self.node._enter("AddMember", request, context)
        return admin_pb2.AddMemberResponse(
            members=[
                admin_pb2.Member(id=self.node.node_id, address=self.node.address),
                admin_pb2.Member(id=request.id, address=request.address),
            ]
        )

    def RemoveMember(self, request, context):
        self.node._enter("RemoveMember", request, context)
        if request.id != "n2":
            context.abort(grpc.StatusCode.NOT_FOUND, f"no member {request.id!r}")
        return admin_pb2.RemoveMemberResponse(
            members=[admin_pb2.Member(id=self.node.node_id, address=self.node.address)]
        )

    def Snapshot(self, request, context):
        self.node._enter("Snapshot", request, context)
        return admin_pb2.SnapshotResponse(index=self.node.index)

    def SetUpgradeHold(self, request, context):
        self.node._enter("SetUpgradeHold", request, context)
        return admin_pb2.SetUpgradeHoldResponse(index=self.node.index)

    def CheckState(self, request, context):
        self.node._enter("CheckState", request, context)
        digest = hashlib.sha256(repr(sorted(self.node.data.items())).encode()).hexdigest()
        return admin_pb2.CheckStateResponse(
            index=self.node.index,
            digests=[admin_pb2.StateDigest(node=self.node.node_id, digest=digest)],
        )

    def Backup(self, request, context):
        """A real backup file of the fake node's keys (storage/backup.py)."""
        self.node._enter("Backup", request, context)
        machine = KVMachine()
        for index, (key, value) in enumerate(sorted(self.node.data.items()), 1):
            machine.apply(index, encode_put(key, value))
        state = io.BytesIO()
        with structlog.testing.capture_logs():  # the machine's log lines are not the CLI's
            machine.snapshot().write_to(state)
        header = BackupHeader(
            cluster_id="fake",
            index=max(1, len(self.node.data)),
            term=1,
            app_version=1,
            kv_version=1,
            created="2026-01-01T00:00:00+00:00",
            node=self.node.node_id,
            ramraft_version="test",
            model=None,
        )
        prefix = encode_prefix(header)
        info = admin_pb2.BackupInfo(
            cluster_id="fake", index=header.index, term=1, keys=len(self.node.data),
            node=self.node.node_id,
        )  # fmt: skip
        yield admin_pb2.BackupResponse(info=info, data=prefix)
        yield admin_pb2.BackupResponse(data=state.getvalue())
        yield admin_pb2.BackupResponse(data=hashlib.sha256(prefix + state.getvalue()).digest())


class _Blobs(blobs_pb2_grpc.BlobsServiceServicer):
    """Blobs in a dict (no majority, no catalog: what a client sees)."""

    def __init__(self, node: FakeNode) -> None:
        self.node = node

    def PutBlob(self, request_iterator, context):
        first = next(request_iterator)
        self.node._enter("PutBlob", first, context)
        data = first.data + b"".join(r.data for r in request_iterator)
        digest = hashlib.sha256(data).hexdigest()
        content_type = first.content_type or "application/octet-stream"
        self.node.blobs.setdefault(digest, (content_type, data))
        info = blobs_pb2.BlobInfo(sha256=digest, size=len(data), content_type=content_type)
        return blobs_pb2.PutBlobResponse(blob=info, index=self.node._write())

    def GetBlob(self, request, context):
        self.node._enter("GetBlob", request, context)
        digest = request.sha256.lower().removeprefix("sha256:")
        if digest not in self.node.blobs:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no blob {digest}")
        content_type, data = self.node.blobs[digest]
        info = blobs_pb2.BlobInfo(sha256=digest, size=len(data), content_type=content_type)
        start = min(request.offset, len(data))
        end = len(data) if not request.length else min(len(data), start + request.length)
        yield blobs_pb2.GetBlobResponse(blob=info, data=data[start:end])

    def DeleteBlob(self, request, context):
        self.node._enter("DeleteBlob", request, context)
        deleted = self.node.blobs.pop(request.sha256, None) is not None
        return blobs_pb2.DeleteBlobResponse(deleted=deleted, index=self.node._write())


class FakeServer:
    def __init__(self, node: FakeNode | None = None) -> None:
        self.node = node or FakeNode()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        kv_pb2_grpc.add_KVServicer_to_server(_KV(self.node), self._server)
        kv_pb2_grpc.add_LeaseServicer_to_server(_Lease(self.node), self._server)
        admin_pb2_grpc.add_AdminServicer_to_server(_Admin(self.node), self._server)
        blobs_pb2_grpc.add_BlobsServiceServicer_to_server(_Blobs(self.node), self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.address = self.node.address = f"127.0.0.1:{port}"
        self._server.start()

    def stop(self) -> None:
        self.node.release()  # no handler thread outlives the test
        self._server.stop(grace=None)


def dead_address() -> str:
    """An address nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"

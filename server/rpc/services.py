"""The gRPC servicers: decode, call the node API, encode. No Raft rules here.

Errors (the public contract, proto/kv.proto; each comes from the one table in
server/request_errors.py, which the web tier answers from too):
- INVALID_ARGUMENT: bad input (empty or over-long key, over-long value,
  unknown enum value), with a message naming the limit;
- UNAVAILABLE: no leader or quorum within the deadline, or this node is
  shutting down or stopped on a disk failure (clients retry elsewhere; the
  ``ramraft-leader`` trailing metadata names the leader's address if known);
- DEADLINE_EXCEEDED: the caller's deadline passed;
- RESOURCE_EXHAUSTED: too many requests waiting on this node;
- FAILED_PRECONDITION: a write refused by the state machine, NOT applied;
  the message starts with the reason's name: ``SESSION_EXPIRED`` (the
  cluster forgot the client's session: start a new one) or
  ``STALE_SEQUENCE`` (the sequence is below the session's first_unacked).
  Clients match on that prefix (client/_core.py session_expired).
A write that fails with UNAVAILABLE or DEADLINE_EXCEEDED may or may not have
been applied: retry it with the same session to make sure it is applied once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

import grpc
import structlog

from ramraft.consensus import RaftNode, Role
from ramraft.consensus.types import check_node_id
from ramraft.proto import admin_pb2, admin_pb2_grpc, kv_pb2, kv_pb2_grpc
from ramraft.server.blobs.backup import blob_section, section_bytes
from ramraft.server.config import parse_address
from ramraft.server.machines.cluster import encode_hold
from ramraft.server.machines.kv import (
    CasResult,
    DeleteResult,
    KVMachine,
    PutResult,
    Session,
    encode_cas,
    encode_delete,
    encode_put,
    encode_txn,
)
from ramraft.server.machines.kvops import (
    Compare,
    CompareResult,
    CompareTarget,
    Txn,
    TxnOp,
    TxnOpKind,
    TxnResult,
)
from ramraft.server.request_errors import (
    BadRequest,
    NotFound,
    NotLeader,
    RequestAborted,
    RequestContext,
    RequestError,
    Unavailable,
    check_command_result,
    error_message,
    wire_status,
)
from ramraft.server.rpc.ending import SHUTTING_DOWN
from ramraft.server.rpc.kvproto import (
    check_delete_ranges,
    event_message,
    key_value,
    linearizable,
    reserve_txn_reads,
    txn_from_request,
    txn_response,
)
from ramraft.server.rpc.streams import ROUND_CONFIRMED, StreamServer, stream_error
from ramraft.server.rpc.watch import WatchHub, WatchOut, WatchSpec
from ramraft.server.runtime.backup import backup_bytes, backup_header
from ramraft.server.runtime.ending import StreamsEnding
from ramraft.server.runtime.loop import RaftRuntime
from ramraft.server.runtime.membership import MembershipChanges
from ramraft.server.runtime.node_api import InputLimits, NodeAPI
from ramraft.server.runtime.status import MemberProgress
from ramraft.server.runtime.steward import Steward
from ramraft.server.security.auth import STREAM_GATE
from ramraft.server.security.budget import SMALL_ANSWER, page_budget, reserve_answer

if TYPE_CHECKING:
    from ramraft.server.blobs.manager import NodeBlobs

log = structlog.get_logger("ramraft.grpc")
LEADER_METADATA_KEY = "ramraft-leader"
R = TypeVar("R")

ServicerMethod = Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[R]]
StreamMethod = Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[R]]


def _timeout(context: grpc.aio.ServicerContext[Any, Any], limits: InputLimits) -> float:
    """The call's time limit: its deadline, at most --max-deadline-ms (also
    what a call without a deadline gets)."""
    return limits.deadline(context.time_remaining())


class TrailingMetadata(Protocol):
    """What ``error_code`` and ``name_leader`` need of a call's context: a
    grpc.aio ServicerContext, or a stream request's RequestContext."""

    def set_trailing_metadata(self, metadata: Any) -> None: ...


def error_code(
    e: Exception, runtime: RaftRuntime, context: TrailingMetadata
) -> grpc.StatusCode | None:
    """The status code that answers the node's error ``e`` (the table in
    server/request_errors.py), with the leader's address set as trailing
    metadata when the error names it; None for an error not in the table
    (a bug)."""
    status = wire_status(e)
    if status is None:
        return None
    if status.names_leader:
        leader = runtime.leader_client_address()
        if isinstance(e, NotLeader):
            leader = e.leader_address
        if leader:
            context.set_trailing_metadata(((LEADER_METADATA_KEY, leader),))
    return status.grpc_code


class _Call:
    """One call's outcome, for ``rpc`` and ``rpc_stream``: the node's errors
    answered with their status codes (the table in server/request_errors.py;
    an error not in it is a bug, left to grpc as UNKNOWN), and every call
    reported to the servicer's observers with its code and duration. Every
    key-value request, each of a KV.Stream's too, comes through here: not
    an async context manager, whose two coroutines cost a request 0.6 us."""

    __slots__ = ("code", "started")

    def __init__(self) -> None:
        self.code = "OK"
        self.started = time.perf_counter()

    def status(
        self, error: Exception, servicer: Any, context: TrailingMetadata
    ) -> grpc.StatusCode | None:
        """The code that answers ``error`` (``error_code``), noted for the
        report; None (noted UNKNOWN) for an error not in the table."""
        status = error_code(error, servicer.runtime, context)
        self.code = grpc.StatusCode.UNKNOWN.name if status is None else status.name
        return status

    async def failed(
        self, error: Exception, servicer: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """Abort the call with the code that answers ``error`` (abort
        raises); return only for an error not in the table."""
        status = self.status(error, servicer, context)
        if status is not None:
            await context.abort(status, error_message(error))

    def report(self, name: str, servicer: Any) -> None:
        for observe in servicer.observers:
            observe(name, self.code, time.perf_counter() - self.started)


def rpc(name: str) -> Callable[[ServicerMethod[R]], ServicerMethod[R]]:
    """Answer the node's errors with their status codes, and report every
    call to the observers (``_Call``)."""

    def wrap(fn: ServicerMethod[R]) -> ServicerMethod[R]:
        @functools.wraps(fn)
        async def handler(
            self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> R:
            call = _Call()
            try:
                return await fn(self, request, context)
            except Exception as error:
                await call.failed(error, self, context)
                raise  # a bug: grpc answers it UNKNOWN
            finally:
                call.report(name, self)

        return handler

    return wrap


def rpc_stream(name: str) -> Callable[[StreamMethod[R]], StreamMethod[R]]:
    """``rpc`` for a server-streaming method (an async generator): the same
    error mapping and the same report to the observers, once the stream ends."""

    def wrap(fn: StreamMethod[R]) -> StreamMethod[R]:
        @functools.wraps(fn)
        async def handler(
            self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[R]:
            call = _Call()
            try:
                async for item in fn(self, request, context):
                    yield item
            except Exception as error:
                await call.failed(error, self, context)
                raise  # a bug: grpc answers it UNKNOWN
            finally:
                call.report(name, self)

        return handler

    return wrap


def _session(request: Any) -> Session | None:
    """The request's (client_id, sequence, first_unacked), None if unset."""
    if not request.HasField("session"):
        return None
    s = request.session
    if s.client_id == 0 and s.sequence == 0:
        if s.first_unacked:
            raise BadRequest("session has first_unacked but no client_id and sequence")
        return None
    if s.client_id == 0 or s.sequence == 0:
        raise BadRequest("session needs both client_id and sequence (both non-zero)")
    if s.first_unacked > s.sequence:
        raise BadRequest(
            f"session first_unacked ({s.first_unacked}) must not exceed its sequence "
            f"({s.sequence}): it is the lowest sequence still waiting for a reply"
        )
    return Session(s.client_id, s.sequence, s.first_unacked)


def value_before(result: CasResult, expected: bytes | None) -> bytes:
    """The key's value before the CAS (proto/kv.proto: ``current``); the
    machine's result states the value after it. A swap happened only if the
    old value was ``expected`` (or the key was absent)."""
    if not result.swapped:
        return result.current
    return expected if result.found and expected is not None else b""


# StreamRequest's op field -> the unary method that serves it.
_STREAM_OPS = {
    "put": "Put",
    "get": "Get",
    "delete": "Delete",
    "compare_and_swap": "CompareAndSwap",
    "range": "Range",
    "txn": "Txn",
    "delete_range": "DeleteRange",
}


def name_leader(runtime: RaftRuntime, context: TrailingMetadata) -> None:
    """A follower (which forwarded the write) names the leader in its
    answer, as it does in a refusal: the client sends its next writes there
    (client/_core.py EndpointRing.lead). A forwarded write costs the
    follower and the leader a hop each: a client that stayed on a follower
    wrote at a fifth of the leader's rate."""
    core = runtime.core
    if core is None or core.role is Role.LEADER:
        return
    leader = runtime.leader_client_address()
    if leader:
        context.set_trailing_metadata(((LEADER_METADATA_KEY, leader),))


class KVService(kv_pb2_grpc.KVServicer):
    def __init__(
        self,
        api: NodeAPI,
        machine: KVMachine,
        hub: WatchHub | None = None,
        ending: StreamsEnding | None = None,
    ) -> None:
        self.api = api
        self.runtime: RaftRuntime = api.runtime
        self.machine = machine
        self.limits = api.limits
        self.hub = hub
        # The node's stop ends the streams (Stream, StreamBatch; watches:
        # WatchHub.shut_down).
        self.ending = ending if ending is not None else StreamsEnding()
        self.observers: list[Callable[[str, str, float], None]] = []

    def _header(self, revision: int | None = None) -> kv_pb2.ResponseHeader:
        """The header of an answer; ``revision`` None: the machine's now."""
        return response_header(
            self.runtime, self.machine.revision if revision is None else revision
        )

    async def _write(
        self, command: bytes, context: grpc.aio.ServicerContext[Any, Any], safe: bool
    ) -> tuple[int, object]:
        index, result = await self.api.write(
            command, _timeout(context, self.limits), retry_unsafe=safe
        )
        check_command_result(result)
        name_leader(self.runtime, context)
        return index, result

    async def _txn(
        self, txn: Txn, session: Session | None, context: grpc.aio.ServicerContext[Any, Any]
    ) -> TxnResult:
        check_delete_ranges(txn, self.machine.count)
        try:
            command = encode_txn(txn, session)
        except ValueError as e:
            raise BadRequest(str(e)) from None
        _, result = await self._write(command, context, session is not None)
        assert isinstance(result, TxnResult)
        return result

    async def _write_planned(
        self, planned: _Planned, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        assert planned.command is not None
        _, result = await self._write(planned.command, context, planned.session is not None)
        return planned.answer(result)

    def _plan_write(self, request: Any, op: str) -> _Planned:
        """What the unary handler of ``op`` (put, delete, compare_and_swap)
        checks, in its order (raising the input's errors), and proposes for
        ``request``; ``command`` None for what the handler makes a
        transaction of (a Put with a lease, a CompareAndSwap on revisions).
        The handlers and a stream's writes proposed in place
        (``_write_now``) both take it from here."""
        limits = self.limits
        if op == "delete":
            limits.check_key(request.key)
            session = _session(request)
            return _Planned(encode_delete(request.key, session), session, self._delete_answer)
        limits.check_new_key(request.key)
        limits.check_value(request.value)
        if op == "put":
            session = _session(request)
            if request.lease:
                return _Planned(None, session, self._put_answer)
            command = encode_put(request.key, request.value, session)
            return _Planned(command, session, self._put_answer)
        expected = _expected(request)
        if expected is not None:
            limits.check_value(expected)
        session = _session(request)
        answer = functools.partial(self._cas_answer, expected)
        if request.HasField("expected_mod_revision") or request.HasField("expected_version"):
            return _Planned(None, session, answer)
        return _Planned(encode_cas(request.key, expected, request.value, session), session, answer)

    @rpc("Put")
    async def Put(
        self, request: kv_pb2.PutRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> kv_pb2.PutResponse:
        planned = self._plan_write(request, "put")
        if planned.command is None:
            # A put with a lease is a one-op transaction (key-value version 2).
            put = TxnOp(TxnOpKind.PUT, request.key, request.value, request.lease)
            txn = await self._txn(Txn((), (put,), ()), planned.session, context)
            return kv_pb2.PutResponse(index=txn.index, header=self._header(txn.revision))
        response: kv_pb2.PutResponse = await self._write_planned(planned, context)
        return response

    def _put_answer(self, result: object) -> kv_pb2.PutResponse:
        assert isinstance(result, PutResult)
        # result.index: the first application's, also when this was a retry
        return kv_pb2.PutResponse(index=result.index, header=self._header(result.revision))

    @rpc("Delete")
    async def Delete(
        self, request: kv_pb2.DeleteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> kv_pb2.DeleteResponse:
        response: kv_pb2.DeleteResponse = await self._write_planned(
            self._plan_write(request, "delete"), context
        )
        return response

    def _delete_answer(self, result: object) -> kv_pb2.DeleteResponse:
        assert isinstance(result, DeleteResult)
        return kv_pb2.DeleteResponse(
            deleted=result.deleted, index=result.index, header=self._header(result.revision)
        )

    @rpc("CompareAndSwap")
    async def CompareAndSwap(
        self, request: kv_pb2.CompareAndSwapRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> kv_pb2.CompareAndSwapResponse:
        planned = self._plan_write(request, "compare_and_swap")
        if planned.command is None:
            expected = _expected(request)
            return await self._cas_with_revisions(request, expected, planned.session, context)
        response: kv_pb2.CompareAndSwapResponse = await self._write_planned(planned, context)
        return response

    def _cas_answer(self, expected: bytes | None, result: object) -> kv_pb2.CompareAndSwapResponse:
        assert isinstance(result, CasResult)
        return kv_pb2.CompareAndSwapResponse(
            swapped=result.swapped,
            found=result.found,
            current=value_before(result, expected),
            index=result.index,
            header=self._header(result.revision),
            mod_revision=result.mod_revision,
            version=result.version,
        )

    async def _cas_with_revisions(
        self,
        request: kv_pb2.CompareAndSwapRequest,
        expected: bytes | None,
        session: Session | None,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> kv_pb2.CompareAndSwapResponse:
        """A compare-and-swap on mod revision and/or version (and the value,
        if given): a transaction that reads the key and puts the value."""
        key = request.key
        equal = CompareResult.EQUAL
        compares = []
        if expected is not None:
            compares.append(Compare(key, CompareTarget.VALUE, equal, expected))
        if request.HasField("expected_mod_revision"):
            compares.append(Compare(key, CompareTarget.MOD, equal, request.expected_mod_revision))
        if request.HasField("expected_version"):
            compares.append(Compare(key, CompareTarget.VERSION, equal, request.expected_version))
        read = TxnOp(TxnOpKind.GET, key)
        put = TxnOp(TxnOpKind.PUT, key, request.value)
        result = await self._txn(Txn(tuple(compares), (read, put), (read,)), session, context)
        _, found, before, _, mod, version, _ = result.responses[0]
        if result.succeeded:
            mod, version = result.revision, version + 1
        return kv_pb2.CompareAndSwapResponse(
            swapped=result.succeeded,
            found=found,
            current=before,
            index=result.index,
            header=self._header(result.revision),
            mod_revision=mod,
            version=version,
        )

    @rpc("Get")
    async def Get(
        self, request: kv_pb2.GetRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> kv_pb2.GetResponse:
        self.limits.check_key(request.key)
        timeout = _timeout(context, self.limits)
        if not ROUND_CONFIRMED.get():
            await self.api.read(linearizable(request.consistency), timeout)
        found, value = self.machine.get(request.key)
        if len(value) > SMALL_ANSWER:
            await reserve_answer(len(value), timeout)
        return self._got(request.key, found, value)

    def _got(self, key: str, found: bool, value: bytes) -> kv_pb2.GetResponse:
        meta = self.machine.key_meta(key)
        return kv_pb2.GetResponse(
            found=found,
            value=value,
            index=self.machine.applied_index,
            header=self._header(),
            create_revision=meta.create_revision,
            mod_revision=meta.mod_revision,
            version=meta.version,
            lease=meta.lease,
        )

    def _get_now(self, request: kv_pb2.GetRequest) -> kv_pb2.GetResponse | None:
        """Get's answer when it waits for nothing: a serializable read, or a
        linearizable one whose round is confirmed (ROUND_CONFIRMED), of a
        valid key whose value is small. None otherwise: Get serves it (and
        answers its error)."""
        consistency = request.consistency
        if consistency != kv_pb2.SERIALIZABLE and not (
            consistency == kv_pb2.LINEARIZABLE and ROUND_CONFIRMED.get()
        ):
            return None
        if self.runtime.stopped_applying:
            return None  # Get refuses it
        key = request.key
        try:
            self.limits.check_key(key)
        except BadRequest:
            return None
        found, value = self.machine.get(key)
        if len(value) > SMALL_ANSWER:
            return None
        return self._got(key, found, value)

    @rpc("Range")
    async def Range(
        self, request: kv_pb2.RangeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> kv_pb2.RangeResponse:
        limit = request.limit or self.limits.max_range_limit
        limit = min(limit, self.limits.max_range_limit)
        timeout = _timeout(context, self.limits)
        if not ROUND_CONFIRMED.get():
            await self.api.read(linearizable(request.consistency), timeout)
        async with page_budget(self.limits.max_range_bytes, timeout) as budget:
            items, more = self.machine.range(
                request.prefix, request.start_after, limit, max_bytes=budget.page_bytes
            )
            budget.used(sum(len(k) + len(v) for k, v in items))
        meta = self.machine.key_meta
        return kv_pb2.RangeResponse(
            items=[key_value(k, v, meta(k)) for k, v in items],
            more=more,
            index=self.machine.applied_index,
            header=self._header(),
        )

    @rpc("DeleteRange")
    async def DeleteRange(
        self, request: kv_pb2.DeleteRangeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> kv_pb2.DeleteRangeResponse:
        self.limits.check_prefix(request.prefix)
        op = TxnOp(TxnOpKind.DELETE_RANGE, request.prefix, limit=self.limits.max_delete_range_keys)
        result = await self._txn(Txn((), (op,), ()), _session(request), context)
        return kv_pb2.DeleteRangeResponse(
            deleted=result.responses[0][1],
            index=result.index,
            header=self._header(result.revision),
        )

    @rpc("Txn")
    async def Txn(
        self, request: kv_pb2.TxnRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> kv_pb2.TxnResponse:
        txn = txn_from_request(request, self.limits)
        await reserve_txn_reads(txn, self.limits, _timeout(context, self.limits))
        result = await self._txn(txn, _session(request), context)
        return txn_response(result, self._header(result.revision))

    async def Watch(  # type: ignore[override]
        self,
        requests: AsyncIterator[kv_pb2.WatchRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        """Serve the watches of one stream (rpc/watch.py): requests are read
        as they come; responses are written as the watches produce them,
        the next batch asked for only once the last one is written."""
        hub = self.hub
        if hub is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this node serves no watches")
            raise AssertionError("abort returns only by raising")  # pragma: no cover
        started = time.perf_counter()
        stream = hub.open()
        refused: list[BadRequest] = []

        async def read_requests() -> None:
            try:
                async for request in requests:
                    _watch_request(stream, request)
            except BadRequest as e:  # a message that is no protobuf: the call ends
                refused.append(e)
                stream.close()
            finally:
                stream.end_requests()

        reader = asyncio.create_task(read_requests())
        code = grpc.StatusCode.OK
        try:
            while not stream.over:
                for out in await stream.next_batch():
                    await context.write(self._watch_response(out))
            if refused:
                code = grpc.StatusCode.INVALID_ARGUMENT
                await context.abort(code, error_message(refused[0]))
            if stream.shutting_down:  # WatchHub.shut_down: watch on through another node
                code = grpc.StatusCode.UNAVAILABLE
                await context.abort(code, SHUTTING_DOWN)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            stream.close()
            reader.cancel()
            for observe in self.observers:
                observe("Watch", code.name, time.perf_counter() - started)

    def _watch_response(self, out: WatchOut) -> kv_pb2.WatchResponse:
        return kv_pb2.WatchResponse(
            header=self._header(out.revision),
            watch_id=out.watch_id,
            created=out.created,
            canceled=out.canceled,
            compact_revision=out.compact_revision,
            cancel_reason=out.cancel_reason,
            events=[event_message(e) for _, events in out.events for e in events],
        )

    async def Stream(  # type: ignore[override]
        self,
        requests: AsyncIterator[kv_pb2.StreamRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        """Serve each request as it arrives, concurrently; write each
        response when its request completes (server/rpc/streams.py)."""
        server = StreamServer(
            self._stream_one, _STREAM_OPS, context, STREAM_GATE.get(), False, None, self._stream_now
        )
        await self._run_stream(server, requests, context)

    async def StreamBatch(  # type: ignore[override]
        self,
        requests: AsyncIterator[kv_pb2.StreamBatchRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        """As Stream, many requests to a message and many answers to a
        message (server/rpc/streams.py)."""
        server = StreamServer(
            self._stream_one,
            _STREAM_OPS,
            context,
            STREAM_GATE.get(),
            True,
            _SharedRound(self),
            self._stream_now,
        )
        await self._run_stream(server, requests, context)

    async def _run_stream(
        self,
        server: StreamServer,
        requests: AsyncIterator[Any],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        """Run ``server`` until the client is done, or the node stops: then
        the requests read are answered and the stream ends UNAVAILABLE
        (the client sends the others to another node)."""
        with self.ending.track(server.end):
            await server.run(requests)
        if server.ended:
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)

    def _stream_now(
        self,
        request: kv_pb2.StreamRequest,
        op: str,
        stream: grpc.aio.ServicerContext[Any, Any],
        arrived: float,
    ) -> kv_pb2.StreamResponse | asyncio.Future[kv_pb2.StreamResponse | None] | None:
        """A stream's Get answered at once, without a task or a coroutine,
        when it waits for nothing (``_get_now``), or a write proposed at once
        (``_write_now``); None: ``_stream_one`` serves the request. Most reads
        are such: a task and the coroutines of the unary path cost a read 6
        us of the leader's 26 (measured)."""
        if op in _WRITES_NOW:
            return self._write_now(request, op, stream, arrived)
        if op != "get":
            return None
        call = _Call()
        answer = self._get_now(request.get)
        if answer is None:
            return None
        call.report("Get", self)
        return kv_pb2.StreamResponse(id=request.id, get=answer)

    def _write_now(
        self,
        request: kv_pb2.StreamRequest,
        op: str,
        stream: grpc.aio.ServicerContext[Any, Any],
        arrived: float,
    ) -> asyncio.Future[kv_pb2.StreamResponse | None] | None:
        """A stream's Put, Delete or CompareAndSwap, proposed here and now
        when this node leads: the future of its answer, set by ``_WriteNow``
        when its entry is applied (or its deadline passes), as the unary
        handler would answer it, without a task or the unary path's
        coroutines (a quarter of the leader's CPU per write, measured).
        None, and nothing proposed, for what the handler must serve: a Put
        with a lease, a CompareAndSwap on revisions (both transactions), bad
        input, a follower (which forwards), a node that refuses to propose
        now (the handler gives the error)."""
        try:
            planned = self._plan_write(getattr(request, op), op)
            if planned.command is None:
                return None
            context = RequestContext(request.timeout_ms, arrived, stream)
            left = self.limits.deadline(context.time_remaining())
            if left <= 0:
                return None
            proposal = self.runtime.offer(planned.command)
        except RequestError:
            return None
        retry = planned.session is not None
        return _WriteNow(self, request, op, context, proposal, left, retry, planned.answer).answer

    async def _stream_one(
        self,
        request: kv_pb2.StreamRequest,
        op: str,
        stream: grpc.aio.ServicerContext[Any, Any],
        arrived: float,
    ) -> kv_pb2.StreamResponse:
        context = RequestContext(request.timeout_ms, arrived, stream)
        handler = getattr(self, _STREAM_OPS[op])
        try:
            result = await handler(getattr(request, op), context)
        except RequestAborted as e:
            return _stream_refusal(request, e.code, e.details, context)
        except Exception as e:  # a bug: answer this request, keep the stream
            log.exception("stream_request_failed", op=op)
            return stream_error(request, (grpc.StatusCode.INTERNAL, f"internal error: {e}"))
        return _stream_answer(request, op, result, context)


def _stream_answer(
    request: kv_pb2.StreamRequest, op: str, result: Any, context: RequestContext
) -> kv_pb2.StreamResponse:
    """A stream request's answer: the op's ``result``, and the leader its
    handler named (a follower's forwarded write)."""
    response = kv_pb2.StreamResponse(
        id=request.id, leader=context.metadata(LEADER_METADATA_KEY, "")
    )
    getattr(response, op).CopyFrom(result)
    return response


def _stream_refusal(
    request: kv_pb2.StreamRequest, code: grpc.StatusCode, message: str, context: RequestContext
) -> kv_pb2.StreamResponse:
    """A stream request's refusal with ``code``, naming the leader when its
    handler did."""
    return kv_pb2.StreamResponse(
        id=request.id,
        code=code.value[0],
        message=message,
        leader=context.metadata(LEADER_METADATA_KEY, ""),
    )


def _expected(request: kv_pb2.CompareAndSwapRequest) -> bytes | None:
    """The value a CompareAndSwap expects; None: the key must be absent."""
    return request.expected if request.HasField("expected") else None


class _Planned(NamedTuple):
    """A write as its handler proposes it (``KVService._plan_write``)."""

    command: bytes | None  # None: a transaction the handler builds
    session: Session | None
    answer: Callable[[object], Any]  # the op's response, of the machine's result


# A stream's writes proposed in place (KVService._write_now).
_WRITES_NOW = frozenset(("put", "delete", "compare_and_swap"))


class _WriteNow:
    """One write that ``KVService._write_now`` proposed: its answer
    (``answer``, a future) is set when the proposal's future is done, as
    the unary handler and ``NodeAPI.write`` would answer: the op's response
    (``make``) once the entry is applied; DEADLINE_EXCEEDED when the
    deadline passes first (the wait is given up: a proposal not made yet is
    dropped); None, to have the handler serve the request from the start,
    when the write may be retried (a NotLeader refusal made before
    proposing; Unavailable for a write with a session, which the machine
    applies once); the error's answer otherwise. A stream that ends cancels
    the answer, and with it the wait."""

    __slots__ = (
        "answer",
        "call",
        "context",
        "make",
        "op",
        "proposal",
        "request",
        "retry",
        "service",
        "timer",
    )

    def __init__(
        self,
        service: KVService,
        request: kv_pb2.StreamRequest,
        op: str,
        context: RequestContext,
        proposal: asyncio.Future[tuple[int, object]],
        left: float,
        retry: bool,
        make: Callable[[object], Any],
    ) -> None:
        loop = asyncio.get_running_loop()
        self.service = service
        self.request = request
        self.op = op
        self.make = make
        self.context = context
        self.proposal = proposal
        self.retry = retry
        self.call = _Call()
        self.timer = loop.call_later(left, proposal.cancel)
        self.answer: asyncio.Future[kv_pb2.StreamResponse | None] = loop.create_future()
        proposal.add_done_callback(self._done)
        self.answer.add_done_callback(self._stream_gone)

    def _stream_gone(self, answer: asyncio.Future[kv_pb2.StreamResponse | None]) -> None:
        """The stream ended (it cancels the answer): give up the wait."""
        if answer.cancelled():
            self.timer.cancel()
            self.proposal.cancel()

    def _done(self, proposal: asyncio.Future[tuple[int, object]]) -> None:
        self.timer.cancel()
        if self.answer.done():
            return  # the stream ended
        service, request, context = self.service, self.request, self.context
        try:
            if proposal.cancelled():
                raise TimeoutError
            _, result = proposal.result()
            check_command_result(result)
            made = self.make(result)
        except NotLeader:
            self.answer.set_result(None)  # refused before proposing: forwarded by the handler
            return
        except Unavailable as error:
            runtime = service.runtime
            if self.retry and runtime.failed is None and not runtime.stopping:
                self.answer.set_result(None)
                return
            self.answer.set_result(self._failure(error))
            return
        except Exception as error:
            if wire_status(error) is None:  # a bug, as _stream_one answers it
                log.exception("stream_request_failed", op=self.op)
            self.answer.set_result(self._failure(error))
            return
        name_leader(service.runtime, context)
        self.call.report(_STREAM_OPS[self.op], service)
        self.answer.set_result(_stream_answer(request, self.op, made, context))

    def _failure(self, error: Exception) -> kv_pb2.StreamResponse:
        """The answer the handler gives for ``error`` (``_Call.failed``,
        then ``_stream_one``), reported as it reports it."""
        service, request, call = self.service, self.request, self.call
        status = call.status(error, service, self.context)
        call.report(_STREAM_OPS[self.op], service)
        if status is None:
            return stream_error(request, (grpc.StatusCode.INTERNAL, f"internal error: {error}"))
        return _stream_refusal(request, status, error_message(error), self.context)


def _own_deadline(arrival: tuple[kv_pb2.StreamRequest, float]) -> float:
    """When a stream request's own deadline passes (time.monotonic())."""
    request, arrived = arrival
    return arrived + request.timeout_ms / 1000 if request.timeout_ms else float("inf")


class _SharedRound:
    """The linearizable reads of one KV.StreamBatch message share one
    ReadIndex round (server/rpc/streams.py RoundShare): Gets and Ranges."""

    __slots__ = ("service",)

    def __init__(self, service: KVService) -> None:
        self.service = service

    def wants(self, request: kv_pb2.StreamRequest, op: str | None) -> bool:
        if op == "get":
            consistency = request.get.consistency
        elif op == "range":
            consistency = request.range.consistency
        else:
            return False
        # An unknown value is left to the read itself, which refuses it.
        return consistency == kv_pb2.LINEARIZABLE

    def ask(
        self,
        requests: list[tuple[kv_pb2.StreamRequest, float]],
        stream: grpc.aio.ServicerContext[Any, Any],
    ) -> asyncio.Future[bool]:
        loop = asyncio.get_running_loop()
        # The round may take as long as the read whose deadline comes first.
        request, arrived = min(requests, key=_own_deadline)
        remaining = RequestContext(request.timeout_ms, arrived, stream).time_remaining()
        timeout = self.service.limits.deadline(remaining)
        index = None
        if timeout > 0:
            with contextlib.suppress(RequestError):
                index = self.service.runtime.ask_read_index()  # asked now
        if index is None:
            refused: asyncio.Future[bool] = loop.create_future()
            refused.set_result(False)  # each read tries on its own, and answers its own error
            return refused
        return loop.create_task(_confirmed(index, timeout))


async def _confirmed(index: asyncio.Future[int], timeout: float) -> bool:
    """Whether the read index ``index`` came (and was applied) in time."""
    try:
        async with asyncio.timeout(timeout):
            await index
    except (RequestError, TimeoutError):
        return False
    return True


def response_header(runtime: RaftRuntime, revision: int) -> kv_pb2.ResponseHeader:
    core = runtime.core
    return kv_pb2.ResponseHeader(
        cluster_id=runtime.cluster_state().cluster_id,
        member_id=runtime.id,
        revision=revision,
        raft_term=core.term if core is not None else 0,
    )


def _watch_request(stream: Any, request: kv_pb2.WatchRequest) -> None:
    which = request.WhichOneof("request")
    if which == "create":
        create = request.create
        stream.create(
            WatchSpec(
                key=create.key,
                prefix=create.prefix,
                start_revision=max(0, create.start_revision),
                progress_notify=create.progress_notify,
                watch_id=create.watch_id,
            )
        )
    elif which == "cancel":
        stream.cancel(request.cancel.watch_id)
    elif which == "progress":
        stream.request_progress()


_ROLES = {
    Role.FOLLOWER: admin_pb2.ROLE_FOLLOWER,
    Role.PRE_CANDIDATE: admin_pb2.ROLE_PRE_CANDIDATE,
    Role.CANDIDATE: admin_pb2.ROLE_CANDIDATE,
    Role.LEADER: admin_pb2.ROLE_LEADER,
}


def _suffrage(member: MemberProgress) -> admin_pb2.Suffrage.ValueType:
    return admin_pb2.VOTER if member.voter else admin_pb2.LEARNER


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, api: NodeAPI, membership: MembershipChanges, steward: Steward) -> None:
        self.api = api
        self.runtime = api.runtime
        self.limits = api.limits
        self.membership = membership
        self.steward = steward
        self.observers: list[Callable[[str, str, float], None]] = []
        self.blobs: NodeBlobs | None = None  # a backup holds the blobs its state names

    def _members(self) -> list[admin_pb2.Member]:
        return [
            admin_pb2.Member(id=m.id, address=m.address, suffrage=_suffrage(m))
            for m in self.runtime.members()
        ]

    @rpc("Status")
    async def Status(
        self, request: admin_pb2.StatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.StatusResponse:
        s = self.runtime.status()
        node = admin_pb2.NodeStatus(
            id=s.id,
            address=self.runtime.config.client_address_of(s.address) if s.address else "",
            # Not started yet: a follower that knows nothing.
            role=_ROLES[s.role] if s.role is not None else admin_pb2.ROLE_FOLLOWER,
            term=s.term,
            leader=s.leader,
            leader_address=s.leader_address,
            commit_index=s.commit_index,
            applied_index=s.applied_index,
            last_index=s.last_index,
            snapshot_index=s.snapshot_index,
            first_index=s.first_index,
            pid=s.pid,
            version=s.version,
            cluster_id=s.cluster_id,
            app_version=s.app_version,
            app_version_supported=s.app_version_supported,
            kv_version=s.kv_version,
            kv_version_supported=s.kv_version_supported,
            upgrade_hold=s.upgrade_hold,
            halted=s.halted,
            diverged=list(s.diverged),
            diverged_at=s.diverged_at,
        )
        known = self.steward.known if s.leading else {}
        members = [
            admin_pb2.MemberStatus(
                id=m.id,
                address=m.address,
                suffrage=_suffrage(m),
                match_index=m.match_index,
                lag=m.lag,
                active=m.active,
                app_version_supported=known[m.id].app_supported if m.id in known else 0,
                kv_version_supported=known[m.id].kv_supported if m.id in known else 0,
            )
            for m in self.runtime.members()
        ]
        return admin_pb2.StatusResponse(node=node, members=members, members_from_leader=s.leading)

    @rpc("Members")
    async def Members(
        self, request: admin_pb2.MembersRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.MembersResponse:
        return admin_pb2.MembersResponse(members=self._members())

    @rpc("TransferLeadership")
    async def TransferLeadership(
        self,
        request: admin_pb2.TransferLeadershipRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> admin_pb2.TransferLeadershipResponse:
        target = request.target
        core = self.runtime.core
        # The configuration, not the address book: it also holds the
        # addresses of removed members and of additions that failed.
        if target and (core is None or target not in core.conf.members):
            raise NotFound(f"{target} is not a member")
        leader = await self.membership.transfer_leadership(
            target, timeout=_timeout(context, self.limits) or 5.0
        )
        return admin_pb2.TransferLeadershipResponse(leader=leader)

    @rpc("AddMember")
    async def AddMember(
        self, request: admin_pb2.AddMemberRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.AddMemberResponse:
        if not request.id or not request.address:
            raise BadRequest("AddMember needs an id and an address (HOST:PORT)")
        try:
            # The rules of --peers: the id goes into the log and the
            # address is dialed by every member.
            check_node_id(request.id)
            if parse_address(request.address, "AddMember address")[1] == 0:
                raise ValueError(f"AddMember address: {request.address!r} has port 0")
        except ValueError as e:
            raise BadRequest(str(e)) from None
        await self.membership.add_member(
            request.id, request.address, timeout=_timeout(context, self.limits) or 30.0
        )
        return admin_pb2.AddMemberResponse(members=self._members())

    @rpc("RemoveMember")
    async def RemoveMember(
        self, request: admin_pb2.RemoveMemberRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.RemoveMemberResponse:
        if not request.id:
            raise BadRequest("RemoveMember needs an id")
        await self.membership.remove_member(request.id)
        return admin_pb2.RemoveMemberResponse(members=self._members())

    @rpc("Snapshot")
    async def Snapshot(
        self, request: admin_pb2.SnapshotRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.SnapshotResponse:
        return admin_pb2.SnapshotResponse(index=await self.runtime.snapshotting.snapshot_now())

    @rpc("SetUpgradeHold")
    async def SetUpgradeHold(
        self,
        request: admin_pb2.SetUpgradeHoldRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> admin_pb2.SetUpgradeHoldResponse:
        index, _ = await self.runtime.propose(encode_hold(request.hold))
        return admin_pb2.SetUpgradeHoldResponse(index=index)

    @rpc("CheckState")
    async def CheckState(
        self, request: admin_pb2.CheckStateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> admin_pb2.CheckStateResponse:
        if self.runtime.role is not Role.LEADER:
            raise NotLeader(self.runtime.leader, self.runtime.leader_client_address())
        # Without a deadline: 30 s for the check (not the server's maximum).
        left = _timeout(context, self.limits) if context.time_remaining() is not None else None
        verdict = await self.steward.check_now(wait=max(1.0, (left or 30.0) - 1.0))
        return admin_pb2.CheckStateResponse(
            index=verdict.index,
            digests=[
                admin_pb2.StateDigest(node=node, digest=digest)
                for node, digest in sorted(verdict.digests.items())
            ],
            diverged=list(verdict.diverged),
        )

    @rpc_stream("Backup")
    async def Backup(
        self, request: admin_pb2.BackupRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[admin_pb2.BackupResponse]:
        runtime = self.runtime
        await self.api.linearizable(_timeout(context, self.limits))
        machine = runtime.machine
        model = self._model_name()
        blobs = self.blobs
        # Blob files stay put while the backup streams them.
        with blobs.store.hold_deletions() if blobs else contextlib.nullcontext():

            def take(core: RaftNode) -> tuple[Any, Any, int, list[Any]]:
                # One loop turn: the view, its index, the cluster record
                # (versions), the key count and the blob catalog agree.
                cluster = runtime.cluster_state()
                header = backup_header(core, cluster, runtime.id, model)
                entries = blobs.backup_entries() if blobs is not None else []
                return machine.snapshot(), header, self._key_count(), entries

            job, header, keys, entries = await runtime.call(take)
            section = None
            if entries and blobs is not None:
                try:
                    # Blobs may take longer than --max-deadline-ms to fetch.
                    await blobs.gather_for_backup(entries, context.time_remaining())
                except BaseException:
                    job.close()
                    raise
                announced = {"count": len(entries), "bytes": section_bytes(entries)}
                header = dataclasses.replace(header, blobs=announced)
                section = blob_section(blobs.store, entries)
            info = admin_pb2.BackupInfo(
                cluster_id=header.cluster_id,
                index=header.index,
                term=header.term,
                keys=keys,
                node=runtime.id,
            )
            first = True
            async for piece in backup_bytes(header, job, section):
                yield admin_pb2.BackupResponse(info=info if first else None, data=piece)
                first = False

    def _model_name(self) -> str | None:
        cluster = self.runtime.cluster
        model = cluster.model if cluster is not None else None
        return getattr(model, "model_name", None)

    def _key_count(self) -> int:
        cluster = self.runtime.cluster
        kv = cluster.kv if cluster is not None else None
        return len(kv) if isinstance(kv, KVMachine) else 0

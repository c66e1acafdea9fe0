"""The in-process API: the same reads and writes the gRPC KV service and the
web tier serve, as plain coroutines.

Every node accepts every request. A write on a follower is forwarded to the
leader over the peer port (``Peer.Forward``) and retried there until its
deadline while leadership moves; the session in the command makes the
retries safe. A linearizable read asks for a read index (the leader, or a
follower asking the leader) and waits until it is applied locally; a
serializable read is served from local memory at once.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import structlog

from ramraft.proto import raft_pb2
from ramraft.server.config import NodeLimits
from ramraft.server.request_errors import (
    BadRequest,
    CommandRefused,
    NotLeader,
    Overloaded,
    RequestError,
    Unavailable,
    error_message,
    wire_status,
)
from ramraft.server.runtime.deadline import DEFAULT_TIMEOUT, Deadline, within
from ramraft.server.runtime.forwarding import ForwardStreams, StreamEnded, refused_before_proposal
from ramraft.server.runtime.loop import RaftRuntime
from ramraft.server.runtime.transport import FORWARD_REFUSAL_KEY, PEER_SERVICE

log = structlog.get_logger("ramraft.api")


def key_bytes(key: str) -> int:
    """A key's (or prefix's) size against --max-key-bytes: its UTF-8 bytes."""
    return len(key.encode("utf-8", errors="surrogatepass"))


@dataclass(frozen=True)
class InputLimits:
    """What a request's input is checked against before anything is
    proposed (from the node's --max-key-bytes, --max-value-bytes,
    --max-range-page, --max-range-bytes, --max-deadline-ms, --max-txn-ops,
    --max-txn-bytes and --max-delete-range-keys; server/config.py NodeLimits).

    One rule for keys on every front door (gRPC and HTTP): a key written
    now is UTF-8 text without control characters (U+0000-U+001F,
    U+007F-U+009F), which a log line or a terminal would show changed;
    reads and deletes take any key, so that keys written before this rule
    can still be read and removed, over HTTP too."""

    max_key_bytes: int
    max_value_bytes: int
    max_range_limit: int
    max_range_bytes: int = 4 << 20
    max_deadline: float = 60.0  # seconds; the longest a call may wait
    # Key-value version 2 (--max-txn-ops, --max-txn-bytes,
    # --max-delete-range-keys): a transaction's size, and the keys a
    # delete-range may remove in one apply.
    max_txn_ops: int = 128
    max_txn_bytes: int = 2 << 20
    max_delete_range_keys: int = 10_000

    @classmethod
    def of(cls, limits: NodeLimits) -> InputLimits:
        """The input limits of a node's settings."""
        return cls(
            limits.max_key_bytes,
            limits.max_value_bytes,
            limits.max_range_limit,
            limits.max_range_bytes,
            limits.max_deadline_ms / 1000,
            max_txn_ops=limits.max_txn_ops,
            max_txn_bytes=limits.max_txn_bytes,
            max_delete_range_keys=limits.max_delete_range_keys,
        )

    def deadline(self, remaining: float | None) -> float:
        """A call's time limit: its own deadline, at most the server's
        maximum, which is also what a call that sets none gets."""
        if remaining is None:
            return self.max_deadline
        return max(0.0, min(remaining, self.max_deadline))

    def check_key(self, key: str) -> None:
        if not key:
            raise BadRequest("key must not be empty")
        size = key_bytes(key)
        if size > self.max_key_bytes:
            raise BadRequest(f"key is {size} bytes; the limit is {self.max_key_bytes} bytes")

    def check_prefix(self, prefix: str) -> None:
        """The prefix of a delete-range: empty (every key) or no longer
        than a key may be (a longer one matches nothing, yet its command
        would go into the log)."""
        size = key_bytes(prefix)
        if size > self.max_key_bytes:
            raise BadRequest(
                f"prefix is {size} bytes; the limit is {self.max_key_bytes} bytes "
                "(no key is longer)"
            )

    def check_new_key(self, key: str) -> None:
        """The key of a write (Put, CompareAndSwap): ``check_key``, and no
        control characters."""
        self.check_key(key)
        bad = _CONTROL.search(key)
        if bad is not None:
            raise BadRequest(
                f"key contains the control character U+{ord(bad.group()):04X} at offset "
                f"{bad.start()}; keys are text without control characters"
            )

    def check_value(self, value: bytes) -> None:
        if len(value) > self.max_value_bytes:
            raise BadRequest(
                f"value is {len(value)} bytes; the limit is {self.max_value_bytes} bytes"
            )


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


class NodeAPI:
    """Reads and writes through this node's runtime."""

    def __init__(
        self,
        runtime: RaftRuntime,
        encode_result: Callable[[object], bytes],
        decode_result: Callable[[bytes], object],
        limits: InputLimits,
        *,
        forward: Forwarder | None = None,
    ) -> None:
        self.runtime = runtime
        self.encode_result = encode_result
        self.decode_result = decode_result
        self.limits = limits
        self.forwarded = 0
        # How a write reaches the leader: Peer.ForwardStream over gRPC
        # (Peer.Forward for a leader without it), or (an in-process
        # cluster, server/inprocess/) a direct call.
        self.forward_streams = ForwardStreams(
            lambda: runtime.transport, self._forward_grpc, self._forward_answer
        )
        self._send_forward: Forwarder = forward if forward is not None else self.forward_streams

    async def close(self) -> None:
        """End the forward streams (the node is stopping)."""
        await self.forward_streams.close()

    # ---- writes -----------------------------------------------------------------------------

    async def write(
        self, command: bytes, timeout: float | None = None, *, retry_unsafe: bool = False
    ) -> tuple[int, object]:
        """Propose ``command`` through the leader; (index, result) once applied.

        A write that may already be in the log (proposed here or forwarded,
        then leadership moved) is retried only if ``retry_unsafe`` -- the
        command carries a session, so a second copy is not applied again.
        Without one, that ambiguity is the caller's: Unavailable."""
        deadline = Deadline(timeout)
        backoff = 0.01
        while True:
            left = deadline.check()
            try:
                return await within(self.runtime.offer(command), left)
            except NotLeader as e:
                leader = e.leader  # refused before proposing: safe to send elsewhere
            except Unavailable:
                if not retry_unsafe or self.runtime.out_of_service:
                    raise
                leader = ""
            if not leader:
                await self.runtime.wait_for_leader(deadline.check())
                continue
            try:
                return await self._forward(leader, command, deadline)
            except RetryElsewhere as e:
                if not retry_unsafe and e.maybe_applied:
                    raise Unavailable(
                        "the leader changed while the write was in flight; it may or may not "
                        "have been applied"
                    ) from e
                # The leader we know is gone or busy: retry as soon as another
                # one is known (an election), or after a back-off.
                pause = min(backoff, max(0.0, deadline.remaining()))
                await self.runtime.wait_for_new_leader(leader, pause)
                backoff = min(backoff * 2, 0.2)

    async def write_in_term(
        self, command: bytes, term: int, timeout: float | None = None
    ) -> tuple[int, object]:
        """Propose ``command`` on THIS node as the leader of ``term``, once:
        never forwarded, never retried (the leader's background jobs,
        server/jobs.py). Fails with NotLeader/Unavailable when this node does
        not lead in ``term`` when the proposal is made, or stops leading
        before the entry commits."""
        left = Deadline(timeout).check()
        return await within(self.runtime.offer(command, term=term), left)

    async def _forward(self, leader: str, command: bytes, deadline: Deadline) -> tuple[int, object]:
        self.forwarded += 1
        return await self._send_forward(leader, command, deadline)

    async def _forward_grpc(
        self, leader: str, command: bytes, deadline: Deadline
    ) -> tuple[int, object]:
        channel = self.runtime.transport.channel(leader)
        forward = channel.unary_unary(
            f"/{PEER_SERVICE}/Forward",
            request_serializer=raft_pb2.ForwardRequest.SerializeToString,
            response_deserializer=raft_pb2.ForwardResponse.FromString,
        )
        try:
            response = await forward(
                raft_pb2.ForwardRequest(command=command),
                timeout=deadline.check(),
                metadata=self.runtime.transport.call_metadata(),
            )
        except grpc.aio.AioRpcError as e:
            raise forward_error(e.code(), e.details() or "", refused_before_proposal(e)) from e
        return response.index, self.decode_result(response.result)

    def _forward_answer(self, answer: raft_pb2.ForwardAnswer | StreamEnded) -> tuple[int, object]:
        """A ForwardStream write's (index, result), or its error, as
        ``_forward_grpc`` would have it: a stream that ended before the
        answer leaves the write maybe applied, unless the leader said it
        proposed none of those it did not answer (it stopped)."""
        if isinstance(answer, StreamEnded):
            raise forward_error(answer.code, answer.details, answer.before_proposal) from answer
        if answer.code:
            code = _CODES.get(answer.code, grpc.StatusCode.UNKNOWN)
            raise forward_error(code, answer.message, answer.refusal.before_proposal)
        return answer.response.index, self.decode_result(answer.response.result)

    async def serve_forward(self, command: bytes, context: Any) -> raft_pb2.ForwardResponse:
        """The leader's side of ``Peer.Forward``. A refusal says whether the
        command was proposed (ForwardRefusal); its message keeps saying "not
        the leader" when it is not, which is what followers of release 0.1.0
        look for instead."""
        remaining = context.time_remaining()
        try:
            left = remaining if remaining is not None else DEFAULT_TIMEOUT
            index, result = await within(self.runtime.offer(command), left)
        except (RequestError, TimeoutError) as e:
            status = wire_status(e)
            assert status is not None, "every RequestError has a row in ERROR_STATUSES"
            refusal = raft_pb2.ForwardRefusal(
                before_proposal=isinstance(e, RequestError) and e.before_proposal
            )
            context.set_trailing_metadata(((FORWARD_REFUSAL_KEY, refusal.SerializeToString()),))
            await context.abort(status.grpc_code, error_message(e))
        return raft_pb2.ForwardResponse(result=self.encode_result(result), index=index)

    # ---- reads ------------------------------------------------------------------------------

    async def read(self, linearizable: bool, timeout: float | None = None) -> None:
        """Wait until reading local memory is what the caller asked for:
        linearizable, or (serializable) at once -- unless this node has
        stopped applying the log, which refuses both (Unavailable)."""
        if linearizable:
            await self.linearizable(timeout)
        else:
            self.runtime.check_serving_reads()

    async def linearizable(self, timeout: float | None = None) -> int:
        """Wait until reading local memory is linearizable; returns the
        applied index the read will see (at least)."""
        deadline = Deadline(timeout)
        while True:
            left = deadline.check()
            try:
                return await within(self.runtime.ask_read_index(), left)
            except Unavailable:
                if self.runtime.out_of_service:
                    raise
            # No leader, or leadership moved mid-read: wait for a leader, retry.
            await self.runtime.wait_for_leader(deadline.check())
            await asyncio.sleep(min(0.01, max(0.0, deadline.remaining())))


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def forward_error(code: grpc.StatusCode | None, details: str, before_proposal: bool) -> Exception:
    """The error of a forwarded write that ended with ``code`` (Forward's
    status, or a ForwardStream answer's): ``before_proposal`` is the
    leader's ForwardRefusal (False when it sent none)."""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return TimeoutError("the request's deadline passed at the leader")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL):
        # INTERNAL: grpc's own "Internal error from Core", a call the
        # transport lost (seen under load): its outcome is as unknown as a
        # lost connection's, and a write with a session is safe to send again.
        return RetryElsewhere(maybe_applied=not before_proposal)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return Overloaded(details or "the leader is overloaded")
    if code == grpc.StatusCode.FAILED_PRECONDITION and before_proposal:
        # The leader will not propose it (a command of a version the
        # cluster does not run yet): as final here as there.
        return CommandRefused(details or "the leader refused the command")
    return Unavailable(f"forwarding to the leader failed: {details}")


class Forwarder(Protocol):
    """Sends a write to the leader: (index, result) once the leader applied
    it. Raises RetryElsewhere when the leader could not take it (gone, no
    longer leading), TimeoutError at the deadline, or the RequestError the
    leader answered with."""

    def __call__(
        self, leader: str, command: bytes, deadline: Deadline, /
    ) -> Awaitable[tuple[int, object]]: ...


class RetryElsewhere(Exception):
    """The node we forwarded to could not take the write; ask again.
    ``maybe_applied``: it may have proposed it before failing."""

    def __init__(self, maybe_applied: bool) -> None:
        super().__init__("retry at the leader")
        self.maybe_applied = maybe_applied

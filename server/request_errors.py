"""The errors a request to a node can end with, and the one table that says
what each becomes on the wire.

The runtime (runtime/loop.py), the request path (runtime/node_api.py) and
the state machines raise these; every front door turns them into an answer
through :func:`wire_status` and nothing else: the gRPC services
(rpc/services.py) as a status code, the web tier (web/tier.py) as an HTTP
status with a JSON error code, and the leader's side of ``Peer.Forward``
(runtime/node_api.py) as the status code a forwarding follower reads back.
A new error gets a row in :data:`ERROR_STATUSES`, or it reaches the caller
as an internal error.

What belongs here: error types that cross from the node to its callers, and
their wire mapping. Errors of one layer that never leave it (storage
corruption, TLS files, configuration) stay in their own modules.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import grpc

from ramraft.consensus import (
    ConfChangeError,
    LeadershipTransferError,
    NotLeaderError,
    ProposalDroppedError,
)
from ramraft.server.machines.embed import (
    CommandFailedError,
    CommandNotActiveError,
    NotPlainDataError,
)
from ramraft.server.machines.statemachine import CommandError, ErrorCode


class RequestError(Exception):
    """Base of the errors the runtime and the request path give callers.

    ``before_proposal`` is True when the request was refused before anything
    was proposed: the command is in no log, so it may be sent elsewhere even
    without a session (``Peer.Forward`` tells the follower, proto/raft.proto
    ForwardRefusal)."""

    before_proposal: bool = False


class NotLeader(RequestError):
    """This node does not lead; ``leader`` is who does, when known."""

    before_proposal = True

    def __init__(self, leader: str, leader_address: str = "") -> None:
        super().__init__(f"not the leader (leader: {leader or 'unknown'})")
        self.leader = leader
        self.leader_address = leader_address


class Unavailable(RequestError):
    """The request could not be served now; the client may retry (a write
    that failed this way may or may not have been applied, unless
    ``before_proposal``)."""

    def __init__(self, message: str, *, before_proposal: bool = False) -> None:
        super().__init__(message)
        self.before_proposal = before_proposal


class Overloaded(RequestError):
    """Too many requests are waiting; refused at once instead of queued."""

    before_proposal = True


class BadRequest(RequestError, ValueError):
    """A request that can never succeed as asked: input that breaks a
    documented limit, an unknown member...; the message says which."""


class NotFound(RequestError):
    """What the request names does not exist: a blob, or a lease (never
    granted, revoked or expired)."""


class InsufficientStorage(RequestError):
    """This node's disk is too full to take what the request brings (a
    blob): refused before the disk fills, never half-stored."""


class PayloadTooLarge(RequestError):
    """The request brings more than a documented limit allows (a blob over
    --max-blob-bytes); the message names the limit."""


class CommandRefused(RequestError):
    """The leader will not propose this command: its code does not have it
    (it came from newer code), or it is new in a version the cluster does not
    run yet (it switches once every node's code supports it)."""

    before_proposal = True


class SessionRefused(RequestError):
    """The state machine refused a write for its session (SESSION_EXPIRED:
    start a new session; STALE_SEQUENCE: the sequence is below the session's
    first_unacked). It was NOT applied. The message starts with the reason's
    name: clients match on it (client/_core.py session_expired)."""


class AlreadyExists(RequestError):
    """A lease id that is taken."""


class LimitExceeded(RequestError):
    """A delete-range or transaction past a bound that keeps one apply short
    (--max-delete-range-keys, the keys one lease holds): nothing changed.
    Also raised before proposing when the bound is already passed."""

    before_proposal = True


class CannotSnapshot(RequestError):
    """The state machine cannot give its state (an application model that
    holds something that is not plain data); the message says what."""


def check_command_result(result: object) -> None:
    """Raise for a state machine result that is a refusal: SessionRefused
    for a session's, NotFound, AlreadyExists and LimitExceeded for theirs,
    BadRequest for any other (a command the machine could not apply as
    asked)."""
    if isinstance(result, CommandError):
        if result.code in (ErrorCode.SESSION_EXPIRED, ErrorCode.STALE_SEQUENCE):
            raise SessionRefused(str(result))
        if result.code is ErrorCode.NOT_ACTIVE:
            raise CommandRefused(result.message)
        if result.code is ErrorCode.NOT_FOUND:
            raise NotFound(result.message)
        if result.code is ErrorCode.ALREADY_EXISTS:
            raise AlreadyExists(result.message)
        if result.code is ErrorCode.LIMIT_EXCEEDED:
            raise LimitExceeded(result.message)
        raise BadRequest(str(result))


@dataclass(frozen=True)
class WireStatus:
    """What an error becomes in an answer."""

    grpc_code: grpc.StatusCode
    http_status: int
    # The JSON body's "error" field (web/tier.py lists them for users).
    http_error: str
    # The answer names the leader when it is known: ``ramraft-leader``
    # trailing metadata over gRPC, a header and JSON fields over HTTP.
    names_leader: bool = False


_INVALID = WireStatus(grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_argument")
_UNAVAILABLE = WireStatus(grpc.StatusCode.UNAVAILABLE, 503, "unavailable", names_leader=True)
_NOT_NOW = WireStatus(grpc.StatusCode.FAILED_PRECONDITION, 409, "failed_precondition")

# The one mapping. The first row whose type matches wins (subclasses first).
ERROR_STATUSES: tuple[tuple[type[BaseException], WireStatus], ...] = (
    (BadRequest, _INVALID),
    (NotPlainDataError, _INVALID),  # an application command's argument
    (NotLeader, _UNAVAILABLE),
    (NotLeaderError, _UNAVAILABLE),
    (Unavailable, _UNAVAILABLE),
    (ProposalDroppedError, _UNAVAILABLE),  # a transfer or change in progress: retry
    (Overloaded, WireStatus(grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "overloaded")),
    (NotFound, WireStatus(grpc.StatusCode.NOT_FOUND, 404, "not_found")),
    (
        InsufficientStorage,
        WireStatus(grpc.StatusCode.RESOURCE_EXHAUSTED, 507, "insufficient_storage"),
    ),
    (PayloadTooLarge, WireStatus(grpc.StatusCode.INVALID_ARGUMENT, 413, "payload_too_large")),
    (TimeoutError, WireStatus(grpc.StatusCode.DEADLINE_EXCEEDED, 504, "deadline_exceeded")),
    (SessionRefused, _NOT_NOW),
    # A command of a version the cluster does not run yet, or that the
    # leader's code lacks: nothing was proposed.
    (CommandRefused, _NOT_NOW),
    (CommandNotActiveError, _NOT_NOW),
    # Membership changes and transfers the core does not allow now
    # (proto/admin.proto: FAILED_PRECONDITION).
    (ConfChangeError, _NOT_NOW),
    (LeadershipTransferError, _NOT_NOW),
    # Key-value version 2: leases and bounds (NotFound is above).
    (AlreadyExists, WireStatus(grpc.StatusCode.ALREADY_EXISTS, 409, "already_exists")),
    (LimitExceeded, WireStatus(grpc.StatusCode.FAILED_PRECONDITION, 409, "limit_exceeded")),
    (CannotSnapshot, _NOT_NOW),
    # An application command ran and failed, the same on every node.
    (CommandFailedError, WireStatus(grpc.StatusCode.FAILED_PRECONDITION, 409, "command_failed")),
)


def wire_status(error: BaseException) -> WireStatus | None:
    """The answer for ``error``; None for an error no caller should see (a
    bug: the front door reports it as an internal error)."""
    for kind, status in ERROR_STATUSES:
        if isinstance(error, kind):
            return status
    return None


def error_message(error: BaseException) -> str:
    """The sentence an answer carries for ``error``."""
    text = str(error)
    if text:
        return text
    if isinstance(error, TimeoutError):
        return "the request's deadline passed"
    return type(error).__name__


class RequestAborted(Exception):
    """A request carried inside a stream ended with a status (what
    ``RequestContext.abort`` raises): the request's answer carries it."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class RequestContext:
    """The part of a grpc.aio ServicerContext a unary handler uses, for one
    request carried inside a stream (KV.Stream's and KV.StreamBatch's
    requests, Peer.ForwardStream's writes): its deadline is its own
    (``timeout_ms`` from ``arrived``, time.monotonic()) or the stream's if
    sooner, the trailing metadata it sets is kept for its answer
    (``metadata``), and ``abort`` ends the request, not the stream."""

    __slots__ = ("_deadline", "_stream", "trailing")

    def __init__(self, timeout_ms: int, arrived: float, stream: Any = None) -> None:
        self._stream = stream
        self._deadline = arrived + timeout_ms / 1000 if timeout_ms else None
        self.trailing: tuple[tuple[str, Any], ...] = ()

    def time_remaining(self) -> float | None:
        remaining: float | None = None if self._stream is None else self._stream.time_remaining()
        if self._deadline is not None:
            own = self._deadline - time.monotonic()
            remaining = own if remaining is None else min(own, remaining)
        return remaining

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise RequestAborted(code, details)

    def set_trailing_metadata(self, metadata: Any) -> None:
        self.trailing = tuple(metadata)

    def metadata(self, key: str, default: Any = None) -> Any:
        """The value the handler set for ``key``, else ``default``."""
        for name, value in self.trailing:
            if name == key:
                return value
        return default

"""Client authentication, authorization and in-flight limits.

Tokens
    ``--auth-tokens FILE`` (env RAMRAFT_AUTH_TOKENS) turns authentication on.
    The file (a Kubernetes Secret in the manifests) has one token a line::

        # ROLE   NAME      TOKEN (or sha256:<64 hex digits> of the token)
        admin    ops       5d41402abc4b2a76b9719d911017c592
        write    orders    sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824
        read     grafana   7d793037a0760186574b0282f2f435e7

    Roles nest: ``read`` reads (KV Get/Range, Admin Status/Members, GetBlob,
    the web tier's pages, /metrics); ``write`` also writes (Put/Delete/CAS,
    PutBlob/DeleteBlob, writes over HTTP); ``admin`` also changes the cluster (TransferLeadership,
    AddMember, RemoveMember, Snapshot). NAME shows in logs; the token never
    does. The file is re-read when it changes (at most once a second).

    gRPC callers send ``authorization: Bearer TOKEN`` metadata; HTTP callers
    an ``Authorization: Bearer TOKEN`` header, or HTTP Basic with the token as
    the password (so a browser can open the status page). Tokens are
    compared in constant time (``hmac.compare_digest`` of SHA-256 digests,
    against every entry). A missing or unknown token is UNAUTHENTICATED (HTTP
    401); a known token without the role is PERMISSION_DENIED (HTTP 403).
    Each refusal is logged at warning level (rate-limited) with the caller's
    address, the token's NAME when known, the method and the reason.

    Always open: the gRPC health service (probes), server reflection,
    /healthz and /readyz. The peer service is not token-checked: peers prove
    who they are with their certificate (server/runtime/transport.py). A caller that
    presents a member's certificate (mutual TLS, e.g. a node asking the leader
    for its status) has the read role.

In-flight limits
    ``InflightLimiter`` counts the client requests being served, in total
    (gRPC and HTTP together) and per connection; a request over either limit
    is refused at once with RESOURCE_EXHAUSTED (HTTP 429), never queued. A
    small reserve above the total (1/8 of it) admits requests from
    connections with almost nothing in flight, so that light clients keep
    getting service while heavy ones are refused. An admitted call then
    reserves its bytes in the node's memory budget (security/budget.py)
    before its message is read, and must deliver that message within
    ``--request-timeout-ms`` or give its slot back (DEADLINE_EXCEEDED): a
    caller that sends headers and nothing else holds nothing for long.

Bad messages
    The gatekeeper decodes the request messages itself: bytes that are no
    valid protobuf of the method's type are INVALID_ARGUMENT (grpc would
    answer UNKNOWN), and a ``KV.Stream`` carrying one ends with
    INVALID_ARGUMENT (its request id is unknown, so it cannot be answered
    alone).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import enum
import hashlib
import hmac
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog
from google.protobuf.message import DecodeError

from ramraft.server.logs import RateLimitedLog
from ramraft.server.request_errors import BadRequest
from ramraft.server.security.budget import (
    CALL_RESERVATION,
    MESSAGE_COPIES,
    MemoryBudget,
    Reservation,
)
from ramraft.server.security.tls import peer_node_id

log = structlog.get_logger("ramraft.auth")

TOKENS_RECHECK_SECONDS = 1.0
_DIGEST = re.compile(r"^sha256:([0-9a-fA-F]{64})$")
_NAME = re.compile(r"^[A-Za-z0-9_.@:/-]{1,64}$")


class AccessRole(enum.IntEnum):
    READ = 1
    WRITE = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's name, ``node:<id>`` for a member's
    certificate, or ``anonymous`` when authentication is off."""

    name: str
    role: AccessRole

    def refusal(self, required: AccessRole, what: str) -> str | None:
        """Why this caller may not do ``what`` (which needs ``required``); None if it may."""
        if self.role >= required:
            return None
        return f"{self.name} has the {self.role.label} role; {what} needs {required.label}"


ANONYMOUS = Principal("anonymous", AccessRole.ADMIN)


class AuthConfigError(ValueError):
    """A token file that cannot be used; the message names the line, never a token."""


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", errors="surrogatepass")).digest()


def parse_tokens(text: str, source: str = "tokens") -> list[tuple[bytes, Principal]]:
    """Each token's SHA-256 (a node keeps no token itself) and who it is."""
    return [
        (bytes.fromhex(secret[7:]) if is_digest(secret) else digest(secret), Principal(n, r))
        for r, n, secret in token_lines(text, source)
    ]


def is_digest(secret: str) -> bool:
    """Whether a token file's secret is a token's digest (``sha256:HEX``)."""
    return _DIGEST.match(secret) is not None


def token_lines(text: str, source: str = "tokens") -> list[tuple[AccessRole, str, str]]:
    """The token file's lines as (role, name, secret), checked; a secret is
    the token itself or ``sha256:HEX``, its digest. Raises AuthConfigError
    naming the line (never a token)."""
    entries: list[tuple[AccessRole, str, str]] = []
    names: set[str] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 3:
            raise AuthConfigError(
                f"{source} line {number}: expected ROLE NAME TOKEN, found {len(parts)} fields"
            )
        role_text, name, secret = parts
        try:
            role = AccessRole[role_text.upper()]
        except KeyError:
            raise AuthConfigError(
                f"{source} line {number}: role {role_text!r} is not read, write or admin"
            ) from None
        if not _NAME.match(name):
            raise AuthConfigError(
                f"{source} line {number}: name must be 1-64 letters, digits or _.@:/-"
            )
        if name in names:
            raise AuthConfigError(f"{source} line {number}: name {name!r} is used twice")
        names.add(name)
        if not is_digest(secret) and len(secret) < 16:
            raise AuthConfigError(
                f"{source} line {number} ({name}): the token is shorter than 16 characters"
            )
        entries.append((role, name, secret))
    if not entries:
        raise AuthConfigError(f"{source}: no tokens (a line is: ROLE NAME TOKEN)")
    return entries


def _read_tokens(path: str) -> list[tuple[bytes, Principal]]:
    """The entries of the token file at ``path``; OSError if unreadable,
    AuthConfigError if it is no token file (not even text)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise AuthConfigError(
            f"--auth-tokens {path}: not a text file (`ramraft tokens` writes one)"
        ) from None
    return parse_tokens(text, path)


class TokenStore:
    """The token file, re-read when it changes. Thread-safe."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._checked = time.monotonic()
        try:
            self._signature = _stat(path)
            self._entries = _read_tokens(path)
        except OSError as e:
            raise AuthConfigError(f"--auth-tokens {path}: {e.strerror}") from None

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < TOKENS_RECHECK_SECONDS:
            return
        with self._lock:
            self._checked = now
            try:
                signature = _stat(self.path)
                if signature == self._signature:
                    return
                entries = _read_tokens(self.path)
            except (OSError, AuthConfigError) as e:
                log.warning("tokens_reload_refused", error=str(e))
                return
            self._signature, self._entries = signature, entries
        log.info("tokens_reloaded", path=self.path, tokens=len(entries))

    def authenticate(self, token: str) -> Principal | None:
        """The principal of ``token``, or None. Compares against every entry
        in constant time, whichever matches."""
        self._refresh()
        presented = digest(token)
        found: Principal | None = None
        for hashed, principal in self._entries:
            if hmac.compare_digest(presented, hashed) and found is None:
                found = principal
        return found


def _stat(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


def bearer_token(value: str | None) -> str | None:
    """The token of an ``Authorization`` value: ``Bearer T``, or HTTP Basic
    with T as the password (any user name). None if absent or another scheme."""
    if not value:
        return None
    scheme, _, rest = value.strip().partition(" ")
    rest = rest.strip()
    if scheme.lower() == "bearer" and rest:
        return rest
    if scheme.lower() == "basic" and rest:
        try:
            decoded = base64.b64decode(rest, validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None
        _, sep, password = decoded.partition(":")
        return password if sep and password else None
    return None


# ---- in-flight limits ---------------------------------------------------------------------


class InflightLimiter:
    """Client requests being served now, in total and per connection.
    Used from the event loop only (gRPC aio handlers and aiohttp share it).

    Fairness: once ``total`` requests are in flight, a light caller -- a
    connection with fewer than ``LIGHT`` of its own, from an address that
    holds less than a quarter of the reserve -- may still take one of
    ``reserve`` extra slots, so a client sending one request at a time is not
    starved by clients that keep hundreds in flight, nor by one address that
    opens hundreds of connections with a request each. At most ``total +
    reserve`` are ever admitted."""

    LIGHT = 2

    def __init__(self, total: int, per_connection: int, reserve: int | None = None) -> None:
        self.total_limit = total
        self.per_connection_limit = per_connection
        self.reserve = max(1, total // 8) if reserve is None else reserve
        self.per_source_light = max(self.LIGHT, self.reserve // 4)
        self.total = 0
        self.by_connection: dict[str, int] = {}
        # Reserved slots taken, by connection and by address.
        self.reserved_by_connection: dict[str, int] = {}
        self.reserved_by_source: dict[str, int] = {}
        self.refused = 0

    def is_light(self, connection: str) -> bool:
        """Whether ``connection`` is a light caller (see the class)."""
        return (
            self.by_connection.get(connection, 0) <= self.LIGHT
            and self.reserved_by_source.get(source_of(connection), 0) < self.per_source_light
        )

    def enter(self, connection: str) -> str | None:
        """None if admitted (call ``leave`` when done), else why not.
        ``connection`` is grpc's peer string ("ipv4:10.0.0.7:53412") or the
        web tier's; its address part counts per source."""
        count = self.by_connection.get(connection, 0)
        if count >= self.per_connection_limit:
            self.refused += 1
            return (
                f"{self.per_connection_limit} requests are in flight on this connection "
                "already; wait for some to finish"
            )
        if self.total >= self.total_limit:
            source = source_of(connection)
            reserved = self.reserved_by_source.get(source, 0)
            if not (
                count < self.LIGHT
                and reserved < self.per_source_light
                and self.total < self.total_limit + self.reserve
            ):
                self.refused += 1
                return f"this node is serving {self.total_limit} requests already; retry later"
            self.reserved_by_source[source] = reserved + 1
            held = self.reserved_by_connection.get(connection, 0)
            self.reserved_by_connection[connection] = held + 1
        self.by_connection[connection] = count + 1
        self.total += 1
        return None

    def leave(self, connection: str) -> None:
        self.total -= 1
        count = self.by_connection[connection] - 1
        if count:
            self.by_connection[connection] = count
        else:
            del self.by_connection[connection]
        reserved = self.reserved_by_connection.get(connection, 0)
        if reserved:  # slots are alike: the connection gives a reserved one back first
            _decrement(self.reserved_by_connection, connection)
            _decrement(self.reserved_by_source, source_of(connection))


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]


def source_of(connection: str) -> str:
    """The address of a connection string: grpc's "ipv4:10.0.0.7:53412" ->
    "ipv4:10.0.0.7", the web tier's "http:10.0.0.7:53412" -> "http:10.0.0.7"."""
    return connection.rpartition(":")[0] or connection


# ---- gRPC ---------------------------------------------------------------------------------

# What each client method needs. A method not listed needs admin (deny by default).
GRPC_ROLES: dict[str, AccessRole] = {
    "/ramraft.v1.KV/Get": AccessRole.READ,
    "/ramraft.v1.KV/Range": AccessRole.READ,
    "/ramraft.v1.KV/Put": AccessRole.WRITE,
    "/ramraft.v1.KV/Delete": AccessRole.WRITE,
    "/ramraft.v1.KV/CompareAndSwap": AccessRole.WRITE,
    "/ramraft.v1.KV/DeleteRange": AccessRole.WRITE,
    # A transaction may write; one that only reads needs write all the same
    # (the role is decided before the request is read).
    "/ramraft.v1.KV/Txn": AccessRole.WRITE,
    # A stream of watches: read, checked when the stream opens.
    "/ramraft.v1.KV/Watch": AccessRole.READ,
    "/ramraft.v1.Lease/Grant": AccessRole.WRITE,
    "/ramraft.v1.Lease/Revoke": AccessRole.WRITE,
    "/ramraft.v1.Lease/KeepAlive": AccessRole.WRITE,
    "/ramraft.v1.Lease/TimeToLive": AccessRole.READ,
    # Opening a stream needs READ; each request in it needs its method's role.
    "/ramraft.v1.KV/Stream": AccessRole.READ,
    "/ramraft.v1.KV/StreamBatch": AccessRole.READ,
    "/ramraft.v1.Admin/Status": AccessRole.READ,
    "/ramraft.v1.Admin/Members": AccessRole.READ,
    "/ramraft.v1.Admin/TransferLeadership": AccessRole.ADMIN,
    "/ramraft.v1.Admin/AddMember": AccessRole.ADMIN,
    "/ramraft.v1.Admin/RemoveMember": AccessRole.ADMIN,
    "/ramraft.v1.Admin/Snapshot": AccessRole.ADMIN,
    "/ramraft.v1.Admin/SetUpgradeHold": AccessRole.ADMIN,
    "/ramraft.v1.Admin/CheckState": AccessRole.ADMIN,
    # A backup is every key and value: as much as reading them all, and more.
    "/ramraft.v1.Admin/Backup": AccessRole.ADMIN,
    "/ramraft.v1.BlobsService/PutBlob": AccessRole.WRITE,
    "/ramraft.v1.BlobsService/GetBlob": AccessRole.READ,
    "/ramraft.v1.BlobsService/DeleteBlob": AccessRole.WRITE,
}
# Served to anyone, outside the in-flight limits.
OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
# Authenticated by certificate in server/runtime/transport.py, outside the client limits.
PEER_PREFIX = "/ramraft.peer.v1.Peer/"
# The client methods that are streams of key-value requests: each request
# is admitted on its own (StreamGate), under the role and limits of the
# unary call.
KV_STREAM = "/ramraft.v1.KV/Stream"
KV_STREAM_BATCH = "/ramraft.v1.KV/StreamBatch"
# The most requests a StreamBatchRequest may carry (proto/kv.proto). A
# decoded request takes far more memory than its bytes on the wire (an
# empty one: 2 bytes, about 56 decoded), so the gatekeeper counts them
# before it decodes the message.
MAX_STREAM_BATCH = 1024
KV_METHOD_PREFIX = "/ramraft.v1.KV/"


@dataclass(frozen=True)
class CallLimits:
    """What the gatekeeper holds each admitted call to (server/config.py
    NodeLimits)."""

    budget: MemoryBudget  # the node's memory budget for requests and responses
    request_bytes: int  # the largest request message the port accepts
    request_timeout: float  # seconds a call has to deliver its request message
    stream_share: int  # the most of the budget one KV.Stream may hold

    def read_reservation(self) -> int:
        """What a call reserves before its request message is read."""
        return MESSAGE_COPIES * self.request_bytes


class StreamGate:
    """Admits the requests of one ``KV.Stream``: each must be allowed to the
    caller (its bearer token is checked again, so a revoked token stops
    working mid-stream) and takes an in-flight slot like a unary call,
    released with ``release`` once its response is written. ``limits``
    bound the stream's memory (server/rpc/services.py reads them)."""

    def __init__(
        self,
        gatekeeper: Gatekeeper,
        token: str | None,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        self.gatekeeper = gatekeeper
        self.token = token
        self.context = context
        self.connection = context.peer()
        self.limits = gatekeeper.limits

    def admit(self, op: str) -> tuple[grpc.StatusCode, str] | None:
        """None if the request of unary method ``op`` (e.g. "Put") may run
        now (call ``release`` when done), else the status to answer with."""
        method = KV_METHOD_PREFIX + op
        keeper = self.gatekeeper
        principal, problem = keeper.principal(self.token, self.context)
        code = grpc.StatusCode.UNAUTHENTICATED
        if principal is not None:
            problem = principal.refusal(GRPC_ROLES.get(method, AccessRole.ADMIN), method)
            code = grpc.StatusCode.PERMISSION_DENIED
        if problem is not None or principal is None:
            # Logged as the unary path logs it (who and what, never the token).
            keeper.refusals.warning(
                "request_refused",
                code=code.name,
                method=method,
                who=principal.name if principal is not None else None,
                peer=self.connection,
                reason=problem,
            )
            return code, problem or "refused"
        refused = keeper.limiter.enter(self.connection)
        if refused is not None:
            keeper.refusals.warning(
                "request_refused", code="RESOURCE_EXHAUSTED", method=KV_STREAM, peer=self.connection
            )
            return grpc.StatusCode.RESOURCE_EXHAUSTED, refused
        return None

    def release(self) -> None:
        self.gatekeeper.limiter.leave(self.connection)


# Set by the Gatekeeper for the task serving a KV.Stream (and the tasks it
# starts); None where no Gatekeeper runs (servicers called directly).
STREAM_GATE: contextvars.ContextVar[StreamGate | None] = contextvars.ContextVar(
    "ramraft_stream_gate", default=None
)


def _metadata_value(metadata: Sequence[Any] | None, key: str) -> str | None:
    for item in metadata or ():
        k, v = item[0], item[1]
        if k == key:
            return v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v)
    return None


class Gatekeeper(grpc.aio.ServerInterceptor):
    """Authenticates and authorizes every client RPC, and admits it only
    within the in-flight limits."""

    def __init__(
        self,
        tokens: TokenStore | None,
        limiter: InflightLimiter,
        is_member: Callable[[str], bool],
        refusals: RateLimitedLog,
        limits: CallLimits | None = None,
    ) -> None:
        self.tokens = tokens
        self.limiter = limiter
        self.is_member = is_member
        self.refusals = refusals
        # Without limits (unit tests): a budget nothing exhausts.
        self.limits = limits or CallLimits(MemoryBudget(1 << 62), 4 << 20, 5.0, 1 << 60)

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(OPEN_PREFIXES) or method.startswith(PEER_PREFIX):
            return handler
        metadata = handler_call_details.invocation_metadata
        token = bearer_token(_metadata_value(metadata, "authorization"))
        if method in (KV_STREAM, KV_STREAM_BATCH) and handler.stream_stream is not None:
            return self._guard_stream(method, handler, token)
        if handler.stream_stream is not None:
            return self._guard_long_stream(method, handler, token)
        if handler.unary_stream is not None:
            return self._guard_server_stream(method, handler, token)
        if handler.stream_unary is not None:
            return self._guard_client_stream(method, handler, token)
        inner = handler.unary_unary
        if inner is None:  # the other client methods are unary; anything else is not ours
            return grpc.unary_unary_rpc_method_handler(
                _refuse(grpc.StatusCode.PERMISSION_DENIED, f"{method} is not served here")
            )
        required = GRPC_ROLES.get(method, AccessRole.ADMIN)
        deserialize = handler.request_deserializer
        assert deserialize is not None
        limits = self.limits

        async def guarded(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
        ) -> Any:
            # Served as a client stream of one message so that nothing is read
            # before the caller is admitted: a refused call never makes the
            # node receive (and hold) its request, however large.
            connection = await self._admit(method, required, token, context)
            reservation = Reservation(limits.budget, self.limiter.is_light(connection))

            # Held until the call has ended: until then grpc holds the
            # response, also for a client that does not read it.
            def release(_context: grpc.aio.ServicerContext[Any, Any]) -> None:
                reservation.release()

            context.add_done_callback(release)  # type: ignore[arg-type]  # a protocol in the stubs
            try:
                await self._reserve_message(reservation, method, connection, context)
                raw = await self._read_request(requests, context)
                request = _decode(deserialize, raw)
                if request is None:
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"the request is not a valid {method} message (protobuf)",
                    )
                reservation.shrink(reservation.held - MESSAGE_COPIES * len(raw))
                reservation.read_done()
                CALL_RESERVATION.set(reservation)
                return await inner(request, context)  # type: ignore[arg-type]  # an aio handler
            finally:
                self.limiter.leave(connection)

        return grpc.stream_unary_rpc_method_handler(
            guarded,
            request_deserializer=_raw,
            response_serializer=handler.response_serializer,
        )

    async def _read_request(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes:
        """The call's one request message, which must arrive within the
        request timeout (a caller that sends headers and no message, or a
        message slowly, gives its slot back)."""
        timeout = self.limits.request_timeout
        try:
            async with asyncio.timeout(timeout):
                raw = await anext(aiter(requests), None)
        except TimeoutError:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the request message did not arrive within {timeout:g} s",
            )
            raise AssertionError("abort returns only by raising") from None  # pragma: no cover
        if raw is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no request message")
            raise AssertionError("abort returns only by raising")  # pragma: no cover
        return raw

    async def _admit(
        self,
        method: str,
        required: AccessRole,
        token: str | None,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> str:
        """Admit a call that takes an in-flight slot: the caller's role
        first, then a slot for its connection, both before any of its
        request is read; a refusal is logged and aborts the call. Returns the
        connection, whose slot the caller gives back (``limiter.leave``)."""
        await self._authorize(method, required, token, context)
        connection = context.peer()
        refused = self.limiter.enter(connection)
        if refused is not None:
            self._refuse_overloaded(method, connection)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refused)
        return connection

    async def _reserve_message(
        self,
        reservation: Reservation,
        method: str,
        connection: str,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        """Grow ``reservation`` by what reading one request message may
        take, waiting up to the request timeout for the node's budget; past
        it the call is refused (logged) as overloaded."""
        limits = self.limits
        if not await reservation.grow(limits.read_reservation(), limits.request_timeout):
            self._refuse_overloaded(method, connection)
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this node's memory budget for requests in flight "
                f"({limits.budget.total} bytes) is in use; retry later",
            )

    def _refuse_overloaded(self, method: str, connection: str) -> None:
        self.refusals.warning(
            "request_refused", code="RESOURCE_EXHAUSTED", method=method, peer=connection
        )

    def _guard_server_stream(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any], token: str | None
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """A call with one request and a stream of answers (Admin.Backup):
        admitted as a unary call is (role, then an in-flight slot, before
        the request is read), holding its slot until the stream ends."""
        inner = handler.unary_stream
        deserialize = handler.request_deserializer
        assert inner is not None and deserialize is not None
        required = GRPC_ROLES.get(method, AccessRole.ADMIN)

        async def guarded(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            connection = await self._admit(method, required, token, context)
            try:
                request = _decode(deserialize, await self._read_request(requests, context))
                if request is None:
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"the request is not a valid {method} message (protobuf)",
                    )
                async for response in inner(request, context):  # type: ignore[arg-type,attr-defined]
                    yield response
            finally:
                self.limiter.leave(connection)

        return grpc.stream_stream_rpc_method_handler(
            guarded,
            request_deserializer=_raw,
            response_serializer=handler.response_serializer,
        )

    def _guard_client_stream(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any], token: str | None
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """A stream of requests and one answer (Blobs.PutBlob): admitted as a
        unary call is (role, an in-flight slot, the budget for one message,
        before any message is read), holding them until the answer; each
        message must arrive within the request timeout (a trickle gives its
        slot back) and be valid protobuf."""
        inner = handler.stream_unary
        deserialize = handler.request_deserializer
        assert inner is not None and deserialize is not None
        required = GRPC_ROLES.get(method, AccessRole.ADMIN)
        limits = self.limits

        async def guarded(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
        ) -> Any:
            connection = await self._admit(method, required, token, context)
            reservation = Reservation(limits.budget, self.limiter.is_light(connection))
            try:
                await self._reserve_message(reservation, method, connection, context)

                async def decoded() -> AsyncIterator[Any]:
                    stream = aiter(requests)
                    while True:
                        try:
                            async with asyncio.timeout(limits.request_timeout):
                                raw = await anext(stream, None)
                        except TimeoutError:
                            await context.abort(
                                grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"the next message did not arrive within "
                                f"{limits.request_timeout:g} s",
                            )
                        if raw is None:
                            return
                        request = _decode(deserialize, raw)
                        if request is None:
                            await context.abort(
                                grpc.StatusCode.INVALID_ARGUMENT,
                                f"a message is not a valid {method} message (protobuf)",
                            )
                        yield request

                return await inner(decoded(), context)  # type: ignore[arg-type]  # an aio handler
            finally:
                reservation.release()
                self.limiter.leave(connection)

        return grpc.stream_unary_rpc_method_handler(
            guarded,
            request_deserializer=_raw,
            response_serializer=handler.response_serializer,
        )

    def _guard_stream(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any], token: str | None
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """``KV.Stream`` and ``KV.StreamBatch``: the caller must be allowed
        to read to open one (before any request is read); then each request
        is admitted on its own by the StreamGate the servicer finds in
        STREAM_GATE. A batch's requests are counted before it is decoded
        (a decoded request takes far more memory than its bytes)."""
        inner = handler.stream_stream
        deserialize = handler.request_deserializer
        assert inner is not None and deserialize is not None
        batched = method == KV_STREAM_BATCH
        kind = "StreamBatchRequest" if batched else "StreamRequest"

        async def guarded_stream(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
        ) -> None:
            await self._authorize(
                method, AccessRole.READ, token, context, before_abort=lambda: _drain(requests)
            )
            STREAM_GATE.set(StreamGate(self, token, context))

            async def decoded() -> AsyncIterator[Any]:
                async for raw in requests:
                    count = count_fields(raw, MAX_STREAM_BATCH) if batched else 0
                    if count is not None and count > MAX_STREAM_BATCH:
                        await context.abort(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            f"a StreamBatchRequest holds more than {MAX_STREAM_BATCH} requests",
                        )
                    request = _decode(deserialize, raw) if count is not None else None
                    if request is None:
                        await context.abort(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            f"a stream request is not a valid {kind} message (protobuf)",
                        )
                    yield request

            await inner(decoded(), context)  # type: ignore[arg-type,misc]  # an aio handler

        return grpc.stream_stream_rpc_method_handler(
            guarded_stream,
            request_deserializer=_raw,
            response_serializer=handler.response_serializer,
        )

    def _guard_long_stream(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any], token: str | None
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """A long-lived stream (KV.Watch, Lease.KeepAlive): the caller must
        have the method's role before any request is read. It takes no
        in-flight slot (it lives as long as the client wants); what it costs
        is bounded by its own limits (--max-watches; each keep-alive is a
        write through the node's pending-request limit)."""
        inner = handler.stream_stream
        deserialize = handler.request_deserializer
        assert inner is not None and deserialize is not None
        required = GRPC_ROLES.get(method, AccessRole.ADMIN)

        async def guarded(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
        ) -> Any:
            await self._authorize(method, required, token, context)

            async def decoded() -> AsyncIterator[Any]:
                # Decoded here, not by grpc: bytes that are no protobuf are
                # the caller's error (INVALID_ARGUMENT, raised to the
                # servicer reading them), not the servicer's (UNKNOWN).
                async for raw in requests:
                    request = _decode(deserialize, raw)
                    if request is None:
                        raise BadRequest(f"a message is not a valid {method} message (protobuf)")
                    yield request

            result = inner(decoded(), context)  # type: ignore[arg-type]  # an aio handler
            if hasattr(result, "__aiter__"):  # an async generator servicer
                async for response in result:
                    await context.write(response)
                return None
            return await result  # type: ignore[misc]  # an aio handler

        return grpc.stream_stream_rpc_method_handler(
            guarded,
            request_deserializer=_raw,
            response_serializer=handler.response_serializer,
        )

    async def _authorize(
        self,
        method: str,
        required: AccessRole,
        token: str | None,
        context: grpc.aio.ServicerContext[Any, Any],
        before_abort: Callable[[], Awaitable[None]] | None = None,
    ) -> Principal:
        principal, problem = self.principal(token, context)
        code = grpc.StatusCode.UNAUTHENTICATED
        if principal is not None and problem is None:
            problem = principal.refusal(required, method)
            code = grpc.StatusCode.PERMISSION_DENIED
        if problem is None and principal is not None:
            return principal
        self.refusals.warning(
            "request_refused",
            code=code.name,
            method=method,
            who=principal.name if principal is not None else None,
            peer=context.peer(),
            reason=problem,
        )
        if before_abort is not None:
            await before_abort()
        await context.abort(code, problem or "refused")
        raise AssertionError("abort returns only by raising")  # pragma: no cover

    def principal(
        self, token: str | None, context: grpc.aio.ServicerContext[Any, Any]
    ) -> tuple[Principal | None, str | None]:
        if self.tokens is None:
            return ANONYMOUS, None
        if token is not None:
            principal = self.tokens.authenticate(token)
            if principal is None:
                return None, "the bearer token is not valid"
            return principal, None
        node = peer_node_id(context)
        if node is not None and self.is_member(node):
            return Principal(f"node:{node}", AccessRole.READ), None
        return None, "missing credentials: send 'authorization: Bearer TOKEN' metadata"


# How much of a refused stream's requests the node discards, at most, before
# it answers (see _drain).
DRAIN_SECONDS = 0.5
DRAIN_BYTES = 64 << 10


async def _drain(requests: AsyncIterator[bytes]) -> None:
    """Discard (never decode) what a refused stream's client has already
    sent, until it half-closes, for at most DRAIN_SECONDS and DRAIN_BYTES.

    Why: grpc-python's asyncio client turns a write that is in flight when
    the server's status arrives into its own INTERNAL ("Internal error from
    Core"), losing the UNAUTHENTICATED the node sent (about 1 refused stream
    in 10 on loopback, when the client writes right after opening it).
    Answering once the client's writes have been taken makes the answer it
    sees the node's, not the race's; the bounds keep a client that never
    stops sending from holding the node."""
    taken = 0
    with contextlib.suppress(TimeoutError, grpc.RpcError):
        async with asyncio.timeout(DRAIN_SECONDS):
            async for raw in requests:
                taken += len(raw)
                if taken > DRAIN_BYTES:
                    return


def count_fields(raw: bytes, limit: int) -> int | None:
    """How many top-level fields the protobuf bytes ``raw`` hold, counting
    no further than ``limit + 1``; None if they are not protobuf (what a
    repeated field costs to decode is bounded by counting it first)."""
    count, at, end = 0, 0, len(raw)
    while at < end and count <= limit:
        tag, at = _varint(raw, at)
        wire = tag & 7
        if wire == 2:
            size, at = _varint(raw, at)
            at += size
        elif wire == 0:
            _, at = _varint(raw, at)
        elif wire == 1:
            at += 8
        elif wire == 5:
            at += 4
        else:
            return None
        if at > end or tag < 8:
            return None
        count += 1
    return count


def _varint(raw: bytes, at: int) -> tuple[int, int]:
    """The varint at ``raw[at:]`` and the offset after it (past the end: a
    truncated one, which the caller sees as ``at`` beyond the end)."""
    value = shift = 0
    end = len(raw)
    while at < end:
        byte = raw[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
        if shift > 63:
            break
    return 0, end + 1


def _raw(data: bytes) -> bytes:
    return data


def _decode(deserialize: Callable[[bytes], Any], raw: bytes) -> Any | None:
    """The message ``raw`` encodes, or None if it is no valid protobuf."""
    try:
        return deserialize(raw)
    except (DecodeError, ValueError, RuntimeError):
        return None


def _refuse(code: grpc.StatusCode, detail: str) -> Callable[[Any, Any], Awaitable[Any]]:
    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, detail)

    return refuse


# ---- HTTP ---------------------------------------------------------------------------------

HTTP_OPEN_PATHS = frozenset({"/healthz", "/readyz"})


def http_required_role(method: str, path: str) -> AccessRole | None:
    """What an HTTP request needs; None: open to anyone."""
    if path in HTTP_OPEN_PATHS:
        return None
    if method in ("GET", "HEAD", "OPTIONS"):
        return AccessRole.READ
    return AccessRole.WRITE

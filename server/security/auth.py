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
    who they are with their certificate (server/transport.py). A caller that
    presents a member's certificate (mutual TLS, e.g. a node asking the leader
    for its status) has the read role.

In-flight limits
    ``InflightLimiter`` counts the client requests being served, in total
    (gRPC and HTTP together) and per connection; a request over either limit
    is refused at once with RESOURCE_EXHAUSTED (HTTP 429), never queued. A
    small reserve above the total (1/8 of it) admits requests from
    connections with almost nothing in flight, so that light clients keep
    getting service while heavy ones are refused.
"""

from __future__ import annotations

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

from ramraft.server.logs import RateLimitedLog
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
    entries: list[tuple[bytes, Principal]] = []
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
        match = _DIGEST.match(secret)
        if match is not None:
            hashed = bytes.fromhex(match.group(1))
        elif len(secret) < 16:
            raise AuthConfigError(
                f"{source} line {number} ({name}): the token is shorter than 16 characters"
            )
        else:
            hashed = digest(secret)
        entries.append((hashed, Principal(name, role)))
    if not entries:
        raise AuthConfigError(f"{source}: no tokens (a line is: ROLE NAME TOKEN)")
    return entries


class TokenStore:
    """The token file, re-read when it changes. Thread-safe."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._checked = time.monotonic()
        try:
            self._signature = _stat(path)
            self._entries = parse_tokens(Path(path).read_text(), path)
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
                entries = parse_tokens(Path(self.path).read_text(), self.path)
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

    Fairness: once ``total`` requests are in flight, a connection with fewer
    than ``LIGHT`` of its own may still take one of ``reserve`` extra slots,
    so a client sending one request at a time is not starved by clients that
    keep hundreds in flight. At most ``total + reserve`` are ever admitted."""

    LIGHT = 2

    def __init__(self, total: int, per_connection: int, reserve: int | None = None) -> None:
        self.total_limit = total
        self.per_connection_limit = per_connection
        self.reserve = max(1, total // 8) if reserve is None else reserve
        self.total = 0
        self.by_connection: dict[str, int] = {}
        self.refused = 0

    def enter(self, connection: str) -> str | None:
        """None if admitted (call ``leave`` when done), else why not."""
        count = self.by_connection.get(connection, 0)
        if count >= self.per_connection_limit:
            self.refused += 1
            return (
                f"{self.per_connection_limit} requests are in flight on this connection "
                "already; wait for some to finish"
            )
        if self.total >= self.total_limit and not (
            count < self.LIGHT and self.total < self.total_limit + self.reserve
        ):
            self.refused += 1
            return f"this node is serving {self.total_limit} requests already; retry later"
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


# ---- gRPC ---------------------------------------------------------------------------------

# What each client method needs. A method not listed needs admin (deny by default).
GRPC_ROLES: dict[str, AccessRole] = {
    "/ramraft.v1.KV/Get": AccessRole.READ,
    "/ramraft.v1.KV/Range": AccessRole.READ,
    "/ramraft.v1.KV/Put": AccessRole.WRITE,
    "/ramraft.v1.KV/Delete": AccessRole.WRITE,
    "/ramraft.v1.KV/CompareAndSwap": AccessRole.WRITE,
    # Opening a stream needs READ; each request in it needs its method's role.
    "/ramraft.v1.KV/Stream": AccessRole.READ,
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
# Authenticated by certificate in server/transport.py, outside the client limits.
PEER_PREFIX = "/ramraft.peer.v1.Peer/"
# The one client method that is a stream: each of its requests is admitted
# on its own (StreamGate), under the role and limits of the unary call.
KV_STREAM = "/ramraft.v1.KV/Stream"
KV_METHOD_PREFIX = "/ramraft.v1.KV/"


class StreamGate:
    """Admits the requests of one ``KV.Stream``: each must be allowed to the
    caller (its bearer token is checked again, so a revoked token stops
    working mid-stream) and takes an in-flight slot like a unary call,
    released with ``release`` once its response is written."""

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

    def admit(self, op: str) -> tuple[grpc.StatusCode, str] | None:
        """None if the request of unary method ``op`` (e.g. "Put") may run
        now (call ``release`` when done), else the status to answer with."""
        method = KV_METHOD_PREFIX + op
        keeper = self.gatekeeper
        principal, problem = keeper.principal(self.token, self.context)
        if principal is None:
            return grpc.StatusCode.UNAUTHENTICATED, problem or "refused"
        problem = principal.refusal(GRPC_ROLES.get(method, AccessRole.ADMIN), method)
        if problem is not None:
            return grpc.StatusCode.PERMISSION_DENIED, problem
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
    ) -> None:
        self.tokens = tokens
        self.limiter = limiter
        self.is_member = is_member
        self.refusals = refusals

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
        if method == KV_STREAM and handler.stream_stream is not None:
            return self._guard_stream(handler, token)
        if handler.unary_stream is not None:
            return self._guard_server_stream(method, handler, token)
        if handler.stream_unary is not None:
            return self._guard_client_stream(method, handler, token)
        inner = handler.unary_unary
        if inner is None:  # the other client methods are unary; anything else is not ours
            return grpc.unary_unary_rpc_method_handler(
                _refuse(grpc.StatusCode.PERMISSION_DENIED, f"{method} is not served here")
            )

        async def guarded(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> Any:
            # Served as a client stream of one message so that nothing is read
            # before the caller is admitted: a refused call never makes the
            # node receive (and hold) its request, however large.
            async with self._admitted(method, token, context):
                request = await anext(aiter(requests), None)
                if request is None:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no request message")
                return await inner(request, context)  # type: ignore[arg-type]  # an aio handler

        return grpc.stream_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _guard_server_stream(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any], token: str | None
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """A call with one request and a stream of answers (Admin.Backup):
        admitted as a unary call is (role, then an in-flight slot, before
        the request is read), holding its slot until the stream ends."""
        inner = handler.unary_stream
        assert inner is not None

        async def guarded(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            async with self._admitted(method, token, context):
                request = await anext(aiter(requests), None)
                if request is None:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no request message")
                async for response in inner(request, context):  # type: ignore[arg-type,attr-defined]
                    yield response

        return grpc.stream_stream_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _guard_client_stream(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any], token: str | None
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """A stream of requests and one answer (Blobs.PutBlob): admitted as
        a unary call is (role, then an in-flight slot) before the first
        request is read, holding its slot until the answer."""
        inner = handler.stream_unary
        assert inner is not None

        async def guarded(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> Any:
            async with self._admitted(method, token, context):
                return await inner(requests, context)  # type: ignore[arg-type]

        return grpc.stream_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _guard_stream(
        self, handler: grpc.RpcMethodHandler[Any, Any], token: str | None
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """``KV.Stream``: the caller must be allowed to read to open it
        (before any request is read); then each request is admitted on its
        own by the StreamGate the servicer finds in STREAM_GATE."""
        inner = handler.stream_stream
        assert inner is not None

        async def guarded_stream(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> None:
            await self._authorize(KV_STREAM, AccessRole.READ, token, context)
            STREAM_GATE.set(StreamGate(self, token, context))
            await inner(requests, context)  # type: ignore[arg-type,misc]  # an aio handler

        return grpc.stream_stream_rpc_method_handler(
            guarded_stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    @contextlib.asynccontextmanager
    async def _admitted(
        self, method: str, token: str | None, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[None]:
        """The caller has the method's role (else UNAUTHENTICATED or
        PERMISSION_DENIED) and an in-flight slot (else RESOURCE_EXHAUSTED),
        held for the whole call."""
        await self._authorize(method, GRPC_ROLES.get(method, AccessRole.ADMIN), token, context)
        connection = context.peer()
        refused = self.limiter.enter(connection)
        if refused is not None:
            self.refusals.warning(
                "request_refused", code="RESOURCE_EXHAUSTED", method=method, peer=connection
            )
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refused)
        try:
            yield
        finally:
            self.limiter.leave(connection)

    async def _authorize(
        self,
        method: str,
        required: AccessRole,
        token: str | None,
        context: grpc.aio.ServicerContext[Any, Any],
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

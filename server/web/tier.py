"""The web tier: an HTTP server on the node's own event loop.

Built on aiohttp: a well-kept asyncio HTTP server (and client) that runs as a
few tasks on the event loop grpc.aio already uses, so a page handler reads
the state machine's objects directly -- no thread hop, no lock, no second
server process -- and awaits the same in-process calls as the gRPC servicers
(runtime/node_api.py). Routes:

``GET /``
    The status page (web/status_page.py): role, term, leader, indexes,
    each member's lag, recent leader changes, request rates. Polls
    ``/v1/status`` once a second.
``GET /v1/status``
    The same as JSON.
``GET /v1/kv/{key}``, ``PUT /v1/kv/{key}``, ``DELETE /v1/kv/{key}``
    The key-value machine; ``GET /v1/kv?prefix=&start_after=&limit=`` lists
    keys; ``POST /v1/cas/{key}`` compares and swaps. See :class:`KVRoutes`.
``POST /v1/txn``, ``GET /v1/watch?prefix=...``
    A transaction as JSON, and changes as Server-Sent Events (resumable
    with ``Last-Event-ID``): see web/revisions.py.
``/v1/blobs/{sha256}``, ``POST /v1/blobs``
    Blobs: download (Range, ETag), upload, delete (web/blobs.py).
``GET /v1/events?topic=T&topic=U``
    Server-Sent Events: what the hosted application's commands publish
    (``self.publish(topic, data)``), on the given topics (none: all), as this
    node applies them; resumable with ``Last-Event-ID`` (web/sse.py).
``GET /metrics``
    Prometheus text format (web/metrics.py).
``GET /healthz``, ``GET /readyz``
    Alive / ready (knows a leader, has applied its commit index), matching
    the gRPC health service's "liveness" and "" services.
``/app/...``
    The pages of an application model (``--app``, server/hosting.py).

With ``--auth-tokens`` every route but /healthz and /readyz needs a token
(security/auth.py): ``Authorization: Bearer TOKEN``, or HTTP Basic with the
token as the password (browsers ask for it on the status page). Reads need
the read role, PUT/DELETE/POST the write role. With TLS the port serves
HTTPS (a client certificate is required with ``--tls-client-auth
require``). At most ``--max-connections`` connections are open at once,
at most ``--max-connections-per-source`` from one address (more are closed
at once); a connection must finish its TLS handshake, and each request its
headers, within ``--handshake-timeout-ms`` (slow senders are cut off), and
a body must arrive within ``--request-timeout-ms`` (408). Requests count
towards the node's ``--max-inflight`` and its memory budget
``--max-inflight-bytes`` (429 beyond either), and large answers (a value, a
Range page) are written inside the handler, so their bytes stay counted
until a client that reads slowly has taken them.

Errors from ``/v1/`` routes are JSON: ``{"error": CODE, "detail": TEXT}``
with CODE one of ``invalid_argument`` (400), ``unauthenticated`` (401),
``permission_denied`` (403), ``not_found`` (404),
``method_not_allowed`` (405), ``failed_precondition`` (409, a session's
write refused), ``limit_exceeded`` (409, a delete-range past its bound),
``already_exists`` (409, a lease id taken), ``payload_too_large`` (413),
``unsupported_media_type`` (415), ``request_timeout`` (408: the body did not
arrive within ``--request-timeout-ms``), ``overloaded`` (429),
``insufficient_storage`` (507, a blob the disk has no room for),
``unavailable`` (503, with ``leader`` and
``leader_address`` when known, and a ``Ramraft-Leader`` header naming the
leader's gRPC address) and ``deadline_exceeded`` (504); an application
command that failed is ``command_failed`` (409). The errors of the node are
answered from the one table in server/request_errors.py, the same the gRPC
services use. A request the HTTP parser refuses before any route runs (an
unknown method, a line over 8190 bytes, a bad Content-Length) is a JSON
``invalid_argument`` 400 whatever its path (:func:`_json_parse_errors`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote_to_bytes

import grpc
import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from ramraft.proto import admin_pb2, admin_pb2_grpc
from ramraft.server.config import STOP_GRACE, join_address, parse_address
from ramraft.server.hosting import CONTEXT, AppContext, SessionPool, write_with_session
from ramraft.server.logs import code_location
from ramraft.server.machines.kv import (
    CasResult,
    DeleteResult,
    PutResult,
    encode_cas,
    encode_delete,
    encode_put,
)
from ramraft.server.machines.sessions import valid_session
from ramraft.server.request_errors import (
    NotLeader,
    check_command_result,
    error_message,
    wire_status,
)
from ramraft.server.rpc.services import value_before
from ramraft.server.runtime.deadline import DEFAULT_TIMEOUT
from ramraft.server.runtime.node_api import InputLimits
from ramraft.server.runtime.status import RuntimeReports, RuntimeStatus
from ramraft.server.security.auth import (
    Principal,
    bearer_token,
    http_required_role,
)
from ramraft.server.security.budget import (
    CALL_RESERVATION,
    MESSAGE_COPIES,
    Reservation,
    page_budget,
    reserve_answer,
)
from ramraft.server.web.blobs import BlobRoutes
from ramraft.server.web.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ramraft.server.web.revisions import WATCH_PATH, RevisionRoutes
from ramraft.server.web.sse import RELEASE_SLOT
from ramraft.server.web.status_page import render_status_page
from ramraft.server.web.view import WebTierView

log = structlog.get_logger("ramraft.web")

CLIENT_ID_HEADER = "Ramraft-Client-Id"
SEQUENCE_HEADER = "Ramraft-Sequence"
LEADER_HEADER = "Ramraft-Leader"
INDEX_HEADER = "Ramraft-Index"
MAX_TIMEOUT = 60.0
# The most of aiohttp's sentence about a request it could not parse that an answer quotes.
MAX_PARSER_SENTENCE = 200
# Seconds a stopping node gives the web tier's clean-up (the application's
# on_shutdown and on_cleanup hooks included) before it goes on without it.
CLEANUP_LIMIT = 5.0
APP_PREFIX = "/app/"
KV_PATH_PREFIX = "/v1/kv/"
CAS_PATH_PREFIX = "/v1/cas/"

RouteHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Seconds a request's body has to arrive (--request-timeout-ms).
REQUEST_TIMEOUT = web.AppKey("request_timeout", float)


class HttpError(Exception):
    """An error response: status, a short code and a sentence."""

    def __init__(
        self,
        status: int,
        error: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


class LeaderUnreachable(Exception):
    """The status page could not ask the leader for its followers' progress."""


def bad_request(detail: str) -> HttpError:
    return HttpError(400, "invalid_argument", detail)


def http_error_for(error: BaseException, reports: RuntimeReports) -> HttpError | None:
    """The answer for an error of the node (the table in
    server/request_errors.py); None for one no caller should see (a bug)."""
    status = wire_status(error)
    if status is None:
        return None
    headers = {"Retry-After": "1"} if status.http_status in (429, 503) else {}
    extra: dict[str, Any] = {}
    if status.names_leader:
        # A header with the leader's gRPC address, and JSON fields.
        now = reports.status()
        leader, address = now.leader, now.leader_address
        if isinstance(error, NotLeader):
            leader, address = error.leader, error.leader_address
        if address:
            headers[LEADER_HEADER] = address
        extra = {"leader": leader or None, "leader_address": address or None}
    return HttpError(
        status.http_status, status.http_error, error_message(error), headers=headers, **extra
    )


_HTTP_ERROR_CODES = {
    400: "invalid_argument",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


# ---- request parsing ------------------------------------------------------------------------


def _key_from_path(request: web.Request, prefix: str) -> str:
    """The key: the rest of the raw path after ``prefix``, percent-decoded
    as UTF-8 (strictly: a key that is not valid text is refused, not
    silently changed). ``%2F`` and ``/`` both mean a slash in the key."""
    raw = request.raw_path.split("?", 1)[0]
    if not raw.startswith(prefix):
        raise bad_request(f"the key goes after {prefix}")
    try:
        key = unquote_to_bytes(raw[len(prefix) :]).decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request("the key is not valid UTF-8 after percent-decoding") from None
    if not key:
        raise bad_request(f"missing key: use {prefix}KEY")
    return key


def _consistency(request: web.Request) -> bool:
    """True for a linearizable read (the default, as over gRPC)."""
    value = request.query.get("consistency", "linearizable").strip().lower()
    if value == "linearizable":
        return True
    if value == "serializable":
        return False
    raise bad_request(f"unknown consistency {value!r}; use linearizable or serializable")


def _timeout(request: web.Request) -> float | None:
    raw = request.query.get("timeout")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise bad_request(f"timeout {raw!r} is not a number of seconds") from None
    if not 0 < value <= MAX_TIMEOUT:
        raise bad_request(f"timeout must be in (0, {MAX_TIMEOUT:g}] seconds, got {raw}")
    return value


def _session(request: web.Request) -> tuple[int, int] | None:
    client_id = request.headers.get(CLIENT_ID_HEADER)
    sequence = request.headers.get(SEQUENCE_HEADER)
    if client_id is None and sequence is None:
        return None
    if client_id is None or sequence is None:
        raise bad_request(f"a session needs both {CLIENT_ID_HEADER} and {SEQUENCE_HEADER}")
    try:
        session = (int(client_id), int(sequence))
    except ValueError:
        raise bad_request("session headers must be decimal integers") from None
    if not valid_session(*session):
        raise bad_request("session ids must be integers in 1..2**64-1")
    return session


def _decode_value(text: object, encoding: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise bad_request(f"{what} must be a JSON string")
    if encoding == "utf-8":
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            raise bad_request(f"{what} is not valid Unicode text") from None
    if encoding == "base64":
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise bad_request(f"{what} is not valid base64") from None
    raise bad_request(f"unknown encoding {encoding!r}; use utf-8 or base64")


async def read_body(request: web.Request) -> bytes:
    """The request body, which must arrive within the request timeout (a
    client that trickles its body gives its slot and budget back: 408)."""
    timeout = request.app[REQUEST_TIMEOUT]
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        raise HttpError(
            408, "request_timeout", f"the request body did not arrive within {timeout:g} s"
        ) from None
    except web.RequestPayloadError as e:
        raise broken_body(e) from None


def broken_body(error: web.RequestPayloadError) -> HttpError:
    """A body aiohttp could not read to its end: a Content-Encoding whose
    bytes do not decode (gzip, deflate), a broken chunked encoding."""
    reason = getattr(error.__cause__, "message", None) or str(error)
    return bad_request(f"the request body could not be read: {reason}")


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise HttpError(415, "unsupported_media_type", "send a JSON body (application/json)")
    raw = await read_body(request)
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HttpError(400, "bad_json", f"the body is not valid JSON: {e}") from None
    except RecursionError:
        raise HttpError(400, "bad_json", "the body is not valid JSON: nested too deeply") from None
    except ValueError:
        # int() refuses numbers of more than sys.get_int_max_str_digits() digits
        raise HttpError(400, "bad_json", "the body holds a number with too many digits") from None
    if not isinstance(body, dict):
        raise HttpError(400, "bad_json", "the body must be a JSON object")
    return body


def _encode_value(value: bytes) -> dict[str, str]:
    try:
        return {"value": value.decode("utf-8"), "encoding": "utf-8"}
    except UnicodeDecodeError:
        return {"value": base64.b64encode(value).decode("ascii"), "encoding": "base64"}


def _revision(result: PutResult | DeleteResult | CasResult) -> dict[str, int]:
    """A write's ``revision`` (key-value version 2, as the gRPC answers'
    header has it): the change's, or the current one when nothing changed.
    Before version 2 there are no revisions, and no field."""
    return {"revision": result.revision} if result.revision else {}


def _wants_raw(request: web.Request) -> bool:
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "raw"):
        raise bad_request(f"unknown format {fmt!r}; use json or raw")
    return fmt == "raw" or request.headers.get("Accept", "") == "application/octet-stream"


class KVRoutes:
    """The JSON API over the key-value machine.

    Values are bytes. ``PUT /v1/kv/{key}`` takes the raw body as the value,
    unless it is sent as ``application/json``: then the body is
    ``{"value": "...", "encoding": "utf-8"|"base64"}``. ``GET`` answers
    ``{"key", "value", "encoding", "index"}`` where ``encoding`` says whether
    ``value`` is the text itself (valid UTF-8) or base64; ``?format=raw`` (or
    ``Accept: application/octet-stream``) answers the raw bytes instead, with
    the index in a ``Ramraft-Index`` header. Writes answer the index of
    the entry that made them and, once the cluster runs key-value version 2,
    their ``revision`` (as the gRPC answers' header: the change's, or the
    current one when nothing changed).

    Reads take ``?consistency=linearizable`` (default) or ``serializable``
    (this node's memory, at once); every request takes ``?timeout=SECONDS``
    (default 5).

    Writes are exactly-once across the node's own retries (a leader change
    while the write is in flight): the node gives each write a session.
    A client that retries a write itself (after a timeout or a dropped
    connection) should send its own session as ``Ramraft-Client-Id`` and
    ``Ramraft-Sequence`` headers -- one write at a time per client id, the
    sequence growing by one per write, the same on a retry -- or accept that
    the write may be applied twice.
    """

    def __init__(self, view: WebTierView) -> None:
        self.api = view.api
        self.kv = view.kv
        self.limits: InputLimits = view.api.limits
        self.sessions = SessionPool()

    async def _write(
        self, request: web.Request, encode: Callable[[tuple[int, int] | None], bytes]
    ) -> tuple[int, object]:
        api = self.api
        session = _session(request)
        timeout = _timeout(request)
        try:
            encode(None)  # bad arguments fail here, before anything is proposed
        except (TypeError, ValueError) as e:
            raise bad_request(str(e)) from None
        if session is not None:
            index, result = await api.write(encode(session), timeout, retry_unsafe=True)
        else:
            index, result = await write_with_session(api, self.sessions, encode, timeout)
        check_command_result(result)
        return index, result

    async def get(self, request: web.Request) -> web.StreamResponse:
        key = _key_from_path(request, KV_PATH_PREFIX)
        self.limits.check_key(key)
        raw = _wants_raw(request)
        timeout = _timeout(request)
        await self.api.read(_consistency(request), timeout)
        found, value = self.kv.get(key)
        index = self.kv.applied_index
        if len(value) > 64 << 10:  # small answers are covered by the request's reservation
            await reserve_answer(2 * len(value), timeout or DEFAULT_TIMEOUT)  # JSON: base64
        if not found:
            raise HttpError(404, "not_found", f"no key {key!r}", index=index)
        if raw:
            return await send_body(
                request, value, "application/octet-stream", {INDEX_HEADER: str(index)}
            )
        return await send_json(request, {"key": key, **_encode_value(value), "index": index})

    async def put(self, request: web.Request) -> web.StreamResponse:
        key = _key_from_path(request, KV_PATH_PREFIX)
        self.limits.check_new_key(key)
        if request.content_type == "application/json":
            body = await _json_body(request)
            value = _decode_value(body.get("value"), body.get("encoding", "utf-8"), "value")
        else:
            value = await read_body(request)
        self.limits.check_value(value)
        _, result = await self._write(request, lambda s: encode_put(key, value, s))
        assert isinstance(result, PutResult)
        # The index of the entry that wrote the value: for a retried write
        # (same session), the first application's.
        return web.json_response({"key": key, "index": result.index, **_revision(result)})

    async def delete(self, request: web.Request) -> web.StreamResponse:
        key = _key_from_path(request, KV_PATH_PREFIX)
        self.limits.check_key(key)
        index, result = await self._write(request, lambda s: encode_delete(key, s))
        assert isinstance(result, DeleteResult)
        return web.json_response(
            {"key": key, "deleted": result.deleted, "index": index, **_revision(result)}
        )

    async def cas(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/cas/{key}`` with ``{"value": ..., "expected": ... | null,
        "encoding": ...}``: set ``value`` if the key's value is ``expected``
        (``null``: if the key is absent)."""
        key = _key_from_path(request, CAS_PATH_PREFIX)
        self.limits.check_new_key(key)
        body = await _json_body(request)
        encoding = body.get("encoding", "utf-8")
        value = _decode_value(body.get("value"), encoding, "value")
        if "expected" not in body:
            raise bad_request('give "expected": the current value, or null for "absent"')
        expected_raw = body["expected"]
        expected = (
            None if expected_raw is None else _decode_value(expected_raw, encoding, "expected")
        )
        self.limits.check_value(value)
        if expected is not None:
            self.limits.check_value(expected)
        index, result = await self._write(request, lambda s: encode_cas(key, expected, value, s))
        assert isinstance(result, CasResult)
        # The same answer as the gRPC API: the value before the swap, and the
        # index of the write's first application (a retry returns that one).
        current = _encode_value(value_before(result, expected))
        index = result.index
        return web.json_response(
            {
                "key": key,
                "swapped": result.swapped,
                "found": result.found,
                "current": current["value"],
                "encoding": current["encoding"],
                "index": index,
                **_revision(result),
            }
        )

    async def range(self, request: web.Request) -> web.StreamResponse:
        prefix = request.query.get("prefix", "")
        start_after = request.query.get("start_after", "")
        raw_limit = request.query.get("limit", "0")
        try:
            limit = int(raw_limit)
        except ValueError:
            raise bad_request(f"limit {raw_limit!r} is not a whole number") from None
        if limit < 0:
            raise bad_request("limit must be >= 0 (0: the server's maximum)")
        cap = self.limits.max_range_limit
        limit = min(limit or cap, cap)
        timeout = _timeout(request)
        await self.api.read(_consistency(request), timeout)
        page = self.limits.max_range_bytes
        async with page_budget(page, timeout or DEFAULT_TIMEOUT) as budget:
            # Half the gRPC page: as JSON (base64 for binary values) the page
            # takes about twice its bytes.
            items, more = self.kv.range(prefix, start_after, limit, max_bytes=page // 2)
            budget.used(2 * sum(len(k) + len(v) for k, v in items))
            return await send_json(
                request,
                {
                    "items": [{"key": k, **_encode_value(v)} for k, v in items],
                    "more": more,
                    "index": self.kv.applied_index,
                },
            )


async def send_body(
    request: web.Request, body: bytes, content_type: str, headers: dict[str, str] | None = None
) -> web.StreamResponse:
    """Write ``body`` before returning (not after, as a returned web.Response
    is): the write waits while the client does not read, so the bytes stay
    counted in the memory budget (released when the handler returns) until
    the connection has taken them."""
    response = web.StreamResponse(headers=headers)
    response.content_type = content_type
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body)
    await response.write_eof()
    return response


async def send_json(request: web.Request, data: Any) -> web.StreamResponse:
    return await send_body(request, json.dumps(data).encode(), "application/json")


# ---- the server -----------------------------------------------------------------------------


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, counted while it is open.

    Over --max-connections, or --max-connections-per-source from its address,
    the connection is closed as soon as it is made (with TLS: after the
    handshake, which ``ssl_handshake_timeout`` bounds). A request's headers
    must arrive within the handshake timeout of its first byte, or the
    connection is closed (slowloris: aiohttp itself waits for headers as
    long as the client keeps sending)."""

    def __init__(self, inner: Any, tier: WebTier) -> None:
        self.inner = inner
        self.tier = tier
        self.counted = False
        self.source = ""
        self.transport: asyncio.BaseTransport | None = None
        self.requests = 0  # being handled now (headers complete)
        self.header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tier = self.tier
        peer = transport.get_extra_info("peername")
        self.source = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        from_source = tier.by_source.get(self.source, 0)
        if tier.connections >= tier.max_connections or from_source >= tier.max_per_source:
            tier.refused_connections += 1
            tier.view.refusals.warning(
                "http_connection_refused",
                open=tier.connections,
                limit=tier.max_connections,
                from_source=from_source,
                per_source_limit=tier.max_per_source,
                source=self.source,
            )
            transport.close()
            return
        self.counted = True
        self.transport = transport
        tier.connections += 1
        tier.by_source[self.source] = from_source + 1
        tier.open_connections[transport] = self
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.counted:
            self.counted = False
            tier = self.tier
            tier.connections -= 1
            left = tier.by_source.get(self.source, 1) - 1
            if left:
                tier.by_source[self.source] = left
            else:
                tier.by_source.pop(self.source, None)
            tier.open_connections.pop(self.transport, None)
            self._disarm()
            self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self.counted:
            return
        if not self.requests and self.header_timer is None:
            # The first byte of a request: its headers have until the timer.
            loop = asyncio.get_running_loop()
            self.header_timer = loop.call_later(self.tier.header_timeout, self._headers_too_slow)
        self.inner.data_received(data)

    def request_started(self) -> None:
        self.requests += 1
        self._disarm()

    def request_finished(self) -> None:
        self.requests -= 1

    def _disarm(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _headers_too_slow(self) -> None:
        self.header_timer = None
        if self.requests or self.transport is None:
            return
        self.tier.view.refusals.warning(
            "http_headers_timeout",
            source=self.source,
            timeout_seconds=self.tier.header_timeout,
        )
        self.transport.close()

    def eof_received(self) -> bool | None:
        if not self.counted:
            return None
        result: bool | None = self.inner.eof_received()
        return result

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


def _json_parse_errors(sample: RequestHandler, tier: WebTier) -> type[RequestHandler] | None:
    """aiohttp's handler of one connection, with requests its parser refuses
    answered as every /v1/ error is: JSON.

    aiohttp answers such a request (a line over 8190 bytes, a bad
    Content-Length or Transfer-Encoding, a method it does not know) before
    any route or middleware runs, in text/plain, and logs it at error level.
    No route ran, so the path is unknown: the answer takes the API's form,
    ``{"error": "invalid_argument", "detail": ...}`` with aiohttp's sentence
    (the same 400, and the connection closes as before), and the log a
    rate-limited ``http_bad_request`` naming the source and the error's type,
    not the request bytes its sentence may quote. Any other error goes on to
    aiohttp's own answer.

    aiohttp builds each connection's handler itself (``Server.__call__``),
    so the tier gives the handler this subclass, which adds no field, after
    it is built. None (aiohttp's text answers) if this aiohttp's handler
    cannot take it (``sample``: a handler to try it on)."""

    class JsonParseErrors(RequestHandler):
        __slots__ = ()

        def handle_error(
            self,
            request: web.BaseRequest,
            status: int = 500,
            exc: BaseException | None = None,
            message: str | None = None,
        ) -> web.StreamResponse:
            if not (400 <= status < 500 and isinstance(exc, HttpProcessingError)):
                return super().handle_error(request, status, exc, message)
            tier.view.refusals.warning(
                "http_bad_request",
                source=request.remote,
                error=type(exc).__name__,
                status=status,
            )
            sentence = (message or exc.message or type(exc).__name__).strip()
            if len(sentence) > MAX_PARSER_SENTENCE:
                sentence = sentence[:MAX_PARSER_SENTENCE] + "..."
            error = HttpError(
                status, "invalid_argument", f"the request is not valid HTTP: {sentence}"
            )
            response = tier._error_response(error, True, request)
            response.force_close()
            return response

    try:
        sample.__class__ = JsonParseErrors
    except TypeError:  # pragma: no cover - an aiohttp whose handler is not a Python class
        log.warning("http_parse_errors_as_text", reason="aiohttp's handler takes no subclass")
        return None
    return JsonParseErrors


class WebTier:
    def __init__(self, view: WebTierView) -> None:
        self.view = view
        limits = view.limits
        # Default: room for a value of the maximum size sent as base64 JSON.
        max_body = limits.http_body_bytes()
        self.max_body = max_body
        self.max_connections = limits.max_connections
        self.max_per_source = limits.max_connections_per_source
        self.header_timeout = limits.handshake_timeout_ms / 1000
        self.request_timeout = limits.request_timeout_ms / 1000
        self.connections = 0  # open (TLS: handshake done)
        self.by_source: dict[str, int] = {}  # open connections by remote address
        self.open_connections: dict[object, _Counted] = {}  # by transport
        self.refused_connections = 0
        self.app = web.Application(client_max_size=max_body, middlewares=[self._middleware])
        self.app[REQUEST_TIMEOUT] = self.request_timeout
        self.kv = KVRoutes(view)
        router = self.app.router
        router.add_get("/", self.status_page)
        router.add_get("/v1/status", self.status)
        router.add_get("/v1/kv", self.kv.range)
        # [\s\S]: any character, a newline too (a key written before keys
        # with control characters were refused must stay readable).
        kv = router.add_resource("/v1/kv/{key:[\\s\\S]*}")
        kv.add_route("GET", self.kv.get)
        kv.add_route("HEAD", self.kv.get)  # as add_get does: 200 or 404, no body
        kv.add_route("PUT", self.kv.put)
        kv.add_route("DELETE", self.kv.delete)
        router.add_post("/v1/cas/{key:[\\s\\S]*}", self.kv.cas)
        self.revisions = RevisionRoutes(view, self.kv.sessions, _json_body, _session, _timeout)
        router.add_post("/v1/txn", self.revisions.txn)
        router.add_get(WATCH_PATH, self.revisions.watch)
        if view.blobs is not None:
            BlobRoutes(view.blobs, self.request_timeout).add_to(router)
        router.add_get("/v1/events", self.events)
        router.add_get("/metrics", self.metrics)
        router.add_get("/healthz", self.healthz)
        router.add_get("/readyz", self.readyz)
        self.app_context: AppContext | None = None
        hosted = view.app
        if hosted is not None:
            sub = web.Application()
            self.app_context = AppContext(
                view.node_id,
                hosted.app.model,
                view.kv,
                view.api,
                hosted.jobs,
                hosted.events,
                blobs=view.blobs,
            )
            sub[CONTEXT] = self.app_context
            sub.add_routes(list(hosted.app.routes))
            if hosted.app.setup is not None:
                hosted.app.setup(sub)
            self.app.add_subapp(APP_PREFIX, sub)
        self.runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self.address = ""
        # (when, leader address, its members' progress or why it failed)
        self._leader_view: tuple[float, str, dict[str, dict[str, Any]] | str] | None = None

    async def start(self, address: str) -> None:
        host, port = parse_address(address, "--http")
        # A request still running when the node stops gets a gRPC call's
        # grace, not aiohttp's default of 60 s, for which a handler that
        # streams (an application's long poll, say) would hold the stop.
        self.runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=STOP_GRACE)
        await self.runner.setup()
        tls = self.view.tls
        ssl_context = tls.ssl_context() if tls is not None else None
        server = self.runner.server
        assert server is not None
        json_errors = _json_parse_errors(server(), self)

        def protocol() -> asyncio.BaseProtocol:
            inner = server()
            if json_errors is not None:
                inner.__class__ = json_errors
            return _Counted(inner, self)

        loop = asyncio.get_running_loop()
        try:
            self._listener = await loop.create_server(
                protocol,
                host,
                port,
                ssl=ssl_context,
                ssl_handshake_timeout=self.header_timeout if ssl_context is not None else None,
                reuse_address=True,
            )
        except OSError as e:
            raise OSError(f"--http {address}: cannot listen: {e.strerror or e}") from e
        # The port bound, which port 0 leaves to the kernel (node.listening()).
        self.address = join_address(host, self._listener.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
        if self.runner is None:
            return
        # Bounded: an application's on_shutdown or on_cleanup hook (its
        # ``setup`` may add them) that never returns must not keep the node
        # from stopping. Not wait_for, which would wait for the cancelled
        # hook to end.
        cleanup = asyncio.ensure_future(self.runner.cleanup())
        await asyncio.wait({cleanup}, timeout=CLEANUP_LIMIT)
        if not cleanup.done():
            cleanup.cancel()
            log.warning(
                "web_tier_cleanup_timed_out",
                after_seconds=CLEANUP_LIMIT,
                detail="an on_shutdown or on_cleanup hook of the application did not return; "
                "the node stops without it",
            )
        elif not cleanup.cancelled() and cleanup.exception() is not None:
            log.error("web_tier_cleanup_failed", error=repr(cleanup.exception()))

    # ---- cross-cutting: errors and request metrics ------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: RouteHandler) -> web.StreamResponse:
        started = time.perf_counter()
        response: web.StreamResponse | None = None
        status = 500
        connection = self.open_connections.get(request.transport)
        if connection is not None:
            connection.request_started()
        try:
            response = await self._handle(request, handler)
            status = response.status
            return response
        except web.HTTPException as e:
            status = e.status
            raise
        finally:
            if connection is not None:
                connection.request_finished()
            route = request.match_info.route
            resource = route.resource
            name = f"{request.method} {resource.canonical}" if resource is not None else "unmatched"
            self.view.metrics.observe_request(
                "http", name, str(status), time.perf_counter() - started
            )

    def _authorize(self, request: web.Request) -> None:
        """Raise 401/403 unless the request's token has the role it needs."""
        tokens = self.view.tokens
        required = http_required_role(request.method, request.path)
        if tokens is None or required is None:
            return
        api_route = request.path.startswith("/v1/")
        scheme = "Bearer" if api_route else "Basic"  # Basic: a browser asks for the token
        challenge = {"WWW-Authenticate": f'{scheme} realm="ramraft"'}
        token = bearer_token(request.headers.get("Authorization"))
        principal: Principal | None = tokens.authenticate(token) if token is not None else None
        if principal is None:
            reason = "the token is not valid" if token is not None else "missing credentials"
            self._log_refusal(request, "UNAUTHENTICATED", None, reason)
            raise HttpError(
                401,
                "unauthenticated",
                f"{reason}: send 'Authorization: Bearer TOKEN'",
                headers=challenge,
            )
        denied = principal.refusal(required, f"{request.method} {request.path}")
        if denied is not None:
            self._log_refusal(request, "PERMISSION_DENIED", principal.name, denied)
            raise HttpError(403, "permission_denied", denied)

    def _log_refusal(self, request: web.Request, code: str, who: str | None, reason: str) -> None:
        self.view.refusals.warning(
            "request_refused",
            code=code,
            method=f"HTTP {request.method} {request.path[:200]}",
            who=who,
            peer=request.remote,
            reason=reason,
        )

    async def _handle(self, request: web.Request, handler: RouteHandler) -> web.StreamResponse:
        api_route = request.path.startswith("/v1/")
        try:
            self._authorize(request)
        except HttpError as e:
            return self._error_response(e, api_route, request)
        if request.path in ("/healthz", "/readyz", WATCH_PATH):
            # A watch lives as long as its client wants: --max-watches
            # bounds those, not the in-flight request limits.
            return await self._serve(request, handler, api_route)
        # The address, then the transport: counted per connection and per source.
        connection = f"http:{request.remote}:{id(request.transport)}"
        refused = self.view.limiter.enter(connection)
        if refused is not None:
            self.view.refusals.warning(
                "request_refused", code="RESOURCE_EXHAUSTED", method=request.path[:200],
                peer=request.remote,
            )  # fmt: skip
            error = HttpError(429, "overloaded", refused, headers={"Retry-After": "1"})
            return self._error_response(error, api_route, request)
        reservation = Reservation(self.view.budget, self.view.limiter.is_light(connection))
        held = True

        def release() -> None:
            # Once: an event stream gives its slot and its reserved bytes back
            # when it starts streaming (web/sse.py bounds and counts open
            # streams itself).
            nonlocal held
            if held:
                held = False
                reservation.release()
                self.view.limiter.leave(connection)

        request[RELEASE_SLOT] = release
        try:
            # The body's bytes (its declared length, else the most it may
            # have), before a byte of it is read.
            expected = request.content_length
            body = min(self.max_body, expected) if expected is not None else self.max_body
            if not request.body_exists:
                body = 0
            if not await reservation.grow(
                MESSAGE_COPIES * (body + (16 << 10)), self.request_timeout
            ):
                self.view.refusals.warning(
                    "request_refused", code="RESOURCE_EXHAUSTED", method=request.path[:200],
                    peer=request.remote, reason="memory budget",
                )  # fmt: skip
                error = HttpError(
                    429,
                    "overloaded",
                    f"this node's memory budget for requests in flight "
                    f"({self.view.budget.total} bytes) is in use; retry later",
                    headers={"Retry-After": "1"},
                )
                return self._error_response(error, api_route, request)
            CALL_RESERVATION.set(reservation)
            reservation.read_done()  # the body's bytes are reserved
            return await self._serve(request, handler, api_route)
        finally:
            release()

    async def _serve(
        self, request: web.Request, handler: RouteHandler, api_route: bool
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except HttpError as e:
            error = e
        except web.HTTPException as e:
            if not api_route or e.status < 400:
                raise
            error = HttpError(
                e.status,
                _HTTP_ERROR_CODES.get(e.status, "error"),
                e.reason if e.status != 405 else f"{request.method} is not allowed here",
                headers={"Allow": e.headers["Allow"]} if "Allow" in e.headers else None,
            )
        except Exception as e:
            answer = http_error_for(e, self.view.reports)
            if answer is None:
                return self._internal_error(e, api_route, request)
            error = answer
        return self._error_response(error, api_route, request)

    def _internal_error(
        self, error: Exception, api_route: bool, request: web.Request
    ) -> web.StreamResponse:
        """A bug, ramraft's or (under /app/) the application's own page: its
        traceback in the log, and a 500 in the route's own form (JSON under
        /v1/), not aiohttp's text. A handler that failed after sending part
        of its answer (a stream) cannot be given another: the connection is
        closed, as aiohttp does."""
        log.error(
            "request_failed",
            method=request.method,
            path=request.path[:200],
            where=code_location(error),
            exc_info=error,
        )
        if request.writer.output_size > 0:
            raise error
        return self._error_response(
            HttpError(
                500,
                "internal",
                f"the request failed ({type(error).__name__}); "
                "the node's log has the traceback (event request_failed)",
            ),
            api_route,
            request,
        )

    def _error_response(
        self, error: HttpError, api_route: bool, request: web.BaseRequest
    ) -> web.StreamResponse:
        if error.status == 413 and error.detail == "Request Entity Too Large":
            # aiohttp's own words: say which limit
            error.detail = f"the request body is larger than {self.max_body} bytes"
        if api_route:
            return web.json_response(
                {"error": error.error, "detail": error.detail, **error.extra},
                status=error.status,
                headers=error.headers,
            )
        return web.Response(
            text=f"{error.status} {error.error}: {error.detail}\n",
            status=error.status,
            headers=error.headers,
        )

    # ---- pages ------------------------------------------------------------------------------

    async def status_page(self, request: web.Request) -> web.StreamResponse:
        status = await self.status_data()
        return web.Response(text=render_status_page(status), content_type="text/html")

    async def status(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(await self.status_data())

    async def status_data(self) -> dict[str, Any]:
        view = self.view
        status = view.reports.status()
        node = status.to_json()
        node["uptime_seconds"] = round(time.time() - view.started_at, 1)
        node["http"] = self.address
        members, members_from, members_error = await self._members(status)
        changes: list[dict[str, Any]] = []
        last: tuple[int, str] | None = None
        for seen in view.reports.leader_changes():
            if (seen.term, seen.leader) == last:
                continue
            change = {"time": round(seen.time, 3), "term": seen.term, "leader": seen.leader or None}
            if not seen.leader and last is not None and not last[1]:
                changes[-1] = change  # one row for an election, however many rounds
            else:
                changes.append(change)
            last = (seen.term, seen.leader)
        rates = view.metrics.rates.rates()
        hosted = view.app
        return {
            "node": node,
            "members": members,
            "members_from": members_from,
            "members_error": members_error,
            "leader_changes": changes[::-1][:20],
            "rates": {
                "requests": {k: v for k, v in rates.items() if " " in k},
                "applied_per_second": rates.get("applied", 0.0),
                "proposed_per_second": rates.get("proposed", 0.0),
                "window_seconds": view.metrics.rates.seconds,
            },
            "forwarded_writes": view.api.forwarded,
            "jobs": (
                [r.to_json() for r in hosted.jobs.report()]
                if hosted is not None and hosted.jobs is not None
                else []
            ),
            "app": (
                {
                    "title": hosted.app.title or hosted.machine.model_name,
                    "model": hosted.machine.model_name,
                    "url": APP_PREFIX,
                }
                if hosted is not None
                else None
            ),
            "time": round(time.time(), 3),
        }

    async def _members(
        self, status: RuntimeStatus
    ) -> tuple[list[dict[str, Any]], str | None, str | None]:
        """Members with replication progress: this node's own view when it
        leads, otherwise the leader's (asked over gRPC, at most once a second)."""
        members = self.view.reports.members()
        leader = status.leader
        base: dict[str, dict[str, Any]] = {
            m.id: {
                "id": m.id,
                "address": m.address,
                "voter": m.voter,
                "leader": m.id == leader,
                "self": m.id == status.id,
                "match_index": None,
                "lag": None,
                "active": None,
            }
            for m in members
        }
        if status.leading:
            for m in members:
                base[m.id].update(match_index=m.match_index, lag=m.lag, active=m.active)
            return list(base.values()), status.id, None
        address = status.leader_address
        if not leader or not address:
            return list(base.values()), None, "no leader is known"
        try:
            view = await self._leader_members(leader, address)
        except LeaderUnreachable as e:
            return list(base.values()), None, str(e)
        for member_id, progress in view.items():
            if member_id in base:
                base[member_id].update(progress)
        return list(base.values()), leader, None

    async def _leader_members(self, leader: str, address: str) -> dict[str, dict[str, Any]]:
        """The leader's view of its followers' progress, asked at most once
        a second (a failure is remembered as long, so a page polling a node
        whose leader just died does not wait on every poll)."""
        cached = self._leader_view
        now = time.monotonic()
        if cached is not None and cached[1] == address and now - cached[0] < 1.0:
            if isinstance(cached[2], str):
                raise LeaderUnreachable(cached[2])
            return cached[2]
        # Over the peer port (with TLS, this node's certificate says who asks).
        channel = self.view.peer_channel(leader)
        stub = admin_pb2_grpc.AdminStub(channel)
        try:
            response = await stub.Status(admin_pb2.StatusRequest(), timeout=0.5)
        except grpc.aio.AioRpcError as e:
            reason = f"could not ask the leader: {e.code().name}"
            self._leader_view = (now, address, reason)
            raise LeaderUnreachable(reason) from e
        view = (
            {
                m.id: {"match_index": m.match_index, "lag": m.lag, "active": m.active}
                for m in response.members
            }
            if response.members_from_leader
            else {}
        )
        self._leader_view = (now, address, view)
        return view

    async def events(self, request: web.Request) -> web.StreamResponse:
        hosted = self.view.app
        if hosted is None or hosted.events is None:
            raise HttpError(404, "not_found", "this node hosts no application (--app)")
        topics = request.query.getall("topic", []) or None
        return await hosted.events.stream(request, topics)

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        body = self.view.metrics.exposition()
        response = web.Response(body=body)
        response.headers["Content-Type"] = METRICS_CONTENT_TYPE
        return response

    async def healthz(self, request: web.Request) -> web.Response:
        failed = self.view.reports.status().failed
        if failed:
            return web.json_response({"alive": False, "error": failed}, status=503)
        return web.json_response({"alive": True})

    async def readyz(self, request: web.Request) -> web.Response:
        ready = self.view.reports.status().ready
        return web.json_response({"ready": ready}, status=200 if ready else 503)

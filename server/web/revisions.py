"""The web tier's key-value version 2 routes: ``POST /v1/txn`` (a
transaction as JSON) and ``GET /v1/watch`` (changes as Server-Sent Events).

``POST /v1/txn``
    ``{"compare": [...], "success": [...], "failure": [...]}``; a compare is
    ``{"key", "target": "value"|"version"|"create_revision"|"mod_revision"|
    "lease", "result": "=="|"!="|"<"|">" (default "=="), "value"}`` (a value
    target's ``value`` is text, or base64 with ``"encoding": "base64"``; the
    others' a number); an op is one of ``{"put": {"key", "value",
    "encoding", "lease"}}``, ``{"get": {"key"}}``, ``{"delete": {"key"}}``,
    ``{"range": {"prefix", "limit"}}``, ``{"delete_range": {"prefix"}}``.
    Answers ``{"succeeded", "revision", "index", "responses": [...]}``, one
    response per op of the branch that ran. The same limits and errors as
    ``KV.Txn`` (400 for a bad transaction, 409 ``limit_exceeded``, 404 for a
    lease that does not exist); exactly-once as the other writes (the node's
    session, or the caller's ``Ramraft-Client-Id``/``Ramraft-Sequence``).

``GET /v1/watch?prefix=P`` (or ``?key=K``; ``&start_revision=N``)
    Server-Sent Events: each revision's changes of the watched keys are one
    ``change`` event whose id is the revision and whose data is
    ``{"revision", "events": [{"type": "PUT"|"DELETE", "key", "value",
    "encoding", ...}]}``; a ``created`` event first and ``progress`` events
    while quiet carry ids too (everything up to them has been sent), so a
    client that reconnects with ``Last-Event-ID`` (browsers do) resumes
    after the last one, without a gap or a repeat. A start older than this
    node's history ends the stream with a ``compacted`` event
    (``{"compact_revision", "reason"}``), any other end of the watch with a
    ``canceled`` event. Watches here count against ``--max-watches``, not
    the in-flight request limits.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ramraft.proto import kv_pb2
from ramraft.server.hosting import SessionPool, write_with_session
from ramraft.server.machines.kv import encode_txn
from ramraft.server.machines.kvops import OpResult, TxnOpKind, TxnResult
from ramraft.server.request_errors import BadRequest, check_command_result
from ramraft.server.rpc.kvproto import (
    check_delete_ranges,
    reserve_txn_reads,
    txn_from_request,
)
from ramraft.server.rpc.watch import WatchOut, WatchSpec
from ramraft.server.runtime.deadline import DEFAULT_TIMEOUT
from ramraft.server.web.view import WebTierView

__all__ = ["WATCH_PATH", "RevisionRoutes"]

WATCH_PATH = "/v1/watch"
_RESULTS = {
    "==": kv_pb2.COMPARE_RESULT_EQUAL,
    "=": kv_pb2.COMPARE_RESULT_EQUAL,
    ">": kv_pb2.COMPARE_RESULT_GREATER,
    "<": kv_pb2.COMPARE_RESULT_LESS,
    "!=": kv_pb2.COMPARE_RESULT_NOT_EQUAL,
}
_TARGETS = ("value", "version", "create_revision", "mod_revision", "lease")


def _text_or_base64(value: bytes) -> dict[str, str]:
    try:
        return {"value": value.decode("utf-8"), "encoding": "utf-8"}
    except UnicodeDecodeError:
        return {"value": base64.b64encode(value).decode("ascii"), "encoding": "base64"}


def _bytes(doc: dict[str, Any], what: str) -> bytes:
    value, encoding = doc.get("value", ""), doc.get("encoding", "utf-8")
    if not isinstance(value, str):
        raise BadRequest(f"{what}: value must be a JSON string")
    if encoding == "utf-8":
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate ("\ud800" in the JSON): no text, so no UTF-8
            # bytes either, as PUT /v1/kv refuses it.
            raise BadRequest(f"{what}: value is not valid Unicode text") from None
    if encoding == "base64":
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            raise BadRequest(f"{what}: value is not valid base64") from None
    raise BadRequest(f"{what}: unknown encoding {encoding!r}; use utf-8 or base64")


def _str(doc: dict[str, Any], name: str, what: str, default: str | None = None) -> str:
    value = doc.get(name, default)
    if not isinstance(value, str):
        raise BadRequest(f"{what}: {name!r} must be a JSON string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate ("\ud800" in the JSON), which a protobuf string
        # field refuses with an error of its own (no answer but a 500).
        raise BadRequest(f"{what}: {name!r} is not valid Unicode text") from None
    return value


def _int(doc: dict[str, Any], name: str, what: str) -> int:
    value = doc.get(name, 0)
    if type(value) is not int:
        raise BadRequest(f"{what}: {name!r} must be a whole number")
    if not -(2**63) <= value < 2**63:
        # The protobuf field (int64) would refuse it with an error of its own.
        raise BadRequest(f"{what}: {name!r} is outside the 64-bit range")
    return value


def _compare(n: int, doc: object) -> kv_pb2.Compare:
    what = f"compare {n}"
    if not isinstance(doc, dict):
        raise BadRequest(f"{what} must be a JSON object")
    target = doc.get("target", "value")
    if not isinstance(target, str) or target not in _TARGETS:
        raise BadRequest(f"{what}: target must be one of {', '.join(_TARGETS)}")
    result = doc.get("result", "==")
    if not isinstance(result, str) or result not in _RESULTS:  # a list is no dict key
        raise BadRequest(f"{what}: result must be one of ==, !=, <, >")
    compare = kv_pb2.Compare(key=_str(doc, "key", what), result=_RESULTS[result])
    if target == "value":
        compare.value = _bytes(doc, what)
    else:
        setattr(compare, target, _int(doc, "value", what))
    return compare


def _op(n: int, doc: object) -> kv_pb2.RequestOp:
    what = f"op {n}"
    if not isinstance(doc, dict) or len(doc) != 1:
        raise BadRequest(
            f"{what} must be an object with one of put, get, delete, range, delete_range"
        )
    ((kind, body),) = doc.items()
    if not isinstance(body, dict):
        raise BadRequest(f"{what}: {kind!r} must be a JSON object")
    if kind == "put":
        put = kv_pb2.PutRequest(
            key=_str(body, "key", what), value=_bytes(body, what), lease=_int(body, "lease", what)
        )
        return kv_pb2.RequestOp(put=put)
    if kind == "get":
        return kv_pb2.RequestOp(get=kv_pb2.GetRequest(key=_str(body, "key", what)))
    if kind == "delete":
        return kv_pb2.RequestOp(delete=kv_pb2.DeleteRequest(key=_str(body, "key", what)))
    if kind == "range":
        return kv_pb2.RequestOp(
            range=kv_pb2.RangeRequest(
                prefix=_str(body, "prefix", what, ""),
                start_after=_str(body, "start_after", what, ""),
                # uint32 on the wire; past the node's maximum it is that anyway
                limit=min(max(0, _int(body, "limit", what)), 2**32 - 1),
            )
        )
    if kind == "delete_range":
        return kv_pb2.RequestOp(
            delete_range=kv_pb2.DeleteRangeRequest(prefix=_str(body, "prefix", what, ""))
        )
    raise BadRequest(f"{what}: unknown op {kind!r}; use put, get, delete, range, delete_range")


def txn_request_from_json(body: dict[str, Any]) -> kv_pb2.TxnRequest:
    parts = {}
    for name in ("compare", "success", "failure"):
        items = body.get(name, [])
        if not isinstance(items, list):
            raise BadRequest(f"{name!r} must be a JSON array")
        parts[name] = items
    return kv_pb2.TxnRequest(
        compare=[_compare(n, c) for n, c in enumerate(parts["compare"])],
        success=[_op(n, o) for n, o in enumerate(parts["success"])],
        failure=[_op(n, o) for n, o in enumerate(parts["failure"])],
    )


def _meta(fields: tuple[Any, ...]) -> dict[str, int]:
    create, mod, version, lease = fields
    return {"create_revision": create, "mod_revision": mod, "version": version, "lease": lease}


def _op_json(result: OpResult, key: str) -> dict[str, Any]:
    kind = result[0]
    if kind == TxnOpKind.PUT:
        return {"put": {}}
    if kind == TxnOpKind.DELETE:
        return {"delete": {"deleted": result[1]}}
    if kind == TxnOpKind.GET:
        found, value = result[1], result[2]
        doc: dict[str, Any] = {"key": key, "found": found}
        if found:
            doc |= _text_or_base64(value) | _meta(result[3:])
        return {"get": doc}
    if kind == TxnOpKind.RANGE:
        items = [{"key": i[0]} | _text_or_base64(i[1]) | _meta(i[2:]) for i in result[1]]
        return {"range": {"items": items, "more": result[2]}}
    return {"delete_range": {"deleted": result[1]}}


def txn_json(request: kv_pb2.TxnRequest, result: TxnResult) -> dict[str, Any]:
    ops = request.success if result.succeeded else request.failure
    return {
        "succeeded": result.succeeded,
        "revision": result.revision,
        "index": result.index,
        "responses": [_op_json(r, op.get.key) for op, r in zip(ops, result.responses, strict=True)],
    }


def _sse(event: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _event_json(e: Any) -> dict[str, Any]:
    if e.kind:  # a delete
        return {"type": "DELETE", "key": e.key}
    return (
        {"type": "PUT", "key": e.key}
        | _text_or_base64(e.value)
        | {"create_revision": e.create_revision, "version": e.version, "lease": e.lease}
    )


def sse_messages(out: WatchOut) -> tuple[list[bytes], bool]:
    """The messages of one watch response, and whether the watch ended."""
    if out.canceled:
        if out.compact_revision:
            data = {"compact_revision": out.compact_revision, "reason": out.cancel_reason}
            return [_sse("compacted", data)], True
        return [_sse("canceled", {"reason": out.cancel_reason})], True
    if out.created:
        # Its id is where a reconnection resumes: before the first revision
        # this watch sends ("from now": the node's revision).
        return [], False
    if out.events:
        return [
            _sse("change", {"revision": rev, "events": [_event_json(e) for e in events]}, rev)
            for rev, events in out.events
        ], False
    return [_sse("progress", {"revision": out.revision}, out.revision)], False


class RevisionRoutes:
    """The two routes; ``json_body``, ``session`` and ``timeout`` read a
    request as the other routes of the web tier do (web/tier.py)."""

    def __init__(
        self,
        view: WebTierView,
        sessions: SessionPool,
        json_body: Callable[[web.Request], Awaitable[dict[str, Any]]],
        session: Callable[[web.Request], tuple[int, int] | None],
        timeout: Callable[[web.Request], float | None],
    ) -> None:
        self.view = view
        self.api = view.api
        self.kv = view.kv
        self.sessions = sessions
        self._json_body = json_body
        self._session = session
        self._timeout = timeout

    async def txn(self, request: web.Request) -> web.StreamResponse:
        body = await self._json_body(request)
        message = txn_request_from_json(body)
        txn = txn_from_request(message, self.api.limits)
        check_delete_ranges(txn, self.kv.count)
        try:
            encode_txn(txn)
        except ValueError as e:
            raise BadRequest(str(e)) from None
        session, timeout = self._session(request), self._timeout(request)
        await reserve_txn_reads(txn, self.api.limits, timeout or DEFAULT_TIMEOUT)
        if session is not None:
            _, result = await self.api.write(encode_txn(txn, session), timeout, retry_unsafe=True)
        else:
            _, result = await write_with_session(
                self.api, self.sessions, lambda s: encode_txn(txn, s), timeout
            )
        check_command_result(result)
        assert isinstance(result, TxnResult)
        return web.json_response(txn_json(message, result))

    async def watch(self, request: web.Request) -> web.StreamResponse:
        hub = self.view.watches
        if hub is None:
            raise BadRequest("this node serves no watches")
        query = request.query
        if ("prefix" in query) == ("key" in query):
            raise BadRequest("give ?prefix=P (every key starting with P) or ?key=K (one key)")
        start = 0
        raw = request.headers.get("Last-Event-ID") or query.get("start_revision")
        if raw is not None:
            try:
                start = int(raw)
            except ValueError:
                raise BadRequest(f"revision {raw!r} is not a whole number") from None
            if start < 0:
                raise BadRequest("a revision is not negative")
            if "Last-Event-ID" in request.headers:
                start += 1  # the last event the client saw: resume after it
        stream = hub.open()
        try:
            spec = WatchSpec(
                query.get("prefix", query.get("key", "")),
                prefix="prefix" in query,
                start_revision=start,
                progress_notify=True,
            )
            stream.create(spec)
            response = web.StreamResponse(
                headers={
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-cache",
                    "X-Accel-Buffering": "no",
                }
            )
            opened = False
            while True:
                outs = await stream.next_batch()
                chunks: list[bytes] = []
                ended = False
                for out in outs:
                    if out.created and not out.canceled:
                        first = (start or out.revision + 1) - 1
                        chunks.append(_sse("created", {"revision": first}, first))
                    messages, done = sse_messages(out)
                    chunks += messages
                    ended = ended or done
                if not opened:
                    if ended and not chunks[0].startswith(b"event: compacted"):
                        # Refused before anything was sent: an HTTP error is clearer.
                        reason = json.loads(chunks[0].split(b"data: ", 1)[1])["reason"]
                        raise _refused(reason)
                    await response.prepare(request)
                    opened = True
                try:
                    await response.write(b"".join(chunks))
                except ConnectionError:
                    return response  # the client went away: nothing more to tell it
                if ended or stream.shutting_down:
                    # Shutting down: what the node had is sent; the event
                    # source reconnects (through a Service, to another
                    # node) with Last-Event-ID and resumes after it.
                    return response
        finally:
            stream.close()


def _refused(reason: str) -> Exception:
    from ramraft.server.request_errors import CommandRefused, Overloaded

    if "key-value version 2" in reason:
        return CommandRefused(reason)
    if "--max-watches" in reason:
        return Overloaded(reason)
    return BadRequest(reason)

"""What the two clients share to multiplex key-value calls over ``KV.Stream``:
building a StreamRequest, reading its answer, and what a stream's end means
for the requests it still carries. No I/O here (the blocking and the asyncio
client each run one stream per node around these decisions).

The rules, so that the stream keeps every guarantee of the unary calls:

- A request's answer carries the status the unary call would have ended
  with; it becomes a ``StreamStatus`` (a ``grpc.RpcError``) that the retry
  policy (client/_core.py CallAttempts) handles exactly like a unary
  failure, leader hint (``leader``) included.
- Each request carries its attempt's deadline (``timeout_ms``) so that the
  node stops working on it when the client stops waiting; the client also
  keeps its own timer (a hung node sends nothing), whose expiry is
  DEADLINE_EXCEEDED as for a unary call.
- A stream that ends while requests wait for their answers has lost those
  answers: a write may or may not have been applied (proto/kv.proto). Each
  such request fails as UNAVAILABLE ("the stream broke"), so it is retried
  with its session on a new stream, on another node if need be, like a unary
  call that failed with UNAVAILABLE. Codes about the caller itself
  (UNAUTHENTICATED, PERMISSION_DENIED) and overload (RESOURCE_EXHAUSTED)
  keep their meaning.
- A node that does not serve ``KV.Stream`` (UNIMPLEMENTED: an older node, or
  a proxy that passes only unary calls) gets unary calls from then on
  (``NotCarried``); so does a request the stream could not carry (one over
  the node's message size ends the whole stream; requests over
  STREAM_MAX_BYTES go unary from the start).
- Batches: the clients send ``KV.StreamBatch`` rather than ``KV.Stream``:
  each time the stream is free to write, every request queued meanwhile
  (up to MAX_BATCH requests and BATCH_BYTES) leaves in one message, and the
  node answers many in one message too. A gRPC message costs both sides
  much more CPU than a request does, and requests issued together (many
  callers, or the answers of one batch waking their callers at once) then
  share it. A node that does not serve the batch (UNIMPLEMENTED), or whose
  message limit a batch exceeds, gets ``KV.Stream`` from then on; the
  requests of that stream were not processed (``NotCarried``: sent unary
  this once).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final, TypeAlias

import grpc

from ramraft.client._core import LEADER_METADATA_KEY
from ramraft.proto import kv_pb2

# Requests larger than this go over unary calls: a large payload gains
# nothing from the stream (copying it costs more than the call), and one
# over the node's message limit would end the stream and every request on it.
STREAM_MAX_BYTES: Final = 64 * 1024
# timeout_ms is a uint32.
_MAX_TIMEOUT_MS: Final = 2**32 - 1
# A StreamBatchRequest: at most this many requests (the node's limit,
# proto/kv.proto) and about this many bytes, which stays within a node's
# default message limit (2 x the value limit + the key limit + 64 KiB).
MAX_BATCH: Final = 1024
BATCH_BYTES: Final = 60 * 1024
STREAM_METHOD: Final = "/ramraft.v1.KV/Stream"
BATCH_METHOD: Final = "/ramraft.v1.KV/StreamBatch"

# The unary method's name -> the StreamRequest/StreamResponse oneof field.
STREAM_OPS: Final = {
    "Put": "put",
    "Get": "get",
    "Delete": "delete",
    "CompareAndSwap": "compare_and_swap",
    "Range": "range",
}

_CODES: Final = {code.value[0]: code for code in grpc.StatusCode}

Metadata: TypeAlias = Iterable[tuple[str, str | bytes]]
# How a stream ended: its status code (None: unknown), details and trailing metadata.
End: TypeAlias = tuple[grpc.StatusCode | None, str, Metadata | None]


def op_for(method: str, transport: str) -> str | None:
    """The StreamRequest field that carries unary ``method`` when the client
    uses the stream transport; None: the call goes unary (admin calls, or the
    "unary" transport)."""
    return STREAM_OPS.get(method) if transport == "stream" else None


class StreamStatus(grpc.RpcError):
    """One stream request's failure, shaped like the RpcError of a unary call
    (code, details, trailing metadata with the leader hint), so the retry
    policy treats both alike."""

    def __init__(self, code: grpc.StatusCode, details: str, leader: str = "") -> None:
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details
        self._trailing: tuple[tuple[str, str], ...] = (
            ((LEADER_METADATA_KEY, leader),) if leader else ()
        )

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    # grpc's stubs type it as objects with .key/.value; at run time (and for
    # client/_core.py leader_hint) it is (key, value) pairs, as here.
    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:  # type: ignore[override]
        return self._trailing

    def initial_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()


class NotCarried(Exception):
    """The stream cannot carry this request: send it as a unary call (it was
    not processed, or, if it was, its session makes sending it again safe)."""


class BatchRefused(NotCarried):
    """The node takes no KV.StreamBatch (or a batch was over its message
    limit): send the request on KV.Stream instead, for the same reasons."""


def stream_request(request_id: int, op: str, request: object, timeout: float) -> bytes:
    """The serialized StreamRequest for one attempt: ``op`` is a STREAM_OPS
    value and ``request`` the unary request message (session already set)."""
    timeout_ms = min(_MAX_TIMEOUT_MS, max(1, int(timeout * 1000 + 0.999)))
    message = kv_pb2.StreamRequest(id=request_id, timeout_ms=timeout_ms)
    getattr(message, op).CopyFrom(request)
    return message.SerializeToString()


def fits(request: bytes) -> bool:
    """Whether the serialized StreamRequest ``request`` may go on a stream."""
    return len(request) <= STREAM_MAX_BYTES


def _identity(data: bytes) -> bytes:
    return data


def open_stream(channel: Any, batched: bool) -> Any:
    """A ``KV.StreamBatch`` (``batched``) or ``KV.Stream`` call on
    ``channel`` (grpc or grpc.aio) that takes serialized messages: a
    request is serialized once, when it is issued, and a batch is the
    concatenation of its requests (``batch``)."""
    answer: Callable[[bytes], Any]
    if batched:
        method, answer = BATCH_METHOD, kv_pb2.StreamBatchResponse.FromString
    else:
        method, answer = STREAM_METHOD, kv_pb2.StreamResponse.FromString
    return channel.stream_stream(method, request_serializer=_identity, response_deserializer=answer)


def batch_entry(request: bytes) -> bytes:
    """``request`` (a serialized StreamRequest) as one entry of a serialized
    StreamBatchRequest: field 1, length-delimited. Entries concatenate."""
    size = len(request)
    head = bytearray(b"\x0a")
    while size >= 0x80:
        head.append((size & 0x7F) | 0x80)
        size >>= 7
    head.append(size)
    return bytes(head) + request


def take_batch(first: bytes, more: Callable[[], Any]) -> tuple[bytes, Any, int]:
    """One StreamBatchRequest: ``first`` and the entries ``more()`` gives
    while the batch has room (MAX_BATCH entries, BATCH_BYTES); ``more()``
    returns None when nothing more is queued. Returns the batch, what
    ``more()`` gave that did not go in it (None if nothing), for the next,
    and how many requests the batch holds."""
    parts, size = [first], len(first)
    while len(parts) < MAX_BATCH:
        entry = more()
        if entry is None:
            return b"".join(parts), None, len(parts)
        if not isinstance(entry, bytes) or size + len(entry) > BATCH_BYTES:
            return b"".join(parts), entry, len(parts)
        parts.append(entry)
        size += len(entry)
    return b"".join(parts), None, len(parts)


def answers(message: Any) -> Any:
    """The StreamResponses in one message of either stream."""
    if isinstance(message, kv_pb2.StreamBatchResponse):
        return message.responses
    return (message,)


def batch_downgrade(code: grpc.StatusCode | None, details: str) -> bool:
    """Whether a ``KV.StreamBatch`` that ended so means: use ``KV.Stream``
    on that node (it does not serve batches, or a batch was over its
    message limit)."""
    return code == grpc.StatusCode.UNIMPLEMENTED or (
        code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details.lower()
    )


def stream_result(response: kv_pb2.StreamResponse, op: str) -> tuple[object, Metadata]:
    """The unary response inside a stream answer, and the trailing metadata
    the unary call would have had (a leader hint, if the node gave one);
    raises the answer's StreamStatus when the request failed."""
    if response.code:
        code = _CODES.get(response.code, grpc.StatusCode.UNKNOWN)
        raise StreamStatus(code, response.message, response.leader)
    if response.WhichOneof("result") != op:
        raise StreamStatus(
            grpc.StatusCode.INTERNAL,
            f"the node answered a {op} request with {response.WhichOneof('result')}",
        )
    hint = ((LEADER_METADATA_KEY, response.leader),) if response.leader else ()
    return getattr(response, op), hint


def expired() -> StreamStatus:
    """The client's own timer ran out (the node sent nothing in time)."""
    return StreamStatus(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")


def ended(
    endpoint: str,
    code: grpc.StatusCode | None,
    details: str,
    trailing: Metadata | None,
    batched: bool = False,
) -> StreamStatus | NotCarried:
    """What the requests still waiting on a stream (``batched``: a
    StreamBatch) that ended get: a StreamStatus to retry (or to raise) as
    for a unary call, or NotCarried (BatchRefused: try KV.Stream)."""
    if batched and batch_downgrade(code, details):
        return BatchRefused(f"{endpoint} takes no KV.StreamBatch: {details}")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return NotCarried(f"{endpoint} does not serve KV.Stream: {details}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details.lower():
        return NotCarried(f"{endpoint}: {details}")
    leader = ""
    for key, value in trailing or ():
        if key == LEADER_METADATA_KEY:
            leader = value.decode(errors="replace") if isinstance(value, bytes) else value
    if code in (
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ):
        return StreamStatus(code, details, leader)
    name = code.name if code is not None else "ended"
    # The details keep the transport's words ("failed to connect", "connection
    # refused"): the retry policy reads them to tell a dead address. No word
    # of retries: this text also ends the error of a call that gave up.
    what = (
        f"cannot connect to {endpoint}"
        if "failed to connect" in details.lower()
        else f"the stream to {endpoint} broke before the answer came"
    )
    return StreamStatus(grpc.StatusCode.UNAVAILABLE, f"{what} ({name}: {details})", leader)

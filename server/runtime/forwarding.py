"""A follower's writes to the leader over ``Peer.ForwardStream``.

A write sent to a follower is forwarded to the leader. One ``Peer.Forward``
call per write costs the follower and the leader a gRPC call each, and gRPC
calls are what a node spends most of its CPU on (bench/profile_leader.py):
16 writes in flight through a follower went at a sixth of the leader's own
rate. Here a follower keeps one stream to the leader, and every write
queued while it sent the last message leaves in the next one; the leader
answers each write as it completes, many to a message
(server/runtime/transport.py ``PeerServicer.forward_batches``).

The rules are Forward's, write by write:

- An answer carries the status a Forward call would have ended with and
  its ForwardRefusal; NodeAPI maps both to the same errors
  (``forward_error``): refused before proposal, maybe applied, overloaded,
  refused for good, deadline.
- Each write carries its own deadline (``timeout_ms``), and the follower
  waits for it no longer than that.
- A stream that ends while writes wait for their answers has lost those
  answers: each may or may not have been applied (UNAVAILABLE, not refused
  before proposal), exactly as for a Forward call that broke -- unless the
  leader ended it as it stopped: it then reads no more writes, answers the
  ones it read, and says in the stream's trailer that it proposed none of
  the others, which go to the next leader (refused before proposal).
- A leader that does not serve the stream (UNIMPLEMENTED: a node of an
  earlier release) never read the writes: they go again by Forward, and so
  does every write to that leader for a while (UNSERVED_SECONDS).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import structlog
from google.protobuf.message import DecodeError

from ramraft.proto import raft_pb2
from ramraft.server.runtime.deadline import DEADLINE_PASSED, within
from ramraft.server.runtime.transport import (
    FORWARD_REFUSAL_KEY,
    MAX_FORWARD_BATCH,
    PEER_SERVICE,
    PeerTransport,
)

log = structlog.get_logger("ramraft.forwarding")

FORWARD_STREAM_METHOD = f"/{PEER_SERVICE}/ForwardStream"
UNSERVED_SECONDS = 60.0  # a leader without the stream gets Forward calls for this long
_MAX_TIMEOUT_MS = 2**32 - 1  # timeout_ms is a uint32

# (leader, command, deadline) -> (index, result): NodeAPI's Forwarder.
Unary = Callable[[str, bytes, Any], Awaitable[tuple[int, object]]]


def refused_before_proposal(error: grpc.aio.AioRpcError) -> bool:
    """Whether the leader said that it refused a forwarded command before
    proposing it. A leader of release 0.1.0 says nothing: then the command
    may have been applied (never guess from the message's words)."""
    for key, value in error.trailing_metadata() or ():
        if key == FORWARD_REFUSAL_KEY and isinstance(value, bytes):
            try:
                return raft_pb2.ForwardRefusal.FromString(value).before_proposal
            except DecodeError:
                return False
    return False


class StreamEnded(Exception):
    """The stream ended before the write's answer came: ``code`` is how.
    ``sent``: False when the write's message never left (its send failed,
    or it was still queued), so it can be sent again whatever ``code`` says
    (grpc.aio reports a send that failed because the leader had ended the
    stream as its own INTERNAL, hiding the leader's status).
    ``before_proposal``: the leader ended the stream saying that it
    proposed none of the writes it did not answer (it is stopping)."""

    def __init__(
        self,
        code: grpc.StatusCode | None,
        details: str,
        *,
        sent: bool = True,
        before_proposal: bool = False,
    ) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.sent = sent
        self.before_proposal = before_proposal


class ForwardStreams:
    """Forwards writes over one ``Peer.ForwardStream`` per leader.
    ``unary`` sends one by ``Peer.Forward`` (a leader without the stream);
    ``answer`` turns a ForwardAnswer, or a StreamEnded, into the write's
    (index, result) or raises its error."""

    def __init__(
        self,
        transport: Callable[[], PeerTransport | None],
        unary: Unary,
        answer: Callable[[raft_pb2.ForwardAnswer | StreamEnded], tuple[int, object]],
    ) -> None:
        self._transport = transport
        self._unary = unary
        self._answer = answer
        self._pipes: dict[str, _Pipe] = {}
        self._unserved: dict[str, float] = {}  # leader -> until when it gets Forward calls
        self.messages_sent = 0  # ForwardBatch messages, for the tests and the curious

    async def __call__(self, leader: str, command: bytes, deadline: Any) -> tuple[int, object]:
        if self._unserved.get(leader, 0.0) > time.monotonic():
            return await self._unary(leader, command, deadline)
        transport = self._transport()
        if transport is None:  # not started, or stopped: nothing was sent
            return self._answer(StreamEnded(grpc.StatusCode.UNAVAILABLE, "the node is not running"))
        channel = transport.channel(leader)
        pipe = self._pipes.get(leader)
        if pipe is None or pipe.closed or pipe.channel is not channel:
            if pipe is not None:
                pipe.retire()  # a new address or certificate: new calls take the new channel
            pipe = self._pipes[leader] = _Pipe(self, channel, transport.call_metadata())
        try:
            answer: raft_pb2.ForwardAnswer | StreamEnded = await pipe.call(
                command, deadline.check()
            )
        except StreamEnded as ended:
            if ended.code == grpc.StatusCode.UNIMPLEMENTED:
                log.info("forward_stream_unserved", leader=leader, using="Forward")
                self._unserved[leader] = time.monotonic() + UNSERVED_SECONDS
                return await self._unary(leader, command, deadline)
            if not ended.sent and not ended.before_proposal:
                # Never left: Forward, which every leader serves. (A stopping
                # leader's refusal instead sends it to the next leader.)
                return await self._unary(leader, command, deadline)
            answer = ended
        return self._answer(answer)

    async def close(self) -> None:
        pipes, self._pipes = list(self._pipes.values()), {}
        for pipe in pipes:
            await pipe.close()


class _Pipe:
    """One ForwardStream: writes queued and sent in batches by a writer
    task, answers handed to the waiting writes by a reader task."""

    def __init__(self, owner: ForwardStreams, channel: grpc.aio.Channel, metadata: Any) -> None:
        self.owner = owner
        self.channel = channel
        self._call = channel.stream_stream(
            FORWARD_STREAM_METHOD,
            request_serializer=raft_pb2.ForwardBatch.SerializeToString,
            response_deserializer=raft_pb2.ForwardAnswers.FromString,
        )(metadata=metadata)
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[raft_pb2.ForwardAnswer]] = {}
        self._queue: list[raft_pb2.ForwardItem] = []
        self._wake = asyncio.Event()
        self.closed = False
        self._retired = False
        loop = asyncio.get_running_loop()
        self._writer = loop.create_task(self._write_all(), name="forward-writer")
        self._reader = loop.create_task(self._read_all(), name="forward-reader")

    async def call(self, command: bytes, timeout: float) -> raft_pb2.ForwardAnswer:
        """Send one write; its answer (raises StreamEnded if the stream ends
        first, TimeoutError after ``timeout`` seconds)."""
        request_id = next(self._ids)
        fut: asyncio.Future[raft_pb2.ForwardAnswer] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = fut
        timeout_ms = min(_MAX_TIMEOUT_MS, max(1, int(timeout * 1000)))
        item = raft_pb2.ForwardItem(id=request_id, command=command, timeout_ms=timeout_ms)
        self._queue.append(item)
        self._wake.set()
        try:
            return await within(fut, timeout, f"{DEADLINE_PASSED} waiting for the leader")
        finally:
            self._waiting.pop(request_id, None)
            if self._retired and not self._waiting:
                await self.close()

    def retire(self) -> None:
        """No new writes come here; close once the waiting ones are answered."""
        self._retired = True
        if not self._waiting:
            asyncio.get_running_loop().create_task(self.close())

    async def _write_all(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queue:
                    items = self._queue[:MAX_FORWARD_BATCH]
                    await self._call.write(raft_pb2.ForwardBatch(items=items))
                    del self._queue[: len(items)]  # sent
                    self.owner.messages_sent += 1
        except asyncio.CancelledError:
            raise
        except Exception:
            # The stream is over (the writes still queued never left). The
            # reader ends the writes with the call's status, which says how:
            # UNIMPLEMENTED (a leader without the stream) must reach
            # ForwardStreams, or every write would try the stream again.
            # Cancelling makes sure the reader sees the end.
            self._call.cancel()

    async def _read_all(self) -> None:
        code: grpc.StatusCode | None = None
        details = "the leader ended the forward stream"
        unread = False
        try:
            async for message in self._call:
                for answer in message.answers:
                    fut = self._waiting.get(answer.id)
                    if fut is not None and not fut.done():
                        fut.set_result(answer)
            code = await self._call.code()
        except grpc.aio.AioRpcError as e:
            code, details = e.code(), e.details() or details
            unread = refused_before_proposal(e)  # the leader stopped (end_streams)
        except asyncio.CancelledError:
            code, details = grpc.StatusCode.CANCELLED, "the forward stream was closed"
            raise
        finally:
            self._end(code, details, unread=unread)

    def _end(self, code: grpc.StatusCode | None, details: str, *, unread: bool = False) -> None:
        """Fail every waiting write: the ones still queued were never sent;
        with ``unread``, the leader proposed none of the sent ones either."""
        self.closed = True
        self._writer.cancel()
        unsent = {item.id for item in self._queue}
        for request_id, fut in self._waiting.items():
            if not fut.done():
                fut.set_exception(
                    StreamEnded(
                        code, details, sent=request_id not in unsent, before_proposal=unread
                    )
                )

    async def close(self) -> None:
        self.closed = True
        self._call.cancel()
        for task in (self._writer, self._reader):
            task.cancel()
        for task in (self._writer, self._reader):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

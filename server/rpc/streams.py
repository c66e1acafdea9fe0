"""``KV.Stream`` and ``KV.StreamBatch``: many key-value requests on one gRPC
stream, each served as its unary call would be (server/rpc/services.py
serves one), answered as it completes.

The rules (proto/kv.proto states them to clients):

- Each request is admitted on its own (server/security/auth.py StreamGate:
  its role, an in-flight slot), has its own deadline (``timeout_ms``) and
  its own status; one that fails, fails alone. A refused request is
  answered at once, in order with the others.
- ``KV.StreamBatch`` carries up to MAX_STREAM_BATCH (1,024) requests in one message and
  answers with messages that each hold every answer ready at that moment:
  the answers completed in the same turn of the event loop (the Raft loop
  applies a whole batch of writes at once) leave in one message. A gRPC
  message costs a node far more CPU than a request does
  (bench/profile_leader.py), which is what the batch saves. Reads, which
  are served at once, are the exception: a batch's reads are served
  ANSWER_CHUNK at a time, and the answers of each group leave before the
  next group is served, so that the client takes up the first answers (and
  sends its next requests) while the node serves the rest. Served in one
  go, a client that keeps many reads in flight and the node took turns,
  each idle while the other worked (two cores, one busy: 0.58 core for the
  node, 0.46 for the client); split, both work at once. Writes are not
  split: their proposals belong in one Raft batch.
- Bounded (server/security/budget.py): the next message is read only once
  its bytes are reserved in the node's memory budget, and only while this
  stream's requests in service and unwritten answers number fewer than
  --max-inflight-per-connection and hold less than the stream's share of the
  budget. Within a batch, each request after the first waits for the same
  room (its bytes are reserved already, with the message's, which do not
  count against the batch itself), so a batch of Ranges takes its pages
  from the stream's share one by one, as requests in messages of their own
  would. A client that does not read its answers stops being read.
- One writer: answers wait in a list (no queue hop, no task per answer),
  and the writer takes all of them each time it is free.
- A request that waits for nothing (a serializable Get, a linearizable one
  once its round is confirmed; ``serve_now``) is answered in place, as it
  is read; a write (Put, Delete, CompareAndSwap) on the leader is proposed
  in place and answered from a callback when its entry is applied
  (``serve_now`` gives a future); every other request is served in a
  task of its own, as its unary call would be. A task and the unary path's
  coroutines cost a read about 6 us of the leader's 26 (serializable, 64
  in flight), a write about a quarter of the leader's CPU per write.
- One ReadIndex round per batch (``RoundShare``): the linearizable reads
  of a batch wait together for one round, asked for as soon as the batch is
  read (so it starts after every one of them arrived: thesis 6.4), and are
  served when it is done, as serializable reads are, without a round each.
  A read in service before the round would cost the leader its task's first
  step before the heartbeats leave (1 ms for 64 reads, measured); served
  after, it costs that once. Should the round fail or outlast the earliest
  deadline among them, each read goes its own way (its own round, deadline,
  error).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import grpc
import structlog

from ramraft.proto import kv_pb2
from ramraft.server.security.auth import MAX_STREAM_BATCH, InflightLimiter, StreamGate
from ramraft.server.security.budget import CALL_RESERVATION, MESSAGE_COPIES, Reservation

# Serves one request: (request, its op field, the stream's context, when it
# arrived: time.monotonic()) -> answer.
ServeOne = Callable[
    [kv_pb2.StreamRequest, str, grpc.aio.ServicerContext[Any, Any], float],
    Awaitable[kv_pb2.StreamResponse],
]

# Serves one request without a task, if it can (request, its op field, the
# stream's context, when it arrived) -> its answer now; or the future of its
# answer (a write proposed now, answered when applied), whose result None
# hands the request to ServeOne after all; or None: ServeOne serves it.
ServeNow = Callable[
    [kv_pb2.StreamRequest, str, grpc.aio.ServicerContext[Any, Any], float],
    "kv_pb2.StreamResponse | asyncio.Future[kv_pb2.StreamResponse | None] | None",
]

# True while serving a linearizable read whose ReadIndex round, started
# after the read arrived, is done and applied here: reading now is
# linearizable without a round of its own. Set only in the task that
# serves a round's reads (the tasks it starts copy it).
ROUND_CONFIRMED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "ramraft_round_confirmed", default=False
)


class RoundShare(Protocol):
    """How the linearizable reads of a batch share one ReadIndex round."""

    def wants(self, request: kv_pb2.StreamRequest, op: str | None) -> bool:
        """Whether ``request`` (whose op field is ``op``) is a linearizable
        read, which may wait for the batch's round."""

    def ask(
        self,
        requests: list[tuple[kv_pb2.StreamRequest, float]],
        stream: grpc.aio.ServicerContext[Any, Any],
    ) -> asyncio.Future[bool]:
        """Ask for one ReadIndex round for ``requests`` (each with the time
        it arrived) now, before returning; the future is True once it is
        done and applied here, False if it failed or would outlast the
        earliest of their deadlines."""


log = structlog.get_logger(__name__)

# Reads served in one go before their answers leave (see the module
# docstring): 32 of a batch of 64 at a time measured best (16 costs more
# messages, 64 is no split at 64 in flight).
ANSWER_CHUNK = 32
_READ_OPS = frozenset({"get", "range"})  # the ops served at once, without the log


async def _let_answers_out() -> None:
    """Two turns of the event loop: in the first the reads launched in
    tasks so far are served (those answered in place are already), in the
    second the writer sends their answers."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


NO_OP = (
    grpc.StatusCode.INVALID_ARGUMENT,
    "no operation set: set one of put, get, delete, compare_and_swap, range, txn, delete_range",
)


def stream_error(
    request: kv_pb2.StreamRequest, status: tuple[grpc.StatusCode, str]
) -> kv_pb2.StreamResponse:
    code, message = status
    return kv_pb2.StreamResponse(id=request.id, code=code.value[0], message=message)


class _Held(Reservation):
    """A reservation of this stream: what it holds is also counted in the
    stream's total (``_Window.bytes``), so that checking the stream's share
    costs nothing per request."""

    __slots__ = ("window",)

    def __init__(self, window: _Window, light: bool = False) -> None:
        assert window.gate is not None
        super().__init__(window.gate.limits.budget, light)
        self.window = window
        window.held.add(self)

    async def grow(self, n: int, timeout: float | None) -> bool:
        grown = await super().grow(n, timeout)
        if grown:
            self.window.bytes += n
        return grown

    def shrink(self, n: int) -> None:
        before = self.held
        super().shrink(n)
        self.window.bytes -= before - self.held

    def release(self) -> None:
        before = self.held
        super().release()
        self.window.bytes -= before
        self.window.held.discard(self)


class _Message:
    """One message read off the stream: its reservation (its bytes), held
    until the answer to each of its ``unanswered`` requests is written."""

    __slots__ = ("reservation", "unanswered")

    def __init__(self, reservation: _Held | None, unanswered: int) -> None:
        self.reservation = reservation
        self.unanswered = unanswered


class _Window:
    """What one stream holds: the bytes of its reservations (messages whose
    answers are not all written, and what requests took for their answers)
    and the count of requests in service or with an unwritten answer. No
    gate (a servicer called directly): nothing is bounded."""

    def __init__(self, gate: StreamGate | None) -> None:
        self.gate = gate
        self.limit = gate.gatekeeper.limiter.per_connection_limit if gate else 1 << 62
        self.share = gate.limits.stream_share if gate else 1 << 62
        self.held: set[_Held] = set()
        self.bytes = 0
        self.requests = 0
        self._changed: asyncio.Future[None] | None = None

    def room(self, own: int = 0) -> bool:
        """Whether one more request may start (or message be read), not
        counting ``own`` bytes (those of the batch the request came in: a
        batch never waits for itself)."""
        return self.requests < self.limit and self.bytes - own < self.share

    async def before_read(self) -> _Held | None:
        """Wait for room, then reserve what the next message may take."""
        gate = self.gate
        if gate is None:
            return None
        while not self.room():
            await self._wait()
        # A stream with at most a couple of requests of its own in flight is
        # a light caller, as a connection is for unary calls (budget.py).
        # What it holds counts answers written but not yet given back: a
        # client sending one request at a time may send its next one the
        # moment it reads an answer, before the node's write has returned.
        reservation = _Held(self, len(self.held) <= InflightLimiter.LIGHT)
        await reservation.grow(gate.limits.read_reservation(), None)  # waits: backpressure
        return reservation

    async def request_room(self, own: int) -> None:
        """Wait until one more request of a batch already read may start,
        as if it had come in a message of its own."""
        while not self.room(own):
            await self._wait()

    async def _wait(self) -> None:
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        await self._changed

    def answered(self, message: _Message, own: _Held | None) -> None:
        """The answer to one request of ``message`` (which held ``own`` for
        it) was written."""
        self.requests -= 1
        if own is not None:
            own.release()
        message.unanswered -= 1
        if message.unanswered <= 0 and message.reservation is not None:
            message.reservation.release()
        changed = self._changed
        if changed is not None and not changed.done():
            changed.set_result(None)

    def close(self) -> None:
        for reservation in list(self.held):
            reservation.release()


# A request admitted and waiting for its batch's ReadIndex round: what
# StreamServer._serve takes after its key (request, op, message,
# reservation, own, arrived).
_Deferred = tuple[kv_pb2.StreamRequest, str, _Message, _Held | None, _Held | None, float]

# An answer waiting to be written: (answer, holds an in-flight slot, the
# message its request came in, what the request reserved of its own).
_Out = tuple[kv_pb2.StreamResponse, bool, _Message, _Held | None]


class StreamServer:
    """Serves one ``KV.Stream`` (``batched`` False) or ``KV.StreamBatch``."""

    def __init__(
        self,
        serve_one: ServeOne,
        ops: Mapping[str, str],
        context: grpc.aio.ServicerContext[Any, Any],
        gate: StreamGate | None,
        batched: bool,
        rounds: RoundShare | None = None,
        serve_now: ServeNow | None = None,
    ) -> None:
        self._serve_one = serve_one
        self._serve_now = serve_now
        self._rounds = rounds if batched else None
        self._ops = ops  # StreamRequest op field -> unary method name
        self._context = context
        self._gate = gate
        self._batched = batched
        self._window = _Window(gate)
        self._out: list[_Out] = []
        self._wakeup: asyncio.Future[None] | None = None
        # Requests in service: their tasks, and the futures of answers
        # ``serve_now`` gives later.
        self._running: dict[int, asyncio.Future[Any]] = {}
        self._started = 0
        self._slots = 0  # admitted requests whose answer is not written yet
        self._reading = True
        self._rounds_out: set[asyncio.Future[bool]] = set()  # asked, not done
        self._reader: asyncio.Task[None] | None = None
        self.ended = False

    def end(self) -> None:
        """Read no more requests; ``run`` returns once those read are
        answered (the node is stopping: server/rpc/ending.py)."""
        self.ended = True
        if self._reader is not None:
            self._reader.cancel()

    async def run(self, requests: AsyncIterator[Any]) -> None:
        reader = self._reader = asyncio.create_task(self._read_all(requests))
        # Also when the reader is cancelled before it ever ran (``end``):
        # its ``finally`` does this otherwise.
        reader.add_done_callback(lambda _: self._reading_done())
        if self.ended:
            reader.cancel()
        try:
            await self._write_all()
        finally:
            reader.cancel()
            for task in list(self._running.values()):
                task.cancel()
            for asked in list(self._rounds_out):
                asked.cancel()  # nobody is left to read what it confirms
            self._window.close()
            gate = self._gate
            if gate is not None:
                for _ in range(self._slots):
                    gate.release()

    # ---- reading ----------------------------------------------------------------------------

    async def _read_all(self, requests: AsyncIterator[Any]) -> None:
        iterator = aiter(requests)
        window = self._window
        try:
            while True:
                held = await window.before_read()
                message = await anext(iterator, None)
                if message is None:
                    if held is not None:
                        held.release()
                    return
                arrived = time.monotonic()
                if held is not None:
                    held.shrink(held.held - MESSAGE_COPIES * message.ByteSize())
                    held.read_done()
                if not self._batched:
                    window.requests += 1
                    op = message.WhichOneof("op")
                    self._start(message, op, _Message(held, 1), held, arrived)
                    continue
                batch = message.requests
                if len(batch) > MAX_STREAM_BATCH:
                    # The gatekeeper counts them before decoding (a decoded
                    # request takes far more memory than its bytes); this
                    # catches a servicer called without one.
                    self._context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
                    self._context.set_details(
                        f"a StreamBatchRequest holds {len(batch)} requests; "
                        f"the limit is {MAX_STREAM_BATCH}"
                    )
                    return
                if not batch:
                    if held is not None:
                        held.release()
                    continue
                carrier = _Message(held, len(batch))
                own_bytes = held.held if held is not None else 0
                # A batch of a light stream's few requests is still light:
                # their small answers may come from the reserve.
                light = held is not None and held.light and len(batch) <= InflightLimiter.LIGHT
                ops = [request.WhichOneof("op") for request in batch]
                shared, waits = self._ask_round(batch, ops, arrived)
                if shared is not None:
                    # Two turns of the event loop: in the first the Raft
                    # loop starts the round, in the second the heartbeats
                    # leave; the batch's admission (0.2 ms for 64 requests)
                    # then overlaps their round trip instead of delaying it.
                    await asyncio.sleep(0)
                    await asyncio.sleep(0)
                reads: list[_Deferred] = []  # linearizable reads, for the round
                served_now = 0  # reads served at once since the answers last left
                for n, request in enumerate(batch):
                    if n and not window.room(own_bytes):
                        # The reads held so far hold room too: they are
                        # served once the round is done, so that this wait
                        # cannot wait for them.
                        self._after_round(reads, shared)
                        reads = []
                        await window.request_room(own_bytes)
                    window.requests += 1
                    # What the request takes for its answer (a page, a
                    # value) is its own, given back once it is written.
                    # A lone request takes its answer from the message's
                    # reservation, exactly as on KV.Stream.
                    own = held if len(batch) == 1 else self._answer_reservation(light)
                    op = ops[n]
                    self._start(request, op, carrier, own, arrived, reads if waits[n] else None)
                    if not waits[n] and op in _READ_OPS:
                        served_now += 1
                        if served_now == ANSWER_CHUNK and n + 1 < len(batch):
                            served_now = 0
                            await _let_answers_out()
                self._after_round(reads, shared)
        finally:
            self._reading_done()

    def _reading_done(self) -> None:
        self._reading = False
        self._wake()

    def _answer_reservation(self, light: bool) -> _Held | None:
        """What one request of a batch takes for its answer (its request
        is read: from the reserve, small answers only; budget.py)."""
        if self._gate is None:
            return None
        reservation = _Held(self._window, light)
        reservation.read_done()
        return reservation

    def _start(
        self,
        request: kv_pb2.StreamRequest,
        op: str | None,
        message: _Message,
        reservation: _Held | None,
        arrived: float,
        reads: list[_Deferred] | None = None,
    ) -> None:
        """Admit ``request`` (whose op field is ``op``) and start serving it,
        or answer its refusal. ``reservation``: what it may grow for its
        answer (CALL_RESERVATION).
        Given ``reads`` (the request waits for the batch's round), it is
        added there instead, to be served after the round (``_after_round``)."""
        own = reservation if reservation is not message.reservation else None
        gate = self._gate
        refused = NO_OP if op is None else gate.admit(self._ops[op]) if gate else None
        if refused is not None:
            self._deliver((stream_error(request, refused), False, message, own))
            return
        assert op is not None
        self._slots += 1
        served = (request, op, message, reservation, own, arrived)
        if reads is not None:
            reads.append(served)
            return
        self._launch(served)

    def _launch(self, served: _Deferred) -> None:
        """Serve ``served``: answered here and now if ``serve_now`` can (a
        read that waits for nothing), later from a callback if it gives a
        future (a write), else in a task of its own."""
        key = self._started = self._started + 1
        if self._serve_now is not None:
            request, op, message, _, own, arrived = served
            try:
                answer = self._serve_now(request, op, self._context, arrived)
            except Exception:  # a bug: the task below answers it (INTERNAL)
                log.exception("stream_request_failed", op=op)
                answer = None
            if isinstance(answer, asyncio.Future):
                self._running[key] = answer
                answer.add_done_callback(lambda done: self._answered(key, served, done))
                return
            if answer is not None:
                self._deliver((answer, True, message, own))
                return
        self._running[key] = asyncio.create_task(self._serve(key, *served))

    def _answered(
        self, key: int, served: _Deferred, done: asyncio.Future[kv_pb2.StreamResponse | None]
    ) -> None:
        """The answer ``serve_now`` promised for ``served`` is ready (or,
        None, the request goes to a task after all)."""
        del self._running[key]
        if done.cancelled():
            return  # the stream ended
        answer = done.result()
        if answer is None:
            self._running[key] = asyncio.create_task(self._serve(key, *served))
            return
        _, _, message, _, own, _ = served
        self._deliver((answer, True, message, own))

    def _ask_round(
        self, batch: Sequence[kv_pb2.StreamRequest], ops: list[str | None], arrived: float
    ) -> tuple[asyncio.Future[bool] | None, list[bool]]:
        """One ReadIndex round asked for the batch's linearizable reads (all
        of which have arrived), None if it has none; and, for each request
        of the batch (whose op fields are ``ops``), whether it waits for
        that round."""
        rounds = self._rounds
        if rounds is None:
            return None, [False] * len(batch)
        waits = [rounds.wants(r, op) for r, op in zip(batch, ops, strict=True)]
        if not any(waits):
            return None, waits
        asked = rounds.ask(
            [(r, arrived) for r, w in zip(batch, waits, strict=True) if w], self._context
        )
        if not asked.done():
            self._rounds_out.add(asked)
            asked.add_done_callback(self._rounds_out.discard)
        return asked, waits

    def _after_round(self, reads: list[_Deferred], shared: asyncio.Future[bool] | None) -> None:
        """Serve ``reads`` once the ``shared`` round is done (each on its
        own, should it fail)."""
        if not reads:
            return
        assert shared is not None
        key = self._started = self._started + 1
        self._running[key] = asyncio.create_task(self._serve_after_round(key, reads, shared))

    async def _serve_after_round(
        self, key: int, reads: list[_Deferred], shared: asyncio.Future[bool]
    ) -> None:
        try:
            try:
                # Shielded: the batch's other groups may wait for it too.
                confirmed = await asyncio.shield(shared)
            except Exception:  # a bug: each read still goes its own way
                log.exception("read_round_failed")
                confirmed = False
            ROUND_CONFIRMED.set(confirmed)  # the tasks below copy this context
            for n, served in enumerate(reads):
                if n and n % ANSWER_CHUNK == 0:
                    await _let_answers_out()
                self._launch(served)
        finally:
            del self._running[key]

    async def _serve(
        self,
        key: int,
        request: kv_pb2.StreamRequest,
        op: str,
        message: _Message,
        reservation: _Held | None,
        own: _Held | None,
        arrived: float,
    ) -> None:
        CALL_RESERVATION.set(reservation)
        try:
            response = await self._serve_one(request, op, self._context, arrived)
        finally:
            del self._running[key]
        self._deliver((response, True, message, own))

    # ---- writing ----------------------------------------------------------------------------

    def _deliver(self, out: _Out) -> None:
        self._out.append(out)
        self._wake()

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    async def _write_all(self) -> None:
        context = self._context
        loop = asyncio.get_running_loop()
        while True:
            if not self._out:
                if not (self._reading or self._running):
                    return
                self._wakeup = loop.create_future()
                await self._wakeup
                continue
            ready, self._out = self._out, []
            if self._batched:
                answers = kv_pb2.StreamBatchResponse(responses=[out[0] for out in ready])
                try:
                    await context.write(answers)
                finally:
                    for out in ready:
                        self._written(out)
            else:
                for n, out in enumerate(ready):
                    try:
                        await context.write(out[0])
                    except BaseException:
                        for rest in ready[n:]:
                            self._written(rest)
                        raise
                    self._written(out)

    def _written(self, out: _Out) -> None:
        _, holds_slot, message, own = out
        self._window.answered(message, own)
        if holds_slot:
            self._slots -= 1
            if self._gate is not None:
                self._gate.release()

"""Server-Sent Events: pushing changes to browsers, with bounded memory.

Two layers:

- Generic (for any feed, e.g. the key-value watch): :func:`encode_event`
  formats one event; a :class:`Subscription` is one connection's bounded
  queue of encoded events; :func:`serve` answers a request with a
  ``text/event-stream`` response fed from a subscription, with keep-alive
  comments and a write timeout.
- The application's feed (:class:`EventFeed`): the events a model's
  commands publish (``self.publish(topic, data)``, machines/embed.py), with
  the applied index as the event id, a bounded history for resuming, and
  topics. ``GET /v1/events?topic=...`` (web/tier.py) and an app's own routes
  (``await ctx.events.stream(request, ["notes"])``) serve it.

Resuming: a browser's ``EventSource`` reconnects by itself (after the
``retry`` we send) with the id of the last event it saw in ``Last-Event-ID``
(``?last_event_id=`` works too, for other clients). An event's id is its
entry's applied index; when one entry published several events, every one
but the last is ``INDEX.N``, so a resume never skips the rest of an entry.
If the history no longer reaches back to that id (or the node installed a
snapshot from the leader, or restarted from one, in between), the stream
starts with a ``reset`` event: the page should reload what it shows. So that
a quiet page's id stays recent, a stream's keep-alive (after ``heartbeat``
seconds of quiet) and its last message when the node stops are an id alone,
the node's applied index: a browser takes it as its last event id without
dispatching anything, and an open page comes through a rolling restart
without a ``reset``. A node that is behind the id a browser resumes from
does not send it the events up to that id again; an id past everything the
cluster has committed (one of another life of the cluster: restored from a
backup, or wiped) gets a ``reset``.

Bounds ("put a limit on everything"): each connection's queue holds at most
``max_queue_events`` events and ``max_queue_bytes`` bytes; a browser that
reads too slowly to keep within them is disconnected (its queue dropped) and
resumes from the history by ``Last-Event-ID``. Every write must complete
within ``write_timeout``. The history holds at most ``history_events`` and
``history_bytes``. At most ``max_streams`` streams are open per feed (429
beyond). An open stream does not count towards ``--max-inflight``: the web
tier hands :func:`serve` a way to give its request slot back
(:data:`RELEASE_SLOT`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ramraft.server.request_errors import BadRequest, Overloaded

CONTENT_TYPE = "text/event-stream"
LAST_EVENT_ID = "Last-Event-ID"
# A request item the web tier sets: calling it gives back the request's
# --max-inflight slot (an open stream is counted by its feed instead).
# A typed key where aiohttp has them (3.13+), a string before.
RELEASE_SLOT: Any = (
    web.RequestKey("ramraft_release_slot", object)
    if hasattr(web, "RequestKey")
    else "ramraft.release_slot"
)

DEFAULT_RETRY_MS = 1000
DEFAULT_HEARTBEAT = 15.0
DEFAULT_WRITE_TIMEOUT = 30.0
MAX_ID_LENGTH = 64
SLOW_READER = "the client reads too slowly; resume with Last-Event-ID"


def encode_event(data: str, *, event: str | None = None, id: str | None = None) -> bytes:
    """One event in the SSE wire format. ``data`` may hold newlines (one
    ``data:`` line each); ``event`` and ``id`` may not."""
    for name, value in (("event", event), ("id", id)):
        if value is not None and ("\n" in value or "\r" in value):
            raise ValueError(f"an SSE {name} must be one line")
    lines = []
    if id is not None:
        lines.append(f"id: {id}")
    if event is not None:
        lines.append(f"event: {event}")
    lines.extend(f"data: {line}" for line in data.replace("\r\n", "\n").split("\n"))
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def last_event_id(request: web.Request) -> str | None:
    """The id a client resumes after: the ``Last-Event-ID`` header, else
    ``?last_event_id=``; None when it gave neither (or an empty one)."""
    value = request.headers.get(LAST_EVENT_ID) or request.query.get("last_event_id") or ""
    value = value.strip()
    if not value:
        return None
    if len(value) > MAX_ID_LENGTH:
        raise BadRequest(f"{LAST_EVENT_ID} is longer than {MAX_ID_LENGTH} characters")
    return value


class Subscription:
    """One connection's queue of encoded events, bounded in events and
    bytes. ``offer`` never blocks: beyond a bound, the queue is dropped and
    the subscription closed (the client resumes by its last event id)."""

    def __init__(self, max_events: int = 256, max_bytes: int = 1 << 20) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._frames: collections.deque[bytes] = collections.deque()
        self._bytes = 0
        self._wake = asyncio.Event()
        self.closed = ""  # why it was closed; empty while open
        self.finishing = ""  # why it ends once what is queued is written (finish)
        # The client had every event up to it (it resumed from there); None
        # once this node published past it.
        self.after: Position | None = None
        self.on_close: Callable[[Subscription], None] | None = None

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def offer(self, frame: bytes) -> bool:
        """Queue ``frame``; False (and the subscription closed) if that
        would break a bound, or it is closed already."""
        if self.closed:
            return False
        if len(self._frames) >= self.max_events or self._bytes + len(frame) > self.max_bytes:
            self.close(SLOW_READER)
            return False
        self._frames.append(frame)
        self._bytes += len(frame)
        self._wake.set()
        return True

    def finish(self, reason: str, last: bytes = b"") -> None:
        """End once what is queued, then ``last``, is written (the node is
        stopping: the client resumes elsewhere after the last id it got)."""
        if self.closed or self.finishing:
            return
        if last:
            self._frames.append(last)
            self._bytes += len(last)
        self.finishing = reason
        self._wake.set()

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = reason
        self._frames.clear()
        self._bytes = 0
        self._wake.set()
        if self.on_close is not None:
            self.on_close(self)

    async def take(self, timeout: float | None = None) -> list[bytes]:
        """Everything queued, waiting up to ``timeout`` for something;
        empty on timeout or once closed."""
        if not self._frames and not self.closed and not self.finishing:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
        frames = list(self._frames)
        self._frames.clear()
        self._bytes = 0
        return frames


async def serve(
    request: web.Request,
    subscription: Subscription,
    *,
    heartbeat: float = DEFAULT_HEARTBEAT,
    write_timeout: float = DEFAULT_WRITE_TIMEOUT,
    retry_ms: int = DEFAULT_RETRY_MS,
    keep_alive: Callable[[], bytes] | None = None,
) -> web.StreamResponse:
    """Stream ``subscription`` to the client until either side closes (or
    it is finished: then after what it holds): a keep-alive every
    ``heartbeat`` seconds of quiet (``keep_alive()``'s frame, else a
    comment), a client that does not take a write within ``write_timeout``
    is cut off."""
    response = web.StreamResponse(
        headers={
            "Content-Type": CONTENT_TYPE,
            "Cache-Control": "no-cache, no-store",
            "X-Accel-Buffering": "no",  # proxies must not hold events back
        }
    )
    release = request.get(RELEASE_SLOT)
    loop = asyncio.get_running_loop()
    try:
        await response.prepare(request)
        if callable(release):
            release()
        await _write(response, f"retry: {retry_ms}\n\n".encode(), write_timeout)
        quiet_since = loop.time()
        while not subscription.closed:
            # Look at the connection at least once a second: a client that
            # left is noticed without waiting for the next write to fail.
            frames = await subscription.take(min(heartbeat, 1.0))
            transport = request.transport
            if transport is None or transport.is_closing():
                break
            if frames:
                await _write(response, b"".join(frames), write_timeout)
                quiet_since = loop.time()
            elif subscription.finishing:
                break  # all it held is written
            elif not subscription.closed and loop.time() - quiet_since >= heartbeat:
                frame = keep_alive() if keep_alive is not None else b": keep-alive\n\n"
                await _write(response, frame, write_timeout)
                quiet_since = loop.time()
    except (ConnectionError, TimeoutError, asyncio.CancelledError):
        pass  # the client went away or stalled: nothing more to tell it
    finally:
        subscription.close(subscription.finishing or "the stream ended")
    return response


async def _write(response: web.StreamResponse, data: bytes, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        await response.write(data)


# ---- the application's events -------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """Where an event sits: its entry's index and its place in that entry
    (``seq``; ``math.inf`` stands for "after every event of the entry")."""

    index: int
    seq: float

    @classmethod
    def parse(cls, text: str) -> Position:
        head, dot, tail = text.partition(".")
        try:
            index = int(head)
            seq: float = int(tail) if dot else math.inf
        except ValueError:
            raise BadRequest(f"{LAST_EVENT_ID} {text!r} is not an event id of this feed") from None
        if index < 0 or seq < 0:
            raise BadRequest(f"{LAST_EVENT_ID} {text!r} is not an event id of this feed")
        return cls(index, seq)

    def event_id(self) -> str:
        return str(self.index) if self.seq == math.inf else f"{self.index}.{int(self.seq)}"


@dataclass(frozen=True, slots=True)
class _Event:
    position: Position
    topic: str
    frame: bytes


class EventFeed:
    """The events an application's commands publish, as this node applies
    them (see the module docstring)."""

    def __init__(
        self,
        *,
        history_events: int = 4096,
        history_bytes: int = 8 << 20,
        max_streams: int = 1024,
        max_queue_events: int = 256,
        max_queue_bytes: int = 1 << 20,
        applied: Callable[[], int] | None = None,
        committed: Callable[[], int] | None = None,
    ) -> None:
        """``applied()``: the node's applied index (every event up to it has
        been published here); without it, the newest event's index.
        ``committed()``: the commit index this node knows; a resume from an
        id past it gets a reset."""
        self.applied = applied
        self.committed = committed
        self.history_events = history_events
        self.history_bytes = history_bytes
        self.max_streams = max_streams
        self.max_queue_events = max_queue_events
        self.max_queue_bytes = max_queue_bytes
        self._history: collections.deque[_Event] = collections.deque()
        self._history_bytes = 0
        # Nothing at or before this position is known here: dropped from the
        # history, or before the state this node started from (a snapshot).
        self._floor = Position(0, math.inf)
        self._last = self._floor  # the newest event's position
        self._subscribers: dict[Subscription, frozenset[str] | None] = {}
        self.published = 0  # events, for tests and metrics
        self.dropped_streams = 0  # subscriptions closed for reading too slowly

    @property
    def streams(self) -> int:
        return len(self._subscribers)

    def close_all(self, reason: str) -> None:
        """End every open stream (the node is stopping), each after what it
        holds and then the node's applied index as its last id: the browser
        resumes elsewhere from there, not from its last event, which may be
        older than what the node it reaches still remembers (a node
        restarted from a snapshot remembers nothing before it), so an open
        page survives a rolling restart without a ``reset``."""
        for subscription in list(self._subscribers):
            subscription.finish(reason, self.progress_frame(subscription))

    def progress_frame(self, subscription: Subscription) -> bytes:
        """An SSE message of an id alone (no event: a browser takes it as
        its last event id and dispatches nothing): ``subscription`` has had
        everything up to the node's applied index (or up to the id it
        resumed from, when that is further on). The keep-alive of this
        feed's streams, so that a quiet page's resume point stays recent
        after a crash too."""
        applied = self.applied() if self.applied is not None else self._last.index
        position = max(Position(applied, math.inf), self._last)
        if subscription.after is not None:
            position = max(position, subscription.after)
        return f"id: {position.event_id()}\n\n".encode()

    # ---- the machine's side ----------------------------------------------------------------

    def publish(self, index: int, events: list[tuple[str, str]]) -> None:
        """The events of the entry at ``index`` (ModelMachine.on_published):
        called inside the runtime's turn, so it only queues."""
        last = len(events) - 1
        for seq, (topic, data) in enumerate(events):
            position = Position(index, math.inf if seq == last else seq)
            event_id = str(index) if seq == last else f"{index}.{seq}"
            event = _Event(position, topic, encode_event(data, event=topic, id=event_id))
            self._remember(event)
            for subscription, topics in list(self._subscribers.items()):
                after = subscription.after
                if after is not None:
                    if position <= after:
                        continue  # it had this one from a node further on
                    subscription.after = None  # passed: no comparison per event from now on
                if topics is None or topic in topics:
                    subscription.offer(event.frame)
        self.published += len(events)

    def restart_at(self, index: int) -> None:
        """The model's state now starts at ``index`` with no events known
        before it (the node started from a snapshot, or installed one):
        open streams get a ``reset``, resumes from before it too."""
        self._history.clear()
        self._history_bytes = 0
        self._floor = self._last = Position(index, math.inf)
        frame = self._reset_frame()
        for subscription in list(self._subscribers):
            subscription.offer(frame)

    def runtime_listener(self, event: str, fields: dict[str, Any]) -> None:
        """A runtime listener: a snapshot installed from the leader replaces
        the state, with no events for what it skipped."""
        if event == "snapshot_installed":
            self.restart_at(int(fields["index"]))

    def _remember(self, event: _Event) -> None:
        self._history.append(event)
        self._history_bytes += len(event.frame)
        self._last = event.position
        while self._history and (
            len(self._history) > self.history_events or self._history_bytes > self.history_bytes
        ):
            dropped = self._history.popleft()
            self._history_bytes -= len(dropped.frame)
            self._floor = dropped.position

    def _reset_frame(self) -> bytes:
        last = self._last
        return encode_event(f'{{"index":{last.index}}}', event="reset", id=last.event_id())

    # ---- the browser's side ----------------------------------------------------------------

    def subscribe(
        self, topics: Iterable[str] | None = None, after: str | None = None
    ) -> Subscription:
        """A subscription to ``topics`` (None: all), starting after the
        event id ``after`` (None: from now on). Raises Overloaded beyond
        ``max_streams`` and BadRequest for an id this feed never gave."""
        if len(self._subscribers) >= self.max_streams:
            raise Overloaded(f"{self.max_streams} event streams are open on this node already")
        wanted = frozenset(topics) if topics is not None else None
        subscription = Subscription(self.max_queue_events, self.max_queue_bytes)
        if after is not None:
            position = Position.parse(after)
            missed = [
                event.frame
                for event in self._history
                if position < event.position and (wanted is None or event.topic in wanted)
            ]
            if self.committed is not None and position.index > self.committed():
                # Past anything this cluster has committed: an id of another
                # life of it (restored from a backup, or wiped). Holding back
                # its events until the index got there would leave the page
                # stale: it reloads instead.
                missed = [self._reset_frame()]
                position = self._last
            elif (
                position < self._floor
                or len(missed) >= self.max_queue_events
                or sum(map(len, missed)) >= self.max_queue_bytes
            ):
                # Too far back to replay (or more than the queue takes):
                # the page reloads instead.
                missed = [self._reset_frame()]
            for frame in missed:
                subscription.offer(frame)
            # A node behind the client (it had the events from a node
            # further on) must not send it what it applies up to there again.
            subscription.after = position
        self._subscribers[subscription] = wanted
        subscription.on_close = self._closed
        return subscription

    def _closed(self, subscription: Subscription) -> None:
        if subscription not in self._subscribers:
            return
        del self._subscribers[subscription]
        if subscription.closed == SLOW_READER:
            self.dropped_streams += 1

    async def stream(
        self,
        request: web.Request,
        topics: Iterable[str] | None = None,
        *,
        heartbeat: float = DEFAULT_HEARTBEAT,
    ) -> web.StreamResponse:
        """Answer ``request`` with this feed's events on ``topics`` (for an
        application's own route), resuming after its ``Last-Event-ID``."""
        subscription = self.subscribe(topics, last_event_id(request))
        return await serve(
            request,
            subscription,
            heartbeat=heartbeat,
            keep_alive=lambda: self.progress_frame(subscription),
        )

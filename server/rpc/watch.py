"""Watches: the changes of a key or prefix, from a start revision on, served
by any node from what it has applied (machines/history.py).

One :class:`WatchStream` is one client stream (a gRPC ``KV.Watch`` call, or
one Server-Sent Events request of the web tier) carrying any number of
watches. Nothing is copied per watch: each watch is a cursor into the node's
history (the next revision it has to look at). The stream's sender asks
:meth:`WatchStream.next_batch` for what to send, sends it, and asks again;
that is the only place events leave, so a watch's events go out in revision
order, each revision whole in one response, and a watch never sends a
revision twice.

Rules
-----
- Never ahead of this node: events are those of revisions this node has
  applied, so a linearizable read on this node sees them too.
- Start revision: 0 means "from the next change"; one below the history's
  floor is answered canceled with ``compact_revision = floor`` (the oldest
  revision this node can send from): resume on another node, or read the
  state and watch from its revision + 1. A start in the future simply waits.
- A snapshot installed here (or any other reset of the history) cancels,
  with ``compacted``, every watch whose next revision is not after the
  snapshot's: it would miss the revisions the snapshot jumped over.
- Slow watches: a watch whose stream is not read fast enough falls behind;
  once more than ``buffer_bytes`` of history separate it from the newest
  revision it is canceled with a reason (it holds no memory of its own
  meanwhile: the history is bounded by itself), and when the history drops
  its next revision it is canceled as compacted.
- At most ``max_watches`` watches on the node; a create beyond is refused
  (canceled, with the reason) and the stream goes on. So is a create whose
  key (or prefix) is over the key limit, or an empty key without
  ``prefix``: such a watch could match no key, and every watch holds its
  key for as long as it lives (``max_watches`` of them, each with a key
  the size of a request, would hold gigabytes).
- Progress: a watch created with ``progress_notify`` gets a response without
  events, carrying the node's revision, when it has sent everything up to
  that revision and has been quiet for ``progress_interval`` seconds; a
  progress request gets one for every watch as soon as it is caught up, and
  so does every caught-up watch of a stream the node ends as it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ramraft.server.machines.history import EventHistory, Revision
from ramraft.server.machines.kvops import Event
from ramraft.server.runtime.node_api import key_bytes

__all__ = ["WatchHub", "WatchLimits", "WatchOut", "WatchSpec", "WatchStream"]


@dataclass(frozen=True)
class WatchLimits:
    """From the node's flags (server/config.py NodeLimits)."""

    max_watches: int = 10_000
    buffer_bytes: int = 4 << 20
    progress_interval: float = 10.0
    batch_bytes: int = 1 << 20
    """About how many bytes of events one response carries (a revision is
    never split, so one larger revision makes a larger response)."""
    max_key_bytes: int = 1024
    """The node's key limit (--max-key-bytes): a longer key or prefix is refused."""


@dataclass(frozen=True)
class WatchSpec:
    key: str
    prefix: bool = False
    start_revision: int = 0
    progress_notify: bool = False
    watch_id: int = 0

    def matcher(self) -> Callable[[Event], bool]:
        key = self.key
        if self.prefix:
            return lambda e: e.key.startswith(key)
        return lambda e: e.key == key


@dataclass
class WatchOut:
    """One response of a stream, whatever its transport."""

    watch_id: int
    revision: int
    """The node's revision when the response was made."""
    created: bool = False
    canceled: bool = False
    compact_revision: int = 0
    cancel_reason: str = ""
    events: list[Revision] = field(default_factory=list)

    @property
    def progress(self) -> bool:
        return not (self.created or self.canceled or self.events)


class _Watch:
    __slots__ = ("cursor", "last_sent", "match", "progress_notify", "progress_wanted", "spec")

    def __init__(self, spec: WatchSpec, cursor: int, now: float) -> None:
        self.spec = spec
        self.cursor = cursor  # the next revision to look at
        self.match = spec.matcher()
        self.progress_notify = spec.progress_notify
        self.progress_wanted = False
        self.last_sent = now


class WatchHub:
    """Every watch stream of this node, woken when the history changes."""

    def __init__(
        self,
        history: EventHistory,
        limits: WatchLimits,
        active: Callable[[], str | None],
    ) -> None:
        """``active()``: why watches cannot be served now (the cluster runs
        key-value version 1), or None."""
        self.history = history
        self.limits = limits
        self.active = active
        self.streams: set[WatchStream] = set()
        self.watches = 0
        self.canceled_slow = 0
        self.canceled_compacted = 0
        self.shutting_down = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        history.listeners.append(self._changed)

    def open(self) -> WatchStream:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop_thread = threading.get_ident()
        stream = WatchStream(self)
        self.streams.add(stream)
        if self.shutting_down:
            stream.shut_down()
        return stream

    def shut_down(self) -> int:
        """The node is stopping: every stream, open or opened from now on,
        sends what it has and ends (gRPC: UNAVAILABLE; HTTP: the event
        stream closes). The watcher resumes through another node from the
        revision after the last one it got. Returns how many were open."""
        self.shutting_down = True
        streams = list(self.streams)
        for stream in streams:
            stream.shut_down()
        return len(streams)

    def _changed(self) -> None:
        loop = self._loop
        if loop is None:
            return  # no stream was ever opened
        if threading.get_ident() == self._loop_thread:
            self.wake_all()
        else:  # a snapshot restored in a worker thread
            loop.call_soon_threadsafe(self.wake_all)

    def wake_all(self) -> None:
        for stream in self.streams:
            stream.wake.set()


class WatchStream:
    def __init__(self, hub: WatchHub) -> None:
        self.hub = hub
        self.history = hub.history
        self.limits = hub.limits
        self.watches: dict[int, _Watch] = {}
        self.wake = asyncio.Event()
        self.closed = False
        self.ending = False
        """The client sends no more requests: once no watch is left, the
        stream is over."""
        self.shutting_down = False
        """The node is stopping: the stream is over once what it has is sent."""
        self._control: list[WatchOut] = []
        self._ids = itertools.count(1)
        self._rotate = 0

    # -- requests ----------------------------------------------------------------------

    def create(self, spec: WatchSpec) -> None:
        """Start a watch; its answer (created, or canceled with the reason)
        comes out of next_batch."""
        history = self.history
        head = history.head
        watch_id = spec.watch_id
        if watch_id < 0:
            self._refuse(watch_id, "a watch id is positive (0: let the node pick one)")
            return
        if watch_id == 0:
            watch_id = next(self._ids)
            while watch_id in self.watches:
                watch_id = next(self._ids)
        elif watch_id in self.watches:
            self._refuse(watch_id, f"watch id {watch_id} is in use on this stream")
            return
        bad_key = self._bad_key(spec)
        if bad_key is not None:
            self._refuse(watch_id, bad_key)
            return
        inactive = self.hub.active()
        if inactive is not None:
            self._refuse(watch_id, inactive)
            return
        if self.hub.watches >= self.limits.max_watches:
            self._refuse(
                watch_id,
                f"this node serves {self.limits.max_watches} watches already "
                "(--max-watches); watch through another node or later",
            )
            return
        start = spec.start_revision if spec.start_revision > 0 else head + 1
        floor = history.floor
        if start < floor:
            self.hub.canceled_compacted += 1
            self._control.append(
                WatchOut(
                    watch_id,
                    head,
                    created=True,
                    canceled=True,
                    compact_revision=floor,
                    cancel_reason=_compacted(start, floor),
                )
            )
            self.wake.set()
            return
        self.watches[watch_id] = _Watch(spec, start, time.monotonic())
        self.hub.watches += 1
        self._control.append(WatchOut(watch_id, head, created=True))
        self.wake.set()

    def _bad_key(self, spec: WatchSpec) -> str | None:
        """Why a watch on ``spec``'s key cannot match any key, or None."""
        if not spec.key and not spec.prefix:
            return "a watch needs a key (or prefix set: an empty prefix watches every key)"
        size = key_bytes(spec.key)
        limit = self.limits.max_key_bytes
        if size > limit:
            return f"the watched key is {size} bytes; the limit is {limit} bytes (--max-key-bytes)"
        return None

    def cancel(self, watch_id: int) -> None:
        if self._drop(watch_id):
            self._control.append(WatchOut(watch_id, self.history.head, canceled=True))
            self.wake.set()
        else:
            self._refuse(watch_id, f"no watch {watch_id} on this stream")

    def request_progress(self) -> None:
        for watch in self.watches.values():
            watch.progress_wanted = True
        self.wake.set()

    def end_requests(self) -> None:
        self.ending = True
        self.wake.set()

    def shut_down(self) -> None:
        """The node is stopping: send what there is, then end (WatchHub.shut_down).
        Every watch that is caught up also gets a progress response: the
        watcher resumes after this node's revision, not after its last
        event, which on a quiet key may be older than what the node it
        resumes on still holds (a restarted node's history starts at its
        snapshot): it would be refused as compacted, though it missed
        nothing."""
        self.shutting_down = True
        for watch in self.watches.values():
            watch.progress_wanted = True
        self.wake.set()

    @property
    def over(self) -> bool:
        return self.shutting_down or (self.ending and not self.watches and not self._control)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.hub.watches -= len(self.watches)
            self.watches.clear()
            self.hub.streams.discard(self)

    def _refuse(self, watch_id: int, reason: str) -> None:
        self._control.append(
            WatchOut(watch_id, self.history.head, created=True, canceled=True, cancel_reason=reason)
        )
        self.wake.set()

    def _drop(self, watch_id: int) -> bool:
        if self.watches.pop(watch_id, None) is None:
            return False
        self.hub.watches -= 1
        return True

    # -- what the sender sends ------------------------------------------------------------

    async def next_batch(self) -> list[WatchOut]:
        """What to send next (waits until there is something, or the
        stream is over: then the list may be empty)."""
        while True:
            self.wake.clear()
            out = self._collect()
            if out or self.over:
                return out
            timeout = self._until_progress()
            if timeout is None:
                await self.wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout)

    def _collect(self) -> list[WatchOut]:
        out, self._control = self._control, []
        history = self.history
        head = history.head
        floor = history.floor
        now = time.monotonic()
        budget = self.limits.batch_bytes
        ids = list(self.watches)
        if len(ids) > 1:  # a different watch goes first each time: no starvation
            self._rotate = (self._rotate + 1) % len(ids)
            ids = ids[self._rotate :] + ids[: self._rotate]
        for watch_id in ids:
            watch = self.watches[watch_id]
            if watch.cursor < floor:
                self._drop(watch_id)
                self.hub.canceled_compacted += 1
                out.append(
                    WatchOut(
                        watch_id,
                        head,
                        canceled=True,
                        compact_revision=floor,
                        cancel_reason=_compacted(watch.cursor, floor),
                    )
                )
                continue
            if watch.cursor <= head:
                behind = history.lag(watch.cursor)
                if behind > self.limits.buffer_bytes:
                    self._drop(watch_id)
                    self.hub.canceled_slow += 1
                    out.append(
                        WatchOut(
                            watch_id,
                            head,
                            canceled=True,
                            cancel_reason=(
                                f"the watch fell {behind} bytes of history behind (more than "
                                f"--watch-buffer-bytes {self.limits.buffer_bytes}): its stream "
                                f"is not read fast enough; resume from revision {watch.cursor}"
                            ),
                        )
                    )
                    continue
                if budget <= 0:
                    continue  # next round
                revisions, watch.cursor = history.read(watch.cursor, watch.match, budget)
                if watch.cursor <= head:
                    self.wake.set()  # a long way behind: more to look at next round
                if revisions:
                    budget -= sum(e.size() for _, events in revisions for e in events)
                    out.append(WatchOut(watch_id, head, events=revisions))
                    watch.last_sent = now
                    continue
            if watch.cursor > head and (
                watch.progress_wanted
                or (
                    watch.progress_notify and now - watch.last_sent >= self.limits.progress_interval
                )
            ):
                watch.progress_wanted = False
                watch.last_sent = now
                out.append(WatchOut(watch_id, head))
        if budget <= 0:
            self.wake.set()  # more to send: come back at once
        return out

    def _until_progress(self) -> float | None:
        due = [
            w.last_sent + self.limits.progress_interval
            for w in self.watches.values()
            if w.progress_notify
        ]
        if not due:
            return None
        return max(0.0, min(due) - time.monotonic())


def _compacted(start: int, floor: int) -> str:
    return (
        f"revision {start} is older than the history this node holds (from revision {floor}); "
        "resume on another node, or read the state and watch from its revision + 1"
    )

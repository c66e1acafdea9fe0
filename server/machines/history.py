"""The changes this node has applied, newest last: what watches replay.

The key-value machine (machines/kv.py) hands every applied revision and its
events to :meth:`EventHistory.append`, in order, on the loop. The history is
node-local (not replicated, not in snapshots) and bounded by revisions and
bytes (``--watch-history-revisions``, ``--watch-history-bytes``): the oldest
revisions go first. It always holds a contiguous run of revisions,
``floor..head``; a watch that needs a revision below ``floor`` is answered
"compacted".

``reset(revision)`` forgets everything: the state jumped to ``revision``
without its events (a snapshot was restored, the machine cleared, revisions
switched on). It may run in the thread that restores a snapshot while the
loop reads, so every method takes the history's lock (held only to copy a
few references).

Listeners are called after every change, in the thread that made it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ramraft.server.machines.kvops import Event

__all__ = ["EventHistory", "Revision"]

Revision = tuple[int, tuple[Event, ...]]

DEFAULT_MAX_REVISIONS = 100_000
DEFAULT_MAX_BYTES = 64 << 20


class EventHistory:
    def __init__(
        self, max_revisions: int = DEFAULT_MAX_REVISIONS, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        if max_revisions < 1 or max_bytes < 1:
            raise ValueError("the history holds at least one revision and one byte")
        self.max_revisions = max_revisions
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        # (revision, events, bytes appended up to and including it); the
        # items before _start are dropped (a list with an offset: O(1)
        # access by revision, which a deque does not give).
        self._items: list[tuple[int, tuple[Event, ...], int]] = []
        self._start = 0
        self._head = 0
        self._held_bytes = 0
        self._appended_bytes = 0
        self.resets = 0
        """How many times the history was reset (tests and metrics)."""
        self.listeners: list[Callable[[], None]] = []

    # -- what watches read -------------------------------------------------------------

    @property
    def head(self) -> int:
        """The newest revision applied (held or not)."""
        return self._head

    @property
    def floor(self) -> int:
        """The oldest revision held (head + 1 when none is)."""
        with self._lock:
            return self._floor()

    def _floor(self) -> int:
        if self._start < len(self._items):
            return self._items[self._start][0]
        return self._head + 1

    def held(self) -> tuple[int, int]:
        """(revisions, bytes) held now."""
        with self._lock:
            return len(self._items) - self._start, self._held_bytes

    def lag(self, revision: int) -> int:
        """Bytes of events appended from ``revision`` on (what a watch whose
        next revision is ``revision`` has still to go through)."""
        with self._lock:
            floor = self._floor()
            if revision > self._head:
                return 0
            if revision <= floor:
                return self._held_bytes
            before = self._items[self._start + revision - floor - 1][2]
            return self._appended_bytes - before

    def read(
        self,
        start: int,
        match: Callable[[Event], bool],
        max_bytes: int,
        max_revisions: int = 4096,
    ) -> tuple[list[Revision], int]:
        """The revisions from ``start`` on whose events ``match`` (each with
        only its matching events), whole revisions only, about ``max_bytes``
        of events (at least one revision) and at most ``max_revisions``
        looked at; and the next revision to read. ``start`` must be at least
        ``floor``."""
        with self._lock:
            floor = self._floor()
            if start < floor:
                raise ValueError(f"revision {start} is older than the history ({floor})")
            first = self._start + start - floor
            items = self._items[first : first + max_revisions]
        out: list[Revision] = []
        size = 0
        next_start = start
        for revision, events, _ in items:
            matching = tuple(e for e in events if match(e))
            if len(matching) == len(events):
                matching = events  # the same tuple: nothing copied
            next_start = revision + 1
            if matching:
                out.append((revision, matching))
                size += sum(e.size() for e in matching)
                if size >= max_bytes:
                    break
        return out, next_start

    # -- what the machine feeds --------------------------------------------------------

    def append(self, revision: int, events: tuple[Event, ...]) -> None:
        with self._lock:
            if revision != self._head + 1:
                # Not the next revision: the state jumped without telling
                # (never expected); what is held no longer connects to it.
                self._clear(revision - 1)
            size = sum(e.size() for e in events)
            self._appended_bytes += size
            self._items.append((revision, events, self._appended_bytes))
            self._held_bytes += size
            self._head = revision
            self._trim()
        self._notify()

    def reset(self, revision: int) -> None:
        """The state is at ``revision`` and nothing before is held."""
        with self._lock:
            self._clear(revision)
            self.resets += 1
        self._notify()

    def _clear(self, revision: int) -> None:
        self._items = []
        self._start = 0
        self._held_bytes = 0
        self._head = revision

    def _trim(self) -> None:
        items = self._items
        while len(items) - self._start > self.max_revisions or (
            self._held_bytes > self.max_bytes and len(items) - self._start > 1
        ):
            _, events, _ = items[self._start]
            self._held_bytes -= sum(e.size() for e in events)
            self._start += 1
        if self._start > 1024 and self._start * 2 > len(items):
            del items[: self._start]
            self._start = 0

    def _notify(self) -> None:
        for listener in self.listeners:
            listener()

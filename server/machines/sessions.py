"""Exactly-once client sessions: the replicated table of each client's replies.

A write may carry a session ``(client_id, sequence, first_unacked)``
(proto/kv.proto ``Session``; Raft thesis, section 6.3). ``sequence`` numbers
the client's writes; ``first_unacked`` is the lowest sequence of this client
that is still waiting for its reply, so a client may have many writes in
flight at once (pipelining) and they may reach the log in any order. A
command without ``first_unacked`` (0) behaves as if ``first_unacked ==
sequence``: the client has one write in flight at a time.

Per client the table keeps a *floor* (the highest ``first_unacked`` seen: the
client has its replies for every lower sequence) and the reply of every
applied sequence at or above the floor. Invariant: a sequence at or above the
floor was applied if and only if its reply is recorded.

The machine that applies a command asks :meth:`SessionTable.begin` first. It
raises the floor to the command's ``first_unacked`` (forgetting the replies
below it), then:

- ``sequence`` recorded: a retry. The command is NOT applied again; the reply
  recorded at its first application is returned.
- ``sequence`` below the floor and not recorded: NOT applied; the result is a
  ``STALE_SEQUENCE`` error. (The client has already received a final answer
  for it or given up on it; applying it now could apply it twice.)
- otherwise: apply the command, then :meth:`SessionTable.finish` records the
  reply.
- unknown ``client_id``: with ``first_unacked <= 1`` (the client has never
  had a reply) a new session opens and the command is applied. With
  ``first_unacked > 1`` the client had replies that the table has forgotten
  (its session expired), so a retry could not be recognised: the command is
  NOT applied and the result is ``SESSION_EXPIRED``. The client cannot learn
  whether its earlier unanswered writes took effect; it may safely resend
  THIS command under a new client id starting at sequence 1, because a
  SESSION_EXPIRED command is guaranteed not to have been applied.

Gaps are allowed (a client may abandon a sequence number, e.g. after a
deadline, and go on with the next): an abandoned sequence that reaches the
log after the client moved ``first_unacked`` past it is refused as stale.

Bounds
------
- Per client at most ``max_replies`` replies are kept. Recording one more
  forgets the reply of the LOWEST recorded sequence and raises the floor past
  it, so a later retry of that sequence is refused as stale rather than
  applied twice (exactly-once degrades to at-most-once for a client with
  more than ``max_replies`` writes applied but unacknowledged).
- At most ``max_sessions`` clients (below).
So the table holds at most ``max_sessions * max_replies`` replies.

Expiry (deterministic, never by wall clock)
-------------------------------------------
The table is part of the replicated state: every node holds the same table at
the same log index, and it travels in snapshots. Two rules remove sessions,
both driven only by log indexes:

1. *Idle*: a session whose last write (or retry) was at log index ``i`` has
   expired once a write at index ``j > i + idle_entries`` looks it up or is
   recorded. ``None`` turns idle expiry off.
2. *Size*: when a new session would make the table hold more than
   ``max_sessions``, the least recently used one (smallest last index) is
   dropped.

After expiry the client sees ``SESSION_EXPIRED`` on its next write with
``first_unacked > 1``. One hole remains, as in the Raft thesis: a client
whose first writes were applied while ``first_unacked`` was still 1, whose
session then expired, and which only then retries one of them, gets it
applied a second time. Keep ``idle_entries`` far above the number of entries
a retry can take to arrive, and ``max_sessions`` above the number of clients
active at once.

The limits must be the same on every node (they are constructor arguments of
the machine; the runtime takes them from cluster-wide configuration).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, TypeVar

from ramraft.server.machines.statemachine import CommandError, ErrorCode

R = TypeVar("R")

MAX_UINT64 = (1 << 64) - 1
DEFAULT_MAX_SESSIONS = 100_000
DEFAULT_IDLE_ENTRIES = 10_000_000
DEFAULT_MAX_REPLIES = 10_000


class SessionRecord(NamedTuple):
    """One client's session as plain immutable data (for snapshots, tests and
    tools). ``replies`` are ``(sequence, reply)`` in increasing sequence
    order, every sequence ``>= floor``."""

    client_id: int
    floor: int
    last_index: int
    replies: tuple[tuple[int, object], ...]


class SessionVerdict(NamedTuple):
    apply: bool
    """True: apply the command, then call finish(). False: return ``reply``."""
    reply: object


_APPLY = SessionVerdict(True, None)


def valid_session(client_id: object, sequence: object, first_unacked: object = 0) -> bool:
    """``client_id`` and ``sequence`` are ints in 1..2**64-1 (0 is reserved
    for "no session"); ``first_unacked`` is an int in 0..sequence (0: not
    given)."""
    return (
        type(client_id) is int
        and type(sequence) is int
        and type(first_unacked) is int
        and 0 < client_id <= MAX_UINT64
        and 0 < sequence <= MAX_UINT64
        and 0 <= first_unacked <= sequence
    )


def session_error(session: object) -> str:
    """Why ``session`` is not a valid ``(client_id, sequence[, first_unacked])``."""
    return (
        "a session is (client_id, sequence[, first_unacked]) with ids in 1..2**64-1 and "
        f"0 <= first_unacked <= sequence; got {session!r}"
    )


class _Client:
    """One client's mutable state. ``replies`` maps sequence -> reply;
    ``heap`` holds the same sequences (a min-heap) so the lowest can be
    forgotten in O(log n) whatever order they were applied in."""

    __slots__ = ("floor", "heap", "last_index", "replies")

    def __init__(self, floor: int, last_index: int) -> None:
        self.floor = floor
        self.last_index = last_index
        self.replies: dict[int, object] = {}
        self.heap: list[int] = []

    def raise_floor(self, floor: int) -> None:
        if floor <= self.floor:
            return
        self.floor = floor
        heap, replies = self.heap, self.replies
        while heap and heap[0] < floor:
            del replies[heapq.heappop(heap)]

    def record(self, sequence: int, reply: object, max_replies: int) -> None:
        self.replies[sequence] = reply
        heapq.heappush(self.heap, sequence)
        if len(self.heap) > max_replies:
            self.raise_floor(self.heap[0] + 1)

    def export(self, client_id: int) -> SessionRecord:
        replies = self.replies
        return SessionRecord(
            client_id,
            self.floor,
            self.last_index,
            tuple((s, replies[s]) for s in sorted(self.heap)),
        )


class SessionTable:
    """Per-client floor and replies, clients in least-recently-used order."""

    __slots__ = ("_idle_entries", "_max_replies", "_max_sessions", "_table")

    def __init__(
        self,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        idle_entries: int | None = DEFAULT_IDLE_ENTRIES,
        max_replies: int = DEFAULT_MAX_REPLIES,
    ) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        if idle_entries is not None and idle_entries < 1:
            raise ValueError("idle_entries must be at least 1 (or None for no idle expiry)")
        if max_replies < 1:
            raise ValueError("max_replies must be at least 1")
        self._max_sessions = max_sessions
        self._idle_entries = idle_entries
        self._max_replies = max_replies
        # Ordered from least to most recently used; last_index increases along it.
        self._table: OrderedDict[int, _Client] = OrderedDict()

    @property
    def max_sessions(self) -> int:
        return self._max_sessions

    @property
    def idle_entries(self) -> int | None:
        return self._idle_entries

    @property
    def max_replies(self) -> int:
        return self._max_replies

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._table

    def replies_kept(self) -> int:
        """How many replies the table holds, over all clients."""
        return sum(len(c.replies) for c in self._table.values())

    def get(self, client_id: int) -> SessionRecord | None:
        """The session as stored (expiry is applied only by begin/finish)."""
        client = self._table.get(client_id)
        return None if client is None else client.export(client_id)

    def run_once(
        self,
        session: tuple[int, int, int] | None,
        index: int,
        run: Callable[..., R],
        *args: Any,
    ) -> R | object:
        """The exactly-once rule for a command at ``index``: ``run(*args)``'s
        result the first time a (client_id, sequence) is applied, the
        recorded reply (or a refusal) when it comes again. Without a session
        the command simply runs."""
        if session is None:
            return run(*args)
        client_id, sequence, first_unacked = session
        verdict = self.begin(client_id, sequence, first_unacked, index)
        if not verdict.apply:
            return verdict.reply
        result = run(*args)
        self.finish(client_id, sequence, first_unacked, index, result)
        return result

    def begin(
        self, client_id: int, sequence: int, first_unacked: int, index: int
    ) -> SessionVerdict:
        """Decide whether the command at ``index`` is applied. The caller has
        checked ``valid_session(client_id, sequence, first_unacked)``."""
        first = first_unacked or sequence
        table = self._table
        client = table.get(client_id)
        if client is not None and self._idle(client, index):
            del table[client_id]
            client = None
        if client is None:
            if first <= 1:
                return _APPLY
            return SessionVerdict(
                False,
                CommandError(
                    ErrorCode.SESSION_EXPIRED,
                    f"session of client {client_id} is unknown or expired (sequence "
                    f"{sequence}, first unacknowledged {first}); not applied: start a new "
                    "session at sequence 1",
                ),
            )
        client.raise_floor(first)
        reply = client.replies.get(sequence, _MISSING)
        if reply is not _MISSING:
            # A retry keeps the session alive.
            client.last_index = index
            table.move_to_end(client_id)
            return SessionVerdict(False, reply)
        if sequence < client.floor:
            return SessionVerdict(
                False,
                CommandError(
                    ErrorCode.STALE_SEQUENCE,
                    f"client {client_id} sequence {sequence} is below its first "
                    f"unacknowledged sequence {client.floor} and its reply is not kept "
                    "(already answered or abandoned); not applied",
                ),
            )
        return _APPLY

    def finish(
        self, client_id: int, sequence: int, first_unacked: int, index: int, reply: object
    ) -> None:
        """Record the reply of the command begin() let through, then expire."""
        table = self._table
        client = table.get(client_id)
        if client is None:
            client = _Client(first_unacked or sequence, index)
            table[client_id] = client
        else:
            client.last_index = index
            table.move_to_end(client_id)
        client.record(sequence, reply, self._max_replies)
        while len(table) > self._max_sessions:
            table.popitem(last=False)
        if self._idle_entries is not None:
            horizon = index - self._idle_entries
            while table:
                oldest = next(iter(table.values()))
                if oldest.last_index >= horizon:
                    break
                table.popitem(last=False)

    def _idle(self, client: _Client, index: int) -> bool:
        return self._idle_entries is not None and client.last_index < index - self._idle_entries

    # -- snapshots ------------------------------------------------------------

    def copy_entries(self) -> list[SessionRecord]:
        """The whole table as immutable records in LRU order (taken on the
        loop; the records stay valid while the table changes). Costs one pass
        over the kept replies."""
        return [client.export(cid) for cid, client in self._table.items()]

    def load(self, records: Iterable[SessionRecord]) -> None:
        """Replace the table (LRU order, as copy_entries() gives it). Raises
        ValueError for records that break the table's invariants."""
        table: OrderedDict[int, _Client] = OrderedDict()
        for rec in records:
            cid, floor, last_index, replies = rec
            if not valid_session(cid, 1) or cid in table:
                raise ValueError(f"bad or repeated session client id {cid!r}")
            if type(floor) is not int or not 0 < floor <= MAX_UINT64:
                raise ValueError(f"client {cid}: bad floor {floor!r}")
            if type(last_index) is not int or last_index < 0:
                raise ValueError(f"client {cid}: bad last index {last_index!r}")
            client = _Client(floor, last_index)
            previous = floor - 1
            for sequence, reply in replies:
                if type(sequence) is not int or not previous < sequence <= MAX_UINT64:
                    raise ValueError(
                        f"client {cid}: reply sequences must be increasing and >= the floor"
                    )
                previous = sequence
                client.replies[sequence] = reply
                client.heap.append(sequence)  # increasing: already a heap
            table[cid] = client
        self._table = table

    def adopt(self, other: SessionTable) -> None:
        """Take ``other``'s sessions (loaded and checked beforehand, so a
        restore can validate first and swap in at the end)."""
        self._table = other._table
        other._table = OrderedDict()

    def empty_like(self) -> SessionTable:
        """An empty table with the same limits."""
        return SessionTable(self._max_sessions, self._idle_entries, self._max_replies)


_MISSING = object()


# -- snapshot encoding shared by the machines ---------------------------------


def records_to_plain(
    records: Iterable[SessionRecord], reply_to_plain: Callable[[object], Any]
) -> list[tuple[Any, ...]]:
    """Records as msgpack-able arrays ``(client_id, floor, last_index,
    [(sequence, plain reply), ...])``."""
    return [
        (r.client_id, r.floor, r.last_index, [(s, reply_to_plain(x)) for s, x in r.replies])
        for r in records
    ]


def records_from_plain(
    plain: Iterable[Any], reply_from_plain: Callable[[Any], object]
) -> list[SessionRecord]:
    """The inverse of records_to_plain; raises TypeError/ValueError/IndexError
    on malformed input (load() checks the invariants)."""
    out = []
    for cid, floor, last_index, replies in plain:
        out.append(
            SessionRecord(
                cid, floor, last_index, tuple((s, reply_from_plain(x)) for s, x in replies)
            )
        )
    return out


def chunk_records(records: list[SessionRecord], max_replies: int) -> Iterable[list[SessionRecord]]:
    """Split records into runs of about ``max_replies`` replies (at least one
    record each), so snapshot frames stay small."""
    chunk: list[SessionRecord] = []
    count = 0
    for rec in records:
        chunk.append(rec)
        count += len(rec.replies) + 1
        if count >= max_replies:
            yield chunk
            chunk, count = [], 0
    if chunk:
        yield chunk

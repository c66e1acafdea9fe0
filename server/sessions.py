"""Exactly-once client sessions: the replicated table of each client's last write.

A write may carry a session ``(client_id, sequence)``. The machine that applies
it asks :meth:`SessionTable.begin` first:

- ``sequence`` greater than the client's last applied one: apply the command,
  then :meth:`SessionTable.finish` records ``(sequence, index, reply)``.
- ``sequence`` equal to the last applied one: a retry. The command is NOT
  applied again; the reply recorded at its first application is returned.
- ``sequence`` lower than the last applied one: NOT applied; the result is a
  ``STALE_SEQUENCE`` error (only the latest reply is kept, so a session has one
  write outstanding at a time; a client that pipelines writes uses several
  client ids).
- unknown ``client_id``: with ``sequence == 1`` a new session opens and the
  command is applied. With ``sequence > 1`` the client's session has expired
  (or its first write never reached the log): the command is NOT applied and
  the result is ``SESSION_EXPIRED``. The client cannot learn whether its
  earlier unanswered write took effect; it may safely resend THIS command under
  a new client id starting at sequence 1, because a SESSION_EXPIRED command is
  guaranteed not to have been applied.

Gaps are allowed (``last + 5`` is applied): a client may abandon a sequence
number, e.g. after a deadline, and go on with the next.

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
``sequence > 1``. One hole remains, as in the Raft thesis: a client whose FIRST
write (sequence 1) was applied, whose session then expired, and which only
then retries sequence 1, gets it applied a second time. Keep ``idle_entries``
far above the number of entries a retry can take to arrive, and
``max_sessions`` above the number of clients active at once.

Both limits must be the same on every node (they are constructor arguments of
the machine; the runtime takes them from cluster-wide configuration).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import NamedTuple

from server.statemachine import CommandError, ErrorCode

MAX_UINT64 = (1 << 64) - 1
DEFAULT_MAX_SESSIONS = 100_000
DEFAULT_IDLE_ENTRIES = 10_000_000


class SessionEntry(NamedTuple):
    """What the table keeps per client. Immutable: a snapshot's shallow copy of
    the table stays valid while the live table changes."""

    sequence: int
    last_index: int
    reply: object


class SessionVerdict(NamedTuple):
    apply: bool
    """True: apply the command, then call finish(). False: return ``reply``."""
    reply: object


_APPLY = SessionVerdict(True, None)


def valid_session(client_id: object, sequence: object) -> bool:
    """Both are ints in 1..2**64-1 (0 is reserved for "no session")."""
    return (
        type(client_id) is int
        and type(sequence) is int
        and 0 < client_id <= MAX_UINT64
        and 0 < sequence <= MAX_UINT64
    )


class SessionTable:
    """Per-client last sequence and reply, in least-recently-used order."""

    __slots__ = ("_idle_entries", "_max_sessions", "_table")

    def __init__(
        self,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        idle_entries: int | None = DEFAULT_IDLE_ENTRIES,
    ) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        if idle_entries is not None and idle_entries < 1:
            raise ValueError("idle_entries must be at least 1 (or None for no idle expiry)")
        self._max_sessions = max_sessions
        self._idle_entries = idle_entries
        # Ordered from least to most recently used; last_index increases along it.
        self._table: OrderedDict[int, SessionEntry] = OrderedDict()

    @property
    def max_sessions(self) -> int:
        return self._max_sessions

    @property
    def idle_entries(self) -> int | None:
        return self._idle_entries

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._table

    def get(self, client_id: int) -> SessionEntry | None:
        """The entry as stored (expiry is applied only by begin/finish)."""
        return self._table.get(client_id)

    def begin(self, client_id: int, sequence: int, index: int) -> SessionVerdict:
        """Decide whether the command at ``index`` is applied. The caller has
        checked ``valid_session(client_id, sequence)``."""
        table = self._table
        entry = table.get(client_id)
        if entry is not None and self._idle(entry, index):
            del table[client_id]
            entry = None
        if entry is None:
            if sequence == 1:
                return _APPLY
            return SessionVerdict(
                False,
                CommandError(
                    ErrorCode.SESSION_EXPIRED,
                    f"session of client {client_id} is unknown or expired "
                    f"(sequence {sequence}); not applied: start a new session at sequence 1",
                ),
            )
        if sequence > entry.sequence:
            return _APPLY
        if sequence == entry.sequence:
            # A retry keeps the session alive.
            table[client_id] = SessionEntry(entry.sequence, index, entry.reply)
            table.move_to_end(client_id)
            return SessionVerdict(False, entry.reply)
        return SessionVerdict(
            False,
            CommandError(
                ErrorCode.STALE_SEQUENCE,
                f"client {client_id} sequence {sequence} is older than its last applied "
                f"sequence {entry.sequence}: a duplicate, not applied again",
            ),
        )

    def finish(self, client_id: int, sequence: int, index: int, reply: object) -> None:
        """Record the reply of the command begin() let through, then expire."""
        table = self._table
        table[client_id] = SessionEntry(sequence, index, reply)
        table.move_to_end(client_id)
        while len(table) > self._max_sessions:
            table.popitem(last=False)
        if self._idle_entries is not None:
            horizon = index - self._idle_entries
            while table:
                oldest = next(iter(table.values()))
                if oldest.last_index >= horizon:
                    break
                table.popitem(last=False)

    def _idle(self, entry: SessionEntry, index: int) -> bool:
        return self._idle_entries is not None and entry.last_index < index - self._idle_entries

    # -- snapshots ------------------------------------------------------------

    def copy_entries(self) -> OrderedDict[int, SessionEntry]:
        """A shallow copy in LRU order (entries are immutable, so the copy stays
        valid while the table changes)."""
        return self._table.copy()

    def load(self, entries: Iterable[tuple[int, SessionEntry]]) -> None:
        """Replace the table (LRU order, as copy_entries() gives it)."""
        table: OrderedDict[int, SessionEntry] = OrderedDict()
        for client_id, entry in entries:
            table[client_id] = entry
        self._table = table

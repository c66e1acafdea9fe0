"""The replicated log as one node holds it: a snapshot prefix, then entries.

Rules of this module:
- Indexes start at 1. ``offset`` is the index the snapshot prefix covers (0
  when there is no snapshot); ``entries[i]`` has index ``offset + 1 + i``.
- ``stabled`` says how much of the log the application has persisted; what is
  after it is "unstable" and goes out in the next Ready.
- The membership configuration in force is the newest one in the log,
  committed or not (Raft thesis 4.1), so the log keeps the history of
  configuration entries after the snapshot to be able to fall back when a
  conflicting suffix is truncated.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate
from operator import attrgetter

from ramraft.consensus.confchange import apply_conf_change
from ramraft.consensus.types import ConfChange, ConfState, Entry, EntryKind, SnapshotMeta

_data = attrgetter("data")
_kind = attrgetter("kind")


class LogInvariantError(AssertionError):
    """A rule of the log was broken: this is a bug, never bad input."""


class RaftLog:
    __slots__ = (
        "_conf_history",
        "applied",
        "committed",
        "entries",
        "offset",
        "offset_term",
        "snapshot_conf",
        "stabled",
    )

    def __init__(self, snapshot: SnapshotMeta, entries: Sequence[Entry], commit: int) -> None:
        self.offset = snapshot.index
        self.offset_term = snapshot.term
        # Membership at ``offset``: the base the conf-change history applies to.
        self.snapshot_conf = snapshot.conf
        self.entries: list[Entry] = list(entries)
        # Invariant: offset <= applied <= committed <= last_index.
        self.committed = max(snapshot.index, min(commit, self.last_index))
        self.applied = snapshot.index
        # Invariant: offset <= stabled <= last_index. Entries loaded from storage are stable.
        self.stabled = self.last_index
        # (index, conf) of every configuration entry after offset, in order.
        self._conf_history: list[tuple[int, ConfState]] = []
        self._check_contiguous(self.entries, self.offset + 1)
        self._rebuild_conf_history(0)

    # ---- reading -------------------------------------------------------------------------

    @property
    def first_index(self) -> int:
        return self.offset + 1

    @property
    def last_index(self) -> int:
        return self.offset + len(self.entries)

    @property
    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.offset_term

    def term(self, index: int) -> int | None:
        """The term of the entry at ``index``; None when it is compacted away
        or beyond the end (the caller cannot tell them apart by term alone)."""
        if index == self.offset:
            return self.offset_term
        if index < self.offset or index > self.last_index:
            return None
        return self.entries[index - self.offset - 1].term

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries with lo <= index < hi; with ``max_bytes``, as many as fit in
        that many bytes of data but always at least one."""
        if lo <= self.offset:
            raise LogInvariantError(f"slice from {lo} reaches into the snapshot at {self.offset}")
        hi = min(hi, self.last_index + 1)
        if lo >= hi:
            return []
        out = self.entries[lo - self.offset - 1 : hi - self.offset - 1]
        if max_bytes is not None and len(out) > 1:
            # Cumulative sizes (data + 16 bytes of header per entry), summed in C;
            # keep the longest prefix within max_bytes, at least one entry.
            sizes = list(accumulate(map(len, map(_data, out))))
            if sizes[-1] + 16 * len(out) > max_bytes:
                fit = bisect_right(
                    range(len(out)), max_bytes, key=lambda n: sizes[n] + 16 * (n + 1)
                )
                return out[: max(fit, 1)]
        return out

    def unstable_entries(self) -> list[Entry]:
        return self.entries[self.stabled - self.offset :]

    def next_committed(self) -> list[Entry]:
        """Committed entries not yet handed out for applying."""
        return self.slice(self.applied + 1, self.committed + 1)

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """A candidate's log is at least as up to date as ours (Raft paper
        5.4.1): a later last term, or the same last term and at least as long."""
        return last_term > self.last_term or (
            last_term == self.last_term and last_index >= self.last_index
        )

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index <= ``index`` whose term is <= ``term``, and that
        term: where the log owning it can agree with a log whose entry at
        ``index`` has ``term`` (fast back-off, etcd's findConflictByTerm).
        Past the end of the log, ``index`` itself (term 0)."""
        if index > self.last_index:
            return index, 0
        while index > self.offset:
            t = self.entries[index - self.offset - 1].term
            if t <= term:
                return index, t
            index -= 1
        # Compacted away: we cannot look further back, and the caller will
        # find out (a snapshot) when it tries to send from here.
        return index, self.offset_term if index == self.offset else 0

    # ---- membership ----------------------------------------------------------------------

    @property
    def conf(self) -> ConfState:
        """The configuration in force: the newest in the log."""
        return self._conf_history[-1][1] if self._conf_history else self.snapshot_conf

    @property
    def last_conf_index(self) -> int:
        return self._conf_history[-1][0] if self._conf_history else self.offset

    def conf_at(self, index: int) -> ConfState:
        """The configuration in force once the log is applied up to ``index``."""
        if index < self.offset:
            raise LogInvariantError(f"conf_at({index}) before the snapshot at {self.offset}")
        n = bisect_right(self._conf_history, index, key=lambda item: item[0])
        return self._conf_history[n - 1][1] if n else self.snapshot_conf

    def _rebuild_conf_history(self, from_position: int) -> None:
        conf = self._conf_history[-1][1] if self._conf_history else self.snapshot_conf
        for entry in self.entries[from_position:]:
            if entry.kind == EntryKind.CONF_CHANGE:
                conf = apply_conf_change(conf, ConfChange.decode(entry.data))
                self._conf_history.append((entry.index, conf))

    # ---- writing -------------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> None:
        """Append entries that start right after the last index (leader)."""
        if not entries:
            return
        self._check_contiguous(entries, self.last_index + 1)
        position = len(self.entries)
        self.entries.extend(entries)
        if any(map(_kind, entries)):  # NORMAL is 0: only CONF_CHANGE is true
            self._rebuild_conf_history(position)

    def maybe_append(
        self, prev_index: int, prev_term: int, commit: int, entries: Sequence[Entry]
    ) -> int | None:
        """The follower's half of AppendEntries (Raft paper, Figure 2, receiver
        steps 2-5). Returns the index up to which the log now matches the
        leader's, or None when the consistency check fails."""
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        conflict = self._find_conflict(entries)
        if conflict:
            if conflict <= self.committed:
                raise LogInvariantError(
                    f"leader's entry {conflict} conflicts with committed {self.committed}"
                )
            self._truncate_and_append(entries[conflict - prev_index - 1 :])
        self.commit_to(min(commit, last_new))
        return last_new

    def _find_conflict(self, entries: Sequence[Entry]) -> int:
        """Index of the first entry that is new or differs in term; 0 if the log
        already holds all of them."""
        for entry in entries:
            if entry.index <= self.offset:
                continue  # inside our snapshot: committed, so it matches
            if self.term(entry.index) != entry.term:
                return entry.index
        return 0

    def _truncate_and_append(self, entries: Sequence[Entry]) -> None:
        first = entries[0].index
        if first <= self.offset:
            raise LogInvariantError(f"append at {first} into the snapshot at {self.offset}")
        keep = first - self.offset - 1
        if keep < len(self.entries):
            del self.entries[keep:]
            while self._conf_history and self._conf_history[-1][0] >= first:
                self._conf_history.pop()
            self.stabled = min(self.stabled, first - 1)
        self.append(entries)

    def commit_to(self, index: int) -> bool:
        """Raise the commit index (never lower it). True if it moved."""
        if index <= self.committed:
            return False
        if index > self.last_index:
            raise LogInvariantError(f"commit {index} beyond last index {self.last_index}")
        self.committed = index
        return True

    def stable_to(self, index: int, term: int) -> None:
        """The application has persisted entries up to ``index`` (whose term it
        saw as ``term``; if the log changed since, keep them unstable)."""
        if self.term(index) == term and index > self.stabled:
            self.stabled = index

    def applied_to(self, index: int) -> None:
        if index > self.committed or index < self.applied:
            raise LogInvariantError(f"applied {index} outside [{self.applied}, {self.committed}]")
        self.applied = index

    def restore(self, snapshot: SnapshotMeta) -> None:
        """Replace the whole log by a snapshot received from the leader."""
        self.offset = snapshot.index
        self.offset_term = snapshot.term
        self.snapshot_conf = snapshot.conf
        self.entries = []
        self._conf_history = []
        self.committed = snapshot.index
        self.applied = snapshot.index
        self.stabled = snapshot.index

    def compact(self, index: int) -> None:
        """Forget entries up to ``index``, which a persisted snapshot covers."""
        if index <= self.offset:
            return
        if index > self.applied:
            raise LogInvariantError(f"compact to {index} beyond applied {self.applied}")
        term = self.term(index)
        assert term is not None
        self.snapshot_conf = self.conf_at(index)
        del self.entries[: index - self.offset]
        self._conf_history = [(i, c) for i, c in self._conf_history if i > index]
        self.offset = index
        self.offset_term = term

    # ---- checking ------------------------------------------------------------------------

    @staticmethod
    def _check_contiguous(entries: Sequence[Entry], first: int) -> None:
        if entries and (entries[0].index != first or entries[-1].index != first + len(entries) - 1):
            raise LogInvariantError(
                f"entries {entries[0].index}..{entries[-1].index} do not start at {first}"
            )

    def check_invariants(self) -> None:
        if not (self.offset <= self.applied <= self.committed <= self.last_index):
            raise LogInvariantError(
                f"need offset {self.offset} <= applied {self.applied} <= committed "
                f"{self.committed} <= last {self.last_index}"
            )
        if not self.offset <= self.stabled <= self.last_index:
            raise LogInvariantError(f"stabled {self.stabled} outside the log")
        previous_term = self.offset_term
        for position, entry in enumerate(self.entries):
            if entry.index != self.offset + 1 + position:
                raise LogInvariantError(f"entry at position {position} has index {entry.index}")
            if entry.term < previous_term:
                raise LogInvariantError(f"term goes down at index {entry.index}")
            previous_term = entry.term

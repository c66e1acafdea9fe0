"""The logical content of a log store, and the rules that change it.

Both log stores (file and memory) keep a LogModel, and the file store's
recovery rebuilds one by replaying the WAL through the same methods, so the
rules a save obeys and the rules a replay obeys are one piece of code.

The log is ``prev_index`` (the index the log restarts after: a snapshot or a
compaction point, with its term ``prev_term``) followed by the terms (and, in
the memory store and during replay, the entries) of ``prev_index + 1 ..
last_index``.

Snapshot marker rule (Raft paper, InstallSnapshot receiver steps 6-7): when a
snapshot at (index, term) is saved and the log holds an entry at ``index``
with that same term, the entries after it are kept (Log Matching says the two
logs agree up to there; later conflicts are repaired by the usual append
rules). Otherwise the whole log is discarded and restarts after the snapshot.
The decision is made once, when the marker is saved, and recorded in it, so a
replay never has to guess.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

from ramraft.consensus.types import Entry, HardState, SnapshotMeta

from .encoding import CheckpointItem


class LogModel:
    __slots__ = ("entries", "hard_state", "prev_index", "prev_term", "snapshot", "terms")

    def __init__(self, keep_entries: bool) -> None:
        self.prev_index = 0
        self.prev_term = 0
        # terms[i] is the term of entry prev_index + 1 + i.
        self.terms = array("Q")
        # Same range as terms when kept (memory store, replay), else None.
        self.entries: list[Entry] | None = [] if keep_entries else None
        self.hard_state = HardState()
        # The newest snapshot marker saved (the snapshot the log is based on).
        self.snapshot: SnapshotMeta | None = None

    # -- queries ---------------------------------------------------------------

    @property
    def last_index(self) -> int:
        return self.prev_index + len(self.terms)

    @property
    def last_term(self) -> int:
        return self.terms[-1] if self.terms else self.prev_term

    def term_at(self, index: int) -> int | None:
        if index == self.prev_index:
            return self.prev_term
        offset = index - self.prev_index - 1
        if 0 <= offset < len(self.terms):
            return self.terms[offset]
        return None

    def copy(self) -> LogModel:
        clone = LogModel(keep_entries=self.entries is not None)
        clone.prev_index = self.prev_index
        clone.prev_term = self.prev_term
        clone.terms = array("Q", self.terms)
        clone.entries = None if self.entries is None else list(self.entries)
        clone.hard_state = self.hard_state
        clone.snapshot = self.snapshot
        return clone

    def entries_after(self, index: int) -> list[Entry]:
        assert self.entries is not None
        return self.entries[max(0, index - self.prev_index) :]

    def drop_entries(self) -> None:
        """Forget entry payloads, keep terms (after recovery, the caller owns them)."""
        self.entries = None

    # -- checks before a save (raise ValueError; nothing changes) --------------

    def check(
        self,
        snapshot: SnapshotMeta | None,
        entries: Sequence[Entry],
        hard_state: HardState | None,
    ) -> bool:
        """Validate a batch against the log; return the marker's retain flag.

        Besides the structure (no gaps, nothing at or below the snapshot), the
        store refuses what would break a Raft safety rule however the core got
        there: overwriting a committed entry with a different term, lowering
        the term, or changing the vote within a term.
        """
        retain = False
        prev_index, last_index = self.prev_index, self.last_index
        if snapshot is not None:
            if snapshot.index < self.prev_index or snapshot.index <= 0:
                raise ValueError(
                    f"snapshot marker at index {snapshot.index} is behind the log start "
                    f"(the log restarts after index {self.prev_index})"
                )
            retain = self.term_at(snapshot.index) == snapshot.term
            prev_index = snapshot.index
            if not retain:
                last_index = prev_index

        def stored_term(index: int) -> int | None:
            # The term at ``index`` once the marker (if any) is applied.
            if snapshot is not None and index <= prev_index:
                return snapshot.term if index == prev_index else None
            return self.term_at(index) if index <= last_index else None

        if entries:
            first, final = entries[0].index, entries[-1].index
            if not prev_index < first <= last_index + 1:
                raise ValueError(
                    f"entries start at index {first}, but the log holds "
                    f"{prev_index + 1}..{last_index} (they must start within it or right after it)"
                )
            before = stored_term(first - 1)
            if before is not None and entries[0].term < before:
                raise ValueError(
                    f"entry {first} has term {entries[0].term}, below the term {before} "
                    f"of the entry before it"
                )
            commit = self.hard_state.commit
            if final < min(commit, last_index):
                raise ValueError(
                    f"entries {first}..{final} would discard committed entries "
                    f"{final + 1}..{min(commit, last_index)} (commit index is {commit})"
                )
            for index in range(first, min(commit, final, last_index) + 1):
                stored = stored_term(index)
                new = entries[index - first].term
                if stored is not None and stored != new:
                    raise ValueError(
                        f"refusing to overwrite committed entry {index} (term {stored}) "
                        f"with term {new}: commit index is {commit}"
                    )
        if hard_state is not None:
            old = self.hard_state
            if hard_state.term < old.term:
                raise ValueError(
                    f"hard state term would go back from {old.term} to {hard_state.term}"
                )
            if hard_state.term == old.term and old.vote and hard_state.vote != old.vote:
                raise ValueError(
                    f"hard state would change the vote in term {old.term} "
                    f"from {old.vote!r} to {hard_state.vote!r}"
                )
        return retain

    # -- changes ---------------------------------------------------------------

    def apply(
        self,
        snapshot: SnapshotMeta | None,
        retain: bool,
        entries: Sequence[Entry],
        hard_state: HardState | None,
    ) -> None:
        """Apply a batch that check() accepted (or that a replay read back)."""
        if snapshot is not None:
            self.apply_marker(snapshot, retain)
        if entries:
            self.apply_entries(entries)
        if hard_state is not None:
            self.hard_state = hard_state

    def apply_marker(self, meta: SnapshotMeta, retain: bool) -> None:
        self.snapshot = meta
        if retain:
            if meta.index > self.prev_index:
                self._drop_through(meta.index)
        else:
            self.prev_index = meta.index
            self.prev_term = meta.term
            del self.terms[:]
            if self.entries is not None:
                self.entries.clear()

    def apply_entries(self, entries: Sequence[Entry]) -> None:
        """Append, first discarding the stored suffix from entries[0].index on.

        During a replay the batch may start at or below prev_index: back
        when it was saved it replaced (uncommitted) entries that lived in a
        segment compaction has since deleted. The log then ends where the
        batch ends; the part at or below prev_index is covered by a snapshot
        and only its last term is kept.
        """
        first = entries[0].index
        if first <= self.prev_index:
            del self.terms[:]
            if self.entries is not None:
                self.entries.clear()
            if entries[-1].index <= self.prev_index:
                self.prev_index = entries[-1].index
                self.prev_term = entries[-1].term
                return
            skip = self.prev_index - first + 1
            self.prev_term = entries[skip - 1].term
            entries = entries[skip:]
            first = entries[0].index
        keep = first - self.prev_index - 1
        if keep < 0 or keep > len(self.terms):
            raise ValueError(f"entries start at {first}, past the end {self.last_index} of the log")
        if keep < len(self.terms):
            del self.terms[keep:]
            if self.entries is not None:
                del self.entries[keep:]
        self.terms.extend([e.term for e in entries])
        if self.entries is not None:
            self.entries.extend(entries)

    def compact(self, index: int) -> None:
        """Forget entries up to ``index`` (a durable snapshot covers them)."""
        index = min(index, self.last_index)
        if index > self.prev_index:
            self._drop_through(index)

    def _drop_through(self, index: int) -> None:
        term = self.term_at(index)
        count = index - self.prev_index
        if term is None:  # index past the end: nothing survives
            term = 0
            count = len(self.terms)
        del self.terms[:count]
        if self.entries is not None:
            del self.entries[:count]
        self.prev_index = index
        self.prev_term = term

    # -- segment checkpoints -----------------------------------------------------

    def checkpoint(self) -> CheckpointItem:
        return CheckpointItem(self.last_index, self.last_term, self.hard_state, self.snapshot)

    def start_from_checkpoint(self, cp: CheckpointItem) -> None:
        """Replay of the oldest surviving segment: everything up to the
        checkpoint's last index lived in deleted (compacted) segments."""
        self.prev_index = cp.last_index
        self.prev_term = cp.last_term
        del self.terms[:]
        if self.entries is not None:
            self.entries.clear()
        self.hard_state = cp.hard_state
        self.snapshot = cp.snapshot

    def matches_checkpoint(self, cp: CheckpointItem) -> bool:
        return (
            cp.last_index == self.last_index
            and cp.last_term == self.last_term
            and cp.hard_state == self.hard_state
            and cp.snapshot == self.snapshot
        )


def reconcile(
    model: LogModel, newest: SnapshotMeta | None, wal_path: str, snap_path: str
) -> bool | None:
    """Fit a replayed log to the newest snapshot at recovery.

    Returns None when the log already starts at the snapshot, else the retain
    flag of the marker the store must add (and apply) so that the log restarts
    after the snapshot: the snapshot may be newer than the log's start (a
    local snapshot, or one received from the leader whose marker was not yet
    saved when the node stopped). Raises CorruptionError when the snapshot
    does not reach the log's start: entries in between are missing.
    """
    from .errors import CorruptionError  # local: errors must not import model

    s_index = newest.index if newest is not None else 0
    if s_index < model.prev_index:
        marker = model.snapshot
        if marker is not None and marker.index > s_index:
            problem = (
                f"the log is based on a snapshot at index {marker.index} (term {marker.term}), "
                f"but the newest snapshot in {snap_path} is "
                f"{'at index ' + str(s_index) if newest else 'missing'}: the snapshot file is lost"
            )
        else:
            problem = (
                f"the log starts after index {model.prev_index} but the newest snapshot in "
                f"{snap_path} covers only up to index {s_index}: entries "
                f"{s_index + 1}..{model.prev_index} are missing (a deleted WAL segment?)"
            )
        raise CorruptionError(wal_path, None, problem)
    if newest is None or s_index == model.prev_index:
        if newest is not None and model.prev_term and model.prev_term != newest.term:
            raise CorruptionError(
                wal_path,
                None,
                f"the log says entry {s_index} has term {model.prev_term}, but the newest "
                f"snapshot in {snap_path} says term {newest.term}",
            )
        return None
    return model.term_at(s_index) == newest.term

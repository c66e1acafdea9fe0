"""What the leader knows of each follower's log, and how fast to feed it.

A follower's progress is in one of three states (as etcd's tracker):

- PROBE: the leader does not know where the logs agree. It sends one
  AppendEntries at a time and waits for the answer (or the next heartbeat
  answer) before sending another; rejections walk ``next`` back.
- REPLICATE: the logs agree up to ``match``. The leader streams appends
  optimistically (``next`` moves on as soon as a message is sent), with at
  most ``max_inflight`` messages unacknowledged: the pipeline window.
- SNAPSHOT: the entries the follower needs are compacted away; a snapshot
  is on its way and nothing else is sent until it is acknowledged or fails.
"""

from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Inflights:
    """A bounded FIFO of the last index of each append message in flight."""

    __slots__ = ("_last_indexes", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._last_indexes: deque[int] = deque()

    def add(self, last_index: int) -> None:
        if self.full():
            raise OverflowError("inflight window is full")
        self._last_indexes.append(last_index)

    def free_to(self, index: int) -> None:
        """Acknowledged up to ``index``: every message ending there or before is done."""
        while self._last_indexes and self._last_indexes[0] <= index:
            self._last_indexes.popleft()

    def free_first(self) -> None:
        if self._last_indexes:
            self._last_indexes.popleft()

    def full(self) -> bool:
        return len(self._last_indexes) >= self.capacity

    def reset(self) -> None:
        self._last_indexes.clear()

    def __len__(self) -> int:
        return len(self._last_indexes)


class Progress:
    __slots__ = (
        "inflights",
        "is_learner",
        "match",
        "next",
        "pending_snapshot",
        "probe_sent",
        "recent_active",
        "sent_commit",
        "state",
    )

    def __init__(self, next_index: int, max_inflight: int, is_learner: bool) -> None:
        # Invariant: 0 <= match < next. Entries up to match are known to be on
        # the follower's disk and to agree with the leader's log.
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        # In PROBE: an append was sent and not answered yet; send no other.
        self.probe_sent = False
        # In SNAPSHOT: the index of the snapshot being sent.
        self.pending_snapshot = 0
        # Heard from since the last CheckQuorum round.
        self.recent_active = False
        self.is_learner = is_learner
        self.inflights = Inflights(max_inflight)
        # The highest commit index told to this follower (appends, heartbeats).
        self.sent_commit = 0

    def __repr__(self) -> str:
        return (
            f"Progress({self.state.value} match={self.match} next={self.next} "
            f"inflight={len(self.inflights)})"
        )

    def become_probe(self) -> None:
        # After a snapshot, the follower has at least the snapshot's index.
        if self.state == ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self._reset(ProgressState.PROBE)

    def become_replicate(self) -> None:
        self.next = self.match + 1
        self._reset(ProgressState.REPLICATE)

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflights.reset()

    def maybe_update(self, index: int) -> bool:
        """A successful append response up to ``index``. True if match moved."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decrease_to(self, rejected: int, hint: int) -> bool:
        """A rejection of the append whose previous index was ``rejected``;
        ``hint`` is where the logs may agree. False if the rejection is stale."""
        if self.state == ProgressState.REPLICATE:
            # Stale if it rejects something already known to match.
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        # In PROBE, only the answer to the last probe counts.
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, hint + 1), self.match + 1, 1)
        self.probe_sent = False
        return True

    def sent_entries(self, last_index: int, count: int) -> None:
        """An append carrying ``count`` entries ending at ``last_index`` left."""
        if self.state == ProgressState.REPLICATE:
            if count:
                self.next = last_index + 1
                self.inflights.add(last_index)
        elif self.state == ProgressState.PROBE:
            self.probe_sent = True

    def is_paused(self) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return self.inflights.full()
        return True

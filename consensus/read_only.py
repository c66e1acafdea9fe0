"""ReadIndex bookkeeping (Raft thesis 6.4): linearizable reads without
writing to the log.

The leader serves a read at index R = its commit index when the read
arrives, once (1) it has committed an entry of its own term, so R covers
every write acknowledged by any earlier leader, and (2) a majority has
answered a heartbeat sent after the read arrived, so it was still the
leader when R was chosen. Reads wait in *rounds*: every read that arrived
since the last round joins the next one, and one heartbeat round confirms
them all. A round confirmed also confirms every earlier round: leadership
at a later moment implies leadership at every earlier moment of the term.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from ramraft.consensus.types import NodeId


@dataclass(slots=True)
class ReadRequest:
    requester: NodeId  # this node, or the follower that asked
    context: bytes


@dataclass(slots=True)
class ReadRound:
    index: int
    requests: list[ReadRequest]
    acks: set[NodeId] = field(default_factory=set)
    # The followers that served their own requests in this round from its
    # heartbeat (reads.py): they need no READ_INDEX_RESP.
    served: set[NodeId] = field(default_factory=set)


ROUND_CONTEXT_BYTES = 8


def round_context(round_id: int) -> bytes:
    return round_id.to_bytes(ROUND_CONTEXT_BYTES, "big")


def parse_round_context(context: bytes) -> int | None:
    return int.from_bytes(context, "big") if len(context) == ROUND_CONTEXT_BYTES else None


class ReadOnly:
    """The leader's side: reads waiting to join a round, and rounds waiting for
    a heartbeat quorum. Bounded by the caller (the runtime limits reads in
    flight)."""

    __slots__ = ("_next_round", "fast", "queued", "rounds")

    def __init__(self, first_round_id: int) -> None:
        self.queued: list[ReadRequest] = []
        # The voters whose answers completed the last round confirmed (the
        # leader's own aside): the next round's heartbeats go to them.
        self.fast: frozenset[NodeId] = frozenset()
        # Invariant: round ids increase in insertion order; indexes never decrease.
        self.rounds: OrderedDict[int, ReadRound] = OrderedDict()
        self._next_round = first_round_id

    def add(self, requester: NodeId, context: bytes) -> None:
        self.queued.append(ReadRequest(requester, context))

    def start_round(self, index: int, self_id: NodeId) -> bytes | None:
        """Move every queued read into a new round at ``index``; returns the
        round's context to put in the heartbeats, or None if nothing waits."""
        if not self.queued:
            return None
        round_id = self._next_round
        self._next_round += 1
        self.rounds[round_id] = ReadRound(index, self.queued, {self_id})
        self.queued = []
        return round_context(round_id)

    @property
    def newest(self) -> int:
        """The id of the newest round (one must be out)."""
        return next(reversed(self.rounds))

    def last_round_context(self) -> bytes:
        """The newest unconfirmed round, to re-ask in periodic heartbeats so a
        round whose heartbeats were lost still completes."""
        if not self.rounds:
            return b""
        return round_context(self.newest)

    def ack(self, context: bytes, voter: NodeId) -> ReadRound | None:
        round_id = parse_round_context(context)
        if round_id is None:
            return None
        read_round = self.rounds.get(round_id)
        if read_round is not None:
            read_round.acks.add(voter)
        return read_round

    def release_through(self, context: bytes) -> list[ReadRound]:
        """Remove and return the round named by ``context`` and every round
        before it."""
        round_id = parse_round_context(context)
        released: list[ReadRound] = []
        if round_id is None or round_id not in self.rounds:
            return released
        while self.rounds:
            first_id, first = self.rounds.popitem(last=False)
            released.append(first)
            if first_id == round_id:
                break
        return released

    def drain(self) -> list[ReadRequest]:
        """Every read still waiting, removed (the leader is stepping down)."""
        self.fast = frozenset()
        requests = list(self.queued)
        for read_round in self.rounds.values():
            requests.extend(read_round.requests)
        self.queued = []
        self.rounds.clear()
        return requests

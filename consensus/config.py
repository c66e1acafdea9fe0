"""The Raft core's settings."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ramraft.consensus.types import NodeId, check_node_id


@dataclass(frozen=True, slots=True)
class Config:
    id: NodeId
    rng: random.Random = field(compare=False)
    # Ticks without hearing from a leader before a follower campaigns; the
    # actual timeout is drawn from [election_tick, 2 * election_tick).
    election_tick: int = 10
    # Ticks between leader heartbeats. Must be well below election_tick.
    heartbeat_tick: int = 1
    pre_vote: bool = True  # thesis 9.6
    check_quorum: bool = True  # thesis 6.2: a leader cut off from a majority steps down
    # Cap on the entry bytes in one AppendEntries (always at least one entry).
    max_msg_bytes: int = 1 << 20
    # Pipeline window: AppendEntries messages in flight per follower.
    max_inflight_msgs: int = 256
    # Proposals are refused while more than this many bytes wait for commit.
    max_uncommitted_bytes: int = 256 << 20
    # A learner is promoted only when at most this many entries behind.
    max_learner_lag: int = 1000

    def validate(self) -> None:
        check_node_id(self.id)
        if self.heartbeat_tick < 1:
            raise ValueError("heartbeat_tick must be at least 1")
        if self.election_tick <= self.heartbeat_tick:
            raise ValueError("election_tick must be larger than heartbeat_tick")
        if self.max_inflight_msgs < 1 or self.max_msg_bytes < 1:
            raise ValueError("max_inflight_msgs and max_msg_bytes must be positive")

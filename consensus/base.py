"""The state the role logic shares.

``RaftNode`` (consensus/raft.py) is assembled from mixins, one module per
concern: elections (consensus/election.py), the leader's replication and
commit (consensus/leader.py) and ReadIndex reads (consensus/reads.py). Each
mixin works on the fields declared here, which ``RaftNode.__init__`` sets;
the methods declared here and not implemented are provided by another
mixin or by ``RaftNode`` itself.
"""

from __future__ import annotations

from collections import deque

from ramraft.consensus.config import Config
from ramraft.consensus.log import RaftLog
from ramraft.consensus.progress import Progress
from ramraft.consensus.read_only import ReadOnly
from ramraft.consensus.types import (
    Message,
    NodeId,
    ReadState,
    Role,
    SnapshotMeta,
    SnapshotToInstall,
)


class NodeState:
    cfg: Config
    id: NodeId
    log: RaftLog
    # The newest snapshot the application holds: what a lagging follower is sent.
    latest_snapshot: SnapshotMeta
    # Persistent state (paper Figure 2). Invariant: vote is set at most once per term.
    term: int
    vote: NodeId
    role: Role
    leader: NodeId
    # 0, or the committed index the state machine could not apply.
    apply_halted_at: int
    # False while the application forbids this server to lead.
    may_lead: bool
    election_elapsed: int
    heartbeat_elapsed: int
    randomized_election_timeout: int
    # Votes received in the current (pre-)election: voter -> granted.
    votes: dict[NodeId, bool]
    # Leader only: every member's replication progress, self included.
    progress: dict[NodeId, Progress]
    lead_transferee: NodeId
    # Leader only: no new membership change until this index is committed.
    pending_conf_index: int
    # Leader only: bytes proposed in this term and not yet committed, and
    # (last index, bytes) of each proposal batch, to subtract as they commit.
    _uncommitted_bytes: int
    _uncommitted_sizes: deque[tuple[int, int]]
    _read_only: ReadOnly
    # Follower side of ReadIndex: reads not yet sent, and sent rounds
    # (round context -> (tick it was sent at, the reads in it)).
    _follower_reads: list[bytes]
    _follower_rounds: dict[bytes, tuple[int, list[bytes]]]
    _next_follower_round: int
    _ticks: int
    _pending_snapshot: SnapshotToInstall | None
    # Output collected for the next Ready.
    _msgs: list[Message]
    _read_states: list[ReadState]
    _dropped_reads: list[bytes]
    _broadcast_pending: bool

    def _send(self, m: Message) -> None:
        self._msgs.append(m)

    # ---- provided elsewhere -------------------------------------------------------------

    def _become_follower(self, term: int, leader: NodeId) -> None:
        raise NotImplementedError

    def _become_pre_candidate(self) -> None:
        raise NotImplementedError

    def _become_candidate(self) -> None:
        raise NotImplementedError

    def _become_leader(self) -> None:
        raise NotImplementedError

    def _promotable(self) -> bool:
        raise NotImplementedError

    def _campaign(self, *, pre_vote: bool, transfer: bool) -> None:
        raise NotImplementedError

    def _send_append(self, to: NodeId, send_if_empty: bool = True) -> bool:
        raise NotImplementedError

    def _broadcast_heartbeat(self, context: bytes) -> None:
        raise NotImplementedError

    def _send_heartbeat(self, peer: NodeId, context: bytes, index: int = 0) -> None:
        raise NotImplementedError

    def _confirm_follower_reads(self, leader: NodeId, ours: bytes, index: int) -> bool:
        raise NotImplementedError

    def _ack_read_round(self, context: bytes, voter: NodeId, served: bool = False) -> None:
        raise NotImplementedError

    def _refuse_read(self, m: Message) -> None:
        raise NotImplementedError

    def _drop_follower_reads(self) -> None:
        raise NotImplementedError

    def _drop_leader_reads(self) -> None:
        raise NotImplementedError

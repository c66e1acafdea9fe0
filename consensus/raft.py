"""The Raft algorithm as a pure state machine (sans-I/O, after etcd's raft).

``RaftNode`` takes inputs -- ``tick()``, ``step(message)``, ``propose()``,
``read_index()``, membership and leadership requests -- and changes its state.
Everything the outside world must do as a result is collected into a
``Ready`` (see consensus/types.py for the order in which the caller must
persist, send, apply, then ``advance()``). Nothing here performs I/O, reads a
clock, or uses global randomness: time is the number of ``tick()`` calls, and
the only randomness (election timeouts) comes from ``Config.rng``.

References in comments: "paper" is Ongaro & Ousterhout, "In Search of an
Understandable Consensus Algorithm" (2014); "thesis" is Ongaro, "Consensus:
Bridging Theory and Practice" (2014).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from itertools import repeat
from operator import attrgetter, le

from ramraft.consensus.base import NodeState
from ramraft.consensus.confchange import validate_conf_change
from ramraft.consensus.config import Config as Config  # re-exported: callers import it from here
from ramraft.consensus.election import ElectionMixin
from ramraft.consensus.leader import LeaderMixin
from ramraft.consensus.log import LogInvariantError, RaftLog
from ramraft.consensus.progress import Progress, ProgressState
from ramraft.consensus.read_only import ROUND_CONTEXT_BYTES, ReadOnly
from ramraft.consensus.reads import ReadsMixin
from ramraft.consensus.types import (
    NO_NODE,
    CompactionError,
    ConfChange,
    ConfChangeError,
    ConfChangeType,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Message,
    MsgType,
    NodeId,
    NotLeaderError,
    ProposalDroppedError,
    RaftError,
    ReadState,
    Ready,
    Role,
    SnapshotMeta,
    SnapshotToInstall,
    SoftState,
)

_index = attrgetter("index")
_term = attrgetter("term")


def malformed(m: Message, self_id: NodeId) -> str | None:
    """Why ``m`` cannot have come from a correct peer, or None. Checks only
    the message's own shape; whether it fits our log is the protocol's job."""
    if m.dst != self_id:
        return f"addressed to {m.dst!r}, not to us"
    if not m.src or m.src == self_id:
        return "no sender, or from ourselves"
    if m.term < 0 or m.index < 0 or m.log_term < 0 or m.commit < 0 or m.reject_hint < 0:
        return "negative term or index"
    if m.type == MsgType.APPEND:
        if m.log_term > m.term:
            return f"previous entry's term {m.log_term} is after the message's term {m.term}"
        entries = m.entries
        if entries:
            # Whole-column checks, looped in C: this runs for every entry received.
            indexes = list(map(_index, entries))
            if indexes != list(range(m.index + 1, m.index + 1 + len(entries))):
                return f"entry indexes {indexes[0]}..{indexes[-1]} do not follow {m.index}"
            terms = list(map(_term, entries))
            if not (
                m.log_term <= terms[0] and terms[-1] <= m.term and all(map(le, terms, terms[1:]))
            ):
                return "entry terms out of order"
    elif m.entries:
        return "entries on a message that carries none"
    if m.type == MsgType.SNAPSHOT:
        meta = m.snapshot
        if meta is None or meta.index <= 0 or meta.term > m.term or not meta.conf.voters:
            return "snapshot metadata missing or impossible"
    return None


class LeadershipTransferError(RaftError):
    """A leadership transfer that cannot start (unknown target, a learner...)."""


class RaftNode(ElectionMixin, LeaderMixin, ReadsMixin, NodeState):
    """One Raft server's consensus state. Not thread-safe: one owner calls it.

    Construct it from what storage recovered (``hard_state``, the newest
    ``snapshot`` and the ``entries`` after it). When storage holds nothing,
    ``bootstrap`` (the initial voters of a new cluster) is written as the first
    log entry, identical on every initial member; a server that will join an
    existing cluster later passes no ``bootstrap`` and waits for the leader.
    """

    def __init__(
        self,
        config: Config,
        *,
        hard_state: HardState | None = None,
        snapshot: SnapshotMeta | None = None,
        entries: Sequence[Entry] = (),
        bootstrap: ConfState | None = None,
    ) -> None:
        config.validate()
        hard_state = hard_state or HardState()
        self.cfg = config
        self.id = config.id
        fresh = snapshot is None and not entries and hard_state == HardState()
        if snapshot is None:
            snapshot = SnapshotMeta(0, 0, ConfState())
        self.log = RaftLog(snapshot, entries, hard_state.commit)
        if fresh and bootstrap is not None and bootstrap.voters:
            # Term 1, index 1, committed: every initial member writes exactly
            # this entry, so it is on all their disks once they persist it.
            change = ConfChange.bootstrap(bootstrap.voters)
            self.log.append([Entry(1, 1, change.encode(), EntryKind.CONF_CHANGE)])
            self.log.stabled = 0
            self.log.commit_to(1)
            hard_state = HardState(1, NO_NODE, 1)
        # The newest snapshot the application holds: what a lagging follower is sent.
        self.latest_snapshot = snapshot

        # Persistent state (paper Figure 2). Invariant: vote is only ever set
        # once per term.
        self.term = hard_state.term
        self.vote = hard_state.vote
        self._persisted = hard_state if not fresh else HardState()

        self.role = Role.FOLLOWER
        self.leader: NodeId = NO_NODE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = config.election_tick
        # Votes received in the current (pre-)election: voter -> granted.
        self.votes: dict[NodeId, bool] = {}
        # Leader only: every member's replication progress, self included.
        self.progress: dict[NodeId, Progress] = {}
        self.lead_transferee: NodeId = NO_NODE
        # Leader only: no new membership change until this index is committed.
        self.pending_conf_index = 0
        self._uncommitted_bytes = 0
        self._uncommitted_sizes = deque()
        # Read round ids start at a random 64-bit base for every incarnation:
        # an answer still in flight to a previous incarnation of this node
        # must never match a round of this one (it would release a read at
        # a stale index). Found by the simulator.
        self._read_only = ReadOnly(first_round_id=config.rng.getrandbits(62))
        # Follower side of ReadIndex: reads not yet sent, and sent rounds.
        self._follower_reads: list[bytes] = []
        # round context -> (tick it was sent at, the reads in it)
        self._follower_rounds: dict[bytes, tuple[int, list[bytes]]] = {}
        self._next_follower_round = config.rng.getrandbits(62)
        self._ticks = 0  # logical clock, only to expire unanswered follower reads
        self._pending_snapshot: SnapshotToInstall | None = None

        # Output collected for the next Ready.
        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._dropped_reads: list[bytes] = []
        self._broadcast_pending = False
        self._soft = SoftState(NO_NODE, Role.FOLLOWER)
        self._in_ready = False
        self.rejected_messages = 0
        self.last_rejection = ""
        # Invariant: 0, or the committed index the state machine could not
        # apply; then applied < halted_at for the life of this core.
        self.apply_halted_at = 0
        # False while the application says this server must not lead (its
        # state differs from the majority's); see set_may_lead.
        self.may_lead = True

        self._become_follower(self.term, NO_NODE)

    # ==== inputs ===========================================================================

    def tick(self) -> None:
        """One unit of logical time has passed."""
        self._ticks += 1
        if self._follower_rounds:
            self._expire_follower_reads()
        if self.role == Role.LEADER:
            self._tick_leader()
        else:
            self._tick_election()

    def propose(self, data: bytes) -> int:
        """Append a command to the leader's log; returns its index. The command
        is committed when an entry with this index *and the current term*
        comes out in ``Ready.committed_entries``; an entry of another term at
        that index means the proposal was lost (a new leader overwrote it)."""
        return self.propose_batch((data,))

    def propose_batch(self, commands: Sequence[bytes]) -> int:
        """Append many commands at once; returns the index of the first."""
        size = sum(map(len, commands))
        self._check_can_propose(size)
        first = self.log.last_index + 1
        entries = list(map(Entry, repeat(self.term), range(first, first + len(commands)), commands))
        self._append(entries, size)
        return first

    def propose_conf_change(self, change: ConfChange) -> int:
        """Propose a single-server membership change (thesis 4.1). It takes
        effect on each server as soon as the entry reaches its log; only one
        may be uncommitted at a time."""
        self._check_can_propose(0)
        if self.pending_conf_index > self.log.committed:
            raise ProposalDroppedError(
                f"membership change at index {self.pending_conf_index} is not committed yet"
            )
        conf = self.log.conf
        validate_conf_change(conf, change)
        if change.type == ConfChangeType.PROMOTE:
            lag = self.log.last_index - self.progress[change.node_id].match
            if lag > self.cfg.max_learner_lag:
                raise ConfChangeError(
                    f"learner {change.node_id} is {lag} entries behind the leader; promote it "
                    f"once it is within {self.cfg.max_learner_lag}"
                )
        index = self.log.last_index + 1
        data = change.encode()
        self._append([Entry(self.term, index, data, EntryKind.CONF_CHANGE)], len(data))
        self.pending_conf_index = index
        self._sync_progress_with_conf()
        return index

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read (thesis 6.4). When it is safe, a
        ``ReadState(context, index)`` comes out of a Ready: serve the read once
        the state machine has applied ``index``. If leadership is lost first,
        ``context`` comes out in ``Ready.dropped_reads`` instead."""
        if self.role == Role.LEADER:
            self._read_only.add(self.id, context)
        elif self.leader != NO_NODE:
            self._follower_reads.append(context)
        else:
            raise NotLeaderError(NO_NODE, "no leader known to confirm a read")

    def transfer_leadership(self, target: NodeId) -> None:
        """Hand leadership to ``target`` (thesis 3.10): stop taking proposals,
        bring the target's log up to date, then tell it to campaign at once.
        Aborted if it has not happened within an election timeout."""
        if self.role != Role.LEADER:
            raise NotLeaderError(self.leader)
        if target == self.id:
            return
        if target not in self.log.conf.voters:
            raise LeadershipTransferError(f"{target} is not a voter and cannot lead")
        if self.lead_transferee == target:
            return
        self.lead_transferee = target
        self.election_elapsed = 0  # the transfer has one election timeout to finish
        if self.progress[target].match == self.log.last_index:
            self._send(Message(MsgType.TIMEOUT_NOW, self.id, target, self.term))
        else:
            self._send_append(target)

    def step(self, m: Message) -> None:
        """Take in one message from a peer. A message that no correct peer
        could have sent (see ``malformed``) is dropped and counted in
        ``rejected_messages``: a buggy or hostile peer cannot crash the node
        or make it trust impossible data."""
        problem = malformed(m, self.id)
        if problem is not None:
            self.rejected_messages += 1
            self.last_rejection = f"{m.type.name} from {m.src or '?'}: {problem}"
            return
        if m.term > self.term:
            if m.type in (MsgType.VOTE, MsgType.PRE_VOTE) and self._in_lease(m):
                # Thesis 4.2.3: while we hear from a leader, a candidate is
                # disrupting a working cluster (often a removed server): ignore.
                return
            if m.type == MsgType.PRE_VOTE or (m.type == MsgType.PRE_VOTE_RESP and not m.reject):
                # A pre-vote is about a future term; it must not move ours.
                pass
            elif m.type in (MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT):
                self._become_follower(m.term, m.src)
            else:
                self._become_follower(m.term, NO_NODE)
        elif m.term < self.term:
            self._answer_stale(m)
            return

        if m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
            self._handle_vote_request(m)
        elif self.role == Role.LEADER:
            self._step_leader(m)
        elif self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    def report_unreachable(self, peer: NodeId) -> None:
        """The transport could not deliver to ``peer``: stop pipelining to it."""
        pr = self.progress.get(peer)
        if self.role == Role.LEADER and pr is not None and pr.state == ProgressState.REPLICATE:
            pr.become_probe()

    def report_snapshot(self, peer: NodeId, ok: bool) -> None:
        """The transport finished streaming a snapshot to ``peer``."""
        pr = self.progress.get(peer)
        if self.role != Role.LEADER or pr is None or pr.state != ProgressState.SNAPSHOT:
            return
        if not ok:
            pr.pending_snapshot = 0
        pr.become_probe()
        # Wait for the follower's answer (or a heartbeat) before probing again.
        pr.probe_sent = True

    def snapshot_meta(self, index: int) -> SnapshotMeta:
        """The metadata a snapshot of the state machine at ``index`` (already
        applied) must carry."""
        if not self.log.offset <= index <= self.log.applied:
            raise CompactionError(
                f"can only snapshot an applied index in [{self.log.offset}, {self.log.applied}], "
                f"not {index}"
            )
        term = self.log.term(index)
        assert term is not None
        return SnapshotMeta(index, term, self.log.conf_at(index))

    def compact(self, snapshot: SnapshotMeta, retain_entries: int = 0) -> None:
        """The application has durably stored ``snapshot`` (from
        ``snapshot_meta``): remember it as the one to send to lagging followers
        and drop the log up to it, keeping ``retain_entries`` entries before it
        so slightly lagging followers can still be caught up from the log."""
        if snapshot.index < self.latest_snapshot.index:
            raise CompactionError(
                f"snapshot at {snapshot.index} is older than the one at "
                f"{self.latest_snapshot.index}"
            )
        if snapshot.index > self.log.applied:
            raise CompactionError(f"snapshot at {snapshot.index} is beyond applied")
        self.latest_snapshot = snapshot
        self.log.compact(max(self.log.offset, snapshot.index - retain_entries))

    # ==== output ===========================================================================

    def has_ready(self) -> bool:
        return bool(
            self._msgs
            or self._broadcast_pending
            or (self.role == Role.LEADER and self._read_round_can_start())
            or self._follower_reads
            or self._read_states
            or self._dropped_reads
            or self._pending_snapshot is not None
            or self.log.stabled < self.log.last_index
            or self.log.applied < self._apply_limit()
            or self._hard_state() != self._persisted
            or self._soft_state() != self._soft
        )

    def ready(self) -> Ready:
        """Collect what must be persisted, sent and applied. See ``Ready`` for
        the order; call ``advance()`` when done, before any other input."""
        if self._in_ready:
            raise RaftError("ready() called again before advance()")
        self._flush()
        rd = Ready()
        hard_state = self._hard_state()
        if hard_state != self._persisted:
            rd.hard_state = hard_state
        rd.entries = self.log.unstable_entries()
        rd.snapshot = self._pending_snapshot
        rd.messages, self._msgs = self._msgs, []
        rd.committed_entries = self.log.slice(self.log.applied + 1, self._apply_limit() + 1)
        rd.read_states, self._read_states = self._read_states, []
        rd.dropped_reads, self._dropped_reads = self._dropped_reads, []
        soft = self._soft_state()
        if soft != self._soft:
            rd.soft_state = soft
            self._soft = soft
        self._in_ready = True
        return rd

    def advance(self, rd: Ready, *, applied_through: int | None = None) -> None:
        """Everything in ``rd`` has been persisted, sent and applied -- or,
        with ``applied_through``, applied only up to that index (the state
        machine stopped; see ``halt_apply``)."""
        self._in_ready = False
        if rd.hard_state is not None:
            self._persisted = rd.hard_state
        if rd.snapshot is not None and rd.snapshot is self._pending_snapshot:
            self._pending_snapshot = None
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term)
        if applied_through is not None:
            self.log.applied_to(applied_through)
        elif rd.committed_entries:
            self.log.applied_to(rd.committed_entries[-1].index)

    def halt_apply(self, index: int) -> None:
        """The state machine cannot apply the committed entry at ``index``
        (it was written by newer code). Hand out no committed entry from
        ``index`` on; never campaign or take a leadership transfer (a leader
        must apply and serve what it commits); a leader steps down at once.
        The server still persists, acknowledges and votes, so the others
        keep their quorum. Lasts for the life of this core: a restart with
        code that can apply the entry resumes. Call it after ``advance``."""
        if not self.log.applied < index <= self.log.committed:
            raise RaftError(
                f"halt_apply({index}) outside ({self.log.applied}, {self.log.committed}]"
            )
        if self.apply_halted_at:
            return
        self.apply_halted_at = index
        if self.role != Role.FOLLOWER:
            self._become_follower(self.term, NO_NODE)

    def set_may_lead(self, may_lead: bool) -> None:
        """Whether this server may lead: while False it never campaigns nor
        takes a leadership transfer, and a leader steps down at once (the
        runtime sets it while the divergence alarm names this server, whose
        state the majority does not share). It still votes and replicates."""
        self.may_lead = may_lead
        if not may_lead and self.role != Role.FOLLOWER:
            self._become_follower(self.term, NO_NODE)

    def _apply_limit(self) -> int:
        """The last committed index the state machine may be handed."""
        if self.apply_halted_at:
            return min(self.log.committed, self.apply_halted_at - 1)
        return self.log.committed

    # ==== status ===========================================================================

    @property
    def commit_index(self) -> int:
        return self.log.committed

    @property
    def applied_index(self) -> int:
        return self.log.applied

    @property
    def last_index(self) -> int:
        return self.log.last_index

    @property
    def conf(self) -> ConfState:
        return self.log.conf

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def _soft_state(self) -> SoftState:
        return SoftState(self.leader, self.role)

    def check_invariants(self) -> None:
        """Assert the rules that must hold between any two inputs."""
        self.log.check_invariants()
        assert self.term >= self._persisted.term, "term went backwards"
        if self.role == Role.LEADER:
            assert self.leader == self.id, "a leader must name itself leader"
            assert self.vote == self.id, "a leader voted for itself in its term"
            own = self.progress.get(self.id)
            if own is not None:
                assert own.match == self.log.last_index, "leader's own match lags its log"
            for peer, pr in self.progress.items():
                assert pr.match < pr.next, f"progress of {peer}: match {pr.match} >= next {pr.next}"
        else:
            assert not self.progress, "only a leader tracks progress"
        conf = self.log.conf
        assert not (conf.voters & conf.learners), "voter and learner at once"
        if self.apply_halted_at:
            assert self.log.applied < self.apply_halted_at, "applied past the halt"
            assert self.role == Role.FOLLOWER, "a halted server only follows"

    # ==== roles ============================================================================

    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = NO_NODE
        self.leader = NO_NODE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.cfg.election_tick + self.cfg.rng.randrange(
            self.cfg.election_tick
        )
        self.votes = {}
        self.lead_transferee = NO_NODE
        self._drop_leader_reads()
        self.progress = {}

    def _become_follower(self, term: int, leader: NodeId) -> None:
        previous_leader = self.leader
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader = leader
        if leader != previous_leader:
            self._drop_follower_reads()

    def _become_pre_candidate(self) -> None:
        # Thesis 9.6: a pre-election changes neither term nor vote.
        self._drop_leader_reads()
        self.progress = {}
        self._drop_follower_reads()
        self.role = Role.PRE_CANDIDATE
        self.leader = NO_NODE
        self.votes = {}
        self.election_elapsed = 0
        self.randomized_election_timeout = self.cfg.election_tick + self.cfg.rng.randrange(
            self.cfg.election_tick
        )

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self._drop_follower_reads()
        self.role = Role.CANDIDATE
        self.vote = self.id

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader = self.id
        self.vote = self.id
        self._uncommitted_bytes = 0
        self._uncommitted_sizes = deque()
        self._sync_progress_with_conf()
        for peer, pr in self.progress.items():
            if peer == self.id:
                pr.match = self.log.last_index
                pr.become_replicate()
        # No membership change until everything before this term is committed.
        self.pending_conf_index = self.log.last_index
        # Paper 5.4.2 / thesis 6.4: commit an entry of our own term at once,
        # which also commits everything before it and lets reads be served.
        self._append([Entry(self.term, self.log.last_index + 1)], 0)

    # ==== followers and candidates =========================================================

    def _step_candidate(self, m: Message) -> None:
        if m.type in (MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT):
            # A leader of this term exists (paper 5.2): follow it.
            self._become_follower(self.term, m.src)
            self._step_follower(m)
        elif (m.type == MsgType.VOTE_RESP and self.role == Role.CANDIDATE) or (
            m.type == MsgType.PRE_VOTE_RESP and self.role == Role.PRE_CANDIDATE
        ):
            if m.src in self.log.conf.voters:
                self.votes.setdefault(m.src, not m.reject)
                self._count_votes()
        elif m.type == MsgType.READ_INDEX:
            self._refuse_read(m)

    def _step_follower(self, m: Message) -> None:
        if m.type in (MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT):
            self.election_elapsed = 0
            if self.leader != m.src:
                self._drop_follower_reads()
            self.leader = m.src
            if m.type == MsgType.APPEND:
                self._handle_append(m)
            elif m.type == MsgType.HEARTBEAT:
                self._handle_heartbeat(m)
            else:
                self._handle_snapshot(m)
        elif m.type == MsgType.TIMEOUT_NOW:
            if self._promotable():
                self._campaign(pre_vote=False, transfer=True)
        elif m.type == MsgType.READ_INDEX_RESP:
            sent = self._follower_rounds.pop(m.context, None)
            if sent is None:
                return
            reads = sent[1]
            if m.reject:
                self._dropped_reads.extend(reads)
            else:
                self._read_states.extend(ReadState(ctx, m.index) for ctx in reads)
        elif m.type == MsgType.READ_INDEX:
            self._refuse_read(m)

    def _handle_append(self, m: Message) -> None:
        """Paper Figure 2, AppendEntries receiver."""
        if m.index < self.log.committed:
            # Everything up to our commit index already matches the leader.
            self._send(
                Message(MsgType.APPEND_RESP, self.id, m.src, self.term, index=self.log.committed)
            )
            return
        try:
            last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        except LogInvariantError as e:
            # Only a buggy or lying peer rewrites committed entries: refuse it,
            # keep our log, and let the owner see the count (and the reason).
            self.rejected_messages += 1
            self.last_rejection = f"APPEND from {m.src}: {e}"
            return
        if last_new is not None:
            self._send(Message(MsgType.APPEND_RESP, self.id, m.src, self.term, index=last_new))
            return
        # Consistency check failed. Tell the leader where our logs may agree,
        # skipping whole terms at once (fast back-off).
        hint_index, hint_term = self.log.find_conflict_by_term(
            min(m.index, self.log.last_index), m.log_term
        )
        self._send(
            Message(
                MsgType.APPEND_RESP,
                self.id,
                m.src,
                self.term,
                index=m.index,
                reject=True,
                reject_hint=hint_index,
                log_term=hint_term,
            )
        )

    def _handle_heartbeat(self, m: Message) -> None:
        # The leader sends min(our match, its commit), so our log agrees with
        # its log up to there; anything beyond our log would be a bug.
        if m.commit <= self.log.last_index:
            self.log.commit_to(m.commit)
        context, served = m.context, 0
        if len(context) > ROUND_CONTEXT_BYTES:
            # A read round that also names our own read requests (reads.py);
            # the round's index in the answer tells the leader we served
            # them, so it sends no READ_INDEX_RESP for them.
            context, ours = context[:ROUND_CONTEXT_BYTES], context[ROUND_CONTEXT_BYTES:]
            if self._confirm_follower_reads(m.src, ours, m.index):
                served = m.index
        self._send(
            Message(
                MsgType.HEARTBEAT_RESP, self.id, m.src, self.term, context=context, index=served
            )
        )

    def _handle_snapshot(self, m: Message) -> None:
        """Paper 7 / Figure 13, InstallSnapshot receiver."""
        meta = m.snapshot
        if meta is None:
            return
        if meta.index <= self.log.committed:
            self._send(
                Message(MsgType.APPEND_RESP, self.id, m.src, self.term, index=self.log.committed)
            )
            return
        if self.log.match_term(meta.index, meta.term):
            # We hold the snapshot's last entry: our log up to it is the
            # leader's, so no need to install anything.
            self.log.commit_to(meta.index)
        elif self.apply_halted_at:
            # A halted state machine takes no snapshot: the snapshot holds
            # state made by code this server lacks (see halt_apply). It
            # stays where it is until restarted with that code.
            pass
        else:
            self.log.restore(meta)
            self.latest_snapshot = meta
            self._pending_snapshot = SnapshotToInstall(meta, m.snapshot_data)
        self._send(
            Message(MsgType.APPEND_RESP, self.id, m.src, self.term, index=self.log.committed)
        )

    # ==== plumbing =========================================================================

    def _flush(self) -> None:
        """Turn what accumulated since the last Ready into messages: one append
        per follower for all new proposals, one heartbeat round for all new
        reads."""
        if self.role != Role.LEADER:
            self._broadcast_pending = False
            self._send_follower_reads()
            return
        if self._broadcast_pending:
            self._broadcast_pending = False
            self._maybe_commit()
            if self.leader != self.id:
                return  # the commit removed us from the configuration
            self._broadcast_append()
        self._start_read_round()

"""The leader's half of log replication (paper 5.3): probing and pipelined
AppendEntries with an in-flight window, fast back-off, snapshots for
followers behind the compacted log (paper 7), the commit rule (paper 5.4.2),
heartbeats and CheckQuorum (thesis 6.2), and membership progress."""

from __future__ import annotations

from ramraft.consensus import quorum
from ramraft.consensus.base import NodeState
from ramraft.consensus.progress import Progress, ProgressState
from ramraft.consensus.types import (
    NO_NODE,
    Entry,
    Message,
    MsgType,
    NodeId,
    NotLeaderError,
    ProposalDroppedError,
    Role,
)


class LeaderMixin(NodeState):
    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_tick:
            self.election_elapsed = 0
            if self.cfg.check_quorum and not self._quorum_active():
                # Thesis 6.2: we cannot reach a majority; another leader may
                # already exist. Step down so clients look elsewhere.
                self._become_follower(self.term, NO_NODE)
                return
            if self.lead_transferee != NO_NODE:
                self.lead_transferee = NO_NODE  # the transfer timed out
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick:
            self.heartbeat_elapsed = 0
            self._broadcast_heartbeat(self._read_only.last_round_context())
        else:
            self._tell_commit()

    def _tell_commit(self) -> None:
        """Tell followers a commit index they have not heard yet.

        A commit is not broadcast the moment it happens: the index rides on
        the next append (the next proposal, usually well within a tick) or,
        failing that, on an empty append here, one tick later. Broadcasting
        at once would double the messages per write at low load, each one a
        save and an acknowledgement on every follower; the price is that a
        follower applies up to one tick later, which costs no client
        anything (leader reads and writes do not wait for it, and a
        follower's ReadIndex round carries the commit index itself)."""
        committed = self.log.committed
        for peer, pr in self.progress.items():
            if peer != self.id and pr.sent_commit < min(pr.match, committed):
                self._send_append(peer)

    def _quorum_active(self) -> bool:
        active = {peer for peer, pr in self.progress.items() if pr.recent_active}
        active.add(self.id)
        for pr in self.progress.values():
            pr.recent_active = False
        return quorum.has_quorum(self.log.conf.voters, active)

    def _check_can_propose(self, size: int) -> None:
        if self.role != Role.LEADER:
            raise NotLeaderError(self.leader)
        if self.lead_transferee != NO_NODE:
            raise ProposalDroppedError(f"leadership is being transferred to {self.lead_transferee}")
        if self._uncommitted_bytes + size > self.cfg.max_uncommitted_bytes and size:
            raise ProposalDroppedError("too many uncommitted bytes; retry when commits catch up")

    def _append(self, entries: list[Entry], size: int) -> None:
        """Append our own entries (``size`` bytes of data) to the log."""
        self.log.append(entries)
        if size:
            self._uncommitted_bytes += size
            self._uncommitted_sizes.append((self.log.last_index, size))
        own = self.progress.get(self.id)
        if own is not None:
            own.maybe_update(self.log.last_index)
        # Appends to followers are built once per Ready, so proposals that
        # arrive in one turn travel together (batching).
        self._broadcast_pending = True

    def _sync_progress_with_conf(self) -> None:
        """Track exactly the members of the configuration in force."""
        conf = self.log.conf
        for member in sorted(conf.members):  # sorted: runs must not depend on hash seeds
            pr = self.progress.get(member)
            if pr is None:
                pr = Progress(self.log.last_index + 1, self.cfg.max_inflight_msgs, False)
                pr.recent_active = True  # give a new member a CheckQuorum round
                self.progress[member] = pr
            pr.is_learner = member in conf.learners
        for member in list(self.progress):
            if member not in conf.members and member != self.id:
                del self.progress[member]
        if self.lead_transferee not in conf.voters:
            self.lead_transferee = NO_NODE

    def _step_leader(self, m: Message) -> None:
        if m.type == MsgType.READ_INDEX:
            self._read_only.add(m.src, m.context)
            return
        pr = self.progress.get(m.src)
        if pr is None:
            return
        if m.type == MsgType.APPEND_RESP:
            pr.recent_active = True
            if m.reject:
                self._handle_append_reject(m, pr)
            else:
                self._handle_append_success(m, pr)
        elif m.type == MsgType.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.probe_sent = False
            if pr.state == ProgressState.REPLICATE and pr.inflights.full():
                # An append may have been lost: let one more through, whose
                # reply (or rejection) gets the pipeline moving again.
                pr.inflights.free_first()
            if pr.match < self.log.last_index:
                self._send_append(m.src)
            if m.context and not pr.is_learner:
                self._ack_read_round(m.context, m.src, served=m.index > 0)

    def _handle_append_reject(self, m: Message, pr: Progress) -> None:
        hint = m.reject_hint
        if m.log_term > 0:
            # Skip every entry of ours in a term the follower cannot match.
            hint, _ = self.log.find_conflict_by_term(hint, m.log_term)
        if pr.maybe_decrease_to(m.index, hint):
            if pr.state == ProgressState.REPLICATE:
                pr.become_probe()
            self._send_append(m.src)

    def _handle_append_success(self, m: Message, pr: Progress) -> None:
        was_paused = pr.is_paused()
        if not pr.maybe_update(m.index):
            return
        if pr.state == ProgressState.PROBE or (
            pr.state == ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot
        ):
            pr.become_replicate()
        elif pr.state == ProgressState.REPLICATE:
            pr.inflights.free_to(m.index)
        # Followers hear of a commit on the next append (_tell_commit).
        if self._maybe_commit() and self.role != Role.LEADER:
            return  # the commit removed us from the configuration
        if was_paused:
            self._send_append(m.src)
        # Fill the pipeline window with whatever the follower still lacks.
        while self._send_append(m.src, send_if_empty=False):
            pass
        if m.src == self.lead_transferee and pr.match == self.log.last_index:
            self._send(Message(MsgType.TIMEOUT_NOW, self.id, m.src, self.term))

    def _maybe_commit(self) -> bool:
        match = {peer: pr.match for peer, pr in self.progress.items()}
        index = quorum.committed_index(self.log.conf.voters, match)
        if index <= self.log.committed or not self._may_commit_by_counting(index):
            return False
        before = self.log.committed
        self.log.commit_to(index)
        self._on_commit(before)
        return True

    def _may_commit_by_counting(self, index: int) -> bool:
        """Paper 5.4.2 (the Figure 8 case): an entry from an earlier term is
        never committed by counting its replicas; only an entry of the
        current term is, and that commits everything before it."""
        return self.log.term(index) == self.term

    def _on_commit(self, before: int) -> None:
        committed = self.log.committed
        sizes = self._uncommitted_sizes
        while sizes and sizes[0][0] <= committed:
            self._uncommitted_bytes -= sizes.popleft()[1]
        conf = self.log.conf
        if self.id not in conf.voters and committed >= self.log.last_conf_index:
            # Thesis 4.2.2: a leader removed from the configuration leads until
            # the change commits, then steps down.
            self._become_follower(self.term, NO_NODE)

    def _send_append(self, to: NodeId, send_if_empty: bool = True) -> bool:
        """Send ``to`` the entries it lacks (or a snapshot when they are
        compacted away). False if nothing was sent."""
        pr = self.progress[to]
        if pr.is_paused():
            return False
        prev_index = pr.next - 1
        prev_term = self.log.term(prev_index)
        if prev_term is None and prev_index <= self.log.last_index:
            return self._send_snapshot(to, pr)
        if prev_term is None:
            # next is past our log (stale optimism): back off to what we have.
            pr.become_probe()
            prev_index = pr.next - 1
            prev_term = self.log.term(prev_index)
            if prev_term is None:
                return self._send_snapshot(to, pr)
        entries = self.log.slice(pr.next, self.log.last_index + 1, self.cfg.max_msg_bytes)
        if not entries and not send_if_empty:
            return False
        if pr.state == ProgressState.REPLICATE and entries and pr.inflights.full():
            return False
        # The follower commits no further than the last entry this carries.
        last_sent = entries[-1].index if entries else prev_index
        pr.sent_commit = max(pr.sent_commit, min(self.log.committed, last_sent))
        self._send(
            Message(
                MsgType.APPEND,
                self.id,
                to,
                self.term,
                log_term=prev_term,
                index=prev_index,
                entries=tuple(entries),
                commit=self.log.committed,
            )
        )
        pr.sent_entries(entries[-1].index if entries else prev_index, len(entries))
        return True

    def _send_snapshot(self, to: NodeId, pr: Progress) -> bool:
        """Paper 7: the follower needs entries we compacted; send the snapshot
        (the transport streams its data in chunks)."""
        if not pr.recent_active:
            # Do not start a costly snapshot to a peer we have not heard from.
            return False
        snapshot = self.latest_snapshot
        self._send(Message(MsgType.SNAPSHOT, self.id, to, self.term, snapshot=snapshot))
        pr.become_snapshot(snapshot.index)
        return True

    def _broadcast_append(self) -> None:
        for peer in self.progress:
            if peer != self.id and self._send_append(peer):
                # Fill the pipeline window when the size cap splits the batch.
                while self._send_append(peer, send_if_empty=False):
                    pass

    def _broadcast_heartbeat(self, context: bytes) -> None:
        for peer in self.progress:
            if peer != self.id:
                self._send_heartbeat(peer, context)

    def _send_heartbeat(self, peer: NodeId, context: bytes, index: int = 0) -> None:
        """``index``: a read round's index, with ``context`` naming the round
        and the peer's own read requests it confirms (reads.py)."""
        pr = self.progress.get(peer)
        if pr is None:
            return
        commit = min(pr.match, self.log.committed)
        pr.sent_commit = max(pr.sent_commit, commit)
        self._send(
            Message(
                MsgType.HEARTBEAT,
                self.id,
                peer,
                self.term,
                commit=commit,
                context=context,
                index=index,
            )
        )

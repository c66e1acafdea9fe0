"""Leader election: randomized timeouts (paper 5.2), the election
restriction (paper 5.4.1), PreVote (thesis 9.6) and the leader-lease vote
check (thesis 4.2.3)."""

from __future__ import annotations

from ramraft.consensus import quorum
from ramraft.consensus.base import NodeState
from ramraft.consensus.types import NO_NODE, Message, MsgType, Role

# Marks a vote request that a leadership transfer started (thesis 3.10): voters
# grant it even while they still hear from the current leader.
CAMPAIGN_TRANSFER = b"transfer"


class ElectionMixin(NodeState):
    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self._promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self._campaign(pre_vote=self.cfg.pre_vote, transfer=False)

    def _campaign(self, *, pre_vote: bool, transfer: bool) -> None:
        if pre_vote:
            self._become_pre_candidate()
            vote_term = self.term + 1
            vote_type = MsgType.PRE_VOTE
        else:
            self._become_candidate()
            vote_term = self.term
            vote_type = MsgType.VOTE
        self.votes[self.id] = True
        if self._count_votes():
            return
        context = CAMPAIGN_TRANSFER if transfer else b""
        for voter in sorted(self.log.conf.voters):
            if voter != self.id:
                self._send(
                    Message(
                        vote_type,
                        self.id,
                        voter,
                        vote_term,
                        log_term=self.log.last_term,
                        index=self.log.last_index,
                        context=context,
                    )
                )

    def _count_votes(self) -> bool:
        """Act on the election's outcome if it is decided; True if it is."""
        result = quorum.tally(self.log.conf.voters, self.votes)
        if result == quorum.VoteResult.WON:
            if self.role == Role.PRE_CANDIDATE:
                self._campaign(pre_vote=False, transfer=False)
            else:
                self._become_leader()
            return True
        if result == quorum.VoteResult.LOST:
            self._become_follower(self.term, NO_NODE)
            return True
        return False

    def _handle_vote_request(self, m: Message) -> None:
        response = MsgType.VOTE_RESP if m.type == MsgType.VOTE else MsgType.PRE_VOTE_RESP
        can_vote = (
            self.vote == m.src
            or (self.vote == NO_NODE and self.leader == NO_NODE)
            or (m.type == MsgType.PRE_VOTE and m.term > self.term)
        )
        if can_vote and self._log_ok_for_vote(m):
            # A granted pre-vote answers in the candidate's future term, so
            # the pre-candidate does not take it for a stale message.
            self._send(Message(response, self.id, m.src, m.term))
            if m.type == MsgType.VOTE:
                self.election_elapsed = 0
                self.vote = m.src
        else:
            self._send(Message(response, self.id, m.src, self.term, reject=True))

    def _log_ok_for_vote(self, m: Message) -> bool:
        """Paper 5.4.1: grant only to a candidate whose log is at least as up to
        date as ours, so a leader always holds every committed entry."""
        return self.log.is_up_to_date(m.index, m.log_term)

    def _answer_stale(self, m: Message) -> None:
        """A message from an older term. A stale leader's append or heartbeat
        is answered so it learns the new term and steps down (with PreVote or
        CheckQuorum on, its followers would otherwise never tell it); a
        pre-vote is refused so the pre-candidate stops waiting."""
        if m.type in (MsgType.APPEND, MsgType.HEARTBEAT) and (
            self.cfg.check_quorum or self.cfg.pre_vote
        ):
            self._send(Message(MsgType.APPEND_RESP, self.id, m.src, self.term))
        elif m.type == MsgType.PRE_VOTE:
            self._send(Message(MsgType.PRE_VOTE_RESP, self.id, m.src, self.term, reject=True))
        elif m.type == MsgType.READ_INDEX:
            self._send(
                Message(
                    MsgType.READ_INDEX_RESP,
                    self.id,
                    m.src,
                    self.term,
                    context=m.context,
                    reject=True,
                )
            )

    def _in_lease(self, m: Message) -> bool:
        return (
            self.cfg.check_quorum
            and self.leader != NO_NODE
            and self.election_elapsed < self.cfg.election_tick
            and m.context != CAMPAIGN_TRANSFER
        )

    def _promotable(self) -> bool:
        """May this server start an election? A voter may. Thesis 4.2.2: so
        may a server that its newest configuration removes while that entry
        is not known to be committed -- the cluster may still need it to
        elect anyone (its own vote does not count, ``_count_votes`` tallies
        the newest configuration's voters only). Without this, two servers
        that each hold an uncommitted entry removing themselves, and a third
        with too short a log to win, wait for each other forever.

        Never while the state machine is halted (``halt_apply``) or the
        application forbids it (``set_may_lead``)."""
        if self._pending_snapshot is not None or self.apply_halted_at or not self.may_lead:
            return False
        log = self.log
        if self.id in log.conf.voters:
            return True
        return log.last_conf_index > log.committed and self.id in log.conf_at(log.committed).voters

"""Linearizable reads by ReadIndex (thesis 6.4), on the leader and, by
asking the leader, on followers. The bookkeeping of waiting reads and
rounds is in consensus/read_only.py."""

from __future__ import annotations

from ramraft.consensus import quorum
from ramraft.consensus.base import NodeState
from ramraft.consensus.read_only import ROUND_CONTEXT_BYTES, ReadRound, round_context
from ramraft.consensus.types import NO_NODE, Message, MsgType, NodeId, ReadState, Role


class ReadsMixin(NodeState):
    def _committed_in_term(self) -> bool:
        return self.log.term(self.log.committed) == self.term

    def _read_round_can_start(self) -> bool:
        """Queued reads start a round once the leader has committed in its
        term (before that its commit index may miss earlier leaders' writes)
        and no round is waiting for its quorum: the reads that arrive while a
        round is out wait for the next one, which then confirms them all.
        One round at a time costs a read at most one more round trip, and
        saves a heartbeat to every follower (and its answer) per loop turn,
        which is what bounds linearizable reads: the leader's CPU."""
        return bool(
            self._read_only.queued and not self._read_only.rounds and self._committed_in_term()
        )

    def _start_read_round(self) -> None:
        if not self._read_round_can_start():
            return
        context = self._read_only.start_round(self.log.committed, self.id)
        assert context is not None
        if quorum.has_quorum(self.log.conf.voters, {self.id}):
            self._release_reads(context)  # a single voter confirms itself
        elif not self._confirmed_by_askers(context, self._read_only.rounds[self._read_only.newest]):
            self._heartbeat_round(context)

    def _confirmed_by_askers(self, context: bytes, read_round: ReadRound) -> bool:
        """Send the round's heartbeats to the followers whose own reads are
        in it, if any of them makes a quorum with the leader (three voters),
        each heartbeat carrying the round's index and the ids of that
        follower's read requests the round holds: such a follower serves
        those reads as soon as it takes the heartbeat in this term, without
        the leader's READ_INDEX_RESP (two hops sooner;
        ``_confirm_follower_reads`` says why that is safe), and its answer
        completes the round and, when it says it served them, spares the
        leader the READ_INDEX_RESP. Returns whether it sent them."""
        theirs: dict[NodeId, list[bytes]] = {}
        for request in read_round.requests:
            if request.requester != self.id:
                theirs.setdefault(request.requester, []).append(request.context)
        voters = self.log.conf.voters
        sent = False
        for peer in sorted(theirs):
            if quorum.has_quorum(voters, {self.id, peer}):
                self._send_heartbeat(peer, context + b"".join(theirs[peer]), read_round.index)
                sent = True
        return sent

    def _confirm_follower_reads(self, leader: NodeId, ours: bytes, index: int) -> bool:
        """A heartbeat of ``leader``'s read round at ``index``, taken in the
        term it was sent in, confirms the reads of this follower's read
        requests named in ``ours`` (their ids, ROUND_CONTEXT_BYTES each), if
        the leader and this follower make a quorum of the voters: those
        requests reached the leader before it chose ``index`` (the round
        holds them), so every read in them arrived here before that; the
        leader was leading when it sent the heartbeat, after choosing it,
        and this follower still follows it now, so neither had voted for a
        later term by then, and with three voters (single-server membership
        changes keep that true of the configurations either side of a
        change) no later leader can have been elected before ``index`` was
        chosen. So ``index`` covers every write acknowledged before these
        reads arrived (thesis 6.4, with this follower as the round's
        quorum). Only the requests named: a heartbeat can come late, and
        after a restart this follower's request ids start elsewhere.
        Returns whether it served them (those it still had); if not, the
        leader's READ_INDEX_RESP serves them."""
        if not quorum.has_quorum(self.log.conf.voters, {leader, self.id}):
            return False
        size = ROUND_CONTEXT_BYTES
        for at in range(0, len(ours) - size + 1, size):
            sent = self._follower_rounds.pop(ours[at : at + size], None)
            if sent is not None:
                self._read_states.extend(ReadState(ctx, index) for ctx in sent[1])
        return True

    def _heartbeat_round(self, context: bytes) -> None:
        """A round's heartbeats go to the voters whose answers completed the
        last round, while they and the leader still make a quorum; to every
        peer otherwise (the first round of a term, a membership change). The
        others hear of the round at the next periodic heartbeat, which
        carries the newest round to every peer, so a round those voters do
        not answer (one of them paused or gone) waits at most heartbeat_tick
        longer, and the voters that answer it are the next rounds' choice.
        Safety is the quorum's, not the recipients': a round is confirmed
        only by a majority's answers to heartbeats sent after its reads
        arrived. In three nodes this halves a round's messages (one out,
        one in, instead of two of each), and a busy leader's rounds are what
        linearizable reads cost more than serializable ones."""
        fast, voters = self._read_only.fast, self.log.conf.voters
        if fast and fast <= voters and quorum.has_quorum(voters, fast | {self.id}):
            for peer in sorted(fast):
                self._send_heartbeat(peer, context)
        else:
            self._broadcast_heartbeat(context)

    def _ack_read_round(self, context: bytes, voter: NodeId, served: bool = False) -> None:
        """``served``: the voter served its own requests in this round from
        the round's heartbeat (``_confirm_follower_reads``)."""
        read_round = self._read_only.ack(context, voter)
        if read_round is None:
            return
        if served:
            read_round.served.add(voter)
        if quorum.has_quorum(self.log.conf.voters, read_round.acks):
            self._read_only.fast = frozenset(read_round.acks - {self.id})
            self._release_reads(context)

    def _release_reads(self, context: bytes) -> None:
        for read_round in self._read_only.release_through(context):
            self._serve_round(read_round)

    def _serve_round(self, read_round: ReadRound) -> None:
        for request in read_round.requests:
            if request.requester == self.id:
                self._read_states.append(ReadState(request.context, read_round.index))
            elif request.requester not in read_round.served:
                self._send(
                    Message(
                        MsgType.READ_INDEX_RESP,
                        self.id,
                        request.requester,
                        self.term,
                        index=read_round.index,
                        context=request.context,
                    )
                )

    def _refuse_read(self, m: Message) -> None:
        self._send(
            Message(
                MsgType.READ_INDEX_RESP, self.id, m.src, self.term, context=m.context, reject=True
            )
        )

    def _drop_leader_reads(self) -> None:
        for request in self._read_only.drain():
            if request.requester == self.id:
                self._dropped_reads.append(request.context)
            else:
                self._send(
                    Message(
                        MsgType.READ_INDEX_RESP,
                        self.id,
                        request.requester,
                        self.term,
                        context=request.context,
                        reject=True,
                    )
                )

    def _drop_follower_reads(self) -> None:
        self._dropped_reads.extend(self._follower_reads)
        self._follower_reads = []
        for _, reads in self._follower_rounds.values():
            self._dropped_reads.extend(reads)
        self._follower_rounds.clear()

    def _expire_follower_reads(self) -> None:
        """A read round the leader never answered (lost message, leader cut
        off) is given up after two election timeouts, so it cannot leak."""
        deadline = self._ticks - 2 * self.cfg.election_tick
        for context, (sent_at, reads) in list(self._follower_rounds.items()):
            if sent_at < deadline:
                del self._follower_rounds[context]
                self._dropped_reads.extend(reads)

    def _send_follower_reads(self) -> None:
        if not self._follower_reads:
            return
        if self.leader == NO_NODE or self.role != Role.FOLLOWER:
            self._drop_follower_reads()
            return
        context = round_context(self._next_follower_round)
        self._next_follower_round += 1
        self._follower_rounds[context] = (self._ticks, self._follower_reads)
        self._follower_reads = []
        self._send(Message(MsgType.READ_INDEX, self.id, self.leader, self.term, context=context))

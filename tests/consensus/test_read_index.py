"""Linearizable reads by ReadIndex (thesis 6.4)."""

from __future__ import annotations

import pytest

from ramraft.consensus import Message, MsgType, NotLeaderError, RaftNode, ReadState
from tests.consensus.harness import Cluster


def test_leader_serves_a_read_after_one_heartbeat_round() -> None:
    c = Cluster()
    a = c.elect("a")
    c.propose("a", b"w")
    a.read_index(b"r1")
    rd = a.ready()
    assert not rd.read_states, "no read before a majority confirms leadership"
    beats = [m for m in rd.messages if m.type == MsgType.HEARTBEAT]
    assert {m.dst for m in beats} == {"b", "c"} and all(m.context for m in beats)
    a.advance(rd)
    c.queue.extend(rd.messages)
    c.deliver_all()
    assert c.peers["a"].read_states == [ReadState(b"r1", a.commit_index)]


def test_one_round_confirms_every_read_waiting_at_that_moment() -> None:
    c = Cluster()
    a = c.elect("a")
    c.tick_all(1)
    for n in range(50):
        a.read_index(b"r%d" % n)
    c.sent.clear()
    c.deliver_all()
    assert len([m for m in c.sent if m.type == MsgType.HEARTBEAT]) == 2
    assert len(c.peers["a"].read_states) == 50


def test_a_read_that_arrives_during_a_round_waits_for_the_next() -> None:
    """Reads share a round only if they arrived before it started: a read
    that arrives while a round's heartbeats are out could, if that round
    confirmed it, be served by a leader deposed between the heartbeats and
    the read (a stale read). Nor does the late read start a round of its
    own while round 1 is out (one round at a time, consensus/reads.py):
    round 1's answers confirm the early read alone, and only then does
    round 2 start, for the late one."""
    c = Cluster()
    a = c.elect("a")
    c.tick_all(1)
    c.deliver_all()

    def rounds_sent() -> set[bytes]:
        return {m.context for m in c.queue if m.type == MsgType.HEARTBEAT and m.context}

    a.read_index(b"early")
    c.handle_ready("a")
    round1 = list(c.queue)
    assert {m.dst for m in round1 if m.type == MsgType.HEARTBEAT and m.context} == {"b", "c"}
    c.queue.clear()
    a.read_index(b"late")
    c.handle_ready("a")
    assert not rounds_sent(), "a second round started while the first was out"
    for beat in round1:
        c.node(beat.dst).step(beat)
        c.handle_ready(beat.dst)
    answers = [m for m in c.queue if m.dst == "a"]
    c.queue.clear()
    for answer in answers:
        a.step(answer)
        c.handle_ready("a")
    assert [rs.context for rs in c.peers["a"].read_states] == [b"early"]
    round2 = rounds_sent()
    assert len(round2) == 1 and round2.isdisjoint(m.context for m in round1), round2
    c.deliver_all()
    assert [rs.context for rs in c.peers["a"].read_states] == [b"early", b"late"]


def test_a_rounds_heartbeats_go_to_the_voters_that_completed_the_last_one() -> None:
    """The first round of a term asks every follower; the next asks only
    the one whose answer completed it (with the leader, a majority of
    three). When that one stops answering, the periodic heartbeat carries
    the round to every follower, another completes it, and the rounds after
    ask that one. Never fewer than a quorum's worth, and a read is still
    served only after a majority answered a heartbeat sent after it."""
    c = Cluster(heartbeat_tick=3)
    a = c.elect("a")
    c.tick_all(1)

    def beats() -> dict[str, bytes]:
        return {m.dst: m.context for m in c.queue if m.type == MsgType.HEARTBEAT and m.context}

    a.read_index(b"r1")
    c.handle_ready("a")
    assert set(beats()) == {"b", "c"}, "the term's first round asks everyone"
    c.cut.add(("c", "a"))  # c's answer is late: b's completes the round
    c.deliver_all()
    c.heal()
    assert [rs.context for rs in c.peers["a"].read_states] == [b"r1"]

    a.read_index(b"r2")
    c.handle_ready("a")
    assert set(beats()) == {"b"}, "the next round asks only b"
    c.queue.clear()  # b is paused: the round's heartbeat is lost
    c.isolate("b")
    c.deliver_all()
    assert [rs.context for rs in c.peers["a"].read_states] == [b"r1"], "no quorum yet"
    c.tick("a", 3)  # the periodic heartbeat: the newest round, to everyone
    assert {dst for dst, ctx in beats().items() if ctx} == {"b", "c"}
    c.deliver_all()
    assert [rs.context for rs in c.peers["a"].read_states] == [b"r1", b"r2"]

    c.heal()
    a.read_index(b"r3")
    c.handle_ready("a")
    assert set(beats()) == {"c"}, "c completed the last round: it is asked now"
    c.deliver_all()
    assert [rs.context for rs in c.peers["a"].read_states] == [b"r1", b"r2", b"r3"]


def test_new_leader_waits_for_its_noop_before_serving_reads() -> None:
    """Thesis 6.4 step 1: until an entry of its term commits, a new leader's
    commit index may lag writes acknowledged by its predecessor."""
    c = Cluster()
    c.filter = lambda m: m.type != MsgType.APPEND_RESP  # the no-op cannot commit
    a = c.elect("a")
    a.read_index(b"r")
    c.tick_all(3)
    assert not c.peers["a"].read_states
    c.filter = None
    c.tick_all(3)
    assert [rs.context for rs in c.peers["a"].read_states] == [b"r"]
    assert a.log.term(c.peers["a"].read_states[0].index) == a.term


def test_deposed_leader_cannot_confirm_a_read() -> None:
    """A partitioned old leader never gets the majority ack, and the read is
    dropped when it steps down."""
    c = Cluster()
    a = c.elect("a")
    c.tick_all(1)
    c.isolate("a")
    a.read_index(b"stale?")
    c.tick("a", 25)
    c.deliver_all()
    assert not c.peers["a"].read_states
    assert c.peers["a"].dropped_reads == [b"stale?"]


def test_follower_read_asks_the_leader_for_the_index() -> None:
    c = Cluster()
    c.elect("a")
    c.propose("a", b"w")
    b = c.node("b")
    b.read_index(b"fr")
    c.deliver_all()
    assert c.peers["b"].read_states == [ReadState(b"fr", c.node("a").commit_index)]


def test_follower_without_leader_refuses_reads() -> None:
    c = Cluster()
    with pytest.raises(NotLeaderError, match="no leader known"):
        c.node("b").read_index(b"x")


def test_follower_reads_dropped_when_leader_changes() -> None:
    c = Cluster()
    c.elect("a")
    c.tick_all(1)
    c.isolate("a")
    b = c.node("b")
    b.read_index(b"lost")
    c.deliver_all()
    assert not c.peers["b"].read_states
    c.tick("b", 40)
    c.tick("c", 40)
    c.deliver_all()
    assert c.peers["b"].dropped_reads == [b"lost"]


def _confirms_follower_reads(m: Message) -> bool:
    """The leader's answer to a follower's read request, or a round's
    heartbeat that carries the follower's own reads (consensus/reads.py)."""
    return m.type == MsgType.READ_INDEX_RESP or (m.type == MsgType.HEARTBEAT and len(m.context) > 8)


def test_unanswered_follower_read_expires() -> None:
    c = Cluster(check_quorum=False)
    c.elect("a")
    c.tick_all(1)
    c.filter = lambda m: not _confirms_follower_reads(m)
    c.node("b").read_index(b"r")
    c.deliver_all()
    for _ in range(25):
        c.tick_all(1)
    assert c.peers["b"].dropped_reads == [b"r"]


def _leader_with_a_write(c: Cluster) -> RaftNode:
    """Elect "a" and commit a write on every node; forget what was sent."""
    a = c.elect("a")
    c.propose("a", b"w")
    c.tick_all(1)
    c.deliver_all()
    c.sent.clear()
    return a


def _follower_read_without_the_leaders_answer(c: Cluster) -> RaftNode:
    """Elect "a", commit a write, then let "b" ask for a read ("fr") with
    every READ_INDEX_RESP dropped; returns the leader."""
    a = _leader_with_a_write(c)
    c.filter = lambda m: m.type != MsgType.READ_INDEX_RESP
    c.node("b").read_index(b"fr")
    c.deliver_all()
    return a


def test_a_follower_serves_its_reads_on_the_rounds_heartbeat_in_three_voters() -> None:
    """With three voters the leader sends a round that holds a follower's
    reads to that follower, with the round's index: the follower serves
    them when it takes the heartbeat (it and the leader are a quorum), two
    hops before the leader's READ_INDEX_RESP, which is not needed."""
    c = Cluster()
    a = _follower_read_without_the_leaders_answer(c)
    assert c.peers["b"].read_states == [ReadState(b"fr", a.commit_index)]
    beats = [m for m in c.sent if m.type == MsgType.HEARTBEAT and m.context]
    assert [(m.dst, m.index) for m in beats] == [("b", a.commit_index)], "the asker alone"


def test_a_follower_waits_for_the_leaders_answer_when_the_two_are_no_quorum() -> None:
    """With five voters the leader and one follower are no quorum: the
    round goes to the voters as before, and the follower's read waits for
    the leader's READ_INDEX_RESP (dropped here: it is never served)."""
    c = Cluster(ids=("a", "b", "c", "d", "e"))
    a = _follower_read_without_the_leaders_answer(c)
    assert c.peers["b"].read_states == []
    carrying = [m for m in c.sent if m.type == MsgType.HEARTBEAT and len(m.context) > 8]
    assert not carrying, "the leader sends no heartbeat that carries the follower's reads"
    # Nor does the follower take one (were the leader's membership to differ).
    (ask,) = [m for m in c.sent if m.type == MsgType.READ_INDEX]
    beat = Message(
        MsgType.HEARTBEAT,
        "a",
        "b",
        a.term,
        commit=a.commit_index,
        index=a.commit_index,
        context=bytes(8) + ask.context,
    )
    c.node("b").step(beat)
    c.handle_ready("b")
    assert c.peers["b"].read_states == []
    (answer,) = [m for m in c.sent if m.type == MsgType.HEARTBEAT_RESP and m.context == bytes(8)]
    assert answer.index == 0, "nor says it served them (the leader would not answer them)"
    c.filter = lambda m: True
    c.node("b").read_index(b"fr2")
    c.deliver_all()
    assert [rs.context for rs in c.peers["b"].read_states] == [b"fr2"]


def test_a_rounds_heartbeat_confirms_only_the_follower_reads_the_leader_had() -> None:
    """A follower's read asked after the read request the round holds (still
    on its way to the leader) is not confirmed by that round's heartbeat:
    it may have arrived after the leader chose the round's index."""
    c = Cluster()
    a = c.elect("a")
    c.tick_all(1)
    c.deliver_all()
    b = c.node("b")
    b.read_index(b"first")
    c.handle_ready("b")  # READ_INDEX for "first" is queued to the leader
    b.read_index(b"second")
    c.handle_ready("b")  # ...and a second one, for "second", behind it
    asks = [m for m in c.queue if m.type == MsgType.READ_INDEX]
    assert len(asks) == 2
    c.queue.clear()
    c.filter = lambda m: m.type != MsgType.READ_INDEX_RESP
    c.queue.append(asks[0])  # the leader gets the first request only
    c.deliver_all()
    assert [rs.context for rs in c.peers["b"].read_states] == [b"first"]
    assert all(rs.index == a.commit_index for rs in c.peers["b"].read_states)


def test_the_leader_sends_no_answer_for_reads_the_follower_served_from_the_heartbeat() -> None:
    """The follower's answer to the round's heartbeat says it served the
    reads the heartbeat named (its ``index``): the leader then sends it no
    READ_INDEX_RESP for them, one message fewer per follower per round."""
    c = Cluster()
    a = _leader_with_a_write(c)
    c.node("b").read_index(b"fr")
    c.deliver_all()
    assert c.peers["b"].read_states == [ReadState(b"fr", a.commit_index)]
    (answer,) = [m for m in c.sent if m.type == MsgType.HEARTBEAT_RESP]
    assert (answer.src, answer.index) == ("b", a.commit_index)
    assert not [m for m in c.sent if m.type == MsgType.READ_INDEX_RESP]


def test_the_leader_answers_follower_reads_the_heartbeats_answer_does_not_say_were_served() -> None:
    """A heartbeat answer without the round's index (a follower that did not
    take the heartbeat's reads: another membership in its log, or a version
    without this change) completes the round as before, and the leader
    sends the follower its READ_INDEX_RESP."""
    c = Cluster()
    a = _leader_with_a_write(c)
    c.filter = lambda m: not _confirms_follower_reads(m) or m.type == MsgType.READ_INDEX_RESP
    c.node("b").read_index(b"fr")
    c.deliver_all()
    (beat,) = [m for m in c.sent if m.type == MsgType.HEARTBEAT and m.dst == "b"]
    assert c.peers["b"].read_states == [], "the round's heartbeat was dropped"
    answer = Message(MsgType.HEARTBEAT_RESP, "b", "a", a.term, context=beat.context[:8])
    a.step(answer)
    c.deliver_all()
    assert c.peers["b"].read_states == [ReadState(b"fr", a.commit_index)]
    assert [m.dst for m in c.sent if m.type == MsgType.READ_INDEX_RESP] == ["b"]

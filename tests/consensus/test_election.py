"""Leader election: paper 5.2 and 5.4.1, PreVote (thesis 9.6), CheckQuorum
(thesis 6.2) and the leader-lease vote check (thesis 4.2.3)."""

from __future__ import annotations

from ramraft.consensus import HardState, Message, MsgType, RaftNode, Role
from tests.consensus.harness import Cluster, make_config


def test_a_follower_campaigns_after_its_election_timeout() -> None:
    """Paper 5.2: a follower that hears nothing starts an election."""
    c = Cluster(pre_vote=False)
    a = c.node("a")
    timeout = a.randomized_election_timeout
    assert 10 <= timeout < 20, "timeout is drawn from [election_tick, 2*election_tick)"
    c.tick("a", timeout - 1)
    assert a.role == Role.FOLLOWER
    c.tick("a")
    assert a.role == Role.CANDIDATE and a.term == 2 and a.vote == "a"
    c.deliver_all()
    assert a.role == Role.LEADER
    assert c.node("b").leader == "a" and c.node("c").leader == "a"


def test_randomized_timeouts_differ_between_nodes() -> None:
    """Paper 5.2: randomized timeouts make split votes rare."""
    timeouts = {
        RaftNode(make_config(f"n{i}", seed=3), bootstrap=None).randomized_election_timeout
        for i in range(20)
    }
    assert len(timeouts) > 3


def test_at_most_one_vote_per_term() -> None:
    """Paper 5.2: each server votes for at most one candidate per term."""
    c = Cluster(pre_vote=False)
    b = c.node("b")
    b.step(Message(MsgType.VOTE, "a", "b", 2, index=1, log_term=1))
    b.step(Message(MsgType.VOTE, "c", "b", 2, index=1, log_term=1))
    rd = b.ready()
    grants = {m.dst: not m.reject for m in rd.messages}
    assert grants == {"a": True, "c": False}
    assert rd.hard_state == HardState(term=2, vote="a", commit=1)
    b.advance(rd)


def test_vote_refused_to_a_candidate_with_an_older_log() -> None:
    """Paper 5.4.1: the election restriction."""
    c = Cluster(pre_vote=False, check_quorum=False)
    c.elect("a")
    c.propose("a", b"x")
    # b's log ends at (term 2, index 3); a candidate with a shorter log loses b's vote.
    b = c.node("b")
    assert (b.last_index, b.log.last_term) == (3, 2)
    b.step(Message(MsgType.VOTE, "c", "b", 5, index=2, log_term=2))
    rd = b.ready()
    assert [m.reject for m in rd.messages if m.type == MsgType.VOTE_RESP] == [True]
    b.advance(rd)
    # ...and a candidate with a higher last term wins it, however short its log.
    b.step(Message(MsgType.VOTE, "c", "b", 6, index=1, log_term=3))
    rd = b.ready()
    assert [m.reject for m in rd.messages if m.type == MsgType.VOTE_RESP] == [False]


def test_split_vote_resolves() -> None:
    """Paper 5.2: with no majority, candidates time out and try again."""
    c = Cluster(ids="abcd", pre_vote=False, seed=7)
    c.tick("a", c.node("a").randomized_election_timeout)
    c.tick("b", c.node("b").randomized_election_timeout)
    c.tick_all(200)
    assert len(c.leaders()) == 1


def test_prevote_does_not_disturb_terms_when_it_fails() -> None:
    """Thesis 9.6: a partitioned node keeps failing pre-votes without raising
    its term, so it does not depose the leader when it comes back."""
    c = Cluster(pre_vote=True)
    c.elect("a")
    term = c.node("a").term
    c.isolate("c")
    for _ in range(10):
        c.tick("c", 30)
        c.deliver_all()
    assert c.node("c").term == term
    assert c.node("c").role == Role.PRE_CANDIDATE
    c.heal()
    c.tick_all(3)
    assert c.node("a").role == Role.LEADER and c.node("a").term == term


def test_without_prevote_a_rejoining_node_deposes_the_leader() -> None:
    """The contrast for the test above: what PreVote prevents."""
    c = Cluster(pre_vote=False, check_quorum=False)
    c.elect("a")
    c.isolate("c")
    c.tick("c", 30)
    c.deliver_all()
    assert c.node("c").term > c.node("a").term
    c.heal()
    c.node("c").tick()
    c.tick("c", 30)
    c.deliver_all()
    assert c.node("a").role != Role.LEADER or c.node("a").term > 1


def test_check_quorum_leader_steps_down_when_cut_off() -> None:
    """Thesis 6.2: a leader that hears from no majority for an election
    timeout steps down."""
    c = Cluster(check_quorum=True)
    a = c.elect("a")
    c.isolate("a")
    c.tick("a", 10)
    assert a.role == Role.LEADER, "one election timeout may pass with no answer"
    c.tick("a", 10)
    assert a.role == Role.FOLLOWER and a.leader == ""


def test_lease_vote_check_ignores_disruptive_candidates() -> None:
    """Thesis 4.2.3: a server that heard from a leader within the minimum
    election timeout ignores a vote request, even at a higher term."""
    c = Cluster(check_quorum=True)
    c.elect("a")
    b = c.node("b")
    term = b.term
    b.step(Message(MsgType.VOTE, "x", "b", term + 5, index=100, log_term=100))
    assert b.term == term and b.leader == "a"
    rd = b.ready()
    assert not [m for m in rd.messages if m.type == MsgType.VOTE_RESP]


def test_a_learner_never_campaigns() -> None:
    c = Cluster(ids="ab", learners="l")
    learner = c.node("l")
    c.tick("l", 500)
    assert learner.role == Role.FOLLOWER and learner.term == 1


def test_stale_leader_learns_the_new_term_from_a_reply() -> None:
    """With PreVote/CheckQuorum a follower answers an old leader's append
    with its newer term, so the old leader steps down at once."""
    c = Cluster()
    a = c.elect("a")
    c.isolate("a")
    b, cc = c.node("b"), c.node("c")
    while Role.LEADER not in (b.role, cc.role):  # b and c leave a's lease, one wins
        c.tick("b")
        c.tick("c")
        c.deliver_all()
    c.heal()
    c.tick("a")  # heartbeats from the old leader
    c.deliver_all()
    assert a.role == Role.FOLLOWER and a.term == b.term

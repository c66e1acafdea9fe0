"""Single-server membership changes with learners (thesis 4.1-4.3)."""

from __future__ import annotations

import pytest

from ramraft.consensus import (
    ConfChange,
    ConfChangeError,
    ConfChangeType,
    MsgType,
    ProposalDroppedError,
    Role,
)
from tests.consensus.harness import Cluster

ADD = ConfChangeType.ADD_LEARNER
PROMOTE = ConfChangeType.PROMOTE
REMOVE = ConfChangeType.REMOVE


def test_add_a_learner_then_promote_it() -> None:
    c = Cluster()
    a = c.elect("a")
    c.propose("a", b"before")
    d = c.add_node("d")
    a.propose_conf_change(ConfChange(ADD, "d"))
    c.deliver_all()
    c.tick_all(3)
    assert "d" in a.conf.learners
    assert c.applied_data("d") == [b"before"], "the learner receives the log"
    a.propose_conf_change(ConfChange(PROMOTE, "d"))
    c.deliver_all()
    assert a.conf.voters == frozenset("abcd")
    assert d.conf.voters == frozenset("abcd")


def test_a_learner_does_not_count_towards_commit() -> None:
    c = Cluster(ids="ab", learners="l")
    a = c.elect("a")
    c.isolate("b")
    before = a.commit_index
    a.propose(b"x")
    c.tick_all(2)
    assert a.commit_index == before, "a and the learner are not a majority of {a, b}"


def test_promotion_refused_until_the_learner_catches_up() -> None:
    c = Cluster(max_learner_lag=5)
    a = c.elect("a")
    c.add_node("d")
    c.isolate("d")
    a.propose_conf_change(ConfChange(ADD, "d"))
    for n in range(20):
        c.propose("a", b"%d" % n)
    with pytest.raises(ConfChangeError, match="behind"):
        a.propose_conf_change(ConfChange(PROMOTE, "d"))
    c.heal()
    c.tick_all(3)
    a.propose_conf_change(ConfChange(PROMOTE, "d"))


def test_one_uncommitted_change_at_a_time() -> None:
    c = Cluster()
    a = c.elect("a")
    c.tick_all(1)
    c.isolate("a")
    a.propose_conf_change(ConfChange(ADD, "d"))
    with pytest.raises(ProposalDroppedError, match="is not committed yet"):
        a.propose_conf_change(ConfChange(ADD, "e"))


def test_invalid_changes_are_refused() -> None:
    c = Cluster()
    a = c.elect("a")
    c.tick_all(1)
    with pytest.raises(ConfChangeError, match="b is already a voter"):
        a.propose_conf_change(ConfChange(ADD, "b"))
    with pytest.raises(ConfChangeError, match="zz is not a learner"):
        a.propose_conf_change(ConfChange(PROMOTE, "zz"))
    with pytest.raises(ConfChangeError, match="zz is not a member"):
        a.propose_conf_change(ConfChange(REMOVE, "zz"))
    solo = Cluster(ids="a")
    leader = solo.elect("a")
    with pytest.raises(ConfChangeError, match="last voter"):
        leader.propose_conf_change(ConfChange(REMOVE, "a"))


def test_removed_leader_steps_down_once_the_change_commits() -> None:
    """Thesis 4.2.2."""
    c = Cluster()
    a = c.elect("a")
    c.tick_all(1)
    a.propose_conf_change(ConfChange(REMOVE, "a"))
    c.deliver_all()
    assert a.role == Role.FOLLOWER
    assert a.conf.voters == frozenset("bc")
    c.tick_all(40)
    assert len([x for x in "bc" if c.node(x).role == Role.LEADER]) == 1
    assert a.role == Role.FOLLOWER, "a removed server never campaigns"


def test_a_server_whose_removal_is_not_committed_still_campaigns() -> None:
    """Thesis 4.2.2: until the entry removing it commits, a server may still
    be needed to elect anyone, so it starts elections (without counting its
    own vote). Simulator seed 792 deadlocked without this: two servers each
    held an uncommitted entry removing itself, and the third's log was too
    short to win."""
    c = Cluster()
    a = c.elect("a")
    c.tick_all(1)
    c.isolate("a")
    a.propose_conf_change(ConfChange(REMOVE, "a"))  # reaches no one: never commits
    c.tick("a", 20)  # CheckQuorum: no majority heard, a steps down
    assert a.role != Role.LEADER
    assert a.conf.voters == frozenset("bc")
    assert a.commit_index < a.log.last_conf_index
    c.sent.clear()
    c.tick("a", 30)
    campaigns = [m for m in c.sent if m.src == "a" and m.type in (MsgType.PRE_VOTE, MsgType.VOTE)]
    assert campaigns, "a must campaign while its removal is uncommitted"
    assert {m.dst for m in campaigns} == {"b", "c"}, "it asks the newest configuration's voters"


def test_remove_a_follower_and_quorum_shrinks() -> None:
    c = Cluster()
    a = c.elect("a")
    c.tick_all(1)
    a.propose_conf_change(ConfChange(REMOVE, "c"))
    c.deliver_all()
    c.isolate("c")
    c.propose("a", b"two of two")
    assert c.applied_data("a")[-1] == b"two of two"


def test_conf_change_reverted_when_its_entry_is_truncated() -> None:
    """Thesis 4.1: configurations take effect when appended, so a truncated
    configuration entry must take its configuration with it."""
    c = Cluster(ids="abcde", check_quorum=False)
    a = c.elect("a")
    c.tick_all(1)
    # The change reaches b only, and is never committed.
    c.filter = lambda m: m.src == "a" and m.dst == "b"
    a.propose_conf_change(ConfChange(ADD, "x"))
    c.deliver_all()
    b = c.node("b")
    assert "x" in b.conf.learners, "b took the uncommitted configuration"
    # c, d, e elect a new leader without a and b, which writes other entries.
    c.filter = None
    c.isolate("a")
    c.isolate("b")
    others = [c.node(x) for x in "cde"]
    while not any(n.role == Role.LEADER for n in others):
        for x in "cde":
            c.tick(x)
        c.deliver_all()
    leader = next(n for n in others if n.role == Role.LEADER)
    leader.propose(b"overwrites")
    c.deliver_all()
    c.heal()
    c.tick_all(3)
    assert "x" not in b.conf.members
    assert b.conf == leader.conf

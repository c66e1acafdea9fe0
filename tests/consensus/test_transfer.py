"""Leadership transfer (thesis 3.10)."""

from __future__ import annotations

import pytest

from ramraft.consensus import MsgType, ProposalDroppedError, Role
from ramraft.consensus.raft import LeadershipTransferError
from tests.consensus.harness import Cluster


def test_transfer_to_an_up_to_date_voter() -> None:
    c = Cluster()
    a = c.elect("a")
    c.propose("a", b"x")
    a.transfer_leadership("b")
    c.deliver_all()
    assert c.node("b").role == Role.LEADER
    assert a.role == Role.FOLLOWER and a.leader == "b"


def test_transfer_catches_the_target_up_first() -> None:
    c = Cluster()
    a = c.elect("a")
    c.isolate("c")
    for n in range(10):
        c.propose("a", b"%d" % n)
    c.heal()
    a.transfer_leadership("c")
    with pytest.raises(ProposalDroppedError, match="leadership is being transferred to c"):
        a.propose(b"during transfer")
    c.deliver_all()
    assert c.node("c").role == Role.LEADER
    assert c.node("c").last_index >= 12


def test_transfer_to_an_unresponsive_target_is_aborted() -> None:
    c = Cluster()
    a = c.elect("a")
    c.tick_all(1)
    c.isolate("c")
    a.transfer_leadership("c")
    c.deliver_all()
    assert a.lead_transferee == "c"
    for _ in range(11):
        c.tick("a")
        c.deliver_all()
    assert a.lead_transferee == "" and a.role == Role.LEADER
    a.propose(b"accepted again")


def test_transfer_refused_for_non_voters() -> None:
    c = Cluster(ids="ab", learners="l")
    a = c.elect("a")
    with pytest.raises(LeadershipTransferError, match="l is not a voter"):
        a.transfer_leadership("l")
    with pytest.raises(LeadershipTransferError, match="nobody is not a voter"):
        a.transfer_leadership("nobody")


def test_timeout_now_bypasses_the_lease() -> None:
    """The target's vote requests carry the transfer mark, so voters that
    still hear from the old leader grant them anyway."""
    c = Cluster(check_quorum=True)
    a = c.elect("a")
    c.tick_all(1)
    c.sent.clear()
    a.transfer_leadership("b")
    c.deliver_all()
    votes = [m for m in c.sent if m.type == MsgType.VOTE]
    assert votes and all(m.context == b"transfer" for m in votes)
    assert c.node("b").role == Role.LEADER

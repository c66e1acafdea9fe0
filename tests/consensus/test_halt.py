"""A server whose state machine cannot apply a committed entry (it was written
by newer code) halts there instead of skipping it: applied stays below the
entry, the server never leads, and a restart with code that can apply it
resumes from the same log (RaftNode.halt_apply)."""

from __future__ import annotations

import pytest

from ramraft.consensus import Entry, MsgType, RaftError, Role

from .harness import Cluster

NEW = b"new-command"


def cannot_apply_new(entry: Entry) -> bool:
    return entry.data == NEW


def halted_cluster() -> Cluster:
    c = Cluster(seed=3)
    c.elect("a")
    c.propose("a", b"one")
    c.peers["c"].cannot_apply = cannot_apply_new
    c.propose("a", NEW)
    c.propose("a", b"two")
    return c


def test_a_follower_halts_at_the_entry_and_keeps_its_quorum_duties() -> None:
    c = halted_cluster()
    halted = c.node("c")
    new_index = c.node("a").last_index - 1
    assert halted.apply_halted_at == new_index
    assert halted.applied_index == new_index - 1
    assert c.applied_data("c") == [b"one"]
    assert c.applied_data("a") == c.applied_data("b") == [b"one", NEW, b"two"]
    # It still persists and acknowledges: with b cut off, a and c commit.
    c.isolate("b")
    c.cut = {p for p in c.cut if "a" not in p or "c" not in p}
    index = c.propose("a", b"three")
    assert c.node("a").commit_index >= index
    assert halted.last_index == c.node("a").last_index
    assert halted.applied_index == new_index - 1  # ... but applies nothing more


def test_a_halted_server_never_campaigns_nor_takes_a_transfer() -> None:
    c = halted_cluster()
    c.isolate("a")
    c.isolate("b")
    c.tick("c", 20 * c.node("c").randomized_election_timeout)
    assert c.node("c").role == Role.FOLLOWER
    assert not [m for m in c.sent if m.src == "c" and m.type in (MsgType.VOTE, MsgType.PRE_VOTE)]
    c.heal()
    c.deliver_all()
    c.node("a").transfer_leadership("c")
    c.deliver_all()
    c.tick_all(30)
    assert c.leaders() != ["c"] and c.node("c").role == Role.FOLLOWER


def test_a_leader_that_cannot_apply_steps_down_and_another_takes_over() -> None:
    c = Cluster(seed=5)
    c.elect("a")
    c.peers["a"].cannot_apply = cannot_apply_new
    c.propose("a", NEW)
    assert c.node("a").role == Role.FOLLOWER and c.node("a").apply_halted_at
    c.tick_all(60)
    assert len(c.leaders()) == 1 and c.leaders()[0] != "a"
    leader = c.leaders()[0]
    c.propose(leader, b"after")
    assert c.applied_data("b") == c.applied_data("c") == [NEW, b"after"]
    assert c.applied_data("a") == []


def test_a_restart_with_code_that_can_apply_resumes_where_it_stopped() -> None:
    c = halted_cluster()
    restarted = c.crash_restart("c")  # the new Peer has no cannot_apply: newer code
    c.tick_all(3)
    assert restarted.apply_halted_at == 0
    assert restarted.applied_index == c.node("a").applied_index
    assert [e.data for e in c.peers["c"].applied if e.data][-2:] == [NEW, b"two"]


def test_a_halted_server_does_not_install_a_snapshot() -> None:
    c = halted_cluster()
    c.isolate("c")
    leader = c.node("a")
    for i in range(5):
        c.propose("a", f"more{i}".encode())
    meta = leader.snapshot_meta(leader.applied_index)
    leader.compact(meta)
    c.peers["a"].disk.snapshot = meta
    c.peers["a"].disk.snapshot_data = b"state"
    c.heal()
    c.tick_all(5)
    halted = c.node("c")
    assert halted.apply_halted_at and halted.applied_index < halted.apply_halted_at
    assert halted.latest_snapshot.index < meta.index


def test_halt_apply_outside_the_unapplied_committed_range_is_refused() -> None:
    c = halted_cluster()
    node = c.node("a")
    with pytest.raises(RaftError, match="outside"):
        node.halt_apply(node.applied_index)


def test_a_server_that_may_not_lead_steps_down_and_stays_a_follower() -> None:
    """The divergence alarm's lever: the leader whose state differs from the
    majority's hands over at once and is never elected while it lasts."""
    c = Cluster(seed=7)
    c.elect("a")
    c.node("a").set_may_lead(False)
    assert c.node("a").role == Role.FOLLOWER
    c.isolate("b")
    c.isolate("c")
    c.tick("a", 20 * c.node("a").randomized_election_timeout)
    assert c.node("a").role == Role.FOLLOWER
    c.heal()
    c.tick_all(60)
    assert len(c.leaders()) == 1 and c.leaders()[0] != "a"
    c.node("a").set_may_lead(True)
    leader = c.leaders()[0]
    c.node(leader).transfer_leadership("a")
    c.deliver_all()
    assert c.leaders() == ["a"]

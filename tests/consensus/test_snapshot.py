"""Log compaction and InstallSnapshot (paper section 7, thesis chapter 5)."""

from __future__ import annotations

import pytest

from ramraft.consensus import CompactionError, MsgType
from ramraft.consensus.progress import ProgressState
from tests.consensus.harness import Cluster


def compact_at_applied(c: Cluster, node_id: str, retain: int = 0) -> None:
    node = c.node(node_id)
    meta = node.snapshot_meta(node.applied_index)
    c.peers[node_id].disk.snapshot = meta
    c.peers[node_id].disk.snapshot_data = [e.data for e in c.peers[node_id].applied]
    node.compact(meta, retain_entries=retain)


def test_compaction_drops_the_log_up_to_the_snapshot() -> None:
    c = Cluster()
    a = c.elect("a")
    for n in range(10):
        c.propose("a", b"%d" % n)
    compact_at_applied(c, "a")
    assert a.log.offset == a.applied_index
    assert a.log.entries == []
    c.propose("a", b"after")
    assert c.applied_data("b")[-1] == b"after"


def test_compaction_can_keep_a_tail_for_slow_followers() -> None:
    c = Cluster()
    a = c.elect("a")
    for n in range(10):
        c.propose("a", b"%d" % n)
    compact_at_applied(c, "a", retain=4)
    assert a.log.offset == a.applied_index - 4
    assert a.latest_snapshot.index == a.applied_index


def test_cannot_compact_beyond_applied_or_backwards() -> None:
    c = Cluster()
    a = c.elect("a")
    c.propose("a", b"x")
    with pytest.raises(CompactionError, match="can only snapshot an applied index"):
        a.snapshot_meta(a.applied_index + 1)
    compact_at_applied(c, "a")
    older = a.latest_snapshot
    c.propose("a", b"y")
    compact_at_applied(c, "a")
    with pytest.raises(CompactionError, match="is older than the one at"):
        a.compact(older)


def test_a_follower_behind_the_compacted_log_gets_a_snapshot() -> None:
    """Paper 7: the leader sends InstallSnapshot to a follower that needs
    entries it has discarded; the follower replaces its log by it."""
    c = Cluster()
    a = c.elect("a")
    c.isolate("c")
    for n in range(20):
        c.propose("a", b"%d" % n)
    compact_at_applied(c, "a")
    c.heal()
    c.sent.clear()
    c.tick_all(3)
    snaps = [m for m in c.sent if m.type == MsgType.SNAPSHOT]
    assert len(snaps) == 1 and snaps[0].dst == "c"
    follower = c.node("c")
    assert follower.log.offset == a.latest_snapshot.index
    assert c.peers["c"].disk.snapshot == a.latest_snapshot
    assert c.peers["c"].disk.snapshot_data == c.peers["a"].disk.snapshot_data
    assert follower.commit_index == a.commit_index
    assert a.progress["c"].state == ProgressState.REPLICATE
    c.propose("a", b"next")
    assert c.applied_data("c")[-1] == b"next"


def test_snapshot_conf_is_the_conf_at_its_index() -> None:
    c = Cluster()
    a = c.elect("a")
    c.propose("a", b"x")
    meta = a.snapshot_meta(a.applied_index)
    assert meta.conf.voters == frozenset("abc")
    assert meta.term == a.term


def test_failed_snapshot_send_is_retried() -> None:
    c = Cluster()
    a = c.elect("a")
    c.isolate("c")
    for n in range(5):
        c.propose("a", b"%d" % n)
    compact_at_applied(c, "a")
    c.heal()
    c.filter = lambda m: m.type != MsgType.SNAPSHOT  # the transfer fails
    c.tick_all(1)
    assert a.progress["c"].state == ProgressState.SNAPSHOT
    a.report_snapshot("c", ok=False)
    assert a.progress["c"].state == ProgressState.PROBE
    c.filter = None
    c.tick_all(3)
    assert c.node("c").commit_index == a.commit_index


def test_a_restarted_node_recovers_from_snapshot_and_log() -> None:
    c = Cluster()
    c.elect("a")
    for n in range(5):
        c.propose("a", b"%d" % n)
    compact_at_applied(c, "b")
    c.propose("a", b"tail")
    b = c.crash_restart("b")
    assert b.applied_index == c.peers["b"].disk.snapshot.index
    c.tick_all(2)
    assert c.applied_data("b")[-1] == b"tail"

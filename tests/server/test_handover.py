"""SIGTERM of a leader hands leadership only to a voter that answered
lately and holds every committed entry; with none, it stops without trying
(a transfer to a stopped node would wait out its whole timeout).

A stopped follower keeps its old match index in the leader's progress, so
progress alone picks it (here: the follower with the larger id, on a tie);
only its silence tells it apart. The leader's log says what it did."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from tests.server.procs import ProcessCluster


def _events(cluster: ProcessCluster, node_id: str) -> list[dict[str, object]]:
    events = []
    for line in cluster.node_log(node_id).splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


def _times_led(cluster: ProcessCluster, node_id: str) -> int:
    return sum(
        e.get("event") == "role_changed" and e.get("role") == "leader"
        for e in _events(cluster, node_id)
    )


def _stopping_role(events: list[dict[str, object]]) -> object:
    return next(e["role"] for e in events if e.get("event") == "node_stopping")


def test_sigterm_hands_over_to_the_live_follower_not_the_stopped_one(tmp_path: Path) -> None:
    with ProcessCluster(tmp_path) as cluster:
        leader = cluster.wait_for_leader()
        with cluster.client() as c:
            c.put("k", b"v")
        followers = sorted(i for i in cluster.ids if i != leader)
        live, stopped = followers  # a tie on match goes to the larger id
        cluster.wait_caught_up(live)
        cluster.wait_caught_up(stopped)
        assert cluster.stop(stopped) == 0
        led_before = _times_led(cluster, live)
        assert cluster.stop(leader) == 0
        events = _events(cluster, leader)
        assert _stopping_role(events) == "leader"
        handed = [e for e in events if e.get("event") == "leadership_handed_over"]
        assert [e["to"] for e in handed] == [live], events[-6:]
        assert not [e for e in events if e.get("event") == "leadership_handover_failed"]
        # It took over (its log says so): alone of three, CheckQuorum steps
        # it down again within a couple of election timeouts, so asking its
        # status now could come too late.
        cluster.wait_until(lambda: _times_led(cluster, live) > led_before, what=f"{live} took over")


def test_sigterm_with_no_follower_answering_stops_without_a_transfer(tmp_path: Path) -> None:
    """The issue's case: two nodes stopped one after the other, then the
    leader. Election timeout 1 s, so that the leader still leads (CheckQuorum
    steps it down one to two timeouts after its followers went quiet) when
    its SIGTERM comes."""
    with ProcessCluster(tmp_path, election_ticks=100, heartbeat_ticks=5) as cluster:
        leader = cluster.wait_for_leader()
        for follower in sorted(i for i in cluster.ids if i != leader):
            assert cluster.stop(follower) == 0
        assert cluster.stop(leader) == 0
        events = _events(cluster, leader)
        assert _stopping_role(events) == "leader", "stepped down before the SIGTERM: no test"
        names = [e.get("event") for e in events]
        assert "leadership_not_handed_over" in names, events[-6:]
        assert "leadership_handover_failed" not in names
        assert "leadership_handed_over" not in names


def test_a_whole_cluster_stopping_at_once_does_not_wait_for_a_gone_target(tmp_path: Path) -> None:
    """SIGTERM to all three together (Ctrl-C of ``ramraft cluster``, a
    deleted StatefulSet): the follower the leader picks stops too, at once
    (it ends its peers' streams), so the hand-over gives up when the target
    goes silent, not after the transfer's whole timeout."""
    with ProcessCluster(tmp_path) as cluster:
        leader = cluster.wait_for_leader()
        with cluster.client() as c:
            c.put("k", b"v")
        for node_id in cluster.ids:
            cluster.wait_caught_up(node_id)
        for proc in cluster.procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in cluster.procs.values():
            assert proc.wait(timeout=30) == 0  # (a second SIGTERM would end it at once)
        events = _events(cluster, leader)
        assert _stopping_role(events) == "leader"
        assert not [e for e in events if e.get("event") == "leadership_handover_failed"]
        abandoned = [e for e in events if e.get("event") == "leadership_handover_abandoned"]
        assert all(e["reason"] == "it stopped answering (stopping too)" for e in abandoned)

"""A killed node restarted from its data directory catches up: by log when the
leader still has the entries it missed, by snapshot (InstallSnapshot) when
the leader's log was compacted past them."""

from __future__ import annotations

import functools
from pathlib import Path

from ramraft.client import SERIALIZABLE, Client
from tests.server.procs import ProcessCluster


def _contents(cluster: ProcessCluster, node_id: str) -> list[tuple[str, bytes]]:
    """Everything ``node_id`` holds, read from its own memory."""
    with Client(cluster.grpc[node_id], timeout=10) as c:
        return list(c.scan("", consistency=SERIALIZABLE))


def _write(cluster: ProcessCluster, prefix: str, n: int) -> None:
    with cluster.client() as c:
        for i in range(n):
            c.put(f"{prefix}{i:04d}", b"%s-%d" % (prefix.encode(), i))
        c.delete(f"{prefix}0000")


def _compacted_past(cluster: ProcessCluster, node_id: str, index: int) -> bool:
    status = cluster.status(node_id)
    return status is not None and status.first_index > index


def _pick_follower(cluster: ProcessCluster) -> tuple[str, str]:
    leader = cluster.wait_for_leader()
    return leader, next(i for i in cluster.ids if i != leader)


def test_restarted_node_catches_up_by_log(tmp_path: Path) -> None:
    with ProcessCluster(tmp_path) as cluster:
        leader, follower = _pick_follower(cluster)
        _write(cluster, "before/", 20)
        cluster.wait_caught_up(follower)
        cluster.kill(follower)
        _write(cluster, "while-down/", 60)
        cluster.start(follower)
        status = cluster.wait_caught_up(follower)
        leader_status = cluster.status(cluster.wait_for_leader())
        assert leader_status is not None
        # no snapshot was involved: the entries came from the leader's log
        assert status.snapshot_index == 0 and leader_status.snapshot_index == 0
        assert _contents(cluster, follower) == _contents(cluster, leader)
        assert ("while-down/0059", b"while-down/-59") in _contents(cluster, follower)


def test_restarted_node_catches_up_by_snapshot_after_compaction(tmp_path: Path) -> None:
    args = ["--snapshot-entries", "50", "--retain-entries", "10"]
    with ProcessCluster(tmp_path, extra_args=args) as cluster:
        leader, follower = _pick_follower(cluster)
        _write(cluster, "before/", 20)
        cluster.wait_caught_up(follower)
        cluster.kill(follower)
        down = cluster.status(leader)
        assert down is not None
        missed_from = down.last_index + 1  # the follower lacks this entry and all after it
        _write(cluster, "while-down/", 150)
        # every live node compacted past what the follower lacks, so it can
        # only catch up from a snapshot
        for node_id in cluster.alive():
            cluster.wait_until(
                functools.partial(_compacted_past, cluster, node_id, missed_from),
                what=f"{node_id} compacts its log past index {missed_from}",
            )
        cluster.start(follower)
        status = cluster.wait_caught_up(follower)
        assert status.snapshot_index >= missed_from, (
            f"{follower} reports snapshot index {status.snapshot_index}; expected an installed "
            f"snapshot covering index {missed_from}"
        )
        assert status.first_index > missed_from
        leader = cluster.wait_for_leader()
        assert _contents(cluster, follower) == _contents(cluster, leader)
        assert len(_contents(cluster, follower)) == 19 + 149
        assert "snapshot_restored" in cluster.node_log(follower)

"""Backups proven to restore (issue 11), on real node processes.

The origin cluster A gets its 100k keys and its application model (the
notes board, tests/server/apps/board_v1.py) from a backup file built without
a cluster (tests/backups.py): writing 100k keys through gRPC takes minutes.
A is restored from it, takes more writes through the client and the
application's HTTP route, and is backed up over gRPC (``ramraft backup``);
the file is checked (``--verify``) and restored into cluster B on other ports
and directories. Every key, value and model attribute of B must equal what
A holds, which must equal what was written.

Then the new cluster id: B's nodes accept each other, refuse a node of A
(a copy of an A node's data directory started as a member of B) and an empty
node started with another --cluster-id, and that node refuses them; B keeps
serving with its state unchanged.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import grpc
import pytest

from ramraft.proto import admin_pb2, raft_pb2
from ramraft.server.machines.inspect import inspect_state
from ramraft.server.runtime.transport import CLUSTER_ID_METADATA, PEER_SERVICE
from ramraft.server.storage.backup import BackupReader
from ramraft.tools.cli import main
from ramraft.tools.restore import restored_cluster_id
from tests.backups import SESSION_CLIENTS, RestoredCluster, key_name, value_of, write_state_backup
from tests.httpcalls import http
from tests.server.apps.board_v1 import Board
from tests.server.procs import ProcessCluster

KEYS = 100_000
NOTES = 500
PAGE = 10_000


def scan(cluster: ProcessCluster) -> dict[str, bytes]:
    with cluster.client(timeout=30) as client:
        return dict(client.scan(page_size=PAGE))


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    document: dict[str, object] = json.loads(out)
    return document


def decoded_board(path: Path) -> tuple[dict[str, object], int, int]:
    """(the Board's state, key count, session count) of a backup file, as
    the application's own class restores it."""
    board = Board()
    with BackupReader(path) as reader:
        reader.verify()
        summary = inspect_state(reader.state(), model=board)
    assert summary.kv is not None
    return board.snapshot_state(), summary.keys, summary.kv_sessions


def test_backup_of_100k_keys_and_a_model_restores_into_a_new_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    origin = tmp_path / "origin.backup"
    write_state_backup(origin, keys=KEYS, notes=NOTES)
    expected = {key_name(i): value_of(i) for i in range(KEYS)}
    expected_notes = [f"note {n}" for n in range(NOTES)]
    backup_a = tmp_path / "a.backup"

    with RestoredCluster(tmp_path / "A", origin) as a:
        a.wait_for_leader()
        with BackupReader(origin) as reader:
            assert a.cluster_id() == restored_cluster_id(reader.checksum(), _peers(a))
        # Writes after the restore: client puts, deletes, a compare-and-swap,
        # and notes through the application's page on every node.
        with a.client() as client:
            for i in range(50):
                client.put(f"new/{i}", b"after %d" % i)
                expected[f"new/{i}"] = b"after %d" % i
            for i in range(0, 1000, 100):
                client.delete(key_name(i))
                del expected[key_name(i)]
            assert client.cas(key_name(7), value_of(7), b"swapped").swapped
            expected[key_name(7)] = b"swapped"
        for n, node_id in enumerate(a.ids):
            reply = http(a.http[node_id], "POST", "/app/add", f"page note {n}".encode())
            assert reply.status == 200, reply.body
            expected_notes.append(f"page note {n}")
        assert scan(a) == expected
        for node_id in a.ids:
            a.wait_caught_up(node_id)
            assert a.notes(node_id) == expected_notes

        summary = cli_json(
            capsys, "backup", "--endpoints", a.endpoints(), "--out", str(backup_a), "--json"
        )
        assert summary["keys"] == len(expected)
        assert summary["cluster_id"] == a.cluster_id()
        assert summary["bytes"] == backup_a.stat().st_size
        verified = cli_json(capsys, "backup", "--verify", str(backup_a), "--json")
        assert verified["keys"] == len(expected)
        assert verified["index"] == summary["index"]
        (model,) = verified["models"]  # type: ignore[misc]
        assert model["name"] == "Board"
        assert model["attributes"] == {"notes": len(expected_notes)}
        assert model["sessions"] > SESSION_CLIENTS  # the pages' sessions are in it too

        with RestoredCluster(tmp_path / "B", backup_a) as b:
            assert not set(b.grpc.values()) & set(a.grpc.values())
            b.wait_for_leader()
            with BackupReader(backup_a) as reader:
                b_id = restored_cluster_id(reader.checksum(), _peers(b))
            assert b.cluster_id() == b_id != a.cluster_id()
            assert scan(b) == expected
            for node_id in b.ids:
                b.wait_caught_up(node_id)
                assert b.notes(node_id) == expected_notes

            # The model, attribute by attribute, and the session tables, as
            # the application's own class restores them from both clusters.
            backup_b = tmp_path / "b.backup"
            cli_json(
                capsys, "backup", "--endpoints", b.endpoints(), "--out", str(backup_b), "--json"
            )
            state_a, keys_a, sessions_a = decoded_board(backup_a)
            state_b, keys_b, sessions_b = decoded_board(backup_b)
            assert state_a == state_b == {"notes": expected_notes}
            assert keys_a == keys_b == len(expected)
            assert sessions_a == sessions_b > 0

            # B is a working cluster: sessions restored, new writes applied.
            with b.client() as client:
                client.put("after-restore", b"yes")
                assert client.get("after-restore") == b"yes"
            assert http(b.http[b.ids[0]], "POST", "/app/add", b"on b").status == 200
            assert a.notes(a.ids[0]) == expected_notes  # A is another cluster


def _peers(cluster: ProcessCluster) -> dict[str, str]:
    return dict(entry.split("=", 1) for entry in cluster.peers.split(","))


# -- the new cluster id: refusals both ways ----------------------------------------


def info_call(address: str, cluster_id: str) -> grpc.RpcError | raft_pb2.InfoResponse:
    """Peer.Info as a node of ``cluster_id`` would call it."""
    with grpc.insecure_channel(address) as channel:
        method = channel.unary_unary(
            f"/{PEER_SERVICE}/Info",
            request_serializer=raft_pb2.InfoRequest.SerializeToString,
            response_deserializer=raft_pb2.InfoResponse.FromString,
        )
        try:
            response: raft_pb2.InfoResponse = method(
                raft_pb2.InfoRequest(), timeout=5, metadata=((CLUSTER_ID_METADATA, cluster_id),)
            )
        except grpc.RpcError as error:
            return error
        return response


def refusals(cluster: ProcessCluster, node_id: str) -> list[dict[str, object]]:
    """The node's log lines about peers of another cluster."""
    found = []
    for line in cluster.node_log(node_id).splitlines():
        if "peer_of_another_cluster" in line:
            found.append(json.loads(line))
    return found


def wait_for_refusals(
    cluster: ProcessCluster, node_id: str, theirs: str, timeout: float = 20.0
) -> None:
    cluster.wait_until(
        lambda: any(r["theirs"] == theirs for r in refusals(cluster, node_id)),
        timeout,
        f"{node_id} refuses calls of cluster {theirs}",
    )


def b_state(b: ProcessCluster) -> dict[str, bytes]:
    """B's data, read once one of n1 and n2 (never the stray n3) leads."""
    b.wait_for_leader(among=b.ids[:2])
    return scan_among(b, b.ids[:2])


def scan_among(cluster: ProcessCluster, ids: list[str]) -> dict[str, bytes]:
    with cluster.client(timeout=30, ids=ids) as client:
        return dict(client.scan(page_size=PAGE))


def start_alone(cluster: ProcessCluster, node_id: str) -> None:
    """Start one node on its ports (start_nodes would pick new ports for all
    on a clash, and restore them all)."""
    cluster.start(node_id)
    assert cluster.wait_serving([node_id]) == [], f"{node_id}'s port was taken"


def test_restored_cluster_refuses_the_old_clusters_nodes_and_other_ids(tmp_path: Path) -> None:
    origin = tmp_path / "origin.backup"
    write_state_backup(origin, keys=2_000, notes=20)
    with RestoredCluster(tmp_path / "A", origin) as a:
        a.wait_for_leader()
        with a.client() as client:
            client.put("written-in-a", b"1")
        old_id = a.cluster_id()
        backup_a = tmp_path / "a.backup"
        assert main(["backup", "--endpoints", a.endpoints(), "--out", str(backup_a)]) == 0
        # A copy of an old node's data, taken while that node is stopped.
        a.stop("n3")
        old_node = tmp_path / "old-n3"
        shutil.copytree(a.data_dir("n3"), old_node)
        (old_node / "ports.json").unlink(missing_ok=True)

    with RestoredCluster(tmp_path / "B", backup_a) as b:
        b.wait_for_leader()
        new_id = b.cluster_id()
        assert new_id != old_id
        for node_id in b.ids:  # the restored nodes accept each other
            b.wait_caught_up(node_id)
            assert refusals(b, node_id) == []
        # What B's nodes answer a node of the old cluster.
        refused = info_call(b.grpc["n1"], old_id)
        assert isinstance(refused, grpc.RpcError)
        assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"belongs to cluster {old_id!r}" in (refused.details() or "")
        accepted = info_call(b.grpc["n1"], new_id)
        assert isinstance(accepted, raft_pb2.InfoResponse)
        assert accepted.cluster_id == new_id

        if b.wait_for_leader() == "n3":  # n3 is about to be replaced: lead from n1
            with b.client() as client:
                client.transfer_leadership("n1")
        state_before = b_state(b)
        assert state_before["written-in-a"] == b"1"

        # The old node, started in B's place n3 with B's --peers.
        b.stop("n3")
        shutil.rmtree(b.data_dir("n3"))
        shutil.copytree(old_node, b.data_dir("n3"))
        start_alone(b, "n3")
        wait_for_refusals(b, "n1", old_id)  # B refuses it ...
        wait_for_refusals(b, "n3", new_id)  # ... and it refuses B's leader
        # Its own log says why its calls fail (the status B's nodes end them
        # with), not only that they do.
        b.wait_until(
            lambda: "FAILED_PRECONDITION: peer refused: it belongs to cluster" in b.node_log("n3"),
            timeout=30,
            what="the stray node logs why B refuses it",
        )
        time.sleep(10 * b.election_timeout)  # let it campaign and time out, in vain
        # ... and never takes a refusing peer for reachable again.
        assert '"peer_reachable"' not in b.node_log("n3")
        stray = b.status("n3")
        assert stray is not None and stray.cluster_id == old_id
        assert stray.role != admin_pb2.ROLE_LEADER and stray.leader not in ("n1", "n2")
        # B's own nodes may hold an election on a loaded machine (the term
        # then moves), but only among themselves: b_state finds the leader
        # among n1 and n2, and the refusals above are the stray's calls.
        state_after = b_state(b)
        assert state_after == state_before
        with b.client(ids=b.ids[:2]) as client:
            client.put("still-serving", b"yes")

        # An empty node with another --cluster-id, in n3's place.
        b.kill("n3")
        shutil.rmtree(b.data_dir("n3"))
        b.extra_args = ["--cluster-id", "c-someone-else"]
        start_alone(b, "n3")
        b.extra_args = []
        wait_for_refusals(b, "n1", "c-someone-else")
        wait_for_refusals(b, "n3", new_id)
        time.sleep(5 * b.election_timeout)
        empty = b.status("n3")
        # Its log holds its own first entry only (B's is past 2000), no leader.
        assert empty is not None and empty.last_index <= 1 and not empty.leader
        state_after = b_state(b)
        assert state_after == {**state_before, "still-serving": b"yes"}

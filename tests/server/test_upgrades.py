"""Application upgrades that never split the replicas (issue 11), on real
node processes.

The application (tests/server/apps/board_v1.py, board_v2.py) is the same
model in two versions of its code: version 2 changes the state's shape in
``upgrade`` and adds a command (``add_by``, ``since=2``).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest

from ramraft.client import Client
from ramraft.client.errors import RamraftError
from ramraft.proto import admin_pb2, kv_pb2, kv_pb2_grpc
from tests.server.procs import ProcessCluster

V1 = "tests.server.apps.board_v1:app"
V2 = "tests.server.apps.board_v2:app"
# Safety timeouts (not measurements): generous for a loaded 2-core machine.
SWITCH_WAIT = 60.0


class AppCluster(ProcessCluster):
    """Each node runs the --app its entry in ``apps`` names."""

    def __init__(self, root: Path, apps: dict[str, str], **kwargs: object) -> None:
        self.apps = dict(apps)
        super().__init__(root, http=True, **kwargs)  # type: ignore[arg-type]

    def argv(self, node_id: str) -> list[str]:
        return [*super().argv(node_id), "--app", self.apps[node_id]]

    def replace(self, node_id: str, app: str) -> None:
        """A rolling update of one pod: SIGTERM, new code, same data."""
        self.stop(node_id)
        self.apps[node_id] = app
        self.start_nodes([node_id])


def http(address: str, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://{address}{path}", data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        text = e.read()
        try:
            return e.code, json.loads(text)
        except ValueError:
            return e.code, {"detail": text.decode(errors="replace")}


def node_statuses(cluster: ProcessCluster) -> dict[str, admin_pb2.NodeStatus]:
    found = {}
    for node_id in cluster.ids:
        status = cluster.status(node_id)
        if status is not None:
            found[node_id] = status
    return found


class Load:
    """Steady writes while nodes are replaced: key-value puts through the
    client, and notes through the application's pages of every node."""

    def __init__(self, cluster: AppCluster) -> None:
        self.cluster = cluster
        self.stop = threading.Event()
        self.acked_keys: dict[str, bytes] = {}
        self.acked_notes: list[str] = []
        self.errors = 0
        self.threads = [
            threading.Thread(target=self._puts, daemon=True),
            threading.Thread(target=self._notes, daemon=True),
        ]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def _puts(self) -> None:
        with Client(self.cluster.endpoints(), timeout=10) as client:
            n = 0
            while not self.stop.is_set():
                key, value = f"load/{n:06d}", f"v{n}".encode()
                try:
                    client.put(key, value)
                    self.acked_keys[key] = value
                except RamraftError:
                    self.errors += 1
                n += 1
                time.sleep(0.005)

    def _notes(self) -> None:
        n = 0
        while not self.stop.is_set():
            node = self.cluster.ids[n % len(self.cluster.ids)]
            text = f"note-{n}"
            try:
                status, _ = http(self.cluster.http[node], "POST", "/app/add", text.encode())
            except OSError:
                status = 0
            if status == 200:
                self.acked_notes.append(text)
            else:
                self.errors += 1
            n += 1
            time.sleep(0.02)


def try_add_by(cluster: AppCluster, node: str) -> tuple[int, dict]:
    body = json.dumps({"text": "signed", "author": "ann"}).encode()
    return http(cluster.http[node], "POST", "/app/add_by", body)


def test_a_rolling_upgrade_switches_versions_without_losing_or_splitting(tmp_path: Path) -> None:
    cluster = AppCluster(tmp_path, {i: V1 for i in ("n1", "n2", "n3")})
    with cluster:
        with Load(cluster) as load:
            cluster.wait_for_leader()
            time.sleep(0.5)
            # StatefulSet order: the highest ordinal first.
            for step, node in enumerate(("n3", "n2", "n1")):
                cluster.replace(node, V2)
                cluster.wait_caught_up(node)
                if step < 2:
                    # Some nodes still run version 1: the new command is
                    # refused before it is proposed, on a node with new code.
                    status, answer = try_add_by(cluster, node)
                    assert status == 409, answer
                    assert "needs app version 2" in answer["detail"], answer
                    assert all(s.app_version == 1 for s in node_statuses(cluster).values())
            # Every node runs version 2: the leader switches, at one index.
            cluster.wait_until(
                lambda: (
                    len(node_statuses(cluster)) == 3
                    and all(s.app_version == 2 for s in node_statuses(cluster).values())
                ),
                timeout=SWITCH_WAIT,
                what="every node switched to app version 2",
            )
            status, answer = try_add_by(cluster, "n2")
            assert status == 200, answer
            time.sleep(0.5)
        leader = cluster.wait_for_leader()
        with Client(cluster.endpoints(), timeout=10) as client:
            for key, value in load.acked_keys.items():
                assert client.get(key) == value, f"acknowledged {key} lost"
            verdict = client.check_state(timeout=60)
        _, board = http(cluster.http[leader], "GET", "/app/notes")
    assert len(load.acked_keys) > 50 and len(load.acked_notes) > 20, (
        len(load.acked_keys),
        len(load.acked_notes),
    )
    assert not verdict.diverged and len({d.digest for d in verdict.digests}) == 1, verdict
    assert {d.node for d in verdict.digests} == {"n1", "n2", "n3"}
    texts = [note["text"] for note in board["notes"]]
    for acked in load.acked_notes:
        assert acked in texts, f"acknowledged note {acked} lost"
    # The upgrade changed the shape of every note written before it.
    assert all(isinstance(note, dict) for note in board["notes"])
    assert {"text": "signed", "author": "ann"} in board["notes"]
    assert board["active"] == 2


def test_old_code_halts_at_a_new_entry_and_resumes_with_new_code(tmp_path: Path) -> None:
    """A node that meets an entry its code cannot apply stops there: not
    ready, says why, serves no reads; restarted with newer code it catches up."""
    cluster = AppCluster(tmp_path, {i: V2 for i in ("n1", "n2", "n3")})
    with cluster:
        cluster.wait_for_leader()
        cluster.wait_until(
            lambda: all(s.app_version == 2 for s in node_statuses(cluster).values()),
            timeout=SWITCH_WAIT,
            what="app version 2",
        )
        assert try_add_by(cluster, "n1")[0] == 200
        # A rollback of n3 to version-1 code: its log holds the switch.
        cluster.replace("n3", V1)

        def halted() -> bool:
            status = cluster.status("n3")
            return status is not None and bool(status.halted)

        cluster.wait_until(halted, timeout=30, what="n3 halted")
        status = cluster.status("n3")
        assert status is not None
        assert "supports up to version 1" in status.halted, status.halted
        assert status.role != admin_pb2.ROLE_LEADER
        code, ready = http(cluster.http["n3"], "GET", "/readyz")
        assert code == 503 and ready["ready"] is False
        assert http(cluster.http["n3"], "GET", "/healthz")[0] == 200  # alive: no restart loop
        # It serves no reads, not even stale ones, and takes no writes: each
        # is refused at once with the reason (UNAVAILABLE, HTTP 503), not
        # left to wait out its deadline for an index n3 will never apply.
        with grpc.insecure_channel(cluster.grpc["n3"]) as channel:
            kv = kv_pb2_grpc.KVStub(channel)
            for call, request in (
                (kv.Get, kv_pb2.GetRequest(key="anything")),
                (kv.Get, kv_pb2.GetRequest(key="anything", consistency=kv_pb2.SERIALIZABLE)),
                (kv.Range, kv_pb2.RangeRequest(prefix="")),
                (kv.Put, kv_pb2.PutRequest(key="on-halted", value=b"no")),
            ):
                with pytest.raises(grpc.RpcError) as refused:
                    call(request, timeout=10)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value
                assert "stopped applying the log" in refused.value.details()
        for path in ("/v1/kv/anything", "/v1/kv/anything?consistency=serializable"):
            code, body = http(cluster.http["n3"], "GET", path)
            assert code == 503 and "stopped applying the log" in body["detail"], body
        assert "ramraft_apply_halted 1.0" in _metrics(cluster, "n3")
        # The others keep serving, and n3 never takes over; a client given
        # n3 alone goes on to the leader n3 names.
        with Client(cluster.grpc["n3"], timeout=10) as client:
            client.put("after-halt", b"yes")
            assert client.get("after-halt") == b"yes"
        leader = cluster.wait_for_leader(among=["n1", "n2"])
        cluster.stop(leader)
        new_leader = cluster.wait_for_leader(among=[n for n in ("n1", "n2") if n != leader])
        assert new_leader != "n3"
        cluster.start_nodes([leader])
        # New code again: it resumes from its own log.
        cluster.replace("n3", V2)
        caught_up = cluster.wait_caught_up("n3")
        assert not caught_up.halted and caught_up.app_version == 2
        with Client(cluster.grpc["n3"], timeout=10) as client:
            assert client.get("after-halt") == b"yes"


def test_the_upgrade_hold_is_replicated_and_survives_a_new_leader(tmp_path: Path) -> None:
    cluster = AppCluster(tmp_path, {i: V1 for i in ("n1", "n2", "n3")})
    with cluster:
        cluster.wait_for_leader()
        with Client(cluster.endpoints(), timeout=10) as client:
            client.set_upgrade_hold(True)
        for node in ("n3", "n2", "n1"):
            cluster.replace(node, V2)
        cluster.wait_for_leader()
        killed = cluster.kill_leader()
        cluster.wait_for_leader()
        cluster.start_nodes([killed])  # a switch waits until every member can answer
        cluster.wait_until(
            lambda: (
                len(node_statuses(cluster)) == 3
                and all(s.upgrade_hold for s in node_statuses(cluster).values())
            ),
            what="the hold everywhere",
        )
        time.sleep(3)  # several steward rounds: still no switch while held
        assert all(s.app_version == 1 for s in node_statuses(cluster).values())
        with Client(cluster.endpoints(), timeout=10) as client:
            client.set_upgrade_hold(False)
        cluster.wait_until(
            lambda: all(s.app_version == 2 for s in node_statuses(cluster).values()),
            timeout=SWITCH_WAIT,
            what="the switch after release",
        )


def _metrics(cluster: ProcessCluster, node: str) -> str:
    with urllib.request.urlopen(f"http://{cluster.http[node]}/metrics", timeout=10) as r:
        return r.read().decode()


def test_add_member_refuses_a_node_whose_code_cannot_run_the_active_version(
    tmp_path: Path,
) -> None:
    """A cluster at app version 2 refuses to add a node running version-1
    code (it would halt at once), and takes one running version 2."""
    cluster = AppCluster(tmp_path, {i: V2 for i in ("n1", "n2", "n3")})
    with cluster:
        cluster.wait_for_leader()
        cluster.wait_until(
            lambda: all(s.app_version == 2 for s in node_statuses(cluster).values()),
            timeout=SWITCH_WAIT,
            what="app version 2",
        )
        extra = AppCluster(tmp_path / "extra", {"n4": V1}, nodes=1)
        extra.ids = ["n4"]
        extra.grpc = {"n4": extra.grpc.pop(next(iter(extra.grpc)))}
        extra.peers = cluster.peers + f",n4={extra.grpc['n4']}"
        extra.http = {"n4": "127.0.0.1:0"}
        extra.extra_args = ["--join"]
        with extra:
            with Client(cluster.endpoints(), timeout=20) as client:
                with pytest.raises(RamraftError, match="supports app version 1"):
                    client.add_member("n4", extra.grpc["n4"])
                members = {m.id for m in client.status().members}
            assert "n4" not in members
            extra.replace("n4", V2)
            with Client(cluster.endpoints(), timeout=60) as client:
                client.add_member("n4", extra.grpc["n4"])
            leader = cluster.status(cluster.wait_for_leader())
            assert leader is not None
            extra.wait_applied("n4", leader.commit_index, timeout=60)
            caught_up = extra.status("n4")
            assert caught_up is not None
            assert caught_up.app_version == 2 and not caught_up.halted

"""The divergence alarm (issue 11): nodes compare digests of their whole
state at state-check entries; a node whose state differs from the
majority's is named, on every node, in a way an operator cannot miss."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

from ramraft.client import Client
from ramraft.proto import admin_pb2
from ramraft.tools.cli import main
from tests.server.procs import ProcessCluster

DICE = "tests.server.apps.dice:app"
FLAVOUR = "tests.server.apps.flavour:app"


def post(address: str, path: str) -> int:
    request = urllib.request.Request(f"http://{address}{path}", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=15) as response:
        return int(json.loads(response.read())["count"])


def get_text(address: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=15) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def alarm(cluster: ProcessCluster) -> dict[str, admin_pb2.NodeStatus]:
    statuses = {n: cluster.status(n) for n in cluster.ids}
    return {n: s for n, s in statuses.items() if s is not None and s.diverged}


def test_a_nondeterministic_command_is_caught_within_a_few_checks(tmp_path: Path) -> None:
    """Dice.roll() calls random.random() inside the command: every node
    holds other rolls. With a state check every 10 entries the alarm is up
    after a few dozen rolls, on every node."""
    cluster = ProcessCluster(
        tmp_path, http=True, extra_args=["--app", DICE, "--check-entries", "10"]
    )
    with cluster:
        leader = cluster.wait_for_leader()
        for _ in range(30):
            post(cluster.http[leader], "/app/roll")
        cluster.wait_until(
            lambda: len(alarm(cluster)) == 3, timeout=60, what="the alarm on every node"
        )
        status = next(iter(alarm(cluster).values()))
        # Three different states: no majority, so every node is named.
        assert sorted(status.diverged) == ["n1", "n2", "n3"] and status.diverged_at > 0
        for node in cluster.ids:
            assert "ramraft_state_divergence 1.0" in get_text(cluster.http[node], "/metrics")[1]
            code, ready = get_text(cluster.http[node], "/readyz")
            assert code == 503, ready  # a diverged node is not ready
        log = "".join(cluster.node_log(n) for n in cluster.ids)
        assert '"event": "state_divergence"' in log and "check_index" in log
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            main(["status", "--endpoints", cluster.endpoints(), "--timeout", "5"])
        assert "DIVERGED: n1, n2, n3" in buffer.getvalue()
        # No state had a majority: nobody is barred from leading, so the
        # cluster can still be repaired through its leader.
        cluster.wait_for_leader()


def test_a_deterministic_workload_never_raises_it(tmp_path: Path) -> None:
    """Key-value writes from several clients, with state checks every 50
    entries and on demand: every node always agrees."""
    cluster = ProcessCluster(tmp_path, extra_args=["--check-entries", "50"])
    with cluster:
        cluster.wait_for_leader()

        def writer(n: int) -> None:
            with Client(cluster.endpoints(), timeout=10) as client:
                for i in range(150):
                    client.put(f"k{i % 37}", f"{n}-{i}".encode())
                    if i % 10 == 0:
                        client.cas(f"k{i % 37}", f"{n}-{i}".encode(), b"swapped")

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with Client(cluster.endpoints(), timeout=30) as client:
            verdict = client.check_state(timeout=30)
        assert not verdict.diverged, verdict
        assert len(verdict.digests) == 3 and len({d.digest for d in verdict.digests}) == 1
        assert not alarm(cluster)
        # The periodic checks ran too, and found nothing.
        log = "".join(cluster.node_log(n) for n in cluster.ids)
        assert "state_divergence" not in log


class FlavourCluster(ProcessCluster):
    """n1 runs with another FLAVOUR in its environment than n2 and n3."""

    flavours: dict[str, str] = {"n1": "odd"}
    joining: set[str] = set()

    def argv(self, node_id: str) -> list[str]:
        argv = super().argv(node_id)
        return [*argv, "--join"] if node_id in self.joining else argv

    def start(self, node_id: str):  # type: ignore[no-untyped-def]
        saved = self.env
        self.env = dict(saved, FLAVOUR=self.flavours.get(node_id, "plain"))
        try:
            return super().start(node_id)
        finally:
            self.env = saved


def test_a_minority_node_is_named_barred_from_leading_and_repaired_by_a_wipe(
    tmp_path: Path,
) -> None:
    cluster = FlavourCluster(
        tmp_path, http=True, extra_args=["--app", FLAVOUR, "--check-entries", "0"]
    )
    with cluster:
        cluster.wait_for_leader()
        with Client(cluster.endpoints(), timeout=10) as client:
            client.transfer_leadership("n1")
        assert cluster.wait_for_leader() == "n1"
        for _ in range(5):
            post(cluster.http["n1"], "/app/taste")
        with Client(cluster.endpoints(), timeout=30) as client:
            verdict = client.check_state(timeout=30)
        assert list(verdict.diverged) == ["n1"], verdict
        # The leader was the odd one out: it steps down and is not elected.
        cluster.wait_until(
            lambda: cluster.leader_id() in ("n2", "n3"), timeout=30, what="a new leader"
        )
        cluster.wait_until(
            lambda: all(n in alarm(cluster) for n in cluster.ids), what="the alarm everywhere"
        )
        status = cluster.status("n2")
        assert status is not None and list(status.diverged) == ["n1"]
        assert get_text(cluster.http["n1"], "/readyz")[0] == 503
        assert get_text(cluster.http["n2"], "/readyz")[0] == 200
        with Client(cluster.endpoints(), timeout=10) as client, contextlib.suppress(Exception):
            client.transfer_leadership("n1")  # refused: n1 may not lead
        assert cluster.wait_for_leader() != "n1"
        # The runbook: remove the diverged node, wipe it, start it empty (its
        # bug fixed) and add it back: it copies the state from the leader.
        # A state check then clears the alarm.
        with Client(cluster.endpoints(["n2", "n3"]), timeout=30) as client:
            client.remove_member("n1")
        cluster.kill("n1")
        shutil.rmtree(cluster.data_dir("n1"))
        cluster.flavours = {}
        cluster.joining = {"n1"}
        cluster.start_nodes(["n1"])
        with Client(cluster.endpoints(["n2", "n3"]), timeout=30) as client:
            client.add_member("n1", cluster.grpc["n1"])
        cluster.wait_caught_up("n1")
        with Client(cluster.endpoints(), timeout=30) as client:
            verdict = client.check_state(timeout=30)
        assert not verdict.diverged and len({d.digest for d in verdict.digests}) == 1
        cluster.wait_until(lambda: not alarm(cluster), what="the alarm cleared")


def test_the_alarm_advises_the_readme_runbook_not_a_wipe() -> None:
    """The log line, the status page and the CLI said "wipe each one's data
    directory and restart it": restarted empty under its old membership a
    node forgets the votes it gave (the README's runbook removes and adds it
    back), and when every node is named (a command that reads the clock) it
    wiped the whole cluster's data. They follow the runbook now."""
    from ramraft.server.runtime.steward import divergence_action
    from ramraft.server.web.status_page import render_status_page
    from ramraft.tools.cli import _write_cluster_lines

    minority = divergence_action(True)
    assert "members remove" in minority and "ramraft members add" in minority
    everyone = divergence_action(False)
    assert "no state had a majority" in everyone and "backup" in everyone
    for text in (minority, everyone, render_status_page({"node": {"id": "n1"}})):
        assert "wipe" not in text.lower()
    assert "restore the last good backup" in render_status_page({"node": {"id": "n1"}})
    node = {"id": "n1", "cluster_id": "c", "applied_index": 9, "diverged_at": 7}
    nodes = [dict(node, id=n, diverged=["n1", "n2", "n3"]) for n in ("n1", "n2", "n3")]
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        _write_cluster_lines(nodes)
    assert "DIVERGED: n1, n2, n3 each hold their own state, none had a majority" in (
        buffer.getvalue()
    )
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        _write_cluster_lines([dict(n, diverged=["n2"]) for n in nodes])
    assert "DIVERGED: n2 hold other state than the majority" in buffer.getvalue()

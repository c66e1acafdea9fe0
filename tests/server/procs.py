"""Real ``ramraft node`` processes on loopback, for integration tests.

    with ProcessCluster(tmp_path, nodes=3) as cluster:
        cluster.wait_for_leader()
        client = cluster.client()
        client.put("k", b"v")
        cluster.kill(cluster.leader_id())        # SIGKILL
        cluster.start("n1")                      # same id, same data dir

Ports: gRPC ports are picked free at construction, and picking is a race
with everything else on the machine (another test run may take a port
between our pick and the node's bind). A node refuses a taken port with
exit status 4, so ``__enter__`` (``start_nodes``) starts the nodes, waits
until each serves (its ``<data-dir>/ports.json``), and on a refusal kills
them all, picks new ports and starts again. HTTP ports need no picking: the
nodes bind port 0 and ``self.http`` is read from ports.json (and then pinned,
so that a restarted node keeps its address). Every process is killed and
reaped on exit, even when the test fails; each node's stderr goes to a log
file in its data directory and is printed by ``dump_logs()`` (on failure).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from ramraft.client import Client
from ramraft.proto import admin_pb2
from ramraft.tools.bench import free_ports
from ramraft.tools.node_cli import EXIT_PORT_IN_USE

REPO = Path(__file__).resolve().parents[2]
PORT_ATTEMPTS = 5  # sets of ports tried before giving up


class ProcessCluster:
    def __init__(
        self,
        root: Path,
        nodes: int = 3,
        *,
        http: bool = False,
        extra_args: list[str] | None = None,
        tick_ms: int = 10,
        election_ticks: int = 30,
        heartbeat_ticks: int = 3,
        env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.ids = [f"n{i + 1}" for i in range(nodes)]
        self.grpc: dict[str, str] = {}
        self.peers = ""
        # Port 0 until the node reports the port it bound (wait_serving).
        self.http = {i: "127.0.0.1:0" for i in self.ids} if http else {}
        self.pick_ports()
        self.extra_args = list(extra_args or [])
        self.tick_ms = tick_ms
        self.election_ticks = election_ticks
        self.heartbeat_ticks = heartbeat_ticks
        self.env = dict(os.environ, RAMRAFT_LOG_LEVEL="info", PYTHONPATH=str(REPO), **(env or {}))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: dict[str, object] = {}

    # ---- life cycle ---------------------------------------------------------------------------

    def pick_ports(self) -> None:
        """Free-looking gRPC ports for every node (subclasses with more
        ports pick those here too)."""
        ports = free_ports(len(self.ids))
        self.grpc = {i: f"127.0.0.1:{p}" for i, p in zip(self.ids, ports, strict=True)}
        self.peers = ",".join(f"{i}={a}" for i, a in self.grpc.items())

    def __enter__(self) -> ProcessCluster:
        self.start_nodes(self.ids)
        return self

    def start_nodes(self, ids: list[str]) -> None:
        """Start ``ids`` and wait until each serves; when one finds a port
        taken, stop them all and try again with new ports."""
        for _ in range(PORT_ATTEMPTS):
            for node_id in ids:
                self.start(node_id)
            if not self.wait_serving(ids):
                return
            for node_id in ids:
                self.kill(node_id)
            self.pick_ports()
        self.dump_logs()
        raise AssertionError(f"{PORT_ATTEMPTS} sets of ports were all taken")

    def wait_serving(self, ids: list[str], timeout: float = 60.0) -> list[str]:
        """Wait until each of ``ids`` serves (its ports.json names its pid)
        or exits; pins the HTTP ports reported. Returns the nodes that
        exited because a port was taken."""
        refused: list[str] = []
        deadline = time.monotonic() + timeout
        for node_id in ids:
            proc = self.procs[node_id]
            while True:
                ports = self._ports_file(node_id)
                if ports is not None and ports["pid"] == proc.pid:
                    if self.http:
                        self.http[node_id] = ports["http"]
                    break
                if proc.poll() is not None:
                    if proc.returncode == EXIT_PORT_IN_USE:
                        refused.append(node_id)
                    break
                if time.monotonic() > deadline:
                    self.dump_logs()
                    raise AssertionError(f"{node_id} did not start serving within {timeout}s")
                time.sleep(0.05)
        return refused

    def _ports_file(self, node_id: str) -> dict[str, object] | None:
        try:
            ports: dict[str, object] = json.loads(
                (self.data_dir(node_id) / "ports.json").read_text()
            )
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return ports

    def listening(self, node_id: str) -> dict[str, object]:
        """The node's ports.json: id, pid, grpc, peer, http, health."""
        ports = self._ports_file(node_id)
        assert ports is not None, f"{node_id} has no ports.json (not serving)"
        return ports

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self.dump_logs()
        for node_id in list(self.procs):
            self.kill(node_id)

    def data_dir(self, node_id: str) -> Path:
        return self.root / node_id

    def argv(self, node_id: str) -> list[str]:
        argv = [sys.executable, "-m", "ramraft", "node", "--id", node_id]
        argv += ["--peers", self.peers, "--data-dir", str(self.data_dir(node_id))]
        argv += ["--tick-ms", str(self.tick_ms), "--election-ticks", str(self.election_ticks)]
        argv += ["--heartbeat-ticks", str(self.heartbeat_ticks)]
        argv += self.extra_args
        if self.http:
            argv += ["--http", self.http[node_id]]
        return argv

    def start(self, node_id: str) -> subprocess.Popen[bytes]:
        assert node_id not in self.procs or self.procs[node_id].poll() is not None
        self.data_dir(node_id).mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir(node_id) / "node.log", "ab")  # noqa: SIM115 - closed in kill()
        self._logs[node_id] = log
        proc = subprocess.Popen(
            self.argv(node_id), stdout=log, stderr=log, env=self.env, cwd=str(REPO)
        )
        self.procs[node_id] = proc
        return proc

    def kill(self, node_id: str, sig: int = signal.SIGKILL, timeout: float = 20.0) -> int | None:
        """Send ``sig`` and wait for the process to exit (SIGKILL after
        ``timeout``); returns its exit code."""
        proc = self.procs.get(node_id)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log = self._logs.pop(node_id, None)
        if log is not None:
            log.close()  # type: ignore[attr-defined]
        del self.procs[node_id]
        return proc.returncode

    def stop(self, node_id: str, timeout: float = 20.0) -> int | None:
        """SIGTERM: a graceful stop."""
        return self.kill(node_id, signal.SIGTERM, timeout)

    def restart(self, node_id: str) -> subprocess.Popen[bytes]:
        """Start a node that was killed or stopped again, from its data directory."""
        if node_id in self.procs:
            self.kill(node_id)
        return self.start(node_id)

    def kill_leader(self, sig: int = signal.SIGKILL) -> str:
        """Kill (or signal) the current leader; returns its id."""
        leader = self.wait_for_leader()
        self.kill(leader, sig)
        return leader

    def alive(self) -> list[str]:
        return [i for i, p in self.procs.items() if p.poll() is None]

    # ---- looking ------------------------------------------------------------------------------

    @property
    def election_timeout(self) -> float:
        """Seconds: election_ticks * tick_ms (followers wait a random time in
        [1, 2) of it without hearing from a leader before campaigning)."""
        return self.election_ticks * self.tick_ms / 1000

    def node_log(self, node_id: str) -> str:
        path = self.data_dir(node_id) / "node.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def endpoints(self, ids: list[str] | None = None) -> str:
        return ",".join(self.grpc[i] for i in (ids or self.ids))

    def client(self, timeout: float = 10.0, ids: list[str] | None = None) -> Client:
        return Client(self.endpoints(ids), timeout=timeout)

    def status(self, node_id: str) -> admin_pb2.NodeStatus | None:
        try:
            with Client(self.grpc[node_id], timeout=1.0) as c:
                return c.status(endpoint=self.grpc[node_id]).node
        except Exception:
            return None

    def leader_id(self, among: list[str] | None = None) -> str | None:
        for node_id in among or self.alive():
            s = self.status(node_id)
            if s is not None and s.role == admin_pb2.ROLE_LEADER:
                return node_id
        return None

    def wait_for_leader(self, timeout: float = 20.0, among: list[str] | None = None) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.leader_id(among)
            if leader is not None:
                return leader
            time.sleep(0.05)
        self.dump_logs()
        raise AssertionError(f"no leader within {timeout}s")

    def wait_applied(self, node_id: str, index: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.status(node_id)
            if s is not None and s.applied_index >= index:
                return
            time.sleep(0.05)
        self.dump_logs()
        raise AssertionError(f"{node_id} did not apply index {index} within {timeout}s")

    def wait_until(
        self, predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition"
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        self.dump_logs()
        raise AssertionError(f"{what}: not reached within {timeout}s")

    def wait_for_kv2(self, timeout: float = 60.0) -> None:
        """Wait until every live node runs key-value version 2. The leader's
        steward names the cluster, then switches it once every node answers
        (server/runtime/steward.py), so a node at version 2 has applied the
        cluster's name too: a test that compares answers taken at two
        moments must not straddle those entries (before them an answer has
        no cluster id, revision or key metadata)."""

        def switched() -> bool:
            return all(
                (s := self.status(i)) is not None and s.kv_version == 2 for i in self.alive()
            )

        self.wait_until(switched, timeout, "the switch to key-value version 2")

    def wait_caught_up(self, node_id: str, timeout: float = 30.0) -> admin_pb2.NodeStatus:
        """Wait until ``node_id`` has applied everything the leader had
        committed when the wait started; returns its status then."""
        leader = self.wait_for_leader(timeout)
        status = self.status(leader)
        assert status is not None, f"leader {leader} does not answer Status"
        self.wait_applied(node_id, status.commit_index, timeout)
        caught_up = self.status(node_id)
        assert caught_up is not None
        return caught_up

    def dump_logs(self, lines: int = 40) -> None:
        for node_id in self.ids:
            path = self.data_dir(node_id) / "node.log"
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                print(f"---- {node_id} ({path}) ----", file=sys.stderr)
                print("\n".join(tail), file=sys.stderr)

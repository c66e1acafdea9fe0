"""Three `ramraft node` processes in the lab, a nemesis, and what it cost.

`LabCluster` runs the nodes in ChaosNet's namespaces exactly as the
StatefulSet runs the pods (node_env(): id from the pod name, peers by their
headless-Service DNS names on the peer port 7001, clients on 7000, a
persistent data dir), runs `ramraft chaos` in the client namespace, and
watches the nodes from the test process over the lab bridge (host_access):
Admin.Status and grpc.health.v1 on each node's address. The nft rules of a
partition name lab hosts only, so this view is never cut off; a paused node
just times out.

`Nemesis` injects one fault at a time, heals it, and waits until every node
is Ready again (health "" SERVING: knows a leader, has applied the commit
index), recording start, heal and ready times on CLOCK_MONOTONIC, the clock
of the recorded history. `fault_windows()` then reads the history to measure,
per fault, how long writes paused and how soon after the heal the cluster
served a write again.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ramraft.client import Client, TLSOptions
from ramraft.proto import admin_pb2
from ramraft.tools.certs import k8s_node_hosts, make_cluster_certs, node_security_env
from ramraft.tools.history import Record, load_history, longest_write_pause
from ramraft.tools.tokens import make_token
from tests.chaos.netns import (
    CONTAINER_DATA_DIR,
    CONTAINER_UID,
    GRPC_PORT,
    HTTP_PORT,
    ChaosNet,
    ManagedProcess,
)

log = structlog.get_logger("ramraft.chaos.cluster")

REPO = Path(__file__).resolve().parents[2]
WORKLOAD = "workload"

# Fault kinds, in the words of the issue.
KILL_LEADER = "kill-leader"  # SIGKILL the leader, restart it with its data
KILL_FOLLOWER = "kill-follower"
PAUSE_LEADER = "pause-leader"  # SIGSTOP ... SIGCONT: a long GC pause
PAUSE_FOLLOWER = "pause-follower"
PARTITION_FOLLOWER = "partition-follower"  # one node cut off from its peers
PARTITION_LEADER = "partition-leader"  # the leader split from the majority
KILL_TWO = "kill-two"  # two nodes at once: the quorum is gone
KILL_ALL = "kill-all"
ALL_FAULTS: tuple[str, ...] = (
    KILL_LEADER,
    KILL_FOLLOWER,
    PAUSE_LEADER,
    PAUSE_FOLLOWER,
    PARTITION_FOLLOWER,
    PARTITION_LEADER,
    KILL_TWO,
    KILL_ALL,
)
LEADER_FAULTS = frozenset({KILL_LEADER, PAUSE_LEADER, PARTITION_LEADER})


HEALTH_PORT = 7002


@dataclass
class LabSecurity:
    """Certificates (`ramraft certs`, named as in a StatefulSet, plus the
    lab's bridge addresses) and a token file, in the lab's work dir."""

    tls_dir: Path
    tokens_file: Path
    token: str

    @staticmethod
    def create(net: ChaosNet) -> LabSecurity:
        tls_dir = net.workdir / "tls"
        ips = [net.host(n).ip for n in net.node_names]
        make_cluster_certs(
            tls_dir, k8s_node_hosts(net.k8s_namespace, len(net.node_names), extra_hosts=ips)
        )
        token = make_token()
        tokens_file = net.workdir / "tokens"
        tokens_file.write_text(f"admin lab {token}\n")
        os.chmod(tokens_file, 0o600)
        return LabSecurity(tls_dir, tokens_file, token)

    def node_env(self, name: str) -> dict[str, str]:
        return node_security_env(
            name,
            str(self.tls_dir),
            str(self.tokens_file),
            health_listen=f"0.0.0.0:{HEALTH_PORT}",
        )

    def client_tls(self) -> TLSOptions:
        return TLSOptions.from_files(self.tls_dir / "ca.pem")

    def workload_args(self) -> list[str]:
        return ["--tls-ca", str(self.tls_dir / "ca.pem"), "--token", self.token]


class LabCluster:
    """The three nodes of a ChaosNet (which must have host_access=True)."""

    def __init__(
        self,
        net: ChaosNet,
        *,
        env: dict[str, str] | None = None,
        python: str = sys.executable,
        image: str | None = None,
        secure: bool = False,
    ) -> None:
        """`image`: run the nodes (and the workload) as containers of it,
        with the image's own entrypoint (`ramraft node`), as the pods run.
        `secure`: as k8s/ deploys it -- TLS on every port (mutual on the peer
        port), a token required, probes on the plaintext health port."""
        if not net.host_access:
            raise ValueError("LabCluster watches the nodes over the bridge: use host_access=True")
        self.net = net
        self.security = LabSecurity.create(net) if secure else None
        self.python = python
        self.extra_env = dict(env or {})
        self.image = image
        self.names: tuple[str, ...] = net.node_names
        self.down: set[str] = set()  # killed and not restarted
        self.paused: set[str] = set()
        self._clients: dict[str, Client] = {}
        self._channels: dict[str, grpc.Channel] = {}

    # -- processes ---------------------------------------------------------------

    def node_env(self, name: str) -> dict[str, str]:
        return {
            **self.net.node_env(name),
            "PYTHONPATH": str(REPO),
            "RAMRAFT_LOG_LEVEL": "info",
            **(self.security.node_env(name) if self.security else {}),
            **self.extra_env,
        }

    def start(self, name: str) -> ManagedProcess:
        if name in self.net.procs:
            proc = self.net.restart(name)
        elif self.image is not None:
            env = {
                **self.net.node_env(name, data_dir=CONTAINER_DATA_DIR),
                "RAMRAFT_LOG_LEVEL": "info",
                **self.extra_env,
            }
            proc = self.net.start_container(name, self.image, env=env)
        else:
            proc = self.net.start(
                name, [self.python, "-m", "ramraft", "node"], env=self.node_env(name), cwd=REPO
            )
        self.down.discard(name)
        return proc

    def start_all(self) -> None:
        for name in self.names:
            self.start(name)

    def kill(self, *names: str, sig: int = signal.SIGKILL) -> None:
        for name in names:
            self.paused.discard(name)
            code = self.net.kill(name, sig, wait=30)
            if code is None:
                raise AssertionError(f"{name} did not exit after {signal.Signals(sig).name}")
            self.down.add(name)
            log.info("lab.node_exited", node=name, code=code)

    def pause(self, name: str) -> None:
        self.net.pause(name)
        self.paused.add(name)

    def resume(self, name: str) -> None:
        self.net.resume(name)
        self.paused.discard(name)

    def running(self) -> list[str]:
        return [n for n in self.names if n not in self.down and n not in self.paused]

    # -- looking -----------------------------------------------------------------

    def address(self, name: str) -> str:
        """The node's client address as the test process reaches it (bridge IP)."""
        return f"{self.net.host(name).ip}:{GRPC_PORT}"

    def _client(self, name: str) -> Client:
        if name not in self._clients:
            sec = self.security
            self._clients[name] = Client(
                self.address(name),
                timeout=2.0,
                token=sec.token if sec else None,
                tls=sec.client_tls() if sec else None,
            )
        return self._clients[name]

    def status(self, name: str, timeout: float = 1.0) -> admin_pb2.NodeStatus | None:
        try:
            return self._client(name).status(endpoint=self.address(name), timeout=timeout).node
        except Exception:
            return None

    def serving(self, name: str, timeout: float = 1.0) -> bool:
        """grpc.health.v1 service "": the readiness probe of the StatefulSet."""
        if name not in self._channels:
            # As the kubelet's probe: plaintext, on the health port when TLS is on.
            address = self.address(name)
            if self.security is not None:
                address = f"{self.net.host(name).ip}:{HEALTH_PORT}"
            self._channels[name] = grpc.insecure_channel(address)
        stub: Any = health_pb2_grpc.HealthStub(self._channels[name])  # untyped in the stubs
        try:
            r = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError:
            return False
        return bool(r.status == health_pb2.HealthCheckResponse.SERVING)

    def leader(self, among: Iterable[str] | None = None) -> str | None:
        """The node that claims leadership in the highest term."""
        best: tuple[int, str] | None = None
        for name in among if among is not None else self.running():
            s = self.status(name)
            if (
                s is not None
                and s.role == admin_pb2.ROLE_LEADER
                and (best is None or s.term > best[0])
            ):
                best = (s.term, name)
        return best[1] if best else None

    def wait_ready(self, names: Sequence[str] | None = None, timeout: float = 60.0) -> float:
        """Waits until every named node (default: all) is Ready; returns the
        CLOCK_MONOTONIC time it was first seen so."""
        names = list(names if names is not None else self.names)
        deadline = time.monotonic() + timeout
        while True:
            if all(self.serving(n) for n in names):
                return time.monotonic()
            if time.monotonic() > deadline:
                states = {n: self.status(n) for n in names}
                raise AssertionError(
                    f"not all of {names} Ready within {timeout}s: "
                    + "; ".join(
                        f"{n}: {_brief(s)}" + (" (exited)" if not self.net.proc(n).alive() else "")
                        for n, s in states.items()
                    )
                )
            time.sleep(0.1)

    def check_state(self, timeout: float = 60.0) -> admin_pb2.CheckStateResponse:
        """A state check (`ramraft check`): every node digests its state at
        one index and the leader compares."""
        leader = self.leader()
        assert leader is not None, "no leader to run a state check"
        result: admin_pb2.CheckStateResponse = self._client(leader).check_state(timeout=timeout)
        return result

    def close(self) -> None:
        for c in self._clients.values():
            c.close()
        for ch in self._channels.values():
            ch.close()
        self._clients.clear()
        self._channels.clear()

    # -- the workload ------------------------------------------------------------

    def start_workload(
        self,
        history: Path,
        *,
        duration: float,
        clients: int = 4,
        keys: int = 5,
        args: Sequence[str] = (),
        web: bool = False,
    ) -> ManagedProcess:
        """`ramraft chaos` in the client namespace, through the DNS names
        (in a container of the image if the nodes run in containers).
        `web`: two web clients on each node's web tier too (web_urls), so
        a follower's forward stream carries more than one write at times."""
        assert self.net.client_name is not None
        in_container = "/out/" + history.name
        argv = [
            "chaos",
            "--endpoints", self.net.endpoints(GRPC_PORT),
            "--duration", str(duration),
            "--history", in_container if self.image is not None else str(history),
            "--clients", str(clients),
            "--keys", str(keys),
            "--json",
            *(("--web", self.web_urls(), "--web-clients", str(2 * len(self.names))) if web else ()),
            *(self.security.workload_args() if self.security else ()),
            *args,
        ]  # fmt: skip
        if self.image is not None:
            history.parent.mkdir(parents=True, exist_ok=True)
            os.chown(history.parent, CONTAINER_UID, CONTAINER_UID)
            return self.net.start_container(
                self.net.client_name,
                self.image,
                argv,
                name=WORKLOAD,
                entrypoint="/opt/ramraft/bin/ramraft",
                env={"RAMRAFT_LOG_LEVEL": "warning"},
                volumes={history.parent: "/out"},
            )
        return self.net.start(
            self.net.client_name,
            [self.python, "-m", "ramraft", *argv],
            name=WORKLOAD,
            env={"PYTHONPATH": str(REPO), "RAMRAFT_LOG_LEVEL": "warning"},
            cwd=REPO,
        )

    def web_urls(self) -> str:
        """The nodes' web tiers, for the workload's web clients: one stays
        on each node (as behind a load balancer), so two write through
        followers, which forward their writes (Peer.ForwardStream)."""
        scheme = "https" if self.security else "http"
        return ",".join(f"{scheme}://{self.net.fqdn(n)}:{HTTP_PORT}" for n in self.names)

    def finish_workload(self, timeout: float = 900.0) -> tuple[int, dict[str, Any]]:
        """SIGTERM ends the workload early (final reads and the check still
        run); returns (exit code, the summary it printed)."""
        proc = self.net.proc(WORKLOAD)
        if proc.alive():
            code = self.net.kill(WORKLOAD, signal.SIGTERM, wait=timeout)
            if code is None:
                raise AssertionError(f"the workload did not finish within {timeout}s")
        code = proc.returncode()
        assert code is not None
        summary: dict[str, Any] = {}
        for line in proc.log_text().splitlines():
            if line.startswith("{") and '"operations"' in line:
                summary = json.loads(line)
        return code, summary


def _brief(s: admin_pb2.NodeStatus | None) -> str:
    if s is None:
        return "no answer"
    role = admin_pb2.Role.Name(s.role).removeprefix("ROLE_").lower()
    return (
        f"{role} term {s.term} leader {s.leader or '-'} commit {s.commit_index} "
        f"applied {s.applied_index}"
    )


# -- the nemesis -------------------------------------------------------------------


@dataclass
class Fault:
    kind: str
    targets: list[str]
    leader_before: str | None
    start: float  # CLOCK_MONOTONIC
    heal: float = 0.0
    ready: float = 0.0  # every node Ready again

    @property
    def ready_after_heal(self) -> float:
        return self.ready - self.heal


@dataclass
class Nemesis:
    """Injects faults one at a time: start, hold, heal, wait until Ready."""

    cluster: LabCluster
    rng: random.Random
    hold: tuple[float, float] = (2.0, 5.0)  # how long a fault lasts
    gap: tuple[float, float] = (1.0, 3.0)  # quiet time after recovery
    ready_timeout: float = 90.0
    faults: list[Fault] = field(default_factory=list)

    def _leader(self) -> str:
        deadline = time.monotonic() + 30
        while (leader := self.cluster.leader()) is None:
            if time.monotonic() > deadline:
                raise AssertionError("no leader to target")
            time.sleep(0.1)
        return leader

    def inject(self, kind: str) -> Fault:
        c, net = self.cluster, self.cluster.net
        leader = self._leader()
        followers = [n for n in c.names if n != leader]
        hold = self.rng.uniform(*self.hold)
        target = self.rng.choice(followers)
        pair = self.rng.sample(list(c.names), 2)

        def restart(*names: str) -> None:
            for name in names:
                c.start(name)

        actions: dict[str, tuple[list[str], Callable[[], None], Callable[[], None]]] = {
            KILL_LEADER: ([leader], lambda: c.kill(leader), lambda: restart(leader)),
            KILL_FOLLOWER: ([target], lambda: c.kill(target), lambda: restart(target)),
            PAUSE_LEADER: ([leader], lambda: c.pause(leader), lambda: c.resume(leader)),
            PAUSE_FOLLOWER: ([target], lambda: c.pause(target), lambda: c.resume(target)),
            PARTITION_FOLLOWER: ([target], lambda: net.partition(target), net.heal),
            PARTITION_LEADER: ([leader], lambda: net.partition(leader), net.heal),
            KILL_TWO: (pair, lambda: c.kill(*pair), lambda: restart(*pair)),
            KILL_ALL: (list(c.names), lambda: c.kill(*c.names), lambda: restart(*c.names)),
        }
        targets, begin, end = actions[kind]
        fault = Fault(kind, targets, leader, start=time.monotonic())
        log.info("nemesis.fault", kind=kind, targets=targets, leader=leader, hold=round(hold, 2))
        begin()
        time.sleep(hold)
        fault.heal = time.monotonic()
        end()
        log.info("nemesis.heal", kind=kind, targets=targets)
        fault.ready = c.wait_ready(timeout=self.ready_timeout)
        log.info("nemesis.ready", kind=kind, after_heal=round(fault.ready_after_heal, 2))
        self.faults.append(fault)
        return fault

    def run(self, seconds: float, *, every_kind_first: bool = True) -> list[Fault]:
        """Faults for about `seconds`: every kind once in random order, then
        random kinds; no fault starts unless one could finish in time."""
        end = time.monotonic() + seconds
        plan = list(ALL_FAULTS) if every_kind_first else []
        self.rng.shuffle(plan)
        longest = self.hold[1] + 10.0  # a fault, and a typical recovery
        while time.monotonic() + longest < end or plan:
            kind = plan.pop(0) if plan else self.rng.choice(ALL_FAULTS)
            self.inject(kind)
            time.sleep(self.rng.uniform(*self.gap))
        return self.faults


# -- what the faults cost ---------------------------------------------------------------


@dataclass
class FaultWindow:
    kind: str
    targets: list[str]
    start: float  # seconds since the workload started
    held: float  # fault duration
    write_pause: float  # the longest time no write was acknowledged, fault start to recovery
    serving_after_heal: float  # heal -> first acknowledged write at or after it
    ready_after_heal: float  # heal -> every node Ready (nemesis' view)


def fault_windows(
    faults: Sequence[Fault], records: Sequence[Record], t0: float
) -> list[FaultWindow]:
    acked = sorted(
        r.complete
        for r in records
        if r.is_write and r.outcome == "ok" and r.complete is not None and not r.final
    )
    out = []
    for f in faults:
        after_heal = next((t for t in acked if t >= f.heal), None)
        if after_heal is None:
            raise AssertionError(f"no write was acknowledged after the {f.kind} fault healed")
        pause = longest_write_pause(records, f.start, after_heal).seconds
        out.append(
            FaultWindow(
                kind=f.kind,
                targets=f.targets,
                start=round(f.start - t0, 3),
                held=round(f.heal - f.start, 3),
                write_pause=round(pause, 3),
                serving_after_heal=round(after_heal - f.heal, 3),
                ready_after_heal=round(f.ready_after_heal, 3),
            )
        )
    return out


def report(windows: Sequence[FaultWindow], summary: dict[str, Any]) -> dict[str, Any]:
    """The numbers of a run, as one JSON-able document."""
    by_kind: dict[str, int] = {}
    for w in windows:
        by_kind[w.kind] = by_kind.get(w.kind, 0) + 1
    leader_kills = [w.write_pause for w in windows if w.kind == KILL_LEADER]
    return {
        "operations": summary.get("operations"),
        "outcomes": summary.get("outcomes"),
        "linearizable": summary.get("linearizable"),
        "lost_writes": summary.get("lost_writes"),
        # Key-value version 2: transactions and watchers (tools/history.py).
        "txn": (summary.get("by_kind") or {}).get("txn"),
        "watchers": summary.get("watchers"),
        "watch_events": summary.get("watch_events"),
        "watch_problems": summary.get("watch_problems"),
        "revision_problems": summary.get("revision_problems"),
        "transfer_problems": summary.get("transfer_problems"),
        # The web clients: their operations and the writes the nodes forwarded.
        "web": summary.get("web"),
        "faults": len(windows),
        "faults_by_kind": by_kind,
        "longest_write_pause_after_leader_kill": max(leader_kills, default=None),
        "longest_serving_after_heal": max((w.serving_after_heal for w in windows), default=None),
        "longest_ready_after_heal": max((w.ready_after_heal for w in windows), default=None),
        "windows": [asdict(w) for w in windows],
    }


def format_windows(windows: Sequence[FaultWindow]) -> str:
    lines = [
        f"{'t(s)':>7} {'fault':<19} {'targets':<30} {'held':>5} {'w.pause':>7} "
        f"{'serve':>6} {'ready':>6}"
    ]
    for w in windows:
        lines.append(
            f"{w.start:7.1f} {w.kind:<19} {','.join(w.targets):<30} {w.held:5.1f} "
            f"{w.write_pause:7.2f} {w.serving_after_heal:6.2f} {w.ready_after_heal:6.2f}"
        )
    return "\n".join(lines)


# -- one whole session -------------------------------------------------------------------

# Snapshot every 1000 entries and keep 200 behind it: a node down for a few
# seconds falls behind the log and is caught up with InstallSnapshot.
SNAPSHOT_ENV = {"RAMRAFT_SNAPSHOT_ENTRIES": "1000", "RAMRAFT_RETAIN_ENTRIES": "200"}


@dataclass
class Session:
    code: int  # the workload's exit code
    report: dict[str, Any]
    kinds: list[str]  # the faults injected, in order
    windows: list[FaultWindow]


def run_session(
    net: ChaosNet,
    out: Path,
    seconds: float,
    seed: int,
    *,
    clients: int = 4,
    keys: int = 5,
    every_kind_first: bool = True,
    env: dict[str, str] | None = None,
    workload_args: Sequence[str] = (),
    secure: bool = False,
) -> Session:
    """Nodes up, `ramraft chaos` on, the nemesis for `seconds`, workload off
    (final reads, verdict); writes history.jsonl, faults.json and
    report.json into `out`."""
    cluster = LabCluster(net, env=SNAPSHOT_ENV if env is None else env, secure=secure)
    history = out / "history.jsonl"
    nemesis = Nemesis(cluster, random.Random(seed))
    try:
        cluster.start_all()
        cluster.wait_ready(timeout=90)
        cluster.start_workload(
            history,
            duration=seconds + 3600,
            clients=clients,
            keys=keys,
            args=workload_args,
            web=True,
        )
        time.sleep(3)  # a fault-free start
        try:
            nemesis.run(seconds, every_kind_first=every_kind_first)
        finally:
            (out / "faults.json").write_text(
                json.dumps([asdict(f) for f in nemesis.faults], indent=1)
            )
        time.sleep(3)  # a fault-free end before the final reads
        code, summary = cluster.finish_workload()
        cluster.wait_ready(timeout=90)
        check = cluster.check_state()
    finally:
        cluster.close()
    meta, records = load_history(history)
    windows = fault_windows(nemesis.faults, records, meta["started_monotonic"])
    rep = {
        "seed": seed,
        "chaos_seconds": seconds,
        **report(windows, summary),
        # The deterministic workload must never raise the divergence alarm.
        "state_check": {
            "index": check.index,
            "digests": {d.node: d.digest for d in check.digests},
            "diverged": list(check.diverged),
        },
    }
    (out / "report.json").write_text(json.dumps(rep, indent=2))
    return Session(code, rep, [f.kind for f in nemesis.faults], windows)

"""`ramraft cluster` behaves like a real cluster: it prints the addresses once
the nodes serve, the other nodes keep serving when one is killed, the killed
one is restarted (a line says so), one that keeps crashing is restarted with
a doubling delay and then left down, and Ctrl-C stops everything. It finds
--app examples.notes:app from outside the repository, and refuses an app it
cannot import before starting anything."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ramraft.client import Client
from ramraft.proto import admin_pb2
from ramraft.tools.cli import build_parser
from ramraft.tools.local_cluster import HALT_CHECK_EVERY, _find_app, status_token
from tests.httpcalls import http
from tests.ports import free_port_runs

SAFETY = 60.0  # seconds: a generous bound on every wait below, never a speed claim


class LocalCluster:
    """`python -m ramraft cluster` in ``cwd``, its output in files."""

    def __init__(self, cwd: Path, *args: str, nodes: int = 3, http_ports: bool = False) -> None:
        self.cwd = cwd
        self.nodes = nodes
        self.args = list(args)
        self.http_ports = http_ports
        self.proc: subprocess.Popen[bytes] | None = None
        self.out = cwd / "cluster.out"
        self.err = cwd / "cluster.err"

    def pick_ports(self) -> None:
        self.grpc_base, self.http_base = free_port_runs(2, self.nodes)
        if not self.http_ports:
            self.http_base = 0

    def start(self) -> subprocess.Popen[bytes]:
        self.pick_ports()
        return self.launch()

    def launch(self) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "ramraft", "cluster", "--nodes", str(self.nodes)]
        argv += ["--grpc-port", str(self.grpc_base), "--http-port", str(self.http_base)]
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [*argv, *self.args],
                cwd=self.cwd,
                stdout=out,
                stderr=err,
                env=_env(),
                start_new_session=True,  # its nodes share its group: kill() reaches them all
            )
        return self.proc

    def start_serving(self) -> None:
        """Start, and start again on other ports if one was taken."""
        for _ in range(5):
            self.start()
            self.wait_for(lambda: "Ctrl-C stops" in self.stdout() or self.exited())
            if not self.exited():
                return
            if "is in use" not in self.stderr():
                raise AssertionError(f"the cluster did not start:\n{self.stderr()}")
        raise AssertionError("five runs of ports were taken")

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def wait_for(self, condition: Callable[[], bool], what: str = "condition") -> None:
        deadline = time.monotonic() + SAFETY
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {SAFETY}s\n{self.stderr()}")
            time.sleep(0.05)

    def ports(self, node_id: str) -> dict[str, object]:
        path = self.cwd / "ramraft-data" / node_id / "ports.json"
        ports: dict[str, object] = json.loads(path.read_text())
        return ports

    def endpoints(self, ids: list[str] | None = None) -> str:
        ids = ids or [f"n{i + 1}" for i in range(self.nodes)]
        return ",".join(f"127.0.0.1:{self.grpc_base + int(i[1:]) - 1}" for i in ids)

    def interrupt(self, sig: int = signal.SIGINT) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=SAFETY)

    def kill(self) -> None:
        """Stop the cluster as Ctrl-C would, then SIGKILL whatever of its
        process group is left (nodes included, even ones that never wrote
        their ports.json)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=SAFETY)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def _env() -> dict[str, str]:
    # No PYTHONPATH: the installed package, as a user runs it (the repository
    # root must not be importable by accident, see the --app tests).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["RAMRAFT_LOG_LEVEL"] = "warning"
    return env


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purpose (its parent has not reaped it yet).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@contextmanager
def local_cluster(cwd: Path, *args: str, **kwargs: object) -> Iterator[LocalCluster]:
    cluster = LocalCluster(cwd, *args, **kwargs)  # type: ignore[arg-type]
    try:
        yield cluster
    except BaseException:
        print(cluster.stdout(), cluster.stderr(), sep="\n", file=sys.stderr)
        raise
    finally:
        cluster.kill()


def _leader(cluster: LocalCluster) -> str:
    with Client(cluster.endpoints(), timeout=SAFETY) as c:
        deadline = time.monotonic() + SAFETY
        while time.monotonic() < deadline:
            for endpoint in c.endpoints:
                try:
                    node = c.status(endpoint=endpoint).node
                except Exception:
                    continue
                if node.role == admin_pb2.ROLE_LEADER:
                    return node.id
            time.sleep(0.05)
    raise AssertionError("no leader")


def test_serves_restarts_a_killed_node_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    with local_cluster(tmp_path, "--restart-delay", "0.2") as cluster:
        cluster.start_serving()
        out = cluster.stdout()
        # Printed once every node serves: each has its ports.json by now.
        pids = {i: cluster.ports(i)["pid"] for i in ("n1", "n2", "n3")}
        for node_id, pid in pids.items():
            assert f"  {node_id}: grpc 127.0.0.1:" in out and f"(pid {pid})" in out
        # The three `ramraft node` commands are what the cluster runs.
        commands = [line.strip() for line in out.splitlines() if "ramraft node --id" in line]
        assert len(commands) == 3
        for node_id, command in zip(("n1", "n2", "n3"), commands, strict=True):
            args = build_parser().parse_args(shlex.split(command)[1:])
            assert (args.func.__name__, args.id, args.data_dir) == (
                "run_node",
                node_id,
                f"ramraft-data/{node_id}",
            )
            assert args.peers == ",".join(
                f"n{i + 1}=127.0.0.1:{cluster.grpc_base + i}" for i in range(3)
            )

        with Client(cluster.endpoints(), timeout=SAFETY) as c:
            c.put("before", b"1")
        leader = _leader(cluster)
        os.kill(int(pids[leader]), signal.SIGKILL)
        cluster.wait_for(lambda: f"{leader} stopped (killed by SIGKILL)" in cluster.stderr())
        # The others keep serving while it is down.
        others = [i for i in pids if i != leader]
        with Client(cluster.endpoints(others), timeout=SAFETY) as c:
            index = c.put("while-down", b"2")
        cluster.wait_for(lambda: f"{leader} serves again" in cluster.stderr(), "restarted")
        assert f"{leader} restarted (pid " in cluster.stderr()
        assert cluster.ports(leader)["pid"] != pids[leader]
        with Client(cluster.endpoints([leader]), timeout=SAFETY) as c:
            cluster.wait_for(
                lambda: c.status(endpoint=c.endpoints[0]).node.applied_index >= index,
                "the restarted node catches up",
            )

        new_pids = [int(cluster.ports(i)["pid"]) for i in pids]
        assert cluster.interrupt() == 0
        assert cluster.stderr().rstrip().endswith("ramraft cluster: stopped")
        assert not [pid for pid in new_pids if _alive(pid)]


def test_port_runs_that_overlap_are_refused_before_any_node_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ramraft.tools.cli import main

    monkeypatch.chdir(tmp_path)
    (g,) = free_port_runs(1, 5)  # what a cluster started without the checks would take
    for (grpc_port, http_port), words in [
        ((g, g + 1), f"{g}-{g + 2} for gRPC and {g + 1}-{g + 3}"),
        ((g + 2, g), f"{g + 2}-{g + 4} for gRPC and {g}-{g + 2}"),
        ((0, 0), "--grpc-port 0: must be a port number"),
    ]:
        ports = ["--grpc-port", str(grpc_port), "--http-port", str(http_port)]
        assert main(["cluster", *ports]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ramraft cluster: ") and words in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_a_restart_delay_that_is_no_number_of_seconds_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """nan passed the '< 0' check, and a node that exited would never have
    been restarted; inf would wait forever."""
    from ramraft.tools.cli import main

    monkeypatch.chdir(tmp_path)
    for delay in ("nan", "inf", "-1"):
        assert main(["cluster", "--restart-delay", delay]) == 2, delay
        err = capsys.readouterr().err
        assert "--restart-delay must be a number of seconds >= 0" in err, err
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_while_the_nodes_start_stops_them_without_tracebacks(tmp_path: Path) -> None:
    """Ctrl-C at a terminal signals the whole process group: the nodes too,
    while their interpreters still start."""
    with local_cluster(tmp_path) as cluster:
        proc = cluster.start()
        cluster.wait_for(lambda: "starting 3 nodes" in cluster.stderr())
        time.sleep(0.3)  # the nodes are being started: importing Python and ramraft
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=SAFETY) == 0
        err = cluster.stderr()
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
        assert err.rstrip().endswith("ramraft cluster: stopped"), err


def test_a_node_that_keeps_crashing_is_left_down_after_growing_delays(tmp_path: Path) -> None:
    args = ("--restart-delay", "0.1", "--restart-attempts", "3")
    with local_cluster(tmp_path, *args) as cluster:
        cluster.start_serving()
        victim = "n3"
        pid = int(cluster.ports(victim)["pid"])
        os.kill(pid, signal.SIGKILL)
        # Its data directory replaced by a file: every restart now fails at once.
        data_dir = tmp_path / "ramraft-data" / victim
        data_dir.rename(data_dir.with_name("moved"))
        data_dir.write_text("not a directory")
        cluster.wait_for(lambda: "left down" in cluster.stderr(), "given up")
        err = cluster.stderr()
        delays = [
            line.rpartition(" in ")[2]
            for line in err.splitlines()
            if line.startswith(f"ramraft cluster: {victim} stopped") and "restarting" in line
        ]
        assert delays == ["0.2 s", "0.4 s"], err
        assert err.count(f"--data-dir ramraft-data/{victim}: is a file, not a directory") == 2
        assert f"{victim} stopped (exit status 2); it stopped 3 times in a row" in err
        # The other two still make a majority.
        with Client(cluster.endpoints(["n1", "n2"]), timeout=SAFETY) as c:
            c.put("k", b"v")
        assert cluster.interrupt() == 0


def test_a_node_that_cannot_start_stops_the_start_up(tmp_path: Path) -> None:
    with local_cluster(tmp_path) as cluster, socket.socket() as holder:
        cluster.pick_ports()
        holder.bind(("127.0.0.1", cluster.grpc_base + 1))  # n2's port, taken
        holder.listen()
        assert cluster.launch().wait(timeout=SAFETY) == 1
        assert "n2 could not start (exit status 4; its error is above)" in cluster.stderr()
        assert "serving" not in cluster.stdout()  # no addresses for a cluster that is not up
        assert cluster.stderr().rstrip().endswith("ramraft cluster: stopped")


def test_app_is_found_from_outside_the_repository(tmp_path: Path) -> None:
    """The defect: `No module named 'examples'` after printing app URLs."""
    with local_cluster(tmp_path, "--app", "examples.notes:app", http_ports=True) as cluster:
        cluster.start_serving()
        assert "--app examples.notes:app: not in the current directory; found in" in (
            cluster.stderr()
        )
        address = cluster.ports("n2")["http"]
        assert f"app http://{address}/app/" in cluster.stdout()
        page = http(str(address), "GET", "/app/")
        assert page.status == 200 and "Notes board" in page.body.decode()
        assert cluster.interrupt() == 0


def test_an_app_that_cannot_be_imported_stops_before_any_node(tmp_path: Path) -> None:
    with local_cluster(tmp_path, "--app", "nosuchpackage.notes:app", http_ports=True) as cluster:
        assert cluster.start().wait(timeout=SAFETY) == 2
        assert cluster.stdout() == ""
        (line,) = cluster.stderr().splitlines()
        assert line.startswith("ramraft cluster: 'nosuchpackage.notes:app': cannot import")
        assert "Run ramraft cluster from the directory that holds the app's package" in line
        assert not (tmp_path / "ramraft-data").exists()


def test_an_app_that_fails_in_its_own_code_is_not_blamed_on_the_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The module was found and imported, then its own code failed: the
    message said to run from another directory or give --app-path."""
    (tmp_path / "broken_app.py").write_text("def app():\n    return 1 / 0\n")
    args = argparse.Namespace(app="broken_app:app", app_path=str(tmp_path))
    assert _find_app(args) is None
    (line,) = capsys.readouterr().err.splitlines()
    assert "app() raised ZeroDivisionError: division by zero (at " in line
    assert "broken_app.py, line 2, in app); fix the application and start again" in line
    assert "--app-path" not in line


def test_a_node_that_halts_is_reported(tmp_path: Path) -> None:
    """A cluster that switched to app version 2, started again with the
    version-1 code: every node halts at the switch and runs on; the
    command says so (the addresses it printed suggested all was well)."""
    repo = str(Path(__file__).resolve().parents[2])
    v2 = ("--app", "tests.server.apps.board_v2:app", "--app-path", repo)
    with local_cluster(tmp_path, *v2) as cluster:
        cluster.start_serving()

        def switched() -> bool:
            with Client(cluster.endpoints(), timeout=5) as c:
                try:
                    return all(c.status(endpoint=e).node.app_version == 2 for e in c.endpoints)
                except Exception:
                    return False

        cluster.wait_for(switched, "app version 2")
        assert cluster.interrupt() == 0
        assert "halted" not in cluster.stderr()

        cluster.args = ["--app", "tests.server.apps.board_v1:app", "--app-path", repo]
        cluster.launch()  # the same ports: the data names them
        for node_id in ("n1", "n2", "n3"):
            cluster.wait_for(
                lambda node_id=node_id: f"{node_id} halted: " in cluster.stderr(),
                f"{node_id}'s halt reported",
            )
        assert "supports up to version 1" in cluster.stderr()
        assert cluster.stderr().count("n1 halted: ") == 1  # once per start, not every poll


def test_with_tokens_the_suggested_command_says_a_token_is_needed(tmp_path: Path) -> None:
    """... and its own status calls (the halt watch) carry a token of the
    file: the nodes refuse none of them. They used to go without one, and
    every node logged a request_refused warning every 2 seconds."""
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("admin ops admin-token-0123456789abcdef\n")
    node_args = (f"--node-arg=--auth-tokens={tokens}", "--node-arg=--insecure")
    with local_cluster(tmp_path, *node_args) as cluster:
        cluster.start_serving()
        (try_line,) = [line for line in cluster.stdout().splitlines() if line.startswith("try:")]
        assert "--token-file FILE" in try_line
        time.sleep(3 * HALT_CHECK_EVERY)  # time for every node to be asked (not a speed claim)
        assert "request_refused" not in cluster.stderr()
        assert "not watching" not in cluster.stderr()
        assert cluster.interrupt() == 0


def test_with_tokens_it_cannot_use_it_asks_once_and_says_so(tmp_path: Path) -> None:
    """A token file of digests only (no token this command could send): the
    first refusal stops the halt watch, with a line saying why and what to
    set; the nodes are not asked again (each refusal is a warning there)."""
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"read ops sha256:{'ab' * 32}\n")
    node_args = ("--node-arg=--auth-tokens", f"--node-arg={tokens}", "--node-arg=--insecure")
    with local_cluster(tmp_path, *node_args) as cluster:
        cluster.start_serving()
        cluster.wait_for(lambda: "not watching the nodes" in cluster.stderr(), "the watch's line")
        time.sleep(3 * HALT_CHECK_EVERY)  # time to ask again, were it to (not a speed claim)
        assert "set RAMRAFT_TOKEN to a read token" in cluster.stderr()
        assert cluster.stderr().count('"request_refused"') == 1, cluster.stderr()
        # Its terminal closed (SIGHUP): it stops its nodes as on Ctrl-C.
        pids = [int(cluster.ports(n)["pid"]) for n in ("n1", "n2", "n3")]
        assert cluster.interrupt(signal.SIGHUP) == 0
        assert "ramraft cluster: stopped" in cluster.stderr()
        assert not [pid for pid in pids if _alive(pid)]


def test_the_halt_watch_takes_the_least_powerful_plain_token(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(
        "# role name token\nadmin ops admin-token-0123456789abcdef\n"
        f"read hashed sha256:{'ab' * 32}\nwrite app write-token-0123456789abcdef\n"
    )
    assert status_token([f"--auth-tokens={tokens}"], {}) == "write-token-0123456789abcdef"
    assert status_token(["--auth-tokens", str(tokens)], {}) == "write-token-0123456789abcdef"
    assert status_token([], {"RAMRAFT_AUTH_TOKENS": str(tokens)}) == "write-token-0123456789abcdef"
    assert status_token([f"--auth-tokens={tokens}"], {"RAMRAFT_TOKEN": "mine"}) == "mine"
    assert status_token([], {}) is None
    assert status_token([f"--auth-tokens={tmp_path / 'missing'}"], {}) is None

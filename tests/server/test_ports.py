"""A node refuses a port that is taken, for every port it listens on, with
one line naming the flag and the port and exit status 4 (what a harness
retries on); and it says where it listens once it serves (ports.json).

The servers themselves refuse a shared port (gRPC's default SO_REUSEPORT
would let two nodes split one port's clients): with the pre-start check
switched off, the bind fails in gRPC or aiohttp, and whatever had started is
stopped before the error, so no traceback follows the line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ramraft.tools.node_cli import EXIT_PORT_IN_USE
from tests.server.procs import REPO, ProcessCluster

# `ramraft node` with the pre-start port check switched off, so that the
# servers' own binds meet the taken port.
WITHOUT_PROBE = (
    "import sys; from ramraft.server.node import Node; "
    "Node.listen_addresses = lambda self: []; "
    "from ramraft.tools.cli import main; sys.exit(main(sys.argv[1:]))"
)


def _node(argv: list[str], tmp: Path, *, probe: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ramraft node` that must exit by itself; its status and output."""
    launcher = ["-m", "ramraft"] if probe else ["-c", WITHOUT_PROBE]
    return subprocess.run(
        [sys.executable, *launcher, "node", "--data-dir", str(tmp / "second"), *argv],
        capture_output=True,
        text=True,
        timeout=60,  # safety net: a node that started serving would never exit
        cwd=str(REPO),
        env=dict(os.environ, PYTHONPATH=str(REPO), RAMRAFT_LOG_LEVEL="warning"),
        check=False,
    )


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    """One node holding a client port, a peer port, an HTTP and a health port."""
    cluster = ProcessCluster(tmp_path_factory.mktemp("holder"), nodes=1, http=True)
    cluster.extra_args = ["--health-listen", "127.0.0.1:0"]
    with cluster:
        cluster.wait_for_leader()
        yield cluster


def _holder_ports(cluster: ProcessCluster) -> dict[str, str]:
    ports = cluster.listening("n1")
    return {"grpc": ports["grpc"], "http": ports["http"], "health": ports["health"]}


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _one_line(result: subprocess.CompletedProcess[str], probe: bool) -> str:
    assert result.stdout == ""
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
    lines = result.stderr.splitlines()
    if not probe:
        # gRPC's C core logs its own failed bind ("E... add_port.cc:83] ...
        # Address already in use") before ours: the rare case of a port
        # taken between the check and the bind.
        lines = [line for line in lines if "add_port.cc" not in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("probe", [True, False], ids=["checked-first", "refused-by-the-server"])
@pytest.mark.parametrize("flag", ["--listen", "--peer-listen", "--http", "--health-listen"])
def test_a_taken_port_is_refused_in_one_line(
    running: ProcessCluster, tmp_path: Path, flag: str, probe: bool
) -> None:
    taken = _holder_ports(running)["http" if flag == "--http" else "grpc"]
    if flag == "--health-listen":
        taken = _holder_ports(running)["health"]
    own = _free_port()
    argv = ["--id", "b", "--peers", f"b={own}"]
    if flag == "--listen":
        argv = ["--id", "b", "--peers", f"b={taken}"]  # its own --peers entry is the port
    elif flag == "--peer-listen":
        argv += ["--listen", _free_port(), "--peer-listen", taken]
    else:
        argv += [flag, taken]
    result = _node(argv, tmp_path, probe=probe)
    line = _one_line(result, probe)
    port = taken.rpartition(":")[2]
    assert result.returncode == EXIT_PORT_IN_USE, line
    assert line.startswith(f"ramraft node: {flag} {taken}: cannot listen: port {port} is in use")


@pytest.mark.parametrize("probe", [True, False], ids=["checked-first", "refused-by-the-server"])
def test_a_port_held_with_so_reuseport_is_refused_too(tmp_path: Path, probe: bool) -> None:
    """What a node of the old code (or any gRPC server with its defaults)
    does: listen with SO_REUSEPORT. A node that set it too would share the
    port; ours does not set it, so it is refused."""
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = f"127.0.0.1:{holder.getsockname()[1]}"
        result = _node(["--id", "b", "--peers", f"b={taken}"], tmp_path, probe=probe)
    assert result.returncode == EXIT_PORT_IN_USE, result.stderr
    assert f"--listen {taken}: cannot listen: port" in _one_line(result, probe)


def test_two_nodes_never_share_a_port_and_the_first_keeps_it(
    running: ProcessCluster, tmp_path: Path
) -> None:
    """The defect: a second node on the same port started, and clients got
    answers from either. Now it exits; `status` keeps answering from n1."""
    grpc_address = _holder_ports(running)["grpc"]
    result = _node(["--id", "n1", "--peers", f"n1={grpc_address}"], tmp_path)
    assert result.returncode == EXIT_PORT_IN_USE, result.stderr
    for _ in range(10):
        status = running.status("n1")
        assert status is not None and status.address == grpc_address


def test_ports_json_says_where_the_node_listens_and_goes_at_stop(tmp_path: Path) -> None:
    with ProcessCluster(tmp_path, nodes=1, http=True) as cluster:
        cluster.wait_for_leader()
        ports = cluster.listening("n1")
        assert ports["id"] == "n1" and ports["pid"] == cluster.procs["n1"].pid
        assert ports["grpc"] == ports["peer"] == cluster.grpc["n1"]
        host, _, port = ports["http"].rpartition(":")
        assert host == "127.0.0.1" and int(port) > 0  # asked for port 0, got a real one
        assert cluster.http["n1"] == ports["http"]
        path = cluster.data_dir("n1") / "ports.json"
        assert cluster.stop("n1") == 0
        assert not path.exists()


def test_sighup_stops_a_node_as_sigterm_does(tmp_path: Path) -> None:
    """A closed terminal (or `kill -HUP`, a reload elsewhere): the node stops
    cleanly, exit 0, rather than die of the signal (exit -1, no hand-over,
    its ports.json left behind)."""
    with ProcessCluster(tmp_path, nodes=1) as cluster:
        cluster.wait_for_leader()
        path = cluster.data_dir("n1") / "ports.json"
        assert cluster.kill("n1", signal.SIGHUP) == 0, cluster.node_log("n1")
        assert "node_stopped" in cluster.node_log("n1")
        assert not path.exists()


def _close_stdout_and_stderr() -> None:
    os.close(1)
    os.close(2)


def test_a_node_started_with_its_output_closed_serves_and_stops(tmp_path: Path) -> None:
    """`ramraft node ... >&- 2>&-` (a careless daemonization): Python has no
    sys.stdout or sys.stderr, and the node died at its first log line,
    before it made its data directory. Now its lines go nowhere and it
    serves and stops as usual."""
    from ramraft.tools.bench import free_ports

    (port,) = free_ports(1)
    data = tmp_path / "n1"
    argv = [sys.executable, "-m", "ramraft", "node", "--id", "n1"]
    argv += ["--peers", f"n1=127.0.0.1:{port}", "--data-dir", str(data)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(argv, env=env, preexec_fn=_close_stdout_and_stderr)
    try:
        deadline = time.monotonic() + 60
        while not (data / "ports.json").exists():
            assert proc.poll() is None, f"the node exited {proc.returncode}"
            assert time.monotonic() < deadline, "the node did not come up"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_stale_ports_json_is_replaced_before_anything_listens(tmp_path: Path) -> None:
    """A node killed with SIGKILL leaves its file; the next start removes it
    at once, so nobody reads the old pid while the new node is starting."""
    with ProcessCluster(tmp_path, nodes=1) as cluster:
        cluster.wait_for_leader()
        first = cluster.listening("n1")
        cluster.kill("n1")
        path = cluster.data_dir("n1") / "ports.json"
        assert json.loads(path.read_text())["pid"] == first["pid"]
        cluster.start("n1")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if path.exists() and json.loads(path.read_text())["pid"] != first["pid"]:
                break
            time.sleep(0.05)
        assert json.loads(path.read_text())["pid"] == cluster.procs["n1"].pid


def _hold_then_free(monkeypatch: pytest.MonkeyPatch, module: object) -> socket.socket:
    """Make ``module.free_ports`` hand out a port we hold (listening) on its
    first call: the race of a port taken between the pick and the bind."""
    from ramraft.tools.bench import free_ports

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    calls = iter([[holder.getsockname()[1]]])

    def picks(n: int) -> list[int]:
        first = next(calls, None)
        return first + free_ports(n - 1) if first is not None else free_ports(n)

    monkeypatch.setattr(module, "free_ports", picks)
    return holder


def test_process_cluster_starts_again_on_new_ports_when_one_was_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.server import procs

    with _hold_then_free(monkeypatch, procs) as holder:
        taken = f"127.0.0.1:{holder.getsockname()[1]}"
        with ProcessCluster(tmp_path, nodes=1) as cluster:
            assert cluster.grpc["n1"] != taken
            assert cluster.wait_for_leader() == "n1"
            assert f"--listen {taken}: cannot listen" in cluster.node_log("n1")


def test_bench_cluster_starts_again_on_new_ports_when_one_was_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from ramraft.tools import bench

    with _hold_then_free(monkeypatch, bench) as holder:
        taken = f"127.0.0.1:{holder.getsockname()[1]}"

        async def scenario() -> None:
            cluster = bench.Cluster(
                None, inproc=False, root=tmp_path, tick_ms=10, fsync=False, node_args=[]
            )
            assert cluster.addresses["n1"] == taken
            try:
                await cluster.start()
                assert taken not in cluster.endpoints
                await cluster.leader()
            finally:
                await cluster.stop()

        asyncio.run(scenario())
        assert f"--listen {taken}: cannot listen" in (tmp_path / "n1" / "node.log").read_text()

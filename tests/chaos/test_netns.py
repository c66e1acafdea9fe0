"""The chaos lab itself, tested with a tiny echo server instead of ramraft nodes.

A TCP probe that gets an answer proves the path works both ways; a UDP
datagram seen in the receiver's log proves one direction on its own.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.chaos import netns
from tests.chaos.netns import (
    NETNS_ETC,
    NETNS_RUN,
    ChaosNet,
    ChaosNetError,
    leftovers,
    sweep,
)

PORT = 7000
REPO = Path(__file__).resolve().parents[2]
ECHO_PY = Path(__file__).with_name("echo.py")
# Run as a file (stdlib only), so the namespaces need no sys.path set-up.
ECHO = [sys.executable, str(ECHO_PY)]


def start_echo(net: ChaosNet, *hosts: str) -> None:
    for h in hosts or net.node_names:
        net.start(h, [*ECHO, "serve", "--port", str(PORT)])
    for h in hosts or net.node_names:
        wait_for(lambda h=h: f"serving on {PORT}" in net.proc(h).log_text(), what=f"{h} serving")


def wait_for(cond: object, *, what: str, timeout: float = 5.0) -> None:
    assert callable(cond)
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def gone(pid: int | str) -> bool:
    """Dead: no /proc entry, or a zombie nobody has reaped yet (our init is lazy)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def tcp(net: ChaosNet, src: str, dst: str, timeout: float = 0.4) -> str | None:
    """The echo answer from dst's server, reached by its DNS name, or None."""
    r = net.run(src, [*ECHO, "probe", net.fqdn(dst), str(PORT), "--timeout", str(timeout)])
    return r.stdout.strip() if r.returncode == 0 else None


def udp_arrives(net: ChaosNet, src: str, dst: str, witness: str) -> bool:
    """Send a datagram src->dst, then one witness->dst on an open path.

    Once the witness's datagram is in dst's log, the first one, sent earlier
    over the same bridge, would be there too if it was not dropped.
    """
    tag = f"{src}-{time.monotonic_ns()}"
    for sender, payload in ((src, tag), (witness, f"witness-{tag}")):
        r = net.run(
            sender, [*ECHO, "probe", net.fqdn(dst), str(PORT), "--udp", "--payload", payload]
        )
        assert r.returncode == 0, r.stderr
    wait_for(lambda: f"udp witness-{tag}" in net.proc(dst).log_text(), what="witness datagram")
    return f"udp {tag}\n" in net.proc(dst).log_text()


# -- no root needed ---------------------------------------------------------


def test_names_and_peer_list_follow_the_statefulset() -> None:
    net = ChaosNet(k8s_namespace="prod")
    assert net.fqdn("ramraft-2") == "ramraft-2.ramraft-peers.prod.svc.cluster.local"
    assert net.peers(7001) == ",".join(
        f"ramraft-{i}=ramraft-{i}.ramraft-peers.prod.svc.cluster.local:7001" for i in range(3)
    )
    assert net.endpoints(7000).count(":7000") == 3
    assert len({h.ip for h in net.hosts.values()}) == 4
    assert len({h.netns for h in net.hosts.values()}) == 4
    assert all(h.netns.startswith(f"rrc-{net.run_id}-") for h in net.hosts.values())


def test_bad_arguments_are_refused_clearly() -> None:
    with pytest.raises(ChaosNetError, match="not a DNS label"):
        ChaosNet(nodes=("Ramraft_0",))
    with pytest.raises(ChaosNetError, match="unique"):
        ChaosNet(nodes=("a", "a"))
    net = ChaosNet()
    with pytest.raises(ChaosNetError, match="no host 'ramraft-9'"):
        net.fqdn("ramraft-9")
    with pytest.raises(ChaosNetError, match="more than one group"):
        net.split(["ramraft-0"], ["ramraft-0", "ramraft-1"])
    with pytest.raises(ChaosNetError, match="not set up"):
        net.start("ramraft-0", ["true"])
    with pytest.raises(ChaosNetError, match="'client' is not a node"):
        net.node_env("client")


def test_unsupported_reason_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "needs root" in str(netns.unsupported_reason())
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda t: None if t == "nft" else real_which(t))
    assert "apt-get install -y nftables" in str(netns.unsupported_reason())


# -- the lab (root) -----------------------------------------------------------


@pytest.mark.chaos
def test_every_host_reaches_every_node_by_its_dns_name(chaos_net: ChaosNet) -> None:
    net = chaos_net
    start_echo(net)
    for src in net.hosts:
        for dst in net.node_names:
            assert tcp(net, src, dst) == f"{dst} ping", (src, dst)
    # The namespace looks like the pod: hostname, hosts file, a resolver that answers nothing.
    r = net.run("ramraft-1", ["sh", "-c", "hostname; echo $HOSTNAME; cat /etc/resolv.conf"])
    assert r.stdout.splitlines()[:2] == ["ramraft-1", "ramraft-1"]
    assert "nameserver 127.0.0.1" in r.stdout


@pytest.mark.chaos
def test_partition_cuts_both_ways_and_heal_restores(chaos_net: ChaosNet) -> None:
    net = chaos_net
    start_echo(net)
    net.partition("ramraft-0")
    assert tcp(net, "ramraft-0", "ramraft-1") is None
    assert tcp(net, "ramraft-2", "ramraft-0") is None
    assert tcp(net, "ramraft-1", "ramraft-2") == "ramraft-2 ping"  # the majority still talks
    assert tcp(net, "client", "ramraft-0") == "ramraft-0 ping"  # clients still reach it
    net.heal()
    assert net.blocked() == frozenset()
    assert tcp(net, "ramraft-0", "ramraft-1") == "ramraft-1 ping"
    assert tcp(net, "ramraft-2", "ramraft-0") == "ramraft-0 ping"


@pytest.mark.chaos
def test_split_with_the_client_in_the_minority(chaos_net: ChaosNet) -> None:
    net = chaos_net
    start_echo(net)
    net.split(["ramraft-0", "client"], ["ramraft-1", "ramraft-2"])
    assert tcp(net, "client", "ramraft-0") == "ramraft-0 ping"
    assert tcp(net, "client", "ramraft-1") is None
    assert tcp(net, "ramraft-1", "ramraft-0") is None
    assert tcp(net, "ramraft-1", "ramraft-2") == "ramraft-2 ping"
    net.heal()
    assert tcp(net, "client", "ramraft-1") == "ramraft-1 ping"


@pytest.mark.chaos
def test_one_way_drop_cuts_one_direction_only(chaos_net: ChaosNet) -> None:
    net = chaos_net
    start_echo(net)
    net.drop("ramraft-0", "ramraft-1")
    assert net.blocked() == {("ramraft-0", "ramraft-1")}
    assert not udp_arrives(net, "ramraft-0", "ramraft-1", witness="ramraft-2")
    assert udp_arrives(net, "ramraft-1", "ramraft-0", witness="ramraft-2")
    # TCP needs both directions, so it fails either way round.
    assert tcp(net, "ramraft-0", "ramraft-1") is None
    assert tcp(net, "ramraft-2", "ramraft-1") == "ramraft-1 ping"
    net.heal()
    assert udp_arrives(net, "ramraft-0", "ramraft-1", witness="ramraft-2")
    assert tcp(net, "ramraft-0", "ramraft-1") == "ramraft-1 ping"


@pytest.mark.chaos
def test_kill_and_restart_keep_the_identity_and_data_dir(chaos_net: ChaosNet) -> None:
    net = chaos_net
    marker = net.data_dir("ramraft-1") / "wal"
    # The process writes into its data dir and serves; a restart finds the file.
    script = textwrap.dedent(
        f"""
        import pathlib, runpy, sys
        p = pathlib.Path({str(marker)!r})
        p.write_text(p.read_text() + "x" if p.exists() else "x")
        sys.argv = ["echo", "serve", "--port", "{PORT}"]
        runpy.run_path({str(ECHO_PY)!r}, run_name="__main__")
        """
    )
    proc = net.start("ramraft-1", [sys.executable, "-c", script], env={"RAMRAFT_ID": "ramraft-1"})
    wait_for(lambda: "serving" in proc.log_text(), what="first start")
    first_pid = proc.pid
    assert net.kill("ramraft-1") == -signal.SIGKILL
    assert not proc.alive()
    assert tcp(net, "client", "ramraft-1") is None
    net.restart("ramraft-1")
    assert proc.pid != first_pid and proc.starts == 2
    wait_for(lambda: proc.log_text().count("serving on") == 2, what="second start")
    assert tcp(net, "client", "ramraft-1") == "ramraft-1 ping"
    assert marker.read_text() == "xx"
    assert proc.env["RAMRAFT_ID"] == "ramraft-1"
    with pytest.raises(ChaosNetError, match="still running"):
        net.restart("ramraft-1")


@pytest.mark.chaos
def test_pause_stalls_and_resume_recovers(chaos_net: ChaosNet) -> None:
    net = chaos_net
    start_echo(net, "ramraft-2")
    net.pause("ramraft-2")
    assert tcp(net, "client", "ramraft-2", timeout=0.3) is None  # accepted by the kernel, no answer
    net.resume("ramraft-2")
    assert tcp(net, "client", "ramraft-2") == "ramraft-2 ping"
    # SIGTERM reaches a paused process too (stop() continues it first).
    net.pause("ramraft-2")
    assert net.stop("ramraft-2", timeout=5) == -signal.SIGTERM


@pytest.mark.chaos
def test_teardown_leaves_nothing_even_after_an_error(chaos_support: None) -> None:
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="boom"), ChaosNet() as net:
        run_id, workdir = net.run_id, net.workdir
        start_echo(net)
        net.pause("ramraft-0")
        net.partition("ramraft-1")
        pids = [net.proc(n).pid for n in net.node_names]
        assert run_id in leftovers()
        raise RuntimeError("boom")
    assert run_id not in leftovers()
    for pid in pids:
        assert gone(pid)
    assert not list(NETNS_RUN.glob(f"rrc-{run_id}-*")) if NETNS_RUN.exists() else True
    assert not list(NETNS_ETC.glob(f"rrc-{run_id}-*")) if NETNS_ETC.exists() else True
    assert not workdir.exists()
    net.teardown()  # idempotent


@pytest.mark.chaos
def test_sweep_removes_a_crashed_run_and_spares_live_ones(chaos_net: ChaosNet) -> None:
    crash = textwrap.dedent(
        f"""
        import os, signal, sys
        from tests.chaos.netns import ChaosNet
        net = ChaosNet(nodes=("ramraft-0",), client=None)
        net.setup()
        echo = [sys.executable, {str(ECHO_PY)!r}, "serve", "--port", "{PORT}"]
        p = net.start("ramraft-0", echo)
        print("RUN", net.run_id, p.pid, net.workdir, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", crash], capture_output=True, text=True, timeout=30, cwd=REPO
    )
    assert r.returncode == -signal.SIGKILL, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("RUN "))
    _, run_id, pid, workdir = line.split()
    assert run_id in leftovers()
    # PDEATHSIG: the owner's death killed its node at once.
    wait_for(lambda: gone(pid), what="orphan to die")
    removed = sweep()
    assert run_id in removed
    assert chaos_net.run_id not in removed  # a live run (this test's) is left alone
    assert run_id not in leftovers()
    assert chaos_net.run_id in leftovers()
    assert not Path(workdir).exists()


@pytest.mark.chaos
def test_host_access_puts_the_test_process_on_the_bridge(chaos_support: None) -> None:
    with ChaosNet(host_access=True) as net:
        start_echo(net, "ramraft-0")
        ip = net.host("ramraft-0").ip
        assert ipaddress.ip_address(ip) in net.subnet
        with socket.create_connection((ip, PORT), timeout=2) as s:
            s.sendall(b"hello\n")
            assert s.makefile("rb").readline() == b"ramraft-0 hello\n"
        route = subprocess.run(
            ["ip", "-4", "route", "show", str(net.subnet)], capture_output=True, text=True
        ).stdout
        assert net.bridge in route
    assert (
        str(net.subnet)
        not in subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    )


@pytest.mark.chaos
def test_sigterm_to_the_owner_cleans_up(chaos_support: None) -> None:
    owner = textwrap.dedent(
        f"""
        import sys, time
        from tests.chaos.netns import ChaosNet
        with ChaosNet(nodes=("ramraft-0",), client=None) as net:
            net.start("ramraft-0", [sys.executable, {str(ECHO_PY)!r}, "serve", "--port", "{PORT}"])
            print("RUN", net.run_id, flush=True)
            time.sleep(60)
        """
    )
    p = subprocess.Popen([sys.executable, "-c", owner], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert p.stdout is not None
    line = next(ln for ln in p.stdout if ln.startswith("RUN "))
    run_id = line.split()[1]
    assert run_id in leftovers()
    p.terminate()
    assert p.wait(timeout=20) == 128 + signal.SIGTERM  # SystemExit from the lab's handler
    assert run_id not in leftovers()

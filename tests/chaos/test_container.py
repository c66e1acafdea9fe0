"""The ramraft image, run in the lab's namespaces as the StatefulSet runs it.

Until `ramraft node` exists the containers run the echo server from the
mounted tests/ tree; the point here is the plumbing: the image runs read-only
as uid 10001 with its data dir mounted, answers on the StatefulSet's DNS names
from inside the namespaces, and the nemesis reaches it.

Needs the image: build it with scripts/build-image.sh (RAMRAFT_IMAGE overrides
the tag looked for).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.chaos.netns import ChaosNet
from tests.chaos.test_netns import PORT, tcp, wait_for

IMAGE = os.environ.get("RAMRAFT_IMAGE", "localhost/ramraft:0.1.0")
TESTS_DIR = Path(__file__).resolve().parents[1]


def _image_missing() -> str | None:
    if shutil.which("podman") is None:
        return "podman not installed (apt-get install -y podman runc)"
    r = subprocess.run(["podman", "image", "exists", IMAGE], capture_output=True, check=False)
    return None if r.returncode == 0 else f"image {IMAGE} not built (scripts/build-image.sh)"


_MISSING = _image_missing()
pytestmark = [pytest.mark.chaos, pytest.mark.skipif(_MISSING is not None, reason=str(_MISSING))]


def start_echo_containers(net: ChaosNet) -> None:
    for h in net.node_names:
        net.start_container(
            h,
            IMAGE,
            ["-m", "tests.chaos.echo", "serve", "--port", str(PORT)],
            entrypoint="python3",
            volumes={TESTS_DIR: "/app/tests:ro"},
            workdir="/app",
        )
    for h in net.node_names:
        wait_for(lambda h=h: "serving on" in net.proc(h).log_text(), what=f"{h} container")


def exec_in(net: ChaosNet, name: str, script: str) -> str:
    ctr = net.proc(name).container
    assert ctr is not None
    r = subprocess.run(
        ["podman", "exec", ctr, "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return r.stdout + r.stderr


def test_image_runs_in_the_lab_like_a_pod(chaos_net: ChaosNet) -> None:
    net = chaos_net
    start_echo_containers(net)
    for src in net.hosts:
        for dst in net.node_names:
            assert tcp(net, src, dst) == f"{dst} ping", (src, dst)
    out = exec_in(
        net,
        "ramraft-1",
        "id -u; hostname; touch /var/lib/ramraft/ok && echo data-writable; "
        "touch /opt/x 2>/dev/null || echo root-read-only; "
        f"getent hosts {net.fqdn('ramraft-2')}",
    )
    lines = out.splitlines()
    assert lines[:4] == ["10001", "ramraft-1", "data-writable", "root-read-only"], out
    assert lines[4].startswith(net.host("ramraft-2").ip)
    assert (net.data_dir("ramraft-1") / "ok").exists()


def test_nemesis_reaches_containers(chaos_net: ChaosNet) -> None:
    net = chaos_net
    start_echo_containers(net)
    net.partition("ramraft-0")
    assert tcp(net, "ramraft-1", "ramraft-0") is None
    net.heal()
    assert tcp(net, "ramraft-1", "ramraft-0") == "ramraft-0 ping"
    net.pause("ramraft-2")
    assert tcp(net, "client", "ramraft-2", timeout=0.3) is None
    net.resume("ramraft-2")
    assert tcp(net, "client", "ramraft-2") == "ramraft-2 ping"
    assert net.kill("ramraft-1") == 128 + 9  # podman reports a SIGKILLed container as 137
    assert tcp(net, "client", "ramraft-1") is None
    proc = net.restart("ramraft-1")
    wait_for(lambda: proc.log_text().count("serving on") == 2, what="restarted container")
    assert tcp(net, "client", "ramraft-1") == "ramraft-1 ping"

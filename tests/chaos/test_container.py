"""The ramraft image, run in the lab's namespaces as the StatefulSet runs it.

First the plumbing, with the echo server from the mounted tests/ tree: the
image runs read-only as uid 10001 with its data dir mounted and answers on the
StatefulSet's DNS names from inside the namespaces. Then the real thing: three
containers of the image form a cluster, and `ramraft chaos` (from the image
too) checks it while the nemesis kills, freezes and partitions containers.

Needs the image: build it with scripts/build-image.sh (RAMRAFT_IMAGE overrides
the tag looked for).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.chaos.cluster import KILL_LEADER, PARTITION_LEADER, PAUSE_FOLLOWER, LabCluster, Nemesis
from tests.chaos.netns import GRPC_PORT, ChaosNet
from tests.chaos.test_netns import PORT, tcp, wait_for
from tests.needs import not_installed
from tests.packaging.project import image_tag

IMAGE = os.environ.get("RAMRAFT_IMAGE") or image_tag()
TESTS_DIR = Path(__file__).resolve().parents[1]


def _image_missing() -> str | None:
    if shutil.which("podman") is None:
        return not_installed("podman", "apt-get install -y podman runc")
    r = subprocess.run(["podman", "image", "exists", IMAGE], capture_output=True, check=False)
    if r.returncode == 0:
        return None
    return not_installed(f"the image {IMAGE}", "scripts/build-image.sh builds it; .ci/run does")


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


def test_three_containers_form_a_cluster_and_survive_the_nemesis(
    lab_net: ChaosNet, tmp_path: Path
) -> None:
    """The image as the StatefulSet runs it (entrypoint `ramraft node`, every
    setting from RAMRAFT_* env, read-only root, uid 10001, the data volume)
    in three namespaces; `ramraft chaos` from a fourth container of the image
    in the client namespace, while the leader container is SIGKILLed and
    restarted, a follower frozen (podman pause) and the leader cut off."""
    cluster = LabCluster(lab_net, image=IMAGE)
    out = tmp_path / "out"
    try:
        cluster.start_all()
        cluster.wait_ready(timeout=180)
        leader = cluster.leader()
        assert leader is not None
        for name in cluster.names:
            status = cluster.status(name)
            assert status is not None and status.leader == leader, (name, status)
            assert status.address == f"{lab_net.fqdn(name)}:{GRPC_PORT}"
        cluster.start_workload(out / "history.jsonl", duration=3600, clients=3, keys=3)
        time.sleep(3)
        nemesis = Nemesis(cluster, random.Random(1), hold=(2.0, 3.0), gap=(1.0, 1.5))
        killed = nemesis.inject(KILL_LEADER).targets[0]
        nemesis.inject(PAUSE_FOLLOWER)
        nemesis.inject(PARTITION_LEADER)
        time.sleep(2)
        code, summary = cluster.finish_workload()
    finally:
        cluster.close()
    assert lab_net.proc(killed).exit_codes[0] == 128 + 9  # podman: SIGKILLed container
    # The restarted container found its WAL on the volume.
    recovered = [
        json.loads(line)
        for line in lab_net.proc(killed).log_text().splitlines()
        if '"wal_recovered"' in line
    ]
    assert len(recovered) == 2 and recovered[1]["last_index"] > 0, recovered
    assert summary.get("linearizable") is True and summary.get("lost_writes") == 0, summary
    assert summary["outcomes"]["ok"] > 0
    # Every key read at the end: the workload's 3 and its transfer accounts.
    assert summary["final_reads"] == summary["keys"] > 3, summary
    assert code == 0

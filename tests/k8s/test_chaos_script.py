"""k8s/chaos.sh, run against a fake kubectl (tests/k8s/fake_kubectl.py).

It cannot meet a real cluster here; these tests pin down what it asks of one:
force-deleting ramraft pods, a valid restricted workload pod that runs
`ramraft chaos` against the client Service, and the workload's exit code
passed through.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from tests.k8s.render import REPO
from tests.needs import not_installed

SCRIPT = REPO / "k8s" / "chaos.sh"
FAKE = Path(__file__).with_name("fake_kubectl.py")


def run_chaos(tmp_path: Path, *args: str, rc: str = "0") -> subprocess.CompletedProcess[str]:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    kubectl = bindir / "kubectl"
    kubectl.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    kubectl.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "FAKE_KUBECTL_LOG": str(tmp_path / "calls.jsonl"),
        "FAKE_KUBECTL_DIR": str(tmp_path),
        "FAKE_RC": rc,
    }
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def calls(tmp_path: Path) -> list[list[str]]:
    lines = (tmp_path / "calls.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_kills_pods_and_passes_the_verdict_through(tmp_path: Path) -> None:
    hist = tmp_path / "h.jsonl"
    r = run_chaos(
        tmp_path, "-n", "prod", "--duration", "4", "--interval", "1", "--settle", "1",
        "--history", str(hist),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    made = calls(tmp_path)
    assert all(c[:2] == ["--namespace", "prod"] for c in made)
    deletes = [c[2:] for c in made if c[2:4] == ["delete", "pod"] and "--force" in c]
    assert deletes, r.stderr
    for d in deletes:
        assert re.fullmatch(r"ramraft-[0-2]", d[2])
        assert "--grace-period=0" in d
    faults = Path(f"{hist}.faults").read_text().splitlines()
    assert len(faults) == len(deletes)
    assert hist.read_text().startswith('{"op": "put"')
    # The workload pod is removed afterwards.
    assert any(c[2:4] == ["delete", "pod"] and "ramraft-chaos-" in c[4] for c in made)


def test_workload_pod_is_valid_and_runs_ramraft_chaos(tmp_path: Path) -> None:
    r = run_chaos(tmp_path, "--duration", "2", "--interval", "1", "--settle", "1")
    assert r.returncode == 0, r.stderr
    pod = yaml.safe_load((tmp_path / "applied.yaml").read_text())
    kubernetes_validate.validate(pod, "1.32.0", strict=True)
    c = pod["spec"]["containers"][0]
    assert c["image"] == "localhost/ramraft:0.1.0"  # the StatefulSet's image
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env == {"ENDPOINTS": "ramraft.default.svc:7000", "DURATION": "2"}
    script = c["command"][-1]
    assert 'ramraft chaos --endpoints "$ENDPOINTS" --duration "$DURATION"' in script
    assert "--history /tmp/history.jsonl" in script
    # The pod must not be selected by the set's Services, PDB or NetworkPolicy.
    assert pod["metadata"]["labels"]["app.kubernetes.io/name"] != "ramraft"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_a_failed_check_fails_the_script(tmp_path: Path) -> None:
    r = run_chaos(tmp_path, "--duration", "2", "--interval", "1", "--settle", "1", rc="1")
    assert r.returncode == 1
    assert "workload exited 1" in r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--duration", "ten"], "--duration must be a whole number"),
        (["--duration", "5", "--settle", "5"], "must be shorter"),
        (["--bogus"], "unknown argument"),
    ],
)
def test_bad_usage_exits_2(tmp_path: Path, args: list[str], message: str) -> None:
    r = run_chaos(tmp_path, *args)
    assert r.returncode == 2
    assert message in r.stderr


@pytest.mark.parametrize("script", ["k8s/chaos.sh", "scripts/build-image.sh", ".ci/run"])
def test_scripts_are_shellcheck_clean(script: str) -> None:
    assert subprocess.run(["bash", "-n", str(REPO / script)], check=False).returncode == 0
    if shutil.which("shellcheck") is None:
        pytest.skip(not_installed("shellcheck", "apt-get install -y shellcheck"))
    r = subprocess.run(
        ["shellcheck", str(REPO / script)], capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, r.stdout


def test_the_workload_command_is_one_ramraft_chaos_accepts(tmp_path: Path) -> None:
    """The command line the pod runs, with its variables filled in, parses
    with the real `ramraft chaos` parser: script and command stay in step."""
    import shlex

    from ramraft.tools.cli import build_parser

    r = run_chaos(
        tmp_path, "--duration", "2", "--interval", "1", "--settle", "1",
        "--clients", "7", "--keys", "3",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    pod = yaml.safe_load((tmp_path / "applied.yaml").read_text())
    c = pod["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in c["env"]}
    script = c["command"][-1].split(";")[0]
    for name, value in env.items():
        script = script.replace(f'"${name}"', value)
    argv = shlex.split(script)
    assert argv[0] == "ramraft"
    args = build_parser().parse_args(argv[1:])
    assert args.func.__module__ == "ramraft.tools.chaos"
    assert (args.endpoints, args.duration, args.clients, args.keys) == (
        "ramraft.default.svc:7000", 2.0, 7, 3,
    )  # fmt: skip
    assert args.history == "/tmp/history.jsonl"

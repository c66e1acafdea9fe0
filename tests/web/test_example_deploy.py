"""examples/notes deploys with the k8s/ manifests: the kustomize overlay, and
the package layout its ConfigMap mount gives the node."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.k8s.render import KUBECTL_INSTALL
from tests.needs import not_installed
from tests.server.procs import REPO

NOTES = REPO / "examples" / "notes"
FILES = ("__init__.py", "model.py", "pages.py")


@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason=not_installed("kubectl (kustomize)", KUBECTL_INSTALL)
)
def test_overlay_serves_the_app_from_a_configmap() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(NOTES)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    configmap = next(d for d in docs if d["kind"] == "ConfigMap")
    assert configmap["metadata"]["name"].startswith("notes-app-")
    assert configmap["data"] == {name: (NOTES / name).read_text() for name in FILES}
    statefulset = next(d for d in docs if d["kind"] == "StatefulSet")
    spec = statefulset["spec"]["template"]["spec"]
    container = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RAMRAFT_APP"] == "notes:app" and env["RAMRAFT_APP_PATH"] == "/opt/app"
    assert env["RAMRAFT_HTTP"] == "0.0.0.0:8080"  # the base's settings are kept
    mount = next(m for m in container["volumeMounts"] if m["name"] == "notes-app")
    assert mount["mountPath"] == "/opt/app/notes" and mount["readOnly"]
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/var/lib/ramraft", "/tmp"}
    volume = next(v for v in spec["volumes"] if v["name"] == "notes-app")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]


def test_the_mounted_files_load_as_the_package_notes(tmp_path: Path) -> None:
    """What a pod sees: only the three files, as /opt/app/notes, found
    through RAMRAFT_APP_PATH (in a fresh interpreter, as the node would)."""
    package = tmp_path / "opt" / "app" / "notes"
    package.mkdir(parents=True)
    for name in FILES:
        shutil.copy(NOTES / name, package / name)
    app_path = str(tmp_path / "opt" / "app")
    code = (
        "import argparse, ramraft.tools.node_cli as c;"
        f"a = c.load_app_from_args(argparse.Namespace(app='notes:app', app_path={app_path!r}));"
        "print(type(a.model).__module__, a.title, len(list(a.routes)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=tmp_path,  # not the repository: examples/ is not importable from here
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"},
    ).stdout
    assert out.split() == ["notes.model", "Notes", "board", "10"]

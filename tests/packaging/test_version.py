"""One version source: pyproject.toml's ``[project] version``. The package
reports it (``ramraft.__version__``, ``ramraft --version``, from the installed
metadata), the image build tags with it, and the kustomizations deploy it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import ramraft
from ramraft.tools import cli
from tests.packaging.project import REPO, image_tag, project_version


def test_the_installed_metadata_has_pyprojects_version() -> None:
    assert ramraft.__version__ == project_version(), (
        "the installed ramraft's metadata is older than pyproject.toml: "
        "run `pip install -e '.[dev]'` again"
    )


def test_ramraft_version_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out == f"ramraft {project_version()}\n"


def test_python_m_ramraft_version_prints_it(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ramraft", "--version"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"ramraft {project_version()}\n"


def test_the_image_build_tags_with_it() -> None:
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-image.sh"), "--print-tag"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{image_tag()}\n"


def _kustomizations() -> list[Path]:
    skip = {".git", "node_modules", "build"}
    return sorted(
        p
        for p in REPO.rglob("kustomization.yaml")
        if not skip.intersection(p.relative_to(REPO).parts)
    )


def test_every_kustomization_deploys_it() -> None:
    """An `images` entry for ramraft names the version; k8s/ has one, and
    kustomizations built on it (examples/notes) inherit it or set the same."""
    found = _kustomizations()
    assert REPO / "k8s" / "kustomization.yaml" in found
    pinned = {}
    for path in found:
        doc = yaml.safe_load(path.read_text())
        for image in doc.get("images", []):
            if image.get("name") == "ramraft":
                pinned[path.relative_to(REPO).as_posix()] = str(image.get("newTag"))
    assert "k8s/kustomization.yaml" in pinned
    wrong = {path: tag for path, tag in pinned.items() if tag != project_version()}
    assert not wrong, f"newTag differs from pyproject.toml's version {project_version()}: {wrong}"

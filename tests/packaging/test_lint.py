"""ruff (lint and format) and mypy --strict, with the project's configuration
in pyproject.toml, are clean over the repository: CI runs them as tests.

Each runs as ``python -m TOOL`` of this interpreter (the dev extra installs
them); a test is skipped, with the reason, only where its tool is missing."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from tests.needs import not_installed
from tests.packaging.project import REPO


def _run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec(tool) is None:
        pytest.skip(not_installed(tool, "pip install -e '.[dev]'"))
    return subprocess.run(
        [sys.executable, "-m", tool, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_ruff_check() -> None:
    done = _run("ruff", "check", "--no-cache", ".")
    assert done.returncode == 0, f"ruff check .\n{done.stdout}{done.stderr}"


def test_ruff_format() -> None:
    done = _run("ruff", "format", "--check", "--no-cache", ".")
    assert done.returncode == 0, f"ruff format --check . (run `ruff format .`)\n{done.stdout}"


def test_mypy_strict() -> None:
    done = _run("mypy")
    assert done.returncode == 0, f"mypy\n{done.stdout}{done.stderr}"
    assert "Success" in done.stdout

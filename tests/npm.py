"""Installing a test's Node.js packages from its lock file."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def npm_ci(directory: Path) -> subprocess.CompletedProcess[str] | None:
    """``npm ci`` in ``directory`` (exactly what its package-lock.json says,
    into its node_modules); None when node or npm is not on PATH."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        return None
    return subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=300,
    )

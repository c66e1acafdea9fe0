"""The pytest plugin ramraft installs (ramraft/testing.py, entry point
``pytest11``), seen from a project of its own: a fresh directory with one
test file and no conftest, run by pytest in a subprocess. The README's
"Testing your application" example is that file, taken verbatim."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.packaging.project import REPO


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Testing your application", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the section has a Python example"
    return match.group(1)


def run_pytest(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            *args,
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_readme_example_is_a_complete_passing_test(tmp_path: Path) -> None:
    example = readme_example()
    code = [line for line in example.splitlines() if line.strip()]
    assert len(code) < 20, f"the example has {len(code)} lines of code"
    (tmp_path / "test_counter.py").write_text(example)
    result = run_pytest(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_a_failing_test_names_its_seed_and_the_seed_replays_it(tmp_path: Path) -> None:
    (tmp_path / "test_trace.py").write_text(
        "from ramraft import ReplicatedModel, command\n"
        "from ramraft.testing import Faults\n\n"
        "class Log(ReplicatedModel):\n"
        "    def __init__(self):\n"
        "        self.items = []\n\n"
        "    @command\n"
        "    def add(self, item):\n"
        "        self.items.append(item)\n\n"
        "def test_trace(ramraft_cluster):\n"
        "    cluster = ramraft_cluster(Log, faults=Faults(drop=0.1, max_delay=0.03))\n"
        "    for n in range(10):\n"
        "        cluster.run(cluster.model().add(n))\n"
        "        if n == 4:\n"
        "            cluster.kill(cluster.leader())\n"
        "    trace = (cluster.leader(), cluster.now() - cluster.clock.wall_start)\n"
        "    assert False, f'trace {trace}'\n"
    )
    first = run_pytest(tmp_path)
    assert first.returncode == 1
    seed = re.search(r"replay with --ramraft-seed (\d+)", first.stdout)
    assert seed, first.stdout
    trace = re.search(r"trace \((.*?)\)", first.stdout)
    assert trace
    again = run_pytest(tmp_path, "--ramraft-seed", seed.group(1))
    assert f"trace ({trace.group(1)})" in again.stdout, again.stdout


def test_the_plugin_imports_nothing_of_the_node_until_used() -> None:
    probe = (
        "import sys, ramraft.testing\n"
        "loaded = [m for m in sys.modules if m.startswith(('ramraft.server', 'grpc', 'aiohttp'))]\n"
        "print(loaded)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"

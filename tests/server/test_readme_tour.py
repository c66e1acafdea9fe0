"""The README's five-minute tour, taken from the README as written and run
against a real three-node cluster: every command succeeds, and where its
comment shows the output (`# OK (index 5)`, `# hello`), the output is that
(an index may differ). A newcomer's first commands stay true."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from ramraft import __version__
from tests.packaging.project import REPO
from tests.server.procs import ProcessCluster


def tour() -> list[tuple[list[str], str]]:
    """The tour's commands (argv) with their comments."""
    text = (REPO / "README.md").read_text()
    section = text.split("## A five-minute tour", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, "the tour has a bash block"
    commands = []
    for line in match.group(1).splitlines():
        command, _, comment = line.partition("#")
        if command.strip():
            commands.append((shlex.split(command), comment.strip()))
    return commands


def _shape(text: str) -> str:
    return re.sub(r"\d+", "N", text.strip())


def test_the_five_minute_tour_runs_as_written(tmp_path: Path) -> None:
    commands = tour()
    assert [argv[:2] for argv, _ in commands][:2] == [["ramraft", "put"], ["ramraft", "get"]]
    with ProcessCluster(tmp_path) as cluster:
        cluster.wait_for_leader()
        env = dict(os.environ, RAMRAFT_ENDPOINTS=cluster.endpoints(), PYTHONPATH=str(REPO))
        outputs: dict[str, str] = {}
        for argv, comment in commands:
            assert argv[0] == "ramraft", argv
            done = subprocess.run(
                [sys.executable, "-m", "ramraft", *argv[1:]],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, (argv, done.stdout, done.stderr)
            outputs[shlex.join(argv[1:])] = done.stdout
            if argv[1] in ("put", "get") and "--json" not in argv:
                # The comment is the output (an index may differ).
                assert _shape(done.stdout) == _shape(comment), (argv, done.stdout, comment)
    # What the others promise, in the order they ran: the cas swapped hello
    # for bye, which range and the JSON read then show.
    assert outputs["range g"] == "greeting\tbye\n"
    assert json.loads(outputs["get greeting --json"])["value"] == "bye"
    assert "LEADER" in outputs["status"] and "leader" in outputs["status"]
    assert __version__ in outputs["--version"]

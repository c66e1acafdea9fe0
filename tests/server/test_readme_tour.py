"""The README's first command examples, taken from the README as written
and run against a real three-node cluster: the five-minute tour, and the
etcd-style tour of revisions, transactions, watches and leases. Every
command succeeds (or fails as its comment says), and where its comment
shows the output (`# OK (index 5)`, `# hello`, `# deleted 1`), the output
is that (an index may differ). A newcomer's first commands stay true."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

from ramraft import __version__
from tests.packaging.project import REPO
from tests.server.procs import ProcessCluster


def block(heading: str) -> list[tuple[str, str]]:
    """The lines of the first bash block under ``heading``: (command, comment)."""
    text = (REPO / "README.md").read_text()
    section = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, f"{heading!r} has a bash block"
    lines = []
    for line in match.group(1).splitlines():
        command, _, comment = line.partition("  #")
        if command.strip():
            lines.append((command.strip(), comment.strip()))
    return lines


def tour() -> list[tuple[list[str], str]]:
    """The tour's commands (argv) with their comments."""
    return [(shlex.split(command), comment) for command, comment in block("A five-minute tour")]


def _shape(text: str) -> str:
    """The output as a comment shows it: a log index may differ."""
    return re.sub(r"index \d+", "index N", text.strip())


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


# Comments of the KV tour that describe rather than show the output.
DESCRIPTIONS = {"gone 10 s after the last keep-alive"}


def test_the_kv_tour_runs_as_written(tmp_path: Path) -> None:
    """The section on revisions, transactions, watches and leases: its lines
    run in a shell (one has a pipe, one goes to the background), in order,
    on a fresh cluster."""
    lines = block("Revisions, transactions, watches and leases")
    shim = tmp_path / "bin" / "ramraft"  # `ramraft` on PATH: this interpreter's
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m ramraft "$@"\n')
    shim.chmod(0o755)
    with ProcessCluster(tmp_path / "cluster") as cluster:
        cluster.wait_for_leader()
        cluster.wait_for_kv2()
        env = dict(
            os.environ,
            RAMRAFT_ENDPOINTS=cluster.endpoints(),
            PYTHONPATH=str(REPO),
            PATH=f"{shim.parent}{os.pathsep}{os.environ['PATH']}",
        )
        watcher: subprocess.Popen[str] | None = None
        seen: list[str] = []
        wanted: list[str] = []
        try:
            for command, comment in lines:
                if command.endswith("&"):
                    # "From now", fixed now: the revision after the current
                    # one (the watch may connect after the next line ran).
                    with cluster.client() as c:
                        now = c.range("config/").revision
                    watcher = subprocess.Popen(
                        ["bash", "-c", f"exec {command[:-1]} --rev {now + 1}"],
                        env=env,
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                    reader = threading.Thread(target=_read_into, args=(watcher, seen))
                    reader.start()
                    wanted = [w.strip() for w in comment.split(",") if w.strip() != "..."]
                    continue
                done = subprocess.run(
                    ["bash", "-c", command], env=env, capture_output=True, text=True, timeout=60
                )
                said = (done.stdout + done.stderr).strip()
                if comment.startswith("error:"):  # the error's words, shortened
                    words = comment.removeprefix("error:").strip()
                    assert done.returncode != 0 and words in said, (command, said)
                    continue
                assert done.returncode == 0, (command, said)
                if comment and comment not in DESCRIPTIONS:
                    assert _shape(said) == _shape(comment), (command, said, comment)
            deadline = time.monotonic() + 60  # a bound on the wait, not a speed claim
            while not set(wanted) <= set(seen) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            if watcher is not None:
                watcher.terminate()
                watcher.wait(timeout=30)
                reader.join(timeout=30)
    assert watcher is not None, "the tour starts a watch"
    # Its comment lists events it printed, in order ("..." for the rest).
    assert set(wanted) <= set(seen), (seen, wanted)
    at = [seen.index(w) for w in wanted]
    assert at == sorted(at), (seen, wanted)


def _read_into(process: subprocess.Popen[str], lines: list[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line.rstrip("\n"))

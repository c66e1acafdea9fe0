"""bench.trace_read: the stages of a read round lined up from the notes of
four processes (known times in, known durations out), and the tracer on a
real cluster, whose notes must cover every stage (it wraps functions by
name, so a rename would otherwise leave it silently empty)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.trace_read import STAGES, stages
from bench.trace_write import load
from tests.bench.notes import write_notes as write_files

REPO = Path(__file__).resolve().parents[2]

# Times in µs. Round 5 starts at 100 on the leader (pid 1); follower n2 (pid
# 2) answers first, n3 (pid 3) later; the client (pid 4) sends the next
# batch, which starts round 6.
LEADER = """\
0 batch_in 64
100 round_start 5
130 heartbeat_out 5 n1>n2
140 heartbeat_out 5 n1>n3
700 heartbeat_resp_in 5 n2>n1
900 heartbeat_resp_in 5 n3>n1
720 released 5
1800 answer_written 0
1801 answer_written 0
3000 batch_in 64
3200 round_start 6
"""
FIRST = """\
400 heartbeat_in 5 n1>n2
500 heartbeat_resp_out 5 n2>n1
"""
SECOND = """\
600 heartbeat_in 5 n1>n3
800 heartbeat_resp_out 5 n3>n1
"""
CLIENT = """\
2700 batch_out 0
cut short when the client was kil
"""


def write_notes(directory: Path) -> None:
    write_files(directory, {1: LEADER, 2: FIRST, 3: SECOND, 4: CLIENT})


def test_the_stages_follow_the_first_answer(tmp_path: Path) -> None:
    write_notes(tmp_path)
    durations = {name: round(values[0]) for name, values in stages(load(tmp_path)).items()}
    assert durations == dict(
        zip(STAGES, (100, 30, 270, 100, 200, 20, 1080, 900, 300, 3100), strict=True)
    )


def test_the_tracer_notes_every_stage_of_a_real_cluster() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.trace_read", "--duration", "1", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["rounds"] > 20, result
    assert result["reads_per_s"] > 0, result
    medians = result["stages_us"]
    assert list(medians) == list(STAGES), medians
    # Every stage that must take time (a hop, a turn of a loop) took some.
    for name in STAGES:
        assert medians[name] > 0, (name, medians)


def test_bad_arguments_are_a_one_line_error() -> None:
    for args, message in ((["--duration", "0"], "--duration"), (["--in-flight", "0"], "--in")):
        done = subprocess.run(
            [sys.executable, "-m", "bench.trace_read", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2
        assert message in done.stderr.strip().splitlines()[-1]

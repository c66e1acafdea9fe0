"""bench.trace_write: the stages of a write lined up from the notes of three
processes (known times in, known medians out), and the tracer itself on a
real cluster, whose notes must cover the whole path (it wraps the runtime's
functions by name, so a rename would otherwise leave it silently empty)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.trace_write import load, stages
from tests.bench.notes import write_notes as write_files

REPO = Path(__file__).resolve().parents[2]

# Times in µs from the write's start; entry 7 written by the leader (pid 1),
# acknowledged first by the follower of pid 2, later by pid 3.
LEADER = """\
0 propose 7
10 disk_submit 7
30 save_start 7
330 save_end 7
100 append_out 7 f2
120 append_out 7 f3
900 ack_in 7 f2
1000 ack_in 7 f3
950 applied 7
990 resumed 7
"""
FIRST = """\
400 append_in 7 l
450 save_start 7
750 save_end 7
800 ack_out 7 l
"""
SECOND = """\
500 append_in 7 l
550 save_start 7
950 save_end 7
980 ack_out 7 l
cut short when the node was kil
"""


def write_notes(directory: Path) -> None:
    write_files(directory, {1: LEADER, 2: FIRST, 3: SECOND})


def test_the_stages_follow_the_first_acknowledgement(tmp_path: Path) -> None:
    write_notes(tmp_path)
    durations = {name: round(values[0]) for name, values in stages(load(tmp_path)).items()}
    assert durations == {
        "leader: propose -> append leaves": 100,
        "hop: append leaves -> follower parsed it": 300,
        "follower: parsed -> save starts": 50,
        "follower: save (pwrite + fdatasync)": 300,
        "follower: saved -> acknowledgement leaves": 50,
        "hop: acknowledgement leaves -> leader parsed it": 100,
        "leader: waits for its own save after that": 0,
        "leader: ack (and own save) -> entry applied": 50,
        "leader: applied -> proposer resumed": 40,
        "total: propose -> resumed": 990,
        "(parallel) leader's save: handed to the disk thread -> started": 20,
        "(parallel) leader's save: pwrite + fdatasync": 300,
    }


def test_the_leader_is_the_node_that_proposed_most(tmp_path: Path) -> None:
    """Another node led first, for one proposal before the bench moved
    leadership (CI saw it: two writes traced of 700); its notes come first."""
    write_notes(tmp_path)
    with (tmp_path / "trace.1").open("a") as leader:
        leader.write("0.0010000 propose 8 \n")  # the run's last write, not finished
    (tmp_path / "trace.9").write_text("0.0000010 propose 3 \n0.0000020 resumed 3 \n")
    notes = load(tmp_path)
    notes = {9: notes.pop(9), **notes}
    assert len(stages(notes)["total: propose -> resumed"]) == 1  # entry 7, from pid 1


@pytest.mark.parametrize("mode", ["inproc-write", "write"])
def test_the_tracer_notes_every_stage_of_a_real_cluster(tmp_path: Path, mode: str) -> None:
    """In process (NodeAPI.write, which awaits RaftRuntime.propose) and over
    gRPC (AsyncClient's stream writes, proposed in place with
    RaftRuntime.offer and answered from a callback)."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.trace_write", "--mode", mode, "--duration", "1", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["writes"] > 50, result
    medians = result["stages_us"]
    assert len(medians) == 12, medians
    # Every stage that must take time was seen taking some.
    for name in (
        "hop: append leaves -> follower parsed it",
        "follower: save (pwrite + fdatasync)",
        "hop: acknowledgement leaves -> leader parsed it",
        "total: propose -> resumed",
    ):
        assert medians[name] > 0, (name, medians)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--duration", "0"], "--duration must be more than 0"),
        (["--in-flight", "0"], "--in-flight must be at least 1"),
    ],
)
def test_a_bad_argument_is_a_one_line_error(args: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.trace_write", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith(message)

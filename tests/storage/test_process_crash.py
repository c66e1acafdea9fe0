"""Real processes, real files: a writer killed with SIGKILL at random moments
loses nothing it reported as synced, and one that hits a file-size limit
(EFBIG, the way a full disk fails) stops cleanly without damaging its log."""

from __future__ import annotations

import itertools
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from structlog.testing import capture_logs

from ramraft.server.storage import RecoveredState, open_memory_storage, open_storage

from . import crash_writer

WRITER = Path(crash_writer.__file__).resolve()
ROOT = WRITER.parents[2]


def oracle(seed: int, count: int) -> tuple[RecoveredState, bytes | None]:
    """The state after the first ``count`` steps, from the memory store, with
    the newest snapshot's data (older ones may outlive a crash that came
    before they were pruned, which is harmless)."""
    log, snaps = open_memory_storage()
    log.load()
    for step in itertools.islice(crash_writer.steps(seed), count):
        crash_writer.apply(step, log, snaps)
    log, snaps = open_memory_storage(log.disk)
    state = log.load()
    if state.snapshot is None:
        return state, None
    with snaps.open() as reader:
        return state, reader.read()


def recovered(data_dir: Path) -> tuple[RecoveredState, bytes | None]:
    log, snaps = open_storage(data_dir, segment_size=crash_writer.SEGMENT_SIZE)
    try:
        with capture_logs():
            state = log.load()
        data = None
        if state.snapshot is not None:
            with snaps.open() as reader:
                assert reader.meta == state.snapshot
                data = b"".join(reader)
    finally:
        log.close()
    return state, data


def run_writer(data_dir: Path, seed: int, start: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WRITER), str(data_dir), str(seed), "--start", str(start), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        text=True,
    )


def last_done(lines: list[str], start: int) -> int:
    done = [int(line.split()[1]) for line in lines if line.startswith("done ")]
    return done[-1] if done else start


def match(data_dir: Path, seed: int, reported: int) -> int:
    """The recovered state must be the state after the last reported step,
    or after the one in flight. Returns which."""
    got = recovered(data_dir)
    for count in (reported, reported + 1):
        if got == oracle(seed, count):
            return count
    state, _ = got
    want, _ = oracle(seed, reported)
    raise AssertionError(
        f"seed {seed}: recovered state (last index {state.last_index}, {state.hard_state}, "
        f"snapshot {state.snapshot}) is neither step {reported} nor {reported + 1} "
        f"(want last index {want.last_index}, {want.hard_state}, snapshot {want.snapshot})"
    )


def test_sigkill_at_random_moments_loses_nothing_synced(tmp_path: Path) -> None:
    rng = random.Random(2024)
    kills = 0
    for seed in range(3):
        data_dir = tmp_path / f"node{seed}"
        position = 0
        for _round in range(3):  # kill, recover, continue on the same directory
            writer = run_writer(data_dir, seed, position)
            assert writer.stdout is not None
            assert writer.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.05, 0.4))
            writer.send_signal(signal.SIGKILL)
            lines = writer.stdout.read().splitlines()
            writer.wait()
            assert writer.returncode == -signal.SIGKILL, "the writer ran out of steps"
            kills += 1
            reported = last_done(lines, position)
            assert reported > position, "the writer made no progress before the kill"
            position = match(data_dir, seed, reported)
    assert kills == 9


def test_write_error_stops_the_writer_and_keeps_the_log(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    writer = run_writer(
        data_dir,
        7,
        0,
        "--fsize-limit",
        str(120_000),
        "--no-preallocate",
        "--segment-size",
        str(1 << 20),
    )
    out, _ = writer.communicate(timeout=60)
    lines = out.splitlines()
    failed = [line for line in lines if line.startswith("failed ")]
    assert failed, lines[-3:]
    assert "File too large" in failed[0] and "refuses writes" in failed[0]
    assert lines[-1] == "refused"  # later writes are refused too
    failed_step = int(failed[0].split()[1])
    assert last_done(lines, 0) == failed_step - 1
    # Nothing acknowledged is lost and the partial record is gone: exactly the
    # state after the last step that returned.
    log, _ = open_storage(data_dir, segment_size=1 << 20)
    with capture_logs() as logs:
        log.load()
    log.close()
    assert [e["event"] for e in logs].count("wal_torn_tail_truncated") == 1  # the partial write
    assert recovered(data_dir) == oracle(7, failed_step - 1)

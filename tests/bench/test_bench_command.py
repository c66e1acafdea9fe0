"""Smoke tests of ``ramraft bench``: tiny runs that check the command works
and reports every field. They never assert speed (benchmarks measure speed;
tests check behaviour)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ramraft.tools.bench import (
    ALL_MODES,
    BenchError,
    Tally,
    _modes,
    _targets,
    closed_loop,
    percentile,
    processes_for,
    summarize,
    threaded_closed_loop,
)
from tests.server.procs import ProcessCluster

REPO = Path(__file__).resolve().parents[2]
RUN_FIELDS = {
    "mode",
    "api",
    "in_flight",
    "processes",
    "client",
    "seconds",
    "ops",
    "ops_per_s",
    "writes_per_s",
    "reads_per_s",
    "p50_ms",
    "p99_ms",
    "p999_ms",
    "mean_ms",
    "errors",
    "error_kinds",
    "cores",
}


def bench(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ramraft.tools.cli", "bench", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def check_run(run: dict[str, object]) -> None:
    assert run.keys() >= RUN_FIELDS, RUN_FIELDS - run.keys()
    assert isinstance(run["ops"], int) and run["ops"] > 0, run  # it did something
    for name in ("p50_ms", "p99_ms", "p999_ms"):
        assert isinstance(run[name], float) and run[name] > 0, (name, run)
    assert run["p50_ms"] <= run["p99_ms"] <= run["p999_ms"]  # type: ignore[operator]
    is_write = run["mode"] in ("write", "inproc-write")
    assert (run["writes_per_s"] is not None) == is_write
    assert (run["reads_per_s"] is not None) != is_write


def test_bench_local_cluster_every_mode_prints_json() -> None:
    done = bench("--duration", "1", "--warmup", "0.3", "--in-flight", "3", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)  # stdout is nothing but the JSON document
    assert result["cluster"]["fsync"] is True
    assert result["cluster"]["started_here"] is True
    assert result["cluster"]["inproc_node"] == "n1"
    assert [r["mode"] for r in result["runs"]] == list(ALL_MODES)
    for run in result["runs"]:
        check_run(run)
        assert run["in_flight"] == 3
        assert run["errors"] == 0, run


@pytest.mark.parametrize(
    ("driver", "target"),
    [("raw", "leader"), ("stream", "leader"), ("blocking", "leader"), ("raw", "follower")],
)
def test_bench_against_running_cluster(tmp_path: Path, driver: str, target: str) -> None:
    with ProcessCluster(tmp_path, nodes=3) as cluster:
        cluster.wait_for_leader()
        done = bench(
            "--endpoints", cluster.endpoints(), "--mode", "write,read-serializable",
            "--duration", "0.5", "--warmup", "0.2", "--in-flight", "2", "--client", driver,
            "--target", target, "--keys", "10", "--json", "--no-progress",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout)
        assert result["cluster"]["started_here"] is False
        assert [r["mode"] for r in result["runs"]] == ["write", "read-serializable"]
        for run in result["runs"]:
            check_run(run)
            assert run["client"] == driver
            assert run["errors"] == 0, run


def test_bench_human_output_has_a_table() -> None:
    done = bench(
        "--mode", "inproc-write", "--duration", "0.5", "--warmup", "0.2", "--in-flight", "2"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "inproc-write" in done.stdout and "p99.9 ms" in done.stdout
    assert "starting 3 nodes" in done.stderr  # progress goes to stderr, results to stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--endpoints", "127.0.0.1:1", "--mode", "inproc-write"], "own cluster"),
        (["--mode", "nonsense"], "unknown mode"),
        (["--in-flight", "0"], ">= 1"),
        (["--duration", "-1"], "more than 0"),
        (["--endpoints", "not-an-address"], "--endpoints"),
        (["--data-dir", "pyproject.toml"], "--data-dir pyproject.toml: is a file"),
    ],
)
def test_bench_rejects_bad_arguments(args: list[str], message: str) -> None:
    done = bench(*args, timeout=60)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_percentiles_and_summary() -> None:
    values = sorted(float(n) for n in range(1, 1001))  # 1..1000
    assert percentile(values, 50) == 500.0
    assert percentile(values, 99) == 990.0
    assert percentile(values, 99.9) == 999.0
    assert percentile(values, 100) == 1000.0
    assert percentile([], 50) is None
    tally = Tally(ok=4, latencies=[0.001, 0.002, 0.003, 0.004])
    run = summarize("write", 4, 1, "library", tally, 2.0, {"cores": {}})
    assert run["writes_per_s"] == 2.0 and run["reads_per_s"] is None
    assert run["p50_ms"] == 2.0 and run["p999_ms"] == 4.0


def test_mode_lists_and_process_counts() -> None:
    assert _modes("grpc") == ["write", "read-linearizable", "read-serializable"]
    assert _modes("write,write,inproc") == ["write", "inproc-write", "inproc-read-linearizable"]
    assert processes_for(1, 0) == 1
    assert processes_for(1000, 0) == 2
    assert processes_for(3, 8) == 3  # never more processes than requests in flight


def test_each_caller_keeps_its_slot() -> None:
    """The drivers pick a caller's connection by its slot: were it the call
    count, one batch's answers would be sent on over every connection and
    the batches would shrink to a request each (bench --connections 2
    measured 9,600 serializable reads/s against 32,600 with the slot)."""
    seen: dict[int, set[int]] = {}  # caller -> the coroutines that used it
    counts: list[int] = []
    pace: dict[int, int] = {}  # coroutine -> its turns per call (1, 2, 3)

    async def op(n: int, caller: int) -> None:
        task = asyncio.current_task()
        assert task is not None
        coroutine = id(task.get_coro())
        seen.setdefault(caller, set()).add(coroutine)
        counts.append(n)
        for _ in range(pace.setdefault(coroutine, len(pace) + 1)):
            await asyncio.sleep(0)  # the callers go at different speeds

    async def run() -> Tally:
        tally = Tally()
        now = time.monotonic()
        await closed_loop(op, 3, now, now + 0.05, tally)
        return tally

    tally = asyncio.run(run())
    assert sorted(seen) == [0, 1, 2]
    assert all(len(coroutines) == 1 for coroutines in seen.values()), seen
    assert sorted(counts) == list(range(len(counts))) and tally.done == len(counts)


def test_targets() -> None:
    """--target: the leader, every node, or one follower (never the leader)."""
    nodes = ["a:1", "b:1", "c:1"]
    assert _targets("leader", nodes, "b:1") == ["b:1"]
    assert _targets("all", nodes, "b:1") == nodes
    assert _targets("follower", nodes, "b:1") == ["a:1"]
    assert _targets("follower", nodes, "a:1") == ["b:1"]
    with pytest.raises(BenchError, match="no follower"):
        _targets("follower", ["a:1"], "a:1")


def test_the_threaded_loop_keeps_each_caller_on_its_thread() -> None:
    """threaded_closed_loop (the blocking drivers): one thread per caller,
    each always the same; every call counted once; an error counted, not
    raised."""
    seen: dict[int, set[int]] = {}  # caller -> the threads that used it
    counts: list[int] = []
    lock = threading.Lock()

    def op(n: int, caller: int) -> None:
        with lock:
            seen.setdefault(caller, set()).add(threading.get_ident())
            counts.append(n)
        if n == 5:
            raise ValueError("refused")
        time.sleep(0.001)

    tally = Tally()
    now = time.monotonic()
    threaded_closed_loop(op, 4, now, now + 0.2, tally)
    assert sorted(seen) == [0, 1, 2, 3]
    assert all(len(threads) == 1 for threads in seen.values()), seen
    assert len({next(iter(t)) for t in seen.values()}) == 4  # four threads
    assert sorted(counts) == list(range(len(counts)))
    assert tally.errors == 1 and tally.ok + tally.errors <= len(counts)
    assert len(tally.latencies) == tally.ok > 0

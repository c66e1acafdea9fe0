"""Benchmark of the state digest (divergence alarm) and of backup and restore.

    python -m bench.bench_backup                       # 1,000,000 keys, 100-byte values
    python -m bench.bench_backup --keys 100000 --json

1. digest: ``digest_job`` (server/machines/digest.py) over a key-value machine
   of --keys keys, in a worker thread as a node runs it, while a coroutine
   ticking every millisecond measures how late the event loop wakes it: the
   seconds, the MB/s hashed, the view's pause on the loop, and the longest
   and p99 stall of the loop. A ticker alone, without the digest, gives the
   baseline of the same machine in the same run.
2. restore: ``ramraft restore`` of a backup of that machine into an empty
   data directory (the command, as an operator runs it), then a one-node
   cluster started from it until it serves.
3. backup: ``ramraft backup --out`` from that node over gRPC (the linearizable
   read point, the stream, fsync, the checksum check, the rename), and
   ``ramraft backup --verify`` of the file (checksum + decoding every key).

The commands are timed as separate processes (Python's start-up included:
the time an operator waits). Nothing here is asserted; speed is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import structlog  # noqa: E402

from ramraft.client import Client  # noqa: E402
from ramraft.server.machines.cluster import ClusterState  # noqa: E402
from ramraft.server.machines.digest import HashingSink, digest_job  # noqa: E402
from ramraft.server.machines.kv import KVMachine, encode_put  # noqa: E402
from ramraft.server.storage.backup import BackupHeader  # noqa: E402
from ramraft.tools.backup import write_backup_file  # noqa: E402
from ramraft.tools.bench import free_ports  # noqa: E402
from ramraft.tools.node_cli import EXIT_PORT_IN_USE  # noqa: E402

TICK = 0.001


def build_kv(keys: int, value_bytes: int) -> KVMachine:
    machine = KVMachine()
    value = os.urandom(value_bytes)
    apply = machine.apply
    for i in range(keys):
        apply(i + 1, encode_put(f"user/{i * 7919 % keys:09d}", value))
    return machine


async def _ticker(stop: threading.Event, lags: list[float]) -> None:
    while not stop.is_set():
        before = time.perf_counter()
        await asyncio.sleep(TICK)
        # asyncio may wake a sleeper a little early: that is no stall.
        lags.append(max(0.0, time.perf_counter() - before - TICK))


def _lag_stats(lags: list[float], prefix: str) -> dict[str, float]:
    lags = sorted(lags) or [0.0]
    return {
        f"{prefix}_loop_p99_ms": 1000 * lags[int(len(lags) * 0.99)],
        f"{prefix}_loop_max_ms": 1000 * lags[-1],
    }


async def _digest_on_a_loop(machine: KVMachine) -> dict[str, float]:
    # Baseline: the ticker alone, as long as a digest takes about.
    stop = threading.Event()
    idle: list[float] = []
    task = asyncio.create_task(_ticker(stop, idle))
    await asyncio.sleep(1.0)
    stop.set()
    await task

    loop = asyncio.get_running_loop()
    counter = HashingSink()  # the stream's size, from a view of its own
    machine.snapshot().write_to(counter)
    started = time.perf_counter()
    job = machine.snapshot()  # the view, taken on the loop as a node does
    view_pause = time.perf_counter() - started

    def digest() -> str:
        return digest_job(job, ClusterState())

    stop = threading.Event()
    busy: list[float] = []
    task = asyncio.create_task(_ticker(stop, busy))
    started = time.perf_counter()
    await loop.run_in_executor(None, digest)
    seconds = time.perf_counter() - started
    stop.set()
    await task
    return {
        "digest_s": seconds,
        "digest_mb_per_s": counter.bytes_written / seconds / 1e6,
        "digest_bytes": counter.bytes_written,
        "digest_view_pause_ms": 1000 * view_pause,
        **_lag_stats(idle, "idle"),
        **_lag_stats(busy, "digest"),
    }


def bench_digest(machine: KVMachine) -> dict[str, float]:
    return asyncio.run(_digest_on_a_loop(machine))


def _timed_command(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return seconds, proc.stdout


def bench_backup_restore(machine: KVMachine, directory: Path) -> dict[str, Any]:
    ramraft = [sys.executable, "-m", "ramraft"]
    env = dict(os.environ, PYTHONPATH=str(REPO), RAMRAFT_LOG_LEVEL="warning")
    origin = directory / "origin.backup"
    header = BackupHeader(
        cluster_id="c-bench",
        index=machine.applied_index,
        term=1,
        app_version=1,
        kv_version=1,
        created="2026-01-01T00:00:00+00:00",
        node="bench",
        ramraft_version="bench",
        model=None,
    )
    size = write_backup_file(origin, header, machine.snapshot())
    for _ in range(5):  # a port picked free may be taken before the node binds it
        (port,) = free_ports(1)
        peers = f"n1=127.0.0.1:{port}"
        data_dir = directory / "n1"
        shutil.rmtree(data_dir, ignore_errors=True)
        restore_s, _ = _timed_command(
            [*ramraft, "restore", str(origin), "--data-dir", str(data_dir), "--id", "n1",
             "--peers", peers],
            env,
        )  # fmt: skip
        started = time.perf_counter()
        node = subprocess.Popen(
            [*ramraft, "node", "--id", "n1", "--peers", peers, "--data-dir", str(data_dir)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while node.poll() is None and not (data_dir / "ports.json").exists():
            time.sleep(0.01)
        if node.poll() != EXIT_PORT_IN_USE:
            break
    else:
        raise RuntimeError("no free port for the node in 5 tries")
    try:
        endpoint = f"127.0.0.1:{port}"
        with Client(endpoint, timeout=300) as client:
            client.get("user/000000000")  # retried until the node serves
        serve_s = time.perf_counter() - started
        out = directory / "taken.backup"
        backup_s, report = _timed_command(
            [*ramraft, "backup", "--endpoints", endpoint, "--timeout", "30", "--out", str(out),
             "--json"],
            env,
        )  # fmt: skip
        keys = json.loads(report)["keys"]
    finally:
        node.terminate()
        node.wait(30)
    verify_s, _ = _timed_command([*ramraft, "backup", "--verify", str(out)], env)
    return {
        "backup_bytes": size,
        "restore_s": restore_s,
        "restored_node_serves_s": serve_s,
        "backup_s": backup_s,
        "backup_keys": keys,
        "verify_s": verify_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keys", type=int, default=1_000_000, help="keys in the state (default 1,000,000)"
    )
    parser.add_argument("--value-bytes", type=int, default=100, help="bytes a value (default 100)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))

    started = time.perf_counter()
    machine = build_kv(args.keys, args.value_bytes)
    build_s = time.perf_counter() - started
    results: dict[str, Any] = {"keys": args.keys, "value_bytes": args.value_bytes}
    results.update(bench_digest(machine))
    directory = Path(tempfile.mkdtemp(prefix="ramraft-bench-backup-"))
    try:
        results.update(bench_backup_restore(machine, directory))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    results["setup_s"] = build_s
    if args.json:
        print(json.dumps(results, sort_keys=True))
        return 0
    command = " ".join(
        ["python -m bench.bench_backup", *(argv if argv is not None else sys.argv[1:])]
    )
    print(f"{command}   ({args.keys:,} keys of {args.value_bytes} bytes, cpus: {os.cpu_count()})")
    r = results
    rows = [
        ("digest: seconds (worker thread)", f"{r['digest_s']:.2f} s"),
        ("digest: rate", f"{r['digest_mb_per_s']:.0f} MB/s of {r['digest_bytes'] / 1e6:.0f} MB"),
        ("digest: view taken on the loop", f"{r['digest_view_pause_ms']:.1f} ms"),
        (
            "loop stall during digest: max / p99",
            f"{r['digest_loop_max_ms']:.1f} / {r['digest_loop_p99_ms']:.1f} ms",
        ),
        (
            "loop stall, idle baseline: max / p99",
            f"{r['idle_loop_max_ms']:.1f} / {r['idle_loop_p99_ms']:.1f} ms",
        ),
        (
            "ramraft restore (file -> data dir)",
            f"{r['restore_s']:.2f} s ({r['backup_bytes'] / 1e6:.0f} MB file)",
        ),
        ("restored node: start until it serves", f"{r['restored_node_serves_s']:.2f} s"),
        ("ramraft backup --out (gRPC, one node)", f"{r['backup_s']:.2f} s"),
        ("ramraft backup --verify", f"{r['verify_s']:.2f} s"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

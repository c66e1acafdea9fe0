"""Where a leader spends its CPU per write over gRPC, beside the bare echo.

    python -m bench.profile_leader                       # AsyncClient, 64 in flight, 10 s
    python -m bench.profile_leader --client raw --in-flight 64 --raw-out leader.txt

Starts a three-node cluster (tools/bench.py Cluster, fsync on), drives
writes at the leader from a client process (tools/bench.py WorkerPool, the
``ramraft bench`` driver), samples the leader with py-spy (``pip install
py-spy``; it needs ptrace rights, e.g. root) and sums the samples by the
innermost frame's module: grpc (its Python and Cython layers), asyncio's
loop, protobuf, logging, and each of ramraft's modules (the servicer, the
gatekeeper, metrics, the runtime, the Raft core, storage). Then the same
for the echo server of bench/bench_grpc_floor.py at the same load, so that
each bucket reads as microseconds of CPU per operation against the floor's.

A profile is a benchmark's companion, never a test: its figures change with
the machine and its load (the foreign CPU is printed; take it again when it
is high)."""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import bench_grpc_floor
from ramraft.tools import bench as rbench

# Innermost-frame buckets: (name, substrings of the frame's file).
BUCKETS = (
    ("storage (WAL, fsync)", ("ramraft/server/storage/", "/server/storage/")),
    ("Raft core (consensus/)", ("consensus/",)),
    ("runtime loop + peer transport", ("server/runtime/loop.py", "runtime/transport.py")),
    ("wire (protobuf <-> core)", ("runtime/wire.py",)),
    ("NodeAPI", ("runtime/node_api.py",)),
    ("state machine + sessions", ("server/machines/",)),
    ("gatekeeper: auth + limiter", ("security/auth.py",)),
    ("metrics", ("web/metrics.py",)),
    ("KV servicer (rpc/services.py, rpc/streams.py)", ("rpc/services.py", "rpc/streams.py")),
    ("logging", ("structlog", "logging/", "server/logs.py")),
    ("protobuf", ("google/protobuf", "protobuf")),
    ("grpc (Python + Cython layers)", ("grpc/", "grpc\\", "cygrpc", ".pyx")),
    ("asyncio loop, tasks, futures", ("asyncio/",)),
    ("threads, queues, selectors", ("threading.py", "queue.py", "selectors.py", "concurrent/")),
)
# Where each sample belongs, first rule that matches the stack (so the
# shares add up to 100%): the threads first, then what the event loop was
# running. Needles are py-spy frame texts ("function (file:line)").
PHASES = (
    ("disk thread: WAL write + fsync", ("concurrent/futures/thread.py",)),
    ("gRPC poller thread (C core)", ("Thread._bootstrap",)),
    ("auth + limiter per request (StreamGate.admit)", ("StreamGate.admit",)),
    ("metrics (observers, prometheus_client)", ("prometheus_client", "observe")),
    ("logging", ("structlog", "logging/__init__")),
    ("replication to peers (runtime/transport.py)", ("runtime/transport.py",)),
    ("Raft loop turn (core, apply, WAL hand-off)", ("runtime/loop.py",)),
    ("per request: task, handler, NodeAPI.write, reply", ("StreamServer._serve",)),
    ("reading requests off the stream", ("StreamServer._read_all",)),
    ("writing responses (context.write)", ("StreamServer._write_all",)),
    ("echo: read + yield (bench_grpc_floor)", ("bench_grpc_floor.py",)),
    ("unary handler (rpc wrapper, servicer)", ("rpc.<locals>.wrap", "guarded (")),
    ("event loop itself (select, handles)", ("asyncio/", "selectors.py")),
)


def phase_of(frames: list[str]) -> str:
    for name, needles in PHASES:
        if any(needle in frame for frame in frames for needle in needles):
            return name
    return "other"


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of ``pid`` (Linux /proc): what py-spy's
    samples cannot tell (a thread in fsync looks busy to it, waiting on the
    disk, and costs no CPU)."""
    ticks = rbench._CLOCK_TICKS
    out: dict[int, float] = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with (
                contextlib.suppress(OSError, IndexError),
                open(f"/proc/{pid}/task/{tid}/stat") as f,
            ):
                fields = f.read().rsplit(")", 1)[1].split()
                out[int(tid)] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def thread_split(pid: int, before: dict[int, float], after: dict[int, float]) -> dict[str, float]:
    """CPU seconds of the event-loop (main) thread and of all the others."""
    used = {tid: cpu - before.get(tid, 0.0) for tid, cpu in after.items()}
    main = used.pop(pid, 0.0)
    return {
        "event-loop thread": main,
        "other threads (gRPC poller, disk, executor)": sum(used.values()),
    }


def bucket_of(frame: str) -> str:
    for name, needles in BUCKETS:
        if any(n in frame for n in needles):
            return name
    return "other (" + frame.split(" (", 1)[-1].split(":", 1)[0].rstrip(")") + ")"


def summarize_profile(raw: Path) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    """(samples, by innermost bucket, by phase) of py-spy --format raw output."""
    total = 0
    own: collections.Counter[str] = collections.Counter()
    within: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[bucket_of(frames[-1])] += n
        within[phase_of(frames)] += n
    return total, own, within


async def _spy(pid: int, seconds: float, out: Path, rate: int) -> None:
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("bench.profile_leader: py-spy not found (pip install py-spy)")
    argv = [py_spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate"]
    argv += [str(rate), "--format", "raw", "--output", str(out), "--nonblocking"]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0 or not out.exists():
        raise SystemExit(f"bench.profile_leader: py-spy failed: {err.decode()[-500:]}")


async def _sample(pid: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """py-spy on ``pid`` for ``args.seconds``, with its CPU (per thread, and
    the machine's foreign CPU) over the same window."""
    window = rbench.CpuWindow({"profiled": pid})
    window.start()
    threads = thread_cpu(pid)
    await _spy(pid, args.seconds, out, args.rate)
    split = thread_split(pid, threads, thread_cpu(pid))
    cpu = window.stop()
    return {
        "cores": cpu["cores"].get("profiled", 0.0),
        "foreign": cpu.get("foreign_cores"),
        "out": out,
        "threads": split,
        "seconds": args.seconds,
    }


async def profile_leader(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="ramraft-profile-"))
    cluster = rbench.Cluster(None, inproc=False, root=root, tick_ms=0, fsync=True, node_args=[])
    pool = rbench.WorkerPool(1)
    try:
        await cluster.start()
        leader, address = await cluster.leader()
        pid = cluster.pids()[leader]
        measure_from = time.monotonic() + args.warmup + 0.3
        measure_to = measure_from + args.seconds
        spec = rbench.GrpcSpec(
            mode="write",
            concurrency=args.in_flight,
            connections=max(1, min(args.connections, args.in_flight)),
            client=args.client,
            endpoints=[address],
            value_bytes=100,
            keys=1,
            measure_from=measure_from,
            measure_to=measure_to,
            seed=1,
            timeout=10.0,
        )
        load = asyncio.create_task(pool.run([spec]))
        await asyncio.sleep(max(0.0, measure_from - time.monotonic()))
        sample = await _sample(pid, args, out)
        tally = await load
    finally:
        pool.close()
        await cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    return sample | {"ops_per_s": tally.ok / args.seconds}


async def profile_echo(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    bound, ready = ctx.Value("i", 0), ctx.Event()
    server = ctx.Process(target=bench_grpc_floor._serve, args=(bound, ready), daemon=True)
    server.start()
    try:
        if not ready.wait(30):
            raise SystemExit("bench.profile_leader: the echo server did not start")
        port = int(bound.value)
        shape = "unary" if args.client == "raw" else "stream"
        pid = int(server.pid or 0)
        drive = asyncio.create_task(
            asyncio.to_thread(
                asyncio.run,
                bench_grpc_floor._drive(port, shape, args.in_flight, args.seconds + 1.0),
            )
        )
        await asyncio.sleep(0.5)
        sample = await _sample(pid, args, out)
        latencies = await drive
    finally:
        server.kill()
    return sample | {"ops_per_s": len(latencies) / (args.seconds + 1.0)}


def _report(name: str, run: dict[str, Any]) -> None:
    total, own, within = summarize_profile(run["out"])
    us = 1e6 * run["cores"] / run["ops_per_s"] if run["ops_per_s"] else 0.0
    print(
        f"\n{name}: {run['ops_per_s']:,.0f} ops/s, {run['cores']:.2f} cores, "
        f"{us:.0f} us CPU per op ({total} samples"
        + (f"; foreign CPU {run['foreign']} cores" if run.get("foreign") is not None else "")
        + ")"
    )
    ops = run["ops_per_s"] * run["seconds"]
    for name, seconds in run.get("threads", {}).items():
        print(f"    {1e6 * seconds / ops if ops else 0.0:6.1f} us  CPU of the {name}")
    print("  by innermost frame:")
    for bucket, n in own.most_common(16):
        print(f"    {100 * n / total:5.1f}%  {us * n / total:6.1f} us  {bucket}")
    if within:
        print("  by phase (where the stack was):")
        for view, n in within.most_common():
            print(f"    {100 * n / total:5.1f}%  {us * n / total:6.1f} us  {view}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument(
        "--client",
        choices=("stream", "raw", "library"),
        default="library",
        help="the load's driver (default library: AsyncClient over KV.StreamBatch)",
    )
    p.add_argument(
        "--connections",
        type=int,
        default=1,
        help="client connections, as ramraft bench --connections (default 1)",
    )
    p.add_argument("--in-flight", type=int, default=64)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--raw-dir", type=Path, default=None, help="keep the raw stacks here")
    args = p.parse_args(argv)
    if args.connections < 1 or args.in_flight < 1 or args.seconds <= 0:
        p.error("need --connections >= 1, --in-flight >= 1 and --seconds > 0")
    with tempfile.TemporaryDirectory() as tmp:
        where = args.raw_dir or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        leader = asyncio.run(profile_leader(args, where / f"leader-{args.client}.txt"))
        echo = asyncio.run(profile_echo(args, where / f"echo-{args.client}.txt"))
        _report(f"leader, writes over {args.client} at {args.in_flight} in flight", leader)
        _report(f"echo server ({'unary' if args.client == 'raw' else 'stream'})", echo)
    return 0


if __name__ == "__main__":
    sys.exit(main())

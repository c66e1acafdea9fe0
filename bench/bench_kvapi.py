"""Key-value version 2 benchmarks (a script, not a test): transaction
throughput, and watch fan-out.

    python -m bench.bench_kvapi [--quick] [--seconds S] [--rounds R]
        [--in-flight N] [--watchers W] [--streams-per-channel K]

Starts a real three-node cluster on loopback (``ramraft node`` processes,
fsync on unless ``--no-fsync``) and waits for key-value version 2, then:

1. ``txn``: writes/s of ``KV.Put`` (one key) against ``KV.Txn`` (one compare,
   two puts of different keys: one log entry, one revision), N requests in
   flight through the leader, the variants interleaved over R rounds of S
   seconds; median and the ratio to Put.
2. ``watch``: W watches of one prefix on one follower, opened from worker
   processes (each watch its own ``KV.Watch`` stream, K streams per
   channel; and, as a second variant, the same W watches on a few streams of
   ``W / 50`` watches each), while a writer puts to the prefix for S seconds:
   events delivered per second to all watchers together (each put is one
   event per watcher), and the writes/s that fed them.

Prints one JSON object per measurement on stdout and a summary on stderr.
Load generators run on the same two cores as the three nodes: absolute
numbers are this machine's; compare the variants of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc

from ramraft.proto import admin_pb2, admin_pb2_grpc, kv_pb2, kv_pb2_grpc
from ramraft.tools.bench import Cluster

VALUE = b"v" * 100


async def _leader_and_follower(endpoints: list[str]) -> tuple[str, str]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for endpoint in endpoints:
            async with grpc.aio.insecure_channel(endpoint) as channel:
                try:
                    status = await admin_pb2_grpc.AdminStub(channel).Status(
                        admin_pb2.StatusRequest(), timeout=1
                    )
                except grpc.aio.AioRpcError:
                    continue
            node = status.node
            if node.role == admin_pb2.ROLE_LEADER and node.kv_version == 2:
                follower = next(e for e in endpoints if e != endpoint)
                return endpoint, follower
        await asyncio.sleep(0.2)
    raise RuntimeError("no leader running key-value version 2 within 60 s")


async def _drive(
    endpoint: str, make: Any, in_flight: int, seconds: float
) -> tuple[int, list[float]]:
    """Requests from ``make(kv, n)`` with ``in_flight`` of them at once for
    ``seconds``: (completed, latencies)."""
    done = 0
    latencies: list[float] = []
    stop_at = time.monotonic() + seconds
    async with grpc.aio.insecure_channel(endpoint) as channel:
        kv = kv_pb2_grpc.KVStub(channel)

        async def worker(w: int) -> None:
            nonlocal done
            n = 0
            while time.monotonic() < stop_at:
                n += 1
                started = time.perf_counter()
                await make(kv, w, n)
                latencies.append(time.perf_counter() - started)
                done += 1

        await asyncio.gather(*(worker(w) for w in range(in_flight)))
    return done, latencies


async def _put(kv: Any, w: int, n: int) -> None:
    await kv.Put(kv_pb2.PutRequest(key=f"bench/p{w}/{n % 100}", value=VALUE), timeout=10)


async def _txn(kv: Any, w: int, n: int) -> None:
    a, b = f"bench/t{w}/a{n % 100}", f"bench/t{w}/b{n % 100}"
    request = kv_pb2.TxnRequest(
        compare=[
            kv_pb2.Compare(key=a, result=kv_pb2.COMPARE_RESULT_GREATER, version=-1),
        ],
        success=[
            kv_pb2.RequestOp(put=kv_pb2.PutRequest(key=a, value=VALUE)),
            kv_pb2.RequestOp(put=kv_pb2.PutRequest(key=b, value=VALUE)),
        ],
    )
    await kv.Txn(request, timeout=10)


def _ms(values: list[float], q: float) -> float:
    values = sorted(values)
    return round(1000 * values[min(len(values) - 1, int(q * len(values)))], 2) if values else 0.0


async def bench_txn(leader: str, args: argparse.Namespace) -> dict[str, Any]:
    rates: dict[str, list[float]] = {"put": [], "txn": []}
    for r in range(args.rounds):
        for name, make in (("put", _put), ("txn", _txn)):
            done, latencies = await _drive(leader, make, args.in_flight, args.seconds)
            rate = done / args.seconds
            rates[name].append(rate)
            row = {
                "bench": "txn",
                "variant": name,
                "round": r,
                "in_flight": args.in_flight,
                "per_second": round(rate, 1),
                "p50_ms": _ms(latencies, 0.5),
                "p99_ms": _ms(latencies, 0.99),
            }
            print(json.dumps(row), flush=True)
    median = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "put_per_second": round(median["put"], 1),
        "txn_per_second": round(median["txn"], 1),
        "txn_to_put": round(median["txn"] / median["put"], 3),
        "writes_per_txn": 2,
    }


# -- watch fan-out ---------------------------------------------------------------------


def _watch_worker(
    conn: Connection, endpoint: str, prefix: str, watches: int, per_stream: int, per_channel: int
) -> None:
    """Opens ``watches`` watches of ``prefix`` (``per_stream`` per stream,
    ``per_channel`` streams per channel), says "ready", counts events until
    told to stop, sends the count and how many watches the node canceled
    meanwhile (a watcher too slow for its buffer is canceled)."""

    async def main() -> tuple[int, int]:
        count = 0
        canceled = 0
        streams = max(1, watches // per_stream)
        channels = [
            grpc.aio.insecure_channel(endpoint)
            for _ in range(max(1, (streams + per_channel - 1) // per_channel))
        ]
        calls = []
        for s in range(streams):
            call = kv_pb2_grpc.KVStub(channels[s // per_channel]).Watch()
            for _ in range(per_stream):
                create = kv_pb2.WatchCreateRequest(key=prefix, prefix=True)
                await call.write(kv_pb2.WatchRequest(create=create))
            calls.append(call)
        created = 0

        async def reader(call: Any) -> None:
            nonlocal count, created, canceled
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    return
                # Events of writes still being applied may come before the
                # last "created": every event counts.
                created += int(response.created and not response.canceled)
                canceled += int(response.canceled)
                count += len(response.events)

        tasks = [asyncio.create_task(reader(c)) for c in calls]
        deadline = time.monotonic() + 60
        while created < streams * per_stream:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{created} of {streams * per_stream} watches created in 60 s")
            await asyncio.sleep(0.05)
        count = canceled = 0  # from here on: what the writes of the measurement make
        conn.send(("ready", created))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, conn.recv)  # "stop"
        for t in tasks:
            t.cancel()
        for c in calls:
            c.cancel()
        for ch in channels:
            await ch.close()
        return count, canceled

    conn.send(("count", asyncio.run(main())))


async def bench_watch(
    leader: str, follower: str, args: argparse.Namespace, per_stream: int
) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    prefix = f"fan{per_stream}/"  # each variant its own: no events of another's writes
    workers = []
    share = args.watchers // args.processes
    for _ in range(args.processes):
        parent, child = context.Pipe()
        proc = context.Process(
            target=_watch_worker,
            args=(child, follower, prefix, share, per_stream, args.streams_per_channel),
        )
        proc.start()
        child.close()  # the worker's end: its exit then ends our recv (EOFError)
        workers.append((proc, parent))
    created = 0
    for _, conn in workers:
        kind, n = await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        assert kind == "ready"
        created += n
    done, _ = await _drive(
        leader,
        lambda kv, w, n: kv.Put(kv_pb2.PutRequest(key=f"{prefix}{w}", value=VALUE), timeout=10),
        args.writers,
        args.seconds,
    )
    await asyncio.sleep(1.0)  # let the last events arrive
    delivered = canceled = 0
    for proc, conn in workers:
        conn.send("stop")
        kind, (n, dropped) = await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        delivered += n
        canceled += dropped
        proc.join(timeout=30)
    row = {
        "bench": "watch",
        "watchers": created,
        "watches_per_stream": per_stream,
        "writes_per_second": round(done / args.seconds, 1),
        "events_delivered": delivered,
        "events_expected": done * created,
        "events_per_second": round(delivered / (args.seconds + 1.0), 1),
        "watches_canceled": canceled,
    }
    if delivered < row["events_expected"]:
        # The watcher processes had not read everything by the end: the
        # rate is what they took in; the rest was still on its way (or,
        # with watches_canceled, dropped with a watch too slow to keep up).
        sys.stderr.write(
            f"bench_kvapi: the watchers were {row['events_expected'] - delivered:,} events "
            f"behind when the run ended ({canceled} watches canceled by the node)\n"
        )
    print(json.dumps(row), flush=True)
    return row


async def main(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="ramraft-bench-kvapi-"))
    cluster = Cluster(
        None, inproc=False, root=root, tick_ms=0, fsync=not args.no_fsync, node_args=[]
    )
    await cluster.start()
    try:
        leader, follower = await _leader_and_follower(cluster.endpoints)
        summary: dict[str, Any] = {"fsync": not args.no_fsync, "cpus": os.cpu_count()}
        if "txn" in args.only:
            summary["txn"] = await bench_txn(leader, args)
        if "watch" in args.only:
            summary["watch_streams"] = await bench_watch(leader, follower, args, per_stream=1)
            summary["watch_multiplexed"] = await bench_watch(leader, follower, args, per_stream=50)
        sys.stderr.write(json.dumps(summary, indent=1) + "\n")
    finally:
        await cluster.stop()
        shutil.rmtree(root, ignore_errors=True)  # the nodes' data: hundreds of MB a run


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one short round of each")
    p.add_argument("--seconds", type=float, default=5.0, help="per run (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="runs of each (default 3)")
    p.add_argument(
        "--in-flight", type=int, default=64, help="transactions and puts in flight (default 64)"
    )
    p.add_argument(
        "--writers", type=int, default=8, help="writes in flight during the fan-out (default 8)"
    )
    p.add_argument("--watchers", type=int, default=1000, help="watches opened (default 1000)")
    p.add_argument("--processes", type=int, default=2, help="watcher processes (default 2)")
    p.add_argument(
        "--streams-per-channel",
        type=int,
        default=100,
        help="watch streams per channel (default 100)",
    )
    p.add_argument("--no-fsync", action="store_true", help="nodes without fsync (not the default)")
    p.add_argument("--only", default="txn,watch", help="txn, watch or both (default)")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds = 2.0, 1
    return args


if __name__ == "__main__":
    asyncio.run(main(parse()))

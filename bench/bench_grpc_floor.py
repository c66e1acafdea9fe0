"""What grpc-python itself costs on this machine, with no Raft and no disk:
a trivial echo server (one process, grpc.aio) driven by a grpc.aio client
(this process), once with unary calls and once with messages on
bidirectional streams -- the two shapes of ramraft's KV.Put and KV.Stream.

It is the floor under ramraft's gRPC numbers: a write cannot be faster
than an echo of the same shape, and the server CPU per echo is what a
leader pays before any Raft work. Ratios (stream vs unary) come from the
same run.

    python -m bench.bench_grpc_floor                 # 1 and 64 in flight, 4 s each
    python -m bench.bench_grpc_floor --seconds 8 --in-flight 64,256 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import sys
import time
from typing import Any

import grpc

from ramraft.tools.bench import cpu_seconds, percentile

SERVICE = "bench.Echo"
PAYLOAD = b"x" * 120  # about a 100-byte Put


def _identity(data: bytes) -> bytes:
    return data


def _serve(port: Any, ready: Any) -> None:
    """The echo server, on a port the kernel picks (``port.value`` once
    ``ready`` is set): a port picked beforehand could be taken meanwhile."""

    async def unary(request: bytes, context: Any) -> bytes:
        return request

    async def stream(requests: Any, context: Any) -> Any:
        async for request in requests:
            yield request

    async def main() -> None:
        server = grpc.aio.server()
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=_identity, response_serializer=_identity
            ),
            "Stream": grpc.stream_stream_rpc_method_handler(
                stream, request_deserializer=_identity, response_serializer=_identity
            ),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        port.value = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        ready.set()
        await server.wait_for_termination()

    asyncio.run(main())


async def _drive(port: int, shape: str, in_flight: int, seconds: float) -> list[float]:
    """Keep ``in_flight`` echoes outstanding over 4 connections (streams:
    one per connection) for ``seconds``; the latencies of those done."""
    channels = [
        grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(min(4, in_flight))
    ]
    latencies: list[float] = []
    end = time.monotonic() + seconds
    perf = time.perf_counter
    try:
        if shape == "unary":
            calls = [
                c.unary_unary(
                    f"/{SERVICE}/Unary",
                    request_serializer=_identity,
                    response_deserializer=_identity,
                )
                for c in channels
            ]
            for call in calls:
                await call(PAYLOAD)  # connect before measuring

            async def unary_worker(n: int) -> None:
                call = calls[n % len(calls)]
                while time.monotonic() < end:
                    started = perf()
                    await call(PAYLOAD)
                    latencies.append(perf() - started)

            await asyncio.gather(*(unary_worker(n) for n in range(in_flight)))
        else:

            async def stream_worker(channel: Any, depth: int) -> None:
                call = channel.stream_stream(
                    f"/{SERVICE}/Stream",
                    request_serializer=_identity,
                    response_deserializer=_identity,
                )()
                sent: list[float] = []
                for _ in range(depth):
                    sent.append(perf())
                    await call.write(PAYLOAD)
                head = 0
                while time.monotonic() < end:
                    await call.read()  # echoes come back in order
                    latencies.append(perf() - sent[head])
                    head += 1
                    sent.append(perf())
                    await call.write(PAYLOAD)
                call.cancel()

            share = [in_flight // len(channels)] * len(channels)
            for n in range(in_flight % len(channels)):
                share[n] += 1
            await asyncio.gather(
                *(stream_worker(c, d) for c, d in zip(channels, share, strict=True) if d)
            )
    finally:
        for channel in channels:
            await channel.close()
    return latencies


def measure(levels: list[int], seconds: float) -> list[dict[str, Any]]:
    """Per level, an echo run of each shape (unary, then stream) against a
    fresh echo server process: echoes/s, latency, and the server's CPU."""
    spawn = mp.get_context("spawn")
    bound, ready = spawn.Value("i", 0), spawn.Event()
    server = spawn.Process(target=_serve, args=(bound, ready), daemon=True)
    server.start()
    if not ready.wait(30):
        server.kill()
        raise RuntimeError("the echo server did not start")
    port = int(bound.value)
    rows: list[dict[str, Any]] = []
    try:
        for level in levels:
            for shape in ("unary", "stream"):
                cpu0, t0 = cpu_seconds(server.pid or 0) or 0.0, time.monotonic()
                latencies = asyncio.run(_drive(port, shape, level, seconds))
                elapsed = time.monotonic() - t0
                server_cpu = (cpu_seconds(server.pid or 0) or 0.0) - cpu0
                rows.append(
                    {
                        "shape": shape,
                        "in_flight": level,
                        "per_s": round(len(latencies) / seconds),
                        "p50_ms": round((percentile(sorted(latencies), 50) or 0.0) * 1000, 3),
                        "p99_ms": round((percentile(sorted(latencies), 99) or 0.0) * 1000, 3),
                        "server_cores": round(server_cpu / elapsed, 2),
                        "server_us_per_echo": round(1e6 * server_cpu / max(1, len(latencies)), 1),
                    }
                )
    finally:
        server.kill()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per run (default 4)")
    parser.add_argument(
        "--in-flight", default="1,64", help="comma list of echoes outstanding (default 1,64)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON line per run")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.in_flight.split(",") if x]
    try:
        rows = measure(levels, args.seconds)
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    rates: dict[tuple[int, str], float] = {}
    for row in rows:
        rates[(row["in_flight"], row["shape"])] = row["per_s"]
        if args.json:
            print(json.dumps(row), flush=True)
            continue
        print(
            f"{row['shape']:6} {row['in_flight']:5} in flight: {row['per_s']:7,} echoes/s  "
            f"p50 {row['p50_ms']:.3f} ms  p99 {row['p99_ms']:.3f} ms  "
            f"server {row['server_cores']:.2f} cores, "
            f"{row['server_us_per_echo']} us/echo",
            flush=True,
        )
        if row["shape"] == "stream":
            level = row["in_flight"]
            ratio = rates[(level, "stream")] / max(1.0, rates[(level, "unary")])
            print(f"       stream/unary at {level}: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Load for the flood test, run as its own process so that it does not
share a GIL with the client whose service it measures:

    python -m tests.security.flood_load grpc|http|garbage TARGET,... SECONDS [SEED]

Prints one JSON object of counters when done.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter

import grpc

from ramraft.proto import kv_pb2, kv_pb2_grpc

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def grpc_writers(
    targets: list[str], seconds: float, connections: int = 12, in_flight: int = 96
) -> Counter[str]:
    """``connections`` connections, each keeping ``in_flight`` Puts going."""
    counts: Counter[str] = Counter()
    deadline = time.monotonic() + seconds

    async def writer(address: str, w: int) -> None:
        options = [("grpc.use_local_subchannel_pool", 1)]
        async with grpc.aio.insecure_channel(address, options=options) as channel:
            stub = kv_pb2_grpc.KVStub(channel)

            async def one(slot: int) -> None:
                while time.monotonic() < deadline:
                    request = kv_pb2.PutRequest(key=f"flood/{w}/{slot}", value=b"x" * 100)
                    try:
                        await stub.Put(request, timeout=5)
                        counts["OK"] += 1
                    except grpc.aio.AioRpcError as e:
                        counts[e.code().name] += 1
                        if e.code() == grpc.StatusCode.UNAVAILABLE:
                            await asyncio.sleep(0.05)

            await asyncio.gather(*(one(s) for s in range(in_flight)))

    async def main() -> None:
        await asyncio.gather(*(writer(targets[w % len(targets)], w) for w in range(connections)))

    asyncio.run(main())
    return counts


def http_writers(targets: list[str], seconds: float, threads: int = 6) -> Counter[str]:
    counts: Counter[str] = Counter()
    deadline = time.monotonic() + seconds

    def run(n: int) -> None:
        address = targets[n % len(targets)]
        while time.monotonic() < deadline:
            request = urllib.request.Request(
                f"http://{address}/v1/kv/http-flood-{n}", data=b"y" * 100, method="PUT"
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    counts[str(response.status)] += 1
            except urllib.error.HTTPError as e:
                counts[str(e.code)] += 1
            except OSError as e:
                counts[type(e).__name__] += 1

    _threads(run, threads)
    return counts


def garbage(targets: list[str], seconds: float, seed: int, threads: int = 3) -> Counter[str]:
    """Connections that send random bytes (some after an HTTP/2 preface or an
    HTTP request line), some left half-open."""
    counts: Counter[str] = Counter()
    deadline = time.monotonic() + seconds

    def run(n: int) -> None:
        rng = random.Random(seed * 100 + n)
        held: list[socket.socket] = []
        while time.monotonic() < deadline:
            host, port = rng.choice(targets).rsplit(":", 1)
            try:
                s = socket.create_connection((host, int(port)), timeout=2)
            except OSError:
                counts["refused"] += 1
                continue
            counts["connections"] += 1
            prefix = rng.choice([b"", H2_PREFACE, b"GET / HTTP/1.1\r\nContent-Length: 99999\r\n"])
            with contextlib.suppress(OSError):
                s.sendall(prefix + rng.randbytes(rng.randint(1, 4096)))
            if rng.random() < 0.2 and len(held) < 50:
                held.append(s)  # half-open: sent junk, never finishes
            else:
                s.close()
        for s in held:
            s.close()

    _threads(run, threads)
    return counts


def _threads(target: object, n: int) -> None:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]  # type: ignore[arg-type]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main(argv: list[str]) -> int:
    kind, targets_text, seconds_text = argv[:3]
    seed = int(argv[3]) if len(argv) > 3 else 0
    targets = targets_text.split(",")
    seconds = float(seconds_text)
    if kind == "grpc":
        counts = grpc_writers(targets, seconds)
    elif kind == "http":
        counts = http_writers(targets, seconds)
    else:
        counts = garbage(targets, seconds, seed)
    sys.stdout.write(json.dumps(dict(counts)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

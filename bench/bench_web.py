"""Web tier benchmark: a page that reads 100 objects from RAM versus the same
page reading them through the gRPC client (a script, not a test).

    python -m bench.bench_web [--quick] [--seconds S] [--rounds R] [--concurrency C]

Starts a real three-node cluster on loopback (``ramraft node`` processes, with
this module as the ``--app``), writes 100 objects, then drives one node's HTTP
port with an aiohttp client (C requests in flight, keep-alive) for S seconds
per variant, the variants interleaved over R rounds; reports the median
requests/s of each and its ratio to the in-memory page. Every variant renders
the same 100 items into the same HTML table, checked (count and digest)
before timing. The variants (``/app/<name>``):

- ``memory``: the key-value machine's sorted map, read in place
  (``kv.range("item/", limit=100)``) -- what a page handler of the web tier does;
- ``model``: the same objects as an embedded model's attribute (a list of
  ``(key, value)`` pairs, replicated by one command);
- ``grpc-range-self``: one ``Range`` call (SERIALIZABLE, 100 items) through
  ``AsyncClient`` to this same node's gRPC port -- the database round trip,
  served by the same process;
- ``grpc-range-peer``: the same call to another node, as to a database on
  another machine;
- ``grpc-get-peer``: 100 ``Get`` calls, one per object, to another node (the
  "N+1 queries" page).

Prints one JSON object per measurement on stdout and a summary on stderr.
The load generator runs on the same two cores as the three nodes: absolute
numbers are this machine's, the ratios are the result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiohttp import web

from ramraft.server.hosting import CONTEXT, Application
from ramraft.server.machines.embed import ReplicatedModel, command

ITEMS = 100
PREFIX = "item/"
TARGETS_ENV = "BENCH_WEB_GRPC"  # "self_address,peer_address", set per node by the bench

# ---- the application the nodes serve (--app bench.bench_web:app) -----------------------------


class Catalog(ReplicatedModel):
    def __init__(self) -> None:
        self.items: list[tuple[str, bytes]] = []

    @command
    def load(self, items: list[tuple[str, bytes]]) -> int:
        self.items = [(str(key), bytes(value)) for key, value in items]
        return len(self.items)


def item_value(n: int) -> bytes:
    return json.dumps({"id": n, "name": f"Item {n:03d}", "price": 100 + n * 7}).encode()


def render(rows: list[tuple[str, bytes]]) -> web.Response:
    """The same page for every variant: an HTML table, plus a digest header
    the bench checks so that every variant provably read the same data."""
    parts = ["<table><tr><th>key</th><th>value</th></tr>"]
    digest = 0
    for key, value in rows:
        parts.append(f"<tr><td>{key}</td><td>{value.decode()}</td></tr>")
        digest = zlib.crc32(value, zlib.crc32(key.encode(), digest))
    parts.append("</table>")
    return web.Response(
        text="".join(parts),
        content_type="text/html",
        headers={"X-Items": str(len(rows)), "X-Digest": str(digest)},
    )


def app() -> Application:
    from ramraft.client import SERIALIZABLE, AsyncClient

    catalog = Catalog()
    routes = web.RouteTableDef()
    clients: dict[str, AsyncClient] = {}

    def client(which: str) -> AsyncClient:
        if which not in clients:
            self_address, peer_address = os.environ[TARGETS_ENV].split(",")
            address = self_address if which == "self" else peer_address
            clients[which] = AsyncClient(address, timeout=10)
        return clients[which]

    @routes.get("/memory")
    async def memory(request: web.Request) -> web.Response:
        items, _ = request.app[CONTEXT].kv.range(PREFIX, "", ITEMS)
        return render(items)

    @routes.get("/model")
    async def model(request: web.Request) -> web.Response:
        return render(catalog.items[:ITEMS])

    @routes.get("/grpc-range-self")
    async def grpc_range_self(request: web.Request) -> web.Response:
        page = await client("self").range(PREFIX, limit=ITEMS, consistency=SERIALIZABLE)
        return render(list(page.items))

    @routes.get("/grpc-range-peer")
    async def grpc_range_peer(request: web.Request) -> web.Response:
        page = await client("peer").range(PREFIX, limit=ITEMS, consistency=SERIALIZABLE)
        return render(list(page.items))

    @routes.get("/grpc-get-peer")
    async def grpc_get_peer(request: web.Request) -> web.Response:
        peer = client("peer")
        rows = []
        for n in range(ITEMS):
            key = f"{PREFIX}{n:03d}"
            value = await peer.get(key, consistency=SERIALIZABLE)
            assert value is not None
            rows.append((key, value))
        return render(rows)

    @routes.post("/load")
    async def load(request: web.Request) -> web.Response:
        count = await catalog.load([(f"{PREFIX}{n:03d}", item_value(n)) for n in range(ITEMS)])
        return web.json_response({"items": count})

    return Application(catalog, routes=routes, title="bench_web")


# ---- the driver -----------------------------------------------------------------------------

VARIANTS = ["memory", "model", "grpc-range-self", "grpc-range-peer", "grpc-get-peer"]


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


async def drive(url: str, seconds: float, concurrency: int) -> tuple[float, float]:
    """Requests/s and median latency (ms) of GET url with ``concurrency``
    requests in flight."""
    import aiohttp

    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(stop_at: float, record: bool) -> None:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                async with session.get(url) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"{url}: HTTP {response.status}")
                if record:
                    latencies.append(time.perf_counter() - started)

        warm_until = time.perf_counter() + min(0.5, seconds / 4)
        await asyncio.gather(*(worker(warm_until, False) for _ in range(concurrency)))
        started = time.perf_counter()
        await asyncio.gather(*(worker(started + seconds, True) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return len(latencies) / elapsed, statistics.median(latencies) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per variant per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="1 s per variant, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 1.0, 1

    import urllib.request

    from tests.server.procs import ProcessCluster

    def request(address: str, method: str, path: str, body: bytes = b"") -> bytes:
        req = urllib.request.Request(f"http://{address}{path}", data=body or None, method=method)
        with urllib.request.urlopen(req, timeout=10) as response:
            data: bytes = response.read()
            return data

    with tempfile.TemporaryDirectory(prefix="bench-web-") as root:
        cluster = ProcessCluster(
            Path(root), http=True, extra_args=["--app", "bench.bench_web:app"], tick_ms=50
        )
        cluster.env["RAMRAFT_LOG_LEVEL"] = "warning"
        ids = cluster.ids
        with cluster:
            leader = cluster.wait_for_leader()
            served = ids[0]
            peer = ids[1]
            # The node under load asks itself or a peer; restart it with the
            # addresses in its environment.
            cluster.kill(served)
            cluster.env[TARGETS_ENV] = f"{cluster.grpc[served]},{cluster.grpc[peer]}"
            cluster.start(served)
            cluster.wait_for_leader()
            leader = cluster.wait_for_leader()
            address = cluster.http[leader]
            deadline = time.monotonic() + 30
            while True:
                try:
                    request(cluster.http[served], "GET", "/readyz")
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            for n in range(ITEMS):
                request(address, "PUT", f"/v1/kv/{PREFIX}{n:03d}", item_value(n))
            # The model's copy, through a command (via the web tier's app).
            asyncio.run(_load_model(cluster.http[served]))
            base = f"http://{cluster.http[served]}/app/"
            check = {}
            for variant in VARIANTS:
                with urllib.request.urlopen(base + variant, timeout=30) as response:
                    check[variant] = (response.headers["X-Items"], response.headers["X-Digest"])
            if len(set(check.values())) != 1 or check["memory"][0] != str(ITEMS):
                raise SystemExit(f"variants disagree on the data: {check}")
            say(
                f"bench_web: node {served} serves /app/<variant>; peer {peer}; "
                f"{args.rounds} rounds x {args.seconds:g} s, {args.concurrency} in flight"
            )
            results: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
            for round_no in range(args.rounds):
                for variant in VARIANTS:
                    rps, p50 = asyncio.run(drive(base + variant, args.seconds, args.concurrency))
                    results[variant].append((rps, p50))
                    emit(
                        {
                            "bench": "web_page_100_objects",
                            "variant": variant,
                            "round": round_no,
                            "requests_per_second": round(rps, 1),
                            "median_ms": round(p50, 3),
                        }
                    )
    medians = {v: statistics.median(r for r, _ in rs) for v, rs in results.items()}
    say(f"{'variant':<18} {'req/s':>9} {'median ms':>10} {'memory / variant':>17}")
    for variant in VARIANTS:
        p50 = statistics.median(m for _, m in results[variant])
        ratio = medians["memory"] / medians[variant]
        say(f"{variant:<18} {medians[variant]:>9.0f} {p50:>10.2f} {ratio:>16.2f}x")
        emit(
            {
                "bench": "web_page_100_objects_summary",
                "variant": variant,
                "median_requests_per_second": round(medians[variant], 1),
                "memory_over_variant": round(ratio, 2),
            }
        )


async def _load_model(address: str) -> None:
    """Give the Catalog model the same 100 items, through one command."""
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://{address}/app/load") as response,
    ):
        if response.status != 200:
            raise SystemExit(f"loading the model failed: HTTP {response.status}")


if __name__ == "__main__":
    main()

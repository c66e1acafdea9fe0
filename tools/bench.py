"""``ramraft bench``: throughput and latency of a three-node cluster, fsync on.

    ramraft bench                                  # local cluster, every mode, 1/64/1000 in flight
    ramraft bench --mode write --in-flight 1 --duration 10
    ramraft bench --endpoints h1:7001,h2:7002,h3:7003 --mode write,read-serializable
    ramraft bench --json                           # one JSON document on stdout

By default the bench starts its own cluster: three ``ramraft node``
processes on free loopback ports with data directories in a temporary
directory (fsync on, as in production), or, when an ``inproc-*`` mode is
asked for, two such processes plus one node running inside the bench process
itself. ``--endpoints`` benches a running cluster instead (gRPC modes only).

Modes (comma list, default ``all``):

- ``write``: gRPC ``Put`` of a fresh random key with a ``--value-bytes`` value.
- ``read-linearizable`` / ``read-serializable``: gRPC ``Get`` of a key
  written before the run (``--keys`` of them).
- ``inproc-write``: ``NodeAPI.write`` -- the call the web tier makes -- on the
  node inside the bench process, which is made the leader first, with
  N writes in flight on its own event loop. No RPC at all between the caller
  and the leader.
- ``inproc-read-linearizable``: ``NodeAPI.linearizable`` then a dictionary
  lookup, on that same node.

Each mode runs once per ``--in-flight`` level: a closed loop that keeps that
many requests outstanding for ``--warmup`` seconds (not counted), then
``--duration`` seconds (counted: requests that *complete* in the window).

gRPC load comes from separate client processes (``--processes``, default:
one per 500 requests in flight, at most 2), never from the bench's own event
loop (which may host a node). A Python gRPC client costs about as much CPU
per call as the server side (measured here: 0.3-0.5 ms per unary call on
either side), so one process could become the limit at 1,000 in flight; but
on the two-core machine the three nodes need the CPU too, and measured runs
showed the leader, not the client processes, saturating first (clients at
0.1-0.3 cores during write runs) -- more processes would only steal CPU from
the nodes. Each process spreads its requests over ``--connections``
channels (HTTP/2 connections; default 1, which bench.compare's etcd driver
uses too: it is etcd's faster setting here, 4,121 against 3,777 writes/s at
16 in flight). ``--client library`` (default) uses ``client.AsyncClient``, one
per channel, so by default every caller shares one client as an
application's do and its calls share one stream and its batches (sessions,
retries, deadlines: what applications use); ``--client raw`` calls the
generated ``KVStub`` directly, the same shape of driver as the etcd
baseline's, for a like-for-like comparison; ``--client stream`` sends the
same requests over ``KV.Stream`` (one stream per connection, requests
matched to answers by id), the API's cheap path for many requests in flight.

Per run the bench prints ops/s (``writes_per_s`` or ``reads_per_s``),
p50/p99/p99.9 latency, errors, and the CPU cores each process used during
the window (``foreign_cores``: CPU used by processes that are not part of the
bench: a high value means a contaminated measurement).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TextIO, TypeVar

GRPC_MODES = ("write", "read-linearizable", "read-serializable")
INPROC_MODES = ("inproc-write", "inproc-read-linearizable")
ALL_MODES = GRPC_MODES + INPROC_MODES
WRITE_MODES = ("write", "inproc-write")
READ_MODES = ("read-linearizable", "read-serializable", "inproc-read-linearizable")
INPROC_ID = "n1"
PORT_ATTEMPTS = 5
KEY_PREFIX = "bench-"
# Foreign CPU use (other work on the machine) that makes a run "contaminated",
# and below which the machine counts as idle (as the peers' scripts do).
CONTAMINATED_CORES = 0.2
QUIET_CORES = 0.15


class BenchError(Exception):
    """The bench cannot run as asked; the message says why."""


# ---- measuring ---------------------------------------------------------------------------------


@dataclass
class Tally:
    """What one closed loop saw inside the measured window."""

    ok: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, completed in the window
    error_kinds: Counter[str] = field(default_factory=Counter)
    done: int = 0  # completed so far, window or not (for the progress bar)

    def merge(self, other: Tally) -> None:
        self.ok += other.ok
        self.errors += other.errors
        self.latencies.extend(other.latencies)
        self.error_kinds.update(other.error_kinds)
        self.done += other.done

    def to_plain(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "errors": self.errors,
            "latencies": self.latencies,
            "error_kinds": dict(self.error_kinds),
        }

    @staticmethod
    def from_plain(plain: dict[str, Any]) -> Tally:
        return Tally(
            ok=int(plain["ok"]),
            errors=int(plain["errors"]),
            latencies=list(plain["latencies"]),
            error_kinds=Counter(plain["error_kinds"]),
        )


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100) of already sorted values."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), int(-(-p * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


@dataclass(frozen=True)
class _Counting:
    """How the closed loops count a call: inside the measured window or
    not, and when the run is over."""

    measure_from: float  # time.monotonic()
    measure_to: float
    on_done: Callable[[], None] | None

    def failed(self, tally: Tally, error: Exception) -> bool:
        """Count a call that raised ``error``; True when the run is over."""
        now = time.monotonic()
        if now >= self.measure_to:
            return True
        if now >= self.measure_from:
            tally.errors += 1
            tally.error_kinds[_error_kind(error)] += 1
        return False

    def completed(self, tally: Tally, elapsed: float) -> bool:
        """Count a call that took ``elapsed`` seconds; True when the run is over."""
        now = time.monotonic()
        tally.done += 1
        if self.on_done is not None:
            self.on_done()
        if now >= self.measure_to:
            return True
        if now >= self.measure_from:
            tally.ok += 1
            tally.latencies.append(elapsed)
        return False


async def closed_loop(
    op: Callable[[int, int], Awaitable[object]],
    concurrency: int,
    measure_from: float,
    measure_to: float,
    tally: Tally,
    on_done: Callable[[], None] | None = None,
) -> None:
    """Keep ``concurrency`` calls of ``op(n, caller)`` outstanding until
    ``measure_to`` (time.monotonic); count those that complete from
    ``measure_from`` on. ``n`` counts every call; ``caller`` (0 to
    concurrency - 1) is the one of the concurrent callers making it, for a
    driver to give each caller a connection of its own, as an application's
    workers each hold a client: dealt by ``n`` instead, the answers of one
    batch would go out over every connection, and the batches would halve
    until they held a request each. ``op`` raising counts as an error (and
    the loop goes on: the bench measures, it does not stop at the first
    refusal)."""
    counter = iter(range(1 << 62))
    perf = time.perf_counter
    counting = _Counting(measure_from, measure_to, on_done)

    async def one_client(caller: int) -> None:
        while True:
            started = perf()
            try:
                await op(next(counter), caller)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if counting.failed(tally, e):
                    return
                await asyncio.sleep(0.01)  # do not spin on a refusing cluster
                continue
            if counting.completed(tally, perf() - started):
                return

    await asyncio.gather(*(one_client(caller) for caller in range(concurrency)))


def threaded_closed_loop(
    op: Callable[[int, int], object],
    concurrency: int,
    measure_from: float,
    measure_to: float,
    tally: Tally,
    on_done: Callable[[], None] | None = None,
) -> None:
    """``closed_loop`` for a blocking ``op``: one thread per caller, as an
    application's worker threads share a blocking client. Each thread
    counts into a Tally of its own (``+=`` is not atomic between threads);
    they are merged into ``tally`` at the end."""
    counter = iter(range(1 << 62))  # next() on it is atomic under the GIL
    perf = time.perf_counter
    counting = _Counting(measure_from, measure_to, on_done)
    own = [Tally() for _ in range(concurrency)]

    def one_client(caller: int) -> None:
        mine = own[caller]
        while True:
            started = perf()
            try:
                op(next(counter), caller)
            except Exception as e:
                if counting.failed(mine, e):
                    return
                time.sleep(0.01)  # do not spin on a refusing cluster
                continue
            if counting.completed(mine, perf() - started):
                return

    threads = [
        threading.Thread(target=one_client, args=(caller,), name=f"bench-caller-{caller}")
        for caller in range(concurrency)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for mine in own:
        tally.merge(mine)


def _error_kind(e: BaseException) -> str:
    code = getattr(e, "code", None)
    if callable(code):
        with contextlib.suppress(Exception):
            return f"{type(e).__name__}:{code()}"
    return type(e).__name__


# ---- CPU accounting (Linux /proc; empty elsewhere) ----------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """CPU seconds process ``pid`` (and its waited-for children) used; None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # after "pid (comm)": state is [0]; utime [11], stime [12], cutime [13], cstime [14]
    return sum(int(x) for x in fields[11:15]) / _CLOCK_TICKS


def _proc_table() -> dict[int, tuple[int, float]]:
    """{pid: (parent pid, own CPU seconds)} of every process on the machine."""
    table: dict[int, tuple[int, float]] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            table[int(name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS)
    return table


def _foreign_cores(
    before: dict[int, tuple[int, float]], after: dict[int, tuple[int, float]], seconds: float
) -> float:
    """Cores used by user processes that are neither this process nor its
    descendants (the nodes and client processes it started): other work on
    the machine, which distorts the figures. Kernel threads (children of pid
    2, e.g. the journal thread that fsync wakes) are not counted."""
    ours = {os.getpid()}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _) in after.items():
            if ppid in ours and pid not in ours:
                ours.add(pid)
                grew = True
    used = 0.0
    for pid, (ppid, cpu) in after.items():
        if pid in ours or pid == 2 or ppid == 2 or ppid == 0:
            continue
        used += cpu - before[pid][1] if pid in before else cpu
    return max(0.0, used / seconds) if seconds > 0 else 0.0


class CpuWindow:
    """Cores used by each named process, and by foreign processes, over a window."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._before: dict[str, float | None] = {}
        self._table: dict[int, tuple[int, float]] = {}
        self._started = 0.0

    def start(self) -> None:
        self._before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._table = _proc_table()
        self._started = time.monotonic()

    def stop(self) -> dict[str, Any]:
        seconds = time.monotonic() - self._started
        cores: dict[str, float] = {}
        for name, pid in self.pids.items():
            before, after = self._before.get(name), cpu_seconds(pid)
            if before is not None and after is not None and seconds > 0:
                cores[name] = round((after - before) / seconds, 2)
        out: dict[str, Any] = {"cores": cores}
        if self._table:
            foreign = _foreign_cores(self._table, _proc_table(), seconds)
            out["foreign_cores"] = round(foreign, 2)
            out["contaminated"] = foreign > CONTAMINATED_CORES
        return out


async def wait_quiet(max_wait: float, progress: Progress) -> dict[str, Any]:
    """Wait (up to ``max_wait`` s) until foreign processes use less than
    QUIET_CORES of the machine; returns the last probe."""
    deadline = time.monotonic() + max_wait
    waited = False
    while True:
        before, started = _proc_table(), time.monotonic()
        await asyncio.sleep(1.5)
        foreign = _foreign_cores(before, _proc_table(), time.monotonic() - started)
        if foreign <= QUIET_CORES or time.monotonic() >= deadline:
            if waited:
                progress.draw_text("")
            return {"foreign_cores_before": round(foreign, 2), "quiet": foreign <= QUIET_CORES}
        waited = True
        progress.draw_text(f"waiting for an idle machine (other processes use {foreign:.2f} cores)")


# ---- gRPC load (in client processes) -----------------------------------------------------------


@dataclass
class GrpcSpec:
    mode: str
    concurrency: int
    connections: int
    client: str  # "library", "blocking", "raw" or "stream"
    endpoints: list[str]
    value_bytes: int
    keys: int
    measure_from: float  # time.monotonic(): one clock for every process on the machine
    measure_to: float
    seed: int
    timeout: float


def _load_data(spec: GrpcSpec) -> tuple[random.Random, list[bytes], list[str], Any]:
    """A run's random source, its 256 values, the keys reads read, and the
    reads' consistency (a kv_pb2.Consistency)."""
    from ramraft.proto import kv_pb2

    rng = random.Random(spec.seed)
    values = [rng.randbytes(spec.value_bytes) for _ in range(256)]
    keys = [f"{KEY_PREFIX}{n:06d}" for n in range(max(1, spec.keys))]
    linearizable = spec.mode == "read-linearizable"
    return rng, values, keys, kv_pb2.LINEARIZABLE if linearizable else kv_pb2.SERIALIZABLE


T = TypeVar("T")


def _library_clients(spec: GrpcSpec, make: Callable[..., T]) -> list[T]:
    """One client (``make``: Client or AsyncClient) per connection, each
    given one endpoint, in turn (as the raw and stream drivers connect): a
    client's reads stay on the node it starts at (its writes follow the
    leader it is told of), so random starts would leave reads spread over
    the nodes unevenly, or all on one."""
    return [
        make(
            [spec.endpoints[n % len(spec.endpoints)]],
            timeout=spec.timeout,
            rng=random.Random(spec.seed + n),
        )
        for n in range(spec.connections)
    ]


def _blocking_load(spec: GrpcSpec, on_done: Callable[[], None]) -> Tally:
    """``--client blocking``: a ``Client`` per connection, shared by its
    callers' threads (threaded_closed_loop)."""
    from ramraft.client import Client

    rng, values, keys, consistency = _load_data(spec)
    clients = _library_clients(spec, Client)

    def op(n: int, caller: int) -> object:
        c = clients[caller % len(clients)]
        if spec.mode == "write":
            return c.put(f"{rng.getrandbits(64):016x}", values[n & 255])
        return c.get(keys[n % len(keys)], consistency=consistency)

    tally = Tally()
    try:
        threaded_closed_loop(
            op, spec.concurrency, spec.measure_from, spec.measure_to, tally, on_done
        )
    finally:
        for c in clients:
            with contextlib.suppress(Exception):
                c.close()
    return tally


async def _grpc_load(spec: GrpcSpec, on_done: Callable[[], None]) -> Tally:
    import grpc

    from ramraft.client import AsyncClient
    from ramraft.proto import kv_pb2, kv_pb2_grpc

    if spec.client == "blocking":
        return await asyncio.to_thread(_blocking_load, spec, on_done)
    rng, values, keys, consistency = _load_data(spec)
    tally = Tally()
    op: Callable[[int, int], Awaitable[object]]
    closers: list[Callable[[], Awaitable[None]]] = []
    if spec.client == "raw":
        channels = [
            grpc.aio.insecure_channel(
                spec.endpoints[n % len(spec.endpoints)],
                options=[("grpc.use_local_subchannel_pool", 1)],
            )
            for n in range(spec.connections)
        ]
        closers = [channel.close for channel in channels]
        stubs = [kv_pb2_grpc.KVStub(channel) for channel in channels]

        async def raw_op(n: int, caller: int) -> object:
            stub = stubs[caller % len(stubs)]
            if spec.mode == "write":
                key = f"{rng.getrandbits(64):016x}"
                request = kv_pb2.PutRequest(key=key, value=values[n & 255])
                return await stub.Put(request, timeout=spec.timeout)
            get = kv_pb2.GetRequest(key=keys[n % len(keys)], consistency=consistency)
            return await stub.Get(get, timeout=spec.timeout)

        op = raw_op
    elif spec.client == "stream":
        streams = [
            _Multiplexed(
                grpc.aio.insecure_channel(
                    spec.endpoints[n % len(spec.endpoints)],
                    options=[("grpc.use_local_subchannel_pool", 1)],
                ),
                spec.timeout,
            )
            for n in range(spec.connections)
        ]
        closers = [stream.close for stream in streams]

        async def stream_op(n: int, caller: int) -> object:
            stream = streams[caller % len(streams)]
            if spec.mode == "write":
                key = f"{rng.getrandbits(64):016x}"
                return await stream.call(n, put=kv_pb2.PutRequest(key=key, value=values[n & 255]))
            get = kv_pb2.GetRequest(key=keys[n % len(keys)], consistency=consistency)
            return await stream.call(n, get=get)

        op = stream_op
    else:
        clients = _library_clients(spec, AsyncClient)
        closers = [c.close for c in clients]

        async def library_op(n: int, caller: int) -> object:
            c = clients[caller % len(clients)]
            if spec.mode == "write":
                return await c.put(f"{rng.getrandbits(64):016x}", values[n & 255])
            return await c.get(keys[n % len(keys)], consistency=consistency)

        op = library_op
    try:
        await closed_loop(op, spec.concurrency, spec.measure_from, spec.measure_to, tally, on_done)
    finally:
        for close in closers:
            with contextlib.suppress(Exception):
                await close()
    return tally


class _Multiplexed:
    """One ``KV.Stream`` on its own channel; ``call`` sends a request and
    waits for the answer with its id (answers come in completion order)."""

    def __init__(self, channel: Any, timeout: float) -> None:
        from ramraft.proto import kv_pb2_grpc

        self.channel = channel
        self.timeout = timeout
        self.stream = kv_pb2_grpc.KVStub(channel).Stream()
        self.waiting: dict[int, asyncio.Future[Any]] = {}
        self.writing = asyncio.Lock()  # one write at a time on a gRPC stream
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async for response in self.stream:
                fut = self.waiting.pop(response.id, None)
                if fut is not None and not fut.done():
                    fut.set_result(response)
        except Exception as e:  # the stream broke: fail everyone waiting
            error = e
        else:
            error = ConnectionError("the stream ended")
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(error)
        self.waiting.clear()

    async def call(self, request_id: int, **op: Any) -> Any:
        from ramraft.proto import kv_pb2

        if self.reader.done():
            raise ConnectionError("the stream ended")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting[request_id] = fut
        request = kv_pb2.StreamRequest(id=request_id, timeout_ms=int(self.timeout * 1000), **op)
        async with self.writing:
            await self.stream.write(request)
        response = await asyncio.wait_for(fut, self.timeout)
        if response.code:
            raise RuntimeError(f"status {response.code}: {response.message}")
        return response

    async def close(self) -> None:
        self.stream.cancel()
        self.reader.cancel()
        with contextlib.suppress(BaseException):
            await self.reader
        await self.channel.close()


def _worker_main(conn: Connection, done_counter: Any) -> None:
    """A client process: runs one GrpcSpec per request on ``conn``, answers
    with the Tally (as plain data); ``done_counter`` feeds the progress bar."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us

    def count() -> None:
        done_counter.value += 1

    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            return
        spec = GrpcSpec(**request)
        try:
            tally = asyncio.run(_grpc_load(spec, count))
            conn.send({"tally": tally.to_plain(), "pid": os.getpid()})
        except Exception as e:  # report, keep serving
            conn.send({"error": f"{type(e).__name__}: {e}"})


class WorkerPool:
    """Client processes, started once and reused by every gRPC run."""

    def __init__(self, size: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.workers: list[tuple[Any, Connection, Any]] = []
        for _ in range(size):
            parent, child = ctx.Pipe()
            counter = ctx.RawValue("q", 0)
            process = ctx.Process(target=_worker_main, args=(child, counter), daemon=True)
            process.start()
            child.close()
            self.workers.append((process, parent, counter))

    def pids(self, count: int) -> dict[str, int]:
        return {f"client{n + 1}": int(p.pid) for n, (p, _, _) in enumerate(self.workers[:count])}

    def done(self) -> int:
        return sum(int(counter.value) for _, _, counter in self.workers)

    async def run(self, specs: list[GrpcSpec]) -> Tally:
        for (_, conn, _), spec in zip(self.workers, specs, strict=False):
            conn.send(spec.__dict__)
        total = Tally()
        for process, conn, _ in self.workers[: len(specs)]:
            while not conn.poll():
                if not process.is_alive():
                    raise BenchError(f"client process {process.pid} died")
                await asyncio.sleep(0.05)
            answer = conn.recv()
            if "error" in answer:
                raise BenchError(f"client process failed: {answer['error']}")
            total.merge(Tally.from_plain(answer["tally"]))
        return total

    def close(self) -> None:
        for _process, conn, _ in self.workers:
            with contextlib.suppress(Exception):
                conn.send(None)
        for process, conn, _ in self.workers:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(2)
            conn.close()


# ---- the cluster -------------------------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    """Ports free at the moment of asking. Only candidates: another process
    may bind one before the node does, so whoever starts nodes on them
    retries with new ones when a node exits with EXIT_PORT_IN_USE."""
    sockets, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
        ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


class Cluster:
    """Three nodes: ours (started here, maybe one in this process) or the
    ``--endpoints`` of a running cluster."""

    def __init__(
        self,
        endpoints: list[str] | None,
        *,
        inproc: bool,
        root: Path | None,
        tick_ms: int,
        fsync: bool,
        node_args: list[str],
    ) -> None:
        self.external = endpoints is not None
        self.inproc = inproc
        self.tick_ms = tick_ms
        self.fsync = fsync
        self.node_args = node_args
        self.root = root
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.node: Any = None  # server.node.Node when inproc
        self._logs: list[Any] = []
        if endpoints is not None:
            self.addresses = {address: address for address in endpoints}
        else:
            self.addresses = self._pick_addresses()

    @staticmethod
    def _pick_addresses() -> dict[str, str]:
        ids = [f"n{i + 1}" for i in range(3)]
        return {i: f"127.0.0.1:{port}" for i, port in zip(ids, free_ports(3), strict=True)}

    @property
    def endpoints(self) -> list[str]:
        return list(self.addresses.values())

    def pids(self) -> dict[str, int]:
        pids = {node_id: int(proc.pid) for node_id, proc in self.procs.items()}
        if self.node is not None:
            pids[INPROC_ID] = os.getpid()
        return pids

    async def start(self) -> None:
        """Start our nodes and wait until each serves; when a port picked
        turns out taken (exit status 4, or ListenError in this process),
        stop them and start again on new ports."""
        if self.external:
            return
        from ramraft.server.node import ListenError

        for _ in range(PORT_ATTEMPTS):
            try:
                await self._start_nodes()
                if not await self._wait_serving():
                    return
            except ListenError as e:
                if not e.in_use:
                    raise
            await self.stop()
            self.procs, self.node, self._logs = {}, None, []
            self.addresses = self._pick_addresses()
        raise BenchError(f"{PORT_ATTEMPTS} sets of free ports were all taken when the nodes bound")

    async def _wait_serving(self, timeout: float = 60.0) -> bool:
        """Wait until every node process serves (its ports.json names its
        pid); True if one exited because its port was taken."""
        from ramraft.tools.node_cli import EXIT_PORT_IN_USE

        assert self.root is not None
        deadline = time.monotonic() + timeout
        for node_id, proc in self.procs.items():
            ports_file = self.root / node_id / "ports.json"
            while True:
                with contextlib.suppress(FileNotFoundError, ValueError):
                    if json.loads(ports_file.read_text())["pid"] == proc.pid:
                        break
                if proc.poll() is not None:
                    if proc.returncode == EXIT_PORT_IN_USE:
                        return True
                    self.check_alive()  # raises with the node's log
                if time.monotonic() > deadline:
                    raise BenchError(f"node {node_id} did not start serving within {timeout:.0f} s")
                await asyncio.sleep(0.05)
        return False

    async def _start_nodes(self) -> None:
        assert self.root is not None
        peers = ",".join(f"{i}={a}" for i, a in self.addresses.items())
        env = dict(os.environ, RAMRAFT_LOG_LEVEL="warning")
        for node_id in self.addresses:
            data_dir = self.root / node_id
            data_dir.mkdir(parents=True, exist_ok=True)
            if self.inproc and node_id == INPROC_ID:
                continue
            argv = [
                sys.executable,
                "-m",
                "ramraft",
                "node",
                "--id",
                node_id,
                "--peers",
                peers,
                "--data-dir",
                str(data_dir),
                *(["--tick-ms", str(self.tick_ms)] if self.tick_ms else []),
                *([] if self.fsync else ["--no-fsync"]),
                *self.node_args,
            ]
            log = open(data_dir / "node.log", "ab")  # noqa: SIM115 - closed in stop()
            self._logs.append(log)
            self.procs[node_id] = subprocess.Popen(
                argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env
            )
        if self.inproc:
            from ramraft.server.config import NodeConfig
            from ramraft.server.node import Node

            config = NodeConfig(
                node_id=INPROC_ID,
                peers=dict(self.addresses),
                data_dir=str(self.root / INPROC_ID),
                fsync=self.fsync,
            )
            if self.tick_ms:
                config.tick_ms = self.tick_ms
            self.node = Node(config)
            await self.node.start()

    def check_alive(self) -> None:
        for node_id, proc in self.procs.items():
            if proc.poll() is not None:
                tail = self.log_tail(node_id)
                raise BenchError(f"node {node_id} exited with {proc.returncode}; its log:\n{tail}")

    def log_tail(self, node_id: str, lines: int = 20) -> str:
        if self.root is None:
            return ""
        path = self.root / node_id / "node.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    async def stop(self) -> None:
        if self.node is not None:
            with contextlib.suppress(Exception):
                await self.node.stop(transfer=False, grace=1.0)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in self._logs:
            log.close()

    async def leader(self, timeout: float = 30.0) -> tuple[str, str]:
        """(id, client address) of the leader, once one answers writes."""
        from ramraft.client import AsyncClient
        from ramraft.proto import admin_pb2

        deadline = time.monotonic() + timeout
        last_error = "no answer"
        while time.monotonic() < deadline:
            self.check_alive()
            for address in self.endpoints:
                try:
                    async with AsyncClient(address, timeout=1.0) as c:
                        status = await c.status(endpoint=address)
                except Exception as e:
                    last_error = f"{address}: {_error_kind(e)}"
                    continue
                if status.node.role == admin_pb2.ROLE_LEADER:
                    try:
                        async with AsyncClient(address, timeout=2.0) as c:
                            await c.put(f"{KEY_PREFIX}probe", b"x")
                    except Exception as e:
                        last_error = f"{address}: leader does not take writes yet: {e}"
                        break
                    node_id = status.node.id if not self.external else address
                    return node_id, address
            await asyncio.sleep(0.1)
        raise BenchError(f"no leader within {timeout:.0f} s ({last_error})")

    async def make_leader(self, node_id: str, timeout: float = 30.0) -> None:
        """Hand leadership to ``node_id`` (the in-process node)."""
        from ramraft.client import AsyncClient

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader_id, address = await self.leader(max(1.0, deadline - time.monotonic()))
            if leader_id == node_id:
                return
            with contextlib.suppress(Exception):
                async with AsyncClient(address, timeout=5.0) as c:
                    await c.transfer_leadership(node_id)
            await asyncio.sleep(0.2)
        raise BenchError(f"could not make {node_id} the leader within {timeout:.0f} s")


# ---- in-process load ---------------------------------------------------------------------------


async def _inproc_load(
    node: Any,
    mode: str,
    concurrency: int,
    value_bytes: int,
    keys: int,
    measure_from: float,
    measure_to: float,
    tally: Tally,
    timeout: float,
) -> None:
    from ramraft.server.machines.kv import encode_put

    api = node.api
    kv = node.kv
    rng = random.Random(7)
    values = [rng.randbytes(value_bytes) for _ in range(256)]
    names = [f"{KEY_PREFIX}{n:06d}" for n in range(max(1, keys))]

    async def write(n: int, caller: int) -> object:
        command = encode_put(f"{rng.getrandbits(64):016x}", values[n & 255])
        return await api.write(command, timeout)

    async def read(n: int, caller: int) -> object:
        await api.linearizable(timeout)
        return kv.get(names[n % len(names)])

    op = write if mode == "inproc-write" else read
    await closed_loop(op, concurrency, measure_from, measure_to, tally)


# ---- progress ----------------------------------------------------------------------------------


class Progress:
    """A one-line bar on stderr, redrawn in place on a terminal; on anything
    else (logs, pipes) one line per run when it ends."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.tty = enabled and stream.isatty()

    def draw(self, label: str, elapsed: float, total: float, rate: float | None) -> None:
        if not self.tty:
            return
        width = 30
        done = min(1.0, elapsed / total) if total > 0 else 1.0
        bar = "#" * int(done * width) + "." * (width - int(done * width))
        speed = f"{rate:,.0f} ops/s" if rate is not None else "warming up"
        self.stream.write(f"\r{label:<34} [{bar}] {elapsed:4.1f}/{total:.1f} s  {speed:<18}")
        self.stream.flush()

    def draw_text(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r" + text.ljust(100)[:100] + ("\r" if not text else ""))
            self.stream.flush()

    def end(self, line: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r" + " " * 100 + "\r")
        self.stream.write(line + "\n")
        self.stream.flush()

    def note(self, line: str) -> None:
        if self.enabled:
            self.stream.write(line + "\n")
            self.stream.flush()


async def _watch(
    progress: Progress,
    label: str,
    done: Callable[[], int],
    started: float,
    measure_from: float,
    measure_to: float,
) -> None:
    total = measure_to - started
    last_done, last_at = done(), time.monotonic()
    rate: float | None = None
    while True:
        await asyncio.sleep(0.2)
        now = time.monotonic()
        count = done()
        if now >= measure_from and now > last_at:
            rate = (count - last_done) / (now - last_at)
        last_done, last_at = count, now
        progress.draw(label, min(now - started, total), total, rate)


# ---- the runs ----------------------------------------------------------------------------------


@dataclass
class Plan:
    modes: list[str]
    in_flight: list[int]
    duration: float
    warmup: float
    value_bytes: int
    keys: int
    client: str
    processes: int  # 0: automatic
    connections: int
    timeout: float


def processes_for(in_flight: int, asked: int) -> int:
    if asked:
        return max(1, min(asked, in_flight))
    return max(1, min(2, -(-in_flight // 500)))


def summarize(
    mode: str,
    in_flight: int,
    processes: int,
    client: str,
    tally: Tally,
    seconds: float,
    cpu: dict[str, Any],
) -> dict[str, Any]:
    lat = sorted(tally.latencies)

    def ms(p: float) -> float | None:
        value = percentile(lat, p)
        return round(value * 1e3, 3) if value is not None else None

    rate = round(tally.ok / seconds, 1) if seconds > 0 else 0.0
    inproc = mode.startswith("inproc-")
    return {
        "mode": mode,
        "api": "inproc" if inproc else "grpc",
        "in_flight": in_flight,
        "processes": 0 if inproc else processes,
        "client": "NodeAPI" if inproc else client,
        "seconds": round(seconds, 3),
        "ops": tally.ok,
        "ops_per_s": rate,
        "writes_per_s": rate if mode in WRITE_MODES else None,
        "reads_per_s": rate if mode in READ_MODES else None,
        "p50_ms": ms(50),
        "p99_ms": ms(99),
        "p999_ms": ms(99.9),
        "mean_ms": round(sum(lat) / len(lat) * 1e3, 3) if lat else None,
        "errors": tally.errors,
        "error_kinds": dict(tally.error_kinds),
        **cpu,
    }


async def _preload(endpoint: str, keys: int, value_bytes: int) -> None:
    """Write the keys the read modes read (bare stubs: no session needed)."""
    import grpc

    from ramraft.proto import kv_pb2, kv_pb2_grpc

    value = b"v" * value_bytes
    async with grpc.aio.insecure_channel(endpoint) as channel:
        stub = kv_pb2_grpc.KVStub(channel)
        queue = iter(range(keys))

        async def writer() -> None:
            for n in queue:
                request = kv_pb2.PutRequest(key=f"{KEY_PREFIX}{n:06d}", value=value)
                await stub.Put(request, timeout=10.0)

        await asyncio.gather(*(writer() for _ in range(min(64, keys))))


async def run_bench(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    plan: Plan = args.plan
    inproc = any(m in INPROC_MODES for m in plan.modes)
    endpoints = args.endpoint_list
    root: Path | None = None
    if endpoints is None:
        base = Path(args.data_dir) if args.data_dir else None
        try:
            if base is not None:
                base.mkdir(parents=True, exist_ok=True)
            root = Path(tempfile.mkdtemp(prefix="ramraft-bench-", dir=base))
        except OSError as e:
            where = f"--data-dir {args.data_dir}" if base is not None else "the temporary directory"
            raise BenchError(
                f"{where}: cannot create the cluster's directory there ({e.strerror}); "
                "give --data-dir a directory this user can write"
            ) from None
    cluster = Cluster(
        endpoints,
        inproc=inproc,
        root=root,
        tick_ms=args.tick_ms,
        fsync=not args.no_fsync,
        node_args=list(args.node_arg),
    )
    pool: WorkerPool | None = None
    runs: list[dict[str, Any]] = []
    try:
        if root is not None:
            progress.note(
                f"starting 3 nodes under {root}"
                + (f" ({INPROC_ID} inside this process)" if inproc else "")
            )
        await cluster.start()
        leader_id, leader_address = await cluster.leader()
        if inproc:
            await cluster.make_leader(INPROC_ID)
            leader_id, leader_address = await cluster.leader()
        if any(m in READ_MODES for m in plan.modes):
            await _preload(leader_address, plan.keys, plan.value_bytes)
        grpc_runs = [m for m in plan.modes if m in GRPC_MODES]
        if grpc_runs:
            size = max(processes_for(k, plan.processes) for k in plan.in_flight)
            pool = WorkerPool(size)
        for mode in plan.modes:
            for in_flight in plan.in_flight:
                run = await _one_run(cluster, pool, plan, mode, in_flight, progress, args)
                runs.append(run)
                progress.end(_row(run))
        leader_id, _ = await cluster.leader()
    finally:
        if pool is not None:
            pool.close()
        await cluster.stop()
        if root is not None and not args.keep_data:
            shutil.rmtree(root, ignore_errors=True)
    return {
        "bench": "ramraft",
        "cluster": {
            "nodes": 3,
            "started_here": not cluster.external,
            "fsync": not args.no_fsync if not cluster.external else None,
            "inproc_node": INPROC_ID if inproc else None,
            "endpoints": cluster.endpoints,
            "leader": leader_id,
            "tick_ms": (args.tick_ms or None) if not cluster.external else None,
            # To profile a node under load: py-spy record --pid PID (see --keep-data)
            "pids": cluster.pids(),
        },
        "value_bytes": plan.value_bytes,
        "duration_s": plan.duration,
        "warmup_s": plan.warmup,
        "runs": runs,
    }


def _targets(target: str, endpoints: list[str], leader: str) -> list[str]:
    """The addresses a run's clients connect to: the leader, every node,
    or one follower (whose writes the raw and stream drivers make it
    forward; the clients forward one and then write to the leader it
    names)."""
    if target == "all":
        return list(endpoints)
    if target == "follower":
        followers = [a for a in endpoints if a != leader]
        if not followers:
            raise BenchError("--target follower: the cluster has no follower")
        return followers[:1]
    return [leader]


async def _one_run(
    cluster: Cluster,
    pool: WorkerPool | None,
    plan: Plan,
    mode: str,
    in_flight: int,
    progress: Progress,
    args: argparse.Namespace,
) -> dict[str, Any]:
    inproc = mode in INPROC_MODES
    if inproc:
        await cluster.make_leader(INPROC_ID)
    _, leader_address = await cluster.leader()
    # Like the etcd baseline's driver, requests go to the leader unless asked
    # otherwise (a follower forwards writes: one more hop).
    targets = _targets(args.target, cluster.endpoints, leader_address)
    processes = 1 if inproc else processes_for(in_flight, plan.processes)
    idle: dict[str, Any] = {}
    if args.wait_quiet > 0:
        idle = await wait_quiet(args.wait_quiet, progress)
    started = time.monotonic()
    # Client processes need a moment to connect before the warm-up counts.
    measure_from = started + plan.warmup + (0 if inproc else 0.3)
    measure_to = measure_from + plan.duration
    label = f"{mode} x{in_flight}"
    tally = Tally()
    pids = cluster.pids()
    if pool is not None and not inproc:
        pids.update(pool.pids(processes))
    cpu = CpuWindow(pids)

    async def window() -> dict[str, Any]:
        await asyncio.sleep(max(0.0, measure_from - time.monotonic()))
        cpu.start()
        await asyncio.sleep(max(0.0, measure_to - time.monotonic()))
        return cpu.stop()

    if inproc:
        done: Callable[[], int] = lambda: tally.done  # noqa: E731
    else:
        assert pool is not None
        base = pool.done()
        done = lambda: pool.done() - base  # noqa: E731
    watcher = asyncio.get_running_loop().create_task(
        _watch(progress, label, done, started, measure_from, measure_to)
    )
    window_task = asyncio.get_running_loop().create_task(window())
    try:
        if inproc:
            await _inproc_load(
                cluster.node,
                mode,
                in_flight,
                plan.value_bytes,
                plan.keys,
                measure_from,
                measure_to,
                tally,
                plan.timeout,
            )
        else:
            assert pool is not None
            specs = []
            for n in range(processes):
                share = in_flight // processes + (1 if n < in_flight % processes else 0)
                connections = max(1, min(plan.connections, share))
                if len(targets) > 1 and share >= len(targets):
                    # As many connections to every node.
                    connections = -(-connections // len(targets)) * len(targets)
                specs.append(
                    GrpcSpec(
                        mode=mode,
                        concurrency=share,
                        connections=connections,
                        client=plan.client,
                        endpoints=targets,
                        value_bytes=plan.value_bytes,
                        keys=plan.keys,
                        measure_from=measure_from,
                        measure_to=measure_to,
                        seed=1000 * in_flight + n,
                        timeout=plan.timeout,
                    )
                )
            tally = await pool.run(specs)
        cpu_use = await window_task
    finally:
        watcher.cancel()
        window_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    cluster.check_alive()
    cpu_use["cores"] = _name_cores(cpu_use.get("cores", {}), cluster)
    cpu_use.update(idle)
    return summarize(
        mode, in_flight, processes, plan.client, tally, measure_to - measure_from, cpu_use
    )


def _name_cores(cores: dict[str, float], cluster: Cluster) -> dict[str, float]:
    """Label node processes by role: who leads matters more than the id."""
    out: dict[str, float] = {}
    leader = ""
    if cluster.node is not None and cluster.node.runtime is not None:
        leader = cluster.node.runtime.leader
    for name, value in cores.items():
        if name == INPROC_ID and cluster.node is not None:
            out[f"{name} (bench process{', leader' if leader == name else ''})"] = value
        else:
            out[name] = value
    return out


def _fmt(value: float | None, spec: str = ",.2f") -> str:
    return "-" if value is None else format(value, spec)


def _row(run: dict[str, Any]) -> str:
    what = "writes/s" if run["writes_per_s"] is not None else "reads/s"
    return (
        f"{run['mode']:<25} {run['in_flight']:>5} in flight: "
        f"{_fmt(run['ops_per_s'], ',.0f'):>9} {what:<8}  "
        f"p50 {_fmt(run['p50_ms'])} ms  p99 {_fmt(run['p99_ms'])} ms  "
        f"p99.9 {_fmt(run['p999_ms'])} ms  errors {run['errors']}"
        + ("  (contaminated: other processes used CPU)" if run.get("contaminated") else "")
    )


def print_table(result: dict[str, Any], out: TextIO) -> None:
    c = result["cluster"]
    where = "started here" if c["started_here"] else "at " + ",".join(c["endpoints"])
    out.write(
        f"ramraft bench: 3 nodes {where}, fsync {'on' if c['fsync'] is not False else 'off'}, "
        f"leader {c['leader']}; {result['value_bytes']}-byte values; "
        f"{result['duration_s']:g} s per run after {result['warmup_s']:g} s warm-up\n"
    )
    header = (
        f"{'mode':<25} {'in flight':>9} {'procs':>5} {'ops/s':>10} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'errors':>6}  cores used\n"
    )
    out.write(header)
    for run in result["runs"]:
        cores = " ".join(f"{k}={v}" for k, v in run.get("cores", {}).items())
        foreign = run.get("foreign_cores")
        if foreign is not None:
            cores += f" other={foreign}"
        out.write(
            f"{run['mode']:<25} {run['in_flight']:>9} {run['processes'] or '-':>5} "
            f"{_fmt(run['ops_per_s'], ',.0f'):>10} {_fmt(run['p50_ms']):>8} "
            f"{_fmt(run['p99_ms']):>8} {_fmt(run['p999_ms']):>9} {run['errors']:>6}  {cores}\n"
        )


# ---- command line ------------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of whole numbers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"need whole numbers >= 1: {text!r}")
    return values


def _modes(text: str) -> list[str]:
    modes: list[str] = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        if item == "all":
            modes.extend(m for m in ALL_MODES if m not in modes)
        elif item == "grpc":
            modes.extend(m for m in GRPC_MODES if m not in modes)
        elif item == "inproc":
            modes.extend(m for m in INPROC_MODES if m not in modes)
        elif item in ALL_MODES:
            if item not in modes:
                modes.append(item)
        else:
            raise argparse.ArgumentTypeError(
                f"unknown mode {item!r}; use {', '.join(ALL_MODES)}, grpc, inproc or all"
            )
    if not modes:
        raise argparse.ArgumentTypeError("no mode given")
    return modes


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {text!r}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def add_bench_parser(sub: Any) -> None:
    from ramraft.tools.backup import help_from_doc

    p = sub.add_parser(
        "bench",
        help="measure writes/s, reads/s and latency of a 3-node cluster",
        description=help_from_doc(__doc__).split("\n\n", 1)[0],
        epilog="\n\n".join(help_from_doc(__doc__).split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--endpoints",
        default="",
        help="bench a running cluster at HOST:PORT,... (default: start a local one)",
    )
    p.add_argument(
        "--mode",
        type=_modes,
        default=list(ALL_MODES),
        help=f"comma list of {', '.join(ALL_MODES)}; or grpc, inproc, all (default all)",
    )
    p.add_argument(
        "--in-flight",
        type=_int_list,
        default=[1, 64, 1000],
        help="requests outstanding at once; a comma list runs each (default 1,64,1000)",
    )
    p.add_argument(
        "--duration", type=_positive, default=5.0, help="measured seconds per run (default 5)"
    )
    p.add_argument(
        "--warmup",
        type=_non_negative,
        default=None,
        help="unmeasured seconds before each run (default: 1, or the duration if shorter)",
    )
    p.add_argument("--value-bytes", type=int, default=100, help="value size (default 100)")
    p.add_argument("--keys", type=int, default=1000, help="keys the read modes read (default 1000)")
    p.add_argument(
        "--client",
        choices=("library", "blocking", "raw", "stream"),
        default="library",
        help="gRPC driver: client.AsyncClient (default); client.Client, the blocking client, "
        "shared by one thread per request in flight (blocking); the bare generated KVStub's "
        "unary calls (raw); or KVStub.Stream, one stream per connection (stream)",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=0,
        help="client processes for gRPC modes (default: 1 per 500 in flight, at most 2)",
    )
    p.add_argument(
        "--connections",
        type=int,
        default=1,
        help="gRPC channels (HTTP/2 connections) per client process; the library driver "
        "makes one AsyncClient per channel (default 1: every caller shares one client, as "
        "an application's do)",
    )
    p.add_argument(
        "--target",
        choices=("leader", "all", "follower"),
        default="leader",
        help="send requests to the leader (default), spread them over every node, or send "
        "them to one follower (with --client raw or stream every write is forwarded to the "
        "leader; the clients move their writes to the leader the follower names)",
    )
    p.add_argument("--timeout", type=_positive, default=10.0, help="per-request deadline (s)")
    p.add_argument(
        "--tick-ms",
        type=int,
        default=0,
        help="local cluster's Raft tick in ms (default: the node's own default)",
    )
    p.add_argument(
        "--no-fsync", action="store_true", help="local cluster without fsync (not the default)"
    )
    p.add_argument("--data-dir", default="", help="parent of the local cluster's temp directory")
    p.add_argument("--keep-data", action="store_true", help="keep the local cluster's data")
    p.add_argument(
        "--node-arg",
        action="append",
        default=[],
        help="extra argument for every local node process (repeatable)",
    )
    p.add_argument(
        "--wait-quiet",
        type=_non_negative,
        default=0.0,
        help="before each run, wait up to this many seconds for other processes on the "
        f"machine to use less than {QUIET_CORES} cores (default 0: do not wait)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress output on stderr")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ramraft.client._core import parse_endpoints

    try:
        args.endpoint_list = parse_endpoints(args.endpoints) if args.endpoints else None
    except (ValueError, TypeError) as e:
        print(f"ramraft bench: --endpoints: {e}", file=sys.stderr)
        return 2
    if args.endpoint_list is not None:
        inproc = [m for m in args.mode if m in INPROC_MODES]
        if inproc:
            print(
                f"ramraft bench: {', '.join(inproc)} need the bench to start its own cluster "
                "(one node runs inside the bench); drop --endpoints or those modes",
                file=sys.stderr,
            )
            return 2
    if args.value_bytes < 0 or args.keys < 1 or args.processes < 0 or args.connections < 1:
        print(
            "ramraft bench: need --value-bytes >= 0, --keys >= 1, --processes >= 0 and "
            "--connections >= 1",
            file=sys.stderr,
        )
        return 2
    if args.tick_ms < 0:
        print("ramraft bench: --tick-ms must not be negative", file=sys.stderr)
        return 2
    if args.data_dir and Path(args.data_dir).exists() and not Path(args.data_dir).is_dir():
        print(
            f"ramraft bench: --data-dir {args.data_dir}: is a file, not a directory",
            file=sys.stderr,
        )
        return 2
    warmup = args.warmup if args.warmup is not None else min(1.0, args.duration)
    args.plan = Plan(
        modes=args.mode,
        in_flight=args.in_flight,
        duration=args.duration,
        warmup=warmup,
        value_bytes=args.value_bytes,
        keys=args.keys,
        client=args.client,
        processes=args.processes,
        connections=args.connections,
        timeout=args.timeout,
    )
    from ramraft.server.logs import configure_logging

    configure_logging(os.environ.get("RAMRAFT_LOG_LEVEL", "warning"))
    progress = Progress(sys.stderr, enabled=not args.no_progress)
    try:
        result = asyncio.run(run_bench(args, progress))
    except BenchError as e:
        print(f"ramraft bench: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ramraft bench: interrupted", file=sys.stderr)
        return 130
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        print_table(result, sys.stdout)
    return 0


def register(sub: Any) -> None:
    add_bench_parser(sub)

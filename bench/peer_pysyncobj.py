"""PySyncObj as a peer for bench.compare: three node processes on loopback,
each a ``SyncObj`` holding a ``ReplDict``, with its journal in a file
(PySyncObj's durable option; it never fsyncs it) and its default batching.
PySyncObj has no client protocol: the load runs inside the leader's process,
N ``ReplDict.set`` calls in flight with callbacks, which is what ``ramraft
bench --mode inproc-write`` does with ``NodeAPI.write`` on ramraft's leader.

A write counts once its callback reports success: committed by a majority
and applied on the leader."""

from __future__ import annotations

import contextlib
import multiprocessing
import random
import shutil
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ramraft.tools.bench import Tally, free_ports


def installed(site: Path) -> bool:
    return (site / "pysyncobj" / "__init__.py").is_file()


def version(site: Path) -> str:
    for info in site.glob("pysyncobj-*.dist-info"):
        return info.name.removeprefix("pysyncobj-").removesuffix(".dist-info")
    return "unknown"


def _node(conn: Connection, index: int, ports: list[int], journal: str, site: str) -> None:
    """One PySyncObj node (a process of its own); answers commands on ``conn``."""
    sys.path.insert(0, site)
    from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf  # type: ignore[import-not-found]
    from pysyncobj.batteries import ReplDict  # type: ignore[import-not-found]

    addresses = [f"127.0.0.1:{p}" for p in ports]
    conf = SyncObjConf(
        journalFile=f"{journal}/node{index}.journal", fullDumpFile=f"{journal}/node{index}.dump"
    )
    data = ReplDict()
    node = SyncObj(
        addresses[index],
        [a for a in addresses if a != addresses[index]],
        conf=conf,
        consumers=[data],
    )
    rng = random.Random(index)
    while True:
        command = conn.recv()
        if command[0] == "status":
            conn.send({"leader": node._isLeader(), "size": len(data)})
        elif command[0] == "load":
            _, concurrency, measure_from, measure_to, value_bytes = command
            conn.send(
                _load(
                    data,
                    FAIL_REASON.SUCCESS,
                    rng,
                    concurrency,
                    measure_from,
                    measure_to,
                    value_bytes,
                )
            )
        else:
            with contextlib.suppress(Exception):
                node.destroy()
            conn.send("stopped")
            return


def _load(
    data: Any,
    success: Any,
    rng: random.Random,
    concurrency: int,
    measure_from: float,
    measure_to: float,
    value_bytes: int,
) -> dict[str, Any]:
    """Keep ``concurrency`` sets in flight until ``measure_to``; count those
    whose callback comes inside the window (as tools/bench.py closed_loop)."""
    values = [rng.randbytes(value_bytes) for _ in range(256)]
    slots = threading.Semaphore(concurrency)
    lock = threading.Lock()
    tally = Tally()
    perf, mono = time.perf_counter, time.monotonic

    def done(started: float) -> Any:
        def callback(result: Any, error: Any) -> None:
            elapsed, now = perf() - started, mono()
            with lock:
                if measure_from <= now < measure_to:
                    if error == success:
                        tally.ok += 1
                        tally.latencies.append(elapsed)
                    else:
                        tally.errors += 1
                        tally.error_kinds[f"FAIL_REASON:{error}"] += 1
            slots.release()

        return callback

    n = 0
    while mono() < measure_to:
        if not slots.acquire(timeout=0.05):
            continue
        n += 1
        data.set(f"{rng.getrandbits(64):016x}", values[n & 255], callback=done(perf()))
    for _ in range(concurrency):  # let what is in flight finish (bounded)
        if not slots.acquire(timeout=10):
            break
    return tally.to_plain()


class PySyncObjCluster:
    def __init__(self, site: Path) -> None:
        self.site = site
        self.journal = Path(tempfile.mkdtemp(prefix="ramraft-bench-pysyncobj-"))
        ctx = multiprocessing.get_context("spawn")
        ports = free_ports(3)
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for i in range(3):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_node, args=(child, i, ports, str(self.journal), str(site)), daemon=True
            )
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
        self.leader = -1

    def _ask(self, i: int, *command: Any, timeout: float = 30.0) -> Any:
        self.conns[i].send(command)
        if not self.conns[i].poll(timeout):
            raise RuntimeError(f"PySyncObj node {i} did not answer {command[0]}")
        return self.conns[i].recv()

    def wait_leader(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i in range(3):
                if self._ask(i, "status")["leader"]:
                    self.leader = i
                    return i
            time.sleep(0.1)
        raise RuntimeError(f"PySyncObj elected no leader within {timeout:.0f} s")

    def pids(self) -> dict[str, int]:
        names: dict[str, int] = {}
        followers = 0
        for i, proc in enumerate(self.procs):
            if i == self.leader:
                names["pysyncobj leader (load inside)"] = int(proc.pid)
            else:
                followers += 1
                names[f"pysyncobj follower{followers}"] = int(proc.pid)
        return names

    def start_load(
        self, concurrency: int, measure_from: float, measure_to: float, value_bytes: int
    ) -> None:
        self.conns[self.leader].send(("load", concurrency, measure_from, measure_to, value_bytes))

    def load_result(self, timeout: float) -> Tally:
        conn = self.conns[self.leader]
        if not conn.poll(timeout):
            raise RuntimeError("the PySyncObj load did not finish")
        return Tally.from_plain(conn.recv())

    def stop(self) -> None:
        for i in range(len(self.conns)):
            with contextlib.suppress(Exception):
                self._ask(i, "stop", timeout=5)
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(2)
        shutil.rmtree(self.journal, ignore_errors=True)

"""The clients' KV.Stream transport on three real node processes: the node
the stream goes to is stopped (SIGKILL, SIGTERM) while writes are in flight
on it. Each write whose answer the broken stream lost is retried with its
session on a new stream to another node, and applied once.

The writes are compare-and-swap increments, one chain per writer: a retried
increment that the cluster applied a second time would find the value moved
on and answer ``swapped=False`` (and the chain would stall); with sessions
the retry gets the first application's answer. So every increment must
answer ``swapped=True``, and each key must end at its writer's count."""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ramraft.client import SERIALIZABLE, AsyncClient, Client
from tests.server.procs import ProcessCluster

WRITERS = 8


class _First(random.Random):
    """Makes the client start at its first endpoint (the leader)."""

    def randrange(self, *args: object, **kwargs: object) -> int:
        return 0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ProcessCluster]:
    with ProcessCluster(tmp_path) as c:
        c.wait_for_leader()
        yield c


def _leader_first(cluster: ProcessCluster) -> tuple[str, list[str]]:
    leader = cluster.wait_for_leader()
    return leader, [cluster.grpc[leader]] + [cluster.grpc[i] for i in cluster.ids if i != leader]


class _Retries(logging.Handler):
    """Counts the client's retries after a broken stream (its DEBUG log)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.broken = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "retrying" in record.getMessage():
            self.broken += 1


@pytest.fixture
def retries() -> Iterator[_Retries]:
    handler = _Retries()
    logger = logging.getLogger("ramraft.client")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def _check(cluster: ProcessCluster, counts: dict[str, int], swaps: list[bool]) -> None:
    assert swaps and all(swaps), f"{swaps.count(False)} increments found the value moved on"
    with cluster.client(timeout=20) as c:
        for key, count in counts.items():
            assert c.get(key) == b"%d" % count, key


def test_async_writes_in_flight_when_the_node_is_killed(
    cluster: ProcessCluster, retries: _Retries
) -> None:
    leader, endpoints = _leader_first(cluster)
    counts = {f"chain/{w}": 0 for w in range(WRITERS)}
    swaps: list[bool] = []

    async def writer(c: AsyncClient, key: str, stop: asyncio.Event) -> None:
        await c.put(key, b"0")
        while not stop.is_set():
            n = counts[key]
            result = await c.cas(key, b"%d" % n, b"%d" % (n + 1))
            swaps.append(result.swapped)
            if result.swapped:
                counts[key] = n + 1

    async def main() -> None:
        stop = asyncio.Event()
        async with AsyncClient(endpoints, timeout=20, rng=_First(), transport="stream") as c:
            tasks = [asyncio.create_task(writer(c, key, stop)) for key in counts]
            await asyncio.sleep(1.0)
            assert sum(counts.values()) > 0, "writes flow before the kill"
            await asyncio.to_thread(cluster.kill, leader, signal.SIGKILL)
            before = sum(counts.values())
            deadline = time.monotonic() + 20
            while sum(counts.values()) < before + 50 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            stop.set()
            await asyncio.gather(*tasks)

    asyncio.run(main())
    _check(cluster, counts, swaps)
    assert retries.broken > 0, "the kill broke the stream with writes in flight"


def test_blocking_writes_in_flight_when_the_node_stops(
    cluster: ProcessCluster, retries: _Retries
) -> None:
    """SIGTERM: the node hands leadership over and ends its streams; the
    blocking client's threads carry on through another node."""
    leader, endpoints = _leader_first(cluster)
    counts = {f"chain/{w}": 0 for w in range(WRITERS)}
    swaps: list[bool] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    def writer(c: Client, key: str) -> None:
        try:
            c.put(key, b"0")
            while not stop.is_set():
                n = counts[key]
                result = c.cas(key, b"%d" % n, b"%d" % (n + 1))
                swaps.append(result.swapped)
                if result.swapped:
                    counts[key] = n + 1
        except BaseException as e:  # reported below
            failures.append(e)

    with Client(endpoints, timeout=20, rng=_First(), transport="stream") as c:
        threads = [threading.Thread(target=writer, args=(c, key)) for key in counts]
        for t in threads:
            t.start()
        time.sleep(1.0)
        assert sum(counts.values()) > 0, "writes flow before the stop"
        assert cluster.kill(leader, signal.SIGTERM) == 0
        before = sum(counts.values())
        deadline = time.monotonic() + 20
        while sum(counts.values()) < before + 50 and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        for t in threads:
            t.join()
        # Serializable reads over the stream of the node that now serves.
        assert c.get("chain/0", consistency=SERIALIZABLE) is not None
    assert not failures, failures
    _check(cluster, counts, swaps)
    assert retries.broken > 0, "the stop broke the stream with writes in flight"

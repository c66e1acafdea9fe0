"""A concurrent key-value workload that records its history for the
linearizability checker (tests/linearizability.py).

Every operation is recorded with its invocation and completion time (one
monotonic clock: all clients run in this process), and its outcome:

- ok: the reply, as the checker's sequential model states it;
- unknown (``ret=None``): a write that failed with UNAVAILABLE or
  DEADLINE_EXCEEDED may or may not have been applied (the contract), so it
  may take effect at any time after its invocation, or never; a read that
  failed so tells nothing;
- refused: FAILED_PRECONDITION (an expired session or a stale sequence): the
  write was certainly not applied. Counted in ``refused``: with the sessions
  of a well-behaved client it must never happen.

Put and CAS values are unique (worker and counter), so the checker can pin an
unknown write to the moment its value was first seen.

Workers share a few AsyncClients: several writes of one client id are in
flight at once, so the servers' pipelined sessions (first_unacked) are
exercised on the way.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ramraft.client import AsyncClient, DeadlineExceeded, FailedPrecondition, Unavailable
from tests.linearizability import Operation

# A recorded operation is the checker's Operation (``ret=None``: outcome unknown).
Op = Operation

UNKNOWN_OUTCOME = (Unavailable, DeadlineExceeded)


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    acks: list[tuple[float, float, str]] = field(default_factory=list)
    """(invoked, acknowledged, kind) of every successful write."""
    t0: float = field(default_factory=time.monotonic)

    def operations(self) -> list[Operation]:
        """The history as the checker's Operations."""
        return list(self.ops)

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def record(
        self,
        client: int,
        kind: str,
        key: str,
        call: Awaitable[Any],
        to_output: Callable[[Any], Any],
        *,
        value: bytes | None = None,
        expected: bytes | None = None,
    ) -> Any:
        """Await ``call`` (a coroutine not started yet) and record it; returns
        its result (None if it failed)."""
        invoked = self.now()
        try:
            result = await call
        except UNKNOWN_OUTCOME:
            self.outcomes[f"{kind}:unknown"] += 1
            if kind != "get":
                self.ops.append(
                    Op(client, invoked, None, kind, key, value=value, expected=expected)
                )
            return None
        except FailedPrecondition as e:
            self.outcomes[f"{kind}:refused"] += 1
            self.refused.append(f"{kind} {key}: {e}")
            return None
        returned = self.now()
        self.outcomes[f"{kind}:ok"] += 1
        self.ops.append(
            Op(
                client,
                invoked,
                returned,
                kind,
                key,
                value=value,
                expected=expected,
                output=to_output(result),
            )
        )
        if kind != "get":
            self.acks.append((invoked + self.t0, returned + self.t0, kind))
        return result


def _cas_output(value: bytes) -> Callable[[Any], tuple[bool, bool, bytes]]:
    def output(result: Any) -> tuple[bool, bool, bytes]:
        # The checker's model states ``current`` as the value AFTER the
        # operation; the API returns the value before it (proto/kv.proto).
        after = value if result.swapped else (result.current or b"")
        return (result.swapped, result.found, after)

    return output


@dataclass
class Workload:
    """What the workers share: the history, the clients, the keys."""

    history: History
    writers: list[AsyncClient]
    """Multi-endpoint clients, each shared by several workers (pipelining)."""
    readers: list[AsyncClient]
    """Clients of one node each (empty: reads go through the writers), so
    that reads are served by every node, followers included."""
    keys: list[str]
    seed: int = 0
    timeout: float = 5.0
    short_timeout: float | None = None
    known: dict[str, bytes | None] = field(default_factory=dict)

    async def worker(self, worker_id: int, stop: asyncio.Event) -> None:
        """Random gets, puts, deletes and CASes until ``stop``. With
        ``short_timeout``, one operation in five gets that deadline instead
        (so that some fail during a failover with an unknown outcome)."""
        history, known = self.history, self.known
        client = self.writers[worker_id % len(self.writers)]
        rng = random.Random(self.seed * 1000 + worker_id)
        n = 0
        while not stop.is_set():
            n += 1
            short = self.short_timeout is not None and rng.random() < 0.2
            timeout = self.short_timeout if short and self.short_timeout else self.timeout
            key = rng.choice(self.keys)
            roll = rng.random()
            if roll < 0.3:
                reader = rng.choice(self.readers) if self.readers else client
                result = await history.record(
                    worker_id,
                    "get",
                    key,
                    reader.get_result(key, timeout=min(timeout, 1.0) if self.readers else timeout),
                    lambda r: (r.found, r.value or b""),
                )
                if result is not None:
                    known[key] = result.value
            elif roll < 0.6:
                value = b"w%d-%d" % (worker_id, n)
                put = client.put(key, value, timeout=timeout)
                if await history.record(worker_id, "put", key, put, lambda r: None, value=value):
                    known[key] = value
            elif roll < 0.85:
                value = b"w%d-%d" % (worker_id, n)
                expected = known.get(key) if rng.random() < 0.8 else None
                swap = client.cas(key, expected, value, timeout=timeout)
                result = await history.record(
                    worker_id, "cas", key, swap, _cas_output(value), value=value, expected=expected
                )
                if result is not None:
                    known[key] = value if result.swapped else result.current
            else:
                delete = client.delete(key, timeout=timeout)
                if await history.record(worker_id, "delete", key, delete, bool) is not None:
                    known[key] = None


async def run_workload(
    endpoints: str,
    stop: asyncio.Event,
    *,
    workers: int = 6,
    clients: int = 2,
    keys: list[str] | None = None,
    seed: int = 0,
    timeout: float = 5.0,
    attempt_timeout: float | None = 1.0,
    short_timeout: float | None = None,
    reads_on_every_node: bool = False,
    history: History | None = None,
) -> History:
    """Run ``workers`` random workers over ``clients`` shared AsyncClients
    until ``stop`` is set; returns the recorded history. With
    ``reads_on_every_node``, gets go to a random node each (1 s deadline)."""
    history = history if history is not None else History()
    nodes = endpoints.split(",")
    writers = [
        AsyncClient(endpoints, timeout=timeout, attempt_timeout=attempt_timeout)
        for _ in range(clients)
    ]
    readers = [AsyncClient(node, timeout=1.0) for node in nodes] if reads_on_every_node else []
    load = Workload(
        history, writers, readers, keys or ["a", "b", "c"], seed, timeout, short_timeout
    )
    try:
        await asyncio.gather(*(load.worker(w, stop) for w in range(workers)))
    finally:
        for c in writers + readers:
            await c.close()
    return history

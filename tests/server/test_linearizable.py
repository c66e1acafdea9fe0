"""A history of concurrent puts, gets, deletes and compare-and-swaps, recorded
while leaders are killed, is linearizable (tests/linearizability.py), and
the nodes end with the same contents."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import structlog

from ramraft.client import SERIALIZABLE, Client
from tests.httpcalls import wait_until_async
from tests.linearizability import check
from tests.server.history import History, Op, run_workload
from tests.server.procs import ProcessCluster

log = structlog.get_logger("tests.linearizable")

# The workload runs between faults until this many more writes are
# acknowledged (a count, not a while: a loaded machine just takes longer);
# GUARD_SECONDS only bounds a hang.
WRITES_BETWEEN = 15
GUARD_SECONDS = 60.0


def test_history_under_leader_kills_is_linearizable(tmp_path: Path) -> None:
    with ProcessCluster(tmp_path) as cluster:
        cluster.wait_for_leader()

        async def scenario() -> History:
            stop = asyncio.Event()
            history = History()
            load = asyncio.create_task(
                run_workload(
                    cluster.endpoints(),
                    stop,
                    workers=8,
                    clients=2,
                    keys=["a", "b", "c", "d"],
                    seed=1,
                    short_timeout=0.3,  # some writes end with an unknown outcome
                    reads_on_every_node=True,  # followers serve reads too
                    history=history,
                )
            )

            async def more_writes(what: str) -> None:
                """Let the workload get WRITES_BETWEEN writes acknowledged."""
                target = len(history.acks) + WRITES_BETWEEN
                await wait_until_async(lambda: len(history.acks) >= target, GUARD_SECONDS, what)

            for _ in range(2):
                await more_writes("writes before the kill")
                victim = await asyncio.to_thread(cluster.kill_leader)  # SIGKILL
                await more_writes("writes under the new leader")
                await asyncio.to_thread(cluster.start, victim)
            await more_writes("writes after the restart")
            await wait_until_async(
                lambda: history.outcomes["put:ok"] > 20 and history.outcomes["cas:ok"] > 20,
                GUARD_SECONDS,
                "enough puts and compare-and-swaps",
            )
            stop.set()
            await load
            return history

        history = asyncio.run(scenario())
        log.info("history recorded", ops=len(history.ops), outcomes=dict(history.outcomes))
        started = time.monotonic()
        assert not history.refused, history.refused
        # the workload did real work on both sides of the kills
        assert history.outcomes["put:ok"] > 20 and history.outcomes["cas:ok"] > 20
        unknown = sum(n for k, n in history.outcomes.items() if k.endswith(":unknown"))
        result = check(history.operations(), timeout=60)
        log.info("history checked", seconds=round(time.monotonic() - started, 2), unknown=unknown)
        assert result.ok, result.explanation

        # every node ends with the same contents
        leader = cluster.wait_for_leader()
        for node_id in cluster.ids:
            cluster.wait_caught_up(node_id)
        contents = {}
        for node_id in cluster.ids:
            with Client(cluster.grpc[node_id], timeout=10) as c:
                contents[node_id] = list(c.scan("", consistency=SERIALIZABLE))
        assert all(v == contents[leader] for v in contents.values()), contents


def test_the_checker_rejects_a_history_with_a_lost_acknowledged_write() -> None:
    """The end-to-end check can fail: the same recorder's output with one
    acknowledged put whose value is never seen again by a later read."""
    ops = [
        Op(1, 0.0, 1.0, "put", "k", value=b"x"),
        Op(2, 2.0, 3.0, "get", "k", output=(False, b"")),
    ]
    result = check(History(ops=ops).operations())
    assert not result.ok
    ok = [dataclasses.replace(ops[1], output=(True, b"x"))]
    assert check(History(ops=[ops[0], *ok]).operations()).ok

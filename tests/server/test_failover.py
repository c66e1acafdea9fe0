"""Leader failure under load, with three real node processes.

- SIGKILL of the leader: a new leader is elected and writes resume once it
  is, after at most MAX_ROUNDS election rounds, counted from the nodes' own
  status (the new leader's term minus the old one). A follower waits a
  random [1, 2) timeouts without hearing from the leader, then needs one
  PreVote and one vote round trip; one round is the rule. A split vote
  (both followers time out within a few milliseconds of each other: the
  timeout takes one of only election_ticks values, so a few percent of
  elections) costs another round. How long the gap is in election timeouts
  is a measurement, not a test: `python -m tests.server.measure_failover`.
- SIGTERM of the leader: it hands leadership over (TimeoutNow) and lets its
  in-flight writes finish, so no write with a 5 s deadline fails.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import structlog

from ramraft.client import AsyncClient, RamraftError
from ramraft.proto import admin_pb2
from tests.httpcalls import wait_until_async
from tests.server.history import History, run_workload
from tests.server.procs import ProcessCluster

log = structlog.get_logger("tests.failover")

# Election rounds (terms) a failover may take: one, plus split votes, each a
# few percent likely; three in a row would be a fault, not bad luck.
MAX_ROUNDS = 3
# A hang guard, not the contract: how long the test waits for writes (any
# write acknowledged after the kill, the workload's progress) before it gives up.
RESUME_GUARD_SECONDS = 60.0


async def _probe_until_a_write_succeeds(endpoints: str, since: float, deadline: float) -> float:
    """Fresh writes, each invoked after ``since``, until one is acknowledged;
    returns the acknowledgement time. A write invoked after the old leader
    died can only be acknowledged by a new leader."""
    async with AsyncClient(endpoints, timeout=5.0, attempt_timeout=1.0) as c:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            try:
                await c.put("probe", b"%d" % n, timeout=max(0.1, deadline - time.monotonic()))
            except RamraftError:
                continue
            return time.monotonic()
    raise AssertionError("no write was acknowledged after the kill")


def test_sigkill_of_the_leader_under_load_writes_resume_within_three_election_timeouts(
    tmp_path: Path,
) -> None:
    with ProcessCluster(tmp_path) as cluster:
        old_leader = cluster.wait_for_leader()

        async def scenario() -> tuple[History, admin_pb2.NodeStatus, float, float]:
            stop = asyncio.Event()
            history = History()
            load = asyncio.create_task(
                run_workload(cluster.endpoints(), stop, workers=8, history=history)
            )
            await wait_until_async(
                lambda: len(history.acks) >= 8, RESUME_GUARD_SECONDS, "the workload's writes"
            )
            old_status = await asyncio.to_thread(cluster.status, old_leader)
            assert old_status is not None and old_status.role == admin_pb2.ROLE_LEADER
            killed = time.monotonic()
            await asyncio.to_thread(cluster.kill, old_leader)  # SIGKILL, reaped
            acked = await _probe_until_a_write_succeeds(
                cluster.endpoints(), killed, killed + RESUME_GUARD_SECONDS
            )
            # the workload goes on under the new leader: one of its own
            # writes (retried under the same session) is acknowledged too
            await wait_until_async(
                lambda: any(ack > killed for _, ack, _ in history.acks),
                RESUME_GUARD_SECONDS,
                "the workload to resume",
            )
            stop.set()
            await load
            return history, old_status, killed, acked

        history, old_status, killed, acked = asyncio.run(scenario())
        new_leader = cluster.wait_for_leader()
        new_status = cluster.status(new_leader)
        assert new_status is not None
        rounds = new_status.term - old_status.term
        log.info(
            "failover measured",
            gap_seconds=round(acked - killed, 3),
            election_timeouts=round((acked - killed) / cluster.election_timeout, 2),
            election_rounds=rounds,
            outcomes=dict(history.outcomes),
        )
        assert new_leader != old_leader
        # Writes resumed under a leader elected in a bounded number of rounds
        # (each round is one term; the kill cost no more than MAX_ROUNDS of them).
        assert 1 <= rounds <= MAX_ROUNDS, (
            f"{rounds} election rounds (terms {old_status.term} -> {new_status.term}) "
            f"before writes resumed; at most {MAX_ROUNDS} expected"
        )
        # the concurrent workload resumed too (its writes invoked before the
        # kill are retried under the same session), and nothing was refused
        assert not history.refused, history.refused
        # the killed node, restarted, rejoins as a follower
        cluster.start(old_leader)
        status = cluster.wait_caught_up(old_leader)
        assert status.role == admin_pb2.ROLE_FOLLOWER


def test_sigterm_of_the_leader_hands_over_without_failing_a_write(tmp_path: Path) -> None:
    with ProcessCluster(tmp_path) as cluster:
        old_leader = cluster.wait_for_leader()

        async def scenario() -> tuple[History, int | None]:
            stop = asyncio.Event()
            history = History()
            # attempt_timeout None: an attempt may use the whole 5 s deadline
            load = asyncio.create_task(
                run_workload(
                    cluster.endpoints(), stop, workers=8, history=history, attempt_timeout=None
                )
            )
            await wait_until_async(
                lambda: len(history.acks) >= 8, RESUME_GUARD_SECONDS, "the workload's writes"
            )
            code = await asyncio.to_thread(cluster.stop, old_leader)  # SIGTERM, reaped
            stopped = time.monotonic()
            # and under the new leader: writes invoked after the old one exited
            await wait_until_async(
                lambda: sum(invoked > stopped for invoked, _, _ in history.acks) >= 8,
                RESUME_GUARD_SECONDS,
                "writes under the new leader",
            )
            stop.set()
            await load
            return history, code

        history, code = asyncio.run(scenario())
        assert code == 0, f"the stopped leader exited with {code}"
        log.info("sigterm handover", outcomes=dict(history.outcomes))
        failed = {k: v for k, v in history.outcomes.items() if not k.endswith(":ok")}
        assert not failed, f"operations failed during the handover: {failed}"
        assert not history.refused
        new_leader = cluster.wait_for_leader()
        assert new_leader != old_leader
        # handed over, not elected after a timeout: the log says so
        assert "leadership_handed_over" in cluster.node_log(old_leader)


@pytest.mark.parametrize("writes", [200])
def test_pipelined_writes_of_one_client_are_all_applied_once(tmp_path: Path, writes: int) -> None:
    """One AsyncClient, then one sync Client shared by threads, with many
    writes in flight under one client id: none is refused (first_unacked
    lets the servers keep every reply they may still need), every key holds
    its value."""
    with ProcessCluster(tmp_path) as cluster:
        cluster.wait_for_leader()
        with cluster.client() as c, ThreadPoolExecutor(8) as pool:
            indexes = list(pool.map(lambda i: c.put(f"t{i}", b"%d" % i), range(writes)))
            assert c._sessions.in_flight == 0
        assert len(set(indexes)) == writes

        async def scenario() -> list[int]:
            async with AsyncClient(cluster.endpoints(), timeout=10.0) as c:
                indexes = await asyncio.gather(*(c.put(f"p{i}", b"%d" % i) for i in range(writes)))
                values = await asyncio.gather(*(c.get(f"p{i}") for i in range(writes)))
                assert values == [b"%d" % i for i in range(writes)]
                return list(indexes)

        indexes = asyncio.run(scenario())
        assert len(set(indexes)) == writes  # each applied at its own index, once

"""Leader failure under load, with three real node processes.

- SIGKILL of the leader: a new leader is elected and writes resume within
  three election timeouts (election timeout = election_ticks * tick_ms). A
  follower waits a random [1, 2) timeouts without hearing from the leader,
  then needs one PreVote and one vote round trip; three timeouts is the
  contract, with room for the client's retry and a busy machine.
  One thing the contract cannot cover: a split vote. When both followers
  time out within a few milliseconds of each other (the timeout takes one of
  only election_ticks values, so a few percent of elections), both pre-votes
  succeed, both candidates vote for themselves, and a second round follows
  after another random [1, 2) timeouts. The test counts the rounds (the new
  leader's term minus the old one) and allows 2 timeouts per extra round.
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
from tests.server.history import History, run_workload
from tests.server.procs import ProcessCluster

log = structlog.get_logger("tests.failover")


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
        timeout = cluster.election_timeout
        old_status = cluster.status(old_leader)
        assert old_status is not None

        async def scenario() -> tuple[History, float, float]:
            stop = asyncio.Event()
            history = History()
            load = asyncio.create_task(
                run_workload(cluster.endpoints(), stop, workers=8, history=history)
            )
            await asyncio.sleep(1.0)  # the workload is running
            assert history.acks, "no write was acknowledged before the kill"
            killed = time.monotonic()
            await asyncio.to_thread(cluster.kill, old_leader)  # SIGKILL, reaped
            acked = await _probe_until_a_write_succeeds(
                cluster.endpoints(), killed, killed + 10 * timeout
            )
            await asyncio.sleep(0.5)  # the workload goes on under the new leader
            stop.set()
            await load
            return history, killed, acked

        history, killed, acked = asyncio.run(scenario())
        gap = acked - killed
        new_leader = cluster.wait_for_leader()
        new_status = cluster.status(new_leader)
        assert new_status is not None
        rounds = new_status.term - old_status.term
        allowed = 3 + 2 * max(0, rounds - 1)
        log.info(
            "failover measured",
            gap_seconds=round(gap, 3),
            election_timeouts=round(gap / timeout, 2),
            election_rounds=rounds,
            outcomes=dict(history.outcomes),
        )
        assert new_leader != old_leader
        assert rounds >= 1
        assert gap < allowed * timeout, (
            f"writes resumed {gap:.3f}s after the kill: {gap / timeout:.2f} election timeouts "
            f"after {rounds} election round(s) (contract: < {allowed} x {timeout:.3f}s)"
        )
        # the concurrent workload resumed too (its writes invoked before the
        # kill are retried under the same session), and nothing was refused
        assert any(ack > killed for _, ack, _ in history.acks)
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
            await asyncio.sleep(1.0)
            code = await asyncio.to_thread(cluster.stop, old_leader)  # SIGTERM
            await asyncio.sleep(1.0)
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

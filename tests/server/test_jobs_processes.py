"""A leader's background job on three real node processes
(tests/server/apps/ticker.py: a tick every 100 ms, recording the term and
node it ran in). The leader is SIGKILLed, then paused (SIGSTOP: to the others
it is cut off, and when it resumes it still believes it leads), then asked
to hand leadership over. After each, ticks continue from the new leader
within a few election timeouts, and in the end every node holds the same
ticks in which no term ever goes back: no tick a deposed leader proposed
was applied after its successor's first, not even one sent from a task the
job does not wait for (so that cancelling the job does not stop it)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from tests.httpcalls import http
from tests.server.apps.stubborn import RUNNING
from tests.server.procs import ProcessCluster
from tests.web.conftest import wait_http_ready

TICKER_APP = "tests.server.apps.ticker:app"
HANDOVER_BOUND = 20  # election timeouts a handover may take here (a loaded CI machine)


def read_ticks(cluster: ProcessCluster, via: list[str], what: str = "ticks") -> list[list[Any]]:
    for node_id in via:
        try:
            reply = http(cluster.http[node_id], "GET", "/app/ticks", timeout=3)
        except OSError:
            continue
        if reply.status == 200:
            ticks: list[list[Any]] = reply.json()[what]
            return ticks
    return []


def wait_for_tick_from_other(
    cluster: ProcessCluster, old: str, via: list[str], since: int
) -> tuple[str, float]:
    """Wait until a node other than ``old`` has ticked after position
    ``since``; returns it and the seconds it took."""
    started = time.monotonic()
    deadline = started + HANDOVER_BOUND * cluster.election_timeout + 10
    while time.monotonic() < deadline:
        for _term, node, _ in read_ticks(cluster, via)[since:]:
            if node != old:
                return str(node), time.monotonic() - started
        time.sleep(0.02)
    cluster.dump_logs()
    raise AssertionError(f"no node but {old} ticked within {deadline - started:.1f}s")


def check_ticks(ticks: list[list[Any]]) -> None:
    terms = [term for term, _, _ in ticks]
    assert terms == sorted(terms), f"a tick of an old term came after a newer one: {terms}"
    for position, (_, _, seen) in enumerate(ticks):
        assert seen == position, f"tick {position} saw only {seen} ticks before it"
    for term in set(terms):
        assert len({node for t, node, _ in ticks if t == term}) == 1, f"two nodes in term {term}"


def test_ticks_follow_the_leader_through_a_kill_a_pause_and_a_transfer(tmp_path: Path) -> None:
    with ProcessCluster(tmp_path, http=True, extra_args=["--app", TICKER_APP]) as cluster:
        cluster.wait_for_leader()
        wait_http_ready(cluster)
        gaps: dict[str, float] = {}

        # 1. kill -9 the leader; restart it (it catches up as a follower).
        leader = cluster.wait_for_leader()
        others = [i for i in cluster.ids if i != leader]
        cluster.wait_until(lambda: len(read_ticks(cluster, others)) >= 5, what="first ticks")
        since = len(read_ticks(cluster, others))
        cluster.kill(leader)
        _new, gaps["kill"] = wait_for_tick_from_other(cluster, leader, others, since)
        cluster.start(leader)
        cluster.wait_serving([leader])

        # 2. Pause the leader: cut off, and when it resumes it believes it
        # still leads, and its job goes on ticking until it hears otherwise.
        leader = cluster.wait_for_leader()
        others = [i for i in cluster.ids if i != leader]
        pid = cluster.procs[leader].pid
        since = len(read_ticks(cluster, others))
        os.kill(pid, signal.SIGSTOP)
        try:
            _, gaps["pause"] = wait_for_tick_from_other(cluster, leader, others, since)
        finally:
            os.kill(pid, signal.SIGCONT)
        time.sleep(10 * 0.1)  # the old leader's job resumes, then learns it was deposed

        # 3. Leadership handed over on request.
        leader = cluster.wait_for_leader()
        others = [i for i in cluster.ids if i != leader]
        since = len(read_ticks(cluster, others))
        with cluster.client() as client:
            client.transfer_leadership(others[0])
        _, gaps["transfer"] = wait_for_tick_from_other(cluster, leader, cluster.ids, since)
        time.sleep(0.5)

        # Every node holds the same ticks, and they obey the rules.
        final = read_ticks(cluster, [cluster.wait_for_leader()])
        for node_id in cluster.ids:
            cluster.wait_until(
                lambda node_id=node_id: read_ticks(cluster, [node_id])[: len(final)] == final,
                what=f"{node_id} holding every tick",
            )
        check_ticks(final)
        echoes = [term for term, _ in read_ticks(cluster, [cluster.wait_for_leader()], "echoes")]
        assert echoes == sorted(echoes), f"a deposed leader's echo landed late: {echoes}"
        assert len({term for term, _, _ in final}) >= 4
        timeouts = {k: round(v / cluster.election_timeout, 1) for k, v in gaps.items()}
        print(f"ticks from the new leader after (election timeouts): {timeouts}")
        assert all(t <= HANDOVER_BOUND for t in timeouts.values()), timeouts

        # The leader's status and metrics name the job and its runs.
        leader = cluster.wait_for_leader()
        status = http(cluster.http[leader], "GET", "/v1/status").json()
        job = next(j for j in status["jobs"] if j["name"] == "ticking")
        assert job["running_here"] and job["node"] == leader and job["runs"] > 0
        metrics = http(cluster.http[leader], "GET", "/metrics").body.decode()
        assert 'ramraft_job_running{job_name="ticking",on="leader"} 1.0' in metrics
        assert 'ramraft_job_runs_total{job_name="ticking"}' in metrics
        follower = next(i for i in cluster.ids if i != leader)
        metrics = http(cluster.http[follower], "GET", "/metrics").body.decode()
        assert 'ramraft_job_running{job_name="ticking",on="leader"} 0.0' in metrics


def test_a_node_whose_job_ignores_its_cancellation_still_stops(tmp_path: Path) -> None:
    """SIGTERM to a node whose leader job catches asyncio.CancelledError and
    goes on: the node names the job and exits 0 (it waited for ever for
    it, until SIGKILL)."""
    with ProcessCluster(
        tmp_path, nodes=1, extra_args=["--app", "tests.server.apps.stubborn:app"]
    ) as cluster:
        cluster.wait_for_leader()
        deadline = time.monotonic() + 30
        while RUNNING not in cluster.node_log("n1"):
            assert time.monotonic() < deadline, cluster.node_log("n1")
            time.sleep(0.05)
        returncode = cluster.stop("n1", timeout=30)  # then SIGKILL: -9
        log = cluster.node_log("n1")
        assert returncode == 0, log
        assert "job_ignores_cancellation" in log and "job-stubborn" in log, log

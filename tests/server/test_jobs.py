"""Background jobs (server/jobs.py) on an in-process cluster, on virtual
time: where they run, when they start and stop, what their commands may do.
The same rules on real processes: tests/server/test_jobs_processes.py."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import pytest
import structlog

from ramraft import Application, JobContext, background
from ramraft.server.inprocess import ClusterHarness, Faults
from ramraft.server.jobs import CANCEL_GRACE, EVERY_NODE, JobStopped
from ramraft.server.machines.embed import encode_call
from ramraft.server.request_errors import NotLeader
from ramraft.server.web.metrics import NodeMetrics
from tests.server.apps.ticker import TICK_EVERY, Ticker, ticking

Make = Callable[..., ClusterHarness]


def ticker_app(*jobs: Any) -> Callable[[], Application]:
    return lambda: Application(Ticker(), jobs=list(jobs) or [ticking])


def ticks(cluster: ClusterHarness, node_id: str | None = None) -> list[list[Any]]:
    return list(cluster.model(node_id).ticks)


def check_ticks(ticks: list[list[Any]]) -> None:
    """Every tick saw every tick before it (its job started only once its
    leader had applied all committed entries), and terms never go back (no
    tick of a deposed leader lands after its successor's first)."""
    for position, (_, _, seen) in enumerate(ticks):
        assert seen == position, (position, ticks[max(0, position - 3) : position + 1])
    terms = [term for term, _, _ in ticks]
    assert terms == sorted(terms), terms
    for term in set(terms):
        assert len({node for t, node, _ in ticks if t == term}) == 1, f"two nodes in term {term}"


def test_a_leader_job_runs_on_the_leader_only(ramraft_cluster: Make) -> None:
    cluster = ramraft_cluster(ticker_app())
    leader = cluster.leader()
    cluster.sleep(10 * TICK_EVERY)
    cluster.wait_converged()
    assert {node for _, node, _ in ticks(cluster)} == {leader}
    assert len(ticks(cluster)) >= 8
    check_ticks(ticks(cluster))
    for node_id in cluster.ids:
        (report,) = cluster.node(node_id).jobs.report()
        assert report.running_here == (node_id == leader)
        assert (report.runs > 0) == (node_id == leader)


def test_ticks_move_with_leadership_and_never_go_back_a_term(ramraft_cluster: Make) -> None:
    cluster = ramraft_cluster(ticker_app())
    for step in range(6):
        cluster.sleep(5 * TICK_EVERY)
        leader = cluster.leader()
        if step % 3 == 0:
            cluster.kill(leader)
            cluster.sleep(5 * TICK_EVERY)
            cluster.restart(leader)
        elif step % 3 == 1:
            cluster.partition(leader)
            cluster.sleep(10 * TICK_EVERY)
            cluster.heal()
        else:
            cluster.transfer_leadership(next(i for i in cluster.ids if i != leader))
    cluster.sleep(5 * TICK_EVERY)
    cluster.wait_converged()
    everywhere = [ticks(cluster, i) for i in cluster.ids]
    assert everywhere[0] == everywhere[1] == everywhere[2]
    check_ticks(everywhere[0])
    assert len({term for term, _, _ in everywhere[0]}) >= 4  # it moved


def test_a_new_leaders_job_sees_what_its_predecessor_committed_last(ramraft_cluster: Make) -> None:
    """The leader commits a tick and dies before telling anyone: the others
    hold the entry but do not know that it committed. The new leader's job
    must not start before it applied that entry (its first entry of its
    term comes after it, and commits it). Messages take a few milliseconds,
    as on a network: the new leader's job would otherwise start only after
    the acknowledgements of its first entry came back anyway."""
    cluster = ramraft_cluster(ticker_app(), faults=Faults(min_delay=0.002, max_delay=0.008))
    cluster.sleep(5 * TICK_EVERY)
    leader = cluster.leader()
    runtime = cluster.node(leader).runtime
    before = len(ticks(cluster))
    known = runtime.status().commit_index
    # From now on the leader's news of a higher commit index is lost.
    cluster.cluster.network.drop_if = lambda m: m.src == leader and m.commit > known
    cluster.wait_until(lambda: len(cluster.model(leader).ticks) > before)
    cluster.kill(leader)
    cluster.cluster.network.drop_if = None
    cluster.sleep(10 * TICK_EVERY)
    new = cluster.leader()
    assert new != leader
    cluster.wait_converged()
    check_ticks(ticks(cluster, new))
    assert len(ticks(cluster, new)) > before + 1


async def _detached_tick(ticker: Ticker, job: JobContext) -> None:
    """A job that does not wait for its command: the command outlives the
    job's cancellation (as a task a job spawns may)."""
    asyncio.get_running_loop().create_task(_tick(ticker, job))


async def _tick(ticker: Ticker, job: JobContext) -> None:
    try:
        await ticker.tick(job.term, job.node_id, len(ticker.ticks))
    except Exception as e:
        FAILED.append(f"{type(e).__name__}: {e}")


FAILED: list[str] = []


def test_a_deposed_leaders_command_never_lands_after_its_successors(ramraft_cluster: Make) -> None:
    """The old leader, cut off, keeps proposing ticks until it notices; a
    new leader ticks meanwhile. When the old one is back, its commands must
    fail: forwarded to the new leader (the session retry that other writes
    get), they would land after the new leader's ticks."""
    FAILED.clear()
    job = background(every=TICK_EVERY, name="detached")(_detached_tick)
    cluster = ramraft_cluster(ticker_app(job))
    cluster.sleep(5 * TICK_EVERY)
    old = cluster.leader()
    cluster.partition(old)
    cluster.sleep(10 * TICK_EVERY)  # a new leader is elected and ticks
    new = cluster.leader()
    assert new != old
    cluster.heal()
    cluster.sleep(20 * TICK_EVERY)
    cluster.wait_converged()
    terms = [term for term, _, _ in ticks(cluster)]
    assert terms == sorted(terms), terms
    assert any("no longer leads" in f or "leadership changed" in f for f in FAILED), FAILED


def test_a_job_stops_in_the_turn_its_node_steps_down(ramraft_cluster: Make) -> None:
    started: list[tuple[str, int, float]] = []

    async def record(ticker: Ticker, job: JobContext) -> None:
        started.append((job.node_id, job.term, asyncio.get_running_loop().time()))
        await ticker.tick(job.term, job.node_id, len(ticker.ticks))

    cluster = ramraft_cluster(ticker_app(background(every=TICK_EVERY, name="record")(record)))
    old = cluster.leader()
    stepped_down: list[float] = []
    runtime = cluster.node(old).runtime
    jobs = cluster.node(old).jobs

    running_then: list[bool] = []

    def on_role(event: str, fields: dict[str, Any]) -> None:
        if event == "role" and not stepped_down and fields["role"].value != "leader":
            stepped_down.append(asyncio.get_running_loop().time())
            # The job runner's listener ran before this one, in this turn.
            running_then.extend(r.running_here for r in jobs.report())

    runtime.listeners.append(on_role)
    cluster.partition(old)
    cluster.sleep(10 * TICK_EVERY)
    assert stepped_down, "the cut-off leader stepped down (CheckQuorum)"
    assert running_then == [False]
    assert not [s for s in started if s[0] == old and s[2] > stepped_down[0]]


def test_a_failing_job_is_retried_with_backoff_and_the_node_serves_on(
    ramraft_cluster: Make,
) -> None:
    attempts: list[float] = []

    async def flaky(ticker: Ticker) -> None:
        attempts.append(asyncio.get_running_loop().time())
        raise RuntimeError("the mail server is down")

    cluster = ramraft_cluster(ticker_app(background(every=0.1, name="flaky")(flaky)))
    cluster.sleep(3.5)
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(attempts)]
    assert gaps[:5] == [0.1, 0.2, 0.4, 0.8, 1.6], gaps
    (report,) = cluster.node(cluster.leader()).jobs.report()
    assert report.failures == len(attempts) and report.state == "retrying"
    assert report.last_error == "RuntimeError: the mail server is down"
    # /metrics counts the failures where the job runs (server/web/metrics.py).
    node = cluster.node(cluster.leader())
    scrape = NodeMetrics(node.runtime, lambda: 0, process=False, jobs=node.jobs.report)
    text = scrape.exposition().decode()
    assert f'ramraft_job_failures_total{{job_name="flaky"}} {float(len(attempts))}' in text
    assert 'ramraft_job_running{job_name="flaky",on="leader"} 1.0' in text
    assert cluster.call(None, "tick", 0, "test", 0) == 1  # commands still go through


def test_a_failing_jobs_log_line_says_where_it_raised(ramraft_cluster: Make) -> None:
    """background_job_failed named the job and the error but not the line
    that raised it: a developer had nothing to go on but the message."""

    async def mailer(ticker: Ticker) -> None:
        raise RuntimeError("the mail server is down")

    with structlog.testing.capture_logs() as logs:
        cluster = ramraft_cluster(ticker_app(background(every=0.1)(mailer)))
        cluster.sleep(0.5)
    failed = [e for e in logs if e["event"] == "background_job_failed"]
    assert failed and failed[0]["error"] == "RuntimeError: the mail server is down"
    assert failed[0]["where"].endswith(", in mailer")
    assert f"{__file__}, line " in failed[0]["where"]


def test_jobs_on_every_node_and_one_off_runs(ramraft_cluster: Make) -> None:
    seen: dict[str, int] = {}

    async def cache(ticker: Ticker, job: JobContext) -> None:
        seen[job.node_id] = len(ticker.ticks)

    async def once(ticker: Ticker, job: JobContext) -> str:
        return f"{job.node_id} in term {job.term}"

    every = background(every=0.5, on=EVERY_NODE, name="cache")(cache)
    cluster = ramraft_cluster(ticker_app(every))
    cluster.sleep(1)
    assert sorted(seen) == cluster.ids
    leader = cluster.leader()
    term = cluster.node(leader).runtime.serving_term()
    assert cluster.run_job(once) == f"{leader} in term {term}"
    follower = next(i for i in cluster.ids if i != leader)

    async def on_follower() -> Any:
        return await cluster.node(follower).jobs.run_once(once)

    with pytest.raises(NotLeader):
        cluster.run(on_follower())
    assert cluster.run_job(background(on=EVERY_NODE)(once), follower) == f"{follower} in term 0"


def test_a_one_off_run_fails_when_its_node_steps_down(ramraft_cluster: Make) -> None:
    async def forever(ticker: Ticker) -> None:
        await asyncio.sleep(3600)

    cluster = ramraft_cluster(ticker_app())
    leader = cluster.leader()

    async def start() -> Any:
        return cluster.node(leader).jobs.run_once(forever)

    run = cluster.run(start())
    cluster.partition(leader)
    with pytest.raises(JobStopped, match="no longer leads"):
        cluster.run(run)  # type: ignore[arg-type]


def test_a_removed_leader_stops_its_jobs_and_another_takes_over(ramraft_cluster: Make) -> None:
    cluster = ramraft_cluster(ticker_app())
    old = cluster.leader()
    membership = cluster.node(old).membership
    assert membership is not None
    cluster.run(membership.remove_member(old))
    cluster.sleep(10 * TICK_EVERY)
    new = cluster.leader()
    assert new != old
    assert not cluster.node(old).jobs.report()[0].running_here
    count = len(ticks(cluster, new))
    cluster.sleep(5 * TICK_EVERY)
    assert len(ticks(cluster, new)) > count
    check_ticks(ticks(cluster, new))


async def _look(ticker: Ticker) -> None:
    """A job of every node that only reads."""


def test_a_halted_node_runs_no_job(ramraft_cluster: Make) -> None:
    cluster = ramraft_cluster(ticker_app(ticking, background(every=0.1, on=EVERY_NODE)(_look)))
    leader = cluster.leader()
    cluster.sleep(3 * TICK_EVERY)
    # An entry no node's code can apply (as newer code would write): every
    # node halts at it, the leader steps down, and no job may run.
    runtime = cluster.node(leader).runtime
    cluster.run(runtime.call(lambda core: core.propose(encode_call("from_the_future"))))
    cluster.wait_until(lambda: all(cluster.node(i).runtime.halted for i in cluster.ids))
    cluster.sleep(3 * TICK_EVERY)
    for node_id in cluster.ids:
        for report in cluster.node(node_id).jobs.report():
            assert not report.running_here and report.state == "stopped", report


def test_a_stopping_node_stops_its_jobs_first(ramraft_cluster: Make) -> None:
    cluster = ramraft_cluster(ticker_app())
    old = cluster.leader()
    jobs = cluster.node(old).jobs
    cluster.stop(old)
    assert jobs.report()[0].state == "stopped"
    cluster.sleep(5 * TICK_EVERY)
    new = cluster.leader()
    assert new != old and cluster.node(new).jobs.report()[0].running_here


def test_a_job_that_ignores_its_cancellation_is_named_and_does_not_hold_the_stop(
    ramraft_cluster: Make,
) -> None:
    """A job that catches asyncio.CancelledError and goes on cannot be
    stopped. The node names it once it outlives its cancellation by
    CANCEL_GRACE (deposed: it runs on, its commands refused), and a stopping
    node waits that long for it, not for ever."""

    async def stubborn(ticker: Ticker, job: JobContext) -> None:
        while True:
            try:
                await asyncio.sleep(TICK_EVERY)
            except asyncio.CancelledError:
                continue  # the bug

    cluster = ramraft_cluster(ticker_app(background(every=TICK_EVERY, name="stubborn")(stubborn)))
    old = cluster.leader()
    cluster.sleep(3 * TICK_EVERY)
    with structlog.testing.capture_logs() as logs:
        cluster.partition(old)
        cluster.sleep(10 * TICK_EVERY + CANCEL_GRACE)
        cluster.heal()
        cluster.sleep(5 * TICK_EVERY)
        new = cluster.leader()
        cluster.stop(new)
    named = [(e["task"], e["reason"]) for e in logs if e["event"] == "job_ignores_cancellation"]
    assert ("job-stubborn", "this node no longer leads") in named, named
    assert ("job-stubborn", "this node is shutting down") in named, named
    assert cluster.node(new).jobs.report()[0].state == "stopped"

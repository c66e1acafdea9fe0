"""The in-process cluster (server/inprocess/) behind the ramraft_cluster
fixture: its helpers do what they say, faults behave as on a network, and
on virtual time a run is the same for the same seed."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from ramraft import ReplicatedModel, command
from ramraft.server.inprocess import ClusterHarness, Faults
from ramraft.server.inprocess.clock import Deadlock, VirtualTimeLoop
from ramraft.server.request_errors import CannotSnapshot


class Log(ReplicatedModel):
    def __init__(self) -> None:
        self.items: list[int] = []

    @command
    def add(self, item: int) -> int:
        self.items.append(item)
        self.publish("log", item)
        return len(self.items)


def test_commands_reach_every_node_and_a_restart_rebuilds_the_model(ramraft_cluster: Any) -> None:
    cluster: ClusterHarness = ramraft_cluster(Log)
    follower = next(i for i in cluster.ids if i != cluster.leader())
    assert cluster.run(cluster.model(follower).add(1)) == 1  # forwarded to the leader
    assert cluster.call(None, "add", 2) == 2
    index = cluster.wait_converged()
    assert {cluster.node(i).runtime.machine.applied_index for i in cluster.ids} == {index}
    assert [m.items for m in cluster.models()] == [[1, 2]] * 3
    before = cluster.model(follower)
    cluster.kill(follower)
    assert cluster.ids == ["n1", "n2", "n3"] and len(cluster.models()) == 2
    cluster.call(None, "add", 3)
    cluster.restart(follower)
    cluster.wait_converged()
    assert cluster.model(follower) is not before
    assert cluster.model(follower).items == [1, 2, 3]


def test_a_partitioned_node_neither_commits_nor_serves_until_healed(ramraft_cluster: Any) -> None:
    cluster: ClusterHarness = ramraft_cluster(Log)
    leader = cluster.leader()
    cluster.partition(leader)
    with pytest.raises(TimeoutError):  # its leader cannot reach a majority
        cluster.run(cluster.model(leader).add(1), timeout=2)
    new = cluster.leader()  # the others elect one of them
    assert new != leader
    cluster.call(new, "add", 2)
    assert cluster.model(leader).items == []
    cluster.heal()
    cluster.wait_converged()
    assert cluster.model(leader).items == [2]  # the cut-off leader's entry was never committed


def test_leadership_moves_where_asked(ramraft_cluster: Any) -> None:
    cluster: ClusterHarness = ramraft_cluster(Log)
    for target in ("n2", "n3", "n1"):
        assert cluster.transfer_leadership(target) == target
        assert cluster.leader() == target


def test_a_node_far_behind_catches_up_by_snapshot(ramraft_cluster: Any) -> None:
    options = {"snapshot_entries": 20, "retain_entries": 5}
    cluster: ClusterHarness = ramraft_cluster(Log, options=options)
    behind = next(i for i in cluster.ids if i != cluster.leader())
    cluster.kill(behind)
    for n in range(60):
        cluster.call(None, "add", n)
    cluster.restart(behind)
    cluster.wait_converged()
    assert cluster.model(behind).items == list(range(60))
    runtime = cluster.node(behind).runtime
    assert runtime.core is not None and runtime.core.latest_snapshot.index > 20
    # Its open pages were told to reload: the events before it are unknown.
    page = cluster.node(behind).events.subscribe(None, after="1")
    (frame,) = cluster.run(page.take(0))
    assert b"event: reset" in frame


def test_used_from_async_code_it_says_how_to_use_it(ramraft_cluster: Any) -> None:
    """An `async def` test (or asyncio.run) that drives the harness failed
    with asyncio's "Cannot run the event loop while another loop is
    running", which does not say that the harness is for synchronous tests."""
    cluster: ClusterHarness = ramraft_cluster(Log)

    async def awaited() -> Any:
        return cluster.run(cluster.model().add(1))

    async def started() -> Any:
        return ramraft_cluster(Log)

    for misuse in (awaited, started):
        with pytest.raises(RuntimeError, match=r"plain `def test_\.\.\.` \(not `async def`"):
            asyncio.run(misuse())
    assert cluster.call(None, "add", 2) == 1  # the cluster itself is fine
    with pytest.raises(KeyError, match=re.escape("its nodes are ['n1', 'n2', 'n3']")):
        cluster.model("n9")


class Hoard(ReplicatedModel):
    """A developer's slip: a command keeps an object that is not plain data."""

    def __init__(self) -> None:
        self.things: dict[str, Any] = {}

    @command
    def keep(self, name: str) -> str:
        self.things[name] = object() if name == "odd" else name
        return name


def test_a_state_that_cannot_be_snapshotted_does_not_stop_the_cluster(
    ramraft_cluster: Any,
) -> None:
    """Every node meets the unsnapshottable state at the same index: the
    raft loop crashed on each ("raft_loop_crashed", "check the disk"), and
    the whole cluster stopped serving. Now each node serves on, says why,
    and a snapshot asked for is refused with the reason."""
    cluster: ClusterHarness = ramraft_cluster(Hoard, options={"snapshot_entries": 20})
    cluster.call(None, "keep", "odd")
    for n in range(40):
        cluster.call(None, "keep", f"k{n}")
    cluster.wait_converged()
    for node_id in cluster.ids:
        runtime = cluster.node(node_id).runtime
        assert runtime.failed is None
        assert "Hoard.things is not plain data" in runtime.snapshotting.refused
    assert cluster.call(None, "keep", "more") == "more"
    with pytest.raises(CannotSnapshot, match=r"Hoard\.things is not plain data"):
        cluster.run(cluster.node(cluster.leader()).runtime.snapshotting.snapshot_now())


def trace(seed: int, virtual: bool = True) -> list[Any]:
    """What a run did: role changes with their (virtual) times, then every
    node's log."""
    with ClusterHarness(
        Log, seed=seed, virtual=virtual, faults=Faults(drop=0.05, max_delay=0.02)
    ) as cluster:
        seen: list[Any] = []
        for node_id in cluster.ids:

            def listen(event: str, fields: dict[str, Any], node_id: str = node_id) -> None:
                if event == "role":
                    seen.append((round(cluster.loop.time(), 6), node_id, fields["term"]))

            cluster.node(node_id).runtime.listeners.append(listen)
        for n in range(12):
            cluster.call(None, "add", n)
            if n == 5:
                cluster.kill(cluster.leader())
            if n == 8:
                cluster.restart(next(i for i in cluster.ids if not cluster.node(i).alive))
        cluster.wait_converged()
        return [seen, [m.items for m in cluster.models()]]


def test_the_same_seed_runs_the_same_way() -> None:
    first = trace(11)
    assert first == trace(11)
    assert first[1] == [list(range(12))] * 3
    assert trace(12) != first  # another seed: other timeouts, other drops


def test_real_time_runs_the_same_code() -> None:
    _, logs = trace(3, virtual=False)
    assert logs == [list(range(12))] * 3


def test_a_wait_for_what_can_never_happen_fails_at_once() -> None:
    loop = VirtualTimeLoop()
    try:
        with pytest.raises(Deadlock, match="nothing left to run"):
            loop.run_until_complete(loop.create_future())
    finally:
        loop.close()


def test_bad_faults_and_options_are_refused() -> None:
    with pytest.raises(ValueError, match="probability"):
        Faults(drop=1.5)
    with pytest.raises(ValueError, match="min_delay"):
        Faults(min_delay=0.2, max_delay=0.1)
    with pytest.raises(ValueError, match="unknown node options"):
        ClusterHarness(Log, options={"snapshot_entires": 5})


SHARED = Log()


def test_a_wrong_factory_is_refused_saying_what_to_pass() -> None:
    """What a new developer plausibly passes instead of a factory gets a
    message saying what to pass, and a cluster whose start failed leaves no
    node running ("Task was destroyed but it is pending!")."""
    for factory, words in [
        ("examples.notes:app", "not the --app string 'examples.notes:app'"),
        (Log(), "not a Log instance"),
        (42, "got int 42"),
    ]:
        with pytest.raises(TypeError, match=re.escape(words)):
            ClusterHarness(factory)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="factory returned dict; it must return"):
        ClusterHarness(dict)  # type: ignore[arg-type]
    # A module-level model (as a single-process --app may use): the second
    # node would share the first one's state, which the machine refused with
    # "already attached to a ModelMachine", naming neither cause nor cure.
    loops = []

    def shared() -> Log:
        loops.append(asyncio.get_running_loop())
        return SHARED

    with pytest.raises(ValueError, match="returned a model instance that a node already holds"):
        ClusterHarness(shared)
    assert loops[0].is_closed()  # n1, which had started, was stopped with its loop


def test_travel_moves_the_wall_clock_only(ramraft_cluster: Any) -> None:
    cluster: ClusterHarness = ramraft_cluster(Log)
    leader = cluster.leader()
    before, loop_time = cluster.now(), cluster.loop.time()
    cluster.travel(86400)
    assert cluster.now() == pytest.approx(before + 86400)
    assert cluster.loop.time() == loop_time
    cluster.sleep(0.5)
    assert cluster.leader() == leader  # no timer fired early: no election

    async def inside() -> float:
        import time

        return time.time()

    assert cluster.run(inside()) == pytest.approx(cluster.now())

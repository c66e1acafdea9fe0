"""A cluster of nodes in this process: the real runtime, state machines,
request path, steward, background jobs and event feed of every node, over a
:class:`~ramraft.server.inprocess.network.MemoryNetwork` and in-memory
storage (``open_memory_storage``). No ports, no files, no gRPC.

:class:`InProcessCluster` is the asynchronous core (run it on any loop);
:class:`ClusterHarness` drives one from synchronous test code on a loop of
its own, with virtual time by default (``ramraft.testing`` hands it out as
the ``ramraft_cluster`` fixture).

Kill and restart: a killed node's runtime stops where it is (its pending
requests fail, its jobs stop) and only what it had synced survives, in its
MemoryDisk; a restart builds a NEW model from the factory and replays the
node's snapshot and log into it, as a process restart does.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from ramraft.consensus import RaftNode, Role
from ramraft.server.config import NodeConfig
from ramraft.server.hosting import (
    Application,
    HostedApp,
    SessionPool,
    decode_result,
    encode_result,
)
from ramraft.server.inprocess.clock import (
    InlineExecutor,
    VirtualClock,
    VirtualTimeLoop,
    virtual_time,
)
from ramraft.server.inprocess.network import Endpoint, Faults, MemoryNetwork, MemoryTransport
from ramraft.server.jobs import Job, JobRunner, end_leftover_tasks
from ramraft.server.machines.embed import ReplicatedModel
from ramraft.server.machines.kv import KVMachine
from ramraft.server.runtime.loop import RaftRuntime
from ramraft.server.runtime.membership import MembershipChanges
from ramraft.server.runtime.node_api import InputLimits, NodeAPI
from ramraft.server.runtime.steward import Steward
from ramraft.server.storage import MemoryDisk, open_memory_storage
from ramraft.server.web.sse import EventFeed

log = structlog.get_logger("ramraft.inprocess")

T = TypeVar("T")
AppFactory = Callable[[], Application | ReplicatedModel]


@dataclass(frozen=True)
class Timing:
    """The cluster's clock settings: a 10 ms tick, elections after 100-200
    ms of silence, heartbeats every 20 ms (tighter than a real node's
    defaults: in one process, and usually on virtual time, nothing is slow)."""

    tick_ms: int = 10
    election_ticks: int = 10
    heartbeat_ticks: int = 2

    @property
    def election_timeout(self) -> float:
        return self.tick_ms * self.election_ticks / 1000


class InProcessNode:
    """One node: built by ``start()``, torn down by ``kill()``/``stop()``,
    built again (a new model, the same disk) by the next ``start()``."""

    def __init__(self, cluster: InProcessCluster, node_id: str) -> None:
        self.cluster = cluster
        self.id = node_id
        self.disk = MemoryDisk()
        self.alive = False
        self.hosted: HostedApp | None = None
        self.kv = KVMachine()
        self._runtime: RaftRuntime | None = None
        self._api: NodeAPI | None = None
        self.membership: MembershipChanges | None = None
        self.steward: Steward | None = None

    @property
    def runtime(self) -> RaftRuntime:
        if self._runtime is None:
            raise RuntimeError(f"{self.id} is not running")
        return self._runtime

    @property
    def api(self) -> NodeAPI:
        if self._api is None:
            raise RuntimeError(f"{self.id} is not running")
        return self._api

    @property
    def model(self) -> Any:
        """This node's copy of the model (a new object after a restart)."""
        if self.hosted is None:
            raise RuntimeError(f"{self.id} has not started")
        return self.hosted.app.model

    @property
    def jobs(self) -> JobRunner:
        assert self.hosted is not None and self.hosted.jobs is not None
        return self.hosted.jobs

    @property
    def events(self) -> EventFeed:
        assert self.hosted is not None and self.hosted.events is not None
        return self.hosted.events

    async def start(self) -> None:
        cluster = self.cluster
        made = cluster.factory()
        app = made if isinstance(made, Application) else Application(_checked_model(made))
        if getattr(app.model, "_ramraft_machine", None) is not None:
            raise ValueError(
                f"{_name(cluster.factory)}() returned a model instance that a node already "
                "holds: every node (and every restart) needs a model of its own, so the "
                "factory must create a new one on each call (not return a module-level one)"
            )
        self.kv = KVMachine()
        hosted, machine = HostedApp.build(app, self.kv)
        hosted.sessions = SessionPool(random.Random(cluster.rng.getrandbits(64)))
        log_store, snapshots = open_memory_storage(self.disk)
        runtime = RaftRuntime(
            cluster.node_config(self.id),
            machine,
            log_store,
            snapshots,
            rng=random.Random(cluster.rng.getrandbits(64)),
            disk=InlineExecutor() if cluster.virtual else None,
        )
        transport = MemoryTransport(cluster.network, self.id)
        transport.addresses = runtime.addresses
        runtime.transport = transport
        api = NodeAPI(
            runtime,
            encode_result,
            decode_result,
            InputLimits.of(runtime.config.limits),
            forward=cluster.network.forwarder(self.id),
        )
        membership = MembershipChanges(runtime)
        steward = Steward(runtime, membership.transfer_leadership)
        membership.admit = steward.admit
        transport.cluster_id = steward.cluster_id
        hosted.attach(api, self.id)
        self.hosted, self._runtime, self._api = hosted, runtime, api
        self.membership, self.steward = membership, steward
        cluster.network.endpoints[self.id] = Endpoint(runtime, steward)
        await runtime.start()
        assert hosted.events is not None and hosted.jobs is not None
        hosted.events.restart_at(runtime.machine.applied_index)
        steward.start()
        hosted.jobs.start()
        self.alive = True

    async def kill(self) -> None:
        """Crash: the node is gone at once; what it had not synced is lost
        (the MemoryDisk keeps only synced writes)."""
        self.cluster.network.endpoints.pop(self.id, None)
        await self._tear_down()

    async def stop(self) -> None:
        """A graceful stop: hand leadership over first if this node leads."""
        runtime = self.runtime
        if self.hosted is not None and self.hosted.jobs is not None:
            await self.hosted.jobs.close()
        if runtime.role is Role.LEADER and self.membership is not None:
            with contextlib.suppress(Exception):
                await self.membership.transfer_leadership(timeout=5 * self.cluster.timeout())
        self.cluster.network.endpoints.pop(self.id, None)
        await self._tear_down()

    async def _tear_down(self) -> None:
        self.alive = False
        runtime, self._runtime, self._api = self._runtime, None, None
        if self.hosted is not None and self.hosted.jobs is not None:
            await self.hosted.jobs.close()
        if self.steward is not None:
            await self.steward.close()
        if runtime is not None:
            runtime.stopping = True
            await runtime.close()


class InProcessCluster:
    """``nodes`` nodes of the application ``factory`` makes (a function
    returning an Application or a ReplicatedModel), in this process.
    ``options`` sets NodeConfig fields of every node (``snapshot_entries``,
    ``limits``...)."""

    def __init__(
        self,
        factory: AppFactory,
        *,
        nodes: int = 3,
        seed: int = 0,
        virtual: bool = False,
        timing: Timing = Timing(),
        faults: Faults | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        self.options = dict(options or {})
        unknown = sorted(set(self.options) - set(NodeConfig.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown node options {unknown}; see server/config.py NodeConfig")
        self.factory = _checked_factory(factory)
        self.seed = seed
        self.rng = random.Random(seed)
        self.virtual = virtual
        self.timing = timing
        self.network = MemoryNetwork(random.Random(self.rng.getrandbits(64)), faults or Faults())
        self.ids = [f"n{i + 1}" for i in range(nodes)]
        self.nodes = {node_id: InProcessNode(self, node_id) for node_id in self.ids}

    def node_config(self, node_id: str) -> NodeConfig:
        return NodeConfig(
            node_id=node_id,
            peers={i: f"memory:{i}" for i in self.ids},
            data_dir=f"memory:{node_id}",
            tick_ms=self.timing.tick_ms,
            election_ticks=self.timing.election_ticks,
            heartbeat_ticks=self.timing.heartbeat_ticks,
            cluster_id=f"inprocess-{self.seed}",
            **self.options,
        )

    def timeout(self) -> float:
        """Seconds the helpers wait by default: many election timeouts."""
        return max(5.0, 50 * self.timing.election_timeout)

    # ---- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        for node in self.nodes.values():
            await node.start()
        # n1 campaigns at once rather than after a random election timeout:
        # the cluster serves sooner (the others, knowing no leader, vote).
        ticks = 2 * self.timing.election_ticks

        def campaign(core: RaftNode) -> None:
            for _ in range(ticks):
                core.tick()

        self.nodes[self.ids[0]].runtime.schedule(campaign)
        await self.wait_for_leader()

    async def close(self) -> None:
        for node in self.nodes.values():
            if node.alive:
                await node.kill()

    def alive(self) -> list[str]:
        return [i for i in self.ids if self.nodes[i].alive]

    def reachable_from(self, node_id: str) -> list[str]:
        return [i for i in self.alive() if self.network.reachable(node_id, i)]

    # ---- looking ---------------------------------------------------------------------------

    def leader(self) -> str | None:
        """The node that leads now (the newest term among those that claim
        to), if any is alive."""
        leaders = [
            (self.nodes[i].runtime.core.term, i)  # type: ignore[union-attr]
            for i in self.alive()
            if self.nodes[i].runtime.role is Role.LEADER
        ]
        return max(leaders)[1] if leaders else None

    async def wait_until(self, predicate: Callable[[], bool], what: str, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        step = self.timing.tick_ms / 1000
        while not predicate():
            if loop.time() > deadline:
                raise TimeoutError(f"{what}: not within {timeout:g} s")
            await asyncio.sleep(step)

    async def wait_for_leader(self, timeout: float | None = None) -> str:
        """A leader that has applied an entry of its term (it serves)."""
        found: list[str] = []

        def serving() -> bool:
            leader = self.leader()
            if leader is None or not self.nodes[leader].runtime.serving_term():
                return False
            found[:] = [leader]
            return True

        await self.wait_until(serving, "a serving leader", timeout or self.timeout())
        return found[0]

    async def wait_converged(self, timeout: float | None = None) -> int:
        """Wait until every live node that can reach the leader has applied
        the same index, the leader's commit index; returns it."""
        leader = await self.wait_for_leader(timeout)
        target = self.nodes[leader].runtime.status().commit_index
        group = self.reachable_from(leader)

        def converged() -> bool:
            indexes = {self.nodes[i].runtime.machine.applied_index for i in group}
            return len(indexes) == 1 and indexes.pop() >= target

        await self.wait_until(
            converged, f"nodes {group} applying index {target}", timeout or self.timeout()
        )
        return self.nodes[leader].runtime.machine.applied_index

    # ---- faults ----------------------------------------------------------------------------

    async def kill(self, node_id: str) -> None:
        await self.nodes[node_id].kill()

    async def stop(self, node_id: str) -> None:
        await self.nodes[node_id].stop()

    async def restart(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.alive:
            await node.kill()
        await node.start()

    def partition(self, node_id: str) -> None:
        """Cut ``node_id`` off from every other node (both ways)."""
        self.network.isolate(node_id, self.ids)

    def heal(self) -> None:
        self.network.heal()

    async def transfer_leadership(self, to: str = "", timeout: float | None = None) -> str:
        leader = await self.wait_for_leader(timeout)
        membership = self.nodes[leader].membership
        assert membership is not None
        new = await membership.transfer_leadership(to, timeout or self.timeout())
        if to and new != to:
            raise TimeoutError(f"leadership went to {new or 'nobody'}, not {to}")
        return await self.wait_for_leader(timeout)


class ClusterHarness:
    """An InProcessCluster driven from synchronous code (a test), on a loop
    of its own: with virtual time (``virtual=True``, the default) it runs
    deterministically for a given ``seed``, with no threads, and as fast as
    the CPU goes.

        cluster = ClusterHarness(notes.app, seed=7)
        note = cluster.run(cluster.model().add("hello", "", "ana", cluster.now()))
        cluster.wait_converged()
        assert all(board.notes[note]["title"] == "hello" for board in cluster.models())
    """

    def __init__(
        self,
        factory: AppFactory,
        *,
        nodes: int = 3,
        seed: int = 0,
        virtual: bool = True,
        timing: Timing = Timing(),
        faults: Faults | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.clock = VirtualClock() if virtual else None
        self.loop: asyncio.AbstractEventLoop = (
            VirtualTimeLoop(self.clock) if self.clock is not None else asyncio.new_event_loop()
        )
        self.cluster = InProcessCluster(
            factory,
            nodes=nodes,
            seed=seed,
            virtual=virtual,
            timing=timing,
            faults=faults,
            options=options,
        )
        self.seed = seed
        self._closed = False
        try:
            self.run(self.cluster.start())
        except BaseException:
            self.close()  # stop the nodes that did start; leave no task pending
            raise

    # ---- running things --------------------------------------------------------------------

    @contextlib.contextmanager
    def _clock(self) -> Iterator[None]:
        if self.clock is None:
            yield
        else:
            with virtual_time(self.clock):
                yield

    def run(self, awaitable: Awaitable[T], timeout: float | None = None) -> T:
        """Run ``awaitable`` (a command call, any coroutine) on the
        cluster's loop until it is done; the cluster runs meanwhile.
        ``timeout`` (cluster seconds: virtual ones on virtual time) bounds
        it."""
        if self._closed:
            raise RuntimeError("the cluster is closed")
        if _running_loop() is not None:
            if inspect.iscoroutine(awaitable):
                awaitable.close()  # never run: no "was never awaited" warning on top
            raise RuntimeError(
                "the in-process cluster runs on a loop of its own, driven from synchronous "
                "code: use it from a plain `def test_...` (not `async def`, not inside "
                "asyncio.run), and run commands with cluster.run(model.command(...)) rather "
                "than awaiting them"
            )
        limit = timeout if timeout is not None else self.cluster.timeout()

        async def bounded() -> T:
            async with asyncio.timeout(limit):
                return await awaitable

        with self._clock():
            return self.loop.run_until_complete(bounded())

    def sleep(self, seconds: float) -> None:
        """Let the cluster run for ``seconds`` (virtual on virtual time:
        a day passes in the time its timers take to run)."""
        self.run(asyncio.sleep(seconds), timeout=seconds + 1)

    def now(self) -> float:
        """The cluster's wall clock (``time.time()`` as its code sees it)."""
        return self.clock.wall() if self.clock is not None else time.time()

    def travel(self, seconds: float) -> None:
        """Move the cluster's wall clock ``seconds`` ahead at once (virtual
        time only): code that reads ``time.time()`` (a job archiving notes
        older than a month) sees the future, while timers and timeouts do
        not fire (no election happens). Sleeping through a month instead
        would run every heartbeat of it."""
        if self.clock is None:
            raise RuntimeError("travel() needs virtual time (virtual=True)")
        self.clock.travel(seconds)

    def run_job(self, job: Job | Callable[..., Awaitable[Any]], node_id: str | None = None) -> Any:
        """Run a background job once now, on the leader (or on ``node_id``
        for a job of every node), and return its result."""
        node = self.node(node_id or self.leader())

        async def once() -> Any:
            return await node.jobs.run_once(job)

        return self.run(once())

    # ---- looking ---------------------------------------------------------------------------

    @property
    def ids(self) -> list[str]:
        return list(self.cluster.ids)

    def leader(self) -> str:
        """The serving leader (waits for one)."""
        return self.run(self.cluster.wait_for_leader())

    def model(self, node_id: str | None = None) -> Any:
        """A node's copy of the model (default: the leader's). Read it
        directly; its commands return awaitables for ``run``."""
        return self.node(node_id or self.leader()).model

    def models(self) -> list[Any]:
        """Every live node's copy, in node order."""
        return [self.cluster.nodes[i].model for i in self.cluster.alive()]

    def node(self, node_id: str) -> InProcessNode:
        node = self.cluster.nodes.get(node_id)
        if node is None:
            raise KeyError(f"no node {node_id!r} in this cluster: its nodes are {self.ids}")
        return node

    def call(self, node_id: str | None, command: str, *args: Any, **kwargs: Any) -> Any:
        """``run(model(node_id).<command>(*args, **kwargs))``."""
        return self.run(getattr(self.model(node_id), command)(*args, **kwargs))

    def wait_converged(self, timeout: float | None = None) -> int:
        """Until every live node that can reach the leader has applied the
        same index (the leader's commit index); returns it."""
        return self.run(self.cluster.wait_converged(timeout))

    def wait_until(
        self, predicate: Callable[[], bool], what: str = "condition", timeout: float | None = None
    ) -> None:
        limit = timeout or self.cluster.timeout()
        self.run(self.cluster.wait_until(predicate, what, limit), timeout=limit + 1)

    # ---- faults ----------------------------------------------------------------------------

    def kill(self, node_id: str) -> None:
        self.run(self.cluster.kill(node_id))

    def stop(self, node_id: str) -> None:
        self.run(self.cluster.stop(node_id))

    def restart(self, node_id: str) -> None:
        self.run(self.cluster.restart(node_id))

    def partition(self, node_id: str) -> None:
        self.cluster.partition(node_id)

    def heal(self) -> None:
        self.cluster.heal()

    def transfer_leadership(self, to: str = "") -> str:
        return self.run(self.cluster.transfer_leadership(to))

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.run(self.cluster.close())
        finally:
            self._closed = True
            with self._clock():
                end_leftover_tasks(self.loop)
            self.loop.close()

    def __enter__(self) -> ClusterHarness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _name(factory: object) -> str:
    return str(getattr(factory, "__qualname__", None) or repr(factory))


def _checked_factory(factory: object) -> AppFactory:
    """The factory, or a TypeError saying what to pass instead."""
    if isinstance(factory, ReplicatedModel | Application):
        raise TypeError(
            f"the cluster needs a factory (the model's class, or the --app function that "
            f"returns an Application), not a {type(factory).__qualname__} instance: each node "
            "builds a model of its own"
        )
    if isinstance(factory, str):
        raise TypeError(
            f"the cluster needs the factory itself, not the --app string {factory!r}: "
            "import it (from mymodule import app) and pass app"
        )
    if not callable(factory):
        raise TypeError(
            f"the cluster needs a factory (the model's class, or a function returning an "
            f"Application or a ReplicatedModel), got {type(factory).__qualname__} {factory!r:.60}"
        )
    return factory


def _checked_model(made: object) -> ReplicatedModel:
    if not isinstance(made, ReplicatedModel):
        raise TypeError(
            f"the cluster's factory returned {type(made).__qualname__}; it must return a "
            "ReplicatedModel or an Application"
        )
    return made

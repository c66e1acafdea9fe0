"""The leader's care of the cluster record (machines/cluster.py).

Every node answers ``Peer.Info``: its id, the cluster id it knows, the
newest application and key-value versions its code supports, whether it has
halted, and its state digests (runtime/checks.py). The node that leads then,
about once a second:

1. asks every member (voters and learners) for that information;
2. names the cluster if it has no id yet: ``--cluster-id`` if given, else a
   random one -- only once every member answers as this release does (a node
   of release 0.1.0 would ignore the entry and, after a snapshot from it, a
   later node would lose the name);
3. switches versions once every member supports a newer one and no operator
   holds switches back: it first runs the model's ``upgrade`` on a copy of
   the state, and proposes nothing if that fails (the reason shows in the
   status as ``upgrade_blocked``);
4. proposes a state check every ``check_entries`` applied entries, gathers
   the digests and compares them, raising the divergence alarm through the
   log (or clearing it once all agree again).

``check_now()`` is the on-demand check (Admin.CheckState). Every node, leader
or not, reacts to the alarm: a node it names may not lead
(``RaftNode.set_may_lead``), so a diverged leader steps down at once.

``admit(node_id, address)`` is asked before a node is added: it must support
the versions the cluster runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import structlog

from ramraft._version import __version__
from ramraft.consensus import RaftNode, Role
from ramraft.proto import raft_pb2
from ramraft.server.logs import RateLimitedLog
from ramraft.server.machines.cluster import (
    ClusterState,
    encode_alarm,
    encode_check,
    encode_cluster_id,
    encode_versions,
)
from ramraft.server.request_errors import BadRequest, RequestError, Unavailable
from ramraft.server.runtime.checks import StateDigests, Verdict, compare
from ramraft.server.runtime.loop import RaftRuntime

log = structlog.get_logger("ramraft.steward")

INTERVAL = 1.0  # seconds between the leader's rounds
# How often the steward looks whether its node has become leader: a new
# leader's first round (what each member supports, shown by `ramraft
# app-version` and `ramraft status`) comes this soon, not up to INTERVAL later.
LOOK_EVERY = 0.1
INFO_TIMEOUT = 1.0  # seconds a member has to answer Peer.Info
DIGEST_WAIT = 30.0  # seconds the leader waits for every member's digest of a check
# Periodic checks leave at least this many times the last digest's duration
# between them: a digest costs time in proportion to the state, and a large
# state written fast would otherwise keep every node digesting (1M keys take
# about a second; at 5,000 writes/s, 10,000 entries pass every 2 s).
CHECK_PACE = 20


@dataclass(frozen=True)
class MemberInfo:
    """What a member said of itself (Peer.Info)."""

    node_id: str
    cluster_id: str
    app_supported: int
    kv_supported: int
    halted: str
    current: bool
    """False for a node of release 0.1.0 (no Peer.Info): it supports
    version 1 of everything and knows no cluster id."""
    at: float
    digests: dict[int, str] = field(default_factory=dict)

    @classmethod
    def legacy(cls, node_id: str) -> MemberInfo:
        return cls(node_id, "", 1, 1, "", False, time.monotonic())


def divergence_action(majority_agreed: bool) -> str:
    """What an operator does about the divergence alarm: the README's
    runbook. Restarting a node empty under its old membership would make it
    forget the votes it gave (so it is removed and added back), and wiping
    every node when none had a majority would lose the data."""
    if majority_agreed:
        return (
            "the named nodes hold other state than the majority: fix the command (it must "
            "compute the same from its arguments alone), then for each named node: ramraft "
            "members remove it, move its data directory aside, start it with --join and "
            "ramraft members add it (README: Deploying new code, the divergence alarm)"
        )
    return (
        "no state had a majority (every node holds its own): a command is not "
        "deterministic; fix it and restore the last good backup as a new cluster "
        "(README: Deploying new code, the divergence alarm)"
    )


class Steward:
    def __init__(
        self,
        runtime: RaftRuntime,
        transfer_leadership: Callable[[str], Awaitable[str]],
    ) -> None:
        self.runtime = runtime
        self.transfer_leadership = transfer_leadership
        self.config = runtime.config
        self.digests = StateDigests(runtime.machine, runtime.cluster_state)
        self.known: dict[str, MemberInfo] = {}
        self.upgrade_blocked = ""
        self.last_verdict: Verdict | None = None
        self._last_check_index = 0
        self._last_check_at = time.monotonic()
        self._check_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._warnings = RateLimitedLog(burst=3, seconds=60.0)
        cluster = runtime.cluster
        if cluster is not None:
            cluster.on_check = self.digests.take
            cluster.on_change = self._on_change

    # ---- every node -------------------------------------------------------------------------

    def cluster_id(self) -> str:
        """The id this node goes by: the replicated one, else --cluster-id."""
        return self.runtime.cluster_state().cluster_id or self.config.cluster_id

    def info(self, request: raft_pb2.InfoRequest) -> raft_pb2.InfoResponse:
        """This node's answer to Peer.Info."""
        status = self.runtime.status()
        digests = [
            raft_pb2.IndexedDigest(index=i, digest=d)
            for i in request.digest_indexes
            if (d := self.digests.get(i)) is not None
        ]
        return raft_pb2.InfoResponse(
            node_id=self.runtime.id,
            cluster_id=self.cluster_id(),
            app_version_supported=status.app_version_supported,
            kv_version_supported=status.kv_version_supported,
            halted=status.halted,
            version=__version__,
            digests=digests,
            applied_index=status.applied_index,
        )

    def _on_change(self, state: ClusterState) -> None:
        """Runs while the entry that changed the record is applied (inside a
        loop turn): what touches the core waits for the turn's end."""
        diverged = self.runtime.id in state.alarm_nodes
        barred = diverged and state.alarm_minority
        self.runtime.schedule(lambda core: _set_may_lead(core, not barred))
        if state.alarm_nodes:
            log.error(
                "state_divergence",
                nodes=list(state.alarm_nodes),
                check_index=state.alarm_index,
                this_node_diverged=diverged,
                action=divergence_action(state.alarm_minority),
            )

    def unfit_to_lead(self) -> set[str]:
        """Members that must not be handed leadership: halted ones (as they
        last told this leader) and those the divergence alarm names."""
        halted = {node for node, info in self.known.items() if info.halted}
        state = self.runtime.cluster_state()
        return halted | (set(state.alarm_nodes) if state.alarm_minority else set())

    # ---- the leader's rounds ------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="steward")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self.digests.close()

    async def _run(self) -> None:
        # The term of this node's last round as leader, and when that round
        # ended: a new term's first round comes at once, then one INTERVAL
        # after the end of the one before (a member that does not answer
        # makes a round last INFO_TIMEOUT; the rounds do not then run back to back).
        led_term, led_at = -1, 0.0
        while True:
            await asyncio.sleep(LOOK_EVERY)
            runtime = self.runtime
            if runtime.role is not Role.LEADER or runtime.halted or runtime.stopping:
                continue
            term = runtime.core.term if runtime.core is not None else 0
            if term == led_term and time.monotonic() - led_at < INTERVAL:
                continue
            led_term = term
            try:
                await self._lead_once()
            except (RequestError, TimeoutError) as e:
                # Leadership moved, the node is busy or stopping: next round.
                log.debug("steward_round_skipped", reason=str(e))
            except Exception:
                log.exception("steward_round_failed")
            led_at = time.monotonic()

    def _members(self) -> list[str]:
        core = self.runtime.core
        return sorted(core.conf.members) if core is not None else []

    async def gather(self, digest_indexes: tuple[int, ...] = ()) -> dict[str, MemberInfo | None]:
        """Every member's information (None: it did not answer)."""
        request = raft_pb2.InfoRequest(digest_indexes=list(digest_indexes))
        members = self._members()

        async def ask(member: str) -> MemberInfo | None:
            if member == self.runtime.id:
                return _member_info(self.info(request))
            try:
                response = await self.runtime.transport.info(member, request, INFO_TIMEOUT)
            except (TimeoutError, grpc.aio.AioRpcError, OSError):
                return None
            return MemberInfo.legacy(member) if response is None else _member_info(response)

        answers = await asyncio.gather(*(ask(m) for m in members))
        result = dict(zip(members, answers, strict=True))
        for member, answer in result.items():
            if answer is not None:
                self.known[member] = answer
        for gone in set(self.known) - set(members):
            del self.known[gone]
        return result

    async def _lead_once(self) -> None:
        infos = await self.gather()
        answered = [i for i in infos.values() if i is not None]
        everyone = len(answered) == len(infos)
        state = self.runtime.cluster_state()
        if not state.cluster_id and everyone and all(i.current for i in answered):
            cluster_id = self.config.cluster_id or f"c-{secrets.token_hex(8)}"
            await self.runtime.propose(encode_cluster_id(cluster_id))
            log.info("cluster_named", cluster_id=cluster_id)
        if everyone and not state.hold:
            await self._maybe_switch(state, answered)
        applied = self.runtime.machine.applied_index
        if self.periodic_check_due(applied, time.monotonic()):
            await self.check_now()

    def periodic_check_due(self, applied: int, now: float) -> bool:
        """Whether the leader should propose a periodic state check: every
        ``check_entries`` applied entries, but never sooner than CHECK_PACE
        times the last digest's duration after the last check, so checks
        cost every node at most about 1/CHECK_PACE of a core however large
        the state and fast the writes."""
        return bool(
            self.config.check_entries
            and applied - self._last_check_index >= self.config.check_entries
            and now - self._last_check_at >= CHECK_PACE * self.digests.last_seconds
        )

    async def _maybe_switch(self, state: ClusterState, infos: list[MemberInfo]) -> None:
        app = max(state.app_version, min(i.app_supported for i in infos))
        kv = max(state.kv_version, min(i.kv_supported for i in infos))
        if (app, kv) == (state.app_version, state.kv_version):
            self.upgrade_blocked = ""
            return
        cluster = self.runtime.cluster
        model = cluster.model if cluster is not None else None
        if app > state.app_version and model is not None:
            failure = model.try_upgrade(state.app_version, app)
            if failure is not None:
                self.upgrade_blocked = failure
                self._warnings.warning(
                    "upgrade_blocked",
                    app_version=state.app_version,
                    wanted=app,
                    reason=failure,
                    action="fix the model's upgrade() and roll out that code",
                )
                return
        self.upgrade_blocked = ""
        log.info("versions_switching", app_version=app, kv_version=kv)
        await self.runtime.propose(encode_versions(app, kv))

    # ---- state checks -------------------------------------------------------------------------

    async def check_now(self, wait: float = DIGEST_WAIT) -> Verdict:
        """Propose a state check, gather the members' digests of it and
        compare; raise or clear the alarm through the log. Leader only."""
        async with self._check_lock:
            index, _ = await self.runtime.propose(encode_check())
            self._last_check_index = index
            self._last_check_at = time.monotonic()
            digests = await self._collect(index, wait)
            members = self._members()
            verdict = compare(index, {n: d for n, d in digests.items() if d}, len(members))
            self.last_verdict = verdict
            await self._settle_alarm(verdict, complete=len(digests) == len(members))
            return verdict

    async def _collect(self, index: int, wait: float) -> dict[str, str]:
        deadline = time.monotonic() + wait
        digests: dict[str, str] = {}
        while True:
            infos = await self.gather((index,))
            for member, info in infos.items():
                if info is not None and index in info.digests:
                    digests[member] = info.digests[index]
            missing = set(infos) - set(digests)
            if not missing or time.monotonic() >= deadline:
                return digests
            await asyncio.sleep(0.1)

    async def _settle_alarm(self, verdict: Verdict, *, complete: bool) -> None:
        state = self.runtime.cluster_state()
        if verdict.diverged and (verdict.diverged, verdict.minority) != (
            state.alarm_nodes,
            state.alarm_minority,
        ):
            log.error(
                "state_divergence_found",
                check_index=verdict.index,
                diverged=list(verdict.diverged),
                majority_agreed=verdict.minority,
                digests=verdict.digests,
            )
            await self.runtime.propose(
                encode_alarm(verdict.index, list(verdict.diverged), verdict.minority)
            )
        elif not verdict.diverged and state.alarm_nodes and complete:
            log.info("state_divergence_cleared", check_index=verdict.index)
            await self.runtime.propose(encode_alarm(verdict.index, []))

    # ---- admission -------------------------------------------------------------------------

    async def admit(self, node_id: str, address: str) -> None:
        """Refuse to add a node whose code cannot run the active versions,
        or that is not ``node_id`` (BadRequest), or that cannot be asked
        (Unavailable)."""
        transport = self.runtime.transport
        addresses = transport.addresses
        # Not a member: an address known for it is stale (a removed member,
        # an addition that failed). Asked at the address given, which stays
        # only if the addition goes on (its log entry sets it everywhere).
        before = addresses.get(node_id)
        linked = node_id in transport.links
        addresses[node_id] = address
        try:
            await self._ask(node_id, address)
        except BaseException:
            if before is None:
                addresses.pop(node_id, None)
            else:
                addresses[node_id] = before
            if not linked:  # the link (and channel) opened to ask it
                await transport.forget(node_id)
            raise

    async def _ask(self, node_id: str, address: str) -> None:
        state = self.runtime.cluster_state()
        transport = self.runtime.transport
        try:
            response = await transport.info(node_id, raft_pb2.InfoRequest(), INFO_TIMEOUT * 3)
        except grpc.aio.AioRpcError as e:
            raise Unavailable(
                f"cannot ask {node_id} at {address} which versions its code supports "
                f"({e.code().name}: {e.details()}); start it first, then add it"
            ) from e
        if response is not None and response.node_id and response.node_id != node_id:
            raise BadRequest(f"the node at {address} is {response.node_id}, not {node_id}")
        info = MemberInfo.legacy(node_id) if response is None else _member_info(response)
        if info.app_supported < state.app_version or info.kv_supported < state.kv_version:
            raise BadRequest(
                f"{node_id}'s code supports app version {info.app_supported} and key-value "
                f"version {info.kv_supported}; the cluster runs {state.app_version} and "
                f"{state.kv_version}: deploy newer code on it first"
            )
        if info.cluster_id and state.cluster_id and info.cluster_id != state.cluster_id:
            raise BadRequest(
                f"{node_id} belongs to cluster {info.cluster_id!r}, not {state.cluster_id!r}"
            )


def _member_info(response: raft_pb2.InfoResponse) -> MemberInfo:
    return MemberInfo(
        node_id=response.node_id,
        cluster_id=response.cluster_id,
        app_supported=max(1, response.app_version_supported),
        kv_supported=max(1, response.kv_version_supported),
        halted=response.halted,
        current=True,
        at=time.monotonic(),
        digests={d.index: d.digest for d in response.digests},
    )


def _set_may_lead(core: RaftNode, may_lead: bool) -> None:
    if core.may_lead != may_lead:
        core.set_may_lead(may_lead)

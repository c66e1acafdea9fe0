"""The node runtime: one asyncio task owns the Raft core.

Everything that touches the core -- peer messages, client proposals, reads,
clock ticks, admin requests -- is queued and wakes the loop task. Each turn
of the loop drains *all* of it, steps it into the core, then handles the
core's Ready in the order the core demands (consensus/types.py, Ready):

1. persist snapshot marker, entries and hard state: one ``save()``, one
   fsync, in the disk thread (the event loop keeps accepting requests,
   which pile up for the next turn: group commit);
2. send the messages (one coalesced write per peer, runtime/transport.py);
3. install a snapshot received from the leader, apply committed entries to
   the state machine, resolve the futures of the writes they complete;
4. release linearizable reads whose read index is now applied; ``advance``.

A write's future resolves only once its entry is applied here, with the
term it was proposed in (the same index with another term means a new
leader overwrote it: the client is told to retry, and its session makes the
retry safe).

If the disk fails, the runtime stops: it never acknowledges what it could
not sync, and every request gets UNAVAILABLE with the reason.

If the state machine cannot apply a committed entry (``ApplyHalted``: the
entry was written by newer code), the runtime stops *applying* there: the
core is told (``halt_apply``) and keeps persisting, acknowledging and voting,
but this node never leads, serves no read and takes no write (UNAVAILABLE
with the reason), reports not ready, and says why in its status, until it
is restarted with code that can apply the entry.

What belongs here: the loop, its queues and the futures it resolves, and
the reports read from the core (``status()``, ``members()``, the leader
history; their types are in status.py). Beside it: the peer addresses and
identity policy (peers.py), snapshot scheduling and restoring (snapshotting.py)
and membership changes (membership.py), which all act through this loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import random
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, TypeVar

import structlog

from ramraft.consensus import (
    NO_NODE,
    ConfChange,
    Config,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Message,
    MsgType,
    NotLeaderError,
    ProposalDroppedError,
    RaftNode,
    Ready,
    Role,
)
from ramraft.server.config import NodeConfig, uncommitted_bytes
from ramraft.server.logs import RateLimitedLog
from ramraft.server.machines.cluster import KV_SUPPORTED_VERSION, ClusterMachine, ClusterState
from ramraft.server.machines.statemachine import ApplyHalted, StateMachine
from ramraft.server.request_errors import CommandRefused, NotLeader, Overloaded, Unavailable
from ramraft.server.runtime.peers import PeerDirectory
from ramraft.server.runtime.snapshotting import SnapshotScheduler
from ramraft.server.runtime.status import LeaderChange, MemberProgress, RuntimeStatus
from ramraft.server.storage import LogStore, SnapshotStore, StorageError

log = structlog.get_logger("ramraft.runtime")
T = TypeVar("T")

# Messages whose sending does not depend on the sender's pending disk write.
_SEND_BEFORE_PERSIST = frozenset(
    {MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT, MsgType.TIMEOUT_NOW}
)


# ---- the runtime ------------------------------------------------------------------------------


class RaftRuntime:
    def __init__(
        self,
        config: NodeConfig,
        machine: StateMachine,
        log_store: LogStore,
        snapshots: SnapshotStore,
        *,
        rng: random.Random | None = None,
        disk: Executor | None = None,
    ) -> None:
        # ``rng`` (election timeouts) and ``disk`` (where the log is written)
        # default to fresh randomness and a disk thread; an in-process cluster
        # on virtual time passes a seeded Random and an inline executor
        # (server/inprocess/) so that a run is reproducible.
        self.config = config
        self.id = config.node_id
        self.machine = machine
        self.log_store = log_store
        self.snapshots = snapshots
        self.core: RaftNode | None = None
        self.peers = PeerDirectory(config, self._conf_members)
        # id -> peer address (the directory's dict, shared with the transport)
        self.addresses = self.peers.addresses
        self.snapshotting = SnapshotScheduler(
            config, machine, snapshots, log_store, self.peers, self
        )
        self.transport: Any = None  # PeerTransport, set by the node before start()
        self.failed: BaseException | None = None
        self.halted: ApplyHalted | None = None  # see the module docstring
        self.stopping = False

        self._rng = rng if rng is not None else random.Random()
        self._disk = (
            disk
            if disk is not None
            else ThreadPoolExecutor(max_workers=1, thread_name_prefix="ramraft-disk")
        )
        self._disk_jobs = 0  # submitted to _disk and not finished (see run_on_disk)
        self._wake = asyncio.Event()
        self._inbox: list[Message] = []
        self._proposals: list[tuple[bytes, asyncio.Future[tuple[int, object]]]] = []
        # Proposals that may only be made in the given term (propose(term=...)).
        self._term_proposals: list[tuple[bytes, asyncio.Future[tuple[int, object]], int]] = []
        self._read_requests: list[tuple[bytes, asyncio.Future[int]]] = []
        self._calls: list[tuple[Callable[[RaftNode], Any], asyncio.Future[Any] | None]] = []
        self._ticks = 0
        self._read_ids = itertools.count(1)
        # index -> (term proposed in, future): writes waiting to be applied
        self._waiting_writes: dict[int, tuple[int, asyncio.Future[tuple[int, object]]]] = {}
        self._reads: dict[bytes, asyncio.Future[int]] = {}  # read index asked, not answered
        self._read_wait: list[tuple[int, int, asyncio.Future[int]]] = []  # (index, seq, fut)
        self._read_seq = itertools.count()
        self._leader_event = asyncio.Event()
        self._applied_event = asyncio.Event()
        self._synced_hard_state = HardState()  # the newest term/vote known durable
        # A commit index the core reported with nothing else to save: it is
        # written with the next save, or on its own once it has waited a tick
        # (``_save_commit_later``), not in a disk job of its own per write.
        self._unsaved_hard_state: HardState | None = None
        self._unsaved_since = 0.0
        self._tasks: list[asyncio.Task[Any]] = []
        self._leader_changes: list[LeaderChange] = []  # the newest 50
        # Hooks (metrics, background jobs): (event, fields) for "proposed",
        # "proposals_dropped", "fsync", "applied", "role" (fields["role"] is a
        # consensus Role), "snapshot", "snapshot_installed", "halted", "failed",
        # "loop_late" (fields["seconds"]: how late the ticker woke).
        # They run inside the loop's turn: quick, and never touching the core.
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []
        self.refusals = RateLimitedLog()
        self._rejected_seen = 0
        # The ticker's wake-ups that came a quarter of the shortest election
        # timeout late or more (``_ticker``): a loop that falls that far
        # behind is on its way to losing its leadership, and says so.
        self.late_turns = 0
        self._late_after = config.election_ticks * config.tick_ms / 1000 / 4
        self._late_log = RateLimitedLog(burst=1, seconds=10.0)

    # ---- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        state = await loop.run_in_executor(self._disk, self.log_store.load)
        self._synced_hard_state = state.hard_state
        if state.snapshot is not None:
            await asyncio.to_thread(self.snapshotting.restore, state.snapshot.index)
        bootstrap = None if self.config.join else ConfState(frozenset(self.config.peers))
        core_config = Config(
            id=self.id,
            rng=self._rng,
            election_tick=self.config.election_ticks,
            heartbeat_tick=self.config.heartbeat_ticks,
            # Uncommitted proposals are RAM too: refuse more than this.
            max_uncommitted_bytes=uncommitted_bytes(self.config.snapshot_bytes),
            # An AppendEntries must fit what the peers' port accepts (with
            # room for the batch around it; server/config.py).
            max_msg_bytes=min(1 << 20, self.config.peer_message_bytes() // 4),
        )
        self.core = RaftNode(
            core_config,
            hard_state=state.hard_state,
            snapshot=state.snapshot,
            entries=state.entries,
            bootstrap=bootstrap,
        )
        for entry in state.entries:
            if entry.kind == EntryKind.CONF_CHANGE:
                self.peers.note_conf_entry(entry)
        log.info(
            "node_recovered",
            id=self.id,
            term=state.hard_state.term,
            commit=state.hard_state.commit,
            snapshot=state.snapshot.index if state.snapshot else 0,
            entries=len(state.entries),
        )
        self._tasks = [
            loop.create_task(self._loop(), name="raft-loop"),
            loop.create_task(self._ticker(), name="raft-ticker"),
        ]
        self._wake.set()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.snapshotting.close()
        self._fail_everything(Unavailable("the node is shutting down"))
        if self._unsaved_hard_state is not None and self.failed is None:
            with contextlib.suppress(Exception):  # only a hint for the next start
                await self.run_on_disk(self._save_commit, self._unsaved_hard_state)
        await asyncio.get_running_loop().run_in_executor(self._disk, self.log_store.close)
        self._disk.shutdown(wait=True)

    # ---- what clients and servicers call -----------------------------------------------------

    @property
    def role(self) -> Role:
        return self.core.role if self.core else Role.FOLLOWER

    @property
    def leader(self) -> str:
        return self.core.leader if self.core else NO_NODE

    def leader_client_address(self) -> str:
        return self.peers.client_address(self.leader)

    def _conf_members(self) -> frozenset[str]:
        return self.core.conf.members if self.core is not None else frozenset()

    def pending_requests(self) -> int:
        """Writes and reads this node holds: queued for the next turn, or
        waiting to be committed, confirmed or applied."""
        return (
            len(self._proposals)
            + len(self._term_proposals)
            + len(self._read_requests)
            + len(self._waiting_writes)
            + len(self._reads)
            + len(self._read_wait)
        )

    @property
    def stopped_applying(self) -> bool:
        """Failed or halted: this node's state is behind and stays there."""
        return self.failed is not None or self.halted is not None

    @property
    def out_of_service(self) -> bool:
        """Stopped until restarted (stopped applying) or shutting down. Its
        Unavailable is final here: a request gets it at once, not after
        waiting out its deadline for a leader or an index this node will
        not reach, so a client goes to another node."""
        return self.stopped_applying or self.stopping

    def _stopped_words(self) -> str:
        """Why a node that stopped (``failed``) refuses a request."""
        what = "a storage failure" if isinstance(self.failed, StorageError) else "an internal error"
        return f"this node stopped after {what}: {self.failed}"

    def check_serving_reads(self) -> None:
        """Refuse a read of this node's state once it has stopped applying,
        even a serializable one (Unavailable, with the reason)."""
        if self.failed is not None:
            raise Unavailable(self._stopped_words(), before_proposal=True)
        if self.halted is not None:
            raise Unavailable(
                f"this node stopped applying the log at index {self.halted.index} "
                f"({self.halted.reason}); ask another node",
                before_proposal=True,
            )

    def check_available(self) -> None:
        """Refuse a request at once (before anything is proposed) when this
        node cannot take it: stopped, shutting down, or too busy."""
        self.check_serving_reads()
        if self.stopping:
            raise Unavailable("this node is shutting down", before_proposal=True)
        if self.pending_requests() >= self.config.limits.max_pending_requests:
            raise Overloaded(
                f"{self.config.limits.max_pending_requests} requests are waiting on this node "
                "already; retry later"
            )

    async def propose(self, command: bytes, *, term: int = 0) -> tuple[int, object]:
        """Replicate ``command``; returns (index, state machine result) once
        it is applied here. Raises NotLeader on a follower (the caller
        forwards), Unavailable if leadership is lost before it commits.

        With ``term``, the command is proposed only by this node as the
        leader of that term: if it does not lead in ``term`` now, or no
        longer when the loop gets to the proposal, it is refused
        (Unavailable, before proposal). Its entry can then only ever sit in
        the log at ``term``, before every entry of a later leader (the
        leader's background jobs, server/jobs.py)."""
        return await self.offer(command, term=term)

    def offer(self, command: bytes, *, term: int = 0) -> asyncio.Future[tuple[int, object]]:
        """``propose`` without the wait: the future of (index, result). What
        ``propose`` refuses before proposing is raised here, at once; what
        happens later (NotLeader when the loop finds this node no longer
        leads, Unavailable) is the future's exception. Cancelling the
        future gives up the wait: a command the loop has not proposed yet
        is dropped, one in the log stays there."""
        self.check_available()
        core = self.core
        if core is not None and core.role is not Role.LEADER:
            raise NotLeader(self.leader, self.leader_client_address())
        if term and (core is None or core.term != term):
            raise Unavailable(f"this node no longer leads in term {term}", before_proposal=True)
        refusal = self.cluster.check_proposal(command) if self.cluster is not None else None
        if refusal is not None:
            # A command this code lacks would stop every node that lacks it
            # too; one of a version not active yet could only fail.
            raise CommandRefused(refusal)
        fut: asyncio.Future[tuple[int, object]] = asyncio.get_running_loop().create_future()
        if term:
            self._term_proposals.append((command, fut, term))
        else:
            self._proposals.append((command, fut))
        self._wake.set()
        return fut

    def serving_term(self) -> int:
        """The term in which this node leads AND has applied an entry of
        (its first: the no-op every leader appends), so its state holds
        every entry committed before its term; 0 when it does not lead, not
        yet, or cannot serve (halted, failed, stopping)."""
        core = self.core
        if (
            core is None
            or core.role is not Role.LEADER
            or self.failed is not None
            or self.halted is not None
            or self.stopping
        ):
            return 0
        return core.term if core.log.term(core.log.applied) == core.term else 0

    async def read_index(self) -> int:
        """Confirm a linearizable read (thesis 6.4); returns once the state
        machine has applied the read index, so reading it now is
        linearizable. Works on followers too (the leader is asked)."""
        return await self.ask_read_index()

    def ask_read_index(self) -> asyncio.Future[int]:
        """``read_index`` asked for now, without waiting: the Raft loop's
        next turn starts its round (or queues it behind the one out); the
        future is what ``read_index`` returns."""
        self.check_available()
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._read_requests.append((next(self._read_ids).to_bytes(8, "big"), fut))
        self._wake.set()
        return fut

    async def propose_conf_change(self, change: ConfChange) -> int:
        """Propose one membership change (this node must lead) and return
        its index once it is applied here (membership.py)."""
        self.check_available()
        fut: asyncio.Future[tuple[int, object]] = asyncio.get_running_loop().create_future()

        def propose(core: RaftNode) -> None:
            if core.role is not Role.LEADER:
                raise NotLeader(core.leader, self.leader_client_address())
            index = core.propose_conf_change(change)
            # Registered in the same turn, so it cannot be applied unseen.
            self._waiting_writes[index] = (core.term, fut)

        await self.call(propose)
        index, _ = await fut
        return index

    async def call(self, fn: Callable[[RaftNode], T]) -> T:
        """Run ``fn(core)`` inside the loop, between turns."""
        if self.failed is not None:
            raise Unavailable(self._stopped_words())
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._calls.append((fn, fut))
        self._wake.set()
        return await fut

    def receive(self, messages: list[Message]) -> None:
        """Messages from peers (transport); stepped on the next turn."""
        self._inbox.extend(messages)
        self._wake.set()

    def schedule(self, fn: Callable[[RaftNode], Any]) -> None:
        """Run ``fn(core)`` at the start of the next turn, without waiting
        for it (callbacks that run inside a turn, e.g. while an entry is
        applied, must not touch the core there)."""
        self._calls.append((fn, None))
        self._wake.set()

    def report_unreachable(self, peer: str) -> None:
        self.peers.unreachable(peer)
        self._calls.append((lambda core: core.report_unreachable(peer), None))
        self._wake.set()

    def report_snapshot(self, peer: str, ok: bool) -> None:
        self._calls.append((lambda core: core.report_snapshot(peer, ok), None))
        self._wake.set()

    async def wait_for_leader(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while not self.leader:
            self._leader_event.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable("no leader is known; the cluster may have lost its quorum")
            try:
                await asyncio.wait_for(self._leader_event.wait(), remaining)
            except TimeoutError:
                continue
        return self.leader

    async def wait_for_new_leader(self, old: str, timeout: float) -> bool:
        """Wait until a leader other than ``old`` is known, at most
        ``timeout`` seconds; returns whether one is."""
        deadline = time.monotonic() + timeout
        while not (self.leader and self.leader != old):
            self._leader_event.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._leader_event.wait(), remaining)
        return True

    async def wait_applied(self, index: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.machine.applied_index < index:
            self._applied_event.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable(f"index {index} was not applied in time")
            try:
                await asyncio.wait_for(self._applied_event.wait(), remaining)
            except TimeoutError:
                continue

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no write this node proposed is still waiting to be
        applied (at most ``timeout`` seconds); returns whether none is."""
        deadline = time.monotonic() + timeout
        while self._waiting_writes:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._applied_event.clear()
            with contextlib.suppress(TimeoutError):
                # Bounded: writes also leave when they fail, with no event.
                await asyncio.wait_for(self._applied_event.wait(), min(remaining, 0.05))
        return True

    # ---- reports ----------------------------------------------------------------------------

    @property
    def cluster(self) -> ClusterMachine | None:
        """The cluster record's machine, when the node runs one (node.py)."""
        machine = self.machine
        return machine if isinstance(machine, ClusterMachine) else None

    def cluster_state(self) -> ClusterState:
        cluster = self.cluster
        return cluster.state if cluster is not None else ClusterState()

    def ready(self) -> bool:
        """Knows a leader and has applied what it knows to be committed
        (the gRPC health service's "" status, and /readyz); never while
        halted, nor while the divergence alarm names this node."""
        core = self.core
        if core is None or self.failed is not None or self.halted is not None:
            return False
        if self.id in self.cluster_state().alarm_nodes:
            return False
        return bool(core.leader) and self.machine.applied_index >= core.commit_index

    def status(self) -> RuntimeStatus:
        core = self.core
        if core is None:
            return RuntimeStatus(id=self.id, role=None)
        return RuntimeStatus(
            id=self.id,
            role=core.role,
            address=self.addresses.get(self.id, ""),
            term=core.term,
            leader=core.leader,
            leader_address=self.leader_client_address(),
            commit_index=core.commit_index,
            applied_index=self.machine.applied_index,
            last_index=core.last_index,
            snapshot_index=core.latest_snapshot.index,
            first_index=core.log.first_index,
            failed=str(self.failed) if self.failed else "",
            ready=self.ready(),
            **self._cluster_fields(),
        )

    def _cluster_fields(self) -> dict[str, Any]:
        state = self.cluster_state()
        cluster = self.cluster
        return {
            "cluster_id": state.cluster_id,
            "app_version": state.app_version,
            "app_version_supported": cluster.app_supported if cluster is not None else 1,
            "kv_version": state.kv_version,
            "kv_version_supported": (
                cluster.kv_supported if cluster is not None else KV_SUPPORTED_VERSION
            ),
            "upgrade_hold": state.hold,
            "halted": str(self.halted) if self.halted is not None else "",
            "diverged": state.alarm_nodes,
            "diverged_at": state.alarm_index,
        }

    def members(self) -> list[MemberProgress]:
        """Every member, with replication progress when this node leads."""
        core = self.core
        if core is None:
            return []
        conf = core.conf
        out = []
        for member in sorted(conf.members):
            pr = core.progress.get(member)
            match = pr.match if pr is not None else 0
            out.append(
                MemberProgress(
                    id=member,
                    address=self.peers.client_address(member),
                    voter=member in conf.voters,
                    match_index=match,
                    lag=max(0, core.last_index - match) if pr is not None else 0,
                    active=(pr is not None and bool(pr.recent_active)) or member == self.id,
                )
            )
        return out

    def leader_changes(self) -> list[LeaderChange]:
        """The newest changes of role or leader this node saw, oldest first."""
        return list(self._leader_changes)

    # ---- the loop -------------------------------------------------------------------------

    async def _ticker(self) -> None:
        """Ticks follow the wall clock: when the loop runs late (CPU load, a
        long turn, SIGSTOP), the ticks that passed are all delivered, so an
        election timeout stays a time, not a count of loop wake-ups."""
        loop = asyncio.get_running_loop()
        interval = self.config.tick_ms / 1000
        next_at = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            late = loop.time() - next_at
            if late >= self._late_after:
                self._note_late(late)
            elapsed = int(late / interval) + 1
            next_at += elapsed * interval
            self._ticks += elapsed
            self._wake.set()

    def _note_late(self, late: float) -> None:
        """The event loop ran ``late`` seconds behind the ticker: a callback
        that held it (application code on the loop, a long synchronous
        call) or a process starved of CPU or stopped. Past an election
        timeout the followers stop hearing from a leader and elect another,
        so it is logged (once per 10 s at most, with how many were not)
        well before that."""
        self.late_turns += 1
        self.emit("loop_late", {"seconds": late})
        self._late_log.warning(
            "event_loop_late",
            late_ms=round(late * 1000),
            election_timeout_ms=self.config.election_ticks * self.config.tick_ms,
            role=self.core.role.value if self.core is not None else "starting",
        )

    async def _loop(self) -> None:
        core = self.core
        assert core is not None
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                self._feed(core)
                while core.has_ready():
                    await self._handle_ready(core, core.ready())
                self._save_commit_later()
                self.snapshotting.maybe_snapshot(core)
        except asyncio.CancelledError:
            raise
        except StorageError as e:
            self._stop_on_failure(e)
        except Exception as e:
            log.exception("raft_loop_crashed")
            self._stop_on_failure(e)

    def _stop_on_failure(self, error: BaseException) -> None:
        self.failed = error
        action = (
            "check the disk, then restart it"
            if isinstance(error, StorageError)
            else "it is a bug in ramraft (raft_loop_crashed above has the traceback): "
            "restart it, and report the traceback"
        )
        log.error(
            "node_stopped_writes",
            reason=str(error),
            action=f"the node refuses requests until restarted; {action}",
        )
        self._fail_everything(Unavailable(self._stopped_words()))
        if self.transport is not None:
            self.transport.send = lambda messages: None  # never send what we could not persist
        self.emit("failed", {"reason": str(error)})

    def _halt(self, halted: ApplyHalted) -> None:
        """Stop applying at ``halted.index`` (see the module docstring)."""
        self.halted = halted
        log.error(
            "apply_halted",
            index=halted.index,
            reason=halted.reason,
            action=(
                "this node applies nothing more, serves no reads and reports not ready; "
                "restart it with code that can apply the entry (it resumes from its log)"
            ),
        )
        self._fail_everything(
            Unavailable(
                f"this node stopped applying the log at index {halted.index}: {halted.reason}"
            )
        )
        self.emit("halted", {"index": halted.index, "reason": halted.reason})

    def _fail_everything(self, error: BaseException) -> None:
        futures: list[asyncio.Future[Any]] = [f for _, f in self._proposals]
        futures += [f for _, f, _ in self._term_proposals]
        futures += [f for _, f in self._read_requests]
        futures += [f for _, f in self._waiting_writes.values()]
        futures += list(self._reads.values())
        futures += [f for _, _, f in self._read_wait]
        futures += [f for _, f in self._calls if f is not None]
        for fut in futures:
            if not fut.done():
                fut.set_exception(error)
        self._proposals, self._read_requests, self._calls = [], [], []
        self._term_proposals = []
        self._waiting_writes.clear()
        self._reads.clear()
        self._read_wait.clear()

    def _feed(self, core: RaftNode) -> None:
        """Step everything that arrived since the last turn into the core."""
        if self._inbox:
            inbox, self._inbox = self._inbox, []
            now = time.monotonic()
            for m in inbox:
                if m.dst == self.id:
                    self.peers.heard_from(m.src, now)
                    core.step(m)
            if core.rejected_messages != self._rejected_seen:
                # Well-formed but wrong: the core dropped them (consensus/raft.py
                # malformed, or an AppendEntries rewriting committed entries).
                self.refusals.warning(
                    "peer_message_rejected",
                    rejected=core.rejected_messages - self._rejected_seen,
                    total=core.rejected_messages,
                    last=core.last_rejection,
                )
                self._rejected_seen = core.rejected_messages
        if self._ticks:
            ticks, self._ticks = self._ticks, 0
            for _ in range(ticks):
                core.tick()
        if self._calls:
            calls, self._calls = self._calls, []
            for fn, call_fut in calls:
                try:
                    result = fn(core)
                except Exception as e:
                    if call_fut is not None and not call_fut.done():
                        call_fut.set_exception(e)
                else:
                    if call_fut is not None and not call_fut.done():
                        call_fut.set_result(result)
        if self._proposals or self._term_proposals:
            self._propose_all(core)
        if self._read_requests:
            requests, self._read_requests = self._read_requests, []
            for context, read_fut in requests:
                if read_fut.done():
                    continue
                try:
                    core.read_index(context)
                except NotLeaderError:
                    read_fut.set_exception(Unavailable("no leader is known to confirm the read"))
                    continue
                self._reads[context] = read_fut

    def _propose_all(self, core: RaftNode) -> None:
        proposals = [(c, f) for c, f in self._proposals if not f.done()]
        self._proposals = []
        if self._term_proposals:
            bound, self._term_proposals = self._term_proposals, []
            for command, fut, term in bound:
                if fut.done():
                    continue
                if core.role is Role.LEADER and core.term == term:
                    proposals.append((command, fut))
                else:
                    fut.set_exception(
                        Unavailable(
                            f"this node no longer leads in term {term}", before_proposal=True
                        )
                    )
        if not proposals:
            return
        try:
            first = core.propose_batch([command for command, _ in proposals])
        except NotLeaderError:
            error: Exception = NotLeader(core.leader, self.leader_client_address())
        except ProposalDroppedError as e:
            error = Unavailable(str(e), before_proposal=True)
        else:
            term = core.term
            for n, (_, fut) in enumerate(proposals):
                self._waiting_writes[first + n] = (term, fut)
            if self.listeners:
                self.emit("proposed", {"entries": len(proposals)})
            return
        if self.listeners:
            self.emit("proposals_dropped", {"entries": len(proposals)})
        for _, fut in proposals:
            fut.set_exception(error)

    async def _handle_ready(self, core: RaftNode, rd: Ready) -> None:
        messages = rd.messages
        if messages:
            # Thesis 10.2.1: what a leader sends (appends, heartbeats,
            # snapshots, TimeoutNow) promises nothing about its own disk, so
            # it leaves before the leader's fsync: the followers write in
            # parallel with it. Acknowledgements are only stepped after this
            # Ready is done, i.e. after the leader's own write. Answers (votes,
            # append acknowledgements) still wait for the disk, as Ready says.
            early: list[Message] = []
            later: list[Message] = []
            for m in messages:
                (early if m.type in _SEND_BEFORE_PERSIST else later).append(m)
            if early:
                self.transport.send(early)
            messages = later
        if rd.snapshot is not None or rd.entries or self._must_sync(rd.hard_state):
            hard_state = rd.hard_state or self._unsaved_hard_state
            self._unsaved_hard_state = None
            if core.role is Role.LEADER or rd.snapshot is not None or self._disk_jobs:
                # The leader's own write is off the critical path (its appends
                # already left), so the loop keeps serving while it runs.
                await self.run_on_disk(self._persist, rd, hard_state, True)
            else:
                # A follower's acknowledgement waits for this write and the
                # leader waits for the acknowledgement: written on the loop,
                # it saves two thread hand-offs per append on the critical
                # path (what arrives meanwhile joins the next turn). Only when
                # the disk thread is idle: the store is not shared between
                # threads.
                self._persist(rd, hard_state, True)
        elif rd.hard_state is not None:
            # Only the commit index moved. It is safe to lose (a restarted node
            # learns it again), so it waits for the next save instead of
            # costing a disk job (two thread hand-offs) per write: 1.36 ->
            # 1.24 ms p50 for one in-process writer (ramraft bench --mode
            # inproc-write --in-flight 1, four alternating runs).
            if self._unsaved_hard_state is None:
                self._unsaved_since = time.monotonic()
            self._unsaved_hard_state = rd.hard_state
        if messages:
            self.transport.send(messages)
            if rd.committed_entries and core.role is not Role.LEADER:
                # A follower's acknowledgement leaves before it applies what
                # this Ready commits: the peer link's task writes it in this
                # turn of the event loop, not after the whole batch is
                # applied (0.84 ms at 64 writes in flight, traced), and the
                # leader's commit waits for it.
                await asyncio.sleep(0)
        for entry in rd.entries:
            if entry.kind == EntryKind.CONF_CHANGE:
                self.peers.note_conf_entry(entry)  # reach a new member as soon as it is in the log
        if rd.snapshot is not None:
            await self.snapshotting.install(rd.snapshot.meta.index)
        halted_at = 0
        for entry in rd.committed_entries:
            try:
                self._apply(entry)
            except ApplyHalted as e:
                halted_at = entry.index
                self._halt(ApplyHalted(entry.index, e.reason))
                break
        if rd.committed_entries and self.listeners:
            # One event per batch (no-ops, which carry no data, not counted).
            applied = sum(1 for e in rd.committed_entries if e.data)
            if applied:
                self.emit("applied", {"entries": applied})
        for rs in rd.read_states:
            fut = self._reads.pop(rs.context, None)
            if fut is not None and not fut.done():
                heapq.heappush(self._read_wait, (rs.index, next(self._read_seq), fut))
        for context in rd.dropped_reads:
            fut = self._reads.pop(context, None)
            if fut is not None and not fut.done():
                fut.set_exception(Unavailable("leadership changed while confirming the read"))
        if halted_at:
            core.advance(rd, applied_through=halted_at - 1)
            core.halt_apply(halted_at)
        else:
            core.advance(rd)
        if rd.committed_entries or rd.snapshot is not None:
            self._applied_event.set()
        self._release_reads()
        if rd.soft_state is not None:
            self._on_soft_state(core)

    def _must_sync(self, hard_state: HardState | None) -> bool:
        """A new term or vote must be on disk before anything depends on it;
        a new commit index alone need not."""
        if hard_state is None:
            return False
        synced = self._synced_hard_state
        return hard_state.term != synced.term or hard_state.vote != synced.vote

    def run_on_disk(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``fn`` on the disk thread, counting the jobs not finished yet."""
        fut = asyncio.get_running_loop().run_in_executor(self._disk, fn, *args)
        self._disk_jobs += 1
        fut.add_done_callback(self._disk_job_done)
        return fut

    def _disk_job_done(self, fut: asyncio.Future[Any]) -> None:
        self._disk_jobs -= 1

    def _background_persist_done(self, fut: asyncio.Future[None]) -> None:
        error = fut.exception()
        if error is not None and self.failed is None:
            self._stop_on_failure(error)

    def _save_commit_later(self) -> None:
        """Write a commit index that has waited a tick for another save
        (see ``_handle_ready``), in the background: an idle node's log still
        records how far it committed, which a restart then applies at once."""
        hard_state = self._unsaved_hard_state
        waited = time.monotonic() - self._unsaved_since
        if hard_state is None or waited < self.config.tick_ms / 1000:
            return
        self._unsaved_hard_state = None
        background = self.run_on_disk(self._save_commit, hard_state)
        background.add_done_callback(self._background_persist_done)

    def _save_commit(self, hard_state: HardState) -> None:
        """Write a commit index alone, unsynced (it is only a hint; the
        next synced save makes it durable)."""
        self.log_store.save(hard_state=hard_state, sync=False)

    def _persist(self, rd: Ready, hard_state: HardState | None, sync: bool) -> None:
        started = time.perf_counter()
        self.log_store.save(
            snapshot=rd.snapshot.meta if rd.snapshot is not None else None,
            entries=rd.entries,
            hard_state=hard_state,
            sync=sync and self.config.fsync,
        )
        if hard_state is not None and sync:
            self._synced_hard_state = hard_state
        if self.listeners:
            self.emit(
                "fsync", {"seconds": time.perf_counter() - started, "entries": len(rd.entries)}
            )

    def _apply(self, entry: Entry) -> None:
        result: object = None
        if entry.kind == EntryKind.CONF_CHANGE:
            self.peers.note_conf_entry(entry)
            self.machine.apply(entry.index, b"")  # keeps the machine's applied index in step
        else:
            result = self.machine.apply(entry.index, entry.data)
            self.snapshotting.note_applied(len(entry.data))
        waiting = self._waiting_writes.pop(entry.index, None)
        if waiting is None or waiting[1].done():
            return
        term, fut = waiting
        if entry.term == term:
            fut.set_result((entry.index, result))
        else:
            fut.set_exception(
                Unavailable("leadership changed before the write committed; retry it")
            )

    def _release_reads(self) -> None:
        applied = self.machine.applied_index
        while self._read_wait and self._read_wait[0][0] <= applied:
            _, _, fut = heapq.heappop(self._read_wait)
            if not fut.done():
                fut.set_result(applied)

    def _on_soft_state(self, core: RaftNode) -> None:
        self._leader_event.set()
        self._leader_changes.append(LeaderChange(time.time(), core.term, core.leader))
        del self._leader_changes[:-50]
        log.info("role_changed", role=core.role.value, term=core.term, leader=core.leader or None)
        self.emit("role", {"role": core.role, "leader": core.leader, "term": core.term})

    def emit(self, event: str, fields: dict[str, Any]) -> None:
        """Tell the metrics hooks (``listeners``)."""
        for listener in self.listeners:
            listener(event, fields)

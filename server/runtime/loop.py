"""The node runtime: one asyncio task owns the Raft core.

Everything that touches the core -- peer messages, client proposals, reads,
clock ticks, admin requests -- is queued and wakes the loop task. Each turn
of the loop drains *all* of it, steps it into the core, then handles the
core's Ready in the order the core demands (consensus/types.py, Ready):

1. persist snapshot marker, entries and hard state: one ``save()``, one
   fsync, in the disk thread (the event loop keeps accepting requests,
   which pile up for the next turn: group commit);
2. send the messages (one coalesced write per peer, server/transport.py);
3. install a snapshot received from the leader, apply committed entries to
   the state machine, resolve the futures of the writes they complete;
4. release linearizable reads whose read index is now applied; ``advance``.

A write's future resolves only once its entry is applied here, with the
term it was proposed in (the same index with another term means a new
leader overwrote it: the client is told to retry, and its session makes the
retry safe).

If the disk fails, the runtime stops: it never acknowledges what it could
not sync, and every request gets UNAVAILABLE with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import heapq
import itertools
import json
import random
import struct
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from ramraft.consensus import (
    NO_NODE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Message,
    MsgType,
    NotLeaderError,
    ProposalDroppedError,
    RaftError,
    RaftNode,
    Ready,
    Role,
    SnapshotMeta,
)
from ramraft.consensus.raft import Config
from ramraft.server.config import NodeConfig
from ramraft.server.logs import RateLimitedLog
from ramraft.server.machines.statemachine import ReadableStream, StateMachine
from ramraft.server.storage import LogStore, SnapshotStore, StorageError

log = structlog.get_logger("ramraft.runtime")
T = TypeVar("T")

SNAPSHOT_MAGIC = b"RRSNAP01"
# Messages whose sending does not depend on the sender's pending disk write.
_SEND_BEFORE_PERSIST = frozenset(
    {MsgType.APPEND, MsgType.HEARTBEAT, MsgType.SNAPSHOT, MsgType.TIMEOUT_NOW}
)


class RuntimeError_(Exception):
    """Base of the errors the runtime gives its callers."""


class NotLeader(RuntimeError_):
    def __init__(self, leader: str, leader_address: str = "") -> None:
        super().__init__(f"not the leader (leader: {leader or 'unknown'})")
        self.leader = leader
        self.leader_address = leader_address


class Unavailable(RuntimeError_):
    """The request could not be served now; the client may retry (a write
    that failed this way may or may not have been applied)."""


class Overloaded(RuntimeError_):
    """Too many requests are waiting; refused at once instead of queued."""


class InvalidRequest(RuntimeError_):
    """A request that can never succeed as asked (unknown member...)."""


@dataclass
class MemberStatus:
    id: str
    address: str
    voter: bool
    match_index: int
    lag: int
    active: bool


# ---- what a snapshot file holds besides the state machine ------------------------------------


def write_snapshot_header(stream: Any, addresses: dict[str, str]) -> None:
    body = json.dumps({"addresses": addresses}, sort_keys=True).encode()
    stream.write(SNAPSHOT_MAGIC + struct.pack("<I", len(body)) + body)


def read_snapshot_header(stream: ReadableStream) -> dict[str, str]:
    head = _read_exact(stream, len(SNAPSHOT_MAGIC) + 4)
    if head[: len(SNAPSHOT_MAGIC)] != SNAPSHOT_MAGIC:
        raise StorageError("snapshot data does not start with the ramraft header")
    (length,) = struct.unpack("<I", head[len(SNAPSHOT_MAGIC) :])
    if length > 64 << 20:
        raise StorageError(f"snapshot header of {length} bytes is implausible")
    body = json.loads(_read_exact(stream, length))
    addresses = body.get("addresses", {})
    if not isinstance(addresses, dict):
        raise StorageError("snapshot header: addresses is not a mapping")
    return {str(k): str(v) for k, v in addresses.items()}


def _read_exact(stream: ReadableStream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        piece = stream.read(n - len(data))
        if not piece:
            raise StorageError(f"snapshot data ends after {len(data)} of {n} header bytes")
        data += piece
    return data


# ---- the runtime ------------------------------------------------------------------------------


class RaftRuntime:
    def __init__(
        self,
        config: NodeConfig,
        machine: StateMachine,
        log_store: LogStore,
        snapshots: SnapshotStore,
    ) -> None:
        self.config = config
        self.id = config.node_id
        self.machine = machine
        self.log_store = log_store
        self.snapshots = snapshots
        self.addresses: dict[str, str] = dict(config.peers)
        self.core: RaftNode | None = None
        self.transport: Any = None  # PeerTransport, set by the node before start()
        self.failed: BaseException | None = None
        self.stopping = False

        self._disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ramraft-disk")
        self._disk_jobs = 0  # submitted to _disk and not finished (see _on_disk)
        self._wake = asyncio.Event()
        self._inbox: list[Message] = []
        self._proposals: list[tuple[bytes, asyncio.Future[tuple[int, object]]]] = []
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
        self._snapshot_task: asyncio.Task[SnapshotMeta] | None = None
        self._bytes_since_snapshot = 0
        self._synced_hard_state = HardState()  # the newest term/vote known durable
        self._tasks: list[asyncio.Task[Any]] = []
        self.leader_changes: list[tuple[float, int, str]] = []  # (unix time, term, leader)
        # Metrics hooks: (event, fields) for "proposed", "proposals_dropped",
        # "fsync", "applied", "role", "snapshot", "snapshot_installed".
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []
        self.last_heartbeat = 0.0
        # Members removed by a REMOVE entry this node has seen (the peer
        # identity check refuses them even if --peer-id-pattern matches).
        self.removed_members: set[str] = set()
        self.refusals = RateLimitedLog()
        self._rejected_seen = 0

    # ---- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        state = await loop.run_in_executor(self._disk, self.log_store.load)
        self._synced_hard_state = state.hard_state
        if state.snapshot is not None:
            await asyncio.to_thread(self._restore_from_store, state.snapshot.index)
        bootstrap = None if self.config.join else ConfState(frozenset(self.config.peers))
        core_config = Config(
            id=self.id,
            rng=random.Random(),
            election_tick=self.config.election_ticks,
            heartbeat_tick=self.config.heartbeat_ticks,
            # Uncommitted proposals are RAM too: refuse more than this.
            max_uncommitted_bytes=min(64 << 20, 2 * self.config.snapshot_bytes),
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
                self._note_conf_entry(entry)
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
        if self._snapshot_task is not None:
            self._snapshot_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._snapshot_task
        self._fail_everything(Unavailable("the node is shutting down"))
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
        address = self.addresses.get(self.leader, "")
        return self.config.client_address_of(address) if address else ""

    def is_member(self, node_id: str) -> bool:
        """Whether ``node_id`` may talk to this node as a peer (TLS identity
        check, server/transport.py): a member of the newest configuration in
        our log; one of the initial --peers while we know no configuration
        yet (a joining node); or, unless we saw it removed, an id matching
        --peer-id-pattern (so a member that missed the addition of a new
        member still accepts it as leader)."""
        core = self.core
        members = core.conf.members if core is not None else frozenset()
        if node_id in members:
            return True
        if not members and node_id in self.config.peers:
            return True
        if node_id in self.removed_members or node_id == self.id:
            return False
        patterns = [p for p in self.config.peer_id_pattern.split(",") if p.strip()]
        return any(fnmatch.fnmatchcase(node_id, p.strip()) for p in patterns)

    def pending_requests(self) -> int:
        """Writes and reads this node holds: queued for the next turn, or
        waiting to be committed, confirmed or applied."""
        return (
            len(self._proposals)
            + len(self._read_requests)
            + len(self._waiting_writes)
            + len(self._reads)
            + len(self._read_wait)
        )

    def check_available(self) -> None:
        if self.failed is not None:
            raise Unavailable(f"this node stopped after a storage failure: {self.failed}")
        if self.stopping:
            raise Unavailable("this node is shutting down")
        if self.pending_requests() >= self.config.limits.max_pending_requests:
            raise Overloaded(
                f"{self.config.limits.max_pending_requests} requests are waiting on this node "
                "already; retry later"
            )

    async def propose(self, command: bytes) -> tuple[int, object]:
        """Replicate ``command``; returns (index, state machine result) once
        it is applied here. Raises NotLeader on a follower (the caller
        forwards), Unavailable if leadership is lost before it commits."""
        self.check_available()
        if self.core is not None and self.core.role != Role.LEADER:
            raise NotLeader(self.leader, self.leader_client_address())
        fut: asyncio.Future[tuple[int, object]] = asyncio.get_running_loop().create_future()
        self._proposals.append((command, fut))
        self._wake.set()
        return await fut

    async def read_index(self) -> int:
        """Confirm a linearizable read (thesis 6.4); returns once the state
        machine has applied the read index, so reading it now is
        linearizable. Works on followers too (the leader is asked)."""
        self.check_available()
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._read_requests.append((next(self._read_ids).to_bytes(8, "big"), fut))
        self._wake.set()
        return await fut

    async def call(self, fn: Callable[[RaftNode], T]) -> T:
        """Run ``fn(core)`` inside the loop, between turns."""
        if self.failed is not None:
            raise Unavailable(f"this node stopped after a storage failure: {self.failed}")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._calls.append((fn, fut))
        self._wake.set()
        return await fut

    def receive(self, messages: list[Message]) -> None:
        """Messages from peers (transport); stepped on the next turn."""
        self._inbox.extend(messages)
        self._wake.set()

    def report_unreachable(self, peer: str) -> None:
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

    # ---- admin --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        core = self.core
        if core is None:
            return {"id": self.id, "role": "starting"}
        return {
            "id": self.id,
            "address": self.addresses.get(self.id, ""),
            "role": core.role.value,
            "term": core.term,
            "leader": core.leader,
            "leader_address": self.leader_client_address(),
            "commit_index": core.commit_index,
            "applied_index": self.machine.applied_index,
            "last_index": core.last_index,
            "snapshot_index": core.latest_snapshot.index,
            "first_index": core.log.first_index,
            "failed": str(self.failed) if self.failed else "",
        }

    def members(self) -> list[MemberStatus]:
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
                MemberStatus(
                    id=member,
                    address=self.addresses.get(member, ""),
                    voter=member in conf.voters,
                    match_index=match,
                    lag=max(0, core.last_index - match) if pr is not None else 0,
                    active=bool(pr.recent_active) if pr is not None else False,
                )
            )
        return out

    async def transfer_leadership(self, target: str = "", timeout: float = 5.0) -> str:
        """Hand leadership to ``target`` (default: the most caught-up voter)
        and wait until someone else leads. Returns the new leader."""

        def start(core: RaftNode) -> str:
            if core.role != Role.LEADER:
                raise NotLeader(core.leader, self.leader_client_address())
            chosen = target or self._best_transfer_target(core)
            if not chosen:
                raise InvalidRequest("no other voter to hand leadership to")
            core.transfer_leadership(chosen)
            return chosen

        chosen = await self.call(start)
        if chosen == self.id:
            return self.id
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.leader and self.leader != self.id:
                return self.leader
            self._leader_event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._leader_event.wait(), 0.05)
        raise Unavailable(f"leadership transfer to {chosen} did not complete in {timeout}s")

    @staticmethod
    def _best_transfer_target(core: RaftNode) -> str:
        candidates = [
            (pr.match, peer)
            for peer, pr in core.progress.items()
            if peer != core.id and peer in core.conf.voters
        ]
        return max(candidates)[1] if candidates else ""

    async def change_membership(self, change: ConfChange) -> int:
        """Propose one membership change and wait until it is applied here."""
        self.check_available()

        def propose(core: RaftNode) -> tuple[int, int]:
            if core.role != Role.LEADER:
                raise NotLeader(core.leader, self.leader_client_address())
            return core.propose_conf_change(change), core.term

        index, term = await self.call(propose)
        fut: asyncio.Future[tuple[int, object]] = asyncio.get_running_loop().create_future()
        self._waiting_writes[index] = (term, fut)
        await fut
        return index

    async def add_member(self, node_id: str, address: str, timeout: float = 30.0) -> None:
        """Thesis 4.2.1: join as a learner, catch up, then become a voter."""
        deadline = time.monotonic() + timeout
        conf = self.core.conf if self.core else ConfState()
        if node_id not in conf.members:
            await self.change_membership(
                ConfChange(ConfChangeType.ADD_LEARNER, node_id, context=address.encode())
            )
        while True:
            core = self.core
            assert core is not None
            if node_id in core.conf.voters:
                return
            try:
                await self.change_membership(ConfChange(ConfChangeType.PROMOTE, node_id))
                return
            except RaftError as e:
                if time.monotonic() > deadline:
                    raise Unavailable(f"{node_id} did not catch up in {timeout}s: {e}") from e
                await asyncio.sleep(self.config.tick_ms / 1000)

    async def remove_member(self, node_id: str) -> None:
        core = self.core
        if core is not None and node_id not in core.conf.members:
            return  # already gone: removing is idempotent for retrying clients
        await self.change_membership(ConfChange(ConfChangeType.REMOVE, node_id))

    async def snapshot_now(self) -> int:
        """Take a snapshot at the applied index now; returns its index."""
        if self._snapshot_task is None or self._snapshot_task.done():
            self._start_snapshot()
        assert self._snapshot_task is not None
        meta = await asyncio.shield(self._snapshot_task)
        return meta.index

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
            elapsed = int((loop.time() - next_at) / interval) + 1
            next_at += elapsed * interval
            self._ticks += elapsed
            self._wake.set()

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
                self._maybe_snapshot(core)
        except asyncio.CancelledError:
            raise
        except StorageError as e:
            self._stop_on_failure(e)
        except Exception as e:
            log.exception("raft_loop_crashed")
            self._stop_on_failure(e)

    def _stop_on_failure(self, error: BaseException) -> None:
        self.failed = error
        log.error(
            "node_stopped_writes",
            reason=str(error),
            action="the node refuses requests until restarted; check the disk, then restart it",
        )
        self._fail_everything(Unavailable(f"this node stopped after a storage failure: {error}"))
        if self.transport is not None:
            self.transport.send = lambda messages: None  # never send what we could not persist

    def _fail_everything(self, error: BaseException) -> None:
        futures: list[asyncio.Future[Any]] = [f for _, f in self._proposals]
        futures += [f for _, f in self._read_requests]
        futures += [f for _, f in self._waiting_writes.values()]
        futures += list(self._reads.values())
        futures += [f for _, _, f in self._read_wait]
        futures += [f for _, f in self._calls if f is not None]
        for fut in futures:
            if not fut.done():
                fut.set_exception(error)
        self._proposals, self._read_requests, self._calls = [], [], []
        self._waiting_writes.clear()
        self._reads.clear()
        self._read_wait.clear()

    def _feed(self, core: RaftNode) -> None:
        """Step everything that arrived since the last turn into the core."""
        if self._inbox:
            inbox, self._inbox = self._inbox, []
            for m in inbox:
                if m.dst == self.id:
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
        if self._proposals:
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
        if not proposals:
            return
        try:
            first = core.propose_batch([command for command, _ in proposals])
        except NotLeaderError:
            error: Exception = NotLeader(core.leader, self.leader_client_address())
        except ProposalDroppedError as e:
            error = Unavailable(str(e))
        else:
            term = core.term
            for n, (_, fut) in enumerate(proposals):
                self._waiting_writes[first + n] = (term, fut)
            if self.listeners:
                self._emit("proposed", {"entries": len(proposals)})
            return
        if self.listeners:
            self._emit("proposals_dropped", {"entries": len(proposals)})
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
            if core.role == Role.LEADER or rd.snapshot is not None or self._disk_jobs:
                # The leader's own write is off the critical path (its appends
                # already left), so the loop keeps serving while it runs.
                await self._on_disk(self._persist, rd, True)
            else:
                # A follower's acknowledgement waits for this write and the
                # leader waits for the acknowledgement: written on the loop,
                # it saves two thread hand-offs per append on the critical
                # path (what arrives meanwhile joins the next turn). Only when
                # the disk thread is idle: the store is not shared between
                # threads.
                self._persist(rd, True)
        elif rd.hard_state is not None:
            # Only the commit index moved. It is safe to lose (a restarted node
            # learns it again), so it is written without waiting for the disk;
            # the single disk thread keeps writes in order.
            background = self._on_disk(self._persist, rd, False)
            background.add_done_callback(self._background_persist_done)
        if messages:
            self.transport.send(messages)
        for entry in rd.entries:
            if entry.kind == EntryKind.CONF_CHANGE:
                self._note_conf_entry(entry)  # reach a new member as soon as it is in the log
        if rd.snapshot is not None:
            if getattr(self.machine, "restore_in_thread", False):
                # The machine builds the new state aside and swaps it in at
                # the end, so reads on the loop meanwhile see the old state.
                await asyncio.to_thread(self._restore_from_store, rd.snapshot.meta.index)
            else:
                # An application model is restored in place: on the loop, so
                # no page handler ever sees it half restored.
                self._restore_from_store(rd.snapshot.meta.index)
            self._emit("snapshot_installed", {"index": rd.snapshot.meta.index})
        for entry in rd.committed_entries:
            self._apply(entry)
        if rd.committed_entries and self.listeners:
            # One event per batch (no-ops, which carry no data, not counted).
            applied = sum(1 for e in rd.committed_entries if e.data)
            if applied:
                self._emit("applied", {"entries": applied})
        for rs in rd.read_states:
            fut = self._reads.pop(rs.context, None)
            if fut is not None and not fut.done():
                heapq.heappush(self._read_wait, (rs.index, next(self._read_seq), fut))
        for context in rd.dropped_reads:
            fut = self._reads.pop(context, None)
            if fut is not None and not fut.done():
                fut.set_exception(Unavailable("leadership changed while confirming the read"))
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

    def _on_disk(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
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

    def _persist(self, rd: Ready, sync: bool) -> None:
        started = time.perf_counter()
        self.log_store.save(
            snapshot=rd.snapshot.meta if rd.snapshot is not None else None,
            entries=rd.entries,
            hard_state=rd.hard_state,
            sync=sync and self.config.fsync,
        )
        if rd.hard_state is not None and sync:
            self._synced_hard_state = rd.hard_state
        if self.listeners:
            self._emit(
                "fsync", {"seconds": time.perf_counter() - started, "entries": len(rd.entries)}
            )

    def _apply(self, entry: Entry) -> None:
        result: object = None
        if entry.kind == EntryKind.CONF_CHANGE:
            self._note_conf_entry(entry)
            self.machine.apply(entry.index, b"")  # keeps the machine's applied index in step
        else:
            result = self.machine.apply(entry.index, entry.data)
            self._bytes_since_snapshot += len(entry.data)
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
        self.leader_changes.append((time.time(), core.term, core.leader))
        del self.leader_changes[:-50]
        log.info("role_changed", role=core.role.value, term=core.term, leader=core.leader or None)
        self._emit("role", {"role": core.role.value, "leader": core.leader, "term": core.term})

    def _note_conf_entry(self, entry: Entry) -> None:
        try:
            change = ConfChange.decode(entry.data)
        except ValueError:
            return
        if change.type == ConfChangeType.ADD_LEARNER:
            self.removed_members.discard(change.node_id)
            if change.context:
                self.addresses[change.node_id] = change.context.decode(errors="replace")
        elif change.type == ConfChangeType.REMOVE:
            self.removed_members.add(change.node_id)

    def _emit(self, event: str, fields: dict[str, Any]) -> None:
        for listener in self.listeners:
            listener(event, fields)

    # ---- snapshots --------------------------------------------------------------------------

    def _restore_from_store(self, index: int) -> None:
        """Replace the state machine by the stored snapshot at ``index``."""
        with self.snapshots.open(index) as reader:
            addresses = read_snapshot_header(reader)
            self.machine.restore(reader)
        for node_id, address in addresses.items():
            self.addresses.setdefault(node_id, address)
        log.info("snapshot_restored", index=index, applied=self.machine.applied_index)

    def _maybe_snapshot(self, core: RaftNode) -> None:
        """Snapshot after snapshot_entries entries or snapshot_bytes bytes of
        commands, whichever comes first: the log lives in RAM until a
        snapshot lets it be dropped, so a count alone would let large values
        exhaust memory."""
        due = (
            core.applied_index - core.latest_snapshot.index >= self.config.snapshot_entries
            or self._bytes_since_snapshot >= self.config.snapshot_bytes
        )
        if due and (self._snapshot_task is None or self._snapshot_task.done()) and not self.failed:
            self._start_snapshot()

    def _retain(self, core: RaftNode, meta: SnapshotMeta) -> int:
        """How many entries before the snapshot to keep in RAM for slow
        followers: retain_entries, but no more than retain_bytes of them."""
        budget = self.config.retain_bytes
        kept = 0
        index = meta.index
        while kept < self.config.retain_entries and index > core.log.offset:
            budget -= len(core.log.entries[index - core.log.offset - 1].data)
            if budget < 0:
                break
            kept += 1
            index -= 1
        return kept

    def _start_snapshot(self) -> None:
        core = self.core
        assert core is not None
        meta = core.snapshot_meta(core.applied_index)
        job = self.machine.snapshot()  # a consistent view, taken now, on the loop
        self._bytes_since_snapshot = 0
        addresses = dict(self.addresses)
        started = time.perf_counter()

        def write() -> int:
            try:
                with self.snapshots.create(meta) as writer:
                    write_snapshot_header(writer, addresses)
                    size = job.write_to(writer)
                    writer.commit()
                return size
            finally:
                job.close()

        async def run() -> SnapshotMeta:
            size = await asyncio.to_thread(write)
            await self.call(
                lambda core: core.compact(meta, retain_entries=self._retain(core, meta))
            )
            await self._on_disk(self.log_store.compact, meta.index)
            seconds = time.perf_counter() - started
            log.info("snapshot_taken", index=meta.index, bytes=size, seconds=round(seconds, 3))
            self._emit("snapshot", {"index": meta.index, "bytes": size, "seconds": seconds})
            return meta

        self._snapshot_task = asyncio.get_running_loop().create_task(run(), name="snapshot")

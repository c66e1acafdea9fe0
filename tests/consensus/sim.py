"""A deterministic simulation of a Raft cluster built from real cores.

Everything non-deterministic is driven by one seeded ``random.Random``: the
virtual clock, message delays, drops, duplicates and reordering, partitions
(symmetric and one-way), crashes that keep only what a Ready asked to
persist, snapshots, membership changes, leadership transfers and client
operations. The same seed replays the same run, step by step.

After every step the checkers (``Checker``) assert election safety, log
matching, leader completeness, state-machine safety, the core's own
invariants, and that every read saw every write and read that completed
before it began. A violation raises ``SimulationFailure`` naming the seed and
step; ``SEED=<seed> python -m pytest tests/consensus/test_simulation.py``
replays it.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ramraft.consensus import (
    ConfChange,
    ConfChangeError,
    ConfChangeType,
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
    SnapshotMeta,
)
from ramraft.consensus.raft import Config, LeadershipTransferError

TICK_MS = 10


class SimulationFailure(AssertionError):
    pass


@dataclass(frozen=True)
class FaultProfile:
    """How hostile one run is. Drawn per seed so the seeds cover calm and
    stormy networks alike."""

    drop: float
    duplicate: float
    reorder: float
    long_delay: float
    max_delay_ms: int
    crash: float
    takeover_crash: float  # chance that a new leader dies during its takeover
    pause: float
    partition: float
    membership: float
    transfer: float
    snapshot_every: int
    client_rate: float

    @staticmethod
    def draw(rng: random.Random) -> FaultProfile:
        return FaultProfile(
            drop=rng.choice([0.0, 0.01, 0.05, 0.15]),
            duplicate=rng.choice([0.0, 0.02, 0.1]),
            reorder=rng.choice([0.0, 0.01, 0.1, 0.5]),
            long_delay=rng.choice([0.0, 0.05, 0.2]),
            max_delay_ms=rng.choice([2, 8, 30]),
            crash=rng.choice([0.0, 0.002, 0.006]),
            takeover_crash=rng.choice([0.0, 0.1, 0.5]),
            pause=rng.choice([0.0, 0.002, 0.006]),
            partition=rng.choice([0.0, 0.003, 0.01]),
            membership=rng.choice([0.0, 0.002, 0.01]),
            transfer=rng.choice([0.0, 0.001, 0.004]),
            snapshot_every=rng.choice([5, 20, 100]),
            client_rate=rng.choice([0.1, 0.3, 0.6]),
        )


# ---- the disk, the state machine, the clients ------------------------------------------------


@dataclass
class Disk:
    hard_state: HardState = field(default_factory=HardState)
    snapshot: SnapshotMeta | None = None
    snapshot_data: Any = None
    entries: list[Entry] = field(default_factory=list)

    def persist(self, rd: Ready) -> None:
        """Ready step 1: snapshot, entries, hard state, atomically."""
        if rd.snapshot is not None:
            self.snapshot = rd.snapshot.meta
            self.snapshot_data = rd.snapshot.data
            self.entries = []
        if rd.entries:
            first = rd.entries[0].index
            if self.entries and self.entries[0].index <= first:
                del self.entries[first - self.entries[0].index :]
            elif self.entries:
                self.entries = []
            self.entries.extend(rd.entries)
        if rd.hard_state is not None:
            self.hard_state = rd.hard_state


@dataclass
class Operation:
    op_id: int
    kind: str  # "write" or "read"
    key: str
    node: str
    invoked_ms: int
    floor: int  # highest version of this key seen by any op completed before this one began
    value: str = ""
    outcome: str = "pending"  # ok, failed, unknown
    version: int = 0  # write: its log index; read: the index of the write it saw (0: none)
    completed_ms: int = 0


@dataclass
class KVMachine:
    """key -> (value, index of the write that set it)."""

    data: dict[str, tuple[str, int]] = field(default_factory=dict)

    def apply(self, entry: Entry) -> str | None:
        """Returns the op id of a client write, if the entry is one."""
        if entry.kind != EntryKind.NORMAL or not entry.data:
            return None
        _, op_id, key, value = entry.data.decode().split(":", 3)
        self.data[key] = (value, entry.index)
        return op_id


# ---- one simulated server -------------------------------------------------------------------


class SimNode:
    def __init__(self, node_id: str, sim: Simulation) -> None:
        self.id = node_id
        self.sim = sim
        self.disk = Disk()
        self.raft: RaftNode | None = None
        self.incarnation = 0
        self.kv = KVMachine()
        self.ready_scheduled = False
        # A stopped process (SIGSTOP, a long GC pause): nothing happens on the
        # node until then, and what arrived meanwhile is handled in a burst.
        self.paused_until = 0
        # Client operations this incarnation is serving.
        self.writes: dict[int, tuple[int, Operation]] = {}  # index -> (term, op)
        self.reads: dict[bytes, Operation] = {}
        self.reads_waiting: list[tuple[int, Operation]] = []  # (read index, op)
        self.start()

    @property
    def alive(self) -> bool:
        return self.raft is not None

    def start(self) -> None:
        self.incarnation += 1
        disk = self.disk
        snapshot = disk.snapshot
        entries = [e for e in disk.entries if snapshot is None or e.index > snapshot.index]
        config = Config(
            id=self.id,
            rng=random.Random(self.sim.rng.random()),
            election_tick=10,
            heartbeat_tick=1,
            max_msg_bytes=self.sim.rng.choice([64, 1 << 20]),
            max_inflight_msgs=self.sim.rng.choice([1, 4, 64]),
            max_learner_lag=self.sim.rng.choice([10, 1000]),
        )
        self.raft = RaftNode(
            config,
            hard_state=disk.hard_state,
            snapshot=snapshot,
            entries=entries,
            bootstrap=self.sim.bootstrap,
        )
        self.kv = KVMachine(dict(disk.snapshot_data) if disk.snapshot_data is not None else {})
        self.sim.checker.node_started(self)

    def crash(self) -> None:
        self.raft = None
        self.ready_scheduled = False
        for _, op in self.writes.values():
            self.sim.complete(op, "unknown")
        for op in list(self.reads.values()) + [op for _, op in self.reads_waiting]:
            self.sim.complete(op, "failed")
        self.writes.clear()
        self.reads.clear()
        self.reads_waiting.clear()

    def log_view(self) -> tuple[Callable[[int, int], bool], int, int]:
        """(has(index, term), last term, last index) of the log this server
        would campaign or vote with: its live log, or its disk when down."""
        raft = self.raft
        if raft is not None:
            log = raft.log

            def has_live(index: int, term: int) -> bool:
                return index <= log.offset or log.term(index) == term

            return has_live, log.last_term, log.last_index
        disk = self.disk
        base = disk.snapshot.index if disk.snapshot else 0
        base_term = disk.snapshot.term if disk.snapshot else 0
        entries = [e for e in disk.entries if e.index > base]
        by_index = {e.index: e.term for e in entries}

        def has_disk(index: int, term: int) -> bool:
            return index <= base or by_index.get(index) == term

        if entries:
            return has_disk, entries[-1].term, entries[-1].index
        return has_disk, base_term, base

    def handle_ready(self) -> None:
        raft = self.raft
        assert raft is not None
        self.ready_scheduled = False
        while raft.has_ready():
            rd = raft.ready()
            self.sim.checker.on_ready(self, rd)
            self.disk.persist(rd)
            if self.sim.crash_after_persist(self, rd):
                # Died between the fsync and the sends: what it wrote is on
                # disk, but nobody heard of it (paper Figure 8's S5).
                self.crash()
                self.sim.at(self.sim.now + self.sim.rng.randint(20, 600), "restart", self.id)
                return
            for m in rd.messages:
                if m.type == MsgType.SNAPSHOT:
                    assert m.snapshot == self.disk.snapshot, "sending a snapshot we do not hold"
                    m = replace(m, snapshot_data=self.disk.snapshot_data)
                self.sim.network.send(m)
            if rd.snapshot is not None:
                self.kv = KVMachine(dict(rd.snapshot.data))
            for entry in rd.committed_entries:
                self.apply(entry)
            for rs in rd.read_states:
                op = self.reads.pop(rs.context, None)
                if op is not None:
                    self.reads_waiting.append((rs.index, op))
            for context in rd.dropped_reads:
                op = self.reads.pop(context, None)
                if op is not None:
                    self.sim.complete(op, "failed")
            raft.advance(rd)
            last_applied = rd.committed_entries[-1].index if rd.committed_entries else 0
            self.serve_reads(max(last_applied, raft.applied_index))
            raft.check_invariants()
        self.maybe_snapshot()

    def apply(self, entry: Entry) -> None:
        self.sim.checker.on_apply(self, entry)
        op_id = self.kv.apply(entry)
        waiting = self.writes.pop(entry.index, None)
        if waiting is not None:
            term, op = waiting
            if entry.term == term:
                self.sim.complete(op, "ok", version=entry.index)
            else:
                self.sim.complete(op, "failed")  # overwritten: never committed
        if op_id is not None:
            self.sim.checker.on_write_applied(int(op_id))

    def serve_reads(self, applied: int) -> None:
        still = []
        for index, op in self.reads_waiting:
            if applied >= index:
                value, version = self.kv.data.get(op.key, ("", 0))
                op.value = value
                self.sim.complete(op, "ok", version=version)
            else:
                still.append((index, op))
        self.reads_waiting = still

    def maybe_snapshot(self) -> None:
        raft = self.raft
        assert raft is not None
        if raft.applied_index - raft.latest_snapshot.index < self.sim.faults.snapshot_every:
            return
        meta = raft.snapshot_meta(raft.applied_index)
        self.disk.snapshot = meta
        self.disk.snapshot_data = dict(self.kv.data)
        self.disk.entries = [e for e in self.disk.entries if e.index > meta.index]
        raft.compact(meta, retain_entries=self.sim.rng.choice([0, 0, 3, 50]))

    def step(self, m: Message) -> None:
        assert self.raft is not None
        self.raft.step(m)
        self.sim.schedule_ready(self)


# ---- the network ----------------------------------------------------------------------------


class Network:
    """Links are FIFO, like the gRPC stream the transport keeps per peer pair,
    except that a message may overtake others (``reorder``: a reconnect, a
    second stream), be lost, duplicated, or held back (``long_delay``: a
    retransmission, which also holds back what follows on the link)."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.blocked: set[tuple[str, str]] = set()  # (src, dst) pairs that drop everything
        self._link_clear: dict[tuple[str, str], int] = {}  # when the link's last message lands

    def send(self, m: Message) -> None:
        sim, f = self.sim, self.sim.faults
        link = (m.src, m.dst)
        copies = 2 if sim.rng.random() < f.duplicate else 1
        for _ in range(copies):
            at = sim.now + sim.rng.randint(1, f.max_delay_ms)
            if sim.rng.random() < f.long_delay:
                at += sim.rng.randint(20, 200)
            if sim.rng.random() >= f.reorder:
                at = max(at, self._link_clear.get(link, 0))
                self._link_clear[link] = at
            dropped = sim.rng.random() < f.drop or link in self.blocked
            sim.at(at, "deliver", m, dropped)


# ---- the simulation -------------------------------------------------------------------------


class Simulation:
    def __init__(
        self,
        seed: int,
        *,
        nodes: int = 3,
        steps: int = 3000,
        faults: FaultProfile | None = None,
        trace: Callable[[str], None] | None = None,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.faults = faults or FaultProfile.draw(self.rng)
        self.steps = steps
        self.trace = trace
        self.now = 0
        self.step_no = 0
        self._queue: list[tuple[int, int, str, Any, Any]] = []
        self._seq = 0
        self.ids = [f"n{i}" for i in range(1, nodes + 1)]
        self.bootstrap = ConfState(frozenset(self.ids))
        self.checker = Checker(self)
        self.network = Network(self)
        self.nodes: dict[str, SimNode] = {}
        for node_id in self.ids:
            self.nodes[node_id] = SimNode(node_id, self)
            self.at(self.rng.randint(0, TICK_MS), "tick", node_id, 1)
        self.history: list[Operation] = []
        self._next_op = 1
        self.floor: dict[str, int] = {}
        self.partitioned = False
        self.membership_changed = False
        self.stats: dict[str, int] = {}

    # ---- scheduling -------------------------------------------------------------------------

    def at(self, time: int, kind: str, a: Any = None, b: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (time, self._seq, kind, a, b))

    def schedule_ready(self, node: SimNode) -> None:
        if not node.ready_scheduled:
            node.ready_scheduled = True
            self.at(self.now + self.rng.randint(0, 1), "ready", node.id, node.incarnation)

    def count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    # ---- running ----------------------------------------------------------------------------

    def run(self) -> Simulation:
        try:
            for step in range(1, self.steps + 1):
                self.step_no = step
                self.one_step(chaos=True)
            self.settle()
        except SimulationFailure:
            raise
        except Exception as e:
            raise SimulationFailure(
                f"seed {self.seed}: step {self.step_no}: {type(e).__name__}: {e}"
            ) from e
        return self

    def one_step(self, *, chaos: bool) -> None:
        if chaos:
            self.maybe_inject_fault()
            if self.rng.random() < self.faults.client_rate:
                self.client_op()
        while True:
            time, _, kind, a, b = heapq.heappop(self._queue)
            self.now = max(self.now, time)
            target = self._target(kind, a)
            if target is None or target.paused_until <= self.now:
                break
            # The node is stopped: the event waits, and the backlog is
            # handled in a random order when it resumes.
            self.at(target.paused_until + self.rng.randint(0, 3), kind, a, b)
        if self.trace:
            self.trace(f"{self.now:7d} {kind} {a} {b}")
        if kind == "tick":
            node = self.nodes[a]
            if node.alive:
                assert node.raft is not None
                node.raft.tick()
                self.schedule_ready(node)
            # Clocks drift: each node ticks at its own slightly varying pace.
            self.at(self.now + TICK_MS + self.rng.randint(-2, 2), "tick", a)
        elif kind == "ready":
            node = self.nodes[a]
            if node.alive and node.incarnation == b:
                node.handle_ready()
        elif kind == "deliver":
            self.deliver(a, b)
        elif kind == "restart":
            node = self.nodes[a]
            if not node.alive:
                node.start()
                self.schedule_ready(node)
                self.count("restart")
        elif kind == "crash":
            node = self.nodes[a]
            if node.alive and node.incarnation == b:
                node.crash()
                self.count("crash-new-leader")
                self.at(self.now + self.rng.randint(20, 600), "restart", node.id)
        elif kind == "request":
            self.serve_request(a)
        elif kind == "heal":
            self.network.blocked.clear()
            self.partitioned = False
        self.checker.after_step()

    def _target(self, kind: str, a: Any) -> SimNode | None:
        if kind in ("tick", "ready"):
            return self.nodes[a]
        if kind == "deliver":
            return self.nodes.get(a.dst)
        if kind == "request":
            return self.nodes[a.node]
        return None

    def deliver(self, m: Message, dropped: bool) -> None:
        if dropped or (m.src, m.dst) in self.network.blocked:
            self.count("dropped")
            if m.type == MsgType.SNAPSHOT:
                self.report_snapshot(m, ok=False)
            return
        node = self.nodes.get(m.dst)
        if node is None or not node.alive:
            if m.type == MsgType.SNAPSHOT:
                self.report_snapshot(m, ok=False)
            return
        node.step(m)
        if m.type == MsgType.SNAPSHOT:
            self.report_snapshot(m, ok=True)

    def report_snapshot(self, m: Message, ok: bool) -> None:
        sender = self.nodes[m.src]
        if sender.alive:
            assert sender.raft is not None
            sender.raft.report_snapshot(m.dst, ok)
            self.schedule_ready(sender)

    def settle(self, max_virtual_ms: int = 60_000, max_steps: int = 400_000) -> None:
        """Heal everything, restart every node, stop the faults, and check the
        cluster recovers: one leader, and every member applies the same log."""
        self.network.blocked.clear()
        for node in self.nodes.values():
            if not node.alive:
                node.start()
                self.schedule_ready(node)
        saved = self.faults
        self.faults = replace(
            saved, drop=0.0, long_delay=0.0, duplicate=0.0, crash=0.0, takeover_crash=0.0
        )
        start, steps = self.now, 0
        while self.now - start < max_virtual_ms and steps < max_steps:
            self.one_step(chaos=False)
            steps += 1
            if self.converged():
                self.stats["settle-ms"] = self.now - start
                return
        raise SimulationFailure(
            f"seed {self.seed}: no convergence {self.now - start} ms ({steps} steps) after "
            "the faults stopped: " + self.describe()
        )

    def converged(self) -> bool:
        leaders = [n for n in self.nodes.values() if n.raft and n.raft.role == Role.LEADER]
        if len(leaders) != 1:
            return False
        leader = leaders[0].raft
        assert leader is not None
        if leader.log.term(leader.commit_index) != leader.term:
            return False
        for member in leader.conf.members:
            raft = self.nodes[member].raft
            if raft is None or raft.applied_index != leader.last_index:
                return False
        return True

    def describe(self) -> str:
        parts = []
        for node in self.nodes.values():
            r = node.raft
            if r is None:
                parts.append(f"{node.id}: down")
            else:
                parts.append(
                    f"{node.id}: {r.role.value} term={r.term} leader={r.leader or '-'} "
                    f"commit={r.commit_index} applied={r.applied_index} last={r.last_index} "
                    f"voters={sorted(r.conf.voters)} learners={sorted(r.conf.learners)}"
                )
        return "; ".join(parts)

    # ---- faults -----------------------------------------------------------------------------

    def maybe_inject_fault(self) -> None:
        f, rng = self.faults, self.rng
        live = [n for n in self.nodes.values() if n.alive]
        leaders = [n for n in live if n.raft is not None and n.raft.role == Role.LEADER]
        if live and rng.random() < f.crash:
            # Leaders are the interesting victims: half the crashes hit one.
            victim = rng.choice(leaders if leaders and rng.random() < 0.5 else live)
            victim.crash()
            self.count("crash")
            self.at(self.now + rng.randint(20, 600), "restart", victim.id)
        if live and rng.random() < f.pause:
            victim = rng.choice(live)
            if victim.paused_until <= self.now:
                victim.paused_until = self.now + rng.randint(50, 800)
                self.count("pause")
        if not self.partitioned and rng.random() < f.partition:
            self.partition()
        leader = self.leader()
        if leader is not None and rng.random() < f.membership:
            self.change_membership(leader)
        if leader is not None and rng.random() < f.transfer:
            voters = sorted(leader.conf.voters - {leader.id})
            if voters:
                try:
                    leader.transfer_leadership(rng.choice(voters))
                    self.count("transfer")
                except LeadershipTransferError:
                    pass
                self.schedule_ready(self.nodes[leader.id])

    def crash_after_persist(self, node: SimNode, rd: Ready) -> bool:
        """A new leader that dies during its takeover leaves entries of its
        term on its own disk only; with old-term entries on a majority, that
        is how paper Figure 8 arises. Make it common."""
        became_leader = rd.soft_state is not None and rd.soft_state.role == Role.LEADER
        chance = self.faults.takeover_crash if became_leader else self.faults.crash / 20
        if self.rng.random() >= chance:
            return False
        self.count("crash-before-send")
        return True

    def partition(self) -> None:
        rng, ids = self.rng, self.ids
        shape = rng.choice(["isolate", "split", "one-way", "bridge"])
        blocked: set[tuple[str, str]] = set()
        if shape == "isolate":
            leader = self.leader()
            lone = leader.id if leader is not None and rng.random() < 0.5 else rng.choice(ids)
            blocked = {(lone, o) for o in ids if o != lone} | {(o, lone) for o in ids if o != lone}
        elif shape == "split":
            shuffled = rng.sample(ids, len(ids))
            cut = rng.randint(1, len(ids) - 1)
            left, right = shuffled[:cut], shuffled[cut:]
            blocked = {(x, y) for x in left for y in right} | {(y, x) for x in left for y in right}
        elif shape == "one-way":
            src, dst = rng.sample(ids, 2)
            blocked = {(src, o) for o in ids if o != src} if rng.random() < 0.5 else {(src, dst)}
        else:  # a node that sees both sides while the sides cannot see each other
            middle, *rest = rng.sample(ids, len(ids))
            half = len(rest) // 2
            left, right = rest[:half], rest[half:]
            blocked = {(x, y) for x in left for y in right} | {(y, x) for x in left for y in right}
            del middle
        self.network.blocked = blocked
        self.partitioned = True
        self.count(f"partition-{shape}")
        self.at(self.now + rng.randint(50, 1500), "heal")

    def change_membership(self, leader: RaftNode) -> None:
        rng = self.rng
        conf = leader.conf
        outside = [i for i in self.ids if i not in conf.members]
        choices: list[ConfChange] = [ConfChange(ConfChangeType.ADD_LEARNER, i) for i in outside]
        choices += [ConfChange(ConfChangeType.PROMOTE, i) for i in sorted(conf.learners)]
        if len(conf.voters) > 2:
            choices += [ConfChange(ConfChangeType.REMOVE, i) for i in sorted(conf.voters)]
        choices += [ConfChange(ConfChangeType.REMOVE, i) for i in sorted(conf.learners)]
        if not choices:
            return
        change = rng.choice(choices)
        try:
            leader.propose_conf_change(change)
            self.membership_changed = True
            self.count(f"conf-{change.type.name.lower()}")
        except (ConfChangeError, ProposalDroppedError):
            return
        self.schedule_ready(self.nodes[leader.id])

    def leader(self) -> RaftNode | None:
        for node in self.nodes.values():
            if node.raft is not None and node.raft.role == Role.LEADER:
                return node.raft
        return None

    # ---- clients ----------------------------------------------------------------------------

    def client_op(self) -> None:
        rng = self.rng
        live = [n for n in self.nodes.values() if n.alive]
        if not live:
            return
        # Clients favour the node they believe leads, as real ones do.
        leader = self.leader()
        node = self.nodes[leader.id] if leader and rng.random() < 0.7 else rng.choice(live)
        key = f"k{rng.randint(1, 3)}"
        kind = "write" if rng.random() < 0.5 else "read"
        op = Operation(self._next_op, kind, key, node.id, self.now, self.floor.get(key, 0))
        self._next_op += 1
        self.history.append(op)
        self.at(self.now + rng.randint(0, 2), "request", op)

    def serve_request(self, op: Operation) -> None:
        """The request reaches its node (which may have crashed meanwhile)."""
        node = self.nodes[op.node]
        raft = node.raft
        if raft is None:
            self.complete(op, "failed")
            return
        try:
            if op.kind == "write":
                op.value = f"v{op.op_id}"
                data = f"w:{op.op_id}:{op.key}:{op.value}".encode()
                index = raft.propose(data)
                node.writes[index] = (raft.term, op)
            else:
                context = op.op_id.to_bytes(8, "big")
                raft.read_index(context)
                node.reads[context] = op
        except (NotLeaderError, ProposalDroppedError):
            self.complete(op, "failed")
            return
        self.schedule_ready(node)

    def complete(self, op: Operation, outcome: str, version: int = 0) -> None:
        if op.outcome != "pending":
            return
        op.outcome = outcome
        op.completed_ms = self.now
        op.version = version
        self.count(f"{op.kind}-{outcome}")
        if outcome == "failed" and op.kind == "write":
            self.checker.failed_writes.add(op.op_id)
        if outcome == "ok":
            self.checker.on_complete(op)
            self.floor[op.key] = max(self.floor.get(op.key, 0), version)


# ---- the checkers ---------------------------------------------------------------------------


class Checker:
    """Raft's safety properties (paper Figure 3), checked as the run goes."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.leader_of_term: dict[int, str] = {}
        # (index, term) -> (data, kind, term of the previous entry): log matching.
        self.entry_registry: dict[tuple[int, int], tuple[bytes, int, int]] = {}
        # index -> (term, data) of every entry any node applied: state-machine safety.
        self.applied: dict[int, tuple[int, bytes]] = {}
        # index -> the highest term any node had reached when the entry was first
        # applied: the entry was committed in that term or an earlier one.
        self.commit_term_bound: dict[int, int] = {}
        self.max_term = 0
        self.max_applied = 0
        self.write_values: dict[int, str] = {}  # log index -> value a client write stored
        self.failed_writes: set[int] = set()
        self.touched: set[str] = set()

    def fail(self, what: str) -> None:
        raise SimulationFailure(
            f"seed {self.sim.seed}: step {self.sim.step_no} at {self.sim.now} ms: {what}\n"
            f"  cluster: {self.sim.describe()}\n"
            f"  replay: SEED={self.sim.seed} python -m pytest tests/consensus/test_simulation.py"
        )

    def node_started(self, node: SimNode) -> None:
        self.touched.add(node.id)

    def on_ready(self, node: SimNode, rd: Ready) -> None:
        raft = node.raft
        assert raft is not None
        self.touched.add(node.id)
        self.max_term = max(self.max_term, raft.term)
        if rd.entries:
            prev_term = raft.log.term(rd.entries[0].index - 1)
            for entry in rd.entries:
                key = (entry.index, entry.term)
                seen = self.entry_registry.get(key)
                if seen is None:
                    self.entry_registry[key] = (entry.data, entry.kind, prev_term or 0)
                elif seen != (entry.data, entry.kind, prev_term or 0):
                    self.fail(
                        f"log matching: {node.id} holds a different entry at index "
                        f"{entry.index} term {entry.term} (or a different predecessor)"
                    )
                prev_term = entry.term
        if rd.soft_state is not None and rd.soft_state.role == Role.LEADER:
            self.became_leader(node, raft)

    def became_leader(self, node: SimNode, raft: RaftNode) -> None:
        holder = self.leader_of_term.setdefault(raft.term, node.id)
        if holder != node.id:
            self.fail(f"election safety: {holder} and {node.id} both lead term {raft.term}")
        # Leader completeness (paper 5.4): an entry committed in an earlier
        # term is in the log of every leader of a later term. An entry first
        # applied while no node had reached this leader's term was committed
        # before it.
        for index in range(raft.log.offset + 1, self.max_applied + 1):
            if self.commit_term_bound[index] >= raft.term:
                continue
            term, _ = self.applied[index]
            if raft.log.term(index) != term:
                self.fail(
                    f"leader completeness: {node.id} (term {raft.term}) lacks the entry at "
                    f"{index} (term {term}) committed before its term"
                )

    def on_apply(self, node: SimNode, entry: Entry) -> None:
        seen = self.applied.get(entry.index)
        if seen is None:
            self.applied[entry.index] = (entry.term, entry.data)
            self.commit_term_bound[entry.index] = self.max_term
            self.max_applied = max(self.max_applied, entry.index)
            if entry.kind == EntryKind.NORMAL and entry.data:
                self.write_values[entry.index] = entry.data.decode().split(":", 3)[3]
            self.check_commit_is_durable(entry)
        elif seen != (entry.term, entry.data):
            self.fail(
                f"state machine safety: {node.id} applies term {entry.term} at index "
                f"{entry.index} where another node applied term {seen[0]}"
            )

    def check_commit_is_durable(self, entry: Entry) -> None:
        """Quorum intersection (paper 5.4.3): once an entry is committed, no
        server lacking it can collect a majority of votes, because every
        member of the majority that stored it would refuse (its log is more
        up to date). Checked the moment the entry is first applied, so a
        commit that Raft's rules did not make safe (Figure 8) is caught at
        once, not only if a later election happens to overwrite it.

        Only while the membership is the bootstrap one: with changes, the
        majority that stored the entry may belong to an older configuration.
        """
        if self.sim.membership_changed:
            return
        logs = {node_id: self.sim.nodes[node_id].log_view() for node_id in self.sim.ids}
        majority = len(self.sim.ids) // 2 + 1
        for candidate, (has, last_term, last_index) in logs.items():
            if has(entry.index, entry.term):
                continue
            votes = sum(
                1
                for _, other_last_term, other_last_index in logs.values()
                if (last_term, last_index) >= (other_last_term, other_last_index)
            )
            if votes >= majority:
                self.fail(
                    f"committed entry at {entry.index} (term {entry.term}) is not safe: "
                    f"{candidate} lacks it yet has a log as up to date as {votes} of "
                    f"{len(logs)} servers, enough to be elected and overwrite it"
                )

    def on_write_applied(self, op_id: int) -> None:
        if op_id in self.failed_writes:
            self.fail(f"write {op_id} was reported failed to its client but was applied")

    def on_complete(self, op: Operation) -> None:
        if op.kind == "write":
            if op.version <= op.floor:
                self.fail(
                    f"linearizability: write {op.op_id} of {op.key} landed at index {op.version}, "
                    f"before index {op.floor} that an operation completed before it began saw"
                )
            return
        if op.version < op.floor:
            self.fail(
                f"stale read: read {op.op_id} of {op.key} on {op.node} saw the write at index "
                f"{op.version} but an operation that completed before it began saw index "
                f"{op.floor}"
            )
        if op.version and self.write_values.get(op.version) != op.value:
            self.fail(
                f"read {op.op_id} returned {op.value!r}, not the value written at {op.version}"
            )

    def after_step(self) -> None:
        for node_id in self.touched:
            raft = self.sim.nodes[node_id].raft
            if raft is not None:
                try:
                    raft.check_invariants()
                except AssertionError as e:
                    self.fail(f"invariant broken on {node_id}: {e}")
                if raft.rejected_messages:
                    self.fail(
                        f"{node_id} rejected a message from an honest peer: {raft.last_rejection}"
                    )
        self.touched.clear()

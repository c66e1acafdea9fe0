"""A small, fully deterministic cluster for scenario tests (after etcd's
raft_test.go `network`): messages are delivered in order until the cluster is
quiet, links can be cut, nodes can be isolated. Each node's Ready is handled
exactly as the runtime does: persist, send, apply, advance.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from ramraft.consensus import (
    ConfChange,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Message,
    MsgType,
    RaftNode,
    ReadState,
    Role,
    SnapshotMeta,
)
from ramraft.consensus.raft import Config


@dataclass
class Disk:
    """What a node has persisted: all a crash leaves."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: SnapshotMeta | None = None
    snapshot_data: object = None
    entries: list[Entry] = field(default_factory=list)

    def save_entries(self, entries: list[Entry]) -> None:
        if not entries:
            return
        first = entries[0].index
        self.entries = [e for e in self.entries if e.index < first]
        self.entries.extend(entries)

    def install(self, meta: SnapshotMeta, data: object) -> None:
        self.snapshot = meta
        self.snapshot_data = data
        self.entries = []


@dataclass
class Peer:
    node: RaftNode
    disk: Disk
    applied: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    dropped_reads: list[bytes] = field(default_factory=list)
    # An entry this peer's "code" cannot apply (its runtime halts there).
    cannot_apply: Callable[[Entry], bool] | None = None


def bootstrap_entry(voters: str) -> Entry:
    """The first entry of a cluster whose initial voters are ``voters``."""
    return Entry(1, 1, ConfChange.bootstrap(frozenset(voters)).encode(), EntryKind.CONF_CHANGE)


def make_config(node_id: str, seed: int = 0, **overrides: object) -> Config:
    params: dict[str, object] = {"election_tick": 10, "heartbeat_tick": 1}
    params.update(overrides)
    return Config(id=node_id, rng=random.Random(f"{seed}-{node_id}"), **params)  # type: ignore[arg-type]


class Cluster:
    def __init__(
        self,
        ids: Iterable[str] = ("a", "b", "c"),
        *,
        seed: int = 0,
        learners: Iterable[str] = (),
        **config: object,
    ) -> None:
        self.ids = list(ids)
        learners = list(learners)
        voters = frozenset(i for i in self.ids if i not in learners)
        self.bootstrap = ConfState(voters, frozenset(learners))
        self.config = config
        self.seed = seed
        self.peers: dict[str, Peer] = {}
        for node_id in self.ids + learners:
            if node_id in self.peers:
                continue
            disk = Disk()
            node = RaftNode(make_config(node_id, seed, **config), bootstrap=self.bootstrap)
            self.peers[node_id] = Peer(node, disk)
        self.cut: set[tuple[str, str]] = set()
        self.queue: deque[Message] = deque()
        self.filter: Callable[[Message], bool] | None = None
        self.sent: list[Message] = []
        self.hostile = False  # set by tests that inject junk on purpose

    # ---- driving --------------------------------------------------------------------------

    def node(self, node_id: str) -> RaftNode:
        return self.peers[node_id].node

    def add_node(self, node_id: str) -> RaftNode:
        """A brand-new server, with an empty configuration, waiting to join."""
        node = RaftNode(make_config(node_id, self.seed, **self.config), bootstrap=ConfState())
        self.peers[node_id] = Peer(node, Disk())
        return node

    def handle_ready(self, node_id: str) -> None:
        peer = self.peers[node_id]
        node = peer.node
        while node.has_ready():
            rd = node.ready()
            if rd.snapshot is not None:
                peer.disk.install(rd.snapshot.meta, rd.snapshot.data)
            peer.disk.save_entries(rd.entries)
            if rd.hard_state is not None:
                peer.disk.hard_state = rd.hard_state
            for m in rd.messages:
                if m.type == MsgType.SNAPSHOT:
                    m = replace(m, snapshot_data=peer.disk.snapshot_data)
                self.queue.append(m)
                self.sent.append(m)
            halt_at = next(
                (
                    e.index
                    for e in rd.committed_entries
                    if peer.cannot_apply and peer.cannot_apply(e)
                ),
                0,
            )
            applied = [e for e in rd.committed_entries if not halt_at or e.index < halt_at]
            peer.applied.extend(applied)
            peer.read_states.extend(rd.read_states)
            peer.dropped_reads.extend(rd.dropped_reads)
            if halt_at:
                node.advance(rd, applied_through=halt_at - 1)
                node.halt_apply(halt_at)
            else:
                node.advance(rd)
            node.check_invariants()
            assert self.hostile or not node.rejected_messages, node.last_rejection

    def deliver_all(self, limit: int = 100_000) -> int:
        """Handle every Ready and deliver every message until quiet."""
        delivered = 0
        for node_id in self.peers:
            self.handle_ready(node_id)
        while self.queue:
            delivered += 1
            if delivered > limit:
                raise AssertionError("cluster did not quiesce")
            m = self.queue.popleft()
            if (m.src, m.dst) in self.cut or m.dst not in self.peers:
                continue
            if self.filter is not None and not self.filter(m):
                continue
            self.peers[m.dst].node.step(m)
            self.handle_ready(m.dst)
            if m.type == MsgType.SNAPSHOT and m.src in self.peers:
                self.peers[m.src].node.report_snapshot(m.dst, True)
        return delivered

    def tick(self, node_id: str, times: int = 1) -> None:
        for _ in range(times):
            self.peers[node_id].node.tick()
            self.handle_ready(node_id)

    def tick_all(self, times: int = 1) -> None:
        for _ in range(times):
            for node_id in self.peers:
                self.tick(node_id)
            self.deliver_all()

    def elect(self, node_id: str) -> RaftNode:
        """Make ``node_id`` campaign until it leads (it must be able to win)."""
        node = self.node(node_id)
        for _ in range(100):
            if node.role == Role.LEADER:
                return node
            self.tick(node_id, node.randomized_election_timeout)
            self.deliver_all()
        raise AssertionError(f"{node_id} did not become leader")

    def propose(self, node_id: str, data: bytes) -> int:
        """Propose on ``node_id`` and run the cluster until it is quiet, plus
        one leader tick: followers hear of a commit on the next append or
        tick (consensus/leader.py ``_tell_commit``), not at once."""
        node = self.node(node_id)
        index = node.propose(data)
        self.deliver_all()
        if node.role == Role.LEADER:
            self.tick(node_id)
            self.deliver_all()
        return index

    # ---- faults ---------------------------------------------------------------------------

    def isolate(self, node_id: str) -> None:
        for other in self.peers:
            if other != node_id:
                self.cut.add((node_id, other))
                self.cut.add((other, node_id))

    def heal(self) -> None:
        self.cut.clear()

    def crash_restart(self, node_id: str) -> RaftNode:
        """Lose everything not on disk, then start again from the disk."""
        disk = self.peers[node_id].disk
        node = RaftNode(
            make_config(node_id, self.seed + 1, **self.config),
            hard_state=disk.hard_state,
            snapshot=disk.snapshot,
            entries=[
                e for e in disk.entries if disk.snapshot is None or e.index > disk.snapshot.index
            ],
            bootstrap=self.bootstrap,
        )
        self.peers[node_id] = Peer(node, disk)
        return node

    # ---- looking --------------------------------------------------------------------------

    def leaders(self) -> list[str]:
        return [i for i, p in self.peers.items() if p.node.role == Role.LEADER]

    def applied_data(self, node_id: str) -> list[bytes]:
        return [
            e.data for e in self.peers[node_id].applied if e.kind == EntryKind.NORMAL and e.data
        ]

"""The network of an in-process cluster: Raft messages, snapshots, forwarded
writes and ``Peer.Info`` between runtimes in one process, with no sockets.

Faults are the test's to set: a node cut off from the others
(``partition``), a dead node (its messages go nowhere), the messages a
predicate picks (``drop_if``), and -- drawn from the cluster's seeded Random,
so a run replays by its seed -- a probability of dropping each batch and a
random delay per batch (which reorders them).

What crosses it is what would cross the wire: Raft messages (immutable
dataclasses), snapshot bytes copied from the sender's store into the
receiver's, and forwarded results encoded and decoded as ``Peer.Forward``
does (so the caller never holds the leader's objects).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ramraft.consensus.types import Message, MsgType, NodeId
from ramraft.proto import raft_pb2
from ramraft.server.hosting import decode_result, encode_result
from ramraft.server.request_errors import NotLeader, Unavailable
from ramraft.server.runtime.deadline import Deadline
from ramraft.server.runtime.node_api import RetryElsewhere

if TYPE_CHECKING:
    from ramraft.server.runtime.loop import RaftRuntime
    from ramraft.server.runtime.steward import Steward


@dataclass(eq=False)
class Endpoint:
    """What the network knows of one live node."""

    runtime: RaftRuntime
    steward: Steward


@dataclass
class Faults:
    """Seeded message faults: each batch is dropped with probability
    ``drop`` and otherwise delivered after a delay drawn from
    [``min_delay``, ``max_delay``] seconds."""

    drop: float = 0.0
    min_delay: float = 0.0
    max_delay: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.drop < 1.0:
            raise ValueError(f"drop={self.drop}: a probability in [0, 1)")
        if not 0.0 <= self.min_delay <= self.max_delay:
            raise ValueError("need 0 <= min_delay <= max_delay")


@dataclass(eq=False)
class MemoryNetwork:
    rng: random.Random
    faults: Faults = field(default_factory=Faults)
    endpoints: dict[NodeId, Endpoint] = field(default_factory=dict)
    # Unordered pairs of nodes that cannot reach each other.
    cut: set[frozenset[NodeId]] = field(default_factory=set)
    delivered: int = 0
    dropped: int = 0
    # A test's own fault: messages for which it returns True are lost.
    drop_if: Callable[[Message], bool] | None = None

    def reachable(self, a: NodeId, b: NodeId) -> bool:
        return a == b or (b in self.endpoints and frozenset((a, b)) not in self.cut)

    def isolate(self, node: NodeId, others: list[NodeId]) -> None:
        self.cut.update(frozenset((node, other)) for other in others if other != node)

    def heal(self) -> None:
        self.cut.clear()

    # ---- raft messages ---------------------------------------------------------------------

    def send(self, src: NodeId, messages: list[Message]) -> None:
        by_peer: dict[NodeId, list[Message]] = {}
        drop_if = self.drop_if
        for m in messages:
            if drop_if is not None and drop_if(m):
                self.dropped += 1
                continue
            by_peer.setdefault(m.dst, []).append(m)
        sender = self.endpoints.get(src)
        for dst in sorted(by_peer):
            batch = by_peer[dst]
            if not self.reachable(src, dst):
                self.dropped += len(batch)
                if sender is not None:
                    sender.runtime.report_unreachable(dst)
                continue
            if self.faults.drop and self.rng.random() < self.faults.drop:
                self.dropped += len(batch)
                continue
            delay = (
                self.rng.uniform(self.faults.min_delay, self.faults.max_delay)
                if self.faults.max_delay
                else 0.0
            )
            loop = asyncio.get_running_loop()
            if delay:
                loop.call_later(delay, self._deliver, src, dst, batch)
            else:
                loop.call_soon(self._deliver, src, dst, batch)

    def _deliver(self, src: NodeId, dst: NodeId, batch: list[Message]) -> None:
        # Checked again on arrival: the link may have been cut meanwhile.
        endpoint = self.endpoints.get(dst)
        if endpoint is None or not self.reachable(src, dst):
            self.dropped += len(batch)
            return
        snapshots = [m for m in batch if m.type == MsgType.SNAPSHOT]
        for m in snapshots:
            self._install_snapshot(src, endpoint, m)
        rest = [m for m in batch if m.type != MsgType.SNAPSHOT]
        if rest:
            self.delivered += len(rest)
            endpoint.runtime.receive(rest)

    def _install_snapshot(self, src: NodeId, receiver: Endpoint, message: Message) -> None:
        """Copy the snapshot file from the sender's store to the receiver's
        (as Peer.InstallSnapshot does), then hand the message over."""
        sender = self.endpoints.get(src)
        meta = message.snapshot
        ok = False
        if sender is not None and meta is not None:
            with sender.runtime.snapshots.open(meta.index) as reader:
                data = b"".join(reader)
            with receiver.runtime.snapshots.create(meta) as writer:
                writer.write(data)
                writer.commit()
            receiver.runtime.receive([message])
            ok = True
        if sender is not None:
            sender.runtime.report_snapshot(receiver.runtime.id, ok)

    # ---- requests between nodes ------------------------------------------------------------

    def forwarder(
        self, src: NodeId
    ) -> Callable[[str, bytes, Deadline], asyncio.Future[tuple[int, object]]]:
        """``NodeAPI``'s way to the leader (instead of Peer.Forward)."""

        async def forward(leader: str, command: bytes, deadline: Deadline) -> tuple[int, object]:
            endpoint = self.endpoints.get(leader)
            if endpoint is None or not self.reachable(src, leader):
                raise RetryElsewhere(maybe_applied=False)
            try:
                async with asyncio.timeout(deadline.check()):
                    index, result = await endpoint.runtime.propose(command)
            except NotLeader:
                raise RetryElsewhere(maybe_applied=False) from None
            except Unavailable as e:
                raise RetryElsewhere(maybe_applied=not e.before_proposal) from e
            if not self.reachable(src, leader):
                # The answer is lost on the way back: the caller cannot know.
                raise RetryElsewhere(maybe_applied=True)
            return index, decode_result(encode_result(result))

        return forward  # type: ignore[return-value]

    async def info(
        self, src: NodeId, peer: NodeId, request: raft_pb2.InfoRequest
    ) -> raft_pb2.InfoResponse:
        endpoint = self.endpoints.get(peer)
        if endpoint is None or not self.reachable(src, peer):
            raise ConnectionRefusedError(f"{peer} cannot be reached from {src}")
        return raft_pb2.InfoResponse.FromString(
            endpoint.steward.info(
                raft_pb2.InfoRequest.FromString(request.SerializeToString())
            ).SerializeToString()
        )


class MemoryTransport:
    """A runtime's ``transport`` on a MemoryNetwork (what PeerTransport is
    over gRPC)."""

    def __init__(self, network: MemoryNetwork, node_id: NodeId) -> None:
        self.network = network
        self.node_id = node_id
        self.cluster_id: Callable[[], str] = lambda: ""
        self.addresses: dict[str, str] = {}

    def send(self, messages: list[Message]) -> None:
        self.network.send(self.node_id, messages)

    async def info(
        self, peer: NodeId, request: raft_pb2.InfoRequest, timeout: float
    ) -> raft_pb2.InfoResponse | None:
        return await self.network.info(self.node_id, peer, request)

    def channel(self, peer: NodeId) -> None:
        raise Unavailable("an in-process cluster has no gRPC channels")

    async def close(self) -> None:
        pass

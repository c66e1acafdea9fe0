"""The receiving side of the peer protocol with TLS on (server/runtime/transport.py
PeerServicer), without a network: a fake gRPC context presents a verified
certificate, as the TLS handshake would have left it in the auth context.

- a caller without a node certificate, or with a non-member's, is refused
  (PERMISSION_DENIED) before a single message is read;
- a member's messages reach the core only if their ``src`` is that member;
  any other ``src`` is dropped and counted (the core trusts ``src``);
- the same for an InstallSnapshot header and for Forward (and ForwardStream).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from ramraft.consensus.types import ConfState, Message, MsgType, SnapshotMeta
from ramraft.proto import raft_pb2
from ramraft.server.runtime.transport import PeerServicer
from ramraft.server.runtime.wire import serialize_batch, snapshot_chunks
from ramraft.server.storage import MemoryDisk, open_memory_storage
from ramraft.tools.certs import make_cluster_certs

MEMBERS = {"n1", "n2", "n3"}


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class FakeContext:
    """What PeerServicer uses of a grpc.aio.ServicerContext."""

    def __init__(self, pem: bytes | None) -> None:
        self.pem = pem

    def auth_context(self) -> dict[str, list[bytes]]:
        if self.pem is None:
            return {"transport_security_type": [b"ssl"]}
        return {"transport_security_type": [b"ssl"], "x509_pem_cert": [self.pem]}

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"

    def time_remaining(self) -> float:
        return 5.0

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise Aborted(code, details)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    make_cluster_certs(out, {n: ["127.0.0.1"] for n in ("n1", "n2", "n3", "n9")}, days=2)
    return out


def pem(certs: Path, name: str) -> bytes:
    return (certs / f"{name}.pem").read_bytes()


class Harness:
    def __init__(self, authenticate: bool = True) -> None:
        self.received: list[Message] = []
        self.forwarded: list[bytes] = []
        _, self.snapshots = open_memory_storage(MemoryDisk())
        self.servicer = PeerServicer(
            receive=self.received.extend,
            snapshots=self.snapshots,
            deliver_snapshot=lambda m: self.received.append(m),
            forward=self.forward,
            current_term=lambda: 1,
            authenticate=authenticate,
            is_member=MEMBERS.__contains__,
        )

    async def forward(self, command: bytes, context: Any) -> raft_pb2.ForwardResponse:
        self.forwarded.append(command)
        return raft_pb2.ForwardResponse(index=1)


def heartbeat(src: str, dst: str = "n1", term: int = 7) -> Message:
    return Message(MsgType.HEARTBEAT, src, dst, term)


async def batches(*batch: list[Message]) -> AsyncIterator[bytes]:
    for messages in batch:
        yield serialize_batch(messages)


async def untouchable() -> AsyncIterator[Any]:
    raise AssertionError("a refused caller's messages were read")
    yield  # pragma: no cover


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.mark.parametrize("caller", [None, "client", "n9"], ids=["no-cert", "client", "non-member"])
def test_a_caller_that_is_not_a_member_is_refused_before_any_message_is_read(
    certs: Path, caller: str | None
) -> None:
    h = Harness()
    context = FakeContext(pem(certs, caller) if caller else None)
    with pytest.raises(Aborted) as e:
        run(h.servicer.stream(untouchable(), context))  # type: ignore[arg-type]
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(Aborted) as e:
        run(h.servicer.install_snapshot(untouchable(), context))  # type: ignore[arg-type]
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(Aborted) as e:
        run(h.servicer.forward_stream(untouchable(), context))  # type: ignore[arg-type]
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(Aborted) as e:
        run(anext(h.servicer.forward_batches(untouchable(), context)))  # type: ignore[arg-type]
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert h.received == [] and h.forwarded == [] and h.servicer.refused_calls == 4


def test_a_member_cannot_speak_for_another(certs: Path) -> None:
    h = Harness()
    context = FakeContext(pem(certs, "n2"))
    own, forged = heartbeat("n2"), heartbeat("n3", term=99)
    summary = run(h.servicer.stream(batches([own, forged], [forged]), context))  # type: ignore[arg-type]
    assert summary.batches == 2
    assert h.received == [own], "only the message whose src is the authenticated peer"
    assert h.servicer.dropped_messages == 2


def test_without_tls_the_src_is_trusted(certs: Path) -> None:
    """The control: the same forged message goes through when nobody is
    authenticated -- what the check above prevents."""
    h = Harness(authenticate=False)
    forged = heartbeat("n3", term=99)
    run(h.servicer.stream(batches([forged]), FakeContext(None)))  # type: ignore[arg-type]
    assert h.received == [forged]


def _snapshot_message(src: str) -> Message:
    meta = SnapshotMeta(index=5, term=2, conf=ConfState(frozenset(MEMBERS)))
    return Message(MsgType.SNAPSHOT, src, "n1", 2, snapshot=meta)


async def _chunks(message: Message, data: bytes) -> AsyncIterator[raft_pb2.SnapshotChunk]:
    for chunk in snapshot_chunks(message, data, len(data)):
        yield chunk


def test_a_snapshot_must_come_from_its_sender(certs: Path) -> None:
    h = Harness()
    context = FakeContext(pem(certs, "n2"))
    forged = run(h.servicer.install_snapshot(_chunks(_snapshot_message("n3"), b"x" * 100), context))  # type: ignore[arg-type]
    assert not forged.accepted and "not the sender" in forged.error
    assert h.received == [] and h.snapshots.list() == []
    genuine = run(
        h.servicer.install_snapshot(_chunks(_snapshot_message("n2"), b"x" * 100), context)
    )  # type: ignore[arg-type]
    assert genuine.accepted, genuine.error
    assert [m.src for m in h.received] == ["n2"]


def test_a_member_may_forward_a_write(certs: Path) -> None:
    h = Harness()

    async def one() -> AsyncIterator[raft_pb2.ForwardRequest]:
        yield raft_pb2.ForwardRequest(command=b"cmd")

    response = run(h.servicer.forward_stream(one(), FakeContext(pem(certs, "n3"))))  # type: ignore[arg-type]
    assert response.index == 1 and h.forwarded == [b"cmd"]

    async def batch() -> AsyncIterator[raft_pb2.ForwardBatch]:
        yield raft_pb2.ForwardBatch(items=[raft_pb2.ForwardItem(id=5, command=b"two")])

    async def answers() -> list[raft_pb2.ForwardAnswer]:
        stream = h.servicer.forward_batches(batch(), FakeContext(pem(certs, "n3")))  # type: ignore[arg-type]
        return [a for message in [m async for m in stream] for a in message.answers]

    (answer,) = run(answers())
    assert (answer.id, answer.code, answer.response.index) == (5, 0, 1)
    assert h.forwarded == [b"cmd", b"two"]


def test_one_snapshot_stream_per_peer(certs: Path) -> None:
    h = Harness()
    context = FakeContext(pem(certs, "n2"))

    async def scenario() -> None:
        reading, gate = asyncio.Event(), asyncio.Event()

        async def slow() -> AsyncIterator[raft_pb2.SnapshotChunk]:
            reading.set()
            await gate.wait()
            for chunk in snapshot_chunks(_snapshot_message("n2"), b"y", 1):
                yield chunk

        first = asyncio.create_task(h.servicer.install_snapshot(slow(), context))  # type: ignore[arg-type]
        await reading.wait()  # the first stream is being read: it holds n2's slot
        with pytest.raises(Aborted) as e:
            await h.servicer.install_snapshot(untouchable(), context)  # type: ignore[arg-type]
        assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        gate.set()
        assert (await first).accepted

    run(scenario())

"""The steward's rules about members it cannot fully ask (runtime/steward.py):
a node of release 0.1.0 answers Peer.Info with UNIMPLEMENTED; it is taken as
supporting version 1 of everything, and the cluster is not named (nor
switched) until every member answers as this release does."""

from __future__ import annotations

import asyncio
import itertools
from types import SimpleNamespace
from typing import Any

import grpc
import msgpack
import pytest

from ramraft.consensus import Role
from ramraft.proto import admin_pb2, raft_pb2
from ramraft.server.config import NodeConfig
from ramraft.server.inprocess.clock import VirtualClock, VirtualTimeLoop, virtual_time
from ramraft.server.machines.cluster import ClusterMachine, ClusterOp, ClusterState
from ramraft.server.machines.kv import KVMachine
from ramraft.server.request_errors import BadRequest, Unavailable
from ramraft.server.rpc.services import AdminService
from ramraft.server.runtime.node_api import InputLimits
from ramraft.server.runtime.steward import CHECK_PACE, INTERVAL, LOOK_EVERY, Steward
from ramraft.server.runtime.transport import PEER_SERVICE, PeerTransport
from ramraft.server.storage import open_memory_storage


async def _old_peer() -> tuple[grpc.aio.Server, str]:
    """A peer of release 0.1.0: the Peer service without Info."""

    async def stream(requests: Any, context: Any) -> bytes:
        return b""

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        PEER_SERVICE, {"Stream": grpc.stream_unary_rpc_method_handler(stream)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def test_an_old_peer_answers_info_as_legacy() -> None:
    async def main() -> None:
        server, address = await _old_peer()
        _, snapshots = open_memory_storage()
        transport = PeerTransport(
            "n1", {"old": address}, snapshots, lambda peer: None, lambda peer, ok: None
        )
        try:
            assert await transport.info("old", raft_pb2.InfoRequest(), 5.0) is None
        finally:
            await transport.close()
            await server.stop(None)

    asyncio.run(main())


class FakeRuntime:
    """Just what the steward reads of a leading runtime."""

    def __init__(self) -> None:
        self.config = NodeConfig("n1", {"n1": "a:1", "n2": "a:2", "n3": "a:3"}, "/nonexistent")
        kv = KVMachine()
        self.machine = ClusterMachine(kv, kv=kv)
        self.cluster = self.machine
        self.id = "n1"
        self.role = Role.LEADER
        self.halted = None
        self.stopping = False
        self.core = SimpleNamespace(
            conf=SimpleNamespace(members=frozenset({"n1", "n2", "n3"})), term=1
        )
        self.proposed: list[bytes] = []
        self.transport = SimpleNamespace(info=self._info)
        self.answers: dict[str, raft_pb2.InfoResponse | None] = {}

    def cluster_state(self) -> ClusterState:
        return self.machine.state

    def status(self) -> Any:
        return SimpleNamespace(
            app_version_supported=1, kv_version_supported=1, halted="", applied_index=0
        )

    def schedule(self, fn: Any) -> None:
        pass

    async def propose(self, command: bytes) -> tuple[int, object]:
        self.proposed.append(command)
        return len(self.proposed), None

    async def _info(self, peer: str, request: Any, timeout: float) -> Any:
        return self.answers[peer]


def current(node: str, app: int = 1) -> raft_pb2.InfoResponse:
    return raft_pb2.InfoResponse(node_id=node, app_version_supported=app, kv_version_supported=1)


@pytest.mark.parametrize(
    ("n3", "named"),
    [(current("n3"), True), (None, False)],  # None: n3 runs release 0.1.0
    ids=["all-current", "one-legacy"],
)
def test_the_cluster_is_named_only_when_every_member_answers_as_this_release(
    n3: raft_pb2.InfoResponse | None, named: bool
) -> None:
    runtime = FakeRuntime()
    runtime.answers = {"n2": current("n2"), "n3": n3}
    runtime.config.check_entries = 0
    steward = Steward(runtime, lambda target: asyncio.sleep(0, ""))  # type: ignore[arg-type]
    asyncio.run(steward._lead_once())
    ops = [cmd[1:] for cmd in runtime.proposed]
    assert bool(ops) is named
    if named:
        assert msgpack.unpackb(ops[0])[0] == ClusterOp.CLUSTER_ID
    assert steward.known["n3"].current is (n3 is not None)
    if n3 is None:  # taken as supporting version 1 of everything
        assert (steward.known["n3"].app_supported, steward.known["n3"].kv_supported) == (1, 1)


def test_a_new_leader_asks_its_members_at_once_then_every_interval() -> None:
    """What each member supports (`ramraft app-version`, `ramraft status`) is
    what the leader last heard in its rounds: a node that becomes leader
    asks at once, in each new term, instead of up to INTERVAL later (it
    used to show every member's versions as unknown for up to a second
    after each leader change, as after every pod of a rollout). Then one
    round every INTERVAL. On virtual time: the same every run."""
    runtime = FakeRuntime()
    runtime.answers = {"n2": current("n2"), "n3": current("n3")}
    runtime.config.check_entries = 0
    runtime.role = Role.FOLLOWER
    clock = VirtualClock()
    loop = VirtualTimeLoop(clock)
    rounds: list[tuple[float, int]] = []  # (when, term) of each round's ask of n2
    ask = runtime._info

    async def info(peer: str, request: Any, timeout: float) -> Any:
        if peer == "n2":
            rounds.append((loop.time(), runtime.core.term))
        return await ask(peer, request, timeout)

    runtime.transport = SimpleNamespace(info=info)
    elected: dict[int, float] = {}

    async def main() -> None:
        steward = Steward(runtime, lambda target: asyncio.sleep(0, ""))  # type: ignore[arg-type]
        steward.start()
        try:
            await asyncio.sleep(0.55)
            assert rounds == [], "a follower holds no rounds"
            runtime.role, runtime.core.term = Role.LEADER, 2
            elected[2] = loop.time()
            await asyncio.sleep(3.0)
            runtime.core.term = 3  # elected again, in a later term
            elected[3] = loop.time()
            await asyncio.sleep(0.5)
            assert set(steward.known) == {"n1", "n2", "n3"}
        finally:
            await steward.close()

    try:
        with virtual_time(clock):
            loop.run_until_complete(main())
    finally:
        loop.close()
    for term in (2, 3):
        first = min(at for at, t in rounds if t == term)
        assert first - elected[term] <= 2 * LOOK_EVERY, (term, rounds)
    in_term_2 = [at for at, t in rounds if t == 2]
    assert len(in_term_2) >= 2
    gaps = [b - a for a, b in itertools.pairwise(in_term_2)]
    assert all(INTERVAL <= gap <= INTERVAL + 2 * LOOK_EVERY for gap in gaps), gaps


def test_periodic_checks_are_paced_by_how_long_the_last_digest_took() -> None:
    """Every check_entries applied entries, but never sooner than CHECK_PACE
    times the last digest's duration after the last check: a digest takes
    time in proportion to the state, so a large state written fast would
    otherwise keep every node digesting."""
    runtime = FakeRuntime()
    runtime.config.check_entries = 1000
    steward = Steward(runtime, lambda target: asyncio.sleep(0, ""))  # type: ignore[arg-type]
    start = steward._last_check_at
    assert not steward.periodic_check_due(999, start + 3600), "too few entries"
    assert steward.periodic_check_due(1000, start), "a quick digest (none yet) paces nothing"
    steward.digests.last_seconds = 1.0  # the last digest took a second
    assert not steward.periodic_check_due(50_000, start + CHECK_PACE - 0.5)
    assert steward.periodic_check_due(50_000, start + CHECK_PACE)
    runtime.config.check_entries = 0
    assert not steward.periodic_check_due(50_000, start + 3600), "0: only on demand"


def test_admission_asks_the_address_given_and_keeps_it_only_when_admitted() -> None:
    """AddMember's check of the new node (Peer.Info) goes to the address
    the caller gave, also for a removed member whose old address is still
    known; a node that answers with another id is refused; a refusal
    leaves the address book as it was (no stale address for the next try,
    nothing that looks like a member)."""
    runtime = FakeRuntime()
    addresses = {"n1": "a:1", "n2": "a:2", "n3": "a:3", "n4": "old:4"}  # n4 was removed
    asked: list[str] = []

    async def info(peer: str, request: Any, timeout: float) -> raft_pb2.InfoResponse:
        address = addresses[peer]
        asked.append(address)
        answers = {"a:2": current("n2"), "new:4": current("n4")}
        if address not in answers:
            empty = grpc.aio.Metadata()
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, empty, empty, "refused")
        return answers[address]

    async def forget(peer: str) -> None:
        pass

    runtime.transport = SimpleNamespace(info=info, addresses=addresses, links={}, forget=forget)
    steward = Steward(runtime, lambda target: asyncio.sleep(0, ""))  # type: ignore[arg-type]
    with pytest.raises(BadRequest, match="the node at a:2 is n2, not n5"):
        asyncio.run(steward.admit("n5", "a:2"))
    assert "n5" not in addresses
    with pytest.raises(Unavailable, match="cannot ask n5 at typo:5"):
        asyncio.run(steward.admit("n5", "typo:5"))
    assert "n5" not in addresses
    asyncio.run(steward.admit("n4", "new:4"))
    assert asked == ["a:2", "typo:5", "new:4"]
    assert addresses["n4"] == "new:4"


def test_a_refused_addition_closes_the_link_opened_to_ask_it() -> None:
    """Asking a new node opens a link (and a gRPC channel) to it; when the
    addition is refused the node is no member, and the link goes with it
    (every refused AddMember would otherwise leave one behind). A member's
    link stays."""

    async def main() -> None:
        _, snapshots = open_memory_storage()
        addresses = {"n1": "a:1", "n2": "127.0.0.1:1", "n3": "a:3"}
        transport = PeerTransport("n1", addresses, snapshots, lambda p: None, lambda p, ok: None)
        channels: list[grpc.aio.Channel] = []

        async def info(peer: str, request: Any, timeout: float) -> raft_pb2.InfoResponse:
            channels.append(transport.channel(peer))  # as PeerTransport.info does
            return current("n2")

        transport.info = info  # type: ignore[method-assign]
        runtime = FakeRuntime()
        runtime.transport = transport  # type: ignore[assignment]
        steward = Steward(runtime, lambda target: asyncio.sleep(0, ""))  # type: ignore[arg-type]
        try:
            transport.channel("n2")
            with pytest.raises(BadRequest, match="is n2, not n5"):
                await steward.admit("n5", "127.0.0.1:1")
            assert "n5" not in transport.links and "n5" not in addresses
            with pytest.raises(Exception, match="Channel is closed"):  # grpc's UsageError
                await channels[0].unary_unary("/x/y")(b"", timeout=1)  # type: ignore[arg-type]
            assert "n2" in transport.links
        finally:
            await transport.close()

    asyncio.run(main())


class _Aborted(Exception):
    pass


class _Context:
    """What the rpc wrapper uses of a grpc.aio.ServicerContext."""

    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def time_remaining(self) -> float | None:
        return None

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise _Aborted


_ADD = admin_pb2.AddMemberRequest
_TRANSFER = admin_pb2.TransferLeadershipRequest


@pytest.mark.parametrize(
    ("request_", "code", "words"),
    [
        (_ADD(id="a b", address="h:1"), "INVALID_ARGUMENT", "invalid node id"),
        (_ADD(id="é" * 200, address="h:1"), "INVALID_ARGUMENT", "invalid node id"),
        (_ADD(id="n4", address="h"), "INVALID_ARGUMENT", "is not HOST:PORT"),
        (_ADD(id="n4", address="h:99999"), "INVALID_ARGUMENT", "is not HOST:PORT"),
        (_ADD(id="n4", address="h:0"), "INVALID_ARGUMENT", "port 0"),
        (_TRANSFER(target="n9"), "NOT_FOUND", "n9 is not a member"),
        # Removed, or a failed addition: known by address, not a member.
        (_TRANSFER(target="gone"), "NOT_FOUND", "gone is not a member"),
    ],
)
def test_admin_refuses_bad_member_ids_addresses_and_non_member_targets(
    request_: Any, code: str, words: str
) -> None:
    """Refused with the reason before anything is proposed or dialed (an id
    of over 255 bytes could not even be encoded in a log entry: UNKNOWN)."""
    runtime = FakeRuntime()
    runtime.addresses = {"n1": "a:1", "n2": "a:2", "n3": "a:3", "gone": "a:4"}  # type: ignore[attr-defined]

    async def not_reached(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("refused before the change is tried")

    api = SimpleNamespace(runtime=runtime, limits=InputLimits(1024, 1 << 20, 100))
    membership = SimpleNamespace(add_member=not_reached, transfer_leadership=not_reached)
    service = AdminService(api, membership, None)  # type: ignore[arg-type]
    context = _Context()
    with pytest.raises(_Aborted):
        method = type(request_).__name__.removesuffix("Request")
        asyncio.run(getattr(service, method)(request_, context))
    assert context.aborted is not None
    assert context.aborted[0].name == code and words in context.aborted[1], context.aborted

"""A follower forwards a write to the leader (Peer.Forward). When the leader
refuses it, the follower must know whether the command may be in the log:
only a command refused before it was proposed may be sent again without a
session. The leader says so in a ForwardRefusal (proto/raft.proto); a leader
of release 0.1.0 says nothing, and its follower must then assume the write
may have been applied. Real gRPC on loopback, both releases."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from ramraft.proto import raft_pb2
from ramraft.server.request_errors import NotLeader, Unavailable
from ramraft.server.runtime.forwarding import refused_before_proposal
from ramraft.server.runtime.node_api import (
    InputLimits,
    NodeAPI,
    RetryElsewhere,
    forward_error,
)
from ramraft.server.runtime.transport import FORWARD_REFUSAL_KEY
from tests.runtime.fakes import Offers

LIMITS = InputLimits(max_key_bytes=64, max_value_bytes=64, max_range_limit=10)
Serve = Callable[[bytes, Any], Awaitable[raft_pb2.ForwardResponse]]


def encode(result: object) -> bytes:
    return repr(result).encode()


def decode(data: bytes) -> object:
    return data.decode()


class LeaderRuntime(Offers):
    """The leader's runtime: refuses the first proposals with ``refusals``,
    then applies at index 7."""

    def __init__(self, *refusals: Exception) -> None:
        self.refusals = list(refusals)
        self.proposed: list[bytes] = []

    async def propose(self, command: bytes) -> tuple[int, object]:
        self.proposed.append(command)
        if self.refusals:
            raise self.refusals.pop(0)
        return 7, "applied"


def old_release_forward(runtime: LeaderRuntime) -> Serve:
    """Release 0.1.0's leader side of Forward (node_api.py serve_forward):
    an error status with the reason in words, nothing else."""

    async def serve(command: bytes, context: Any) -> raft_pb2.ForwardResponse:
        try:
            index, result = await runtime.propose(command)
        except NotLeader as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"not the leader (leader: {e.leader})")
        except Unavailable as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
        return raft_pb2.ForwardResponse(result=encode(result), index=index)

    return serve


class OneChannel:
    """The transport of a follower whose only peer is its leader."""

    def __init__(self, address: str) -> None:
        self.leader = grpc.aio.insecure_channel(address)

    def channel(self, node_id: str) -> grpc.aio.Channel:
        return self.leader

    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()


class FollowerRuntime(Offers):
    """A follower whose leader is "leader", reached at ``address``."""

    def __init__(self, address: str) -> None:
        self.transport = OneChannel(address)
        self.failed = None
        self.stopping = False

    async def propose(self, command: bytes) -> tuple[int, object]:
        raise NotLeader("leader", "")

    async def wait_for_leader(self, timeout: float) -> str:
        return "leader"

    async def wait_for_new_leader(self, old: str, timeout: float) -> bool:
        await asyncio.sleep(timeout)
        return False


async def with_leader(serve: Serve, body: Callable[[NodeAPI], Awaitable[None]]) -> None:
    async def forward(request: raft_pb2.ForwardRequest, context: Any) -> raft_pb2.ForwardResponse:
        return await serve(request.command, context)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "ramraft.peer.v1.Peer",
                {
                    "Forward": grpc.unary_unary_rpc_method_handler(
                        forward,
                        request_deserializer=raft_pb2.ForwardRequest.FromString,
                        response_serializer=raft_pb2.ForwardResponse.SerializeToString,
                    )
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    follower = FollowerRuntime(f"127.0.0.1:{port}")
    try:
        await body(NodeAPI(follower, encode, decode, LIMITS))  # type: ignore[arg-type]
    finally:
        await follower.transport.leader.close()
        await server.stop(None)


async def refused_forward(api: NodeAPI) -> grpc.aio.AioRpcError:
    """Call Forward on the follower's leader as a follower of any release
    would, expecting a refusal; returns it."""
    forward = api.runtime.transport.channel("leader").unary_unary(
        "/ramraft.peer.v1.Peer/Forward",
        request_serializer=raft_pb2.ForwardRequest.SerializeToString,
        response_deserializer=raft_pb2.ForwardResponse.FromString,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await forward(raft_pb2.ForwardRequest(command=b"cmd"), timeout=5)
    return caught.value


def new_release_forward(runtime: LeaderRuntime) -> Serve:
    api = NodeAPI(runtime, encode, decode, LIMITS)  # type: ignore[arg-type]
    return api.serve_forward


def test_a_write_refused_before_it_was_proposed_is_sent_again() -> None:
    """The leader (this release) refuses the first copy before proposing it
    and says so: a write without a session goes to the leader again."""
    leader = LeaderRuntime(NotLeader("leader", ""))

    async def body(api: NodeAPI) -> None:
        assert await api.write(b"cmd", timeout=5) == (7, "'applied'")

    asyncio.run(with_leader(new_release_forward(leader), body))
    assert leader.proposed == [b"cmd", b"cmd"]


@pytest.mark.parametrize(
    "refusal",
    [
        Unavailable("the node is shutting down", before_proposal=True),
        Unavailable("leadership changed before the write committed; retry it"),
    ],
)
def test_the_leader_says_whether_it_proposed(refusal: Unavailable) -> None:
    """The ForwardRefusal follows the error, not the words of its message."""
    leader = LeaderRuntime(refusal)
    errors: list[grpc.aio.AioRpcError] = []

    async def body(api: NodeAPI) -> None:
        errors.append(await refused_forward(api))

    asyncio.run(with_leader(new_release_forward(leader), body))
    (error,) = errors
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert refused_before_proposal(error) is refusal.before_proposal
    keys = [key for key, _ in error.trailing_metadata() or ()]
    assert FORWARD_REFUSAL_KEY in keys


def test_a_write_that_may_be_in_the_log_is_not_sent_again() -> None:
    leader = LeaderRuntime(Unavailable("leadership changed before the write committed"))

    async def body(api: NodeAPI) -> None:
        with pytest.raises(Unavailable, match="may or may not have been applied"):
            await api.write(b"cmd", timeout=5)

    asyncio.run(with_leader(new_release_forward(leader), body))
    assert leader.proposed == [b"cmd"]


def test_a_leader_of_the_previous_release_is_taken_at_its_worst() -> None:
    """A 0.1.0 leader sends no ForwardRefusal: even its "not the leader" may
    not be trusted (the follower no longer reads messages), so a write
    without a session fails as "may have been applied" and is not repeated,
    while a write with a session is retried and succeeds."""
    leader = LeaderRuntime(NotLeader("other", ""), NotLeader("other", ""))

    async def body(api: NodeAPI) -> None:
        with pytest.raises(Unavailable, match="may or may not have been applied"):
            await api.write(b"no session", timeout=5)
        assert await api.write(b"session", timeout=5, retry_unsafe=True) == (7, "'applied'")

    asyncio.run(with_leader(old_release_forward(leader), body))
    assert leader.proposed == [b"no session", b"session", b"session"]


def test_a_follower_of_the_previous_release_still_understands_the_leader() -> None:
    """Release 0.1.0's followers look for "not the leader" in the message of
    an UNAVAILABLE answer to send the write elsewhere: the leader keeps those
    words when it does not lead."""
    leader = LeaderRuntime(NotLeader("other", "10.0.0.3:7001"))

    async def body(api: NodeAPI) -> None:
        error = await refused_forward(api)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "not the leader" in (error.details() or "")

    asyncio.run(with_leader(new_release_forward(leader), body))


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL]
)
def test_a_forward_the_transport_lost_is_retried_elsewhere_with_its_outcome_unknown(
    code: grpc.StatusCode,
) -> None:
    """grpc's "Internal error from Core" (a CI run on a loaded machine got
    it instead of the leader's UNAVAILABLE) is a lost call like the others:
    a write with a session goes again, one without is 'may or may not'."""
    error = forward_error(code, "Internal error from Core", before_proposal=False)
    assert isinstance(error, RetryElsewhere) and error.maybe_applied
    refused = forward_error(code, "not the leader", before_proposal=True)
    assert isinstance(refused, RetryElsewhere) and not refused.maybe_applied

"""A stream's Put, Delete and CompareAndSwap proposed in place
(server/rpc/services.py KVService._write_now, _WriteNow): on the leader
each is proposed as it is read, without a task, and answered from a
callback once its entry is applied, as the unary handler would answer it.
An answer before the apply would acknowledge a write that a majority may
not hold; a wait without a deadline would hold the request's slot forever.
What the handler must serve (a follower's write, which it forwards; a
lease; a compare on revisions; bad input) is left to it, with nothing
proposed. tests/server/test_stream.py runs the same writes through real
node processes (answers, deadlines with the followers paused, sessions)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from ramraft import Application
from ramraft.proto import kv_pb2
from ramraft.server.inprocess import ClusterHarness
from ramraft.server.machines.kv import encode_put
from ramraft.server.machines.statemachine import CommandError, ErrorCode
from ramraft.server.request_errors import NotLeader, RequestContext, Unavailable
from ramraft.server.rpc.services import KVService, _WriteNow
from tests.server.apps.ticker import Ticker

Make = Callable[..., ClusterHarness]
OK = grpc.StatusCode.OK.value[0]


class _Stream:
    """A stream context without a deadline of its own."""

    def time_remaining(self) -> float | None:
        return None


STREAM: Any = _Stream()


def put(key: str, timeout_ms: int = 0, **fields: Any) -> kv_pb2.StreamRequest:
    request = kv_pb2.PutRequest(key=key, value=b"v", **fields)
    return kv_pb2.StreamRequest(id=5, timeout_ms=timeout_ms, put=request)


def service_of(cluster: ClusterHarness, node_id: str) -> tuple[KVService, list[tuple[str, str]]]:
    node = cluster.node(node_id)
    service = KVService(node.api, node.kv)
    observed: list[tuple[str, str]] = []
    service.observers.append(lambda rpc, code, seconds: observed.append((rpc, code)))
    return service, observed


WRITES = {
    "put": (kv_pb2.PutRequest(key="in/place", value=b"v"), "Put", (True, b"v")),
    "delete": (kv_pb2.DeleteRequest(key="in/place"), "Delete", (False, b"")),
    "compare_and_swap": (
        kv_pb2.CompareAndSwapRequest(key="in/place", expected=b"old", value=b"new"),
        "CompareAndSwap",
        (True, b"new"),
    ),
}


def pending_put(service: KVService, retry: bool) -> _WriteNow:
    """A Put of key "k" waiting for a proposal future the test settles
    (called on the cluster's loop)."""
    proposal: asyncio.Future[tuple[int, object]] = asyncio.get_running_loop().create_future()
    context = RequestContext(0, 0.0)
    return _WriteNow(service, put("k"), "put", context, proposal, 10.0, retry, service._put_answer)


@pytest.mark.parametrize("op", WRITES)
def test_a_write_is_answered_once_its_entry_is_applied(ramraft_cluster: Make, op: str) -> None:
    cluster = ramraft_cluster(lambda: Application(Ticker()))
    leader = cluster.leader()
    node = cluster.node(leader)
    cluster.run(node.api.write(encode_put("in/place", b"old"), 5.0))
    service, observed = service_of(cluster, leader)
    body, name, after = WRITES[op]
    request = kv_pb2.StreamRequest(id=5)
    getattr(request, op).CopyFrom(body)

    async def run() -> tuple[kv_pb2.StreamResponse, int]:
        answer = service._stream_now(request, op, STREAM, time.monotonic())
        assert isinstance(answer, asyncio.Future), "proposed in place, answered later"
        assert not answer.done() and node.kv.get("in/place") == (True, b"old")
        applied_then: list[int] = []
        answer.add_done_callback(lambda _: applied_then.append(node.kv.applied_index))
        response = await answer
        assert response is not None
        return response, applied_then[0]

    response, applied_then = cluster.run(run())
    assert response.code == OK and response.id == 5 and response.WhichOneof("result") == op
    made = getattr(response, op)
    assert made.index > 0 and applied_then >= made.index
    assert node.kv.get("in/place") == after
    assert made.header.revision == node.kv.revision
    assert made.header.member_id == leader and made.header.raft_term > 0
    assert made.header.cluster_id == node.runtime.cluster_state().cluster_id
    if op == "delete":
        assert response.delete.deleted is True
    if op == "compare_and_swap":
        cas = response.compare_and_swap
        assert (cas.swapped, cas.found, cas.current) == (True, True, b"old"), "current: before"
    assert observed == [(name, "OK")]


def test_a_put_without_a_quorum_ends_at_its_deadline(ramraft_cluster: Make) -> None:
    cluster = ramraft_cluster(lambda: Application(Ticker()))
    leader = cluster.leader()
    service, observed = service_of(cluster, leader)
    cluster.partition(leader)

    async def run() -> tuple[kv_pb2.StreamResponse | None, float]:
        started = time.monotonic()
        # 30 ms: before CheckQuorum steps the leader down (100 ms here).
        answer = service._stream_now(put("late", timeout_ms=30), "put", STREAM, started)
        assert isinstance(answer, asyncio.Future)
        response = await answer
        return response, time.monotonic() - started

    response, waited = cluster.run(run())
    cluster.heal()
    assert response is not None
    assert response.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0], response
    assert response.message == "the request's deadline passed"
    assert 0.03 <= waited < 0.06
    assert observed == [("Put", "DEADLINE_EXCEEDED")]


def test_what_put_must_serve_is_left_to_it(ramraft_cluster: Make) -> None:
    cluster = ramraft_cluster(lambda: Application(Ticker()))
    leader = cluster.leader()
    follower = next(i for i in cluster.ids if i != leader)

    async def now(node_id: str, request: kv_pb2.StreamRequest) -> Any:
        service, observed = service_of(cluster, node_id)
        runtime = cluster.node(node_id).runtime
        before = len(runtime._proposals)
        answer = service._stream_now(request, "put", STREAM, time.monotonic())
        assert len(runtime._proposals) == before, "nothing proposed"
        assert observed == []
        return answer

    assert cluster.run(now(follower, put("a"))) is None, "a follower forwards it"
    assert cluster.run(now(leader, put("a", lease=7))) is None, "a put with a lease is a txn"
    on_revision = kv_pb2.StreamRequest(
        compare_and_swap=kv_pb2.CompareAndSwapRequest(key="a", value=b"v", expected_version=1)
    )

    async def cas_now() -> Any:
        service, _ = service_of(cluster, leader)
        return service._stream_now(on_revision, "compare_and_swap", STREAM, time.monotonic())

    assert cluster.run(cas_now()) is None, "a compare on revisions is a txn"
    assert cluster.run(now(leader, put(""))) is None, "an empty key: Put's error"
    late = put("a", timeout_ms=1)

    async def past_deadline() -> Any:
        service, _ = service_of(cluster, leader)
        return service._stream_now(late, "put", STREAM, time.monotonic() - 1)

    assert cluster.run(past_deadline()) is None, "a deadline already past: Put's error"
    session = kv_pb2.Session(client_id=0, sequence=3)
    assert cluster.run(now(leader, put("a", session=session))) is None, "a bad session"


@pytest.mark.parametrize(
    ("outcome", "retry", "code", "message"),
    [
        (Unavailable("leadership changed"), False, "UNAVAILABLE", "leadership changed"),
        (Unavailable("leadership changed"), True, None, None),
        (NotLeader("n2", "127.0.0.1:1"), False, None, None),
        (
            (9, CommandError(ErrorCode.SESSION_EXPIRED, "session 4 expired")),
            True,
            "FAILED_PRECONDITION",
            "SESSION_EXPIRED: session 4 expired",
        ),
        ((9, "not a PutResult"), False, "UNKNOWN", "internal error: "),
        ("cancelled", False, "DEADLINE_EXCEEDED", "the request's deadline passed"),
    ],
)
def test_each_outcome_is_answered_as_put_answers_it(
    ramraft_cluster: Make, outcome: Any, retry: bool, code: str | None, message: str | None
) -> None:
    """None: Put serves the request again from the start (a refusal before
    proposing, or a write with a session, which applies once)."""
    cluster = ramraft_cluster(lambda: Application(Ticker()))
    service, observed = service_of(cluster, cluster.leader())

    async def run() -> kv_pb2.StreamResponse | None:
        pending = pending_put(service, retry)
        proposal = pending.proposal
        if outcome == "cancelled":
            proposal.cancel()
        elif isinstance(outcome, Exception):
            proposal.set_exception(outcome)
        else:
            proposal.set_result(outcome)
        answer = await pending.answer
        assert pending.timer.cancelled()
        return answer

    answer = cluster.run(run())
    if code is None:
        assert answer is None and observed == []
        return
    assert answer is not None and answer.id == 5
    wire = grpc.StatusCode.INTERNAL if code == "UNKNOWN" else grpc.StatusCode[code]
    assert answer.code == wire.value[0]
    assert message is not None and answer.message.startswith(message)
    assert observed == [("Put", code)]


def test_a_stream_that_ends_gives_up_the_wait(ramraft_cluster: Make) -> None:
    cluster = ramraft_cluster(lambda: Application(Ticker()))
    service, observed = service_of(cluster, cluster.leader())

    async def run() -> _WriteNow:
        pending = pending_put(service, retry=True)
        pending.answer.cancel()
        await asyncio.sleep(0)
        return pending

    pending = cluster.run(run())
    assert pending.proposal.cancelled(), "a proposal not made yet is dropped"
    assert pending.timer.cancelled()
    assert observed == []


def test_a_session_retry_in_place_gets_the_first_answer(ramraft_cluster: Make) -> None:
    cluster = ramraft_cluster(lambda: Application(Ticker()))
    leader = cluster.leader()
    service, _ = service_of(cluster, leader)
    session = kv_pb2.Session(client_id=424242, sequence=1)

    async def twice() -> list[kv_pb2.StreamResponse | None]:
        answers = [
            service._stream_now(put("once", session=session), "put", STREAM, time.monotonic())
            for _ in range(2)
        ]
        assert all(isinstance(a, asyncio.Future) for a in answers)
        return list(await asyncio.gather(*answers))  # type: ignore[arg-type]

    first, second = cluster.run(twice())
    assert first is not None and second is not None
    assert first.code == second.code == OK
    assert first.put.index == second.put.index, "the reply of the first application"
    assert cluster.node(leader).kv.get("once") == (True, b"v")

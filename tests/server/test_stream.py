"""``KV.Stream`` and ``KV.StreamBatch`` on three real node processes: every
operation, answers matched by id (in completion order), a bad request
failing alone (also inside a batch), each request's own deadline, many
requests in flight on one stream (more than a connection may have in
service: the rest wait, none is refused), sessions deduplicating retries,
and a batch's own limits."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from ramraft.proto import kv_pb2, kv_pb2_grpc
from ramraft.server.rpc.streams import ANSWER_CHUNK
from ramraft.server.security.auth import MAX_STREAM_BATCH as MAX_BATCH
from ramraft.server.security.budget import SMALL_ANSWER
from tests.server.procs import ProcessCluster

OK = grpc.StatusCode.OK.value[0]
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]
DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]


# Fewer than test_many_requests_in_flight_on_one_stream sends at once.
PER_CONNECTION = 64
KINDS = ["stream", "batch"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    extra = ["--max-inflight-per-connection", str(PER_CONNECTION)]
    with ProcessCluster(tmp_path_factory.mktemp("stream"), extra_args=extra) as c:
        c.wait_for_leader()
        # Named and at key-value version 2 before any test compares two answers.
        c.wait_for_kv2()
        yield c


@contextlib.contextmanager
def followers_paused(cluster: ProcessCluster, leader: str) -> Iterator[None]:
    """Every node but ``leader`` stopped (SIGSTOP) while the block runs."""
    followers = [cluster.procs[i] for i in cluster.ids if i != leader]
    for proc in followers:
        proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for proc in followers:
            proc.send_signal(signal.SIGCONT)


def exchange(
    endpoint: str,
    requests: list[kv_pb2.StreamRequest],
    timeout: float = 20,
    kind: str = "stream",
    messages: list[int] | None = None,
) -> dict[int, kv_pb2.StreamResponse]:
    """Send every request on one stream before reading (``kind`` "batch":
    all in one StreamBatchRequest); the responses by id. ``messages``
    collects how many answers each message held."""

    async def run() -> dict[int, kv_pb2.StreamResponse]:
        async with grpc.aio.insecure_channel(endpoint) as channel:
            stub = kv_pb2_grpc.KVStub(channel)
            call: Any
            if kind == "batch":
                call = stub.StreamBatch(timeout=timeout)
                await call.write(kv_pb2.StreamBatchRequest(requests=requests))
            else:
                call = stub.Stream(timeout=timeout)
                for request in requests:
                    await call.write(request)
            await call.done_writing()
            answers: dict[int, kv_pb2.StreamResponse] = {}
            async for message in call:
                held = list(message.responses) if kind == "batch" else [message]
                if messages is not None:
                    messages.append(len(held))
                for response in held:
                    assert response.id not in answers, f"two answers for {response.id}"
                    answers[response.id] = response
            assert await call.code() == grpc.StatusCode.OK, await call.details()
            return answers

    return asyncio.run(run())


@pytest.mark.parametrize("kind", KINDS)
def test_every_operation_through_leader_and_follower(cluster: ProcessCluster, kind: str) -> None:
    leader = cluster.wait_for_leader()
    follower = next(i for i in cluster.ids if i != leader)
    for node_id in (leader, follower):
        p = f"{kind}/{node_id}/"
        answers = exchange(
            cluster.grpc[node_id],
            [
                kv_pb2.StreamRequest(id=1, put=kv_pb2.PutRequest(key=p + "a", value=b"1")),
                kv_pb2.StreamRequest(id=2, put=kv_pb2.PutRequest(key=p + "b", value=b"2")),
            ],
            kind=kind,
        )
        assert {i: r.code for i, r in answers.items()} == {1: OK, 2: OK}
        assert answers[1].put.index > 0 and answers[2].put.index != answers[1].put.index
        answers = exchange(
            cluster.grpc[node_id],
            [
                kv_pb2.StreamRequest(id=10, get=kv_pb2.GetRequest(key=p + "a")),
                kv_pb2.StreamRequest(
                    id=11,
                    compare_and_swap=kv_pb2.CompareAndSwapRequest(
                        key=p + "b", expected=b"2", value=b"3"
                    ),
                ),
                kv_pb2.StreamRequest(id=12, delete=kv_pb2.DeleteRequest(key=p + "zzz")),
                kv_pb2.StreamRequest(id=13, range=kv_pb2.RangeRequest(prefix=p)),
            ],
            kind=kind,
        )
        assert all(r.code == OK for r in answers.values()), answers
        assert answers[10].get.found and answers[10].get.value == b"1"
        cas = answers[11].compare_and_swap
        assert (cas.swapped, cas.found, cas.current) == (True, True, b"2"), "current: before"
        assert answers[12].delete.deleted is False
        keys = [kv.key for kv in answers[13].range.items]
        assert keys == [p + "a", p + "b"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_request_fails_alone(cluster: ProcessCluster, kind: str) -> None:
    """Also when it shares a batch with good ones: the batch's other
    requests are served and answered as if it were not there."""
    answers = exchange(
        cluster.grpc[cluster.ids[0]],
        [
            kv_pb2.StreamRequest(id=1, put=kv_pb2.PutRequest(key="", value=b"x")),
            kv_pb2.StreamRequest(id=2, put=kv_pb2.PutRequest(key="big", value=b"x" * (2 << 20))),
            kv_pb2.StreamRequest(id=3, get=kv_pb2.GetRequest(key="k", consistency=7)),  # type: ignore[arg-type]
            kv_pb2.StreamRequest(id=4),
            kv_pb2.StreamRequest(id=5, put=kv_pb2.PutRequest(key="fine", value=b"ok")),
        ],
        kind=kind,
    )
    assert {i: r.code for i, r in answers.items()} == {
        1: INVALID_ARGUMENT,
        2: INVALID_ARGUMENT,
        3: INVALID_ARGUMENT,
        4: INVALID_ARGUMENT,
        5: OK,
    }
    assert "empty" in answers[1].message
    assert "limit" in answers[2].message or "1048576" in answers[2].message
    assert "consistency" in answers[3].message
    assert "no operation" in answers[4].message
    assert answers[5].put.index > 0


@pytest.mark.parametrize("kind", KINDS)
def test_each_request_keeps_its_own_deadline(cluster: ProcessCluster, kind: str) -> None:
    """With both followers paused a write cannot commit: it ends at its own
    ``timeout_ms`` with DEADLINE_EXCEEDED, while the read beside it (in the
    same batch) is answered, and the stream itself ends OK long before its
    own gRPC deadline."""
    leader = cluster.wait_for_leader()
    with followers_paused(cluster, leader):
        # 100 ms: well before CheckQuorum could step the leader down
        # (an election timeout, 300 ms here), which would make it UNAVAILABLE.
        answers = exchange(
            cluster.grpc[leader],
            [
                kv_pb2.StreamRequest(
                    id=1, timeout_ms=100, put=kv_pb2.PutRequest(key=f"{kind}/late", value=b"x")
                ),
                kv_pb2.StreamRequest(
                    id=2, get=kv_pb2.GetRequest(key=f"{kind}/late", consistency=kv_pb2.SERIALIZABLE)
                ),
            ],
            timeout=20,
            kind=kind,
        )
    assert answers[1].code == DEADLINE_EXCEEDED, answers[1]
    assert answers[2].code == OK and not answers[2].get.found, answers[2]
    cluster.wait_for_leader()


@pytest.mark.parametrize("kind", KINDS)
def test_a_linearizable_read_needs_a_quorum(cluster: ProcessCluster, kind: str) -> None:
    """With both followers paused the leader cannot confirm a ReadIndex
    round: the linearizable reads of a batch (which share one round) end
    DEADLINE_EXCEEDED, each at its own deadline, and are never answered from
    the leader's memory; the serializable read beside them is."""
    leader = cluster.wait_for_leader()

    def get(n: int, consistency: int, timeout_ms: int = 0) -> kv_pb2.StreamRequest:
        request = kv_pb2.GetRequest(key=f"{kind}/quorum", consistency=consistency)
        return kv_pb2.StreamRequest(id=n, timeout_ms=timeout_ms, get=request)

    with followers_paused(cluster, leader):
        # Under 300 ms, the election timeout here, as in the test above.
        answers = exchange(
            cluster.grpc[leader],
            [
                get(1, kv_pb2.LINEARIZABLE, 100),
                get(2, kv_pb2.SERIALIZABLE),
                get(3, kv_pb2.LINEARIZABLE, 150),
            ],
            timeout=20,
            kind=kind,
        )
    assert answers[1].code == DEADLINE_EXCEEDED, answers[1]
    assert answers[3].code == DEADLINE_EXCEEDED, answers[3]
    assert answers[2].code == OK, answers[2]
    cluster.wait_for_leader()


@pytest.mark.parametrize("kind", KINDS)
def test_many_requests_in_flight_on_one_stream(cluster: ProcessCluster, kind: str) -> None:
    """More than --max-inflight-per-connection at once: those over it wait
    for room (a batch is read already: its requests start one by one as
    answers are written), none is refused."""
    leader = cluster.wait_for_leader()
    n = 300
    assert n > PER_CONNECTION
    messages: list[int] = []
    answers = exchange(
        cluster.grpc[leader],
        [
            kv_pb2.StreamRequest(
                id=i, put=kv_pb2.PutRequest(key=f"{kind}/many/{i}", value=b"%d" % i)
            )
            for i in range(n)
        ],
        kind=kind,
        messages=messages,
    )
    assert sorted(answers) == list(range(n))
    assert all(r.code == OK for r in answers.values()), {r.message for r in answers.values()}
    assert len({r.put.index for r in answers.values()}) == n, "each write its own entry"
    if kind == "batch":
        # Writes applied in one turn of the Raft loop are answered together.
        assert len(messages) < n and max(messages) > 1, messages
    reads = exchange(
        cluster.grpc[leader],
        [
            kv_pb2.StreamRequest(id=i, get=kv_pb2.GetRequest(key=f"{kind}/many/{i}"))
            for i in range(n)
        ],
        kind=kind,
    )
    assert all(reads[i].get.value == b"%d" % i for i in range(n))


@pytest.mark.parametrize("consistency", [kv_pb2.SERIALIZABLE, kv_pb2.LINEARIZABLE])
def test_a_batch_of_reads_is_answered_in_groups(cluster: ProcessCluster, consistency: int) -> None:
    """The reads of a batch are served ANSWER_CHUNK at a time and each
    group's answers leave before the next is served (server/rpc/streams.py),
    so the client can take up the first while the node serves the rest; a
    batch of writes is answered as its entries are applied, together."""
    leader = cluster.wait_for_leader()
    n = 60  # under --max-inflight-per-connection: no request waits for room
    writes: list[int] = []
    exchange(
        cluster.grpc[leader],
        [
            kv_pb2.StreamRequest(id=i, put=kv_pb2.PutRequest(key=f"groups/{i}", value=b"v"))
            for i in range(n)
        ],
        kind="batch",
        messages=writes,
    )
    messages: list[int] = []
    answers = exchange(
        cluster.grpc[leader],
        [
            kv_pb2.StreamRequest(
                id=i, get=kv_pb2.GetRequest(key=f"groups/{i}", consistency=consistency)
            )
            for i in range(n)
        ],
        kind="batch",
        messages=messages,
    )
    assert all(answers[i].get.value == b"v" for i in range(n))
    assert sum(messages) == n and len(messages) >= 2, messages
    assert max(messages) <= ANSWER_CHUNK, messages
    assert max(writes) > ANSWER_CHUNK, writes


@pytest.mark.parametrize("kind", KINDS)
def test_a_read_answered_in_place_is_the_unary_answer(cluster: ProcessCluster, kind: str) -> None:
    """A Get that waits for nothing (serializable, or linearizable once its
    batch's round is confirmed) is answered without a task
    (services.py KVService._stream_now); one that waits (a linearizable
    read on KV.Stream, a value over SMALL_ANSWER) or fails takes the unary
    path. Either way the answer is the unary KV.Get's, header and key
    metadata included."""
    leader = cluster.wait_for_leader()
    big = b"b" * (SMALL_ANSWER + 1)
    values = {f"inplace/{kind}/small": b"s", f"inplace/{kind}/big": big}
    for key, value in values.items():
        answers = exchange(
            cluster.grpc[leader],
            [kv_pb2.StreamRequest(id=1, put=kv_pb2.PutRequest(key=key, value=value))],
        )
        assert answers[1].code == OK
    keys = [*values, f"inplace/{kind}/absent"]
    requests = [
        kv_pb2.StreamRequest(id=n, get=kv_pb2.GetRequest(key=key, consistency=consistency))
        for n, (key, consistency) in enumerate(
            (key, consistency)
            for key in keys
            for consistency in (kv_pb2.SERIALIZABLE, kv_pb2.LINEARIZABLE)
        )
    ]
    requests.append(
        kv_pb2.StreamRequest(id=99, get=kv_pb2.GetRequest(key="", consistency=kv_pb2.SERIALIZABLE))
    )
    answers = exchange(cluster.grpc[leader], requests, kind=kind)

    async def unary(request: kv_pb2.GetRequest) -> kv_pb2.GetResponse:
        async with grpc.aio.insecure_channel(cluster.grpc[leader]) as channel:
            return await kv_pb2_grpc.KVStub(channel).Get(request, timeout=10)

    for request in requests[:-1]:
        answer = answers[request.id]
        assert answer.code == OK, answer.message
        assert answer.get == asyncio.run(unary(request.get)), request.get
    assert answer.get.found is False  # the absent key's
    assert answers[0].get.value == b"s" and answers[2].get.value == big
    assert answers[99].code == INVALID_ARGUMENT and "empty" in answers[99].message


@pytest.mark.parametrize("kind", KINDS)
def test_a_retried_write_with_its_session_applies_once(cluster: ProcessCluster, kind: str) -> None:
    """Also when both copies travel in one batch (a client that retried
    before its first attempt was answered)."""
    session = kv_pb2.Session(client_id=987654321 + len(kind), sequence=1)
    put = kv_pb2.PutRequest(key=f"{kind}/once", value=b"v", session=session)
    answers = exchange(
        cluster.grpc[cluster.ids[1]],
        [kv_pb2.StreamRequest(id=1, put=put), kv_pb2.StreamRequest(id=2, put=put)],
        kind=kind,
    )
    assert answers[1].code == answers[2].code == OK
    assert answers[1].put.index == answers[2].put.index, "the reply of the first application"


def test_a_batch_over_the_limit_ends_the_stream_unread(cluster: ProcessCluster) -> None:
    """More than 1,024 requests in one message: INVALID_ARGUMENT, counted
    before the message is decoded (1,025 empty requests are 2 bytes each on
    the wire and far more decoded), and none of them is served. An empty
    batch is answered by nothing, and the stream goes on."""
    leader = cluster.wait_for_leader()
    put = kv_pb2.StreamRequest(id=1, put=kv_pb2.PutRequest(key="batch/over", value=b"x"))

    async def run() -> tuple[grpc.StatusCode, str, int]:
        async with grpc.aio.insecure_channel(cluster.grpc[leader]) as channel:
            call = kv_pb2_grpc.KVStub(channel).StreamBatch(timeout=20)
            await call.write(kv_pb2.StreamBatchRequest())
            await call.write(kv_pb2.StreamBatchRequest(requests=[put]))
            first = await call.read()
            assert [r.id for r in first.responses] == [1] and first.responses[0].code == OK
            over = [kv_pb2.StreamRequest(id=10 + i, put=put.put) for i in range(MAX_BATCH + 1)]
            await call.write(kv_pb2.StreamBatchRequest(requests=over))
            answered = 0
            with contextlib.suppress(grpc.aio.AioRpcError):
                while (message := await call.read()) is not grpc.aio.EOF:
                    answered += len(message.responses)
            return await call.code(), await call.details(), answered

    code, details, answered = asyncio.run(run())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "more than 1024" in details
    assert answered == 0
    with grpc.insecure_channel(cluster.grpc[leader]) as channel:
        found = kv_pb2_grpc.KVStub(channel).Get(kv_pb2.GetRequest(key="batch/over"), timeout=10)
    assert found.found  # the good batch before it was applied

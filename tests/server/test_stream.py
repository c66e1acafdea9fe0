"""``KV.Stream`` on three real node processes: every operation, answers
matched by id (in completion order), a bad request failing alone, many
requests in flight on one stream, and sessions deduplicating retries."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest

from ramraft.proto import kv_pb2, kv_pb2_grpc
from tests.server.procs import ProcessCluster

OK = grpc.StatusCode.OK.value[0]
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    with ProcessCluster(tmp_path_factory.mktemp("stream")) as c:
        c.wait_for_leader()
        yield c


def exchange(
    endpoint: str, requests: list[kv_pb2.StreamRequest], timeout: float = 20
) -> dict[int, kv_pb2.StreamResponse]:
    """Send every request on one stream before reading; the responses by id."""

    async def run() -> dict[int, kv_pb2.StreamResponse]:
        async with grpc.aio.insecure_channel(endpoint) as channel:
            call = kv_pb2_grpc.KVStub(channel).Stream(timeout=timeout)
            for request in requests:
                await call.write(request)
            await call.done_writing()
            answers: dict[int, kv_pb2.StreamResponse] = {}
            async for response in call:
                assert response.id not in answers, f"two answers for {response.id}"
                answers[response.id] = response
            assert await call.code() == grpc.StatusCode.OK
            return answers

    return asyncio.run(run())


def test_every_operation_through_leader_and_follower(cluster: ProcessCluster) -> None:
    leader = cluster.wait_for_leader()
    follower = next(i for i in cluster.ids if i != leader)
    for node_id in (leader, follower):
        p = f"{node_id}/"
        answers = exchange(
            cluster.grpc[node_id],
            [
                kv_pb2.StreamRequest(id=1, put=kv_pb2.PutRequest(key=p + "a", value=b"1")),
                kv_pb2.StreamRequest(id=2, put=kv_pb2.PutRequest(key=p + "b", value=b"2")),
            ],
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
        )
        assert all(r.code == OK for r in answers.values()), answers
        assert answers[10].get.found and answers[10].get.value == b"1"
        cas = answers[11].compare_and_swap
        assert (cas.swapped, cas.found, cas.current) == (True, True, b"2"), "current: before"
        assert answers[12].delete.deleted is False
        keys = [kv.key for kv in answers[13].range.items]
        assert keys == [p + "a", p + "b"]


def test_a_bad_request_fails_alone(cluster: ProcessCluster) -> None:
    answers = exchange(
        cluster.grpc[cluster.ids[0]],
        [
            kv_pb2.StreamRequest(id=1, put=kv_pb2.PutRequest(key="", value=b"x")),
            kv_pb2.StreamRequest(id=2, put=kv_pb2.PutRequest(key="big", value=b"x" * (2 << 20))),
            kv_pb2.StreamRequest(id=3, get=kv_pb2.GetRequest(key="k", consistency=7)),  # type: ignore[arg-type]
            kv_pb2.StreamRequest(id=4),
            kv_pb2.StreamRequest(id=5, put=kv_pb2.PutRequest(key="fine", value=b"ok")),
        ],
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


def test_many_requests_in_flight_on_one_stream(cluster: ProcessCluster) -> None:
    leader = cluster.wait_for_leader()
    n = 300
    answers = exchange(
        cluster.grpc[leader],
        [
            kv_pb2.StreamRequest(id=i, put=kv_pb2.PutRequest(key=f"many/{i}", value=b"%d" % i))
            for i in range(n)
        ],
    )
    assert sorted(answers) == list(range(n))
    assert all(r.code == OK for r in answers.values())
    assert len({r.put.index for r in answers.values()}) == n, "each write its own entry"
    reads = exchange(
        cluster.grpc[leader],
        [kv_pb2.StreamRequest(id=i, get=kv_pb2.GetRequest(key=f"many/{i}")) for i in range(n)],
    )
    assert all(reads[i].get.value == b"%d" % i for i in range(n))


def test_a_retried_write_with_its_session_applies_once(cluster: ProcessCluster) -> None:
    session = kv_pb2.Session(client_id=987654321, sequence=1)
    put = kv_pb2.PutRequest(key="once", value=b"v", session=session)
    answers = exchange(
        cluster.grpc[cluster.ids[1]],
        [kv_pb2.StreamRequest(id=1, put=put), kv_pb2.StreamRequest(id=2, put=put)],
    )
    assert answers[1].code == answers[2].code == OK
    assert answers[1].put.index == answers[2].put.index, "the reply of the first application"

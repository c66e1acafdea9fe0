"""Three real node processes on loopback: the basic contract."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

import grpc
import pytest

from ramraft.client import SERIALIZABLE, Client, InvalidArgument
from ramraft.proto import kv_pb2, kv_pb2_grpc
from tests.server.procs import ProcessCluster

M = TypeVar("M", kv_pb2.PutResponse, kv_pb2.DeleteResponse)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    """One cluster for these tests (none kills a node; their keys differ)."""
    with ProcessCluster(tmp_path_factory.mktemp("basic")) as c:
        c.wait_for_leader()
        yield c


def test_writes_through_every_node_are_read_everywhere(cluster: ProcessCluster) -> None:
    for node_id in cluster.ids:
        with Client(cluster.grpc[node_id], timeout=10) as c:
            index = c.put(f"from-{node_id}", node_id.encode())
            assert index > 0
    for node_id in cluster.ids:
        with Client(cluster.grpc[node_id], timeout=10) as c:
            for writer in cluster.ids:
                assert c.get(f"from-{writer}") == writer.encode()


def test_delete_cas_and_range(cluster: ProcessCluster) -> None:
    with cluster.client() as c:
        c.put("a/1", b"x")
        c.put("a/2", b"y")
        c.put("b/1", b"z")
        page = c.range("a/")
        assert list(page.items) == [("a/1", b"x"), ("a/2", b"y")]
        assert not page.more
        swapped = c.cas("a/1", b"x", b"x2")
        # current is the value BEFORE the request (proto/kv.proto)
        assert (swapped.swapped, swapped.found, swapped.current) == (True, True, b"x")
        result = c.cas("a/1", b"wrong", b"x3")
        assert not result.swapped and result.current == b"x2"
        created = c.cas("new", None, b"created")
        assert (created.swapped, created.found, created.current) == (True, False, None)
        again = c.cas("new", None, b"again")
        assert (again.swapped, again.found, again.current) == (False, True, b"created")
        assert c.delete("a/2") is True
        assert c.delete("a/2") is False
        assert c.get("a/2") is None


def test_serializable_read_on_a_follower(cluster: ProcessCluster) -> None:
    leader = cluster.wait_for_leader()
    follower = next(i for i in cluster.ids if i != leader)
    with cluster.client() as c:
        index = c.put("k", b"v")
    cluster.wait_applied(follower, index)
    with Client(cluster.grpc[follower], timeout=5) as c:
        assert c.get("k", consistency=SERIALIZABLE) == b"v"


def test_bad_input_is_invalid_argument(cluster: ProcessCluster) -> None:
    with cluster.client() as c:
        with pytest.raises(InvalidArgument, match="empty"):
            c.put("", b"v")
        with pytest.raises(InvalidArgument, match="1024"):
            c.put("k" * 1025, b"v")
        with pytest.raises(InvalidArgument, match="limit"):
            c.put("k", b"v" * ((1 << 20) + 1))


def _reply(response: M) -> M:
    """A write's reply less what its header says of the answering node at
    the time of the answer (the cluster id, named meanwhile, and the term):
    the rest, its revision included, is the write's own and must repeat."""
    copy = type(response)()
    copy.CopyFrom(response)
    copy.header.ClearField("cluster_id")
    copy.header.ClearField("raft_term")
    return copy


def test_a_retried_write_gets_the_first_reply_and_index(cluster: ProcessCluster) -> None:
    """The same Session sent twice (a client retrying after a lost reply):
    applied once, and the retry's reply, index included, is the first one's."""
    leader = cluster.wait_for_leader()
    follower = next(i for i in cluster.ids if i != leader)
    with grpc.insecure_channel(cluster.grpc[follower]) as channel:
        kv = kv_pb2_grpc.KVStub(channel)

        def session(sequence: int) -> kv_pb2.Session:
            return kv_pb2.Session(client_id=77, sequence=sequence, first_unacked=sequence)

        put = kv_pb2.PutRequest(key="r", value=b"1", session=session(1))
        first_put = kv.Put(put, timeout=10)
        cas = kv_pb2.CompareAndSwapRequest(key="r", expected=b"1", value=b"2", session=session(2))
        first_cas = kv.CompareAndSwap(cas, timeout=10)
        delete = kv_pb2.DeleteRequest(key="r", session=session(3))
        first_delete = kv.Delete(delete, timeout=10)
        kv.Put(kv_pb2.PutRequest(key="r", value=b"other"), timeout=10)  # no session
        # the retries: not applied again ("r" stays b"other"), same replies
        assert _reply(kv.Delete(delete, timeout=10)) == _reply(first_delete)
        assert first_delete.deleted and first_delete.index > first_cas.index > first_put.index
        # sequence 3 moved first_unacked past 1 and 2: their retries are refused
        with pytest.raises(grpc.RpcError) as refused:
            kv.Put(put, timeout=10)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        get = kv.Get(kv_pb2.GetRequest(key="r"), timeout=10)
        assert (get.found, get.value) == (True, b"other")
    with grpc.insecure_channel(cluster.grpc[leader]) as channel:
        kv = kv_pb2_grpc.KVStub(channel)
        pipelined = [
            kv_pb2.PutRequest(
                key=f"p{s}",
                value=b"v",
                session=kv_pb2.Session(client_id=78, sequence=s, first_unacked=1),
            )
            for s in (1, 2, 3)
        ]
        first = [kv.Put(r, timeout=10) for r in reversed(pipelined)]  # out of order
        again = [kv.Put(r, timeout=10) for r in reversed(pipelined)]
        assert list(map(_reply, first)) == list(map(_reply, again))
        assert len({r.index for r in first}) == 3

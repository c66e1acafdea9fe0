"""Three real node processes on loopback: the basic contract."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from client import SERIALIZABLE, Client, InvalidArgument
from tests.server.procs import ProcessCluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ProcessCluster]:
    with ProcessCluster(tmp_path) as c:
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

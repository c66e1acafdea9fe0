"""A follower forwards a write to the leader, and its answer names the
leader (trailing metadata ``ramraft-leader`` on a unary call,
``StreamResponse.leader`` on a stream); both clients then send their next
writes to the leader directly, while their reads stay where they were.
A forwarded write costs the follower and the leader a gRPC call each: a
client that stayed on a follower wrote at a fifth of the rate of one on
the leader. Three real node processes; the followers' /metrics count the
writes they forwarded."""

from __future__ import annotations

import asyncio
import random
import re
import urllib.request
from collections.abc import Iterator

import grpc
import pytest

from ramraft.client import AsyncClient, Client
from ramraft.proto import kv_pb2, kv_pb2_grpc
from tests.server.procs import ProcessCluster
from tests.server.test_kv_api import wait_kv2

HINT = "ramraft-leader"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    with ProcessCluster(tmp_path_factory.mktemp("lead"), http=True) as c:
        c.wait_for_leader()
        yield c


def forwarded(cluster: ProcessCluster, node_id: str) -> int:
    """The writes ``node_id`` forwarded to the leader, by its /metrics."""
    with urllib.request.urlopen(f"http://{cluster.http[node_id]}/metrics", timeout=10) as r:
        text = r.read().decode()
    found = re.search(r"^ramraft_forwarded_writes_total (\S+)$", text, re.M)
    assert found is not None, text[:2000]
    return int(float(found.group(1)))


class _First(random.Random):
    """Makes a client start at its first endpoint."""

    def randrange(self, *args: object, **kwargs: object) -> int:
        return 0


def test_a_forwarded_write_names_the_leader(cluster: ProcessCluster) -> None:
    leader = cluster.wait_for_leader()
    follower = next(i for i in cluster.ids if i != leader)

    def unary_hint(node_id: str) -> str | None:
        with grpc.insecure_channel(cluster.grpc[node_id]) as channel:
            put = kv_pb2.PutRequest(key=f"unary/{node_id}", value=b"v")
            _, call = kv_pb2_grpc.KVStub(channel).Put.with_call(put, timeout=10)
            hint = dict(call.trailing_metadata() or ()).get(HINT)
            return None if hint is None else str(hint)

    def batch_hints(node_id: str) -> list[str]:
        async def run() -> list[str]:
            async with grpc.aio.insecure_channel(cluster.grpc[node_id]) as channel:
                call = kv_pb2_grpc.KVStub(channel).StreamBatch(timeout=10)
                await call.write(
                    kv_pb2.StreamBatchRequest(
                        requests=[
                            kv_pb2.StreamRequest(
                                id=n, put=kv_pb2.PutRequest(key=f"batch/{node_id}/{n}", value=b"v")
                            )
                            for n in (1, 2)
                        ]
                        + [kv_pb2.StreamRequest(id=3, get=kv_pb2.GetRequest(key="batch"))]
                    )
                )
                await call.done_writing()
                answers = [r async for message in call for r in message.responses]
                assert all(r.code == 0 for r in answers), answers
                return [r.leader for r in sorted(answers, key=lambda r: r.id)]

        return asyncio.run(run())

    assert unary_hint(follower) == cluster.grpc[leader]
    assert unary_hint(leader) is None
    # The writes name the leader; the read, served where it was asked, does not.
    assert batch_hints(follower) == [cluster.grpc[leader], cluster.grpc[leader], ""]
    assert batch_hints(leader) == ["", "", ""]


def test_a_forwarded_lease_grant_and_revoke_name_the_leader(cluster: ProcessCluster) -> None:
    """Leases are writes too: a follower's answer to LeaseGrant and
    LeaseRevoke names the leader, so a client's next writes go there."""
    leader = wait_kv2(cluster)
    follower = next(i for i in cluster.ids if i != leader)
    address = cluster.grpc[leader]

    def hints(node_id: str) -> tuple[str | None, str | None]:
        with grpc.insecure_channel(cluster.grpc[node_id]) as channel:
            stub = kv_pb2_grpc.LeaseStub(channel)
            granted, call = stub.Grant.with_call(kv_pb2.LeaseGrantRequest(ttl=30), timeout=10)
            grant = dict(call.trailing_metadata() or ()).get(HINT)
            grant = None if grant is None else str(grant)
            _, call = stub.Revoke.with_call(kv_pb2.LeaseRevokeRequest(id=granted.id), timeout=10)
            revoke = dict(call.trailing_metadata() or ()).get(HINT)
            return grant, None if revoke is None else str(revoke)

    assert hints(follower) == (address, address)
    assert hints(leader) == (None, None)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_lease_renewals_follow_the_grant_to_the_leader(cluster: ProcessCluster, kind: str) -> None:
    """A client starting at a follower: its lease grant is forwarded and
    names the leader, and its keep-alives (writes too) go there."""
    leader = wait_kv2(cluster)
    follower = next(i for i in cluster.ids if i != leader)
    endpoints = [cluster.grpc[follower]] + [cluster.grpc[i] for i in cluster.ids if i != follower]
    before = forwarded(cluster, follower)
    if kind == "sync":
        with Client(endpoints, timeout=10, rng=_First()) as client:
            grant = client.lease_grant(30)
            ttls = [client.lease_keep_alive(grant.id) for _ in range(3)]
            client.lease_revoke(grant.id)
    else:

        async def run() -> list[int]:
            async with AsyncClient(endpoints, timeout=10, rng=_First()) as client:
                grant = await client.lease_grant(30)
                ttls = [await client.lease_keep_alive(grant.id) for _ in range(3)]
                await client.lease_revoke(grant.id)
                return ttls

        ttls = asyncio.run(run())
    assert all(ttl > 0 for ttl in ttls), ttls
    assert forwarded(cluster, follower) - before == 1, "only the grant is forwarded"


@pytest.mark.parametrize("transport", ["stream", "unary"])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_client_on_a_follower_writes_to_the_leader(
    cluster: ProcessCluster, kind: str, transport: str
) -> None:
    """A client whose endpoints start with a follower: its first write is
    forwarded, the next ones go to the leader; its reads stay on the
    follower (which serves them: the follower's own linearizable read)."""
    leader = cluster.wait_for_leader()
    follower = next(i for i in cluster.ids if i != leader)
    endpoints = [cluster.grpc[follower]] + [cluster.grpc[i] for i in cluster.ids if i != follower]
    before = forwarded(cluster, follower)
    prefix = f"{kind}/{transport}/"
    if kind == "sync":
        with Client(endpoints, timeout=10, rng=_First(), transport=transport) as client:
            for n in range(20):
                client.put(f"{prefix}{n}", b"v")
            value = client.get(f"{prefix}7")
            reads_at = client._ring.current()
    else:

        async def run() -> tuple[bytes | None, str]:
            client = AsyncClient(endpoints, timeout=10, rng=_First(), transport=transport)
            try:
                for n in range(20):
                    await client.put(f"{prefix}{n}", b"v")
                return await client.get(f"{prefix}7"), client._ring.current()
            finally:
                await client.close()

        value, reads_at = asyncio.run(run())
    assert value == b"v"
    assert reads_at == cluster.grpc[follower], "reads stay where they were"
    assert forwarded(cluster, follower) - before == 1, "only the first write is forwarded"

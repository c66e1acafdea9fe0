"""Limits return the right status codes (issue 7): sizes, in-flight requests
per connection and in total, connections per port.

One node of a three-node cluster runs alone, so it never has a leader and
every write waits until its deadline: the easiest way to hold requests in
flight."""

from __future__ import annotations

import asyncio
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ramraft.client import Client, InvalidArgument, ResourceExhausted
from ramraft.proto import kv_pb2, kv_pb2_grpc
from ramraft.tools.cli import build_parser
from tests.security.cluster import SecureCluster
from tests.security.conftest import wait_for
from tests.server.procs import ProcessCluster, free_ports

LIMIT_FLAGS = [
    "--max-key-bytes", "64",
    "--max-value-bytes", "1000",
    "--max-request-bytes", "4096",
    "--max-http-body-bytes", "2048",
    "--max-inflight", "6",
    "--max-inflight-per-connection", "3",
    "--max-connections", "8",
]  # fmt: skip
WAIT = 2.5  # how long a write waits for a leader that never comes


class LoneNode(ProcessCluster):
    """n1 of n1..n3, with a separate peer port (so --max-request-bytes
    applies to the client port) and small limits."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, 3, http=True, extra_args=LIMIT_FLAGS)

    def pick_ports(self) -> None:
        super().pick_ports()
        self.peer_ports = {
            i: f"127.0.0.1:{p}" for i, p in zip(self.ids, free_ports(3), strict=True)
        }
        self.peers = ",".join(f"{i}={a}" for i, a in self.peer_ports.items())

    def argv(self, node_id: str) -> list[str]:
        return [
            *super().argv(node_id),
            *("--listen", self.grpc[node_id], "--peer-listen", self.peer_ports[node_id]),
        ]


@pytest.fixture(scope="module")
def lone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoneNode]:
    cluster = LoneNode(tmp_path_factory.mktemp("lone"))
    try:
        cluster.start_nodes(["n1"])

        def answers() -> bool:
            try:
                with grpc.insecure_channel(cluster.grpc["n1"]) as ch:
                    health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
                return True
            except grpc.RpcError:
                return False

        cluster.wait_until(answers, 30, "n1 answers")
        yield cluster
    finally:
        cluster.kill("n1")


def test_sizes(lone: LoneNode) -> None:
    with Client(lone.grpc["n1"], timeout=2) as client:
        with pytest.raises(InvalidArgument, match="key is 65 bytes"):
            client.put("k" * 65, b"v")
        with pytest.raises(InvalidArgument, match="value is 1001 bytes"):
            client.put("k", b"v" * 1001)
        with pytest.raises(ResourceExhausted) as e:
            client.put("k", b"v" * 5000)  # a message over --max-request-bytes
        assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and e.value.attempts == 1
    http = lone.http["n1"]
    request = urllib.request.Request(f"http://{http}/v1/kv/k", data=b"v" * 3000, method="PUT")
    with pytest.raises(urllib.error.HTTPError) as too_big:
        urllib.request.urlopen(request, timeout=5)
    assert too_big.value.code == 413
    request = urllib.request.Request(f"http://{http}/v1/kv/{'k' * 65}", data=b"v", method="PUT")
    with pytest.raises(urllib.error.HTTPError) as long_key:
        urllib.request.urlopen(request, timeout=5)
    assert long_key.value.code == 400


async def _puts(address: str, channels: int, per_channel: int) -> list[grpc.StatusCode]:
    """Concurrent Puts, ``per_channel`` on each of ``channels`` connections."""
    opened = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(channels)
    ]
    try:

        async def put(channel: grpc.aio.Channel, n: int) -> grpc.StatusCode:
            try:
                await kv_pb2_grpc.KVStub(channel).Put(
                    kv_pb2.PutRequest(key=f"k{n}", value=b"v"), timeout=WAIT
                )
            except grpc.aio.AioRpcError as e:
                return e.code()
            return grpc.StatusCode.OK

        for channel in opened:
            await channel.channel_ready()
        return await asyncio.gather(
            *(put(ch, n) for n, ch in enumerate(opened) for _ in range(per_channel))
        )
    finally:
        for channel in opened:
            await channel.close()


def test_inflight_per_connection(lone: LoneNode) -> None:
    codes = asyncio.run(_puts(lone.grpc["n1"], channels=1, per_channel=5))
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 2, codes
    assert all(
        c in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        for c in codes
        if c != grpc.StatusCode.RESOURCE_EXHAUSTED
    ), codes


def test_inflight_in_total(lone: LoneNode) -> None:
    """--max-inflight 6, and a reserve of 1 for a connection with (almost)
    nothing in flight: of 9 requests on 3 connections, 7 are served."""
    codes = asyncio.run(_puts(lone.grpc["n1"], channels=3, per_channel=3))
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 2, codes


def test_inflight_counts_http_too(lone: LoneNode) -> None:
    statuses: list[int] = []

    def put(n: int) -> None:
        request = urllib.request.Request(
            f"http://{lone.http['n1']}/v1/kv/h{n}?timeout={WAIT}", data=b"v", method="PUT"
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                statuses.append(response.status)
        except urllib.error.HTTPError as e:
            statuses.append(e.code)

    threads = [threading.Thread(target=put, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 8 connections, one request each: 6, then 1 from the reserve.
    assert statuses.count(429) == 1, statuses
    assert sorted(set(statuses)) == [429, 503], statuses


def test_connections_per_port(lone: LoneNode) -> None:
    host, port = lone.http["n1"].rsplit(":", 1)
    # No wait is needed before the ninth: the kernel queues connections in
    # the order their handshakes completed and the node accepts (and counts)
    # them in that order, so the eight are counted before the ninth arrives.
    held = [socket.create_connection((host, int(port)), timeout=5) for _ in range(8)]
    try:
        extra = socket.create_connection((host, int(port)), timeout=5)
        extra.settimeout(5)
        assert extra.recv(1) == b"", "the ninth HTTP connection is closed at once"
        extra.close()
        # ...by the limit, with the eight held ones counted
        wait_for(
            lambda: any(
                "http_connection_refused" in line and '"open": 8' in line
                for line in lone.node_log("n1").splitlines()
            ),
            what="the refusal logged with 8 open",
        )
    finally:
        for s in held:
            s.close()

    channels = [
        grpc.insecure_channel(lone.grpc["n1"], options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(9)
    ]
    try:
        results = []
        for channel in channels:
            try:
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=2
                )
                results.append("ok")
            except grpc.RpcError as e:
                results.append(e.code().name)  # type: ignore[attr-defined]
        assert results.count("ok") == 8 and results[-1] == "UNAVAILABLE", results
    finally:
        for channel in channels:
            channel.close()


def test_limits_are_documented_in_help() -> None:
    help_text = build_parser()._subparsers._group_actions[0].choices["node"].format_help()  # type: ignore[union-attr]
    for flag in (
        "--max-key-bytes", "--max-value-bytes", "--max-request-bytes", "--max-http-body-bytes",
        "--max-inflight", "--max-inflight-per-connection", "--max-connections",
        "--max-pending-requests", "--max-range-page", "--snapshot-chunk-bytes",
        "--tls-cert", "--tls-key", "--tls-ca", "--tls-client-auth", "--auth-tokens",
    ):  # fmt: skip
        assert flag in help_text, flag


def test_range_pages_are_capped(cluster: SecureCluster) -> None:
    """--max-range-page 2 (the shared TLS cluster): a Range asking for more,
    or for the default, gets 2 items and ``more``."""
    with cluster.client() as client:
        for n in range(3):
            client.put(f"paged/{n}", b"v")
        for limit in (0, 100):
            page = client.range("paged/", limit=limit)
            assert [k for k, _ in page.items] == ["paged/0", "paged/1"] and page.more

"""Three real nodes with TLS on every port (separate peer ports) and tokens:
who may connect where (issue 7)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ramraft.client import Client, TLSOptions, Unavailable
from ramraft.consensus.types import Message, MsgType
from tests.security.cluster import ADMIN_TOKEN, Credentials, SecureCluster
from tests.security.conftest import channel_credentials, send_batch, wait_for

HUGE_TERM = 10**9


def term_of(cluster: SecureCluster, node_id: str) -> int:
    status = cluster.status(node_id)
    assert status is not None, f"{node_id} does not answer"
    return status.term


def heartbeat(src: str, dst: str) -> list[Message]:
    """A well-formed message that would depose the cluster's leader if the
    receiver believed it (a leader's heartbeat from a far future term)."""
    return [Message(MsgType.HEARTBEAT, src, dst, HUGE_TERM)]


@pytest.mark.parametrize("who", ["no-certificate", "other-ca"])
def test_peer_port_refuses_the_handshake(
    cluster: SecureCluster, creds: Credentials, other_ca: Path, who: str
) -> None:
    leader = cluster.wait_for_leader()
    credentials = (
        channel_credentials(creds.certs, None)
        if who == "no-certificate"
        else channel_credentials(other_ca, "n2", ca=creds.certs / "ca.pem")
    )
    with pytest.raises(grpc.RpcError) as e:
        send_batch(cluster.peer_ports[leader], credentials, heartbeat("n2", leader))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert "Socket closed" in e.value.details(), "the node hung up in the handshake"  # type: ignore[attr-defined]
    assert term_of(cluster, leader) < HUGE_TERM


@pytest.mark.parametrize("who", ["n9", "client"])
def test_peer_port_refuses_a_certificate_that_is_not_a_member(
    cluster: SecureCluster, creds: Credentials, who: str
) -> None:
    """n9's certificate is from the cluster's CA but n9 is no member; the
    client certificate has no node identity. Both are refused before the
    batch (a heartbeat from the far future) is read."""
    leader = cluster.wait_for_leader()
    with pytest.raises(grpc.RpcError) as e:
        send_batch(
            cluster.peer_ports[leader],
            channel_credentials(creds.certs, who),
            heartbeat(who, leader),
        )
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    assert term_of(cluster, leader) < HUGE_TERM
    assert "peer_refused" in cluster.node_log(leader)


def test_a_member_certificate_cannot_send_for_another_member(
    cluster: SecureCluster, creds: Credentials
) -> None:
    leader = cluster.wait_for_leader()
    member, other = (i for i in cluster.ids if i != leader)
    summary = send_batch(
        cluster.peer_ports[leader],
        channel_credentials(creds.certs, member),
        heartbeat(other, leader),  # signed in as `member`, claims to be `other`
    )
    assert summary.batches == 1, "the call itself is accepted"
    wait_for(lambda: "peer_message_dropped" in cluster.node_log(leader), what="drop logged")
    assert term_of(cluster, leader) < HUGE_TERM
    assert cluster.wait_for_leader() == leader, "the forged heartbeat deposed nobody"


def test_clients_need_tls_on_the_client_port(
    cluster: SecureCluster, creds: Credentials, other_ca: Path
) -> None:
    node = cluster.ids[0]
    with (
        Client(cluster.grpc[node], timeout=1.5, token=ADMIN_TOKEN) as plain,
        # the node hangs up on a plaintext caller ("Connection refused" would
        # mean no node listening)
        pytest.raises(Unavailable, match="Socket closed"),
    ):
        plain.status(endpoint=cluster.grpc[node])
    # --tls-client-auth none on the client port: the CA alone is enough.
    tls = TLSOptions.from_files(ca=creds.certs / "ca.pem")
    with Client(cluster.grpc[node], timeout=5, token=ADMIN_TOKEN, tls=tls) as client:
        assert client.status(endpoint=cluster.grpc[node]).node.id == node
    # A CA the node's certificate does not chain to: no connection.
    other = TLSOptions.from_files(ca=other_ca / "ca.pem")
    with (
        Client(cluster.grpc[node], timeout=1.5, token=ADMIN_TOKEN, tls=other) as wrong,
        pytest.raises(Unavailable, match="Tls handshake failed"),
    ):
        wrong.status(endpoint=cluster.grpc[node])


def test_health_is_open_without_a_token(cluster: SecureCluster, creds: Credentials) -> None:
    node = cluster.ids[0]
    credentials = channel_credentials(creds.certs, None)
    with grpc.secure_channel(cluster.grpc[node], credentials) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="liveness"), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_followers_forward_writes_and_show_the_leaders_view_over_mtls(
    cluster: SecureCluster,
) -> None:
    """Forward and the web tier's Admin.Status to the leader both travel over
    the mutual-TLS peer port."""
    leader = cluster.wait_for_leader()
    follower = next(i for i in cluster.ids if i != leader)
    with cluster.client(ids=[follower]) as client:
        index = client.put("forwarded", b"yes")
        assert index > 0
    from tests.security.conftest import https

    reply = https(
        cluster.http[follower],
        "GET",
        "/v1/status",
        ca=cluster.creds.certs / "ca.pem",
        token=ADMIN_TOKEN,
    )
    assert reply.status == 200, reply.body
    status = reply.json()
    assert status["members_from"] == leader, status["members_error"]

"""TLS without --peer-listen: peers and clients share one port, so every
caller must present a certificate from the cluster's CA (grpc-python cannot
ask for a client certificate without requiring it), and the Peer service
still requires a member's identity. Tokens are off here: with TLS alone,
anyone holding a certificate from the CA may read and write.
``--tls-client-auth require`` also makes the web tier ask for one."""

from __future__ import annotations

import ssl
import urllib.error
from collections.abc import Iterator
from http.client import RemoteDisconnected

import grpc
import pytest

from ramraft.client import Client, TLSOptions, Unavailable
from ramraft.consensus.types import Message, MsgType
from tests.security.cluster import Credentials, SecureCluster
from tests.security.conftest import channel_credentials, https, send_batch


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, creds: Credentials) -> Iterator[SecureCluster]:
    root = tmp_path_factory.mktemp("shared-port")
    with SecureCluster(
        root, creds, tokens=False, http=True, extra_args=["--tls-client-auth", "require"]
    ) as c:
        c.wait_for_leader()
        yield c


def test_a_client_without_a_certificate_cannot_connect(
    shared: SecureCluster, creds: Credentials
) -> None:
    node = shared.ids[0]
    tls = TLSOptions.from_files(ca=creds.certs / "ca.pem")
    # "Socket closed": the node hung up in the handshake (a node that is not
    # listening would say "Connection refused")
    with (
        Client(shared.grpc[node], timeout=1.5, tls=tls) as client,
        pytest.raises(Unavailable, match="Socket closed"),
    ):
        client.get("k")


def test_a_client_certificate_reads_and_writes_but_is_no_peer(
    shared: SecureCluster, creds: Credentials
) -> None:
    leader = shared.wait_for_leader()
    with shared.client() as client:  # the "client" certificate, no token
        client.put("k", b"v")
        assert client.get("k") == b"v"
    with pytest.raises(grpc.RpcError) as e:
        send_batch(
            shared.grpc[leader],
            channel_credentials(creds.certs, "client"),
            [Message(MsgType.HEARTBEAT, "n2", leader, 10**9)],
        )
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]


def test_the_web_tier_requires_a_client_certificate(
    shared: SecureCluster, creds: Credentials
) -> None:
    node = shared.ids[0]
    ca = creds.certs / "ca.pem"
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)) as refused:
        https(shared.http[node], "GET", "/v1/status", ca=ca)
    # Refused by TLS (an alert, or a hang-up right after the handshake under
    # TLS 1.3), not for want of a listening node (ConnectionRefusedError).
    reason = getattr(refused.value, "reason", refused.value)
    assert isinstance(reason, (ssl.SSLError, RemoteDisconnected, ConnectionResetError)), reason
    cert = (creds.certs / "client.pem", creds.certs / "client-key.pem")
    assert https(shared.http[node], "GET", "/v1/status", ca=ca, cert=cert).status == 200

"""Certificates are re-read when their files change (k8s rotates Secrets):
new connections to every port get the new certificate, and a node's new
outbound peer connections present its new certificate; files that change
into something unusable are refused and the old certificate stays."""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from ramraft.tools.certs import issue
from tests.security.cluster import SecureCluster, make_credentials
from tests.security.conftest import wait_for


@pytest.fixture(scope="module")
def rotating(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureCluster]:
    root = tmp_path_factory.mktemp("reload")
    creds = make_credentials(root, ["n1", "n2", "n3"])
    with SecureCluster(root, creds, http=True, peer_listen=True) as c:
        c.wait_for_leader()
        yield c


def served_fingerprint(address: str, ca: Path, alpn: str | None) -> str:
    """The fingerprint of the certificate a TLS handshake with ``address`` gets."""
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(ca))
    if alpn:
        context.set_alpn_protocols([alpn])
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).fingerprint(hashes.SHA256()).hex()


def file_fingerprint(path: Path) -> str:
    return x509.load_pem_x509_certificate(path.read_bytes()).fingerprint(hashes.SHA256()).hex()


def reissue(certs: Path, node_id: str) -> str:
    """A new key and certificate for ``node_id`` from the same CA, swapped in
    the way a Secret volume does it: written aside, then renamed."""
    ca_cert = x509.load_pem_x509_certificate((certs / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((certs / "ca-key.pem").read_bytes(), None)
    cert, key = issue(ca_cert, ca_key, node_id, ["127.0.0.1", "localhost"], 2, node=True)
    for name, data in ((f"{node_id}-key.pem", key), (f"{node_id}.pem", cert)):
        tmp = certs / f".{name}.new"
        tmp.write_bytes(data)
        os.replace(tmp, certs / name)
    return file_fingerprint(certs / f"{node_id}.pem")


def test_rotated_certificates_are_used_by_new_connections(rotating: SecureCluster) -> None:
    certs = rotating.creds.certs
    ca = certs / "ca.pem"
    old = file_fingerprint(certs / "n1.pem")
    assert served_fingerprint(rotating.grpc["n1"], ca, "h2") == old
    assert served_fingerprint(rotating.http["n1"], ca, None) == old

    new = reissue(certs, "n1")
    assert new != old
    wait_for(lambda: served_fingerprint(rotating.grpc["n1"], ca, "h2") == new, 10, "gRPC port")
    wait_for(lambda: served_fingerprint(rotating.http["n1"], ca, None) == new, 10, "HTTP port")
    assert "tls_reloaded" in rotating.node_log("n1")

    # n1's links to its peers reconnect when a peer restarts: the new
    # connection must present n1's new certificate. (n1 leads, so that it
    # has something to send to n2.)
    with rotating.client() as client:
        client.transfer_leadership("n1")
    rotating.kill("n2")
    rotating.start("n2")
    wait_for(
        lambda: f'"certificate": "{new}"' in rotating.node_log("n2"),
        20,
        "n2 sees n1's new certificate",
    )
    rotating.wait_for_leader()
    with rotating.client() as client:
        client.put("after-rotation", b"ok")


def test_a_broken_rotation_keeps_the_old_certificate(rotating: SecureCluster) -> None:
    certs = rotating.creds.certs
    ca = certs / "ca.pem"
    current = file_fingerprint(certs / "n3.pem")
    # The key of another node: the pair does not match.
    tmp = certs / ".n3-key.pem.new"
    tmp.write_bytes((certs / "n2-key.pem").read_bytes())
    os.replace(tmp, certs / "n3-key.pem")
    wait_for(lambda: "tls_reload_refused" in rotating.node_log("n3"), 10, "refusal logged")
    assert served_fingerprint(rotating.grpc["n3"], ca, "h2") == current
    with rotating.client(ids=["n3"]) as client:
        client.put("still-serving", b"ok")

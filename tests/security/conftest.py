"""Certificates, tokens and a TLS cluster shared by the security tests."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from ramraft.consensus.types import Message
from ramraft.proto import raft_pb2
from ramraft.server.runtime.wire import serialize_batch
from ramraft.tools.certs import make_cluster_certs
from tests.httpcalls import Reply, http, wait_until
from tests.security.cluster import Credentials, SecureCluster, make_credentials

NODES = ["n1", "n2", "n3"]


@pytest.fixture(scope="session")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Credentials:
    # n9: a node certificate from the cluster's CA for a node that is no member.
    return make_credentials(tmp_path_factory.mktemp("creds"), NODES, extra_nodes=["n9"])


@pytest.fixture(scope="session")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second CA with certificates for the same names."""
    out = tmp_path_factory.mktemp("other-ca")
    make_cluster_certs(out, {n: ["127.0.0.1", "localhost"] for n in NODES}, days=2)
    return out


@pytest.fixture(scope="session")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, creds: Credentials
) -> Iterator[SecureCluster]:
    """Three nodes, TLS on every port, tokens on, separate peer ports, web
    tier; Range pages of at most 2 items."""
    root = tmp_path_factory.mktemp("tls-cluster")
    with SecureCluster(
        root, creds, http=True, peer_listen=True, extra_args=["--max-range-page", "2"]
    ) as c:
        c.wait_for_leader()
        yield c


def identity(data: bytes) -> bytes:
    return data


def channel_credentials(certs: Path, name: str | None, ca: Path | None = None) -> Any:
    root = (ca or certs / "ca.pem").read_bytes()
    if name is None:
        return grpc.ssl_channel_credentials(root)
    return grpc.ssl_channel_credentials(
        root, (certs / f"{name}-key.pem").read_bytes(), (certs / f"{name}.pem").read_bytes()
    )


def send_batch(address: str, credentials: Any, messages: list[Message]) -> raft_pb2.StreamSummary:
    """One Peer.Stream call carrying one batch, as a peer would send it."""
    with grpc.secure_channel(address, credentials) as channel:
        call = channel.stream_unary(
            "/ramraft.peer.v1.Peer/Stream",
            request_serializer=identity,
            response_deserializer=raft_pb2.StreamSummary.FromString,
        )
        result: raft_pb2.StreamSummary = call(iter([serialize_batch(messages)]), timeout=5)
        return result


def https(
    address: str,
    method: str,
    path: str,
    *,
    ca: Path,
    token: str | None = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    cert: tuple[Path, Path] | None = None,
) -> Reply:
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    return http(address, method, path, body, all_headers, context=context)


def wait_for(predicate: Any, timeout: float = 20.0, what: str = "condition") -> Any:
    return wait_until(predicate, timeout, what)

"""A blob upload may take minutes, but not stall: each piece must arrive
within --request-timeout-ms (gRPC: DEADLINE_EXCEEDED; HTTP: 408), so an
upload that trickles gives its in-flight slot back, and nothing of it is
kept."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ramraft.proto import blobs_pb2, blobs_pb2_grpc
from tests.blobs.test_blob_cluster import BlobCluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BlobCluster]:
    root = tmp_path_factory.mktemp("stalled")
    with BlobCluster(root, nodes=1, http=True, extra_args=["--request-timeout-ms", "500"]) as c:
        c.wait_for_leader()
        c.wait_blobs_enabled()
        yield c


def _temporary_files(cluster: BlobCluster) -> list[Path]:
    return list((cluster.data_dir("n1") / "blobs" / "tmp").iterdir())


def test_a_grpc_upload_that_stalls_is_cut(cluster: BlobCluster) -> None:
    def stalling() -> Iterator[blobs_pb2.PutBlobRequest]:
        yield blobs_pb2.PutBlobRequest(content_type="text/plain", data=b"a first piece")
        time.sleep(3)  # then nothing, for longer than --request-timeout-ms
        yield blobs_pb2.PutBlobRequest(data=b"too late")

    with grpc.insecure_channel(cluster.grpc["n1"]) as channel:
        stub = blobs_pb2_grpc.BlobsServiceStub(channel)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            stub.PutBlob(stalling(), timeout=30)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "did not arrive within 0.5 s" in (e.value.details() or "")
        assert time.monotonic() - started < 10  # cut, not left to the call's 30 s
    cluster.wait_until(lambda: not _temporary_files(cluster), 10, "the partial upload removed")


def test_an_http_upload_that_stalls_is_408(cluster: BlobCluster) -> None:
    host, port = cluster.http["n1"].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/blobs HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 1000\r\n\r\nonly part of the body"
        )
        reply = sock.recv(4096).decode(errors="replace")
    assert reply.startswith("HTTP/1.1 408"), reply
    assert "request_timeout" in reply and "stalled" in reply
    cluster.wait_until(lambda: not _temporary_files(cluster), 10, "the partial upload removed")

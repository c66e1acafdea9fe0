"""Blobs over HTTP (server/web/blobs.py) on three real nodes: upload by
POST/PUT through one node, download from another with Content-Type, ETag
(304), one Range (206/416) and HEAD; errors as JSON."""

from __future__ import annotations

import hashlib
import os

import grpc
import pytest

from ramraft.proto import blobs_pb2, blobs_pb2_grpc
from ramraft.server.web.blobs import RangeNotSatisfiable, parse_range
from tests.server.procs import ProcessCluster
from tests.web.conftest import http, roles, wait_until


def _enabled(cluster: ProcessCluster) -> None:
    def ready() -> bool:
        statuses = [cluster.status(n) for n in cluster.ids]
        return all(s is not None and s.kv_version >= 2 for s in statuses)

    wait_until(ready, 30, "blobs enabled")


def test_upload_through_a_follower_and_download_from_every_node(
    kv_cluster: ProcessCluster,
) -> None:
    _enabled(kv_cluster)
    _, followers = roles(kv_cluster)
    data = os.urandom((3 << 20) + 5)
    digest = hashlib.sha256(data).hexdigest()
    reply = http(
        kv_cluster.http[followers[0]], "POST", "/v1/blobs", data, {"Content-Type": "image/png"}
    )
    assert reply.status == 201, reply.body
    created = reply.json()
    assert created["sha256"] == digest and created["size"] == len(data)
    assert created["content_type"] == "image/png" and created["index"] > 0
    assert reply.headers["Location"] == f"/v1/blobs/{digest}"
    for node in kv_cluster.ids:
        got = http(kv_cluster.http[node], "GET", f"/v1/blobs/{digest}")
        assert got.status == 200 and got.body == data, node
        assert got.headers["Content-Type"] == "image/png"
        assert got.headers["ETag"] == f'"{digest}"'
        assert got.headers["Accept-Ranges"] == "bytes"
        assert "immutable" in got.headers["Cache-Control"]
        assert got.headers["X-Content-Type-Options"] == "nosniff"
        assert got.headers["Content-Security-Policy"] == "sandbox"


def test_etag_range_and_head(kv_cluster: ProcessCluster) -> None:
    _enabled(kv_cluster)
    node = kv_cluster.http[kv_cluster.ids[0]]
    data = bytes(range(256)) * 40
    digest = hashlib.sha256(data).hexdigest()
    typed = {"Content-Type": "text/plain; charset=latin-1"}
    assert http(node, "PUT", f"/v1/blobs/{digest}", data, typed).status == 201
    path = f"/v1/blobs/sha256:{digest}"  # the prefixed form names it too
    etag = f'"{digest}"'
    assert http(node, "GET", path, headers={"If-None-Match": etag}).status == 304
    assert http(node, "GET", path, headers={"If-None-Match": '"other"'}).status == 200
    part = http(node, "GET", path, headers={"Range": "bytes=2-5"})
    assert part.status == 206 and part.body == data[2:6]
    assert part.headers["Content-Range"] == f"bytes 2-5/{len(data)}"
    assert http(node, "GET", path, headers={"Range": "bytes=-3"}).body == data[-3:]
    assert http(node, "GET", path, headers={"Range": "bytes=10000-"}).body == data[10000:]
    assert http(node, "GET", path, headers={"Range": "bytes=100-99999999"}).body == data[100:]
    beyond = http(node, "GET", path, headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status == 416 and beyond.headers["Content-Range"] == f"bytes */{len(data)}"
    assert beyond.json()["error"] == "range_not_satisfiable", (
        beyond.body
    )  # JSON, as every /v1/ error
    # Several ranges: served whole (a server may ignore Range).
    assert http(node, "GET", path, headers={"Range": "bytes=0-1,5-6"}).body == data
    head = http(node, "HEAD", path)
    assert head.status == 200 and head.body == b""
    assert head.headers["Content-Length"] == str(len(data))
    assert head.headers["Content-Type"] == "text/plain; charset=latin-1"


def test_errors_are_json(kv_cluster: ProcessCluster) -> None:
    _enabled(kv_cluster)
    node = kv_cluster.http[kv_cluster.ids[1]]
    missing = hashlib.sha256(b"never uploaded").hexdigest()
    reply = http(node, "GET", f"/v1/blobs/{missing}")
    assert reply.status == 404 and reply.json()["error"] == "not_found"
    reply = http(node, "GET", "/v1/blobs/not-a-digest")
    assert reply.status == 400 and "64 hex digits" in reply.json()["detail"]
    reply = http(node, "PUT", f"/v1/blobs/{missing}", b"other bytes")
    assert reply.status == 400 and "not the" in reply.json()["detail"]
    reply = http(node, "POST", "/v1/blobs", b"x", {"Content-Type": "bad\u00e9type"})
    assert reply.status == 400 and "content type" in reply.json()["detail"]
    # A body that does not decode as its Content-Encoding says (not a 500).
    reply = http(node, "POST", "/v1/blobs", b"not gzip", {"Content-Encoding": "gzip"})
    assert reply.status == 400 and "content-encoding" in reply.json()["detail"].lower()
    data = b"short-lived"
    digest = hashlib.sha256(data).hexdigest()
    assert http(node, "POST", "/v1/blobs", data).status == 201
    assert http(node, "DELETE", f"/v1/blobs/{digest}").json()["deleted"] is True
    assert http(node, "GET", f"/v1/blobs/{digest}").status == 404
    assert http(node, "DELETE", f"/v1/blobs/{digest}").json()["deleted"] is False


def test_metrics_count_blobs(kv_cluster: ProcessCluster) -> None:
    _enabled(kv_cluster)
    node = kv_cluster.http[kv_cluster.ids[2]]
    assert http(node, "POST", "/v1/blobs", b"counted").status == 201

    def scrape() -> dict[str, float]:
        text = http(node, "GET", "/metrics").body.decode()
        return {
            line.split()[0]: float(line.split()[1])
            for line in text.splitlines()
            if line.startswith("ramraft_blob")
        }

    # Every blob reaches every node: what this one lacks it fetches.
    wait_until(lambda: scrape()["ramraft_blobs_missing"] == 0, 30, "no blob missing")
    values = scrape()
    assert values["ramraft_blobs"] >= 1 and values["ramraft_blob_bytes"] >= 7
    assert values["ramraft_blob_disk_free_bytes"] > 0
    assert "ramraft_blobs_fetched_total" in values and "ramraft_blobs_deleted_total" in values


def test_raw_grpc_names_a_blob_by_sha256_prefix_too(kv_cluster: ProcessCluster) -> None:
    """The Python client strips 'sha256:' itself; another client may not."""
    _enabled(kv_cluster)
    node = kv_cluster.ids[2]
    data = b"named in either form"
    digest = hashlib.sha256(data).hexdigest()
    assert http(kv_cluster.http[node], "PUT", f"/v1/blobs/{digest}", data).status == 201
    with grpc.insecure_channel(kv_cluster.grpc[node]) as channel:
        stub = blobs_pb2_grpc.BlobsServiceStub(channel)
        request = blobs_pb2.GetBlobRequest(sha256=f"SHA256:{digest.upper()}")
        got = list(stub.GetBlob(request, timeout=30))
    assert got[0].blob.sha256 == digest and b"".join(m.data for m in got) == data


def test_range_headers_with_huge_positions_or_on_an_empty_blob() -> None:
    # More digits than int() converts: past any blob (not a 500).
    huge = "1" * 5000
    with pytest.raises(RangeNotSatisfiable):
        parse_range(f"bytes={huge}-", 10)
    assert parse_range(f"bytes=2-{huge}", 10) == (2, 8)
    assert parse_range(f"bytes=-{huge}", 10) == (0, 10)
    assert parse_range("bytes=" + "0" * 5000 + "3-4", 10) == (3, 2)
    # An empty blob has no byte to give, from either end (RFC 9110 14.1.1).
    for header in ("bytes=0-", "bytes=-5"):
        with pytest.raises(RangeNotSatisfiable):
            parse_range(header, 0)

"""Blobs on three real node processes (issue 12, part 2): uploads through
different nodes while a node is killed and restarted and another is wiped
and re-added (restored from a snapshot): every acknowledged blob ends up on
every node's disk (the background fetch) and reads back byte-equal from
every node. Also: a whole-cluster restart after a delete and a new upload
of the same bytes keeps the blob; collection keeps what the application
refers to and removes the rest, on every node; the limits."""

from __future__ import annotations

import hashlib
import random
import shutil
import threading
import time
from pathlib import Path

import pytest

from ramraft.client import (
    Client,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RamraftError,
    ResourceExhausted,
)
from ramraft.proto import admin_pb2
from tests.httpcalls import http
from tests.server.procs import ProcessCluster

ALBUM = "tests.server.apps.album:app"


class BlobCluster(ProcessCluster):
    joining: set[str]

    def argv(self, node_id: str) -> list[str]:
        argv = super().argv(node_id)
        return [*argv, "--join"] if node_id in getattr(self, "joining", set()) else argv

    def status(self, node_id: str) -> admin_pb2.NodeStatus | None:
        """As ProcessCluster's, with more patience: a node moving blobs on a
        loaded machine may take more than a second to answer."""
        try:
            with Client(self.grpc[node_id], timeout=5.0) as client:
                return client.status(endpoint=self.grpc[node_id]).node
        except RamraftError:
            return None

    def wait_blobs_enabled(self) -> None:
        """The leader switches to key-value version 2 once every member's
        code supports it: blobs are refused until then."""

        def enabled() -> bool:
            statuses = [self.status(n) for n in self.alive()]
            return all(s is not None and s.kv_version >= 2 for s in statuses)

        self.wait_until(enabled, 30, "blobs enabled (key-value version 2)")

    def files(self, node_id: str) -> set[str]:
        """The blobs in the node's store, by file name."""
        root = self.data_dir(node_id) / "blobs" / "sha256"
        return {p.name for p in root.glob("*/*")} if root.exists() else set()


def payload(seed: int, size: int = 2 << 20) -> bytes:
    return random.Random(seed).randbytes(size)


class Hashing:
    """A write-only sink that hashes what it gets (a download, byte-equal
    to the upload iff the digest matches, never held whole)."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return len(data)


def rotated(ids: list[str], by: int) -> list[str]:
    return ids[by % len(ids) :] + ids[: by % len(ids)]


@pytest.mark.parametrize(
    ("size", "count"),
    [
        pytest.param(2 << 20, 18, id="18x2MiB"),
        # The long form: 200 blobs of 20 MiB (4 GiB on each node's disk).
        pytest.param(20 << 20, 200, id="200x20MiB", marks=pytest.mark.slow),
    ],
)
def test_every_acknowledged_blob_is_on_every_node_after_a_kill_and_a_wipe(
    tmp_path: Path, size: int, count: int
) -> None:
    # Small snapshots: the wiped node catches up from a snapshot, whose
    # catalog trailer tells it which blobs to fetch.
    cluster = BlobCluster(tmp_path, extra_args=["--snapshot-entries", "8", "--retain-entries", "2"])
    acked: dict[str, int] = {}
    stop = threading.Event()

    def uploader(worker: int) -> None:
        seed = worker * 10_000
        while not stop.is_set():
            seed += 1
            # Each upload enters through another node.
            endpoints = cluster.endpoints(rotated(cluster.ids, seed))
            try:
                with Client(endpoints, timeout=30) as client:
                    info = client.put_blob(payload(seed, size), timeout=120)
            except RamraftError:
                continue  # not acknowledged: nothing is promised
            assert info.sha256 == hashlib.sha256(payload(seed, size)).hexdigest()
            acked[info.sha256] = seed

    def wait_acked(share: float) -> None:
        wanted = max(1, round(count * share))
        timeout = 120 + wanted * size / (1 << 20)  # generous: a shared, loaded machine
        cluster.wait_until(lambda: len(acked) >= wanted, timeout, f"{wanted} blobs acknowledged")

    with cluster:
        cluster.wait_for_leader()
        cluster.wait_blobs_enabled()
        workers = [threading.Thread(target=uploader, args=(w,), daemon=True) for w in (1, 2)]
        for worker in workers:
            worker.start()
        try:
            wait_acked(0.2)
            victim = cluster.kill_leader()  # kill -9, uploads in flight
            wait_acked(0.4)
            cluster.start_nodes([victim])
            wait_acked(0.6)
            wiped = next(n for n in cluster.ids if n != cluster.wait_for_leader())
            others = [n for n in cluster.ids if n != wiped]
            with Client(cluster.endpoints(others), timeout=30) as client:
                client.remove_member(wiped)
            cluster.kill(wiped)
            shutil.rmtree(cluster.data_dir(wiped))
            cluster.joining = {wiped}
            cluster.start_nodes([wiped])
            with Client(cluster.endpoints(others), timeout=30) as client:
                client.add_member(wiped, cluster.grpc[wiped])
            wait_acked(1.0)
        finally:
            stop.set()
            for worker in workers:
                worker.join(timeout=300)
        for node in cluster.ids:
            cluster.wait_caught_up(node, timeout=60)
        # Every node fetched every acknowledged blob in the background ...
        cluster.wait_until(
            lambda: all(set(acked) <= cluster.files(n) for n in cluster.ids),
            120 + len(acked) * size / (1 << 20),
            "every acknowledged blob on every node's disk",
        )
        assert "snapshot_received" in cluster.node_log(wiped)
        # ... and serves it, byte-equal.
        for node in cluster.ids:
            with Client(cluster.grpc[node], timeout=30) as client:
                for digest in acked:
                    sink = Hashing()
                    client.read_blob(digest, sink, timeout=120)
                    assert sink.hash.hexdigest() == digest, (node, digest)
                    assert sink.size == size


def test_a_whole_cluster_restart_replays_a_delete_without_losing_a_later_upload(
    tmp_path: Path,
) -> None:
    """put X, delete X, put X again, kill every node, start them again: the
    replayed delete must not remove the files the later put made (they are
    the only copies), so X is still there, on every node."""
    data = payload(7, 300_000)
    with BlobCluster(tmp_path) as cluster:
        cluster.wait_for_leader()
        cluster.wait_blobs_enabled()
        with cluster.client(timeout=30) as client:
            info = client.put_blob(data)
            assert client.delete_blob(info) is True
            with pytest.raises(NotFound):
                client.blob_info(info)
            again = client.put_blob(data)
        assert again.sha256 == info.sha256
        cluster.wait_until(
            lambda: all(info.sha256 in cluster.files(n) for n in cluster.ids),
            30,
            "the blob on every node",
        )
        for node in cluster.ids:
            cluster.kill(node)
        cluster.start_nodes(cluster.ids)
        cluster.wait_for_leader()
        for node in cluster.ids:
            cluster.wait_caught_up(node)
            assert info.sha256 in cluster.files(node), node
            with Client(cluster.grpc[node], timeout=30) as client:
                assert client.get_blob(info) == data


def test_collection_keeps_referenced_blobs_and_removes_the_rest_everywhere(
    tmp_path: Path,
) -> None:
    cluster = BlobCluster(
        tmp_path,
        http=True,
        extra_args=["--app", ALBUM, "--blob-gc-interval", "1", "--blob-gc-grace", "2"],
    )
    with cluster:
        leader = cluster.wait_for_leader()
        cluster.wait_blobs_enabled()
        with cluster.client(timeout=30) as client:
            kept = client.put_blob(b"kept" * 1000)
            dropped = client.put_blob(b"dropped" * 1000)
            http(cluster.http[leader], "POST", f"/app/keep/{kept}")

            def gone_everywhere(digest: str) -> bool:
                return all(digest not in cluster.files(n) for n in cluster.ids)

            cluster.wait_until(lambda: gone_everywhere(str(dropped)), 30, "dropped collected")
            with pytest.raises(NotFound):
                client.blob_info(dropped)
            time.sleep(3)  # more than the grace: still referenced, so still here
            assert all(str(kept) in cluster.files(n) for n in cluster.ids)
            assert client.get_blob(kept) == b"kept" * 1000
            # An explicit delete waits until the application lets go.
            with pytest.raises(FailedPrecondition, match="still referenced"):
                client.delete_blob(kept)
            http(cluster.http[leader], "POST", f"/app/drop/{kept}")
            assert client.delete_blob(kept) is True
            cluster.wait_until(lambda: gone_everywhere(str(kept)), 30, "kept deleted")


def test_limits_too_large_and_too_little_disk(tmp_path: Path) -> None:
    cluster = BlobCluster(tmp_path, nodes=1, http=True, extra_args=["--max-blob-bytes", "1000"])
    with cluster:
        cluster.wait_for_leader()
        cluster.wait_blobs_enabled()
        with cluster.client() as client:
            assert client.put_blob(b"x" * 1000).size == 1000
            with pytest.raises(InvalidArgument, match="--max-blob-bytes"):
                client.put_blob(b"x" * 1001)
            with pytest.raises(InvalidArgument, match="--max-blob-bytes"):
                client.put_blob(iter([b"x" * 600, b"x" * 600]))  # no size announced
        reply = http(cluster.http["n1"], "POST", "/v1/blobs", b"y" * 1001)
        assert reply.status == 413 and reply.json()["error"] == "payload_too_large"
        cluster.kill("n1")
        cluster.extra_args = ["--blob-reserve-bytes", str(1 << 60)]
        cluster.start_nodes(["n1"])
        cluster.wait_for_leader()
        with cluster.client() as client, pytest.raises(ResourceExhausted, match="reserve"):
            client.put_blob(b"z")
        reply = http(cluster.http["n1"], "POST", "/v1/blobs", b"z")
        assert reply.status == 507 and reply.json()["error"] == "insufficient_storage"
        assert cluster.files("n1") == {hashlib.sha256(b"x" * 1000).hexdigest()}

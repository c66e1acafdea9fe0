"""Backups hold the blobs their state names (server/blobs/backup.py): a
backup of a cluster with blobs carries them after the state, --verify hashes
each one, and a restore writes them back, so the new cluster serves every
blob from every node at once. A backup whose blob no node can send is
refused, naming it."""

from __future__ import annotations

import hashlib
import json
import random
import struct
from pathlib import Path

import pytest
import structlog.testing

from ramraft.client import Client
from ramraft.server.storage.backup import CHECKSUM_BYTES, BackupReader
from ramraft.tools.cli import main
from tests.blobs.test_blob_cluster import BlobCluster


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with structlog.testing.capture_logs():  # the machines' log lines are not the CLI's output
        status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_a_backup_carries_its_blobs_and_a_restore_brings_them_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blobs = {i: random.Random(i).randbytes(size) for i, size in enumerate([0, 1, 3 << 20])}
    backup = tmp_path / "cluster.backup"
    with BlobCluster(tmp_path / "old") as old:
        old.wait_for_leader()
        old.wait_blobs_enabled()
        with old.client(timeout=30) as client:
            digests = {client.put_blob(data).sha256: data for data in blobs.values()}
            client.put("k", b"v")
        status, out, err = cli(
            capsys, "backup", "--out", str(backup), "--endpoints", old.endpoints()
        )
        assert status == 0, err
    status, out, err = cli(capsys, "backup", "--verify", str(backup), "--json")
    assert status == 0, err
    assert json.loads(out)["blobs"] == 3
    with BackupReader(backup) as reader:
        assert reader.header.blobs is not None and reader.header.blobs["count"] == 3

    new = BlobCluster(tmp_path / "new")
    for node in new.ids:
        status, out, err = cli(
            capsys,
            "restore",
            str(backup),
            "--data-dir",
            str(new.data_dir(node)),
            "--id",
            node,
            "--peers",
            new.peers,
        )
        assert status == 0 and "with 3 blobs" in out, err
        assert new.files(node) == set(digests)  # on disk before the node starts
    with new:
        new.wait_for_leader()
        for node in new.ids:
            with Client(new.grpc[node], timeout=30) as client:
                assert client.get("k") == b"v"
                for digest, data in digests.items():
                    assert client.get_blob(digest) == data, (node, digest)


def test_verify_hashes_every_blob(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A blob damaged in a file whose overall checksum was then redone (a
    writer's bug, not a flipped bit) is caught by its own hash."""
    backup = tmp_path / "b.backup"
    with BlobCluster(tmp_path / "c", nodes=1) as cluster:
        cluster.wait_for_leader()
        cluster.wait_blobs_enabled()
        with cluster.client() as client:
            client.put_blob(b"precious bytes")
        assert (
            cli(capsys, "backup", "--out", str(backup), "--endpoints", cluster.endpoints())[0] == 0
        )
    data = bytearray(backup.read_bytes())
    at = data.rfind(b"precious bytes", 0, len(data) - CHECKSUM_BYTES)
    data[at] ^= 0xFF
    data[-CHECKSUM_BYTES:] = hashlib.sha256(bytes(data[:-CHECKSUM_BYTES])).digest()
    backup.write_bytes(bytes(data))
    status, out, err = cli(capsys, "backup", "--verify", str(backup))
    assert status == 3 and out == "" and "does not hash to its name" in err


def test_restore_writes_blobs_into_the_nodes_blob_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node that keeps its blobs outside its data directory (--blob-dir,
    env RAMRAFT_BLOB_DIR as in a pod) gets them there, not in --data-dir."""
    backup = tmp_path / "b.backup"
    with BlobCluster(tmp_path / "c", nodes=1) as cluster:
        cluster.wait_for_leader()
        cluster.wait_blobs_enabled()
        with cluster.client() as client:
            digest = client.put_blob(b"kept elsewhere").sha256
        assert (
            cli(capsys, "backup", "--out", str(backup), "--endpoints", cluster.endpoints())[0] == 0
        )
    blob_dir, data_dir = tmp_path / "blob-volume", tmp_path / "data"
    monkeypatch.setenv("RAMRAFT_BLOB_DIR", str(blob_dir))
    status, out, err = cli(
        capsys, "restore", str(backup), "--data-dir", str(data_dir), "--id", "a", "--peers",
        "a=127.0.0.1:1",
    )  # fmt: skip
    assert status == 0 and "with 1 blobs" in out, err
    assert (blob_dir / "sha256" / digest[:2] / digest).read_bytes() == b"kept elsewhere"
    assert not (data_dir / "blobs").exists()


def test_a_backup_is_refused_when_no_node_can_send_a_blob(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backup = tmp_path / "refused.backup"
    with BlobCluster(tmp_path / "c") as cluster:
        cluster.wait_for_leader()
        cluster.wait_blobs_enabled()
        with cluster.client(timeout=30) as client:
            lost = client.put_blob(b"lost on every disk").sha256
        cluster.wait_until(lambda: all(lost in cluster.files(n) for n in cluster.ids))
        for node in cluster.ids:  # a disk failure everywhere, behind the nodes' backs
            (cluster.data_dir(node) / "blobs" / "sha256" / lost[:2] / lost).unlink()
        status, out, err = cli(
            capsys,
            "backup",
            "--out",
            str(backup),
            "--endpoints",
            cluster.endpoints(),
            "--timeout",
            "10",
        )
        assert status == 3 and out == ""
        assert "the backup is refused" in err and lost in err
        assert not backup.exists()


def test_the_header_of_a_backup_without_blobs_is_what_earlier_releases_read() -> None:
    from ramraft.server.storage.backup import BackupHeader, encode_prefix

    header = BackupHeader("c", 5, 1, 1, 1, "2026-01-01T00:00:00+00:00", "n1", "0.1.0", None)
    prefix = encode_prefix(header)
    (length,) = struct.unpack("<I", prefix[9:13])
    assert "blobs" not in json.loads(prefix[13 : 13 + length])

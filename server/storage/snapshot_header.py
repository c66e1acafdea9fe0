"""The node's header at the start of a snapshot's data.

A snapshot has two layers. The snapshot *file* (snapshots.py, magic
``RRAFTSNP``) stores opaque data in checksummed blocks. That data, which is
also what InstallSnapshot streams to a follower, starts with this header and
continues with the state machine's own bytes::

    magic "RRSNAP01" | body length u32 (little-endian) | body (JSON)

The body is ``{"addresses": {node id: peer address, ...}}`` (keys sorted):
the peer addresses the snapshot's members had when it was taken, so that a
node restored from it can reach members whose AddMember entries were
compacted away. These bytes are on disk and on the wire between nodes of
different releases: never change them (tests/storage/test_snapshot_header.py
pins them).

Since the cluster record exists (machines/cluster.py: versions, the upgrade
hold, the cluster id), the body may also hold ``"cluster": {...}``. A node of
an earlier release reads past it (it looks at "addresses" only); a header
without it means the record's defaults, which is what that release ran. It is
written only when the record differs from the defaults, so a cluster that
never used it keeps writing the pinned bytes.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import StorageError

SNAPSHOT_DATA_MAGIC = b"RRSNAP01"
_LENGTH = struct.Struct("<I")
# A header is a few bytes per member; anything near this is damage.
MAX_SNAPSHOT_HEADER_BYTES = 64 << 20


class _Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


class _Readable(Protocol):
    def read(self, n: int, /) -> bytes: ...


@dataclass(frozen=True)
class SnapshotHeader:
    addresses: dict[str, str]
    cluster: dict[str, Any] | None = None
    """The cluster record (ClusterState.to_plain()); None in a header of an
    earlier release, or when the record had its defaults."""


def encode_snapshot_header(
    addresses: dict[str, str], cluster: dict[str, Any] | None = None
) -> bytes:
    body: dict[str, Any] = {"addresses": addresses}
    if cluster is not None:
        body["cluster"] = cluster
    encoded = json.dumps(body, sort_keys=True).encode()
    return SNAPSHOT_DATA_MAGIC + _LENGTH.pack(len(encoded)) + encoded


def write_snapshot_header(
    stream: _Writable, addresses: dict[str, str], cluster: dict[str, Any] | None = None
) -> None:
    stream.write(encode_snapshot_header(addresses, cluster))


def read_snapshot_header(stream: _Readable) -> SnapshotHeader:
    """Read the header; the stream is left at the first byte of the state
    machine's data."""
    head = _read_fully(stream, len(SNAPSHOT_DATA_MAGIC) + _LENGTH.size)
    if head[: len(SNAPSHOT_DATA_MAGIC)] != SNAPSHOT_DATA_MAGIC:
        raise StorageError("snapshot data does not start with the ramraft header")
    (length,) = _LENGTH.unpack(head[len(SNAPSHOT_DATA_MAGIC) :])
    if length > MAX_SNAPSHOT_HEADER_BYTES:
        raise StorageError(f"snapshot header of {length} bytes is implausible")
    body = json.loads(_read_fully(stream, length))
    addresses = body.get("addresses", {})
    if not isinstance(addresses, dict):
        raise StorageError("snapshot header: addresses is not a mapping")
    cluster = body.get("cluster")
    if cluster is not None and not isinstance(cluster, dict):
        raise StorageError("snapshot header: cluster is not a mapping")
    return SnapshotHeader({str(k): str(v) for k, v in addresses.items()}, cluster)


def _read_fully(stream: _Readable, n: int) -> bytes:
    data = b""
    while len(data) < n:
        piece = stream.read(n - len(data))
        if not piece:
            raise StorageError(f"snapshot data ends after {len(data)} of {n} header bytes")
        data += piece
    return data

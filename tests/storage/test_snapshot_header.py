"""The node's header at the start of a snapshot's data is a fixed format:
snapshots on disk and snapshots streamed between nodes of different releases
carry it. These bytes are pinned; a change to them is a format change."""

from __future__ import annotations

import io
import json

import pytest

from ramraft.server.storage import (
    SNAPSHOT_DATA_MAGIC,
    StorageError,
    encode_snapshot_header,
    read_snapshot_header,
    write_snapshot_header,
)

ADDRESSES = {"n2": "10.0.0.2:7001", "n1": "n1.ramraft:7001"}
# Written by the release before the header moved to storage/ (runtime.py's
# write_snapshot_header), byte for byte.
PINNED = b'RRSNAP01?\x00\x00\x00{"addresses": {"n1": "n1.ramraft:7001", "n2": "10.0.0.2:7001"}}'
PINNED_EMPTY = b'RRSNAP01\x11\x00\x00\x00{"addresses": {}}'


def test_header_bytes_are_pinned() -> None:
    assert SNAPSHOT_DATA_MAGIC == b"RRSNAP01"
    assert encode_snapshot_header(ADDRESSES) == PINNED
    assert encode_snapshot_header({}) == PINNED_EMPTY
    stream = io.BytesIO()
    write_snapshot_header(stream, ADDRESSES)
    assert stream.getvalue() == PINNED


def test_header_reads_back_and_leaves_the_machine_data() -> None:
    stream = io.BytesIO(PINNED + b"machine bytes")
    assert read_snapshot_header(stream).addresses == ADDRESSES
    assert stream.read() == b"machine bytes"


class Trickle(io.BytesIO):
    """A stream that hands out one byte per read (short reads are legal)."""

    def read(self, n: int | None = -1, /) -> bytes:
        return super().read(1 if n is None or n < 0 else min(n, 1))


def test_header_survives_short_reads() -> None:
    assert read_snapshot_header(Trickle(PINNED)).addresses == ADDRESSES


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "ends after 0 of 12 header bytes"),
        (b"RRAFTSNP\x00\x00\x00\x00", "does not start with the ramraft header"),
        (PINNED[:20], "ends after 8 of 63 header bytes"),
        (SNAPSHOT_DATA_MAGIC + b"\xff\xff\xff\xff", "implausible"),
        (encode_snapshot_header({})[:12] + b'{"addresses": []}', "not a mapping"),
    ],
)
def test_damaged_headers_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(StorageError, match=message):
        read_snapshot_header(io.BytesIO(data))


def test_the_cluster_record_is_added_for_this_release_and_read_past_by_the_last() -> None:
    """With a cluster record the body gains a "cluster" key; a reader that
    looks at "addresses" only (every earlier release) gets the same answer."""
    data = encode_snapshot_header(ADDRESSES, {"cluster_id": "c1", "app_version": 2})
    header = read_snapshot_header(io.BytesIO(data))
    assert header.addresses == ADDRESSES
    assert header.cluster == {"cluster_id": "c1", "app_version": 2}
    body = json.loads(data[12:])
    assert body["addresses"] == ADDRESSES  # what 0.1.0's reader takes
    assert read_snapshot_header(io.BytesIO(PINNED)).cluster is None

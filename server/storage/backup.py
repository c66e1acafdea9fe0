"""The backup file: a consistent copy of a cluster's state, off the cluster.

Layout (``ramraft backup`` writes it; ``ramraft restore`` reads it)::

    magic    b"RRBACKUP"
    version  u8 (1)
    header   u32 length (little-endian) | UTF-8 JSON object (BackupHeader)
    state    the state machine's snapshot stream, as a node's snapshot file
             holds it after its own header (key-value machine, or the
             composite of key-value machine and application model)
    blobs    only when the header announces them ("blobs": {"count": C,
             "bytes": B}): C records of sha256 (32 bytes) | size (u64
             little-endian) | the blob's bytes, B bytes in all
             (server/blobs/backup.py)
    checksum SHA-256 of every byte before it (32 bytes)

A backup of a cluster that holds no blobs has no "blobs" key and no blobs
section: the bytes earlier releases write and read. One with blobs is
refused by an earlier release's reader (its header has a key that release
does not know), never misread.

The checksum covers the whole file, so a flipped byte anywhere (header,
state or the checksum itself) is caught before anything is decoded. A node
builds the bytes (Admin.Backup streams them); the client only stores them,
atomically, and checks the checksum on the way.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO, Protocol

__all__ = [
    "BACKUP_MAGIC",
    "BackupError",
    "BackupHeader",
    "BackupReader",
    "BackupWriter",
    "ChecksumStream",
    "encode_prefix",
]

BACKUP_MAGIC = b"RRBACKUP"
BACKUP_VERSION = 1
CHECKSUM_BYTES = 32
_MAX_HEADER = 1 << 20
_PIECE = 1 << 20
_PREFIX = len(BACKUP_MAGIC) + 1 + 4  # magic, version, header length


class BackupError(Exception):
    """A backup file that is damaged, truncated or not a backup; the message
    is one line naming what is wrong."""


@dataclass(frozen=True)
class BackupHeader:
    """What a backup says about itself."""

    cluster_id: str
    index: int
    """The state holds the effect of every entry up to this index."""
    term: int
    app_version: int
    kv_version: int
    created: str
    """When the node took it (UTC, ISO 8601)."""
    node: str
    """The node that took it."""
    ramraft_version: str
    model: str | None
    """The application model's class name, or None for key-value only."""
    cluster: dict[str, Any] = field(default_factory=dict)
    """The cluster record (machines/cluster.py ClusterState.to_plain())."""
    blobs: dict[str, int] | None = None
    """The blobs section after the state: ``{"count": C, "bytes": B}``; None:
    there is none."""

    def to_json(self) -> bytes:
        plain = asdict(self)
        if plain["blobs"] is None:
            del plain["blobs"]  # the header earlier releases read
        return json.dumps(plain, sort_keys=True).encode()

    @property
    def blob_section_bytes(self) -> int:
        return int(self.blobs["bytes"]) if self.blobs else 0

    @classmethod
    def from_json(cls, data: bytes) -> BackupHeader:
        try:
            plain = json.loads(data)
            header = cls(**plain)
        except (ValueError, TypeError) as exc:
            raise BackupError(f"the backup header is not valid: {exc}") from None
        if type(header.index) is not int or header.index < 1 or type(header.term) is not int:
            raise BackupError("the backup header has no valid index and term")
        blobs = header.blobs
        if blobs is not None and not (
            isinstance(blobs, dict)
            and all(type(blobs.get(k)) is int and blobs[k] >= 0 for k in ("count", "bytes"))
        ):
            raise BackupError(f"the backup header's blobs entry is not valid: {blobs!r}")
        return header


def encode_prefix(header: BackupHeader) -> bytes:
    """The bytes before the state: magic, version, header."""
    body = header.to_json()
    return BACKUP_MAGIC + bytes([BACKUP_VERSION]) + struct.pack("<I", len(body)) + body


class ChecksumStream:
    """Hashes what passes through it (the backup's trailing checksum)."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.size = 0

    def update(self, data: bytes) -> None:
        self._hash.update(data)
        self.size += len(data)

    def digest(self) -> bytes:
        return self._hash.digest()


class _Writable(Protocol):
    def write(self, data: bytes, /) -> int | None: ...


class BackupWriter:
    """Writes a backup file into ``stream`` without a node (tests, benchmarks,
    tools): the prefix at once, then the state bytes written to it (a
    machine's snapshot job writes them: ``job.write_to(writer)``), then
    ``finish()`` appends the checksum."""

    def __init__(self, stream: _Writable, header: BackupHeader) -> None:
        self._stream = stream
        self._checksum = ChecksumStream()
        self.write(encode_prefix(header))

    def write(self, data: bytes, /) -> int:
        self._checksum.update(data)
        self._stream.write(data)
        return len(data)

    def finish(self) -> int:
        """Append the checksum; returns the file's size."""
        digest = self._checksum.digest()
        self._stream.write(digest)
        return self._checksum.size + len(digest)


class BackupReader:
    """Reads a backup file: ``verify()`` checks the checksum over the whole
    file; ``header`` is the decoded header; ``state()`` a stream of the
    state bytes (call verify first: nothing is decoded from an unchecked
    file by the tools)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            self._file: BinaryIO = open(self.path, "rb")  # noqa: SIM115 (closed by close())
        except OSError as exc:
            raise BackupError(f"cannot read {self.path}: {exc.strerror}") from None
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        self._header: BackupHeader | None = None

    def _open(self) -> None:
        self.size: int = os.fstat(self._file.fileno()).st_size
        head = self._file.read(_PREFIX)
        if not head:
            raise BackupError(f"{self.path} is empty: not a ramraft backup")
        magic = head[: len(BACKUP_MAGIC)]
        if len(magic) < len(BACKUP_MAGIC) and BACKUP_MAGIC.startswith(magic):
            raise BackupError(
                f"{self.path} is {self.size} bytes: truncated (it starts as a backup)"
            )
        if magic != BACKUP_MAGIC:
            wrong = sum(a != b for a, b in zip(magic, BACKUP_MAGIC, strict=False))
            if len(magic) == len(BACKUP_MAGIC) and wrong <= 2:
                # One or two bytes off: a damaged backup, not another kind of file.
                raise BackupError(
                    f"{self.path}: damaged: {wrong} byte(s) of its RRBACKUP magic are wrong"
                )
            raise BackupError(
                f"{self.path} is not a ramraft backup (it does not start with RRBACKUP)"
            )
        if self.size < _PREFIX + CHECKSUM_BYTES:
            raise BackupError(
                f"{self.path} is {self.size} bytes: truncated (a backup has at least "
                f"{_PREFIX + CHECKSUM_BYTES})"
            )
        version = head[len(BACKUP_MAGIC)]
        if version != BACKUP_VERSION:
            # A flipped version byte must not pass for a newer format: a file
            # of this format with a wrong version byte fails the checksum.
            if self._checksum_matches():
                raise BackupError(
                    f"{self.path} is backup format {version}; this release reads format "
                    f"{BACKUP_VERSION} (a newer release wrote it?)"
                )
            raise BackupError(
                f"{self.path}: checksum mismatch (and an unknown format byte {version}): the "
                "file is damaged"
            )
        (length,) = struct.unpack("<I", head[len(BACKUP_MAGIC) + 1 :])
        self._state_start: int = _PREFIX + length
        if length > _MAX_HEADER or self._state_start > self.size - CHECKSUM_BYTES:
            raise BackupError(
                f"{self.path}: the header length ({length} bytes) runs past the end of the "
                "file: the file is truncated or damaged"
            )
        self._header_bytes = self._file.read(length)

    @property
    def header(self) -> BackupHeader:
        if self._header is None:
            self._header = BackupHeader.from_json(self._header_bytes)
        return self._header

    @property
    def state_size(self) -> int:
        size = self.size - CHECKSUM_BYTES - self._state_start - self.header.blob_section_bytes
        if size < 0:
            raise BackupError(f"{self.path}: its blobs section runs past the end of the file")
        return size

    def blob_section(self) -> _StateStream:
        """The blobs section (empty when the header announces none)."""
        self._file.seek(self._state_start + self.state_size)
        return _StateStream(self._file, self.header.blob_section_bytes)

    def verify(self) -> None:
        """Raise BackupError unless the checksum matches the whole file."""
        if not self._checksum_matches():
            raise BackupError(f"{self.path}: checksum mismatch: the file is damaged or truncated")

    def _checksum_matches(self) -> bool:
        checksum = ChecksumStream()
        self._file.seek(0)
        remaining = self.size - CHECKSUM_BYTES
        while remaining > 0:
            piece = self._file.read(min(_PIECE, remaining))
            if not piece:
                raise BackupError(f"{self.path} ended early (changed while being read?)")
            checksum.update(piece)
            remaining -= len(piece)
        return self._file.read(CHECKSUM_BYTES) == checksum.digest()

    def checksum(self) -> bytes:
        """The file's stored checksum (its last 32 bytes)."""
        self._file.seek(self.size - CHECKSUM_BYTES)
        return self._file.read(CHECKSUM_BYTES)

    def state(self) -> _StateStream:
        self._file.seek(self._state_start)
        return _StateStream(self._file, self.state_size)

    def chunks(self, size: int = _PIECE) -> Iterator[bytes]:
        stream = self.state()
        while piece := stream.read(size):
            yield piece

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> BackupReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _StateStream:
    """The state section of a backup file, as a readable stream that ends
    where the checksum begins."""

    def __init__(self, file: BinaryIO, size: int) -> None:
        self._file = file
        self._left = size

    def read(self, n: int = -1, /) -> bytes:
        if n < 0 or n > self._left:
            n = self._left
        data = self._file.read(n)
        self._left -= len(data)
        return data

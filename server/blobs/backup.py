"""Blobs in backups: a backup holds every blob its state's catalog names,
after the state (server/storage/backup.py describes the file), and a
restore writes them back into the new node's blob directory.

The blobs section is ``count`` records, each::

    sha256 (32 bytes) | size (u64, little-endian) | the blob's bytes

The header announces the count and the section's size before the section is
written, so a node can stream a backup of any size (the sizes are in the
catalog), and a reader finds where the state ends without decoding it.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import struct
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Protocol

from ramraft.server.blobs.store import PIECE, BlobStore
from ramraft.server.machines.blobs import BlobEntry
from ramraft.server.storage._fs import datasync, fsync_dir, write_all
from ramraft.server.storage.backup import BackupError

__all__ = [
    "RECORD_HEAD",
    "blob_section",
    "restore_blobs",
    "section_bytes",
    "verify_blob_section",
]

RECORD_HEAD = struct.Struct("<32sQ")


class _Readable(Protocol):
    def read(self, n: int, /) -> bytes: ...


def section_bytes(entries: Iterable[tuple[str, BlobEntry]]) -> int:
    """The size of the blobs section for these catalog entries."""
    return sum(RECORD_HEAD.size + entry.size for _, entry in entries)


async def blob_section(
    store: BlobStore, entries: list[tuple[str, BlobEntry]]
) -> AsyncIterator[bytes]:
    """The section's bytes, read from ``store`` a piece at a time. The caller
    made sure every file is there and holds deletions until the end."""
    for digest, entry in entries:
        try:
            file = await store.open_file(digest)
        except FileNotFoundError:
            raise OSError(f"blob {digest} left this node's store during the backup") from None
        if file.size != entry.size:
            file.close()
            raise OSError(f"blob {digest} is {file.size} bytes here, {entry.size} in the catalog")
        yield RECORD_HEAD.pack(bytes.fromhex(digest), entry.size)
        async for piece in file:
            yield piece


def _read_exact(stream: _Readable, n: int, what: str) -> bytes:
    data = b""
    while len(data) < n:
        piece = stream.read(min(PIECE, n - len(data)))
        if not piece:
            raise BackupError(f"the blobs section ends inside {what}")
        data += piece
    return data


def _records(stream: _Readable, count: int) -> Iterable[tuple[str, int, Iterable[bytes]]]:
    """(digest, size, pieces) of each record; the pieces must be consumed
    before the next record is asked for. A record whose bytes do not hash to
    its digest raises BackupError once its pieces are consumed."""
    for n in range(count):
        raw, size = RECORD_HEAD.unpack(_read_exact(stream, RECORD_HEAD.size, f"record {n}"))
        digest = raw.hex()

        def pieces(digest: str = digest, size: int = size) -> Iterable[bytes]:
            hashed = hashlib.sha256()
            left = size
            while left:
                piece = stream.read(min(PIECE, left))
                if not piece:
                    raise BackupError(f"the blobs section ends inside blob {digest}")
                hashed.update(piece)
                left -= len(piece)
                yield piece
            if hashed.hexdigest() != digest:
                raise BackupError(f"blob {digest} in the backup does not hash to its name")

        yield digest, size, pieces()


def verify_blob_section(stream: _Readable, count: int, section: int) -> tuple[int, int]:
    """Read and hash every blob: (count, bytes of blob data). Raises
    BackupError for a section that does not match its header or a blob that
    does not hash to its name."""
    seen = 0
    data = 0
    for _, size, pieces in _records(stream, count):
        for _ in pieces:
            pass
        seen += 1
        data += size
    if seen * RECORD_HEAD.size + data != section or stream.read(1):
        raise BackupError("the blobs section's size differs from what its header says")
    return seen, data


def restore_blobs(stream: _Readable, count: int, directory: Path, *, fsync: bool = True) -> int:
    """Write every blob of the section into a node's blob directory (the
    store's layout: sha256/<2 hex>/<digest>), each one durably and whole
    (temporary file, fsync, rename); returns how many. Blobs already there
    are kept (a file named by its digest holds those bytes)."""
    store = BlobStore(directory, max_blob_bytes=1 << 62, reserve_bytes=0)
    for sub in (store.root, store.files, store.tmp):
        os.makedirs(sub, mode=0o700, exist_ok=True)
    written = 0
    for digest, _, pieces in _records(stream, count):
        final = store.path(digest)
        temporary = store.tmp / f"{secrets.token_hex(8)}.part"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            for piece in pieces:
                write_all(fd, [piece])
            if fsync:
                datasync(fd)
        except BaseException:
            os.close(fd)
            temporary.unlink(missing_ok=True)
            raise
        os.close(fd)
        final.parent.mkdir(mode=0o700, exist_ok=True)
        os.replace(temporary, final)
        if fsync:
            fsync_dir(str(final.parent))
        written += 1
    if fsync:
        fsync_dir(str(store.files))
    return written

"""Snapshot files: streamed in and out in checksummed blocks.

A snapshot file ``snap-<index>-<term>.snap`` is::

    header   magic "RRAFTSNP" | version u16 | flags u16 | header length u32
             | block size u32 | index u64 | term u64 | conf | crc32c u32
    blocks   length u32 (> 0, <= block size) | crc32c u32 | data
    trailer  0 u32 | data length u64 | block count u64 | crc32c u32

Each block's checksum also covers its sequence number, so lost, repeated or
reordered blocks are caught; the trailer catches a missing end. A reader
checks a block before it hands out any byte of it, so a state machine never
restores from damaged data, and holds one block in memory at a time: a state
of several GB is never held twice.

A snapshot is written to a temporary file, synced, renamed to its final name
and the directory synced: a crash leaves either the complete snapshot or a
``.tmp`` file that the next start deletes. The newest ``keep`` snapshots are
kept; older ones are deleted after a newer one is committed (a reader that
has one open keeps reading it: POSIX unlink semantics).

Writers do blocking file I/O: the runtime should drive a writer from a worker
thread (``asyncio.to_thread``) while the state machine serializes a cheap
consistent view, so the node keeps serving. One writer per thread; the store
itself may be shared between threads.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import tempfile
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Self

import structlog
from crc32c import crc32c

from ramraft.consensus.types import SnapshotMeta

from . import encoding
from ._fs import fsync_dir, write_all
from .errors import (
    REJOIN_HINT,
    CorruptionError,
    SnapshotNotFoundError,
    StorageIOError,
    UnsupportedVersionError,
)

log = structlog.get_logger(__name__)

SNAPSHOT_FILE_MAGIC = b"RRAFTSNP"
SNAPSHOT_FORMAT_VERSION = 1
DEFAULT_BLOCK_SIZE = 1 << 20
DEFAULT_KEEP = 2

_PREFIX = struct.Struct("<8sHHI")
_BODY = struct.Struct("<IQQ")
_BLOCK = struct.Struct("<II")
_TRAILER = struct.Struct("<IQQ")
TRAILER_SIZE = _TRAILER.size + 4
_U32 = struct.Struct("<I")
_SEQ = struct.Struct("<Q")
_MAX_HEADER = 1 << 24
_NAME = re.compile(r"^snap-(\d{20})-(\d{20})\.snap$")

SNAPSHOT_HINT = (
    "The snapshot file is damaged and this node cannot rebuild its state from it. " + REJOIN_HINT
)


def snapshot_file_name(meta: SnapshotMeta) -> str:
    return f"snap-{meta.index:020d}-{meta.term:020d}.snap"


def _block_crc(seq: int, data: bytes | bytearray | memoryview) -> int:
    return crc32c(data, crc32c(_SEQ.pack(seq)))


def _encode_header(meta: SnapshotMeta, block_size: int) -> bytes:
    body = bytearray(_BODY.pack(block_size, meta.index, meta.term))
    encoding._put_conf(body, meta.conf)
    total = _PREFIX.size + len(body) + 4
    head = _PREFIX.pack(SNAPSHOT_FILE_MAGIC, SNAPSHOT_FORMAT_VERSION, 0, total) + bytes(body)
    return head + _U32.pack(crc32c(head))


def _read_exact(fd: int, n: int, offset: int) -> bytes:
    data = os.pread(fd, n, offset)
    while len(data) < n:
        more = os.pread(fd, n - len(data), offset + len(data))
        if not more:
            break
        data += more
    return data


class _Layout:
    """Header and trailer of one snapshot file, checked."""

    __slots__ = ("block_size", "blocks", "data_end", "data_start", "meta", "size")

    block_size: int
    blocks: int
    data_end: int
    data_start: int
    meta: SnapshotMeta
    size: int

    def __init__(self, path: str, fd: int) -> None:
        file_size = os.fstat(fd).st_size
        prefix = _read_exact(fd, _PREFIX.size, 0)
        if len(prefix) < _PREFIX.size:
            raise CorruptionError(path, 0, "file too short for a snapshot header", SNAPSHOT_HINT)
        magic, version, _flags, header_len = _PREFIX.unpack(prefix)
        if magic != SNAPSHOT_FILE_MAGIC:
            raise CorruptionError(path, 0, "not a ramraft snapshot (bad magic)", SNAPSHOT_HINT)
        # Every version keeps this prefix and ends its header with a crc32c,
        # so the checksum is checked first: a flipped bit in the version field
        # is damage, not a file from the future.
        if not _PREFIX.size + 4 <= header_len <= min(_MAX_HEADER, file_size):
            raise CorruptionError(path, 0, f"bad header length {header_len}", SNAPSHOT_HINT)
        header = _read_exact(fd, header_len, 0)
        (stored,) = _U32.unpack_from(header, header_len - 4)
        if crc32c(header[:-4]) != stored:
            raise CorruptionError(path, 0, "snapshot header fails its checksum", SNAPSHOT_HINT)
        if version != SNAPSHOT_FORMAT_VERSION:
            raise UnsupportedVersionError(path, version, SNAPSHOT_FORMAT_VERSION)
        if header_len < _PREFIX.size + _BODY.size + 4:
            raise CorruptionError(path, 0, f"bad header length {header_len}", SNAPSHOT_HINT)
        block_size, index, term = _BODY.unpack_from(header, _PREFIX.size)
        try:
            conf, end = encoding._get_conf(header, _PREFIX.size + _BODY.size, header_len - 4)
        except encoding.DecodeError as exc:
            raise CorruptionError(path, 0, f"snapshot header: {exc}", SNAPSHOT_HINT) from None
        if end != header_len - 4 or block_size == 0:
            raise CorruptionError(path, 0, "snapshot header does not parse", SNAPSHOT_HINT)
        trailer_at = file_size - TRAILER_SIZE
        if trailer_at < header_len:
            raise CorruptionError(
                path, file_size, "snapshot has no trailer (truncated)", SNAPSHOT_HINT
            )
        trailer = _read_exact(fd, TRAILER_SIZE, trailer_at)
        zero, size, blocks = _TRAILER.unpack_from(trailer)
        (stored,) = _U32.unpack_from(trailer, _TRAILER.size)
        if zero != 0 or crc32c(trailer[: _TRAILER.size]) != stored:
            raise CorruptionError(
                path,
                trailer_at,
                "snapshot trailer is damaged or missing (truncated file?)",
                SNAPSHOT_HINT,
            )
        if trailer_at - header_len != size + blocks * _BLOCK.size:
            raise CorruptionError(
                path, trailer_at, "snapshot length does not match its trailer", SNAPSHOT_HINT
            )
        self.meta = SnapshotMeta(index=index, term=term, conf=conf)
        self.block_size = block_size
        self.size = size
        self.blocks = blocks
        self.data_start = header_len
        self.data_end = trailer_at


class FileSnapshotWriter:
    """Streams a snapshot into a temporary file; commit() makes it visible."""

    def __init__(self, store: FileSnapshotStore, meta: SnapshotMeta) -> None:
        self._store = store
        self._meta = meta
        self._block_size = store.block_size
        self._final = os.path.join(store.directory, snapshot_file_name(meta))
        self._buffer = bytearray()
        self._seq = 0
        self._size = 0
        self._done = False
        try:
            self._fd, self._tmp = tempfile.mkstemp(
                dir=store.directory, prefix=f".{snapshot_file_name(meta)}.", suffix=".tmp"
            )
        except OSError as exc:
            self._done = True
            raise StorageIOError(
                f"cannot create a snapshot file in {store.directory}: {exc}"
            ) from exc
        self._guard(lambda: write_all(self._fd, [_encode_header(meta, self._block_size)]))

    @property
    def meta(self) -> SnapshotMeta:
        return self._meta

    @property
    def bytes_written(self) -> int:
        return self._size + len(self._buffer)

    def _guard(self, op: object) -> None:
        assert callable(op)
        try:
            op()
        except OSError as exc:
            self.abort()
            raise StorageIOError(
                f"writing snapshot {self._final} failed: {exc}; the partial snapshot was "
                "removed, and the previous snapshots are intact"
            ) from exc

    def _emit(self, block: bytes | bytearray | memoryview) -> None:
        header = _BLOCK.pack(len(block), _block_crc(self._seq, block))
        write_all(self._fd, [header, block])
        self._seq += 1
        self._size += len(block)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._done:
            raise ValueError("snapshot writer is closed")
        view = memoryview(data).cast("B") if isinstance(data, memoryview) else memoryview(data)
        with view:
            self._guard(lambda: self._write(view))
            return len(view)

    def _write(self, view: memoryview) -> None:
        size = self._block_size
        pos = 0
        if self._buffer:
            take = min(size - len(self._buffer), len(view))
            self._buffer += view[:take]
            pos = take
            if len(self._buffer) < size:
                return
            self._emit(self._buffer)
            self._buffer = bytearray()
        while len(view) - pos >= size:
            self._emit(view[pos : pos + size])
            pos += size
        if pos < len(view):
            self._buffer += view[pos:]

    def commit(self) -> SnapshotMeta:
        if self._done:
            raise ValueError("snapshot writer is closed")

        def finish() -> None:
            if self._buffer:
                self._emit(self._buffer)
                self._buffer = bytearray()
            trailer = _TRAILER.pack(0, self._size, self._seq)
            write_all(self._fd, [trailer, _U32.pack(crc32c(trailer))])
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            os.rename(self._tmp, self._final)
            fsync_dir(self._store.directory)

        self._guard(finish)
        self._done = True
        log.info("snapshot_committed", path=self._final, index=self._meta.index, bytes=self._size)
        self._store._committed(self._meta)
        return self._meta

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(OSError):
            os.unlink(self._tmp)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()


class FileSnapshotReader:
    """Reads one snapshot file's data, verifying each block before use."""

    def __init__(self, path: str) -> None:
        self._path = path
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise SnapshotNotFoundError(f"snapshot {path} does not exist") from None
        except OSError as exc:
            raise StorageIOError(f"cannot open snapshot {path}: {exc}") from exc
        try:
            self._layout = _Layout(path, self._fd)
        except BaseException:
            # Forget the descriptor too: __del__ would close its number again,
            # by then perhaps another file's (found by tests/fuzz).
            fd, self._fd = self._fd, -1
            os.close(fd)
            raise
        self._pos = self._layout.data_start
        self._seq = 0
        self._block = memoryview(b"")
        self._delivered = 0

    @property
    def meta(self) -> SnapshotMeta:
        return self._layout.meta

    @property
    def size(self) -> int:
        return self._layout.size

    @property
    def path(self) -> str:
        return self._path

    def _next_block(self) -> bool:
        """Load and verify the next block; False at a clean end."""
        layout = self._layout
        if self._pos == layout.data_end:
            if self._seq != layout.blocks:
                raise CorruptionError(
                    self._path, self._pos, "snapshot ends before its last block", SNAPSHOT_HINT
                )
            return False
        if self._pos + _BLOCK.size > layout.data_end:
            raise CorruptionError(self._path, self._pos, "truncated block header", SNAPSHOT_HINT)
        try:
            head = _read_exact(self._fd, _BLOCK.size, self._pos)
            length, stored = _BLOCK.unpack(head)
            start = self._pos + _BLOCK.size
            if length == 0 or length > layout.block_size or start + length > layout.data_end:
                raise CorruptionError(
                    self._path,
                    self._pos,
                    f"block {self._seq} has a bad length {length}",
                    SNAPSHOT_HINT,
                )
            data = _read_exact(self._fd, length, start)
        except OSError as exc:
            raise StorageIOError(f"reading snapshot {self._path}: {exc}") from exc
        if len(data) != length or _block_crc(self._seq, data) != stored:
            raise CorruptionError(
                self._path, self._pos, f"block {self._seq} fails its checksum", SNAPSHOT_HINT
            )
        self._seq += 1
        self._pos = start + length
        self._block = memoryview(data)
        return True

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            parts = list(self)
            return b"".join(parts)
        if not self._block and not self._next_block():
            return b""
        chunk = bytes(self._block[:n])
        self._block = self._block[n:]
        self._delivered += len(chunk)
        return chunk

    def __iter__(self) -> Iterator[bytes]:
        while self._block or self._next_block():
            chunk = bytes(self._block)
            self._block = memoryview(b"")
            self._delivered += len(chunk)
            yield chunk

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)


class FileSnapshotStore:
    """Snapshot files in one directory; keeps the newest ``keep``."""

    def __init__(
        self, directory: str, *, keep: int = DEFAULT_KEEP, block_size: int = DEFAULT_BLOCK_SIZE
    ) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        if not 0 < block_size <= 1 << 30:
            raise ValueError("block_size must be in 1..2**30")
        self.directory = directory
        self.keep = keep
        self.block_size = block_size
        self._lock = threading.Lock()
        self._latest: SnapshotMeta | None = None
        self._latest_known = False
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            self._remove_temporaries()
        except OSError as exc:
            raise StorageIOError(f"cannot use snapshot directory {directory}: {exc}") from exc

    def _remove_temporaries(self) -> None:
        removed = False
        for name in os.listdir(self.directory):
            if name.endswith(".tmp"):
                os.unlink(os.path.join(self.directory, name))
                log.info("snapshot_temporary_removed", path=os.path.join(self.directory, name))
                removed = True
        if removed:
            fsync_dir(self.directory)

    def _names(self) -> list[tuple[int, int, str]]:
        found = []
        for name in os.listdir(self.directory):
            match = _NAME.match(name)
            if match:
                found.append((int(match.group(1)), int(match.group(2)), name))
        found.sort()
        return found

    def _inspect(self, index: int, term: int, name: str) -> SnapshotMeta:
        path = os.path.join(self.directory, name)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            meta = _Layout(path, fd).meta
        finally:
            os.close(fd)
        if (meta.index, meta.term) != (index, term):
            raise CorruptionError(
                path,
                0,
                f"header says index {meta.index} term {meta.term}, unlike the file name",
                SNAPSHOT_HINT,
            )
        return meta

    def create(self, meta: SnapshotMeta) -> FileSnapshotWriter:
        if meta.index <= 0:
            raise ValueError(f"snapshot index must be positive, got {meta.index}")
        return FileSnapshotWriter(self, meta)

    def latest(self) -> SnapshotMeta | None:
        with self._lock:
            if not self._latest_known:
                names = self._names()
                self._latest = self._inspect(*names[-1]) if names else None
                self._latest_known = True
            return self._latest

    def list(self) -> list[SnapshotMeta]:
        return [self._inspect(*found) for found in self._names()]

    def open(self, index: int | None = None) -> FileSnapshotReader:
        names = self._names()
        if index is not None:
            names = [n for n in names if n[0] == index]
        if not names:
            what = "no snapshot" if index is None else f"no snapshot at index {index}"
            raise SnapshotNotFoundError(f"{what} in {self.directory}")
        return FileSnapshotReader(os.path.join(self.directory, names[-1][2]))

    def _committed(self, meta: SnapshotMeta) -> None:
        with self._lock:
            names = self._names()
            newest = names[-1] if names else None
            if newest is not None and newest[:2] == (meta.index, meta.term):
                self._latest, self._latest_known = meta, True
            else:
                self._latest_known = False  # re-read at the next latest()
            try:
                for _index, _term, name in names[: -self.keep]:
                    os.unlink(os.path.join(self.directory, name))
                    log.info("snapshot_pruned", path=os.path.join(self.directory, name))
                if len(names) > self.keep:
                    fsync_dir(self.directory)
            except OSError as exc:
                log.warning("snapshot_prune_failed", directory=self.directory, error=str(exc))

"""One node's blob files.

Layout under the blob directory (``<data-dir>/blobs`` unless ``--blob-dir``)::

    sha256/<first two hex digits>/<64 hex digits>   one file per blob
    tmp/                                            uploads and fetches in progress

A blob is written to a file in ``tmp/`` while its SHA-256 is computed, then
fsynced, then renamed to its digest and the directory fsynced: a file under
``sha256/`` is always whole and its name is its content's hash. ``tmp/`` is
emptied at start (what a crash left there was never acknowledged).

Nothing is held whole in memory: bytes are written as they arrive, in pieces
of about a MiB, and read back the same way. Disk I/O runs in worker threads,
never on the event loop. Renames and deletions run in ONE ordered thread, in
the order the loop asked for them: a deletion decided by the log and a later
rename of the same blob (a new upload) can never swap places.

Limits: a blob larger than ``max_blob_bytes`` is refused (PayloadTooLarge)
and so is any blob that would leave less than ``reserve_bytes`` free on the
file system (InsufficientStorage), checked before the first byte when the
size is announced and again while bytes arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import secrets
import shutil
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog

from ramraft.server.request_errors import BadRequest, InsufficientStorage, PayloadTooLarge
from ramraft.server.storage._fs import datasync, fsync_dir, write_all

log = structlog.get_logger("ramraft.blobs")

PIECE = 1 << 20  # bytes per disk write and per chunk read back
_HEX_NAME = re.compile(r"^[0-9a-f]{64}$")


class Incoming:
    """A blob being received into ``tmp/``: ``write`` pieces, then ``finish``;
    ``discard`` (idempotent) removes the temporary file."""

    def __init__(self, store: BlobStore, path: Path, fd: int) -> None:
        self.store = store
        self.path = path
        self._fd: int | None = fd
        self._hash = hashlib.sha256()
        self.size = 0
        self.sha256 = ""

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        self._hash.update(data)
        write_all(self._fd, [data])

    async def write(self, data: bytes) -> None:
        self.size += len(data)
        await self.store.run_io(self._write, data)

    def _finish(self) -> None:
        fd, self._fd = self._fd, None
        assert fd is not None
        try:
            if self.store.fsync:
                datasync(fd)
        finally:
            os.close(fd)

    async def finish(self) -> str:
        """Make the bytes durable; returns their SHA-256 (hex)."""
        await self.store.run_io(self._finish)
        self.sha256 = self._hash.hexdigest()
        return self.sha256

    def discard(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        self.path.unlink(missing_ok=True)


class BlobFile:
    """An open blob: ``async for piece in blob_file`` reads ``length`` bytes
    from ``offset`` in pieces, in a worker thread, and closes the file at the
    end. The file stays readable if the blob is deleted meanwhile (an open
    file outlives its name)."""

    def __init__(self, store: BlobStore, file: Any, size: int, offset: int, length: int) -> None:
        self.store = store
        self.size = size
        self.offset = offset
        self.length = length
        self._file = file
        self._offset = offset
        self._left = length

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._pieces()

    async def _pieces(self) -> AsyncIterator[bytes]:
        try:
            while self._left > 0:
                piece: bytes = await self.store.run_io(
                    os.pread, self._file.fileno(), min(PIECE, self._left), self._offset
                )
                if not piece:
                    raise OSError("the blob file ended early")
                self._offset += len(piece)
                self._left -= len(piece)
                yield piece
        finally:
            self.close()

    def close(self) -> None:
        self._file.close()


class BlobStore:
    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_blob_bytes: int,
        reserve_bytes: int,
        fsync: bool = True,
    ) -> None:
        self.root = Path(directory)
        self.files = self.root / "sha256"
        self.tmp = self.root / "tmp"
        self.max_blob_bytes = max_blob_bytes
        self.reserve_bytes = reserve_bytes
        self.fsync = fsync
        self.present: set[str] = set()
        """The blobs with a whole file here (a rename done, no deletion asked)."""
        self._holds = 0  # hold_deletions() in force (a backup reading the files)
        self._deferred: set[str] = set()  # deletions waiting for the holds to end
        self._io = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ramraft-blob-io")
        self._ordered = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ramraft-blob-files")

    # ---- start and stop ---------------------------------------------------------------------

    def open(self) -> None:
        """Create the directories, empty ``tmp/`` and list the blobs held.
        Blocking: call it in a thread (at start, before serving)."""
        for directory in (self.root, self.files, self.tmp):
            os.makedirs(directory, mode=0o700, exist_ok=True)  # private, as the WAL
        for leftover in self.tmp.iterdir():
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        present: set[str] = set()
        for prefix in self.files.iterdir():
            if not prefix.is_dir():
                continue
            for entry in os.scandir(prefix):
                if _HEX_NAME.match(entry.name) and entry.name[:2] == prefix.name:
                    present.add(entry.name)
        self.present = present
        log.info("blob_store_opened", directory=str(self.root), blobs=len(present))

    def close(self) -> None:
        self._io.shutdown(wait=True, cancel_futures=True)
        self._ordered.shutdown(wait=True)

    def run_io(self, fn: Any, *args: Any) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    def _run_ordered(self, fn: Any, *args: Any) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(self._ordered, fn, *args)

    # ---- space ----------------------------------------------------------------------------

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def check_space(self, incoming: int) -> None:
        """Refuse (InsufficientStorage) when taking ``incoming`` more bytes
        would leave less than the reserve free."""
        free = self.free_bytes()
        if free - incoming < self.reserve_bytes:
            raise InsufficientStorage(
                f"this node's blob disk has {free} bytes free; taking {incoming} more would "
                f"leave less than its reserve of {self.reserve_bytes} bytes "
                "(--blob-reserve-bytes)"
            )

    def check_size(self, size: int) -> None:
        if size > self.max_blob_bytes:
            raise PayloadTooLarge(
                f"the blob is {size} bytes; this node's limit is {self.max_blob_bytes} bytes "
                "(--max-blob-bytes)"
            )

    # ---- writing --------------------------------------------------------------------------

    def _create_temp(self) -> tuple[Path, int]:
        path = self.tmp / f"{secrets.token_hex(8)}.part"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        return path, fd

    async def receive(
        self,
        pieces: AsyncIterable[bytes],
        *,
        size: int | None = None,
        sha256: str | None = None,
    ) -> Incoming:
        """Write ``pieces`` into a temporary file, durably; returns it with its
        digest. ``size``/``sha256``, when known, are checked first (limits)
        and at the end (the bytes must match). The caller commits or discards."""
        if size is not None:
            self.check_size(size)
        self.check_space(size or 0)
        path, fd = await self.run_io(self._create_temp)
        incoming = Incoming(self, path, fd)
        try:
            buffer = bytearray()  # small pieces are gathered into one write
            async for piece in pieces:
                if incoming.size + len(buffer) + len(piece) > self.max_blob_bytes:
                    self.check_size(incoming.size + len(buffer) + len(piece))
                if buffer or len(piece) < PIECE:
                    buffer += piece
                    if len(buffer) < PIECE:
                        continue
                    piece, buffer = bytes(buffer), bytearray()
                # Other blobs (and the WAL) fill the disk too: look again
                # before every write (a statvfs costs microseconds).
                self.check_space(max(len(piece), (size or 0) - incoming.size))
                await incoming.write(piece)
            if buffer:
                await incoming.write(bytes(buffer))
            digest = await incoming.finish()
            if size is not None and incoming.size != size:
                raise BadRequest(f"the blob was announced as {size} bytes but {incoming.size} came")
            if sha256 is not None and digest != sha256:
                raise BadRequest(f"the bytes' SHA-256 is {digest}, not the {sha256} announced")
        except BaseException:
            incoming.discard()
            raise
        return incoming

    def _rename_into_place(self, incoming: Incoming) -> None:
        final = self.path(incoming.sha256)
        if final.exists():
            # Content-addressed: the file there holds these very bytes, and
            # was made durable when it was renamed in.
            incoming.path.unlink(missing_ok=True)
            return
        parent = final.parent
        if not parent.exists():
            parent.mkdir(mode=0o700, exist_ok=True)
            if self.fsync:
                fsync_dir(str(self.files))
        os.rename(incoming.path, final)
        if self.fsync:
            fsync_dir(str(parent))

    async def commit(self, incoming: Incoming) -> None:
        """Rename the received file to its digest (in the ordered thread)."""
        self._deferred.discard(incoming.sha256)  # put again: the file stays
        await self._run_ordered(self._rename_into_place, incoming)
        self.present.add(incoming.sha256)

    # ---- reading and deleting ---------------------------------------------------------------

    def path(self, sha256: str) -> Path:
        return self.files / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return sha256 in self.present

    def _open(self, sha256: str) -> tuple[Any, int] | None:
        try:
            file = open(self.path(sha256), "rb")  # noqa: SIM115 (BlobFile closes it)
        except FileNotFoundError:
            return None
        return file, os.fstat(file.fileno()).st_size

    async def open_file(self, sha256: str, offset: int = 0, length: int | None = None) -> BlobFile:
        """The blob's bytes from ``offset`` (``length`` at most); raises
        FileNotFoundError when this node has no file for it."""
        opened = await self.run_io(self._open, sha256)
        if opened is None:
            self.present.discard(sha256)
            raise FileNotFoundError(sha256)
        file, size = opened
        offset = min(offset, size)
        left = size - offset if length is None else min(length, size - offset)
        return BlobFile(self, file, size, offset, left)

    def _unlink(self, digests: list[str]) -> None:
        for sha256 in digests:
            self.path(sha256).unlink(missing_ok=True)

    def delete(self, digests: list[str]) -> asyncio.Future[Any]:
        """Delete these blobs' files (in the ordered thread, after every
        rename asked for before; after the last hold, while there is one)."""
        for sha256 in digests:
            self.present.discard(sha256)
        if self._holds:
            self._deferred.update(digests)
            done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        return self._run_ordered(self._unlink, list(digests))

    @contextlib.contextmanager
    def hold_deletions(self) -> Iterator[None]:
        """Keep every file in place while held (a backup streams them);
        the deletions asked for meanwhile run when the last hold ends."""
        self._holds += 1
        try:
            yield
        finally:
            self._holds -= 1
            if not self._holds and self._deferred:
                doomed, self._deferred = sorted(self._deferred), set()
                self._run_ordered(self._unlink, doomed)

    def on_disk(self, sha256: str) -> bool:
        """Whether the file is there (also a blob whose deletion is held)."""
        return self.path(sha256).exists()

"""Taking a backup on a node (Admin.Backup): a consistent copy of the state
machine at one committed index, as the bytes of a backup file
(storage/backup.py).

The read point is linearizable (the node confirms it has applied everything
committed before the request arrived), then the view is taken inside one
loop turn, so it is the state after exactly the entries applied so far: every
write acknowledged before the backup began is in it. The view is written by a
worker thread while the node goes on serving; the bytes are handed to the
caller in pieces of about a MiB, with a bounded queue in between so a slow
reader holds at most a few MiB here.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import queue
import threading
from collections.abc import AsyncIterator

from ramraft._version import __version__
from ramraft.consensus import RaftNode
from ramraft.server.machines.cluster import ClusterState
from ramraft.server.machines.statemachine import SnapshotJob
from ramraft.server.storage.backup import BackupHeader, ChecksumStream, encode_prefix

PIECE = 1 << 20
_QUEUED_PIECES = 4
_DONE = object()


class _PieceWriter:
    """The job's stream: collects bytes into pieces for the queue."""

    def __init__(self, pieces: queue.Queue[object], cancelled: threading.Event) -> None:
        self._pieces = pieces
        self._cancelled = cancelled
        self._buffer = bytearray()

    def write(self, data: bytes, /) -> int:
        if self._cancelled.is_set():
            raise OSError("the backup's reader went away")
        self._buffer += data
        # Pieces of at most PIECE bytes, whatever the writes: a client's
        # message limit (client/_core.py: 4 MiB) must never be met.
        while len(self._buffer) >= PIECE:
            self._put(bytes(self._buffer[:PIECE]))
            del self._buffer[:PIECE]
        return len(data)

    def flush(self) -> None:
        if self._buffer:
            self._put(bytes(self._buffer))
            self._buffer.clear()

    def _put(self, item: object) -> None:
        while not self._cancelled.is_set():
            try:
                self._pieces.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
        raise OSError("the backup's reader went away")


def backup_header(
    core: RaftNode, cluster: ClusterState, node_id: str, model: str | None
) -> BackupHeader:
    """The header of a backup whose view is taken now, at the core's applied
    index (call inside a loop turn, with the view taken in the same turn)."""
    meta = core.snapshot_meta(core.applied_index)
    return BackupHeader(
        cluster_id=cluster.cluster_id,
        index=meta.index,
        term=meta.term,
        app_version=cluster.app_version,
        kv_version=cluster.kv_version,
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        node=node_id,
        ramraft_version=__version__,
        model=model,
        cluster=cluster.to_plain(),
    )


async def backup_bytes(
    header: BackupHeader, job: SnapshotJob, blobs: AsyncIterator[bytes] | None = None
) -> AsyncIterator[bytes]:
    """The backup file's bytes for ``header`` and the view ``job``, then the
    blobs section (server/blobs/backup.py) when ``header`` announces one."""
    checksum = ChecksumStream()
    prefix = encode_prefix(header)
    checksum.update(prefix)
    yield prefix
    pieces: queue.Queue[object] = queue.Queue(maxsize=_QUEUED_PIECES)
    cancelled = threading.Event()

    def write() -> None:
        writer = _PieceWriter(pieces, cancelled)
        try:
            job.write_to(writer)
            writer.flush()
            writer._put(_DONE)
        except BaseException as exc:  # handed to the reader below
            if not cancelled.is_set():
                with contextlib.suppress(queue.Full):
                    pieces.put(exc, timeout=5)
        finally:
            job.close()

    writer_task = asyncio.get_running_loop().run_in_executor(None, write)
    try:
        while True:
            item = await asyncio.to_thread(pieces.get)
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, bytes)
            checksum.update(item)
            yield item
        await writer_task
        if blobs is not None:
            async for piece in blobs:
                checksum.update(piece)
                yield piece
        yield checksum.digest()
    finally:
        cancelled.set()
        # The reader thread may be waiting for a piece that the writer, now
        # stopping, will never put: wake it, or it waits for ever and holds
        # one of the loop's worker threads (once per abandoned backup, until
        # the node has none left). A full queue wakes it by itself.
        with contextlib.suppress(queue.Full):
            pieces.put_nowait(_DONE)
        job.close()

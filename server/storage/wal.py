"""FileLogStore: the segmented write-ahead log.

Files: ``wal-<sequence>.log`` in one directory, numbered without gaps. Each
starts with a segment header and a checkpoint frame (the log's state when the
segment began), followed by one frame per save() (see encoding.py). A segment is
preallocated to ``segment_size`` where the platform allows (appends then do
not change the file size, which makes fdatasync cheaper, and a full disk shows
up when a segment is created rather than in the middle of a record); a batch
that does not fit starts a new segment.

Durability rules:

- one save() = one frame = one pwrite + one fdatasync;
- a new segment is written to a temporary file, synced, renamed and the
  directory synced; the segment before it is synced first, so a crash never
  leaves a torn record anywhere but at the end of the last segment;
- truncating a conflicting suffix is logical: a batch whose first index is
  at or below the last stored index replaces the suffix when replayed, so a
  crash at any point leaves either the old or the new log (never a mix);
- compaction deletes whole segments, oldest first (a crash half-way leaves a
  shorter, still gapless run of segments); each segment's checkpoint keeps the
  hard state and snapshot marker that lived in the deleted ones.

Recovery replays every segment. Damage is told from a torn tail like this: a
bad frame in the last segment with no valid frame anywhere after it is what a
crash in the middle of a write leaves, so it is truncated away with a
warning. A bad frame with a valid frame after it, in any segment but the last,
or a gap in the segment numbers is damage: load() raises CorruptionError
naming the file and offset instead of serving a shorter log. (Damage to the
very last frame cannot be told from a torn write; that frame is dropped as a
torn tail, which is safe only because a sync that did not complete was never
acknowledged. A single flipped bit inside it is indistinguishable.)

After any I/O error the store is failed: the error is raised as
StorageFailedError and every later write is refused.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from ramraft.consensus.types import Entry, HardState, SnapshotMeta

from . import encoding
from ._fs import datasync, fsync_dir, preallocate, pwrite_all
from .errors import CorruptionError, StorageFailedError, UnsupportedVersionError
from .interface import RecoveredState, SnapshotStore
from .model import LogModel, reconcile

log = structlog.get_logger(__name__)

DEFAULT_SEGMENT_SIZE = 64 << 20
# compact() starts a new segment once the current one holds this much.
ROLL_AFTER_COMPACTION_BYTES = 1 << 20
_SEGMENT_NAME = re.compile(r"^wal-(\d{20})\.log$")


def written_extent(fd: int) -> int:
    """Length of the file up to the end of its last data region.

    Past it the file is a hole or preallocated space that was never written,
    which reads as zeros by definition, so recovery need not read 64 MiB of
    zeros from a fresh segment. Falls back to the file size where the file
    system cannot tell (SEEK_DATA/SEEK_HOLE unsupported).
    """
    size = os.fstat(fd).st_size
    seek_data = getattr(os, "SEEK_DATA", None)
    seek_hole = getattr(os, "SEEK_HOLE", None)
    if seek_data is None or seek_hole is None:
        return size
    end = 0
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, seek_data)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data after pos
                    break
                raise
            pos = os.lseek(fd, start, seek_hole)
            end = pos
    except OSError:
        return size
    finally:
        os.lseek(fd, 0, os.SEEK_SET)
    return min(end, size)


def segment_file_name(sequence: int) -> str:
    return f"wal-{sequence:020d}.log"


@dataclass(slots=True)
class _Segment:
    sequence: int
    path: str
    # Highest entry index written in this segment (0: none). Compaction may
    # delete the segment once a snapshot covers this index.
    max_index: int = 0


class FileLogStore:
    """The write-ahead log in ``directory`` (see the module docstring).

    ``snapshots`` is consulted at load() (the log restarts after the newest
    snapshot) and at compact(). ``on_close`` runs at close() (open_storage
    uses it to release the data-directory lock).
    """

    def __init__(
        self,
        directory: str,
        snapshots: SnapshotStore,
        *,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        preallocate: bool = True,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        if segment_size < 4096:
            raise ValueError("segment_size must be at least 4096 bytes")
        self.directory = directory
        self.segment_size = segment_size
        self._snapshots = snapshots
        self._preallocate = preallocate
        self._on_close = on_close
        self._model: LogModel | None = None
        self._segments: list[_Segment] = []
        self._fd = -1
        self._pos = 0  # where the next frame goes in the active segment
        self._checkpoint_end = 0  # end of the active segment's checkpoint frame
        self._dirty = False  # written but not yet synced
        self._failure: StorageFailedError | None = None
        self._closed = False

    # -- public ------------------------------------------------------------------

    @property
    def failure(self) -> StorageFailedError | None:
        """The error that failed the store, if it has failed."""
        return self._failure

    @property
    def last_index(self) -> int:
        return self._loaded().last_index

    @property
    def segments(self) -> list[str]:
        """Paths of the live segment files, oldest first."""
        return [s.path for s in self._segments]

    def load(self) -> RecoveredState:
        if self._model is not None:
            raise RuntimeError("load() may be called only once")
        if self._closed:
            raise RuntimeError("the log store is closed")
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            self._remove_temporaries()
            found = self._list_segments()
        except OSError as exc:
            raise self._fail(exc, f"opening the WAL directory {self.directory}") from exc
        if found:
            model = self._replay(found)
        else:
            model = LogModel(keep_entries=True)
            try:
                self._create_segment(1, model)
            except OSError as exc:
                raise self._fail(exc, "creating the first WAL segment") from exc
        self._model = model

        newest = self._snapshots.latest()
        snap_dir = str(getattr(self._snapshots, "directory", "the snapshot store"))
        retain = reconcile(model, newest, self.directory, snap_dir)
        if retain is not None and newest is not None:
            log.info(
                "wal_rebased_on_snapshot",
                directory=self.directory,
                snapshot_index=newest.index,
                kept_entries_after_it=retain,
            )
            frame = encoding.encode_frame(snapshot=newest, retain=retain)
            self._append(frame, sync=True)
            model.apply_marker(newest, retain)
        entries = model.entries_after(newest.index if newest is not None else 0)
        model.drop_entries()
        hard_state = model.hard_state
        if newest is not None and hard_state.commit < newest.index:
            hard_state = HardState(term=hard_state.term, vote=hard_state.vote, commit=newest.index)
        log.info(
            "wal_recovered",
            directory=self.directory,
            segments=len(self._segments),
            snapshot_index=newest.index if newest is not None else 0,
            entries=len(entries),
            last_index=model.last_index,
            term=hard_state.term,
        )
        return RecoveredState(hard_state=hard_state, snapshot=newest, entries=entries)

    def save(
        self,
        *,
        snapshot: SnapshotMeta | None = None,
        entries: Sequence[Entry] = (),
        hard_state: HardState | None = None,
        sync: bool = True,
    ) -> None:
        model = self._writable()
        if snapshot is None and not entries and hard_state is None:
            if sync and self._dirty:
                try:
                    datasync(self._fd)
                except OSError as exc:
                    raise self._fail(exc, "syncing") from exc
                self._dirty = False
            return
        retain = model.check(snapshot, entries, hard_state)
        frame = encoding.new_frame()
        encoding.encode_payload(frame, snapshot, retain, entries, hard_state)
        encoding.seal_frame(frame)
        self._append(frame, sync)
        model.apply(snapshot, retain, entries, hard_state)
        if entries:
            segment = self._segments[-1]
            segment.max_index = max(segment.max_index, entries[-1].index)

    def compact(self, snapshot_index: int) -> None:
        model = self._writable()
        newest = self._snapshots.latest()
        if newest is None or snapshot_index > newest.index:
            raise ValueError(
                f"cannot compact to {snapshot_index}: no committed snapshot covers it "
                f"(newest: {newest.index if newest else 'none'})"
            )
        model.compact(snapshot_index)
        doomed = []
        for segment in self._segments[:-1]:
            if segment.max_index > snapshot_index:
                break
            doomed.append(segment)
        if doomed:
            try:
                for segment in doomed:  # oldest first: a crash leaves a gapless run
                    os.unlink(segment.path)
                fsync_dir(self.directory)
            except OSError as exc:
                raise self._fail(exc, "deleting compacted segments") from exc
            finally:
                self._segments = [s for s in self._segments if os.path.exists(s.path)]
            log.info(
                "wal_compacted", directory=self.directory, up_to=snapshot_index, deleted=len(doomed)
            )
        if self._pos - self._checkpoint_end > ROLL_AFTER_COMPACTION_BYTES:
            # Start a new segment now, so that the next compaction can delete
            # this one whole. Otherwise a segment only goes once full (64 MiB
            # by default), and recovery replays everything the snapshots
            # already cover: restart time would grow with the node's age.
            try:
                self._rollover()
            except OSError as exc:
                raise self._fail(exc, "starting a segment after compaction") from exc

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._fd >= 0:
                if self._dirty and self._failure is None:
                    try:
                        datasync(self._fd)
                    except OSError as exc:
                        log.error("wal_close_sync_failed", directory=self.directory, error=str(exc))
                os.close(self._fd)
                self._fd = -1
        finally:
            if self._on_close is not None:
                self._on_close()

    # -- writing -------------------------------------------------------------------

    def _loaded(self) -> LogModel:
        if self._model is None:
            raise RuntimeError("call load() first")
        return self._model

    def _writable(self) -> LogModel:
        if self._closed:
            raise RuntimeError("the log store is closed")
        if self._failure is not None:
            raise StorageFailedError(
                f"the write-ahead log failed earlier and refuses writes until the node is "
                f"restarted ({self._failure})"
            ) from self._failure
        return self._loaded()

    def _fail(self, exc: OSError, action: str) -> StorageFailedError:
        where = self._segments[-1].path if self._segments else self.directory
        error = StorageFailedError(
            f"write-ahead log {where}: {action} failed: {exc.strerror or exc} "
            f"(errno {exc.errno}). Nothing from this batch was acknowledged and the log on "
            "disk is intact up to the last synced batch; the log now refuses writes. Free "
            "disk space or repair the disk, then restart the node."
        )
        self._failure = error
        log.error("wal_failed", path=where, action=action, errno=exc.errno, error=str(exc))
        return error

    def _append(self, frame: bytearray, sync: bool) -> None:
        try:
            if self._pos + len(frame) > self.segment_size and self._pos > self._checkpoint_end:
                self._rollover()
            pwrite_all(self._fd, frame, self._pos)
            self._pos += len(frame)
            if sync:
                datasync(self._fd)
                self._dirty = False
            else:
                self._dirty = True
        except OSError as exc:
            raise self._fail(exc, "appending a batch") from exc

    def _rollover(self) -> None:
        if self._dirty:
            datasync(self._fd)  # the old segment is complete before the new one exists
            self._dirty = False
        self._create_segment(self._segments[-1].sequence + 1, self._loaded())

    def _create_segment(self, sequence: int, model: LogModel) -> None:
        final = os.path.join(self.directory, segment_file_name(sequence))
        temporary = final + ".tmp"
        head = bytearray(encoding.encode_segment_header(sequence))
        frame = encoding.new_frame()
        cp = model.checkpoint()
        encoding.encode_checkpoint(frame, cp.last_index, cp.last_term, cp.hard_state, cp.snapshot)
        head += encoding.seal_frame(frame)
        # 0600: segments hold the values in plaintext.
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            if self._preallocate:
                preallocate(fd, self.segment_size)
            pwrite_all(fd, head, 0)
            os.fsync(fd)
            os.rename(temporary, final)
            fsync_dir(self.directory)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        self._pos = self._checkpoint_end = len(head)
        self._segments.append(_Segment(sequence, final))

    # -- recovery ------------------------------------------------------------------

    def _remove_temporaries(self) -> None:
        removed = False
        for name in os.listdir(self.directory):
            if name.endswith(".tmp"):
                path = os.path.join(self.directory, name)
                os.unlink(path)
                log.info("wal_temporary_removed", path=path)
                removed = True
        if removed:
            fsync_dir(self.directory)

    def _list_segments(self) -> list[_Segment]:
        found = []
        for name in os.listdir(self.directory):
            match = _SEGMENT_NAME.match(name)
            if match:
                found.append(_Segment(int(match.group(1)), os.path.join(self.directory, name)))
            else:
                log.warning("wal_unknown_file_ignored", path=os.path.join(self.directory, name))
        found.sort(key=lambda s: s.sequence)
        for before, after in itertools.pairwise(found):
            if after.sequence != before.sequence + 1:
                missing = os.path.join(self.directory, segment_file_name(before.sequence + 1))
                raise CorruptionError(
                    missing,
                    None,
                    f"WAL segment {before.sequence + 1} is missing (found {before.sequence} "
                    f"and {after.sequence}); entries between them are lost",
                )
        return found

    def _replay(self, segments: list[_Segment]) -> LogModel:
        model = LogModel(keep_entries=True)
        for number, segment in enumerate(segments):
            last = number == len(segments) - 1
            end = self._replay_segment(segment, model, first=number == 0, last=last)
            if last:
                self._segments = segments
                try:
                    self._fd = os.open(segment.path, os.O_RDWR | os.O_CLOEXEC)
                except OSError as exc:
                    raise self._fail(exc, "opening the last WAL segment") from exc
                self._pos = end
        return model

    def _replay_segment(
        self, segment: _Segment, model: LogModel, *, first: bool, last: bool
    ) -> int:
        path = segment.path
        with open(path, "rb") as f:
            data = f.read(written_extent(f.fileno()))
        try:
            header = encoding.decode_segment_header(data)
        except ValueError as exc:
            raise CorruptionError(path, 0, str(exc)) from None
        if header.version != encoding.FORMAT_VERSION:
            raise UnsupportedVersionError(path, header.version, encoding.FORMAT_VERSION)
        if header.sequence != segment.sequence:
            raise CorruptionError(
                path, 0, f"header says segment {header.sequence}, unlike the file name"
            )
        pos = encoding.SEGMENT_HEADER_SIZE
        self._checkpoint_end = 0
        while pos < len(data):
            try:
                start, end = encoding.read_frame(data, pos)
            except encoding.FrameError as bad:
                if bad.zero and data.count(0, pos) == len(data) - pos:
                    break  # the preallocated, never-written rest of the file
                following = encoding.find_valid_frame(data, pos)
                if last and following is None and self._checkpoint_end:
                    self._truncate_torn_tail(path, data, pos, bad.problem)
                    break
                detail = bad.problem
                if following is not None:
                    detail += f", yet a valid record follows at offset {following}"
                raise CorruptionError(path, pos, detail) from None
            try:
                items = encoding.decode_payload(data, start, end)
                top = self._apply_frame(model, items, first=first, opening=not self._checkpoint_end)
            except encoding.DecodeError as exc:
                raise CorruptionError(path, start + exc.offset, exc.problem) from None
            except ValueError as exc:
                raise CorruptionError(path, pos, f"record does not fit the log: {exc}") from None
            if top > segment.max_index:
                segment.max_index = top
            if not self._checkpoint_end:
                self._checkpoint_end = end
            pos = end
        if not self._checkpoint_end:
            raise CorruptionError(
                path, encoding.SEGMENT_HEADER_SIZE, "segment has no checkpoint record"
            )
        return pos

    @staticmethod
    def _apply_frame(
        model: LogModel, items: list[encoding.Item], *, first: bool, opening: bool
    ) -> int:
        """Apply one frame's items; return the highest entry index in it (0: none)."""
        if opening:
            if len(items) != 1 or not isinstance(items[0], encoding.CheckpointItem):
                raise ValueError("a segment must start with a checkpoint record")
            cp = items[0]
            if first:
                model.start_from_checkpoint(cp)
            elif not model.matches_checkpoint(cp):
                raise ValueError(
                    f"checkpoint (last index {cp.last_index}, term {cp.last_term}, "
                    f"{cp.hard_state}) disagrees with the segments before it "
                    f"(last index {model.last_index}, term {model.last_term}, {model.hard_state})"
                )
            return 0
        top = 0
        batch: list[Entry] = []
        for item in items:
            if isinstance(item, Entry):
                batch.append(item)
                continue
            if batch:
                model.apply_entries(batch)
                top = max(top, batch[-1].index)
                batch = []
            if isinstance(item, HardState):
                model.hard_state = item
            elif isinstance(item, encoding.SnapshotItem):
                model.apply_marker(item.meta, item.retain)
            else:
                raise ValueError("a checkpoint record in the middle of a segment")
        if batch:
            model.apply_entries(batch)
            top = max(top, batch[-1].index)
        return top

    def _truncate_torn_tail(self, path: str, data: bytes, pos: int, problem: str) -> None:
        dropped = len(data.rstrip(b"\0")) - pos
        log.warning(
            "wal_torn_tail_truncated",
            path=path,
            offset=pos,
            dropped_bytes=max(dropped, 0),
            problem=problem,
            hint="the node stopped mid-write; that unsynced batch was never acknowledged",
        )
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, pos)
                if self._preallocate:
                    preallocate(fd, self.segment_size)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise self._fail(exc, f"truncating the torn tail of {path}") from exc

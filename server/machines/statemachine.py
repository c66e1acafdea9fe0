"""The state-machine contract: what the node runtime applies committed entries to.

A state machine is plain Python objects in RAM. The runtime calls, on the
event loop and in log order::

    result = machine.apply(index, entry.data)   # every committed NORMAL entry
    job = machine.snapshot()                     # a consistent view, taken NOW
    await asyncio.to_thread(job.write_to, file)  # serialise it while apply() goes on
    machine.restore(file)                        # replace the state from a snapshot

Rules every machine follows
---------------------------
- ``apply`` is deterministic: its effect and its result depend only on the
  machine's state and on ``(index, command)``. No clock, no randomness, no I/O,
  no iteration over ``set``/``frozenset`` of ``str``/``bytes`` (their order
  depends on the per-process hash seed), no configuration that may differ
  between nodes.
- ``apply`` never raises for a bad command. Undecodable bytes or a command that
  fails produce a :class:`CommandError` *result*, the same one on every node,
  and the entry counts as applied. ``apply`` raises only for failures of the
  node itself (e.g. ``MemoryError``), which must stop the node rather than let
  it diverge.
- ``apply(index, b"")`` is a no-op (the leader's empty entry); it only moves
  ``applied_index``. Indexes must increase (a runtime bug otherwise: apply
  raises ValueError). The runtime passes every committed NORMAL entry;
  membership entries are its own business.
- ``snapshot()`` runs on the event loop and must be cheap: it fixes the view
  (the state after the last applied entry) and returns a :class:`SnapshotJob`.
  ``job.write_to(stream)`` may then run in a worker thread while the loop goes
  on applying entries; it writes the view, not the live state.
- Streams are read and written incrementally, in frames of at most a few MiB:
  a multi-GB state is never held twice as bytes.

Routing several machines in one log
-----------------------------------
Every non-empty command starts with a one-byte tag naming the machine it is
for (:data:`TAG_KV`, :data:`TAG_MODEL`). A single machine checks the tag; a
:class:`CompositeMachine` routes by it, so the built-in key-value machine and
an application model (server/machines/embed.py) can share one Raft log.

Snapshot framing
----------------
Snapshot streams start with a 4-byte magic and a version byte, followed by
frames: ``u32 length | u32 crc32c(payload) | payload`` (little-endian). The
helpers :class:`FrameWriter` and :class:`FrameReader` do this; a reader that
meets a short read, a bad checksum or an oversized length raises
:class:`SnapshotFormatError` naming the offset.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import crc32c

# -- command tags -------------------------------------------------------------

TAG_KV = 0x01
"""First byte of every key-value command (server/machines/kv.py)."""
TAG_MODEL = 0x02
"""First byte of every embedded-model call (server/machines/embed.py)."""
TAG_CLUSTER = 0x03
"""First byte of every cluster command (machines/cluster.py): version
switches, the upgrade hold, the cluster id, state checks. A node of a release
before these existed answers them with BAD_COMMAND and changes nothing."""


# -- results ------------------------------------------------------------------


class ErrorCode(enum.IntEnum):
    """Why a committed command produced no effect (or only part of one).

    The numbers are stored in snapshots (session replies): never renumber.
    """

    BAD_COMMAND = 1
    """The entry's bytes are not a valid command for this machine."""
    SESSION_EXPIRED = 2
    """The client's session is unknown (expired) and the client has had
    replies before (first_unacked > 1), so a retry could not be recognised.
    The command was NOT applied; start a new session."""
    STALE_SEQUENCE = 3
    """The sequence is below the client's first unacknowledged one and its
    reply is not kept (a duplicate of an answered write, or a write the client
    abandoned). The command was NOT applied now."""
    UNKNOWN_COMMAND = 4
    """An embedded-model call named a command the model does not have. No
    longer produced (such an entry now stops the node: ApplyHalted); kept
    because session replies in snapshots may hold it."""
    COMMAND_FAILED = 5
    """An embedded-model command raised; see server/machines/embed.py for what that
    means for the model's state."""
    BAD_RESULT = 6
    """An embedded-model command ran (its effects stay) but returned a value
    that is not plain data."""
    NOT_ACTIVE = 7
    """The command is new in a version of the application (or of the
    key-value machine) that the cluster has not switched to yet. Nothing
    changed; see machines/cluster.py."""
    UPGRADE_FAILED = 8
    """A version switch whose ``upgrade()`` raised: the model's state was put
    back as it was and the cluster stays at the version it had."""
    NOT_FOUND = 9
    """A key-value command named a lease that does not exist (never granted,
    revoked or expired). Nothing changed."""
    LIMIT_EXCEEDED = 10
    """A key-value command would go past a bound that keeps one apply short
    (the keys a delete-range may remove, the keys one lease may hold).
    Nothing changed."""
    ALREADY_EXISTS = 11
    """A lease grant named an id that is taken. Nothing changed."""


@dataclass(frozen=True, slots=True)
class CommandError:
    """The result of a command that could not be applied as asked.

    Returned by ``apply`` (never raised), identical on every node. ``message``
    says what was wrong in words a client can show.
    """

    code: ErrorCode
    message: str

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


# -- the protocol -------------------------------------------------------------


class ReadableStream(Protocol):
    """What restore() needs from a stream: ``read(n)`` returning at most n
    bytes, fewer only at the end. ``typing.BinaryIO`` satisfies it."""

    def read(self, n: int, /) -> bytes: ...


class WritableStream(Protocol):
    """What a snapshot job needs from a stream. ``typing.BinaryIO`` satisfies it."""

    def write(self, data: bytes, /) -> int: ...


@runtime_checkable
class SnapshotJob(Protocol):
    """A consistent view of a machine fixed by ``StateMachine.snapshot()``.

    ``write_to`` may run in any thread, once; it returns the number of bytes
    written and releases the view. A job that will not be written must be
    closed, or its view holds memory (for the key-value machine, a journal of
    the writes made since the view was taken) until it is garbage-collected.
    """

    @property
    def index(self) -> int:
        """The machine's ``applied_index`` when the view was taken."""
        ...

    def write_to(self, stream: WritableStream) -> int: ...

    def close(self) -> None: ...


@runtime_checkable
class StateMachine(Protocol):
    """What the node runtime applies committed entries to. See the module
    docstring for the rules."""

    @property
    def applied_index(self) -> int:
        """The index of the last entry passed to apply() (or restored)."""
        ...

    def apply(self, index: int, command: bytes) -> object: ...

    def snapshot(self) -> SnapshotJob: ...

    def restore(self, stream: ReadableStream) -> None: ...


# -- errors -------------------------------------------------------------------


class ApplyHalted(Exception):
    """This node's code cannot apply a committed entry: a command it does not
    have, or a switch to a version above what it supports (the entry was
    written by newer code). ``apply`` raises it *before changing anything*;
    the runtime then stops applying at that index (applied < committed),
    reports not ready and serves no reads, until the node is restarted with
    code that can apply it. Skipping the entry instead would leave this node
    with other data than its peers, silently and for ever."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"cannot apply log entry {index}: {reason}")
        self.index = index
        self.reason = reason


class SnapshotError(Exception):
    """A snapshot could not be taken, written or restored."""


class SnapshotFormatError(SnapshotError):
    """The snapshot stream is truncated, corrupted or of another format. The
    machine's state is unchanged."""


class SnapshotInProgressError(SnapshotError):
    """snapshot() was called while an earlier job of the same machine is still
    open (write it or close it first)."""


class SnapshotAbortedError(SnapshotError):
    """The view was dropped before write_to finished (the machine was restored
    from another snapshot, or the job was closed)."""


# -- framing ------------------------------------------------------------------

_FRAME_HEADER = struct.Struct("<II")
MAX_FRAME = 1 << 30
"""Largest frame payload a reader accepts (a corrupt length beyond this is
reported, not allocated)."""
_READ_PIECE = 1 << 20


class FrameWriter:
    """Writes ``magic+version`` then checksummed frames to a stream."""

    __slots__ = ("_stream", "bytes_written")

    def __init__(self, stream: WritableStream, magic: bytes, version: int) -> None:
        self._stream = stream
        self.bytes_written = 0
        self._write(magic + bytes([version]))

    def _write(self, data: bytes) -> None:
        written = self._stream.write(data)
        if written is not None and written < len(data):
            # A raw (unbuffered) stream may take only part of a write.
            rest = memoryview(data)[written:]
            while rest:
                written = self._stream.write(bytes(rest))
                if not written:
                    raise SnapshotError("snapshot stream refused a write")
                rest = rest[written:]
        self.bytes_written += len(data)

    def frame(self, payload: bytes) -> None:
        if len(payload) > MAX_FRAME:
            raise SnapshotError(f"snapshot frame of {len(payload)} bytes exceeds {MAX_FRAME}")
        header = _FRAME_HEADER.pack(len(payload), crc32c.crc32c(payload))
        self._write(header)
        if payload:
            self._write(payload)


class FrameReader:
    """Reads what :class:`FrameWriter` wrote, checking every frame.
    ``version`` is the format version the reader expects; ``also`` lists
    older ones it reads too (``self.version`` says which one it found)."""

    __slots__ = ("_stream", "offset", "version")

    def __init__(
        self, stream: ReadableStream, magic: bytes, version: int, also: tuple[int, ...] = ()
    ) -> None:
        self._stream = stream
        self.offset = 0
        head = self._read_exact(len(magic) + 1, "header")
        if head[: len(magic)] != magic:
            name = magic.decode(errors="replace")
            raise SnapshotFormatError(f"not a {name} snapshot (starts with {head[: len(magic)]!r})")
        if head[-1] != version and head[-1] not in also:
            readable = " and ".join(str(v) for v in sorted((version, *also)))
            raise SnapshotFormatError(
                f"{magic.decode(errors='replace')} snapshot format version {head[-1]} "
                f"is not supported (this build reads version {readable})"
            )
        self.version = head[-1]

    def _read_exact(self, n: int, what: str) -> bytes:
        pieces: list[bytes] = []
        remaining = n
        while remaining:
            piece = self._stream.read(min(remaining, _READ_PIECE))
            if not piece:
                raise SnapshotFormatError(
                    f"snapshot truncated at byte {self.offset + n - remaining} "
                    f"(reading {what}, {remaining} bytes missing)"
                )
            pieces.append(piece)
            remaining -= len(piece)
        self.offset += n
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def frame(self) -> bytes:
        start = self.offset
        length, crc = _FRAME_HEADER.unpack(self._read_exact(_FRAME_HEADER.size, "frame header"))
        if length > MAX_FRAME:
            raise SnapshotFormatError(f"frame at byte {start} claims {length} bytes: corrupt")
        payload = self._read_exact(length, "frame") if length else b""
        if crc32c.crc32c(payload) != crc:
            raise SnapshotFormatError(f"checksum mismatch in the frame at byte {start}")
        return payload


# -- several machines in one log ----------------------------------------------

_COMPOSITE_MAGIC = b"RRCM"
_COMPOSITE_VERSION = 1
_SECTION_PIECE = 1 << 20


class _SectionWriter:
    """A write-only stream that wraps everything written into frames of the
    outer stream, ended by an empty frame."""

    __slots__ = ("_buffer", "_frames")

    def __init__(self, frames: FrameWriter) -> None:
        self._frames = frames
        self._buffer = bytearray()

    def write(self, data: bytes, /) -> int:
        self._buffer += data
        while len(self._buffer) >= _SECTION_PIECE:
            self._frames.frame(bytes(self._buffer[:_SECTION_PIECE]))
            del self._buffer[:_SECTION_PIECE]
        return len(data)

    def end(self) -> None:
        if self._buffer:
            self._frames.frame(bytes(self._buffer))
            self._buffer.clear()
        self._frames.frame(b"")


class _SectionReader:
    """Reads back one section written by :class:`_SectionWriter`."""

    __slots__ = ("_ended", "_frames", "_pending")

    def __init__(self, frames: FrameReader) -> None:
        self._frames = frames
        self._pending = memoryview(b"")
        self._ended = False

    def read(self, n: int, /) -> bytes:
        while not self._pending and not self._ended:
            payload = self._frames.frame()
            if payload:
                self._pending = memoryview(payload)
            else:
                self._ended = True
        out = bytes(self._pending[:n])
        self._pending = self._pending[len(out) :]
        return out

    def finish(self) -> None:
        """Check the machine read its whole section."""
        if self.read(1):
            raise SnapshotFormatError("a machine's snapshot section has trailing bytes")


class _CompositeJob:
    def __init__(self, index: int, jobs: list[tuple[int, SnapshotJob]]) -> None:
        self._index = index
        self._jobs = jobs

    @property
    def index(self) -> int:
        return self._index

    def write_to(self, stream: WritableStream) -> int:
        try:
            frames = FrameWriter(stream, _COMPOSITE_MAGIC, _COMPOSITE_VERSION)
            frames.frame(bytes([len(self._jobs)]) + self._index.to_bytes(8, "little"))
            for tag, job in self._jobs:
                frames.frame(bytes([tag]))
                section = _SectionWriter(frames)
                job.write_to(section)
                section.end()
            return frames.bytes_written
        finally:
            self.close()

    def close(self) -> None:
        for _, job in self._jobs:
            job.close()


class CompositeMachine:
    """Routes each command to the machine its first byte names.

    ``machines`` maps a tag (e.g. ``TAG_KV``) to a machine. A command with an
    unknown tag gets a ``BAD_COMMAND`` result; an empty command is a no-op.
    Snapshots hold one section per machine, in tag order; restore needs the
    same set of tags.
    """

    def __init__(self, machines: Mapping[int, StateMachine]) -> None:
        if not machines:
            raise ValueError("CompositeMachine needs at least one machine")
        for tag in machines:
            if not 0 < tag < 256:
                raise ValueError(f"machine tag {tag} is not a byte value 1..255")
        self._machines = dict(sorted(machines.items()))
        self._applied_index = 0

    @property
    def applied_index(self) -> int:
        return self._applied_index

    def machine(self, tag: int) -> StateMachine:
        return self._machines[tag]

    def apply(self, index: int, command: bytes) -> object:
        if index <= self._applied_index:
            raise ValueError(f"apply({index}) after applied index {self._applied_index}")
        machine = self._machines.get(command[0]) if command else None
        # The sub-machine may raise ApplyHalted: only then is the index not
        # applied, here as there.
        result = machine.apply(index, command) if machine is not None else None
        self._applied_index = index
        if command and machine is None:
            return CommandError(
                ErrorCode.BAD_COMMAND, f"no state machine for command tag 0x{command[0]:02x}"
            )
        return result

    def snapshot(self) -> SnapshotJob:
        jobs: list[tuple[int, SnapshotJob]] = []
        try:
            for tag, machine in self._machines.items():
                jobs.append((tag, machine.snapshot()))
        except BaseException:
            for _, job in jobs:
                job.close()
            raise
        return _CompositeJob(self._applied_index, jobs)

    def restore(self, stream: ReadableStream) -> None:
        frames = FrameReader(stream, _COMPOSITE_MAGIC, _COMPOSITE_VERSION)
        header = frames.frame()
        if len(header) != 9 or header[0] != len(self._machines):
            raise SnapshotFormatError(
                f"snapshot has {header[0] if header else 0} machine sections, "
                f"this node has {len(self._machines)}"
            )
        snapshot_index = int.from_bytes(header[1:], "little")
        # Sub-machines restore one after the other: a failure in a later section
        # leaves earlier machines restored. Restore is all-or-nothing only per
        # machine; the runtime treats any restore failure as fatal for the node.
        for tag, machine in self._machines.items():
            got = frames.frame()
            if got != bytes([tag]):
                raise SnapshotFormatError(f"expected the section of machine tag {tag}, got {got!r}")
            section = _SectionReader(frames)
            machine.restore(section)
            section.finish()
        self._applied_index = snapshot_index


COMPOSITE_MAGIC = _COMPOSITE_MAGIC


def read_composite(
    stream: ReadableStream, read_section: Callable[[int, ReadableStream], None]
) -> int:
    """Walk a composite snapshot stream without its machines: calls
    ``read_section(tag, section)`` for each machine's section in order (the
    callee must read the whole section) and returns the snapshot's applied
    index. Raises SnapshotFormatError for a bad stream."""
    frames = FrameReader(stream, _COMPOSITE_MAGIC, _COMPOSITE_VERSION)
    header = frames.frame()
    if len(header) != 9:
        raise SnapshotFormatError("composite snapshot header is damaged")
    count, index = header[0], int.from_bytes(header[1:], "little")
    for _ in range(count):
        tag = frames.frame()
        if len(tag) != 1:
            raise SnapshotFormatError(f"bad section tag {tag!r} in composite snapshot")
        section = _SectionReader(frames)
        read_section(tag[0], section)
        section.finish()
    return index


def check_tag(command: bytes, tag: int, name: str) -> CommandError | None:
    """A BAD_COMMAND result if ``command`` is not tagged for machine ``name``."""
    if command[0] != tag:
        return CommandError(
            ErrorCode.BAD_COMMAND,
            f"command tag 0x{command[0]:02x} is not the {name} machine's (0x{tag:02x})",
        )
    return None

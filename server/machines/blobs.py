"""Blob references and the replicated blob catalog.

Blob bytes (images, uploads, exports) never enter the Raft log or the
snapshots: each node keeps them as files (server/blobs/). What the log
carries is the *catalog*: which blobs the cluster holds, with each one's
size and content type, and when it was last put or last found referenced.
Every node applies the same catalog entries at the same indexes, so every
node knows which blobs exist (and fetches those it lacks), and every node
deletes the same ones at the same index.

A blob is named by the SHA-256 of its bytes. Written as text (command line,
HTTP, logs) a reference is the 64-character lower-case hex digest;
``sha256:<hex>`` is accepted too (:func:`parse_sha256`).

Catalog commands are cluster commands (machines/cluster.py, ``TAG_CLUSTER``),
so a node whose code lacks them stops applying rather than skipping them;
they are allowed only once the cluster runs key-value version
:data:`BLOBS_KV_VERSION`, which the leader switches to once every member's
code supports it:

============ ============================================ ==========================
op           array                                        effect
============ ============================================ ==========================
blob put     ``[6, sha256, size, content_type, time_ms]`` record (or touch) a blob
blob delete  ``[7, sha256]``                              forget it; nodes delete it
blob collect ``[8, time_ms, grace_ms]``                   collect unreferenced blobs
============ ============================================ ==========================

Garbage collection is decided here, in the log, never by a node's own clock
or applied state: the catalog keeps its own clock (the largest ``time_ms``
any entry carried, so a leader whose clock lags cannot move it back), and a
``collect`` entry removes every blob that the application's state does not
refer to at that index (``ReplicatedModel.blob_refs()``) and that was neither
put nor found referenced within ``grace_ms`` before. A blob referenced again
within the grace period is kept; a blob put moments ago and not referenced
yet is kept, even on a node that has not applied the command referring to it.
A model that does not declare ``blob_refs()`` gets no automatic collection:
only explicit deletes remove blobs.

The catalog travels in snapshots as a trailer after the machines' sections
(:class:`CatalogSnapshotJob`), written only when it is not empty, so a
cluster that never stored a blob keeps writing the snapshots every release
reads.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
import structlog

from ramraft.server.machines.statemachine import (
    CommandError,
    ErrorCode,
    FrameReader,
    FrameWriter,
    ReadableStream,
    SnapshotAbortedError,
    SnapshotFormatError,
    WritableStream,
)

log = structlog.get_logger(__name__)

__all__ = [
    "BLOBS_KV_VERSION",
    "CATALOG_MAGIC",
    "BlobCatalog",
    "BlobEntry",
    "BlobRef",
    "CatalogListener",
    "blob_ref_set",
    "blobs_not_active",
    "check_content_type",
    "parse_sha256",
    "read_catalog_trailer",
]

BLOBS_KV_VERSION = 2
"""The key-value version from which blob commands are allowed: the leader
switches the cluster to it once every member's code supports it
(runtime/steward.py), so no node of an earlier release meets one."""

CATALOG_MAGIC = b"RRBC"
_CATALOG_VERSION = 1
_CHUNK = 4096
_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
_CONTENT_TYPE = re.compile(r"^[\x21-\x7e][\x20-\x7e]{0,254}$")
DEFAULT_CONTENT_TYPE = "application/octet-stream"


def blobs_not_active(kv_version: int) -> str:
    """Why a blob command is refused in a cluster that runs ``kv_version``."""
    return (
        f"blobs need key-value version {BLOBS_KV_VERSION}; the cluster runs version "
        f"{kv_version} until every node's code supports it (the leader switches then)"
    )


def parse_sha256(text: object) -> str:
    """A blob reference as written by people and programs -> the 64-character
    lower-case hex SHA-256. Accepts ``<hex>`` and ``sha256:<hex>`` (either
    case), a :class:`BlobRef`, or a mapping with a ``"sha256"`` key (what
    ``BlobRef.to_plain()`` made). Raises ValueError naming what is wrong."""
    if isinstance(text, BlobRef):
        return text.sha256
    if isinstance(text, Mapping):
        text = text.get("sha256")
    if not isinstance(text, str):
        raise ValueError(f"a blob reference is a SHA-256 in hex, not {type(text).__name__}")
    digest = text.strip()
    if digest[:7].lower() == "sha256:":
        digest = digest[7:]
    if not _HEX.match(digest):
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise ValueError(
            f"{shown!r} is not a blob reference: expected 64 hex digits (a SHA-256), "
            "optionally after 'sha256:'"
        )
    return digest.lower()


def check_content_type(value: str) -> str:
    """A content type as stored: printable ASCII, at most 255 characters."""
    value = value.strip() or DEFAULT_CONTENT_TYPE
    if not _CONTENT_TYPE.match(value):
        raise ValueError(f"content type {value[:80]!r} is not 1-255 printable ASCII characters")
    return value


@dataclass(frozen=True, slots=True)
class BlobRef:
    """What an application stores to refer to a blob: its SHA-256 (hex),
    size and content type. ``str(ref)`` is the hex digest. Models keep plain
    data only, so store ``ref.sha256`` or ``ref.to_plain()`` in the model and
    rebuild a BlobRef with ``BlobRef.from_plain(...)``."""

    sha256: str
    size: int
    content_type: str = DEFAULT_CONTENT_TYPE

    def __str__(self) -> str:
        return self.sha256

    def to_plain(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size, "content_type": self.content_type}

    @classmethod
    def from_plain(cls, plain: Mapping[str, Any]) -> BlobRef:
        size = plain.get("size", 0)
        if type(size) is not int or size < 0:
            raise ValueError(f"bad blob size {size!r}")
        content_type = plain.get("content_type", DEFAULT_CONTENT_TYPE)
        if not isinstance(content_type, str):
            raise ValueError(f"bad content type {content_type!r}")
        return cls(parse_sha256(plain.get("sha256")), size, content_type)


def blob_ref_set(refs: Iterable[object]) -> set[str]:
    """The hex digests of what a model's ``blob_refs()`` returned. Items that
    are not references are skipped: they protect nothing."""
    found: set[str] = set()
    for item in refs:
        try:
            found.add(parse_sha256(item))
        except ValueError:
            continue
    return found


@dataclass(frozen=True, slots=True)
class BlobEntry:
    """One blob in the catalog."""

    size: int
    content_type: str
    touched_ms: int
    """The catalog clock when the blob was last put or last found referenced
    by a collect entry: it is collected once unreferenced and untouched for
    longer than the grace period."""


class CatalogListener:
    """What the node's blob store hears of the catalog, while entries are
    applied (on the loop, inside a loop turn: do not block). ``index`` is the
    log index of the entry; ``restored`` is the snapshot's index."""

    def added(self, index: int, sha256: str, entry: BlobEntry) -> None:
        """A put recorded a blob that was not in the catalog."""

    def removed(self, index: int, digests: list[str], sweep: bool) -> None:
        """Blobs left the catalog (deleted or collected). With ``sweep`` (a
        collect entry) files that are in no catalog entry may go too."""

    def restored(self, index: int) -> None:
        """The catalog was replaced by a snapshot's."""


class BlobCatalog:
    """The replicated catalog (see the module docstring). ``refs`` returns
    the digests the application's state refers to, or None when the model
    does not say (no automatic collection). Deterministic, like a command."""

    def __init__(self) -> None:
        self.entries: dict[str, BlobEntry] = {}
        self.clock_ms = 0
        self.refs: Callable[[], set[str] | None] | None = None
        self.listeners: list[CatalogListener] = []

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, sha256: object) -> bool:
        return sha256 in self.entries

    def get(self, sha256: str) -> BlobEntry | None:
        return self.entries.get(sha256)

    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries.values())

    def declares_refs(self) -> bool:
        return self.refs is not None and self.refs() is not None

    # -- apply (called by ClusterMachine with the op's arguments) -------------------

    def _tick(self, time_ms: object) -> None:
        if type(time_ms) is int and time_ms > self.clock_ms:
            self.clock_ms = time_ms

    def put(self, index: int, args: list[Any]) -> object:
        if (
            len(args) != 4
            or type(args[0]) is not bytes
            or len(args[0]) != 32
            or type(args[1]) is not int
            or args[1] < 0
            or type(args[2]) is not str
            or not _CONTENT_TYPE.match(args[2])
            or type(args[3]) is not int
        ):
            return CommandError(
                ErrorCode.BAD_COMMAND,
                "blob put takes a 32-byte SHA-256, a size, a content type and a time",
            )
        sha256, size, content_type, time_ms = args[0].hex(), args[1], args[2], args[3]
        self._tick(time_ms)
        old = self.entries.get(sha256)
        if old is not None and old.size != size:
            return CommandError(
                ErrorCode.BAD_COMMAND,
                f"blob {sha256} is recorded with {old.size} bytes, not {size}",
            )
        # The first content type stays: a blob's bytes never change, and a
        # second upload of the same bytes must not turn an image into a page.
        kept = old.content_type if old is not None else content_type
        entry = BlobEntry(size, kept, self.clock_ms)
        self.entries[sha256] = entry
        if old is None:
            for listener in self.listeners:
                listener.added(index, sha256, entry)
        return (size, kept)

    def delete(self, index: int, args: list[Any]) -> object:
        if len(args) != 1 or type(args[0]) is not bytes or len(args[0]) != 32:
            return CommandError(ErrorCode.BAD_COMMAND, "blob delete takes a 32-byte SHA-256")
        sha256 = args[0].hex()
        if sha256 not in self.entries:
            return False
        referenced = self._referenced()
        if isinstance(referenced, CommandError):
            return referenced
        if referenced is not None and sha256 in referenced:
            return CommandError(
                ErrorCode.COMMAND_FAILED,
                f"blob {sha256} is still referenced by the application's state "
                "(blob_refs()); remove the reference first",
            )
        del self.entries[sha256]
        for listener in self.listeners:
            listener.removed(index, [sha256], False)
        return True

    def collect(self, index: int, args: list[Any]) -> object:
        if len(args) != 2 or not all(type(a) is int and a >= 0 for a in args):
            return CommandError(ErrorCode.BAD_COMMAND, "blob collect takes a time and a grace")
        self._tick(args[0])
        grace_ms = args[1]
        referenced = self._referenced()
        if isinstance(referenced, CommandError):
            return referenced
        collected: list[str] = []
        if referenced is not None:
            now = self.clock_ms
            for sha256, entry in self.entries.items():
                if sha256 in referenced:
                    if entry.touched_ms != now:
                        self.entries[sha256] = BlobEntry(entry.size, entry.content_type, now)
                elif entry.touched_ms + grace_ms <= now:
                    collected.append(sha256)
            for sha256 in collected:
                del self.entries[sha256]
        for listener in self.listeners:
            listener.removed(index, collected, True)
        if collected:
            log.info("blobs_collected", index=index, count=len(collected))
        return len(collected)

    def _referenced(self) -> set[str] | CommandError | None:
        if self.refs is None:
            return None
        try:
            return self.refs()
        except MemoryError:
            raise
        except Exception as exc:  # the app's code: the same failure on every node
            return CommandError(
                ErrorCode.COMMAND_FAILED,
                f"blob_refs() raised {type(exc).__name__}: {exc}; no blob was collected",
            )

    # -- snapshots ------------------------------------------------------------------

    def snapshot(self) -> CatalogSnapshotJob:
        """A view of the catalog now (entries are immutable: a shallow copy)."""
        return CatalogSnapshotJob(self.clock_ms, dict(self.entries))

    def restore(self, stream: ReadableStream, index: int) -> None:
        """Replace the catalog from what follows the machines' data in a
        snapshot (nothing: an empty catalog). The new state is built aside
        and swapped in at the end: readers on the loop see the old one until
        then."""
        clock_ms, entries = read_catalog_trailer(stream) or (0, {})
        self.entries = entries
        self.clock_ms = clock_ms
        for listener in self.listeners:
            listener.restored(index)


class CatalogSnapshotJob:
    """Writes the catalog trailer: ``RRBC`` v1 frames -- a header
    ``[count, clock_ms]``, chunks of ``[sha256 (32 bytes), size,
    content_type, touched_ms]`` sorted by digest (the same bytes on every
    node), and an end frame with the count."""

    def __init__(self, clock_ms: int, entries: dict[str, BlobEntry]) -> None:
        self._clock_ms = clock_ms
        self._entries: dict[str, BlobEntry] | None = entries

    def write_to(self, stream: WritableStream) -> int:
        entries = self._entries
        if entries is None:
            raise SnapshotAbortedError("catalog snapshot already written or closed")
        self._entries = None
        frames = FrameWriter(stream, CATALOG_MAGIC, _CATALOG_VERSION)
        frames.frame(_pack([len(entries), self._clock_ms]))
        for chunk in _chunks(sorted(entries.items())):
            rows = [[bytes.fromhex(d), e.size, e.content_type, e.touched_ms] for d, e in chunk]
            frames.frame(_pack(rows))
        frames.frame(_pack(len(entries)))
        return frames.bytes_written

    def close(self) -> None:
        self._entries = None


def _chunks(items: list[tuple[str, BlobEntry]]) -> Iterator[list[tuple[str, BlobEntry]]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _pack(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _unpack(data: bytes, what: str) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, use_list=True)
    except Exception as exc:  # msgpack raises several types for bad input
        raise SnapshotFormatError(f"undecodable blob catalog {what}: {exc}") from None


def read_catalog(stream: ReadableStream) -> tuple[int, dict[str, BlobEntry]]:
    """Decode a catalog trailer (after its magic was recognised by the
    caller, the stream is at the magic): ``(clock_ms, entries)``. Raises
    SnapshotFormatError naming what is wrong."""
    frames = FrameReader(stream, CATALOG_MAGIC, _CATALOG_VERSION)
    header = _unpack(frames.frame(), "header")
    if type(header) is not list or len(header) != 2 or not all(type(v) is int for v in header):
        raise SnapshotFormatError(f"bad blob catalog header {header!r}")
    count, clock_ms = header
    entries: dict[str, BlobEntry] = {}
    while len(entries) < count:
        rows = _unpack(frames.frame(), "chunk")
        if type(rows) is not list or not rows:
            raise SnapshotFormatError("a blob catalog chunk is not a list of rows")
        for row in rows:
            if (
                type(row) is not list
                or len(row) != 4
                or type(row[0]) is not bytes
                or len(row[0]) != 32
                or type(row[1]) is not int
                or type(row[2]) is not str
                or type(row[3]) is not int
            ):
                raise SnapshotFormatError(f"bad blob catalog row {row!r}")
            entries[row[0].hex()] = BlobEntry(row[1], row[2], row[3])
    end = _unpack(frames.frame(), "trailer")
    if end != count or len(entries) != count:
        raise SnapshotFormatError(
            f"blob catalog counts disagree: header {count}, trailer {end}, read {len(entries)}"
        )
    return clock_ms, entries


def read_catalog_trailer(stream: ReadableStream) -> tuple[int, dict[str, BlobEntry]] | None:
    """What follows the machines' data in a snapshot: the catalog trailer
    (``(clock_ms, entries)``), or None at the end of the stream. Anything
    else there is damage: SnapshotFormatError."""
    head = _read_upto(stream, len(CATALOG_MAGIC))
    if not head:
        return None
    if head != CATALOG_MAGIC:
        raise SnapshotFormatError(
            f"unexpected bytes {head!r} after the state machines' snapshot data"
        )
    trailer = read_catalog(_Prepended(head, stream))
    if stream.read(1):
        raise SnapshotFormatError("trailing bytes after the blob catalog")
    return trailer


class _Prepended:
    """``head`` (already read) followed by the rest of ``stream``."""

    def __init__(self, head: bytes, stream: ReadableStream) -> None:
        self._head = head
        self._stream = stream

    def read(self, n: int, /) -> bytes:
        if self._head:
            out, self._head = self._head[:n], self._head[n:]
            return out
        return self._stream.read(n)


def _read_upto(stream: ReadableStream, n: int) -> bytes:
    """Up to ``n`` bytes: fewer only at the end of the stream."""
    data = b""
    while len(data) < n:
        piece = stream.read(n - len(data))
        if not piece:
            break
        data += piece
    return data


def encode_put_args(sha256: str, size: int, content_type: str, time_ms: int) -> list[Any]:
    return [bytes.fromhex(sha256), size, content_type, time_ms]


def encode_delete_args(sha256: str) -> list[Any]:
    return [bytes.fromhex(sha256)]

"""What the two clients share for blobs (proto/blobs.proto): the reference
type, the upload's messages, and the rule for trying nodes in turn.

A blob call moves a lot of data, so it is not retried the way a key-value
call is: an upload is sent again (to the next node) only when it failed as
UNAVAILABLE and its bytes can be read again (bytes, a path, a seekable
file); an upload of the same bytes is the same blob, so sending it twice is
safe. A download that breaks goes on from where it stopped, on the next
node. Both default to a deadline of ``BLOB_TIMEOUT`` seconds rather than the
client's (short) default.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import mimetypes
import os
import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

import grpc

from ramraft.client._core import UINT64, check_timeout, to_int
from ramraft.client.errors import InvalidArgument
from ramraft.proto import blobs_pb2

# Bytes per upload message: well within a node's --max-request-bytes (by
# default twice the value limit, 2 MiB), and about as fast as larger ones.
PIECE = 256 << 10
BLOB_TIMEOUT = 600.0
DEFAULT_CONTENT_TYPE = "application/octet-stream"
# An offset past every blob's end: the answer carries what the blob is, no bytes.
INFO_ONLY_OFFSET = 1 << 62
_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})

BlobSource = bytes | bytearray | memoryview | str | os.PathLike[str] | BinaryIO | Iterable[bytes]


class Writable(Protocol):
    """Where a download may go: anything with ``write(bytes)`` (a binary
    file, a hash, a socket wrapper)."""

    def write(self, data: bytes, /) -> object: ...


@dataclass(frozen=True)
class BlobInfo:
    """A blob: its SHA-256 (64 lower-case hex digits; ``str(info)`` is it),
    size and content type. ``index``: the log index of the entry that
    recorded an upload (0 for what a download tells)."""

    sha256: str
    size: int
    content_type: str
    index: int = 0

    def __str__(self) -> str:
        return self.sha256


def blob_ref(ref: object) -> str:
    """A reference as given (``<hex>``, ``sha256:<hex>``, or anything with a
    ``sha256`` attribute: BlobInfo, the server's BlobRef) -> lower-case hex."""
    text = getattr(ref, "sha256", ref)
    if not isinstance(text, str):
        raise InvalidArgument(f"a blob reference is a SHA-256 in hex, not {type(text).__name__}")
    digest = text.strip()
    if digest[:7].lower() == "sha256:":
        digest = digest[7:]
    if not _HEX.match(digest):
        raise InvalidArgument(
            f"{text[:80]!r} is not a blob reference: expected 64 hex digits (a SHA-256), "
            "optionally after 'sha256:'"
        )
    return digest.lower()


def info_from(message: blobs_pb2.BlobInfo, index: int = 0) -> BlobInfo:
    return BlobInfo(message.sha256, message.size, message.content_type, index)


class Upload:
    """The messages of one PutBlob call, from bytes, a path, a binary file or
    an iterable of bytes. ``replayable``: the bytes can be sent again."""

    def __init__(self, data: BlobSource | AsyncIterable[bytes], content_type: str | None) -> None:
        if content_type is not None and not isinstance(content_type, str):
            raise TypeError(f"content_type must be str, not {type(content_type).__name__}")
        self._data = data
        self._path: str | None = None
        self._start = 0
        self.size: int | None = None
        # What made the upload's messages fail: gRPC sends them from its own
        # thread (or task) and reports only "Exception iterating requests!".
        self.failure: Exception | None = None
        if isinstance(data, str | os.PathLike):
            self._path = os.fspath(data)
            try:
                self.size = os.path.getsize(self._path)
            except OSError as e:
                raise InvalidArgument(f"cannot read {self._path}: {e.strerror}") from None
            if os.path.isdir(self._path):
                raise InvalidArgument(f"cannot read {self._path}: it is a directory")
            self.replayable = True
        elif isinstance(data, bytes | bytearray | memoryview):
            self.size = len(data)
            self.replayable = True
        elif hasattr(data, "read"):
            file: Any = data
            if isinstance(file, io.TextIOBase):
                raise TypeError("a blob is read from a file opened in binary mode ('rb'), not text")
            seekable = getattr(file, "seekable", lambda: False)()
            self.replayable = bool(seekable)
            if seekable:
                self._start = file.tell()
        elif isinstance(data, Iterable | AsyncIterable):
            self.replayable = False
        else:
            raise TypeError(
                "a blob is bytes, a path, a binary file or an iterable of bytes, "
                f"not {type(data).__name__}"
            )
        guessed = mimetypes.guess_type(self._path)[0] if self._path else None
        self.content_type = content_type or guessed or DEFAULT_CONTENT_TYPE

    def _first(self) -> blobs_pb2.PutBlobRequest:
        first = blobs_pb2.PutBlobRequest(content_type=self.content_type)
        if self.size is not None:
            first.size = self.size
        return first

    def _pieces(self) -> Iterator[bytes]:
        data: Any = self._data
        if self._path is not None:
            with open(self._path, "rb") as file:
                while piece := file.read(PIECE):
                    yield piece
        elif isinstance(data, bytes | bytearray | memoryview):
            view = memoryview(data)
            for start in range(0, len(view), PIECE):
                yield bytes(view[start : start + PIECE])
        elif hasattr(data, "read"):
            if self.replayable:
                data.seek(self._start)
            while chunk := data.read(PIECE):
                yield _piece(chunk)
        else:
            for chunk in data:
                yield _piece(chunk)

    def requests(self) -> Iterator[blobs_pb2.PutBlobRequest]:
        try:
            yield self._first()
            for piece in self._pieces():
                yield blobs_pb2.PutBlobRequest(data=piece)
        except Exception as e:
            self.failure = e
            raise

    async def requests_async(self) -> AsyncIterator[blobs_pb2.PutBlobRequest]:
        """The same messages, reading files in a worker thread."""
        try:
            yield self._first()
            data = self._data
            if isinstance(data, AsyncIterable):
                async for piece in data:
                    yield blobs_pb2.PutBlobRequest(data=_piece(piece))
                return
            pieces = self._pieces()

            def next_piece() -> bytes | None:
                return next(pieces, None)

            while (chunk := await asyncio.to_thread(next_piece)) is not None:
                yield blobs_pb2.PutBlobRequest(data=chunk)
        except Exception as e:
            self.failure = e
            raise


def _piece(chunk: object) -> bytes:
    """One piece of an upload's data, which must be bytes (``bytes(5)``
    would be five zero bytes, ``bytes("text")`` an error far from here)."""
    if isinstance(chunk, bytes | bytearray | memoryview):
        return bytes(chunk)
    raise TypeError(f"a blob's data must be bytes, not {type(chunk).__name__}")


class Attempts:
    """Nodes to try for one blob call, in turn, until the deadline."""

    def __init__(self, endpoints: list[str], timeout: float | None) -> None:
        self.endpoints = endpoints
        total = BLOB_TIMEOUT if timeout is None else check_timeout(timeout)
        self.deadline = time.monotonic() + total
        self.count = 0

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def next(self) -> str:
        endpoint = self.endpoints[self.count % len(self.endpoints)]
        self.count += 1
        return endpoint

    def pause(self) -> float:
        """Seconds to wait before the next attempt: none while untried nodes
        remain, then a growing pause (at most a second)."""
        if self.count < len(self.endpoints):
            return 0.0
        rounds = self.count // len(self.endpoints)
        return min(1.0, 0.1 * 2.0 ** (rounds - 1))

    def retry(self, error: grpc.RpcError, can_resend: bool = True) -> bool:
        code: object = getattr(error, "code", lambda: None)()
        return (
            can_resend
            and code in RETRY_CODES
            and self.remaining() > self.pause()
            and self.count < 100 * len(self.endpoints)
        )


def get_request(sha256: str, offset: int, length: int | None) -> blobs_pb2.GetBlobRequest:
    return blobs_pb2.GetBlobRequest(
        sha256=sha256,
        offset=to_int(offset, "offset", UINT64),
        length=to_int(length or 0, "length", UINT64),
    )


class Output:
    """Where a download goes: a binary file given by the caller (left open),
    or a path, written to a temporary file beside it, fsynced and renamed
    into place only once the whole blob arrived."""

    def __init__(self, out: Writable | str | os.PathLike[str]) -> None:
        self._path: str | None = None
        self._temporary: str | None = None
        if isinstance(out, str | os.PathLike):
            self._path = os.fspath(out)
            directory = os.path.dirname(os.path.abspath(self._path))
            self._temporary = os.path.join(
                directory, f".{os.path.basename(self._path)}.{os.getpid()}.part"
            )
            self.file: Any = open(self._temporary, "wb")  # noqa: SIM115 (closed below)
        elif callable(getattr(out, "write", None)):
            self.file = out
        else:  # before the download starts, not at its first piece
            raise TypeError(
                f"out must be a binary file (with write) or a path, not {type(out).__name__}"
            )

    def write(self, data: bytes) -> None:
        self.file.write(data)

    def done(self) -> None:
        if self._path is None or self._temporary is None:
            return
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self._temporary, self._path)
        self._temporary = None

    def abandon(self) -> None:
        if self._temporary is not None:
            self.file.close()
            with contextlib.suppress(OSError):
                os.unlink(self._temporary)
            self._temporary = None

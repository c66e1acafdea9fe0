"""A raw HTTP/2 gRPC caller for attack tests: it does what no well-behaved
client library does -- open calls and never send their message, send bytes
that are no protobuf, never read (and never grant flow-control window for)
the answers -- so the tests can check that a node stays within its bounds.

Only what the tests need: HPACK literals without indexing or Huffman coding,
one SETTINGS frame, HEADERS and DATA frames; frames from the server are
read only when asked (``read_frames``)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
from dataclasses import dataclass

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
SETTINGS_INITIAL_WINDOW_SIZE = 4


def _int(value: int, prefix_bits: int) -> bytes:
    """An HPACK integer (RFC 7541 5.1) with a zero first-byte pattern."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([value])
    out = bytearray([limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_literals(headers: list[tuple[str, str]]) -> bytes:
    """Literal header fields without indexing, new names, no Huffman."""
    out = bytearray()
    for name, value in headers:
        n, v = name.encode(), value.encode()
        out += b"\x00" + _int(len(n), 7) + n + _int(len(v), 7) + v
    return bytes(out)


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream)


def grpc_message(payload: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(payload)) + payload


@dataclass
class Frame:
    kind: int
    flags: int
    stream: int
    payload: bytes
    headers: list[tuple[bytes, bytes]] | None = None  # HEADERS: decoded


class RawCaller:
    """One HTTP/2 connection. ``window`` is the flow-control window this
    side announces (SETTINGS_INITIAL_WINDOW_SIZE); it never sends a
    WINDOW_UPDATE, so the server can send it at most that much per call."""

    def __init__(
        self,
        address: str,
        *,
        tls: ssl.SSLContext | None = None,
        source: str = "",
        window: int = 65_535,
        timeout: float = 10.0,
    ) -> None:
        host, port = address.rsplit(":", 1)
        sock = socket.create_connection(
            (host, int(port)), timeout=timeout, source_address=(source, 0) if source else None
        )
        if tls is not None:
            tls.set_alpn_protocols(["h2"])
            sock = tls.wrap_socket(sock, server_hostname=host)
        self.sock = sock
        self.authority = address
        self.next_stream = 1
        from hpack import Decoder

        # One decoder for the connection: a header block refers to table
        # entries that earlier blocks added.
        self.decoder = Decoder()
        settings = struct.pack(">HI", SETTINGS_INITIAL_WINDOW_SIZE, window)
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0, settings) + settings)
        # The server's SETTINGS come first; acknowledge them (read_frames
        # acknowledges any later ones).
        self.read_frames(limit=1)

    def open(self, method: str, token: str | None = None, *, timeout_s: int | None = None) -> int:
        """HEADERS of a call to ``method``; returns its stream id."""
        headers = [
            (":method", "POST"),
            (":scheme", "https" if isinstance(self.sock, ssl.SSLSocket) else "http"),
            (":path", method),
            (":authority", self.authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        if token is not None:
            headers.append(("authorization", f"Bearer {token}"))
        if timeout_s is not None:
            headers.append(("grpc-timeout", f"{timeout_s}S"))
        stream = self.next_stream
        self.next_stream += 2
        block = hpack_literals(headers)
        self.sock.sendall(frame(HEADERS, END_HEADERS, stream, block) + block)
        return stream

    def send(self, stream: int, data: bytes, *, end: bool = True) -> None:
        """``data`` on ``stream`` in frames of at most 16 KiB (the default
        maximum frame size)."""
        for start in range(0, max(len(data), 1), 16_384):
            piece = data[start : start + 16_384]
            last = start + 16_384 >= len(data)
            flags = END_STREAM if end and last else 0
            self.sock.sendall(frame(DATA, flags, stream, piece) + piece)

    def call(self, method: str, message: bytes, token: str | None = None) -> int:
        stream = self.open(method, token)
        self.send(stream, grpc_message(message))
        return stream

    def read_frames(self, until_stream_closed: int | None = None, limit: int = 1000) -> list[Frame]:
        """Frames from the server, answering its SETTINGS and PINGs; stops
        when ``until_stream_closed`` has ended (END_STREAM or RST_STREAM),
        when the connection closes, or after ``limit`` frames."""
        frames: list[Frame] = []
        while len(frames) < limit:
            header = self._exactly(9)
            if header is None:
                break
            length = int.from_bytes(header[:3], "big")
            kind, flags = header[3], header[4]
            stream = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
            payload = self._exactly(length) if length else b""
            if payload is None:
                break
            decoded = None
            if kind == HEADERS:
                block = payload
                if flags & 0x8:  # PADDED
                    block = block[1 : len(block) - block[0]]
                if flags & 0x20:  # PRIORITY
                    block = block[5:]
                decoded = [(bytes(n), bytes(v)) for n, v in self.decoder.decode(block, raw=True)]
            frames.append(Frame(kind, flags, stream, payload, decoded))
            if kind == SETTINGS and not flags & ACK:
                self.sock.sendall(settings_ack())
            if kind == PING and not flags & ACK:
                self.sock.sendall(frame(PING, ACK, 0, payload) + payload)
            closed = kind == RST_STREAM or flags & END_STREAM
            if until_stream_closed is not None and stream == until_stream_closed and closed:
                break
            if kind == GOAWAY:
                break
        return frames

    def _exactly(self, n: int) -> bytes | None:
        data = bytearray()
        while len(data) < n:
            try:
                chunk = self.sock.recv(n - len(data))
            except (TimeoutError, OSError):
                return None
            if not chunk:
                return None
            data += chunk
        return bytes(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def settings_ack() -> bytes:
    return frame(SETTINGS, ACK, 0)


def grpc_status(frames: list[Frame], stream: int) -> tuple[int | None, str]:
    """The grpc-status and grpc-message of ``stream`` (from its trailers, or
    a trailers-only answer), or (None, "") if the stream did not end so."""
    from urllib.parse import unquote

    status: int | None = None
    message = ""
    for f in frames:
        if f.stream != stream or f.headers is None:
            continue
        for name, value in f.headers:
            if name == b"grpc-status":
                status = int(value)
            elif name == b"grpc-message":
                message = unquote(value.decode())
    return status, message

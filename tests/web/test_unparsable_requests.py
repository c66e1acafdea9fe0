"""Requests aiohttp's parser refuses before any route runs (an unknown
method, a line over its limit, a bad Content-Length, TLS on the plain port)
are answered as every /v1/ error: a 400 with a JSON body naming the problem,
and a rate-limited http_bad_request in the node's log, not aiohttp's
text/plain answer and error-level traceback."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
import structlog

from tests.web.solo import InProcessNode


@pytest.fixture(scope="module")
def solo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessNode]:
    with InProcessNode(tmp_path_factory.mktemp("unparsable")) as node:
        yield node


def send(address: str, data: bytes) -> tuple[bytes, dict[str, str], bytes]:
    """The status line, headers and body of the answer to raw bytes."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(data)
        reply = b""
        while chunk := s.recv(65536):  # the node closes the connection after a 400
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status.encode(), headers, body


@pytest.mark.parametrize(
    ("data", "names"),
    [
        (b"BREW /v1/kv/a HTTP/1.1\r\nHost: x\r\n\r\n", "method"),
        (b"GET /v1/kv/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", "8190 bytes"),
        (b"PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", "Content-Length"),
        (b"GET /v1/kv/a HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 9000 + b"\r\n\r\n", "8190"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "HTTPS"),
    ],
    ids=["unknown-method", "long-path", "bad-content-length", "long-header", "tls-hello"],
)
def test_a_request_the_parser_refuses_is_a_json_400(
    solo: InProcessNode, data: bytes, names: str
) -> None:
    with structlog.testing.capture_logs() as logs:
        status, headers, body = send(solo.http, data)
    assert status.startswith(b"HTTP/1.") and status[9:12] == b"400", (status, body)
    assert headers["content-type"].startswith("application/json"), headers
    document = json.loads(body)
    assert document["error"] == "invalid_argument"
    assert document["detail"].startswith("the request is not valid HTTP: ")
    assert names in document["detail"]
    assert len(document["detail"]) < 300  # the parser's sentence, cut short
    refused = [e for e in logs if e["event"] == "http_bad_request"]
    assert len(refused) == 1 and refused[0]["log_level"] == "warning"
    assert refused[0]["source"] == "127.0.0.1" and refused[0]["status"] == 400
    assert "y" * 50 not in repr(refused[0])  # the request's bytes stay out of the log


def test_the_node_serves_the_next_connection(solo: InProcessNode) -> None:
    send(solo.http, b"BREW / HTTP/1.1\r\n\r\n")
    status, _, body = send(
        solo.http, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert status[9:12] == b"200", body

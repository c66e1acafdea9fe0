"""Fuzz the HTTP API of a real node (in this process, one-node cluster):
whatever the method, path, query, headers and body, the answer is never a
server error, a /v1/ error is JSON naming the problem, and the node keeps
serving."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from hypothesis import assume, event, given
from hypothesis import strategies as st

from tests.fuzz.budget import fuzz_settings
from tests.web.solo import InProcessNode


@pytest.fixture(scope="module")
def solo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessNode]:
    with InProcessNode(tmp_path_factory.mktemp("http-fuzz")) as node:
        yield node


def request(
    address: str, method: str, path: str, headers: dict[str, str], body: bytes | None
) -> tuple[int, dict[str, str], bytes]:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=15)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


KEYS = st.one_of(
    st.text(max_size=20).map(lambda k: quote(k, safe="")),
    st.text(alphabet="abc/%.-_~+", max_size=20),
    st.binary(max_size=12).map(lambda b: "".join(f"%{x:02X}" for x in b)),
    st.just("k" * 1100),
)
PATHS = st.one_of(
    KEYS.map(lambda k: "/v1/kv/" + k),
    KEYS.map(lambda k: "/v1/kv/" + k),
    KEYS.map(lambda k: "/v1/cas/" + k),
    st.sampled_from(["/v1/kv", "/v1/status", "/", "/metrics", "/healthz", "/readyz", "/v1/"]),
    st.text(alphabet="/abcv1kx%.?&=", max_size=30).map(lambda p: "/" + p),
)
QUERY_KEYS = st.sampled_from(
    ["consistency", "timeout", "limit", "prefix", "start_after", "format", "x"]
)
QUERY_VALUES = st.one_of(
    st.sampled_from(
        ["linearizable", "serializable", "raw", "json", "0", "-1", "nan", "1e9", "0.5"]
    ),
    st.text(max_size=10).map(lambda v: quote(v, safe="")),
)
QUERIES = st.dictionaries(QUERY_KEYS, QUERY_VALUES, max_size=3).map(
    lambda q: ("?" + "&".join(f"{k}={v}" for k, v in q.items())) if q else ""
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
JSON_BODIES = st.fixed_dictionaries(
    {},
    optional={
        "value": JSON_VALUES | st.text(max_size=12),
        "expected": JSON_VALUES,
        "encoding": st.sampled_from(["utf-8", "base64", "hex"]) | JSON_VALUES,
    },
).map(lambda d: json.dumps(d).encode())
BODIES = st.one_of(st.none(), st.binary(max_size=200), JSON_BODIES)
HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "Content-Type": st.sampled_from(
            ["application/json", "application/octet-stream", "text/plain", "x/\u00e9", ""]
        ),
        "Accept": st.sampled_from(["application/octet-stream", "*/*", "text/html"]),
        "Ramraft-Client-Id": st.sampled_from(
            ["1", "0", "-5", "x", str(2**64), "18446744073709551615"]
        ),
        "Ramraft-Sequence": st.sampled_from(["1", "2", "0", "y", str(2**70)]),
        "Authorization": st.sampled_from(["Bearer abc", "Basic !!", "x"]),
    },
)
METHODS = st.sampled_from(["GET", "PUT", "POST", "DELETE", "HEAD", "OPTIONS", "PATCH", "BREW"])
# Half the time a method the route serves, so that requests get past routing.
ROUTES = st.one_of(
    st.tuples(st.sampled_from(["GET", "PUT", "DELETE"]), KEYS.map(lambda k: "/v1/kv/" + k)),
    st.tuples(st.just("POST"), KEYS.map(lambda k: "/v1/cas/" + k)),
    st.tuples(METHODS, PATHS),
)


@fuzz_settings(share=0.7)
@given(ROUTES, QUERIES, HEADERS, BODIES)
def test_http_api_never_fails_on_input(
    solo: InProcessNode,
    route: tuple[str, str],
    query: str,
    headers: dict[str, str],
    body: bytes | None,
) -> None:
    method, path = route
    try:
        status, _, payload = request(solo.http, method, path + query, headers, body)
    except http.client.InvalidURL:
        assume(False)
        return
    event(f"status {status}")
    assert status < 500 or status in (503, 504), (status, payload[:300])
    if path.startswith("/v1/") and status >= 400 and method != "HEAD":
        document = json.loads(payload)
        assert isinstance(document, dict) and isinstance(document.get("error"), str), payload


@fuzz_settings(share=0.3)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=200).map(lambda b: b"GET /v1/kv/a HTTP/1.1\r\n" + b),
        st.binary(max_size=200).map(
            lambda b: b"PUT /v1/kv/a HTTP/1.1\r\nContent-Length: 5\r\n" + b
        ),
    )
)
def test_garbage_on_the_http_port(solo: InProcessNode, data: bytes) -> None:
    host, port = solo.http.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(5)
        reply = b""
        try:
            while chunk := s.recv(65536):
                reply += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    status_line = reply.split(b"\r\n", 1)[0]
    assert not status_line.startswith(b"HTTP/1.1 5") or status_line[9:12] in (b"503", b"504"), (
        reply[:300]
    )
    if status_line.startswith(b"HTTP/1.") and status_line[9:10] == b"4":
        # refused by aiohttp's parser, or by a route: JSON either way
        body = reply.split(b"\r\n\r\n", 1)[1]
        assert isinstance(json.loads(body).get("error"), str), reply[:300]
    assert request(solo.http, "GET", "/healthz", {}, None)[0] == 200

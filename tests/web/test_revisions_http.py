"""``POST /v1/txn`` and ``GET /v1/watch`` (Server-Sent Events) on three real
node processes (web/revisions.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from http.client import HTTPConnection

import pytest

from ramraft.client import TxnOp
from tests.server.procs import ProcessCluster
from tests.server.test_kv_api import wait_kv2
from tests.web.conftest import http, wait_http_ready


class HistoryCluster(ProcessCluster):
    def argv(self, node_id: str) -> list[str]:
        return [*super().argv(node_id), "--watch-history-revisions", "50"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    with HistoryCluster(tmp_path_factory.mktemp("rev-http"), http=True) as c:
        wait_kv2(c)
        wait_http_ready(c)
        yield c


def post_json(address: str, path: str, doc: object) -> tuple[int, dict]:
    reply = http(
        address, "POST", path, json.dumps(doc).encode(), {"Content-Type": "application/json"}
    )
    return reply.status, reply.json()


def test_txn_over_http(cluster: ProcessCluster) -> None:
    address = cluster.http[cluster.ids[1]]
    status, doc = post_json(
        address,
        "/v1/txn",
        {
            "compare": [{"key": "h/lock", "target": "version", "value": 0}],
            "success": [
                {"put": {"key": "h/lock", "value": "me"}},
                {"put": {"key": "h/bin", "value": "/w==", "encoding": "base64"}},
                {"get": {"key": "h/lock"}},
            ],
            "failure": [{"get": {"key": "h/lock"}}],
        },
    )
    assert status == 200 and doc["succeeded"] is True, doc
    got = doc["responses"][2]["get"]
    assert got["value"] == "me" and got["version"] == 1 and got["mod_revision"] == doc["revision"]
    status, doc = post_json(
        address,
        "/v1/txn",
        {
            "compare": [{"key": "h/lock", "target": "version", "value": 0}],
            "success": [{"put": {"key": "h/lock", "value": "you"}}],
            "failure": [{"get": {"key": "h/bin"}}, {"range": {"prefix": "h/"}}],
        },
    )
    assert status == 200 and doc["succeeded"] is False
    assert doc["responses"][0]["get"] | {"mod_revision": 0, "create_revision": 0} == {
        "key": "h/bin",
        "found": True,
        "value": "/w==",
        "encoding": "base64",
        "create_revision": 0,
        "mod_revision": 0,
        "version": 1,
        "lease": 0,
    }
    assert [i["key"] for i in doc["responses"][1]["range"]["items"]] == ["h/bin", "h/lock"]
    status, doc = post_json(address, "/v1/txn", {"success": [{"delete_range": {"prefix": "h/"}}]})
    assert (status, doc["responses"]) == (200, [{"delete_range": {"deleted": 2}}])


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"success": [{"put": {"key": "k", "value": 1}}]}, 400, "invalid_argument"),
        ({"success": [{"frob": {}}]}, 400, "invalid_argument"),
        ({"compare": [{"key": "k", "result": "~"}]}, 400, "invalid_argument"),
        ({"success": [{"put": {"key": "k"}}, {"put": {"key": "k"}}]}, 400, "invalid_argument"),
        ({"success": [{"put": {"key": "k", "lease": 999}}]}, 404, "not_found"),
        ({"success": "put"}, 400, "invalid_argument"),
        # Lone surrogates: no text, so no key and no UTF-8 value (not a 500).
        ({"compare": [{"key": "\ud800"}]}, 400, "invalid_argument"),
        ({"success": [{"range": {"prefix": "\udfff"}}]}, 400, "invalid_argument"),
        ({"success": [{"put": {"key": "k", "value": "\ud800"}}]}, 400, "invalid_argument"),
        # JSON that is no value of the field: a list for a string, a number
        # past int64 (not a 500).
        ({"compare": [{"key": "k", "result": []}]}, 400, "invalid_argument"),
        ({"compare": [{"key": "k", "target": "version", "value": 2**63}]}, 400, "invalid_argument"),
        ({"success": [{"put": {"key": "k", "lease": -(2**64)}}]}, 400, "invalid_argument"),
        ({"success": [{"range": {"prefix": "", "limit": 10**30}}]}, 400, "invalid_argument"),
        ({"success": [{"range": {"prefix": "", "limit": 2**40}}]}, 200, ""),  # the maximum
    ],
)
def test_bad_txn_over_http(cluster: ProcessCluster, body: object, status: int, error: str) -> None:
    got, doc = post_json(cluster.http[cluster.ids[0]], "/v1/txn", body)
    assert (got, doc.get("error", "")) == (status, error), doc


class Events:
    """A Server-Sent Events stream read message by message."""

    def __init__(self, address: str, path: str, headers: dict[str, str] | None = None) -> None:
        host, port = address.rsplit(":", 1)
        self.connection = HTTPConnection(host, int(port), timeout=30)
        self.connection.request("GET", path, headers=headers or {})
        self.response = self.connection.getresponse()

    def next(self) -> tuple[str, str, dict]:
        fields: dict[str, str] = {}
        while True:
            line = self.response.readline().decode()
            if not line:
                raise EOFError("the stream ended")
            line = line.rstrip("\n")
            if not line:
                if fields:
                    return fields.get("id", ""), fields["event"], json.loads(fields["data"])
                continue
            name, _, value = line.partition(": ")
            fields[name] = value

    def close(self) -> None:
        self.connection.close()


def test_watch_as_server_sent_events_resumes_with_last_event_id(cluster: ProcessCluster) -> None:
    leader = cluster.wait_for_leader()
    follower = next(i for i in cluster.ids if i != leader)
    address = cluster.http[follower]
    events = Events(address, "/v1/watch?prefix=sse/")
    assert events.response.status == 200
    assert events.response.headers["Content-Type"] == "text/event-stream"
    created_id, kind, doc = events.next()
    assert kind == "created" and created_id == str(doc["revision"])
    with cluster.client() as c:
        c.put("sse/a", b"1")
        c.txn(
            success=[
                TxnOp.put("sse/b", b"2"),
                TxnOp.delete("sse/a"),
            ]
        )
        c.put("other", b"x")
        c.put("sse/c", b"\xff")
    first_id, kind, first = events.next()
    assert kind == "change" and first_id == str(first["revision"])
    assert first["events"] == [
        {
            "type": "PUT",
            "key": "sse/a",
            "value": "1",
            "encoding": "utf-8",
            "create_revision": first["revision"],
            "version": 1,
            "lease": 0,
        }
    ]
    second_id, _, second = events.next()
    assert [(e["type"], e["key"]) for e in second["events"]] == [
        ("PUT", "sse/b"),
        ("DELETE", "sse/a"),
    ], "one revision, one event"
    events.close()
    # A client that saw the second event reconnects with its id: the next
    # change comes, and nothing before it again.
    resumed = Events(address, "/v1/watch?prefix=sse/", {"Last-Event-ID": second_id})
    _, kind, _ = resumed.next()
    assert kind == "created"
    _, kind, third = resumed.next()
    assert kind == "change" and third["events"][0]["key"] == "sse/c"
    assert third["events"][0]["encoding"] == "base64"
    assert third["revision"] == int(second_id) + 2  # the "other" change is not watched
    resumed.close()


def test_a_watcher_that_hangs_up_is_let_go_without_an_error(cluster: ProcessCluster) -> None:
    """A client that closes its watch: the node's next write to it fails,
    and ends the stream quietly (no error log with a traceback)."""
    node = cluster.ids[0]
    events = Events(cluster.http[node], "/v1/watch?prefix=gone/")
    assert events.next()[1] == "created"
    events.close()
    log_before = len(cluster.node_log(node))
    with cluster.client() as c:
        for n in range(3):  # the first write may still reach the kernel's buffer
            c.put(f"gone/{n}", b"x")
            time.sleep(0.2)
    # The node's next watch still works (the hub let the stream go).
    again = Events(cluster.http[node], "/v1/watch?prefix=gone/")
    assert again.next()[1] == "created"
    again.close()
    new_lines = cluster.node_log(node)[log_before:]
    assert "Error handling request" not in new_lines, new_lines[-2000:]
    assert "Cannot write to closing transport" not in new_lines


def test_watch_errors_over_http(cluster: ProcessCluster) -> None:
    address = cluster.http[cluster.ids[0]]
    assert http(address, "GET", "/v1/watch").status == 400
    assert http(address, "GET", "/v1/watch?prefix=a&key=b").status == 400
    assert http(address, "GET", "/v1/watch?key=a&start_revision=soon").status == 400
    with cluster.client() as c:
        for n in range(60):  # past --watch-history-revisions 50
            c.put("sse-compact/k", str(n))
    stream = Events(address, "/v1/watch?prefix=sse-compact/&start_revision=2")
    _, kind, doc = stream.next()
    assert kind == "compacted" and doc["compact_revision"] > 2
    with pytest.raises(EOFError):
        stream.next()
    stream.close()


def test_a_quiet_watch_gets_progress_events_with_ids(cluster: ProcessCluster) -> None:
    """Progress events (every --watch-progress-ms, 10 s by default) keep the
    connection alive and carry ids a reconnection resumes from."""
    address = cluster.http[cluster.ids[2]]
    stream = Events(address, "/v1/watch?key=quiet-key")
    stream.next()
    started = time.monotonic()
    event_id, kind, doc = stream.next()
    assert kind == "progress" and event_id == str(doc["revision"])
    assert time.monotonic() - started < 60, "a hang guard, not a speed claim"
    stream.close()


def test_writes_answer_their_revision(cluster: ProcessCluster) -> None:
    """PUT, DELETE and CAS answer the revision of their change, as the gRPC
    answers' header does (ramraft chaos checks its web clients' writes
    against the watchers' events by it); one that changed nothing, the
    current revision."""
    address = cluster.http[cluster.ids[0]]
    first = http(address, "PUT", "/v1/kv/r/a", b"1").json()
    second = http(address, "PUT", "/v1/kv/r/a", b"2").json()
    assert second["revision"] > first["revision"] > 0, (first, second)
    status, swapped = post_json(address, "/v1/cas/r/a", {"value": "3", "expected": "2"})
    assert status == 200 and swapped["swapped"] and swapped["revision"] > second["revision"]
    deleted = http(address, "DELETE", "/v1/kv/r/a").json()
    assert deleted["deleted"] and deleted["revision"] > swapped["revision"]
    # Nothing to delete: no change, and the revision it saw.
    again = http(address, "DELETE", "/v1/kv/r/a").json()
    assert not again["deleted"] and again["revision"] >= deleted["revision"]
    # The change's revision is the one a read of the key's metadata names.
    put = http(address, "PUT", "/v1/kv/r/b", b"x").json()
    with cluster.client() as c:
        assert c.get_result("r/b").mod_revision == put["revision"]

"""The JSON API end to end on three real node processes, over HTTP."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

import ramraft
from tests.server.procs import ProcessCluster
from tests.web.conftest import http, roles, wait_http_ready, wait_until


def put(address: str, key: str, value: bytes, headers: dict[str, str] | None = None):
    return http(address, "PUT", f"/v1/kv/{key}", value, headers)


def test_write_on_a_follower_read_linearizable_on_another_node(kv_cluster: ProcessCluster) -> None:
    leader, followers = roles(kv_cluster)
    writer, reader = kv_cluster.http[followers[0]], kv_cluster.http[followers[1]]
    reply = put(writer, "greeting", b"hello from a follower")
    assert reply.status == 200, reply.body
    index = reply.json()["index"]
    assert index > 0
    # Straight after the write, on another follower: LINEARIZABLE sees it.
    got = http(reader, "GET", "/v1/kv/greeting?consistency=linearizable")
    assert got.status == 200, got.body
    assert got.json() == {
        "key": "greeting",
        "value": "hello from a follower",
        "encoding": "utf-8",
        "index": got.json()["index"],
    }
    assert got.json()["index"] >= index
    # The writer reads its own write from memory (SERIALIZABLE) at once.
    mine = http(writer, "GET", "/v1/kv/greeting?consistency=serializable")
    assert mine.status == 200 and mine.json()["value"] == "hello from a follower"
    # and the leader, by default (linearizable).
    assert http(kv_cluster.http[leader], "GET", "/v1/kv/greeting").json()["index"] >= index


def test_values_are_bytes_json_base64_and_raw(kv_cluster: ProcessCluster) -> None:
    node = kv_cluster.http[kv_cluster.ids[0]]
    binary = bytes(range(256))
    assert put(node, "bin", binary).status == 200
    got = http(node, "GET", "/v1/kv/bin").json()
    assert got["encoding"] == "base64" and base64.b64decode(got["value"]) == binary
    raw = http(node, "GET", "/v1/kv/bin?format=raw")
    assert raw.body == binary and int(raw.headers["Ramraft-Index"]) > 0
    head = http(node, "HEAD", "/v1/kv/bin?format=raw")  # GET's answer without the body
    assert head.status == 200 and head.body == b"", head.status
    assert head.headers["Content-Length"] == str(len(binary))
    assert http(node, "HEAD", "/v1/kv/no-such-key").status == 404
    # A JSON body: {"value", "encoding"}.
    body = json.dumps({"value": base64.b64encode(b"\x00\xff").decode(), "encoding": "base64"})
    reply = http(
        node, "PUT", "/v1/kv/json-b64", body.encode(), {"Content-Type": "application/json"}
    )
    assert reply.status == 200, reply.body
    assert http(node, "GET", "/v1/kv/json-b64?format=raw").body == b"\x00\xff"
    body = json.dumps({"value": "caf\u00e9"})
    assert (
        http(
            node, "PUT", "/v1/kv/json-text", body.encode(), {"Content-Type": "application/json"}
        ).status
        == 200
    )
    assert http(node, "GET", "/v1/kv/json-text").json()["value"] == "caf\u00e9"
    # Keys are percent-decoded UTF-8; %2F and / are both a slash.
    assert put(node, "dir%2Fsub/caf%C3%A9%20x", b"v").json()["key"] == "dir/sub/caf\u00e9 x"
    assert http(node, "GET", "/v1/kv/dir/sub/caf%C3%A9%20x").json()["value"] == "v"


def test_delete_range_and_cas(kv_cluster: ProcessCluster) -> None:
    node = kv_cluster.http[kv_cluster.ids[2]]
    for i in range(5):
        assert put(node, f"list/{i}", str(i).encode()).status == 200
    page = http(node, "GET", "/v1/kv?prefix=list/&limit=2").json()
    assert [item["key"] for item in page["items"]] == ["list/0", "list/1"] and page["more"]
    page = http(
        node, "GET", "/v1/kv?prefix=list/&start_after=list/1&consistency=serializable"
    ).json()
    assert [item["key"] for item in page["items"]] == ["list/2", "list/3", "list/4"]
    assert not page["more"]
    deleted = http(node, "DELETE", "/v1/kv/list/0")
    assert deleted.status == 200 and deleted.json()["deleted"] is True
    assert http(node, "DELETE", "/v1/kv/list/0").json()["deleted"] is False
    missing = http(node, "GET", "/v1/kv/list/0")
    assert missing.status == 404 and missing.json()["error"] == "not_found"

    def cas(body: dict[str, object]):
        return http(
            node,
            "POST",
            "/v1/cas/lock",
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )

    # "current" is the value before the request, as in the gRPC API.
    first = cas({"value": "a", "expected": None}).json()
    assert first["swapped"] and not first["found"] and first["current"] == ""
    again = cas({"value": "b", "expected": None}).json()
    assert not again["swapped"] and again["found"] and again["current"] == "a"
    swapped = cas({"value": "b", "expected": "a"}).json()
    assert swapped["swapped"] and swapped["current"] == "a"


def test_client_sessions_make_a_retried_write_apply_once(kv_cluster: ProcessCluster) -> None:
    node = kv_cluster.http[kv_cluster.ids[1]]
    session = {"Ramraft-Client-Id": "987654321", "Ramraft-Sequence": "1"}
    first = put(node, "once", b"first", session)
    assert first.status == 200
    # The same session and sequence again, as a client's retry: not applied
    # again (the value stays), and answered with the first write's index.
    retry = put(node, "once", b"second", session)
    assert retry.status == 200 and retry.json()["index"] == first.json()["index"]
    assert http(node, "GET", "/v1/kv/once").json()["value"] == "first"
    assert put(node, "once", b"third", {**session, "Ramraft-Sequence": "2"}).status == 200
    stale = put(node, "once", b"old", {**session, "Ramraft-Sequence": "1"})
    assert stale.status == 409 and stale.json()["error"] == "failed_precondition"
    assert http(node, "GET", "/v1/kv/once").json()["value"] == "third"
    expired = put(node, "once", b"x", {"Ramraft-Client-Id": "55", "Ramraft-Sequence": "7"})
    assert expired.status == 409 and "SESSION_EXPIRED" in expired.json()["detail"]


def test_bad_requests_get_4xx_with_a_json_reason(kv_cluster: ProcessCluster) -> None:
    node = kv_cluster.http[kv_cluster.ids[0]]
    json_type = {"Content-Type": "application/json"}
    cases = [
        # (method, path, body, headers, status, error, words in detail)
        ("PUT", "/v1/kv/", b"v", {}, 400, "invalid_argument", "missing key"),
        ("GET", "/v1/kv/", None, {}, 400, "invalid_argument", "missing key"),
        ("PUT", "/v1/kv/" + "k" * 1025, b"v", {}, 400, "invalid_argument", "1024"),
        ("GET", "/v1/kv/" + "k" * 1025, None, {}, 400, "invalid_argument", "limit"),
        ("PUT", "/v1/kv/big", b"v" * ((1 << 20) + 1), {}, 400, "invalid_argument", "limit"),
        ("POST", "/v1/kv/k", b"v", {}, 405, "method_not_allowed", "POST"),
        ("PATCH", "/v1/status", b"", {}, 405, "method_not_allowed", "PATCH"),
        ("PUT", "/v1/kv/k", b"{not json", json_type, 400, "bad_json", "JSON"),
        ("PUT", "/v1/kv/k", b"[1, 2]", json_type, 400, "bad_json", "object"),
        ("PUT", "/v1/kv/k", b'{"value": 5}', json_type, 400, "invalid_argument", "string"),
        (
            "PUT",
            "/v1/kv/k",
            b'{"value": "%%", "encoding": "base64"}',
            json_type,
            400,
            "invalid_argument",
            "base64",
        ),
        (
            "PUT",
            "/v1/kv/k",
            b'{"value": "x", "encoding": "rot13"}',
            json_type,
            400,
            "invalid_argument",
            "encoding",
        ),
        ("POST", "/v1/cas/k", b"x", {}, 415, "unsupported_media_type", "JSON"),
        ("POST", "/v1/cas/k", b'{"value": "x"}', json_type, 400, "invalid_argument", "expected"),
        ("GET", "/v1/kv/k?consistency=eventual", None, {}, 400, "invalid_argument", "consistency"),
        ("GET", "/v1/kv?limit=ten", None, {}, 400, "invalid_argument", "limit"),
        ("GET", "/v1/kv?limit=-1", None, {}, 400, "invalid_argument", "limit"),
        ("GET", "/v1/kv/k?timeout=0", None, {}, 400, "invalid_argument", "timeout"),
        ("GET", "/v1/kv/k?format=xml", None, {}, 400, "invalid_argument", "format"),
        ("GET", "/v1/kv/%FF%FE", None, {}, 400, "invalid_argument", "UTF-8"),
        ("PUT", "/v1/kv/k", b"v", {"Ramraft-Client-Id": "1"}, 400, "invalid_argument", "session"),
        (
            "PUT",
            "/v1/kv/k",
            b"v",
            {"Ramraft-Client-Id": "0", "Ramraft-Sequence": "1"},
            400,
            "invalid_argument",
            "session",
        ),
        (
            "PUT",
            "/v1/kv/k",
            b"v",
            {"Ramraft-Client-Id": "x", "Ramraft-Sequence": "1"},
            400,
            "invalid_argument",
            "integers",
        ),
        ("GET", "/v1/nothing-here", None, {}, 404, "not_found", "Not Found"),
        # More digits than int() converts; a body that is not the gzip it
        # says (a shorter one, a byte or two, aiohttp takes as empty).
        (
            "PUT",
            "/v1/kv/k",
            b'{"value": ' + b"9" * 5000 + b"}",
            json_type,
            400,
            "bad_json",
            "digits",
        ),
        (
            "PUT",
            "/v1/kv/k",
            b"not gzip",
            {"Content-Encoding": "gzip"},
            400,
            "invalid_argument",
            "gzip",
        ),
        (
            "PUT",
            "/v1/kv/k",
            b"not deflate",
            {"Content-Encoding": "deflate", **json_type},
            400,
            "invalid_argument",
            "deflate",
        ),
    ]
    for method, path, body, headers, status, error, words in cases:
        reply = http(node, method, path, body, headers)
        what = f"{method} {path[:40]}"
        assert reply.status == status, (what, reply.status, reply.body[:200])
        assert reply.headers["Content-Type"].startswith("application/json"), what
        payload = reply.json()
        assert payload["error"] == error, (what, payload)
        assert words.lower() in payload["detail"].lower(), (what, payload)
    # The bodies that did not decode were the clients' errors, answered
    # above: no error line in the node's log (aiohttp logs a traceback).
    time.sleep(0.5)  # aiohttp reads the rest of such a body after the answer
    assert "Unhandled exception" not in kv_cluster.node_log(kv_cluster.ids[0])
    allowed = http(node, "POST", "/v1/kv/k", b"").headers["Allow"]
    assert set(allowed.split(",")) >= {"GET", "PUT", "DELETE"}
    # Nothing of the above was written.
    assert http(node, "GET", "/v1/kv/k").status == 404
    # A body larger than any value could need is cut off by the server.
    huge = http(node, "PUT", "/v1/kv/k", b"v" * (2 << 20))
    assert huge.status == 413 and huge.json()["error"] == "payload_too_large"


def test_a_passed_deadline_is_504(kv_cluster: ProcessCluster) -> None:
    _, followers = roles(kv_cluster)
    node = kv_cluster.http[followers[0]]
    for method, body in (("GET", None), ("PUT", b"late")):
        reply = http(node, method, "/v1/kv/deadline?timeout=0.000001", body)
        assert reply.status == 504, reply.body
        assert reply.json()["error"] == "deadline_exceeded"


def _samples(address: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    reply = http(address, "GET", "/metrics")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def _total(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def _lags(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> dict[str, float]:
    """ramraft_member_lag_entries by member."""
    return {
        dict(labels)["member"]: value
        for (name, labels), value in samples.items()
        if name == "ramraft_member_lag_entries"
    }


def test_metrics_parse_and_move(kv_cluster: ProcessCluster) -> None:
    leader, followers = roles(kv_cluster)
    at_leader, at_follower = kv_cluster.http[leader], kv_cluster.http[followers[0]]
    before_leader, before = _samples(at_leader), _samples(at_follower)
    for name in (
        "ramraft_proposals_total",
        "ramraft_applied_entries_total",
        "ramraft_fsync_seconds_bucket",
        "ramraft_elections_total",
        "ramraft_became_leader_total",
        "ramraft_leader_changes_total",
        "ramraft_snapshot_bytes_bucket",
        "ramraft_snapshot_seconds_count",
        "ramraft_term",
        "ramraft_commit_index",
        "ramraft_applied_index",
        "ramraft_request_seconds_bucket",
        "process_resident_memory_bytes",
    ):
        assert any(n == name for n, _ in before), name
    assert _total(before, "ramraft_leader_changes_total") >= 1
    assert _total(before, "ramraft_build_info", version=ramraft.__version__) == 1
    # the leader reports every member's lag (itself included)...
    assert set(_lags(before_leader)) == set(kv_cluster.ids), _lags(before_leader)
    for i in range(5):
        assert put(at_follower, f"metrics/{i}", b"x").status == 200
    with kv_cluster.client() as client:
        client.get("metrics/0")
    after_leader, after = _samples(at_leader), _samples(at_follower)
    assert (
        _total(after_leader, "ramraft_proposals_total")
        >= _total(before_leader, "ramraft_proposals_total") + 5
    )
    assert (
        _total(after, "ramraft_applied_entries_total")
        >= _total(before, "ramraft_applied_entries_total") + 5
    )
    assert _total(after, "ramraft_fsync_seconds_count") > _total(
        before, "ramraft_fsync_seconds_count"
    )
    assert (
        _total(after, "ramraft_forwarded_writes_total")
        >= _total(before, "ramraft_forwarded_writes_total") + 5
    )
    assert _total(after, "ramraft_commit_index") >= _total(before, "ramraft_commit_index") + 5
    http_puts = dict(api="http", rpc="PUT /v1/kv/{key}", code="200")
    assert (
        _total(after, "ramraft_requests_total", **http_puts)
        == _total(before, "ramraft_requests_total", **http_puts) + 5
    )
    assert _total(after, "ramraft_request_seconds_count", api="http", rpc="PUT /v1/kv/{key}") >= 5
    # ...and, once the followers hold every entry, a lag of 0 for each
    wait_until(
        lambda: set(_lags(_samples(at_leader)).values()) == {0.0},
        15,
        "every member caught up in the leader's view",
    )
    grpc_gets = dict(api="grpc", rpc="Get", code="OK")
    assert (
        sum(
            _total(s, "ramraft_requests_total", **grpc_gets)
            for s in (after, after_leader, _samples(kv_cluster.http[followers[1]]))
        )
        >= 1
    )


def test_snapshot_metrics(kv_cluster: ProcessCluster) -> None:
    node_id = kv_cluster.ids[0]
    before = _samples(kv_cluster.http[node_id])
    with kv_cluster.client() as client:
        client.snapshot(endpoint=kv_cluster.grpc[node_id])
    after = _samples(kv_cluster.http[node_id])
    assert (
        _total(after, "ramraft_snapshot_seconds_count")
        == _total(before, "ramraft_snapshot_seconds_count") + 1
    )
    assert _total(after, "ramraft_snapshot_bytes_sum") > _total(
        before, "ramraft_snapshot_bytes_sum"
    )


# /v1/status's "node": what release 0.1.0 answered, plus pid and version,
# plus the cluster record (machines/cluster.py) and the halt and alarm.
STATUS_NODE_FIELDS = {
    "id", "address", "role", "term", "leader", "leader_address", "commit_index",
    "applied_index", "last_index", "snapshot_index", "first_index", "failed", "ready",
    "uptime_seconds", "http", "pid", "version",
    "cluster_id", "app_version", "app_version_supported", "kv_version",
    "kv_version_supported", "upgrade_hold", "halted", "diverged", "diverged_at",
}  # fmt: skip


def test_status_health_and_page(kv_cluster: ProcessCluster) -> None:
    leader = kv_cluster.wait_for_leader()
    for node_id in kv_cluster.ids:
        address = kv_cluster.http[node_id]
        assert http(address, "GET", "/healthz").json() == {"alive": True}
        assert http(address, "GET", "/readyz").json() == {"ready": True}
        status = http(address, "GET", "/v1/status").json()
        assert set(status["node"]) == STATUS_NODE_FIELDS
        assert status["node"]["id"] == node_id
        # What an operator needs to find the process (issue 14 item 10).
        assert status["node"]["pid"] == kv_cluster.procs[node_id].pid
        assert status["node"]["version"] == ramraft.__version__
        admin = kv_cluster.status(node_id)
        assert admin is not None
        assert (admin.pid, admin.version) == (kv_cluster.procs[node_id].pid, ramraft.__version__)
        assert status["node"]["leader"] == leader
        assert status["node"]["role"] == ("leader" if node_id == leader else "follower")
        assert status["members_from"] == leader  # followers show the leader's view
        assert sorted(m["id"] for m in status["members"]) == sorted(kv_cluster.ids)
        assert all(m["lag"] is not None for m in status["members"])
        assert status["leader_changes"][0]["leader"] == leader
        page = http(address, "GET", "/")
        assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
        assert b"<script" in page.body and b"http://" not in page.body.split(b"</style>")[0]
        assert f"ramraft {ramraft.__version__}, pid ".encode() in page.body


def test_without_a_quorum_requests_get_503_with_a_reason(tmp_path: Path) -> None:
    """On a cluster of its own: it takes the quorum away, which would break
    every test of the shared module cluster that ran after it."""
    with ProcessCluster(tmp_path, http=True) as cluster:
        cluster.wait_for_leader()
        wait_http_ready(cluster)
        leader, followers = roles(cluster)
        survivor = followers[0]
        address = cluster.http[survivor]
        written = put(address, "greeting", b"hello")
        assert written.status == 200, written.body
        cluster.wait_applied(survivor, written.json()["index"])  # before it is cut off
        cluster.kill(leader)
        cluster.kill(followers[1])
        wait_until(lambda: http(address, "GET", "/readyz").status == 503, 15, "readyz 503")
        wait_until(
            lambda: not http(address, "GET", "/v1/status").json()["node"]["leader"],
            15,
            "the survivor to forget the leader",
        )
        write = put(address, "nobody-home", b"x", None)
        assert write.status in (503, 504)
        write = http(address, "PUT", "/v1/kv/nobody-home?timeout=1", b"x")
        assert write.status == 503, write.body
        assert write.json()["error"] == "unavailable" and "leader" in write.json()["detail"]
        read = http(address, "GET", "/v1/kv/greeting?timeout=1")
        assert read.status == 503 and read.json()["error"] == "unavailable"
        # A serializable read is still served from memory.
        local = http(address, "GET", "/v1/kv/greeting?consistency=serializable")
        assert local.status == 200 and local.json()["value"] == "hello"
        assert http(address, "GET", "/healthz").status == 200

"""An application model served next to the key-value store (--app), on three
real node processes: examples/notes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.server.procs import ProcessCluster
from tests.web.conftest import NOTES_APP, http, post_form, roles, wait_http_ready, wait_until


def notes(cluster: ProcessCluster, node_id: str, linearizable: bool = False) -> dict[str, object]:
    query = "?consistency=linearizable" if linearizable else ""
    reply = http(cluster.http[node_id], "GET", f"/app/api/notes{query}")
    assert reply.status == 200, reply.body
    body = reply.json()
    assert body["node"] == node_id
    return {"notes": body["notes"], "next_id": body["next_id"]}


def node_log(cluster: ProcessCluster, node_id: str) -> list[str]:
    text = (cluster.data_dir(node_id) / "node.log").read_text(errors="replace")
    return [line for line in text.splitlines() if line.startswith("{")]


def add_note(cluster: ProcessCluster, node_id: str, title: str, body: str = "") -> int:
    reply = post_form(cluster.http[node_id], "/app/notes", {"title": title, "body": body})
    assert reply.status == 303, reply.body
    match = re.fullmatch(r"/app/notes/(\d+)", reply.headers["Location"])
    assert match, reply.headers["Location"]
    return int(match.group(1))


def test_a_command_applied_on_the_leader_is_visible_on_every_node(
    app_cluster: ProcessCluster,
) -> None:
    leader, _ = roles(app_cluster)
    note_id = add_note(app_cluster, leader, "From the leader", "replicated everywhere")
    for node_id in app_cluster.ids:
        state = notes(app_cluster, node_id, linearizable=True)
        titles = {n["id"]: n["title"] for n in state["notes"]}  # type: ignore[attr-defined]
        assert titles.get(note_id) == "From the leader", node_id


def test_a_command_on_a_follower_is_forwarded_and_read_back_there(
    app_cluster: ProcessCluster,
) -> None:
    _, followers = roles(app_cluster)
    follower = followers[0]
    # The result (the new id) comes back through Peer.Forward and decodes.
    note_id = add_note(app_cluster, follower, "From a follower", "<b>escaped</b>")
    # The redirect target is served by the same follower, from its memory,
    # without a linearizable read: the command returned only once applied here.
    page = http(app_cluster.http[follower], "GET", f"/app/notes/{note_id}")
    assert page.status == 200
    assert b"From a follower" in page.body and b"&lt;b&gt;escaped&lt;/b&gt;" in page.body
    assert f"served by node <b>{follower}</b> (follower)".encode() in page.body
    index = http(app_cluster.http[follower], "GET", "/app/")
    assert index.status == 200 and b"From a follower" in index.body
    # Pin and delete, through another node.
    other = followers[1]
    reply = post_form(app_cluster.http[other], f"/app/notes/{note_id}/pin", {"pinned": "1"})
    assert reply.status == 303
    pinned = [n for n in notes(app_cluster, other)["notes"] if n["id"] == note_id]  # type: ignore[attr-defined]
    assert pinned and pinned[0]["pinned"] is True


def test_a_bad_form_is_refused_before_anything_is_proposed(app_cluster: ProcessCluster) -> None:
    node = app_cluster.ids[0]
    before = notes(app_cluster, node, linearizable=True)
    reply = post_form(app_cluster.http[node], "/app/notes", {"title": "  ", "body": "x"})
    assert reply.status == 400 and b"a note needs a title" in reply.body
    reply = post_form(app_cluster.http[node], "/app/notes", {"title": "t" * 500})
    assert reply.status == 400 and b"longer than" in reply.body
    assert notes(app_cluster, node, linearizable=True)["next_id"] == before["next_id"]
    assert http(app_cluster.http[node], "GET", "/app/notes/99999").status == 404


def test_a_body_or_path_that_is_no_form_is_a_4xx(app_cluster: ProcessCluster) -> None:
    note_id = add_note(app_cluster, app_cluster.ids[0], "A note", "to post to")
    node = app_cluster.http[app_cluster.ids[0]]
    form = "application/x-www-form-urlencoded"
    multipart = "multipart/form-data"
    cases = [
        # (path, body, Content-Type, status): aiohttp's request.post() and
        # multipart reader raise ValueError/LookupError on these (500 before).
        ("/app/notes", b"title=\xff\xfe", form, 400),
        ("/app/notes", b"title=x", form + "; charset=bogus", 400),
        ("/app/notes", b"--x\r\n", multipart, 400),
        ("/app/notes", b"garbage", multipart + "; boundary=zz", 400),
        (f"/app/notes/{note_id}/pin", b"pinned=\xff", form, 400),
        (f"/app/notes/{note_id}/files", b"garbage\r\n", multipart + "; boundary=zz", 400),
        (f"/app/notes/{note_id}/files", b"", multipart, 400),
    ]
    for path, body, content_type, status in cases:
        reply = http(node, "POST", path, body, {"Content-Type": content_type})
        assert reply.status == status, (path, body, content_type, reply.status, reply.body[:200])
    # More digits than int() converts: no such note (not a 500).
    assert http(node, "GET", "/app/notes/" + "9" * 5000).status == 404
    assert http(node, "GET", f"/app/notes/{note_id}/files/" + "9" * 5000).status == 404


def test_the_kv_store_still_works_next_to_the_model(app_cluster: ProcessCluster) -> None:
    node = app_cluster.http[app_cluster.ids[1]]
    assert http(node, "PUT", "/v1/kv/side-by-side", b"yes").status == 200
    assert http(node, "GET", "/v1/kv/side-by-side").json()["value"] == "yes"
    status = http(node, "GET", "/v1/status").json()
    assert status["app"] == {"title": "Notes board", "model": "Board", "url": "/app/"}


def test_a_killed_leader_recovers_the_objects_from_snapshot_and_log(
    app_cluster: ProcessCluster,
) -> None:
    leader, followers = roles(app_cluster)
    for i in range(4):
        add_note(app_cluster, leader, f"before the snapshot {i}")
    with app_cluster.client() as client:
        snapshot_index = client.snapshot(endpoint=app_cluster.grpc[leader])
    assert snapshot_index > 0
    # In the log after the snapshot: adds, a pin and a delete.
    after = [add_note(app_cluster, followers[0], f"after the snapshot {i}") for i in range(3)]
    assert (
        post_form(app_cluster.http[leader], f"/app/notes/{after[0]}/pin", {"pinned": "1"}).status
        == 303
    )
    assert post_form(app_cluster.http[leader], f"/app/notes/{after[1]}/delete", {}).status == 303
    expected = notes(app_cluster, leader, linearizable=True)

    app_cluster.kill(leader)  # SIGKILL
    # Written while it is down: it learns these from the new leader.
    new_leader = app_cluster.wait_for_leader(among=followers)
    while_down = add_note(app_cluster, new_leader, "while the old leader was down")
    app_cluster.start(leader)
    wait_http_ready(app_cluster, [leader])

    # The second start loaded the snapshot, then replayed the log after it.
    events = [json.loads(line) for line in node_log(app_cluster, leader)]
    starts = [n for n, e in enumerate(events) if e.get("event") == "node_recovered"]
    assert len(starts) == 2
    restored = [e for e in events if e.get("event") == "snapshot_restored"]
    assert [e["index"] for e in restored] == [snapshot_index], "no restore from the snapshot"
    recovered_event = events[starts[1]]
    assert recovered_event["snapshot"] == snapshot_index
    assert recovered_event["entries"] > 0, "nothing in the log after the snapshot"
    wait_until(
        lambda: any(n["id"] == while_down for n in notes(app_cluster, leader)["notes"]),  # type: ignore[attr-defined]
        20,
        "the restarted node to catch up",
    )
    recovered = notes(app_cluster, leader)
    survivors = [n for n in recovered["notes"] if n["id"] != while_down]  # type: ignore[attr-defined]
    assert survivors == expected["notes"]
    assert recovered["next_id"] == expected["next_id"] + 1  # type: ignore[operator]
    for node_id in app_cluster.ids:
        assert notes(app_cluster, node_id, linearizable=True) == recovered


def test_a_data_dir_written_without_the_app_is_refused_clearly(tmp_path: Path) -> None:
    cluster = ProcessCluster(tmp_path, nodes=1)
    with cluster:
        cluster.wait_for_leader()
        with cluster.client() as client:
            client.put("k", b"v")
            client.snapshot(endpoint=cluster.grpc["n1"])
        assert cluster.stop("n1") == 0
        cluster.extra_args = ["--app", NOTES_APP]
        process = cluster.start("n1")
        assert process.wait(timeout=30) == 1
    log = (cluster.data_dir("n1") / "node.log").read_text()
    assert "cannot restore the snapshot" in log and "same --app" in log


def _multipart(name: str, data: bytes, content_type: str) -> tuple[bytes, dict[str, str]]:
    boundary = "ramraft-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def test_an_attachment_uploaded_on_one_node_is_served_by_every_node(
    app_cluster: ProcessCluster,
) -> None:
    """Attachments are blobs: streamed into ctx.blobs.put on the node that
    took the form, recorded on the note, served (and fetched if needed) by
    any node; the board tells ramraft which blobs it refers to."""
    leader, followers = roles(app_cluster)

    def enabled() -> bool:
        statuses = [app_cluster.status(n) for n in app_cluster.ids]
        return all(s is not None and s.kv_version >= 2 for s in statuses)

    wait_until(enabled, 30, "blobs enabled")
    note_id = add_note(app_cluster, followers[0], "With a picture")
    picture = bytes(range(256)) * 4096  # 1 MiB
    body, headers = _multipart("sunset.png", picture, "image/png")
    reply = http(
        app_cluster.http[followers[0]], "POST", f"/app/notes/{note_id}/files", body, headers
    )
    assert reply.status == 303, reply.body
    for node in app_cluster.ids:
        # A page reads its node's memory: a follower shows the attachment
        # once it has applied the command (the upload answered after a
        # majority had, not every node).
        wait_until(
            lambda node=node: (
                b"sunset.png" in http(app_cluster.http[node], "GET", f"/app/notes/{note_id}").body
            ),
            30,
            f"{node} applied the attachment",
        )
        page = http(app_cluster.http[node], "GET", f"/app/notes/{note_id}")
        assert b"sunset.png" in page.body and f"/app/notes/{note_id}/files/0".encode() in page.body
        served = http(app_cluster.http[node], "GET", f"/app/notes/{note_id}/files/0")
        assert served.status == 200 and served.body == picture, node
        assert served.headers["Content-Type"] == "image/png"
        assert "sunset.png" in served.headers["Content-Disposition"]
    state = notes(app_cluster, leader, linearizable=True)
    (note,) = [n for n in state["notes"] if n["id"] == note_id]  # type: ignore[attr-defined]
    (attachment,) = note["attachments"]
    assert attachment["size"] == len(picture) and len(attachment["sha256"]) == 64
    # The same blob over the plain blob API, and a form without a file.
    raw = http(app_cluster.http[leader], "GET", f"/v1/blobs/{attachment['sha256']}")
    assert raw.body == picture
    body, headers = _multipart("", b"", "application/octet-stream")
    reply = http(app_cluster.http[leader], "POST", f"/app/notes/{note_id}/files", body, headers)
    assert reply.status == 400 and b"choose a file" in reply.body

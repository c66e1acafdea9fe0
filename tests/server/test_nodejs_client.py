"""A client in another language: Node.js with @grpc/grpc-js and
@grpc/proto-loader (tests/nodejs), using only proto/kv.proto, does put and
get against a running node -- a follower, so the write is forwarded.

Dependencies install from tests/nodejs/package-lock.json with ``npm ci`` when
node_modules is missing; the test is skipped only if node or npm is absent.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.needs import not_installed
from tests.npm import npm_ci
from tests.server.procs import REPO, ProcessCluster

NODE_DIR = REPO / "tests" / "nodejs"


@pytest.fixture(scope="module")
def node_client() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip(not_installed("Node.js and npm", "apt-get install -y nodejs npm"))
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        done = npm_ci(NODE_DIR)
        assert done is not None and done.returncode == 0, f"npm ci failed: {done}"
    return NODE_DIR / "kv_client.js"


def test_nodejs_grpc_client_puts_and_gets(tmp_path: Path, node_client: Path) -> None:
    with ProcessCluster(tmp_path) as cluster:
        leader = cluster.wait_for_leader()
        follower = next(i for i in cluster.ids if i != leader)
        with cluster.client() as c:
            c.put("from-python", "héllo from Python".encode())
        argv = ["node", str(node_client), cluster.grpc[follower]]
        argv += ["from-node", "hi from Node ✓", "from-python"]
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, f"node client failed:\n{done.stdout}\n{done.stderr}"
        seen = json.loads(done.stdout.strip().splitlines()[-1])
        # uint64 comes back as a decimal string
        assert int(seen["put_index"]) > 0
        # the retry with the same session was not applied again: same index
        assert seen["retry_index"] == seen["put_index"]
        assert seen["get"] == {"found": True, "value": "hi from Node ✓"}
        assert seen["other"] == {"found": True, "value": "héllo from Python"}
        assert seen["bad_key"]["name"] == "INVALID_ARGUMENT"
        assert "empty" in seen["bad_key"]["details"]
        # and Python reads what Node wrote, on every node
        for node_id in cluster.ids:
            cluster.wait_caught_up(node_id)
        with cluster.client() as c:
            assert c.get("from-node") == "hi from Node ✓".encode()


def test_nodejs_watch_and_txn_from_the_proto_alone(tmp_path: Path, node_client: Path) -> None:
    """Watch (a bidirectional stream: create, events, cancel) and Txn (compares
    with a oneof target, ops of both branches) from Node.js."""
    with ProcessCluster(tmp_path) as cluster:
        leader = cluster.wait_for_leader()
        follower = next(i for i in cluster.ids if i != leader)
        cluster.wait_for_kv2()
        script = node_client.parent / "watch_txn_client.js"
        done = subprocess.run(
            ["node", str(script), cluster.grpc[follower], "js/"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, f"node client failed:\n{done.stdout}\n{done.stderr}"
        seen = json.loads(done.stdout.strip().splitlines()[-1])
        assert seen["created"]["created"] is True
        assert seen["first"]["succeeded"] is True
        assert seen["second"] == {"succeeded": False, "value": "1", "version": "1"}
        revision = seen["first"]["revision"]  # int64 comes back as a decimal string
        assert [(e["type"], e["key"], e["value"], e["revision"]) for e in seen["events"]] == [
            ("EVENT_TYPE_PUT", "js/a", "1", revision),
            ("EVENT_TYPE_PUT", "js/b", "2", revision),
        ], "one transaction, one revision, both changes"
        assert seen["canceled"] is True

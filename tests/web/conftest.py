"""Shared helpers for the web tier tests: a small HTTP client and clusters of
real node processes with the web tier on (tests/server/procs.py)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.server.procs import REPO, ProcessCluster

ARTIFACTS = REPO / "artifacts" / "screenshots"
NOTES_APP = "examples.notes:app"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(
    address: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 15.0,
) -> Reply:
    request = urllib.request.Request(
        f"http://{address}{path}", data=body, method=method, headers=headers or {}
    )
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=timeout) as response:
            return Reply(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as e:
        return Reply(e.code, dict(e.headers), e.read())


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def post_form(address: str, path: str, fields: dict[str, str]) -> Reply:
    return http(
        address,
        "POST",
        path,
        urllib.parse.urlencode(fields).encode(),
        {"Content-Type": "application/x-www-form-urlencoded"},
    )


def wait_until(predicate: Any, timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(0.05)


def wait_http_ready(cluster: ProcessCluster, ids: list[str] | None = None) -> None:
    """Every node's web tier answers /readyz with 200."""
    for node_id in ids or cluster.alive():

        def ready(node_id: str = node_id) -> bool:
            try:
                return http(cluster.http[node_id], "GET", "/readyz", timeout=2).status == 200
            except OSError:
                return False

        wait_until(ready, 30, f"{node_id} ready over HTTP")


def roles(cluster: ProcessCluster) -> tuple[str, list[str]]:
    leader = cluster.wait_for_leader()
    return leader, [i for i in cluster.ids if i != leader and i in cluster.alive()]


@pytest.fixture(scope="module")
def kv_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    with ProcessCluster(tmp_path_factory.mktemp("kv"), http=True) as cluster:
        cluster.wait_for_leader()
        wait_http_ready(cluster)
        yield cluster


@pytest.fixture(scope="module")
def app_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    root: Path = tmp_path_factory.mktemp("app")
    with ProcessCluster(root, http=True, extra_args=["--app", NOTES_APP]) as cluster:
        cluster.wait_for_leader()
        wait_http_ready(cluster)
        yield cluster

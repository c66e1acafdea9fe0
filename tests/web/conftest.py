"""Shared helpers for the web tier tests: a small HTTP client and clusters of
real node processes with the web tier on (tests/server/procs.py)."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.httpcalls import Reply, http, wait_until
from tests.server.procs import REPO, ProcessCluster

__all__ = ["Reply", "http", "wait_until"]  # the tests import them from here

ARTIFACTS = REPO / "artifacts" / "screenshots"
NOTES_APP = "examples.notes:app"


def post_form(address: str, path: str, fields: dict[str, str]) -> Reply:
    return http(
        address,
        "POST",
        path,
        urllib.parse.urlencode(fields).encode(),
        {"Content-Type": "application/x-www-form-urlencoded"},
    )


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

"""Client.backup's time rules, against in-process Admin.Backup servers that
send their pieces as a test says: a backup takes as long as it needs (no
deadline over the whole stream), a stalled one fails, a node that does not
start it is left for the next one, and a failing ``write`` stops the node's
stream too."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from ramraft.client import Client, DeadlineExceeded, PermissionDenied, Unauthenticated
from ramraft.proto import admin_pb2, admin_pb2_grpc


class BackupServer(admin_pb2_grpc.AdminServicer):
    """Answers Backup with ``pieces`` pieces, ``gaps[i]`` seconds before
    piece i (a missing gap is 0); or refuses with ``refuse``."""

    def __init__(
        self, pieces: int = 3, gaps: dict[int, float] | None = None, refuse: Any = None
    ) -> None:
        self.pieces = pieces
        self.gaps = gaps or {}
        self.refuse = refuse
        self.calls = 0
        self.cancelled = threading.Event()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        admin_pb2_grpc.add_AdminServicer_to_server(self, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{port}"
        self.server.start()

    def Backup(
        self, request: admin_pb2.BackupRequest, context: grpc.ServicerContext
    ) -> Iterator[admin_pb2.BackupResponse]:
        self.calls += 1
        context.add_callback(self.cancelled.set)
        if self.refuse is not None:
            context.abort(self.refuse, "refused by the test")
        info = admin_pb2.BackupInfo(cluster_id="c-1", index=7, term=2, keys=3, node="n1")
        for i in range(self.pieces):
            deadline = time.monotonic() + self.gaps.get(i, 0.0)
            while time.monotonic() < deadline and context.is_active():
                time.sleep(0.01)
            if not context.is_active():
                return
            yield admin_pb2.BackupResponse(info=info if i == 0 else None, data=b"%d," % i)

    def stop(self) -> None:
        self.server.stop(grace=None)


@pytest.fixture
def make() -> Iterator[Any]:
    started: list[BackupServer] = []

    def start(**kwargs: Any) -> BackupServer:
        server = BackupServer(**kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def test_a_backup_may_take_longer_than_the_timeout(make: Any) -> None:
    server = make(pieces=8, gaps={i: 0.15 for i in range(1, 8)})  # ~1 s in all
    received: list[bytes] = []
    with Client(server.address, timeout=0.5) as client:
        info = client.backup(received.append, stall_timeout=0.5)
    assert b"".join(received) == b"0,1,2,3,4,5,6,7,"
    assert (info.index, info.node) == (7, "n1")


def test_a_stalled_backup_fails_and_stops_the_node(make: Any) -> None:
    server = make(pieces=3, gaps={2: 30.0})
    received: list[bytes] = []
    started = time.monotonic()
    with Client(server.address, timeout=2) as client, pytest.raises(DeadlineExceeded) as e:
        client.backup(received.append, stall_timeout=0.3)
    assert "stalled" in str(e.value)
    assert time.monotonic() - started < 10
    assert received == [b"0,", b"1,"]
    assert server.cancelled.wait(5)


def test_a_node_that_does_not_start_is_left_for_the_next(make: Any) -> None:
    silent = make(pieces=1, gaps={0: 30.0})
    working = make(pieces=2)
    received: list[bytes] = []
    endpoints = f"{silent.address},{working.address}"
    with Client(endpoints, timeout=5, attempt_timeout=0.5) as client:
        client.backup(received.append)
    assert b"".join(received) == b"0,1,"
    assert silent.calls == 1 and silent.cancelled.wait(5)


def test_no_node_starting_is_a_deadline_exceeded(make: Any) -> None:
    silent = make(pieces=1, gaps={0: 30.0})
    started = time.monotonic()
    with Client(silent.address, timeout=0.5) as client, pytest.raises(DeadlineExceeded) as e:
        client.backup(lambda data: None)
    assert "no node started the backup within 0.5 s" in str(e.value)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
        (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
    ],
)
def test_a_refusal_is_raised_as_what_it_is_without_asking_every_node(
    make: Any, code: grpc.StatusCode, error: type[Exception]
) -> None:
    """Every node has the same tokens: the next one would refuse too (and
    log one more warning), so the first refusal is final."""
    first = make(refuse=code)
    second = make(refuse=code)
    client = Client(f"{first.address},{second.address}", timeout=5, rng=random.Random(0))
    with client, pytest.raises(error, match="refused by the test"):
        client.backup(lambda data: None)
    assert first.calls + second.calls == 1


def test_a_failing_write_stops_the_nodes_stream(make: Any) -> None:
    server = make(pieces=50, gaps={i: 0.05 for i in range(50)})

    def write(data: bytes) -> None:
        if data == b"2,":
            raise OSError(28, "No space left on device")

    with Client(server.address, timeout=5) as client, pytest.raises(OSError, match="No space"):
        client.backup(write)
    assert server.cancelled.wait(5)

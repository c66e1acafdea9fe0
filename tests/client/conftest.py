from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.client.fake_server import FakeServer


@pytest.fixture
def servers() -> Iterator[Callable[[], FakeServer]]:
    """Starts fake nodes on demand; stops them all after the test."""
    started: list[FakeServer] = []

    def start() -> FakeServer:
        server = FakeServer()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(servers: Callable[[], FakeServer]) -> FakeServer:
    return servers()

"""Fixtures: every interface test runs against the file and the memory stores."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ramraft.server.storage import (
    FileLogStore,
    FileSnapshotStore,
    MemoryDisk,
    MemoryLogStore,
    MemorySnapshotStore,
    open_memory_storage,
    open_storage,
)

LogStoreT = FileLogStore | MemoryLogStore
SnapStoreT = FileSnapshotStore | MemorySnapshotStore


class Harness:
    """Opens a node's storage, and reopens it as after a restart."""

    def __init__(self, kind: str, tmp_path: Path, **options: int) -> None:
        self.kind = kind
        self.data_dir = tmp_path / "data"
        self.disk = MemoryDisk()
        self.options = options
        self.log: LogStoreT | None = None
        self.snaps: SnapStoreT | None = None

    def open(self) -> tuple[LogStoreT, SnapStoreT]:
        if self.kind == "file":
            opts = {"segment_size": 4096, **self.options}
            self.log, self.snaps = open_storage(self.data_dir, **opts)  # type: ignore[arg-type]
        else:
            self.log, self.snaps = open_memory_storage(self.disk, **self.options)
        return self.log, self.snaps

    def restart(self) -> tuple[LogStoreT, SnapStoreT]:
        """A clean stop (close) and a new start on the same data."""
        if self.log is not None:
            self.log.close()
        return self.open()

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None


@pytest.fixture(params=["file", "memory"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    h = Harness(request.param, tmp_path)
    yield h
    h.close()


@pytest.fixture
def file_harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness("file", tmp_path)
    yield h
    h.close()

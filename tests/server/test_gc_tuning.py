"""A node raises its process's GC thresholds (server/node.py tune_gc): with
the defaults, full collections over a large state took 17% of a leader's
time. Higher thresholds a host set are kept."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from ramraft.server.config import NodeConfig
from ramraft.server.node import GC_THRESHOLDS, Node, tune_gc
from tests.server.procs import free_ports


@pytest.fixture
def default_thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        yield
    finally:
        gc.set_threshold(*before)


def test_tune_gc_raises_to_at_least_its_thresholds(default_thresholds: None) -> None:
    tune_gc()
    assert gc.get_threshold() == GC_THRESHOLDS
    gc.set_threshold(GC_THRESHOLDS[0] * 2, 1, GC_THRESHOLDS[2] * 3)
    tune_gc()
    assert gc.get_threshold() == (GC_THRESHOLDS[0] * 2, GC_THRESHOLDS[1], GC_THRESHOLDS[2] * 3)


def test_a_started_node_has_tuned_its_process(default_thresholds: None, tmp_path: Path) -> None:
    async def scenario() -> None:
        (port,) = free_ports(1)
        config = NodeConfig(
            node_id="solo",
            peers={"solo": f"127.0.0.1:{port}"},
            data_dir=str(tmp_path),
            tick_ms=10,
            fsync=False,
        )
        node = Node(config)
        await node.start()
        try:
            assert gc.get_threshold() == GC_THRESHOLDS
        finally:
            await node.stop(transfer=False, grace=1)

    asyncio.run(scenario())

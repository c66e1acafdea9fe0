"""The runtime in one process with in-memory storage: a one-node cluster,
so no network is needed. Covers what needs the runtime but not the wire:
the disk failing under it, restart from what was synced, snapshots."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import time

import pytest
import structlog

from ramraft.server.config import NodeConfig
from ramraft.server.machines.kv import KVMachine, encode_put
from ramraft.server.request_errors import Unavailable
from ramraft.server.runtime.loop import RaftRuntime
from ramraft.server.storage import MemoryDisk, encode_snapshot_header, open_memory_storage
from ramraft.server.web.metrics import NodeMetrics
from tests.httpcalls import wait_until_async


class NoNetwork:
    """A one-node cluster sends nothing; anything sent is a bug."""

    def send(self, messages: list[object]) -> None:
        assert not messages, messages

    async def close(self) -> None:
        pass


def make_runtime(disk: MemoryDisk, **overrides: object) -> tuple[RaftRuntime, KVMachine]:
    config = NodeConfig(
        node_id="solo", peers={"solo": "127.0.0.1:1"}, data_dir="/nonexistent", tick_ms=5
    )
    for name, value in overrides.items():
        setattr(config, name, value)
    log_store, snapshots = open_memory_storage(disk)
    machine = KVMachine()
    runtime = RaftRuntime(config, machine, log_store, snapshots)
    runtime.transport = NoNetwork()
    return runtime, machine


async def started(runtime: RaftRuntime) -> RaftRuntime:
    await runtime.start()
    await runtime.wait_for_leader(5)
    return runtime


def test_a_crash_of_the_raft_loop_is_not_called_a_storage_failure() -> None:
    """A Raft loop that crashes on something other than the disk (a bug)
    stops the node as a storage failure does, but says what it was: the
    requests' refusal names an internal error, and the log line asks to
    report it rather than to check the disk."""

    async def scenario() -> None:
        runtime, _ = make_runtime(MemoryDisk())
        await started(runtime)

        def crash(core: object) -> None:
            raise RuntimeError("a bug")

        runtime.snapshotting.maybe_snapshot = crash  # type: ignore[method-assign]
        with structlog.testing.capture_logs() as logs:
            # Its turn answers the write, then crashes (or the next turn does).
            with contextlib.suppress(Unavailable):
                await asyncio.wait_for(runtime.propose(encode_put("k", b"v")), 5)
            await wait_until_async(lambda: runtime.failed is not None, 5, "the loop crashed")
        with pytest.raises(Unavailable, match="internal error: a bug"):
            await runtime.propose(encode_put("later", b"x"))
        with pytest.raises(Unavailable, match="internal error: a bug"):
            await runtime.read_index()
        stopped = [e for e in logs if e["event"] == "node_stopped_writes"]
        assert len(stopped) == 1 and "bug in ramraft" in stopped[0]["action"], stopped
        assert "check the disk" not in stopped[0]["action"]
        await runtime.close()

    asyncio.run(scenario())


def test_a_failing_disk_stops_writes_and_keeps_what_was_acknowledged() -> None:
    """Issue 3: disk full -> the node stops accepting writes and says so; it
    acknowledges nothing it could not sync and corrupts nothing on disk."""

    async def scenario() -> None:
        disk = MemoryDisk()
        runtime, _ = make_runtime(disk)
        await started(runtime)
        acknowledged = []
        for n in range(5):
            index, _ = await runtime.propose(encode_put(f"k{n}", b"v"))
            acknowledged.append(index)
        disk.fail_writes = OSError(errno.ENOSPC, "No space left on device")
        with pytest.raises(Unavailable, match="storage failure"):
            await asyncio.wait_for(runtime.propose(encode_put("lost", b"x")), 5)
        assert "No space left on device" in str(runtime.failed), runtime.failed
        # Every later request is refused at once, with the reason.
        with pytest.raises(Unavailable, match="No space left"):
            await runtime.propose(encode_put("later", b"x"))
        with pytest.raises(Unavailable, match="storage failure"):
            await runtime.read_index()
        await runtime.close()

        # Restart on the same disk: every acknowledged write is there.
        runtime2, machine2 = make_runtime(disk)
        await started(runtime2)
        await runtime2.read_index()
        for n in range(5):
            assert machine2.get(f"k{n}") == (True, b"v")
        assert machine2.get("lost")[0] is False
        await runtime2.close()

    asyncio.run(scenario())


def test_restart_replays_the_log_after_the_snapshot() -> None:
    async def scenario() -> None:
        disk = MemoryDisk()
        runtime, _ = make_runtime(disk, snapshot_entries=10, retain_entries=2)
        await started(runtime)
        for n in range(25):
            await runtime.propose(encode_put(f"k{n}", str(n).encode()))
        index = await runtime.snapshotting.snapshot_now()
        for n in range(25, 30):
            await runtime.propose(encode_put(f"k{n}", str(n).encode()))
        await runtime.close()
        assert disk.snapshots, "a snapshot was stored"
        # Its data starts with the node's header, in the pinned format
        # (tests/storage/test_snapshot_header.py).
        _, data = disk.snapshots[index]
        assert data.startswith(encode_snapshot_header({"solo": "127.0.0.1:1"}))

        runtime2, machine2 = make_runtime(disk)
        await started(runtime2)
        await runtime2.read_index()
        assert runtime2.core is not None and runtime2.core.latest_snapshot.index >= index
        assert [machine2.get(f"k{n}")[1] for n in range(30)] == [str(n).encode() for n in range(30)]
        await runtime2.close()

    asyncio.run(scenario())


def test_large_values_trigger_snapshots_by_bytes_and_bound_the_log_in_ram() -> None:
    """The log is RAM until a snapshot covers it: with big values, a byte
    budget (not only an entry count) must trigger snapshots and cap what is
    kept behind them."""

    async def scenario() -> None:
        disk = MemoryDisk()
        runtime, _ = make_runtime(
            disk, snapshot_entries=10**9, snapshot_bytes=1 << 20, retain_bytes=256 << 10
        )
        await started(runtime)
        value = b"v" * (100 << 10)  # 100 KiB
        for n in range(40):  # 4 MB in all
            await runtime.propose(encode_put(f"k{n}", value))
            if runtime.snapshotting.task is not None:
                await runtime.snapshotting.task
        core = runtime.core
        assert core is not None
        assert core.latest_snapshot.index > 0, "no snapshot was taken by bytes"
        in_ram = sum(len(e.data) for e in core.log.entries)
        assert in_ram <= (1 << 20) + (256 << 10) + len(value), in_ram
        await runtime.close()

    asyncio.run(scenario())


def test_an_event_loop_held_past_a_quarter_of_the_election_timeout_is_logged() -> None:
    """A callback that holds the node's event loop (application code on
    it, a long synchronous call) or a process starved of CPU delays the
    leader's heartbeats; past an election timeout the followers elect
    another leader. The runtime logs the lateness once it passes a
    quarter of the shortest election timeout (here 50 ticks of 5 ms: 62.5
    ms), at most once per 10 s, and counts every such turn."""

    async def scenario() -> tuple[list[dict[str, object]], NodeMetrics]:
        runtime, _ = make_runtime(MemoryDisk())
        metrics = NodeMetrics(runtime, lambda: 0, process=False)
        runtime.listeners.append(metrics.runtime_listener)
        await started(runtime)
        assert runtime.late_turns == 0, "a loop that keeps up is not late"
        with structlog.testing.capture_logs() as logs:
            for _ in range(2):
                time.sleep(0.2)  # holds the loop, as a blocking call would
                await asyncio.sleep(0.02)
        await runtime.close()
        assert runtime.late_turns == 2
        return [entry for entry in logs if entry["event"] == "event_loop_late"], metrics

    logged, metrics = asyncio.run(scenario())
    (late,) = logged  # the second within 10 s is counted, not logged
    assert late["log_level"] == "warning"
    assert 150 <= int(str(late["late_ms"])) < 1000
    assert late["election_timeout_ms"] == 250 and late["role"] == "leader"
    # ...and both are in the metrics, for an alert before a leader is lost.
    text = metrics.exposition().decode()
    assert "ramraft_event_loop_late_seconds_count 2.0" in text
    assert 'ramraft_event_loop_late_seconds_bucket{le="0.1"} 0.0' in text
    assert 'ramraft_event_loop_late_seconds_bucket{le="1.0"} 2.0' in text

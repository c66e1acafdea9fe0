"""A follower's runtime fed by a scripted leader (no network): a follower
writes appends on the event loop when the disk thread is idle (its
acknowledgement waits for that write), and never while the disk thread is
still busy with an earlier job -- the log store is not shared between threads."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from ramraft.consensus import Entry, Message, MsgType
from ramraft.server.config import NodeConfig
from ramraft.server.machines.kv import KVMachine, encode_put
from ramraft.server.runtime.loop import RaftRuntime
from ramraft.server.storage import MemoryDisk, open_memory_storage

LEADER, FOLLOWER = "l", "f"


class Captured:
    """The transport: keeps what the follower sends."""

    def __init__(self) -> None:
        self.sent: list[Message] = []

    def send(self, messages: list[Message]) -> None:
        self.sent.extend(messages)

    async def close(self) -> None:
        pass


class WatchedStore:
    """The log store, made to notice two threads inside it at once, and to
    make commit-only saves (which the runtime runs on its disk thread) slow."""

    def __init__(self, inner: Any, slow_commit_only: float) -> None:
        self.inner = inner
        self.slow_commit_only = slow_commit_only
        self.inside = threading.Lock()
        self.overlaps = 0
        self.threads: list[str] = []

    def save(self, **kwargs: Any) -> None:
        self.threads.append(threading.current_thread().name)
        if not self.inside.acquire(blocking=False):
            self.overlaps += 1
            self.inner.save(**kwargs)
            return
        try:
            if not kwargs.get("entries") and kwargs.get("snapshot") is None:
                time.sleep(self.slow_commit_only)
            self.inner.save(**kwargs)
        finally:
            self.inside.release()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def append(index: int, commit: int, data: bytes | None) -> Message:
    """The leader's append (term 2) after ``index``; one entry if ``data``."""
    entries = (Entry(2, index + 1, data),) if data is not None else ()
    prev_term = 1 if index == 1 else 2
    return Message(
        MsgType.APPEND,
        LEADER,
        FOLLOWER,
        2,
        log_term=prev_term,
        index=index,
        entries=entries,
        commit=commit,
    )


async def acked(transport: Captured, index: int, timeout: float = 5.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in transport.sent:
            if m.type == MsgType.APPEND_RESP and not m.reject and m.index >= index:
                return time.monotonic()
        await asyncio.sleep(0.001)
    raise AssertionError(f"no acknowledgement of {index}: {transport.sent}")


def test_follower_writes_on_the_loop_only_while_the_disk_thread_is_idle() -> None:
    async def scenario() -> None:
        config = NodeConfig(
            node_id=FOLLOWER,
            peers={FOLLOWER: "127.0.0.1:1", LEADER: "127.0.0.1:2"},
            data_dir="/nonexistent",
            tick_ms=1000,  # no election during the test
        )
        log_store, snapshots = open_memory_storage(MemoryDisk())
        store = WatchedStore(log_store, slow_commit_only=0.3)
        runtime = RaftRuntime(config, KVMachine(), store, snapshots)  # type: ignore[arg-type]
        transport = Captured()
        runtime.transport = transport  # type: ignore[assignment]
        await runtime.start()
        try:
            # Entry 2 arrives with nothing else on the disk thread: written
            # on the loop.
            runtime.receive([append(1, 1, encode_put("a", b"1"))])
            await acked(transport, 2)
            assert store.threads[-1] == threading.main_thread().name
            # The commit of 2 alone: a save on the disk thread (slow here).
            runtime.receive([append(2, 2, None)])
            await asyncio.sleep(0.05)
            assert store.inside.locked(), "the commit-only save is running"
            # Entry 3 arrives while that save runs: it must wait its turn on
            # the disk thread, not write alongside it.
            started = time.monotonic()
            runtime.receive([append(2, 2, encode_put("b", b"2"))])
            await acked(transport, 3)
            assert store.overlaps == 0, "two threads were inside the log store at once"
            assert time.monotonic() - started > 0.15, "acknowledged before the disk was free"
            assert runtime.machine.applied_index >= 2
        finally:
            await runtime.close()

    asyncio.run(scenario())

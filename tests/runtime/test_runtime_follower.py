"""A follower's runtime fed by a scripted leader (no network): a follower
writes appends on the event loop when the disk thread is idle (its
acknowledgement waits for that write), and never while the disk thread is
still busy with an earlier job -- the log store is not shared between threads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ramraft.consensus import Entry, Message, MsgType
from ramraft.server.config import NodeConfig
from ramraft.server.machines.kv import KVMachine, encode_put
from ramraft.server.runtime.loop import RaftRuntime
from ramraft.server.storage import MemoryDisk, open_memory_storage
from tests.httpcalls import wait_until_async

LEADER, FOLLOWER = "l", "f"


class Captured:
    """The transport: keeps what the follower sends."""

    def __init__(self) -> None:
        self.sent: list[Message] = []

    def send(self, messages: list[Message]) -> None:
        self.sent.extend(messages)

    async def close(self) -> None:
        pass


# A hang guard for the waits below, far beyond what any step takes.
GUARD_SECONDS = 30.0


class WatchedStore:
    """The log store, made to notice two threads inside it at once, and,
    once ``hold_commit_only()`` is called, to hold commit-only saves (which
    the runtime runs on its disk thread) until ``release()``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.inside = threading.Lock()
        self.overlaps = 0
        self.threads: list[str] = []
        self.holding = False
        self.commit_only_entered = threading.Event()
        self.released = threading.Event()

    def hold_commit_only(self) -> None:
        self.holding = True

    def release(self) -> None:
        self.holding = False
        self.released.set()

    def save(self, **kwargs: Any) -> None:
        self.threads.append(threading.current_thread().name)
        if not self.inside.acquire(blocking=False):
            self.overlaps += 1
            self.inner.save(**kwargs)
            return
        try:
            if self.holding and not kwargs.get("entries") and kwargs.get("snapshot") is None:
                self.commit_only_entered.set()
                self.released.wait(GUARD_SECONDS)
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


def has_ack(transport: Captured, index: int) -> bool:
    return any(
        m.type == MsgType.APPEND_RESP and not m.reject and m.index >= index for m in transport.sent
    )


async def acked(transport: Captured, index: int) -> None:
    await wait_until_async(lambda: has_ack(transport, index), GUARD_SECONDS, f"ack of {index}")


S = TypeVar("S")


async def start_follower(wrap: Callable[[Any], S], tick_ms: int) -> tuple[RaftRuntime, S, Captured]:
    """A started follower runtime (of LEADER's cluster) on a memory disk,
    its log store wrapped in ``wrap``, sending into a Captured transport."""
    config = NodeConfig(
        node_id=FOLLOWER,
        peers={FOLLOWER: "127.0.0.1:1", LEADER: "127.0.0.1:2"},
        data_dir="/nonexistent",
        tick_ms=tick_ms,
    )
    log_store, snapshots = open_memory_storage(MemoryDisk())
    store = wrap(log_store)
    runtime = RaftRuntime(config, KVMachine(), store, snapshots)  # type: ignore[arg-type]
    transport = Captured()
    runtime.transport = transport  # type: ignore[assignment]
    await runtime.start()
    return runtime, store, transport


def test_follower_writes_on_the_loop_only_while_the_disk_thread_is_idle() -> None:
    async def scenario() -> None:
        # A tick of 1 s: no election during the test.
        runtime, store, transport = await start_follower(WatchedStore, tick_ms=1000)
        try:
            # Entry 2 arrives with nothing else on the disk thread: written
            # on the loop.
            runtime.receive([append(1, 1, encode_put("a", b"1"))])
            await acked(transport, 2)
            assert store.threads[-1] == threading.main_thread().name
            # The commit of 2 alone: a save on the disk thread, held there.
            store.hold_commit_only()
            runtime.receive([append(2, 2, None)])
            entered = await asyncio.to_thread(store.commit_only_entered.wait, GUARD_SECONDS)
            assert entered and store.inside.locked(), "the commit-only save is running"
            # Entry 3 arrives while that save runs: it must wait its turn on
            # the disk thread, not write alongside it. Once the core holds
            # entry 3 the loop has handled it (a write on the loop would have
            # happened in that same turn).
            core = runtime.core
            assert core is not None
            runtime.receive([append(2, 2, encode_put("b", b"2"))])
            await wait_until_async(lambda: core.last_index >= 3, GUARD_SECONDS, "entry 3 stepped")
            assert store.overlaps == 0, "two threads were inside the log store at once"
            assert not has_ack(transport, 3), "acknowledged before the disk was free"
            store.release()
            await acked(transport, 3)
            assert store.overlaps == 0, "two threads were inside the log store at once"
            assert store.threads[-1] != threading.main_thread().name, "3 written on the loop"
            assert runtime.machine.applied_index >= 2
        finally:
            await runtime.close()

    asyncio.run(scenario())


class RecordingStore:
    """The log store, recording what each save carried."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.saves: list[tuple[int, int | None]] = []  # (entries, commit or None)

    def save(self, **kwargs: Any) -> None:
        hard_state = kwargs.get("hard_state")
        commit = hard_state.commit if hard_state is not None else None
        self.saves.append((len(kwargs.get("entries") or ()), commit))
        self.inner.save(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_commit_index_alone_rides_on_the_next_save_or_waits_a_tick() -> None:
    """A commit index that moved with nothing else to save costs no save of
    its own at once (it was a disk job per write): it rides on the next
    save, and only an idle node writes it alone, a tick later."""

    async def scenario() -> None:
        # The idle write comes a tick after the commit.
        runtime, store, transport = await start_follower(RecordingStore, tick_ms=300)
        try:
            runtime.receive([append(1, 1, encode_put("a", b"1"))])
            await acked(transport, 2)
            saves = len(store.saves)
            # The commit of 2 arrives alone: applied at once, not saved.
            runtime.receive([append(2, 2, None)])
            await wait_until_async(
                lambda: runtime.machine.applied_index >= 2, GUARD_SECONDS, "2 applied"
            )
            assert store.saves[saves:] == [], "a commit index alone was saved at once"
            # Entry 3 comes: its save carries the commit index of 2 too.
            runtime.receive([append(2, 2, encode_put("b", b"2"))])
            await acked(transport, 3)
            assert store.saves[saves:] == [(1, 2)], store.saves[saves:]
            # The commit of 3, then nothing: written alone once it waited.
            runtime.receive([append(3, 3, None)])
            await wait_until_async(
                lambda: store.saves[-1] == (0, 3), GUARD_SECONDS, "the idle commit index saved"
            )
        finally:
            await runtime.close()

    asyncio.run(scenario())


class PeerLinkLike(Captured):
    """A transport that hands messages out one turn of the event loop after
    ``send``, as the gRPC peer link's task does (runtime/transport.py),
    noting the follower's applied index as each leaves."""

    def __init__(self, runtime: RaftRuntime) -> None:
        super().__init__()
        self.runtime = runtime
        self.applied_when_left: dict[int, int] = {}  # acknowledged index -> applied index

    def send(self, messages: list[Message]) -> None:
        asyncio.get_running_loop().call_soon(self._leave, messages)

    def _leave(self, messages: list[Message]) -> None:
        self.sent.extend(messages)
        for m in messages:
            if m.type == MsgType.APPEND_RESP and not m.reject:
                self.applied_when_left.setdefault(m.index, self.runtime.machine.applied_index)


def test_a_followers_acknowledgement_leaves_before_it_applies_the_batch() -> None:
    """An append that brings entries and the commit of them: the follower
    saves, acknowledges and applies in one Ready. Its acknowledgement (what
    the leader's commit waits for) leaves before the entries are applied,
    not after the whole batch: at 64 writes in flight the apply had held
    it back 0.84 ms (bench/trace_write.py)."""

    async def scenario() -> None:
        runtime, _, _ = await start_follower(lambda store: store, tick_ms=1000)
        transport = PeerLinkLike(runtime)
        runtime.transport = transport  # type: ignore[assignment]
        try:
            runtime.receive([append(1, 1, encode_put("a", b"1"))])
            await acked(transport, 2)
            assert runtime.machine.applied_index == 1
            # Entry 3 with a commit index of 3: entries 2 and 3 are applied
            # in the Ready that acknowledges 3.
            runtime.receive([append(2, 3, encode_put("b", b"2"))])
            await acked(transport, 3)
            await wait_until_async(
                lambda: runtime.machine.applied_index >= 3, GUARD_SECONDS, "3 applied"
            )
            assert transport.applied_when_left[3] == 1, "the ack waited for the apply"
        finally:
            await runtime.close()

    asyncio.run(scenario())

"""When to take a snapshot, taking it, and restoring the state machine from one.

The :class:`SnapshotScheduler` decides after each loop turn whether a
snapshot is due (by entries or by bytes applied since the last one), takes
it without stopping the loop (the state machine gives a consistent view on
the loop; a worker thread writes it), then has the core compact its log and
the log store drop what the snapshot covers. It also restores the machine
from a stored snapshot: at start, and when the leader sent one.

A snapshot's data is the node's header (storage/snapshot_header.py: the
members' addresses) followed by the state machine's bytes. The file format
belongs to storage/; the Raft rules for compaction to the core; this module
only schedules and wires them together.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import structlog

from ramraft.consensus import RaftNode, SnapshotMeta
from ramraft.server.config import NodeConfig
from ramraft.server.machines.cluster import ClusterMachine, ClusterState
from ramraft.server.machines.statemachine import SnapshotError, StateMachine
from ramraft.server.request_errors import CannotSnapshot
from ramraft.server.runtime.peers import PeerDirectory
from ramraft.server.storage import (
    LogStore,
    SnapshotStore,
    read_snapshot_header,
    write_snapshot_header,
)

log = structlog.get_logger("ramraft.runtime")
T = TypeVar("T")

# What an entry costs in RAM besides its command bytes (the core's Entry
# object and its slot in the log; measured with tracemalloc: 137 bytes), so
# that snapshot_bytes bounds the log in RAM for small commands too.
ENTRY_OVERHEAD_BYTES = 144
# A snapshot due by its entry count waits until this many times the last
# snapshot's duration has passed since that one ended: its cost grows with
# the state, not with the entries, so a large state written fast would
# otherwise be snapshotted back to back (the bytes trigger, which bounds the
# log in RAM, is never delayed).
SNAPSHOT_PACE = 10
# Seconds before a snapshot the state machine refused (SnapshotError: an
# application model whose state is not plain data) is tried again.
SNAPSHOT_RETRY = 60.0


class SnapshotLoop(Protocol):
    """What the scheduler needs of the loop that owns the core (RaftRuntime)."""

    @property
    def core(self) -> RaftNode | None: ...

    @property
    def failed(self) -> BaseException | None: ...

    async def call(self, fn: Callable[[RaftNode], T]) -> T:
        """Run ``fn(core)`` inside the loop, between turns."""
        ...

    def run_on_disk(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``fn`` on the thread that owns the log store."""
        ...

    def emit(self, event: str, fields: dict[str, Any]) -> None:
        """Tell the metrics hooks."""
        ...


class SnapshotScheduler:
    def __init__(
        self,
        config: NodeConfig,
        machine: StateMachine,
        store: SnapshotStore,
        log_store: LogStore,
        peers: PeerDirectory,
        loop: SnapshotLoop,
    ) -> None:
        self.config = config
        self.machine = machine
        self.store = store
        self.log_store = log_store
        self.peers = peers
        self.loop = loop
        self.task: asyncio.Task[SnapshotMeta] | None = None  # the snapshot being taken
        # The entries applied since the last snapshot, in bytes of RAM.
        self.bytes_since_snapshot = 0
        self.last_seconds = 0.0  # how long the last snapshot took
        self.last_done = 0.0  # when it ended (time.monotonic())
        self.refused = ""  # why the state machine last refused a snapshot; "" once one is taken
        self._retry_at = 0.0  # time.monotonic() before which no refused snapshot is retried

    def note_applied(self, command_bytes: int) -> None:
        self.bytes_since_snapshot += command_bytes + ENTRY_OVERHEAD_BYTES

    def due(self, core: RaftNode, now: float) -> bool:
        """After snapshot_bytes bytes of entries (their commands and their
        objects: the log lives in RAM until a snapshot lets it be dropped),
        or after snapshot_entries entries once SNAPSHOT_PACE times the last
        snapshot's duration has passed since it ended."""
        if self.bytes_since_snapshot >= self.config.snapshot_bytes:
            return True
        return (
            core.applied_index - core.latest_snapshot.index >= self.config.snapshot_entries
            and now - self.last_done >= SNAPSHOT_PACE * self.last_seconds
        )

    def maybe_snapshot(self, core: RaftNode) -> None:
        now = time.monotonic()
        if (
            (self.task is None or self.task.done())
            and not self.loop.failed
            and now >= self._retry_at
            and self.due(core, now)
        ):
            try:
                self._start(core)
            except SnapshotError as exc:
                self._refused(exc, now)

    def _refused(self, exc: SnapshotError, now: float) -> None:
        """The machine cannot give its state (an application model holding
        something that is not plain data, which a command put there): every
        node meets it at about the same index, so stopping would stop the
        cluster. Serve on, say why and what to do, try again later."""
        self.refused = str(exc)
        self._retry_at = now + SNAPSHOT_RETRY
        log.error(
            "snapshot_refused",
            reason=self.refused,
            retry_in_seconds=SNAPSHOT_RETRY,
            action=(
                "a command stored a value that is not plain data in the model's state: make "
                "it store plain data (server/machines/embed.py: rules for commands) and "
                "restart the nodes with the fixed code, which replays the log; until then "
                "this node takes no snapshot and its log grows"
            ),
        )

    async def snapshot_now(self) -> int:
        """Take a snapshot at the applied index now (or wait for the one
        being taken); returns its index."""
        if self.task is None or self.task.done():
            core = self.loop.core
            assert core is not None, "the runtime has not started"
            try:
                self._start(core)
            except SnapshotError as exc:
                self._refused(exc, time.monotonic())
                raise CannotSnapshot(f"cannot take a snapshot: {exc}") from None
        assert self.task is not None
        meta = await asyncio.shield(self.task)
        return meta.index

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task

    def _retain(self, core: RaftNode, meta: SnapshotMeta) -> int:
        """How many entries before the snapshot to keep in RAM for slow
        followers: retain_entries, but no more than retain_bytes of them."""
        budget = self.config.retain_bytes
        kept = 0
        index = meta.index
        while kept < self.config.retain_entries and index > core.log.offset:
            budget -= len(core.log.entries[index - core.log.offset - 1].data)
            if budget < 0:
                break
            kept += 1
            index -= 1
        return kept

    def _start(self, core: RaftNode) -> None:
        meta = core.snapshot_meta(core.applied_index)
        job = self.machine.snapshot()  # a consistent view, taken now, on the loop
        cluster = _cluster_record(self.machine)  # taken at the same moment
        self.bytes_since_snapshot = 0
        addresses = dict(self.peers.addresses)
        started = time.perf_counter()

        def write() -> int:
            try:
                with self.store.create(meta) as writer:
                    write_snapshot_header(writer, addresses, cluster)
                    size = job.write_to(writer)
                    writer.commit()
                return size
            finally:
                job.close()

        async def run() -> SnapshotMeta:
            size = await asyncio.to_thread(write)
            await self.loop.call(
                lambda core: core.compact(meta, retain_entries=self._retain(core, meta))
            )
            await self.loop.run_on_disk(self.log_store.compact, meta.index)
            seconds = time.perf_counter() - started
            self.last_seconds, self.last_done = seconds, time.monotonic()
            self.refused = ""
            log.info("snapshot_taken", index=meta.index, bytes=size, seconds=round(seconds, 3))
            self.loop.emit("snapshot", {"index": meta.index, "bytes": size, "seconds": seconds})
            return meta

        self.task = asyncio.get_running_loop().create_task(run(), name="snapshot")

    # ---- restoring ------------------------------------------------------------------------

    def restore(self, index: int) -> None:
        """Replace the state machine by the stored snapshot at ``index``."""
        with self.store.open(index) as reader:
            header = read_snapshot_header(reader)
            if isinstance(self.machine, ClusterMachine):
                # Refuses (ApplyHalted) a record this code cannot run, before
                # the machines are touched.
                self.machine.load_state(ClusterState.from_plain(header.cluster))
            self.machine.restore(reader)
        self.peers.learn_from_snapshot(header.addresses)
        log.info("snapshot_restored", index=index, applied=self.machine.applied_index)

    async def install(self, index: int) -> None:
        """Restore from the snapshot the leader sent (stored at ``index``)."""
        if getattr(self.machine, "restore_in_thread", False):
            # The machine builds the new state aside and swaps it in at
            # the end, so reads on the loop meanwhile see the old state.
            await asyncio.to_thread(self.restore, index)
        else:
            # An application model is restored in place: on the loop, so
            # no page handler ever sees it half restored.
            self.restore(index)
        self.loop.emit("snapshot_installed", {"index": index})


def _cluster_record(machine: StateMachine) -> dict[str, Any] | None:
    """What the snapshot header records of the cluster: nothing when the
    record has its defaults (the pinned header bytes every release reads)."""
    if isinstance(machine, ClusterMachine) and machine.state != ClusterState():
        return machine.state.to_plain()
    return None

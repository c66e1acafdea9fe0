"""Watches in one process (machines/history.py, rpc/watch.py): replay then
live events, each revision whole and once, compacted answers, slow watches,
progress, and the limits -- driven by a key-value machine, no network."""

from __future__ import annotations

import asyncio
import threading

import pytest

from ramraft.server.machines.cluster import ClusterMachine, encode_versions
from ramraft.server.machines.history import EventHistory
from ramraft.server.machines.kv import KVMachine, encode_delete, encode_put, encode_txn
from ramraft.server.machines.kvops import Event, EventKind, Txn, TxnOp, TxnOpKind
from ramraft.server.rpc.watch import WatchHub, WatchLimits, WatchOut, WatchSpec


class Node:
    """A key-value machine at key-value version 2 feeding a history and a hub."""

    def __init__(self, history: EventHistory | None = None, **limits: object) -> None:
        self.kv = KVMachine()
        self.cluster = ClusterMachine(self.kv, kv=self.kv)
        self.history = history or EventHistory()
        self.kv.on_events = self.history.append
        self.kv.on_reset = self.history.reset
        self.hub = WatchHub(self.history, WatchLimits(**limits), lambda: None)  # type: ignore[arg-type]
        self.index = 0
        self.apply(encode_versions(1, 2))

    def apply(self, command: bytes) -> object:
        self.index += 1
        return self.cluster.apply(self.index, command)

    def put(self, key: str, value: bytes = b"v") -> None:
        self.apply(encode_put(key, value))


async def batch(stream: object, timeout: float = 2.0) -> list[WatchOut]:
    return await asyncio.wait_for(stream.next_batch(), timeout)  # type: ignore[attr-defined]


def events(outs: list[WatchOut]) -> list[tuple[int, str]]:
    return [(rev, e.key) for o in outs for rev, evs in o.events for e in evs]


def test_replay_then_live_in_order_each_revision_once() -> None:
    async def scenario() -> None:
        node = Node()
        for n in range(5):
            node.put(f"a/{n}")
        node.put("b/0")
        stream = node.hub.open()
        stream.create(WatchSpec("a/", prefix=True, start_revision=3))
        first = await batch(stream)
        assert first[0].created and first[0].watch_id == 1
        assert events(first) == [(3, "a/1"), (4, "a/2"), (5, "a/3"), (6, "a/4")]
        # Live: a transaction's changes come in one response, one revision.
        node.apply(
            encode_txn(
                Txn(
                    (),
                    (
                        TxnOp(TxnOpKind.PUT, "a/x", b"1"),
                        TxnOp(TxnOpKind.PUT, "b/x", b"1"),
                        TxnOp(TxnOpKind.PUT, "a/y", b"1"),
                    ),
                    (),
                )
            )
        )
        node.apply(encode_delete("a/0"))
        live = await batch(stream)
        assert events(live) == [(8, "a/x"), (8, "a/y"), (9, "a/0")]
        assert [len(evs) for o in live for _, evs in o.events] == [2, 1]
        deleted = live[-1].events[-1][1][0]
        assert deleted == Event(EventKind.DELETE, "a/0", b"", 0, 9, 0, 0)
        # Nothing more: the next batch waits.
        with pytest.raises(TimeoutError):
            await batch(stream, 0.2)
        stream.close()
        assert node.hub.watches == 0

    asyncio.run(scenario())


def test_from_now_and_a_single_key() -> None:
    async def scenario() -> None:
        node = Node()
        node.put("k", b"old")
        stream = node.hub.open()
        stream.create(WatchSpec("k"))
        created = await batch(stream)
        assert created[0].created and created[0].revision == node.kv.revision
        node.put("kk")
        node.put("k", b"new")
        got = await batch(stream)
        assert events(got) == [(node.kv.revision, "k")]

    asyncio.run(scenario())


def test_a_start_older_than_the_history_is_compacted() -> None:
    async def scenario() -> None:
        node = Node(EventHistory(max_revisions=5))
        for n in range(20):
            node.put(f"k{n}")
        assert node.history.floor == node.kv.revision - 4
        stream = node.hub.open()
        stream.create(WatchSpec("", prefix=True, start_revision=2))
        (answer,) = await batch(stream)
        assert answer.canceled and answer.compact_revision == node.history.floor
        assert "older than the history" in answer.cancel_reason
        stream.create(WatchSpec("", prefix=True, start_revision=node.history.floor))
        (created, replay) = await batch(stream)
        assert created.created and not created.canceled
        assert len(replay.events) == 5

    asyncio.run(scenario())


def test_a_restored_snapshot_cancels_watches_that_would_miss_revisions() -> None:
    """A node that installs a snapshot answers its open watches compacted:
    the revisions between its old state and the snapshot's are not in its
    history. A watch waiting for a later revision is not affected."""

    async def scenario() -> None:
        node = Node()
        node.put("k")
        stream = node.hub.open()
        stream.create(WatchSpec("", prefix=True))
        stream.create(WatchSpec("", prefix=True, start_revision=1000))
        await batch(stream)
        # The snapshot of a node that is ahead, restored in a worker thread
        # (as the runtime does).
        ahead = Node()
        for n in range(30):
            ahead.put(f"x{n}")
        import io

        data = io.BytesIO()
        ahead.kv.snapshot().write_to(data)
        data.seek(0)
        worker = threading.Thread(target=node.kv.restore, args=(data,))
        worker.start()
        worker.join()
        outs = await batch(stream)
        assert [(o.watch_id, o.canceled, o.compact_revision) for o in outs] == [
            (1, True, ahead.kv.revision + 1)
        ]
        assert list(stream.watches) == [2]

    asyncio.run(scenario())


def test_a_slow_watch_is_canceled_and_holds_no_memory() -> None:
    async def scenario() -> None:
        node = Node(buffer_bytes=2000, batch_bytes=500)
        stream = node.hub.open()
        stream.create(WatchSpec("", prefix=True))
        await batch(stream)
        # The stream is not read while 100 changes of ~110 bytes go by.
        for n in range(100):
            node.put(f"k{n:03}", b"x" * 40)
        (out,) = await batch(stream)
        assert out.canceled and "fell" in out.cancel_reason
        assert "--watch-buffer-bytes" in out.cancel_reason
        assert node.hub.canceled_slow == 1 and not stream.watches

    asyncio.run(scenario())


def test_a_watch_that_keeps_up_is_sent_in_bounded_batches() -> None:
    async def scenario() -> None:
        node = Node(buffer_bytes=1 << 20, batch_bytes=1000)
        stream = node.hub.open()
        stream.create(WatchSpec("", prefix=True, start_revision=2))
        await batch(stream)
        for n in range(100):
            node.put(f"k{n:03}", b"x" * 40)
        seen: list[int] = []
        while len(seen) < 100:
            outs = await batch(stream)
            assert all(sum(e.size() for _, es in o.events for e in es) < 1200 for o in outs)
            seen += [rev for rev, _ in events(outs)]
        assert seen == list(range(2, 102))

    asyncio.run(scenario())


def test_progress_notifications() -> None:
    async def scenario() -> None:
        node = Node(progress_interval=0.05)
        node.put("other")
        stream = node.hub.open()
        stream.create(WatchSpec("quiet", progress_notify=True))
        await batch(stream)
        node.put("other")
        (progress,) = await batch(stream)
        assert progress.progress and progress.revision == node.kv.revision
        # On request, for every caught-up watch at once.
        stream.create(WatchSpec("also-quiet"))
        await batch(stream)
        stream.request_progress()
        outs = await batch(stream)
        assert sorted(o.watch_id for o in outs if o.progress) == [1, 2]

    asyncio.run(scenario())


def test_a_stopping_node_tells_each_caught_up_watch_its_revision() -> None:
    """WatchHub.shut_down: the last batch of a stream tells every watch that
    has everything the node's revision (a quiet watch's last event may be
    long before it: resuming from there on a node restarted from a
    snapshot would be refused as compacted), and a watch still behind gets
    its events, never a progress past them."""

    async def scenario() -> None:
        node = Node(batch_bytes=1)  # one revision per response
        stream = node.hub.open()
        stream.create(WatchSpec("quiet"))
        stream.create(WatchSpec("busy"))
        await batch(stream)
        busy_revisions = []
        for _ in range(3):
            node.put("other")
            node.put("busy")
            busy_revisions.append(node.kv.revision)
        head = node.kv.revision
        node.hub.shut_down()
        outs = await batch(stream)
        assert stream.over
        quiet = [o for o in outs if o.watch_id == 1]
        assert [(o.progress, o.revision) for o in quiet] == [(True, head)]
        busy = [o for o in outs if o.watch_id == 2]
        assert busy and not any(o.progress for o in busy), busy
        assert events(busy) == [(busy_revisions[0], "busy")]  # one revision per response

    asyncio.run(scenario())


def test_ids_and_the_watch_limit() -> None:
    async def scenario() -> None:
        node = Node(max_watches=2)
        stream = node.hub.open()
        stream.create(WatchSpec("a", watch_id=7))
        stream.create(WatchSpec("b", watch_id=7))
        stream.create(WatchSpec("c"))
        stream.create(WatchSpec("d"))
        outs = await batch(stream)
        assert [(o.watch_id, o.canceled) for o in outs] == [
            (7, False),
            (7, True),
            (1, False),
            (2, True),
        ]
        assert "in use" in outs[1].cancel_reason and "--max-watches" in outs[3].cancel_reason
        waiting = asyncio.ensure_future(batch(stream))  # the sender waits...
        await asyncio.sleep(0.05)
        stream.cancel(7)  # ... and the answer to a cancel wakes it
        (answer,) = await waiting
        assert (answer.watch_id, answer.canceled) == (7, True)
        stream.create(WatchSpec("a", watch_id=7))
        await batch(stream)
        stream.cancel(7)
        stream.cancel(99)
        outs = await batch(stream)
        assert [(o.watch_id, o.canceled, o.cancel_reason == "") for o in outs] == [
            (7, True, True),
            (99, True, False),
        ]
        assert node.hub.watches == 1

    asyncio.run(scenario())


def test_a_watch_on_a_key_no_put_could_write_is_refused() -> None:
    """A key over the key limit (or an empty one without ``prefix``) could
    match nothing, and each watch holds its key: refused, not held (10,000
    watches of 2 MB keys would hold 20 GB)."""

    async def scenario() -> None:
        node = Node(max_key_bytes=8)
        stream = node.hub.open()
        stream.create(WatchSpec("k" * 9))
        stream.create(WatchSpec("p" * 9, prefix=True))
        stream.create(WatchSpec(""))
        stream.create(WatchSpec("k" * 8))
        stream.create(WatchSpec("", prefix=True))
        outs = await batch(stream)
        assert [(o.watch_id, o.created, o.canceled) for o in outs] == [
            (1, True, True),
            (2, True, True),
            (3, True, True),
            (4, True, False),
            (5, True, False),
        ]
        assert "9 bytes; the limit is 8" in outs[0].cancel_reason
        assert "9 bytes; the limit is 8" in outs[1].cancel_reason
        assert "needs a key" in outs[2].cancel_reason
        assert node.hub.watches == 2

    asyncio.run(scenario())


def test_history_bounds_and_lag() -> None:
    history = EventHistory(max_revisions=1000, max_bytes=1000)
    event = Event(EventKind.PUT, "k", b"x" * 36, 1, 1, 1, 0)  # 101 bytes
    for revision in range(1, 51):
        history.append(revision, (event,))
    held, size = history.held()
    assert held == 9 and size <= 1000 and history.floor == 42 and history.head == 50
    assert history.lag(50) == 101 and history.lag(51) == 0 and history.lag(42) == size
    revisions, following = history.read(45, lambda e: True, 250)
    assert [r for r, _ in revisions] == [45, 46, 47] and following == 48
    with pytest.raises(ValueError, match="older than the history"):
        history.read(10, lambda e: True, 100)
    history.reset(70)
    assert history.floor == 71 and history.head == 70 and history.held() == (0, 0)

"""The key-value API etcd users expect (issue 16), on three real node
processes: revisions and headers, delete-range, transactions, watches and
leases. The bounds on time are bounds on behaviour with generous safety
margins (named SAFETY_*), never speed assertions."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ramraft.client import (
    Client,
    Compare,
    FailedPrecondition,
    NotFound,
    RamraftError,
    TxnOp,
    WatchCompacted,
    WatchEvent,
)
from ramraft.proto import kv_pb2, kv_pb2_grpc
from tests.server.procs import ProcessCluster

# Safety timeouts and margins for a loaded 2-core machine (not measurements).
SWITCH_WAIT = 60.0
SAFETY_EXPIRY = 5.0
"""How late past its ttl (and the election timeouts a failover adds) a lease
may still be seen: the leader's check interval, a commit, a slow read."""
SAFETY_CATCH_UP = 60.0


def wait_kv2(cluster: ProcessCluster) -> str:
    """Wait until every node runs key-value version 2; returns the leader."""
    leader = cluster.wait_for_leader()
    cluster.wait_for_kv2(SWITCH_WAIT)
    return leader


def starting_at(first: str, cluster: ProcessCluster, **kwargs: object) -> Client:
    """A client whose first endpoint is ``first`` (the ring starts at a
    random one: pick a seed that makes it 0)."""
    ids = [first] + [i for i in cluster.ids if i != first]
    seed = next(s for s in range(1000) if random.Random(s).randrange(len(ids)) == 0)
    return Client(cluster.endpoints(ids), rng=random.Random(seed), **kwargs)  # type: ignore[arg-type]


class SmallLimits(ProcessCluster):
    def argv(self, node_id: str) -> list[str]:
        return [
            *super().argv(node_id),
            "--max-delete-range-keys",
            "20",
            "--watch-history-revisions",
            "200",
        ]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    with SmallLimits(tmp_path_factory.mktemp("kvapi")) as c:
        wait_kv2(c)
        yield c


# -- revisions, headers, delete-range -----------------------------------------------------


def test_revisions_and_headers_through_a_follower(cluster: ProcessCluster) -> None:
    leader = cluster.wait_for_leader()
    follower = next(i for i in cluster.ids if i != leader)
    channel = grpc.insecure_channel(cluster.grpc[follower])
    kv = kv_pb2_grpc.KVStub(channel)
    first = kv.Put(kv_pb2.PutRequest(key="rev/a", value=b"1"))
    second = kv.Put(kv_pb2.PutRequest(key="rev/a", value=b"2"))
    assert second.header.revision == first.header.revision + 1
    assert second.header.member_id == follower and second.header.raft_term > 0
    assert second.header.cluster_id
    got = kv.Get(kv_pb2.GetRequest(key="rev/a"))
    assert (got.create_revision, got.mod_revision, got.version) == (
        first.header.revision,
        second.header.revision,
        2,
    )
    assert got.header.revision >= second.header.revision
    # A compare-and-swap on the mod revision: the read-modify-write loop.
    stale = kv.CompareAndSwap(
        kv_pb2.CompareAndSwapRequest(
            key="rev/a", value=b"3", expected_mod_revision=first.header.revision
        )
    )
    assert not stale.swapped and stale.current == b"2"
    assert stale.mod_revision == second.header.revision and stale.version == 2
    fresh = kv.CompareAndSwap(
        kv_pb2.CompareAndSwapRequest(
            key="rev/a", value=b"3", expected_mod_revision=stale.mod_revision
        )
    )
    assert fresh.swapped and fresh.current == b"2" and fresh.version == 3
    assert fresh.mod_revision == fresh.header.revision == second.header.revision + 1
    # The old CAS keeps its meaning and now carries revisions too.
    plain = kv.CompareAndSwap(kv_pb2.CompareAndSwapRequest(key="rev/a", expected=b"3", value=b"4"))
    assert plain.swapped and plain.version == 4
    items = kv.Range(kv_pb2.RangeRequest(prefix="rev/")).items
    assert [(i.key, i.mod_revision, i.version) for i in items] == [
        ("rev/a", plain.header.revision, 4)
    ]
    channel.close()


def test_delete_prefix_is_one_revision_and_bounded(cluster: ProcessCluster) -> None:
    with cluster.client() as c:
        for n in range(5):
            c.put(f"dp/{n}", b"x")
        c.put("dpx", b"outside")
        before = c.get_result("dpx").revision
        assert c.delete_prefix("dp/") == 5
        assert c.range("dp/").items == [] and c.get("dpx") == b"outside"
        assert c.get_result("dpx").revision == before + 1, "five deletes, one revision"
        for n in range(21):
            c.put(f"big/{n:02}", b"x")
        with pytest.raises(FailedPrecondition, match="21 keys start with 'big/'"):
            c.delete_prefix("big/")
        assert len(c.range("big/").items) == 21, "nothing deleted"


def test_txn_and_delete_range_on_a_kv_stream(cluster: ProcessCluster) -> None:
    channel = grpc.insecure_channel(cluster.grpc[cluster.ids[0]])
    kv = kv_pb2_grpc.KVStub(channel)
    txn = kv_pb2.TxnRequest(
        compare=[kv_pb2.Compare(key="st/k", version=0)],
        success=[kv_pb2.RequestOp(put=kv_pb2.PutRequest(key="st/k", value=b"v"))],
    )
    requests = [
        kv_pb2.StreamRequest(id=1, txn=txn),
        kv_pb2.StreamRequest(id=2, txn=txn),
    ]
    answers = {r.id: r for r in kv.Stream(iter(requests[:1]))}
    answers.update({r.id: r for r in kv.Stream(iter(requests[1:]))})
    assert answers[1].code == 0 and answers[1].txn.succeeded
    assert answers[2].code == 0 and not answers[2].txn.succeeded
    deleted = next(
        iter(
            kv.Stream(
                iter(
                    [
                        kv_pb2.StreamRequest(
                            id=3, delete_range=kv_pb2.DeleteRangeRequest(prefix="st/")
                        )
                    ]
                )
            )
        )
    )
    assert deleted.code == 0 and deleted.delete_range.deleted == 1
    channel.close()


def test_bad_transactions_are_refused_before_proposing(cluster: ProcessCluster) -> None:
    channel = grpc.insecure_channel(cluster.grpc[cluster.ids[1]])
    kv = kv_pb2_grpc.KVStub(channel)
    put = kv_pb2.RequestOp(put=kv_pb2.PutRequest(key="bad/k", value=b"1"))
    cases = {
        "write key 'bad/k' twice": kv_pb2.TxnRequest(success=[put, put]),
        "names no target": kv_pb2.TxnRequest(compare=[kv_pb2.Compare(key="bad/k")]),
        "takes no session": kv_pb2.TxnRequest(
            success=[
                kv_pb2.RequestOp(
                    put=kv_pb2.PutRequest(
                        key="bad/k", session=kv_pb2.Session(client_id=1, sequence=1)
                    )
                )
            ]
        ),
        "the limit is 128": kv_pb2.TxnRequest(success=[put] * 129),
        "key must not be empty": kv_pb2.TxnRequest(
            success=[kv_pb2.RequestOp(get=kv_pb2.GetRequest(key=""))]
        ),
        "unknown consistency 5": kv_pb2.TxnRequest(
            success=[kv_pb2.RequestOp(get=kv_pb2.GetRequest(key="bad/k", consistency=5))]
        ),
        "unknown consistency 7": kv_pb2.TxnRequest(
            failure=[kv_pb2.RequestOp(range=kv_pb2.RangeRequest(prefix="bad/", consistency=7))]
        ),
        "prefix is 2000 bytes": kv_pb2.TxnRequest(
            success=[kv_pb2.RequestOp(delete_range=kv_pb2.DeleteRangeRequest(prefix="p" * 2000))]
        ),
    }
    for words, request in cases.items():
        with pytest.raises(grpc.RpcError) as caught:
            kv.Txn(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, words
        assert words in (caught.value.details() or ""), caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:  # matches no key, so never logged
        kv.DeleteRange(kv_pb2.DeleteRangeRequest(prefix="p" * 2000))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "prefix is 2000 bytes" in (caught.value.details() or "")
    lease = kv_pb2_grpc.LeaseStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        kv.Put(kv_pb2.PutRequest(key="bad/leased", value=b"1", lease=424242))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as caught:
        lease.Revoke(kv_pb2.LeaseRevokeRequest(id=424242))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as caught:
        lease.Grant(kv_pb2.LeaseGrantRequest(ttl=0))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    channel.close()


# -- transactions: atomic under concurrent writers -----------------------------------------

ACCOUNTS = [f"bank/{n}" for n in range(5)]
TOTAL = 1000


def test_transfers_keep_the_total_at_every_read(cluster: ProcessCluster) -> None:
    """Concurrent transfers between accounts, each a transaction that checks
    both accounts' mod revisions; readers on every node read all accounts at
    once (a range, and a transaction of gets) and must always see the same
    total."""
    with cluster.client() as c:
        c.txn(success=[TxnOp.put(a, str(TOTAL // len(ACCOUNTS))) for a in ACCOUNTS])
    stop = threading.Event()
    problems: list[str] = []
    transfers = [0]
    reads = [0]

    def transfer(seed: int, node: str) -> None:
        rng = random.Random(seed)
        with starting_at(node, cluster, timeout=10) as c:
            for _ in range(40):
                a, b = rng.sample(ACCOUNTS, 2)
                try:
                    page = c.range("bank/")
                    kvs = {kv.key: kv for kv in page.kvs}
                    have = int(kvs[a].value)
                    amount = rng.randint(0, have)
                    result = c.txn(
                        [
                            Compare.mod_revision(a, "==", kvs[a].mod_revision),
                            Compare.mod_revision(b, "==", kvs[b].mod_revision),
                        ],
                        [
                            TxnOp.put(a, str(have - amount)),
                            TxnOp.put(b, str(int(kvs[b].value) + amount)),
                        ],
                    )
                except RamraftError:
                    continue  # the invariant holds whether or not it applied
                if result.succeeded:
                    transfers[0] += 1

    def read(node: str) -> None:
        with starting_at(node, cluster, timeout=10) as c:
            while not stop.is_set():
                try:
                    total = sum(int(v) for _, v in c.range("bank/").items)
                    result = c.txn(success=[TxnOp.get(a) for a in ACCOUNTS])
                except RamraftError:
                    continue
                in_txn = sum(int(r.kv.value) for r in result.responses if r.kv is not None)
                reads[0] += 1
                if total != TOTAL or in_txn != TOTAL:
                    problems.append(f"read totals {total} (range), {in_txn} (txn)")

    writers = [threading.Thread(target=transfer, args=(n, cluster.ids[n % 3])) for n in range(3)]
    readers = [threading.Thread(target=read, args=(node,)) for node in cluster.ids]
    for t in writers + readers:
        t.start()
    for t in writers:
        t.join(timeout=300)
    stop.set()
    for t in readers:
        t.join(timeout=60)
    assert not problems, problems[:5]
    assert transfers[0] > 0 and reads[0] > 0
    with cluster.client() as c:
        assert sum(int(v) for _, v in c.range("bank/").items) == TOTAL


# -- watches ---------------------------------------------------------------------------------


def test_a_watch_from_a_compacted_revision_is_answered_compacted(cluster: ProcessCluster) -> None:
    with cluster.client() as c:
        for n in range(210):  # more than --watch-history-revisions on every node
            c.put("compact/k", str(n))
        revision = c.get_result("compact/k").revision
        channel = grpc.insecure_channel(cluster.grpc[cluster.ids[0]])
        create = kv_pb2.WatchRequest(
            create=kv_pb2.WatchCreateRequest(key="compact/", prefix=True, start_revision=2)
        )
        first = next(iter(kv_pb2_grpc.KVStub(channel).Watch(iter([create]))))
        assert first.canceled and first.compact_revision > 2
        assert "older than the history" in first.cancel_reason
        channel.close()
        with pytest.raises(WatchCompacted) as caught:
            next(iter(c.watch("compact/", prefix=True, start_revision=2)))
        assert caught.value.compact_revision > 2
        # From a revision still held it replays.
        with c.watch("compact/", prefix=True, start_revision=revision) as w:
            event = next(iter(w))
        assert isinstance(event, WatchEvent) and event.revision == revision


def test_a_watch_on_a_follower_sees_every_change_once_in_order_across_kills(
    tmp_path: Path,
) -> None:
    """The leader is killed, then the node the watcher is on: the watcher
    resumes by revision on another node. Every change of the prefix (the
    only keys written here) comes exactly once, in revision order: the
    revisions seen are exactly first..last, with no gap and no repeat."""
    writes = 240
    with ProcessCluster(tmp_path) as cluster:
        leader = wait_kv2(cluster)
        follower = next(i for i in cluster.ids if i != leader)
        with cluster.client(timeout=30) as writer:
            writer.put("w/start", b"")
            first = writer.get_result("w/start").mod_revision
        seen: list[WatchEvent] = []
        watcher_nodes: list[str] = []
        watch_client = starting_at(follower, cluster, timeout=30)
        watch = watch_client.watch("w/", prefix=True, start_revision=first)

        def collect() -> None:
            for event in watch:
                assert isinstance(event, WatchEvent)
                seen.append(event)
                if not watcher_nodes or watcher_nodes[-1] != watch._endpoint:
                    watcher_nodes.append(watch._endpoint)

        collector = threading.Thread(target=collect)
        collector.start()
        acknowledged: set[bytes] = set()
        with cluster.client(timeout=30) as writer:
            for n in range(writes):
                if n == writes // 3:
                    cluster.kill(cluster.wait_for_leader())
                if n == writes // 3 + 20:
                    for node in cluster.ids:
                        if node not in cluster.alive():
                            cluster.restart(node)
                if n == 2 * writes // 3:
                    on = next(i for i in cluster.ids if cluster.grpc[i] == watch._endpoint)
                    cluster.kill(on)
                    cluster.wait_for_leader()
                if n == 2 * writes // 3 + 20:
                    for node in cluster.ids:
                        if node not in cluster.alive():
                            cluster.restart(node)
                value = str(n).encode()
                try:
                    writer.put(f"w/{n % 7}", value)
                    acknowledged.add(value)
                except RamraftError:
                    pass  # may or may not be applied: the watch must agree either way
            last = writer.range("w/").revision
        cluster.wait_until(
            lambda: bool(seen) and seen[-1].revision >= last, SAFETY_CATCH_UP, "watch caught up"
        )
        watch.close()
        collector.join(timeout=30)
        watch_client.close()
        revisions = [e.revision for e in seen]
        assert revisions == list(range(first, last + 1)), (revisions[:5], first, last)
        assert acknowledged <= {e.value for e in seen}
        assert cluster.grpc[follower] == watcher_nodes[0] and len(watcher_nodes) >= 2, watcher_nodes


def test_a_quiet_watch_resumes_after_its_node_stops_though_history_moved_on(
    cluster: ProcessCluster,
) -> None:
    """A watch on a prefix nobody writes, while more revisions than the
    nodes' history holds (--watch-history-revisions 200) go to other keys;
    then its node stops (SIGTERM). The node's last word to the watch is its
    revision, so the watch resumes on another node from there and sees the
    next change. Resumed from its start (the revision after its last event)
    it was refused as compacted by every node, though it had missed
    nothing; the same happened on nodes restarted from a snapshot, whose
    history starts there (seen with `ramraft watch` across a rolling
    restart)."""
    leader = cluster.wait_for_leader()
    on = next(i for i in cluster.ids if i != leader)
    seen: list[object] = []
    with cluster.client() as writer, starting_at(on, cluster, timeout=30) as watcher:
        start = writer.range("quiet/").revision + 1
        watch = watcher.watch("quiet/", prefix=True, start_revision=start)

        def collect() -> None:
            with contextlib.suppress(RamraftError):
                seen.append(next(iter(watch)))

        collector = threading.Thread(target=collect)
        collector.start()
        try:
            cluster.wait_until(
                lambda: watch._endpoint == cluster.grpc[on], SAFETY_CATCH_UP, "watch open on it"
            )
            for n in range(250):
                writer.put(f"busy/{n % 5}", str(n))
            assert cluster.stop(on) == 0
            writer.put("quiet/now", b"1")
            cluster.wait_until(lambda: bool(seen), SAFETY_CATCH_UP, "the watch's event")
        finally:
            watch.close()
            collector.join(timeout=30)
            cluster.restart(on)
            cluster.wait_serving([on])
    (event,) = seen
    assert isinstance(event, WatchEvent) and event.key == "quiet/now", event


def test_an_async_watch_resumes_and_a_progress_request_is_answered(
    cluster: ProcessCluster,
) -> None:
    import asyncio

    from ramraft.client import AsyncClient, WatchProgress

    async def scenario() -> None:
        async with AsyncClient(cluster.endpoints(), timeout=10) as c:
            await c.put("aw/x", b"0")
            start = (await c.get_result("aw/x")).revision
            got: list[int] = []
            async with c.watch("aw/", prefix=True, start_revision=start, progress=True) as w:
                await c.put("aw/x", b"1")
                async for item in w:
                    if isinstance(item, WatchProgress):
                        continue
                    got.append(item.revision)
                    if len(got) == 2:
                        break
            assert got == [start, start + 1]

    asyncio.run(scenario())


# -- leases --------------------------------------------------------------------------------


def poll_gone(c: Client, key: str, give_up: float) -> tuple[float, float]:
    """Read ``key`` until it is gone; returns (send, answer) times of the
    first read that found it absent."""
    while time.monotonic() < give_up:
        sent = time.monotonic()
        try:
            found = c.get_result(key).found
        except RamraftError:
            continue  # a failover: reads resume on the new leader
        answered = time.monotonic()
        if not found:
            return sent, answered
        time.sleep(0.05)
    raise AssertionError(f"{key} still there at the give-up time")


def test_a_leased_key_lives_its_ttl_and_no_longer_also_across_a_failover(
    tmp_path: Path,
) -> None:
    ttl = 3
    with ProcessCluster(tmp_path) as cluster:
        wait_kv2(cluster)
        election = 2 * cluster.election_timeout  # the longest a follower waits
        with cluster.client(timeout=20) as c:
            # A grant, no keep-alive: gone after ttl from the grant's send.
            sent = time.monotonic()
            lease = c.lease_grant(ttl)
            c.put("lease/plain", b"x", lease=lease.id)
            _, answered = poll_gone(c, "lease/plain", sent + ttl + SAFETY_EXPIRY + 30)
            assert answered >= sent + ttl, f"gone {answered - sent:.2f}s after the grant"
            assert answered <= sent + ttl + SAFETY_EXPIRY, f"{answered - sent:.2f}s"
            assert c.lease_time_to_live(lease.id).ttl == -1

            # Kept alive for two ttls with the context manager: never gone.
            with c.lease(ttl) as kept:
                c.put("lease/kept", b"x", lease=kept.id)
                until = time.monotonic() + 2 * ttl
                while time.monotonic() < until:
                    assert c.get("lease/kept") == b"x"
                    time.sleep(0.1)
            assert c.get("lease/kept") is None, "revoked at the end of the with block"

            # A keep-alive, then the leader dies: not gone before ttl from the
            # keep-alive's send; gone by the kill + ttl + the election
            # timeouts of the failover (the new leader restarts every lease
            # at ttl + one election timeout).
            lease = c.lease_grant(ttl)
            c.put("lease/failover", b"x", lease=lease.id)
            renewed = time.monotonic()
            assert c.lease_keep_alive(lease.id) == ttl
            killed_at = time.monotonic()
            cluster.kill(cluster.wait_for_leader())
            _, answered = poll_gone(
                c, "lease/failover", killed_at + ttl + 3 * election + SAFETY_EXPIRY + 30
            )
            assert answered >= renewed + ttl, f"gone {answered - renewed:.2f}s after keep-alive"
            bound = killed_at + ttl + 3 * election + SAFETY_EXPIRY
            assert answered <= bound, f"gone {answered - killed_at:.2f}s after the kill"
            with pytest.raises(NotFound):
                c.lease_revoke(lease.id)

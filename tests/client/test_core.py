"""Unit tests of the decisions both clients share (client/_core.py)."""

from __future__ import annotations

import asyncio
import inspect
import random

import pytest

from ramraft.client._core import (
    CallAttempts,
    EndpointRing,
    RetryPolicy,
    SessionTracker,
    leader_hint,
    parse_endpoints,
)


def test_parse_endpoints() -> None:
    assert parse_endpoints("a:1, b:2,,a:1") == ["a:1", "b:2"]
    assert parse_endpoints(["[::1]:7001", "node-0.ramraft.svc:7001"]) == [
        "[::1]:7001",
        "node-0.ramraft.svc:7001",
    ]
    for bad in ["a", "a:", ":1", "a:0", "a:70000", "a b:1", "http://a:1"]:
        with pytest.raises(ValueError, match="invalid endpoint"):
            parse_endpoints(bad)
    with pytest.raises(ValueError, match="no endpoints"):
        parse_endpoints(" , ")


def test_session_tracker_first_unacked() -> None:
    t = SessionTracker(client_id=3)
    s1, s2, s3 = t.begin(), t.begin(), t.begin()
    assert (s1.sequence, s2.sequence, s3.sequence) == (1, 2, 3)
    t.end(s2)
    assert t.session(s3).first_unacked == 1  # 1 still waits for its reply
    t.end(s1)
    assert t.session(s3).first_unacked == 3
    t.end(s3)
    s4 = t.begin()
    assert (t.session(s4).client_id, t.session(s4).sequence, t.session(s4).first_unacked) == (
        3,
        4,
        4,
    )
    t.end(s4)
    assert t.in_flight == 0


def test_session_tracker_rejects_bad_ids() -> None:
    for bad in (0, -1, 2**64):
        with pytest.raises(ValueError, match="client_id must be a non-zero unsigned 64-bit"):
            SessionTracker(bad)
    assert all(SessionTracker().client_id != 0 for _ in range(100))


def test_backoff_grows_is_capped_and_jittered() -> None:
    policy = RetryPolicy(backoff_base=0.1, backoff_max=1.0)
    rng = random.Random(1)
    pauses = [[policy.pause(r, rng) for _ in range(50)] for r in range(8)]
    for r, ps in enumerate(pauses):
        ceiling = min(1.0, 0.1 * 2**r)
        assert all(ceiling / 2 <= p <= ceiling for p in ps)
        assert len(set(ps)) > 1  # jitter
    assert max(pauses[-1]) <= 1.0
    assert policy.pause(10_000, rng) <= 1.0  # no overflow


def test_ring_rotates_and_follows_hints() -> None:
    ring = EndpointRing(["a:1", "b:1", "c:1"], _Zero())
    assert ring.current() == "a:1"
    ring.failed("a:1", connection=True)  # configured endpoints are never dropped
    assert ring.current() == "b:1"
    ring.failed("a:1", connection=False)  # someone else already moved on
    assert ring.current() == "b:1"
    assert ring.hint("d:1") is True
    assert ring.current() == "d:1"
    assert ring.hint("d:1") is False  # already there
    assert ring.hint("not an address") is False
    ring.failed("d:1", connection=True)  # unreachable hint: dropped and ignored
    assert "d:1" not in ring.endpoints
    assert ring.hint("d:1") is False
    assert ring.endpoints == ["a:1", "b:1", "c:1"]


def test_writes_go_to_the_leader_a_follower_named() -> None:
    """A follower that forwarded a write names the leader: writes go there
    from then on, reads stay where they were; a failure at that leader
    sends writes back to the ring (which forwards again)."""
    ring = EndpointRing(["a:1", "b:1", "c:1"], _Zero())
    ring.lead("b:1")
    assert (ring.current(write=True), ring.current()) == ("b:1", "a:1")
    ring.failed("b:1", connection=False)
    assert (ring.current(write=True), ring.current()) == ("a:1", "a:1")
    ring.lead("not an address")
    assert ring.current(write=True) == "a:1"
    # A leader outside the configured endpoints (a service address in
    # front of the pods, say) that cannot be reached is not named again for
    # a while; the configured endpoints keep their place.
    ring.lead("d:1")
    assert ring.current(write=True) == "d:1"
    ring.failed("d:1", connection=True)
    assert ring.current(write=True) == "a:1"
    ring.lead("d:1")
    assert ring.current(write=True) == "a:1"
    assert ring.endpoints == ["a:1", "b:1", "c:1"]


def test_a_write_follows_a_success_hint_and_a_read_does_not() -> None:
    """CallAttempts: a write that succeeded with a leader hint sends the
    next writes to that leader; the next read still goes to the ring."""
    ring = EndpointRing(["a:1", "b:1", "c:1"], _Zero())
    rng = random.Random(0)

    def attempts(write: bool) -> CallAttempts:
        return CallAttempts(ring, 5.0, RetryPolicy(), rng, method="Put", write=write)

    write = attempts(write=True)
    assert write.next()[0] == "a:1"
    write.succeeded([("ramraft-leader", "c:1")])
    assert attempts(write=True).next()[0] == "c:1"
    assert attempts(write=False).next()[0] == "a:1"
    read = attempts(write=False)
    read.next()
    read.succeeded([("ramraft-leader", "b:1")])  # a read's hint moves the ring itself
    assert attempts(write=False).next()[0] == "b:1"
    assert attempts(write=True).next()[0] == "c:1"


def test_leader_hint_reads_metadata() -> None:
    assert leader_hint(None, [("x", "1")]) is None
    assert leader_hint([("ramraft-leader", "h:1")]) == "h:1"
    assert leader_hint(None, [("ramraft-leader", b"h:2 ")]) == "h:2"
    assert leader_hint([("ramraft-leader", "")]) is None


class _Zero(random.Random):
    def randrange(self, *args: object, **kwargs: object) -> int:
        return 0


class _Leases:
    """What a Lease asks of its client: revokes are counted."""

    def __init__(self) -> None:
        self.revoked: list[int] = []

    def lease_keep_alive(self, lease_id: int, timeout: float = 0) -> int:
        return 30

    def lease_revoke(self, lease_id: int) -> None:
        self.revoked.append(lease_id)


class _AsyncLeases(_Leases):
    async def lease_keep_alive(self, lease_id: int, timeout: float = 0) -> int:  # type: ignore[override]
        return 30

    async def lease_revoke(self, lease_id: int) -> None:  # type: ignore[override]
        self.revoked.append(lease_id)


def test_a_lease_is_entered_once() -> None:
    """A second `with` of the same lease, or one after it was closed, is a
    RuntimeError saying so (the blocking one raised "threads can only be
    started once"; the async one started a second keep-alive and kept it
    running after the block)."""
    from ramraft.client._revisions import LeaseGrant
    from ramraft.client._sync_revisions import Lease

    client = _Leases()
    lease = Lease(client, LeaseGrant(id=7, ttl=30))  # type: ignore[arg-type]
    with lease, pytest.raises(RuntimeError, match="kept alive already"), lease:
        pass
    assert client.revoked == [7]
    with pytest.raises(RuntimeError, match="was closed"), lease:
        pass
    assert client.revoked == [7]


def test_an_async_lease_is_entered_once() -> None:
    from ramraft.client._async_revisions import AsyncLease
    from ramraft.client._revisions import LeaseGrant

    async def run() -> list[asyncio.Task[object]]:
        client = _AsyncLeases()
        lease = AsyncLease(client, LeaseGrant(id=7, ttl=30))  # type: ignore[arg-type]
        async with lease:
            with pytest.raises(RuntimeError, match="kept alive already"):
                async with lease:
                    pass
        assert client.revoked == [7]
        with pytest.raises(RuntimeError, match="was closed"):
            async with lease:
                pass
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    assert asyncio.run(run()) == []  # no keep-alive left running


def test_a_watch_asks_for_progress_notifications_by_default() -> None:
    """They keep the revision a broken watch resumes from recent (a quiet
    watch would otherwise resume from after its last event, which a node
    restarted from a snapshot may no longer hold); only ``progress`` shows
    them to the caller."""
    from ramraft.client import AsyncClient, Client
    from ramraft.client._revisions import WatchState
    from ramraft.proto import kv_pb2

    for method in (Client.watch, AsyncClient.watch):
        assert inspect.signature(method).parameters["progress_notify"].default is True
    state = WatchState("k", start_revision=5)
    assert state.create().create.progress_notify
    progress = kv_pb2.WatchResponse(header=kv_pb2.ResponseHeader(revision=40))
    assert state.take(progress, "a:1", ["a:1"]) == []  # absorbed, not shown
    assert state.next_revision == 41
    off = WatchState("k", progress_notify=False)
    assert not off.create().create.progress_notify

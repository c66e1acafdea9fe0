"""Unit tests of the decisions both clients share (client/_core.py)."""

from __future__ import annotations

import random

import pytest

from ramraft.client._core import (
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


def test_leader_hint_reads_metadata() -> None:
    assert leader_hint(None, [("x", "1")]) is None
    assert leader_hint([("ramraft-leader", "h:1")]) == "h:1"
    assert leader_hint(None, [("ramraft-leader", b"h:2 ")]) == "h:2"
    assert leader_hint([("ramraft-leader", "")]) is None


class _Zero(random.Random):
    def randrange(self, *args: object, **kwargs: object) -> int:
        return 0

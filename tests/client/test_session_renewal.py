"""A client whose session the cluster forgot (SESSION_EXPIRED) starts a new
one instead of failing every later write; it resends the refused write only
when no earlier attempt of it can have been applied."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from ramraft.client import AsyncClient, Client, FailedPrecondition
from tests.client.fake_server import FakeServer

EXPIRED = "SESSION_EXPIRED: session of client 7 is unknown or expired; not applied"


def test_expired_on_the_first_attempt_resends_under_a_new_session(server: FakeServer) -> None:
    with Client(server.address, client_id=7, timeout=3) as c:
        c.put("a", b"1")
        c.put("b", b"2")
        server.node.fail_next(1, grpc.StatusCode.FAILED_PRECONDITION, details=EXPIRED)
        assert c.put("c", b"3") > 0  # refused, never applied: resent
        assert c.client_id != 7
        c.put("d", b"4")
    sessions = [s for s in server.node.sessions() if s]
    assert sessions[:3] == [(7, 1, 1), (7, 2, 2), (7, 3, 3)]  # the third was refused
    new_id = sessions[3][0]
    assert sessions[3:] == [(new_id, 1, 1), (new_id, 2, 2)]
    assert server.node.data["c"] == b"3"


def test_expired_after_an_earlier_attempt_is_not_resent(server: FakeServer) -> None:
    """The first attempt may have been applied (its reply was lost), so the
    write is not sent again under a new id; the error says the outcome is
    unknown. The next write uses a new session."""
    with Client(server.address, client_id=7, timeout=3) as c:
        server.node.fail_next(1, grpc.StatusCode.UNAVAILABLE)
        server.node.fail_next(1, grpc.StatusCode.FAILED_PRECONDITION, details=EXPIRED)
        with pytest.raises(FailedPrecondition, match="may or may not have been applied"):
            c.put("a", b"1")
        c.put("b", b"2")
        assert c._sessions.in_flight == 0
    sessions = [s for s in server.node.sessions() if s]
    assert sessions[:2] == [(7, 1, 1), (7, 1, 1)]
    assert sessions[2][0] != 7 and sessions[2][1:] == (1, 1)
    assert "a" not in server.node.data


def test_other_refusals_are_not_retried(server: FakeServer) -> None:
    with Client(server.address, client_id=7, timeout=3) as c:
        server.node.fail_next(
            1, grpc.StatusCode.FAILED_PRECONDITION, details="STALE_SEQUENCE: below first unacked"
        )
        with pytest.raises(FailedPrecondition, match="STALE_SEQUENCE"):
            c.put("a", b"1")
        assert c.client_id == 7
    assert len(server.node.calls) == 1


def test_async_client_renews_once_for_many_refused_writes(server: FakeServer) -> None:
    """Several writes in flight under the old id all come back expired: one
    new session, each write resent once under it."""

    async def main() -> int:
        async with AsyncClient(server.address, client_id=7, timeout=3) as c:
            # Only the old id is refused: however the four writes interleave
            # with the renewal, each is refused at most once.
            server.node.fail_next(
                4, grpc.StatusCode.FAILED_PRECONDITION, details=EXPIRED, client_id=7
            )
            await asyncio.gather(*(c.put(f"k{i}", b"v") for i in range(4)))
            assert c._sessions.in_flight == 0
            return c.client_id

    new_id = asyncio.run(main())
    assert new_id != 7
    ids = {s[0] for s in server.node.sessions() if s}
    assert ids == {7, new_id}
    resent = sorted(s[1] for s in server.node.sessions() if s and s[0] == new_id)
    assert resent == [1, 2, 3, 4]
    assert all(server.node.data[f"k{i}"] == b"v" for i in range(4))

"""The blocking client against fake nodes: results, retries with the same
session, rotation, leader hints, deadlines and error mapping."""

from __future__ import annotations

import pickle
import random
import re
import threading
import time

import grpc
import pytest

from ramraft.client import (
    SERIALIZABLE,
    CasResult,
    Client,
    Compare,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RamraftError,
    TxnOp,
    Unauthenticated,
    Unavailable,
    WatchCompacted,
    WatchEvent,
)
from tests.client.fake_server import Call, Failure, FakeServer, dead_address

T = 3.0


def test_key_value_round_trip(server: FakeServer) -> None:
    with Client([server.address], timeout=T) as c:
        assert c.get("k") is None
        assert c.put("k", b"v1") == 1
        assert c.put("s", "text") == 2  # str values are sent as UTF-8
        assert c.get("k") == b"v1"
        assert c.get("s", consistency=SERIALIZABLE) == b"text"
        r = c.get_result("k")
        assert (r.found, r.value, r.index) == (True, b"v1", 2)
        assert c.delete("k") is True
        assert c.delete("k") is False
        assert c.get_result("k").found is False
    req = server.node.calls[4].request
    assert req.consistency == SERIALIZABLE


def test_empty_value_is_found_not_absent(server: FakeServer) -> None:
    with Client(server.address, timeout=T) as c:
        c.put("k", b"")
        assert c.get("k") == b""


def test_cas_absent_versus_expected_empty(server: FakeServer) -> None:
    with Client(server.address, timeout=T) as c:
        assert c.cas("k", None, b"a") == CasResult(swapped=True, found=False, current=None, index=1)
        assert c.cas("k", None, b"b") == CasResult(swapped=False, found=True, current=b"a", index=2)
        assert c.cas("k", b"a", b"c").swapped
        c.put("e", b"")
        assert c.cas("e", b"", b"x").swapped  # b"" is a value, not "absent"
    cas_requests = [call.request for call in server.node.calls if call.method == "CompareAndSwap"]
    assert [r.HasField("expected") for r in cas_requests] == [False, False, True, True]


def test_range_and_scan(server: FakeServer) -> None:
    server.node.data.update({f"p/{i:02}": bytes([i]) for i in range(25)} | {"q": b"x"})
    with Client(server.address, timeout=T) as c:
        page = c.range("p/", limit=10)
        assert [k for k, _ in page.items] == [f"p/{i:02}" for i in range(10)]
        assert page.more
        page = c.range("p/", start_after="p/20", limit=10)
        assert [k for k, _ in page.items] == [f"p/{i}" for i in range(21, 25)]
        assert not page.more
        assert list(c.scan("p/", page_size=7)) == [(f"p/{i:02}", bytes([i])) for i in range(25)]
    assert sum(1 for m in server.node.methods() if m == "Range") == 2 + 4


def test_retries_reuse_the_session_of_the_write(server: FakeServer) -> None:
    server.node.fail_next(3)
    with Client([server.address], client_id=42, timeout=T) as c:
        assert c.put("k", b"v") == 1
        c.delete("k")
    sessions = server.node.sessions()
    assert sessions[:4] == [(42, 1, 1)] * 4  # three failures, one success
    assert sessions[4] == (42, 2, 2)  # the next write has the next number


def test_a_call_a_stopping_node_cancelled_is_retried_with_its_session(
    server: FakeServer,
) -> None:
    """A node cancels the calls it has not finished when it stops (the grace
    period of a rolling restart): the write may or may not have been
    applied, so it is retried like UNAVAILABLE, under the same session."""
    server.node.fail_next(1, grpc.StatusCode.CANCELLED, details="CANCELLED")
    with Client([server.address], client_id=43, timeout=T) as c:
        assert c.put("k", b"v") == 1
    assert server.node.sessions()[:2] == [(43, 1, 1)] * 2


def test_sessions_are_random_non_zero_and_per_client(server: FakeServer) -> None:
    with Client(server.address, timeout=T) as a, Client(server.address, timeout=T) as b:
        a.put("k", b"1")
        b.put("k", b"2")
        assert a.client_id != b.client_id
        assert 0 < a.client_id < 2**64
    (ida, _, _), (idb, _, _) = server.node.sessions()  # type: ignore[misc]
    assert (ida, idb) == (a.client_id, b.client_id)


def test_reads_carry_no_session(server: FakeServer) -> None:
    with Client(server.address, timeout=T) as c:
        c.get("k")
        c.range("")
    assert server.node.sessions() == [None, None]


def test_first_unacked_tracks_concurrent_writes(server: FakeServer) -> None:
    server.node.hold_next(1)
    with Client(server.address, client_id=7, timeout=T) as c:
        slow = threading.Thread(target=c.put, args=("a", b"1"))
        slow.start()
        server.node.wait_for_calls(1)  # write 1 is in flight, held by the node
        c.put("b", b"2")
        server.node.release()
        slow.join()
        c.put("c", b"3")
    by_sequence = {s[1]: s for s in server.node.sessions() if s}
    assert by_sequence[2] == (7, 2, 1)  # 1 still in flight: its reply is needed
    assert by_sequence[3] == (7, 3, 3)  # both answered


def test_rotates_away_from_a_failing_node(servers) -> None:
    bad, good = servers(), servers()
    bad.node.always = Failure(grpc.StatusCode.UNAVAILABLE, "no leader")
    for _ in range(5):
        with Client([bad.address, good.address], timeout=T) as c:
            c.put("k", b"v")
    assert good.node.methods() == ["Put"] * 5
    # The same session went to both nodes.
    for call in bad.node.calls:
        assert call.session in good.node.sessions()


def test_rotates_away_from_a_dead_endpoint(server: FakeServer) -> None:
    with Client([dead_address(), server.address], timeout=T) as c:
        for i in range(4):
            c.put(f"k{i}", b"v")
        # Once a node works, calls stick to it.
        assert c.get("k0") == b"v"
    assert len(server.node.calls) == 5


def test_leader_hint_is_followed_even_outside_the_endpoint_list(
    servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    follower, leader = servers(), servers()
    follower.node.fail_next(1, leader=leader.address)
    pauses: list[float] = []  # the client's back-off sleeps, in this thread
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        if threading.current_thread() is threading.main_thread():
            pauses.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
    with Client([follower.address], timeout=T) as c:
        c.put("k", b"v")
        assert pauses == [], "no back-off pause before a hint"
        c.put("k2", b"v")
        assert leader.address in c.endpoints
    assert follower.node.methods() == ["Put"]
    assert leader.node.methods() == ["Put", "Put"]
    assert follower.node.sessions()[0] == leader.node.sessions()[0]


def test_leader_hint_on_success_moves_later_calls(servers) -> None:
    follower, leader = servers(), servers()
    follower.node.success_hint = leader.address
    with Client([follower.address, leader.address], rng=_Start(0), timeout=T) as c:
        c.put("a", b"1")
        c.put("b", b"2")
    assert follower.node.methods() == ["Put"]
    assert leader.node.methods() == ["Put"]


def test_unreachable_hint_is_dropped(servers) -> None:
    node = servers()
    node.node.fail_next(1, leader=dead_address())
    with Client([node.address], timeout=T) as c:
        c.put("k", b"v")
        assert c.endpoints == [node.address]


def test_gives_up_with_unavailable_at_the_deadline(servers) -> None:
    a, b = servers(), servers()
    for s in (a, b):
        s.node.always = Failure(grpc.StatusCode.UNAVAILABLE, "no leader")
    with Client([a.address, b.address], timeout=0.8) as c:
        started = time.monotonic()
        with pytest.raises(Unavailable, match=r"no node could serve it within 0\.8s") as info:
            c.put("k", b"v")
        elapsed = time.monotonic() - started
    # It retried until its deadline, not less (slowness cannot make this fail)...
    assert elapsed >= 0.79
    # ...and every attempt ran on what was left of that one deadline: the
    # deadlines each node saw only shrink, from at most 0.8 s.
    for node in (a.node, b.node):
        left = [call.deadline for call in node.calls]
        assert left and None not in left and left[0] <= 0.8 + WIRE_SLACK, left
        assert left == sorted(left, reverse=True) and len(set(left)) == len(left), left
    assert "no leader" in str(info.value)
    assert info.value.attempts == len(a.node.calls) + len(b.node.calls) >= 4
    # Paused between rounds: far fewer attempts than a busy loop would make.
    assert info.value.attempts < 40
    assert len({c.session for c in a.node.calls + b.node.calls}) == 1


# gRPC sends a timeout rounded up to its unit, so a node may see a hair more
# time left than the client had.
WIRE_SLACK = 0.01


def assert_deadline_at_most(call: Call, seconds: float) -> None:
    assert call.deadline is not None and call.deadline <= seconds + WIRE_SLACK, call.deadline


def test_a_hung_node_ends_in_deadline_exceeded(server: FakeServer) -> None:
    """The node never answers while the call lasts (it is released only
    afterwards), so the call can end only on the client's own deadline."""
    server.node.hold_next(1)
    with Client(server.address, timeout=0.5) as c:
        with pytest.raises(DeadlineExceeded, match="Get: DEADLINE_EXCEEDED") as info:
            c.get("k")
        server.node.release()
    assert isinstance(info.value, TimeoutError)
    # One attempt, carrying the 0.5 s deadline; no retry once it had passed.
    assert info.value.attempts == 1 and len(server.node.calls) == 1
    assert_deadline_at_most(server.node.calls[0], 0.5)


def test_attempt_timeout_moves_on_from_a_hung_node(servers) -> None:
    hung, good = servers(), servers()
    hung.node.hold_next(1)  # released only after the write succeeded elsewhere
    with Client([hung.address, good.address], timeout=3.0, attempt_timeout=0.3, rng=_Start(0)) as c:
        assert c.put("k", b"v") == 1
        hung.node.release()
    assert hung.node.sessions() == good.node.sessions()
    # The hung node was given the attempt's 0.3 s, not the call's 3 s.
    (first,) = hung.node.calls
    assert_deadline_at_most(first, 0.3)


def test_per_call_timeout_overrides_the_default(server: FakeServer) -> None:
    server.node.hold_next(1)
    with Client(server.address, timeout=10.0) as c:
        with pytest.raises(DeadlineExceeded, match="Get: DEADLINE_EXCEEDED"):
            c.get("k", timeout=0.3)
        server.node.release()
    # The node was asked with the call's 0.3 s deadline, not the default 10 s.
    (call,) = server.node.calls
    assert_deadline_at_most(call, 0.3)


@pytest.mark.parametrize(
    ("code", "exception"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.NOT_FOUND, NotFound),
        (grpc.StatusCode.FAILED_PRECONDITION, FailedPrecondition),
        (grpc.StatusCode.INTERNAL, RamraftError),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
        (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
    ],
)
def test_other_errors_are_final_and_mapped(
    servers, code: grpc.StatusCode, exception: type[RamraftError]
) -> None:
    a, b = servers(), servers()
    a.node.fail_next(1, code, details="key exceeds 1024 bytes")
    with (
        Client([a.address, b.address], rng=_Start(0), timeout=T) as c,
        pytest.raises(exception) as e,
    ):
        c.put("k", b"v")
    assert type(e.value) is exception
    assert e.value.code == code
    assert "key exceeds 1024 bytes" in str(e.value)
    assert e.value.endpoint == a.address
    assert len(a.node.calls) == 1 and not b.node.calls  # not retried


def test_invalid_argument_is_also_a_value_error(server: FakeServer) -> None:
    server.node.fail_next(1, grpc.StatusCode.INVALID_ARGUMENT, details="key is empty")
    with (
        Client(server.address, timeout=T) as c,
        pytest.raises(ValueError, match="key is empty") as e,
    ):
        c.get("k")
    assert type(e.value) is InvalidArgument


def test_bad_arguments_fail_before_any_call(server: FakeServer) -> None:
    with pytest.raises(ValueError, match="invalid endpoint"):
        Client("localhost")
    with pytest.raises(ValueError, match="no endpoints"):
        Client("")
    with pytest.raises(ValueError, match="timeout must be a positive number of seconds"):
        Client(server.address, timeout=0)
    with Client(server.address) as c:
        with pytest.raises(TypeError, match="key must be str, not bytes"):
            c.put(b"k", b"v")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="value must be bytes or str, not int"):
            c.put("k", 5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="unknown consistency 7"):
            c.get("k", consistency=7)
        with pytest.raises(ValueError, match="timeout must be a positive number of seconds"):
            c.get("k", timeout=-1)
        for endless in (float("inf"), 1e10):  # no OverflowError from deep inside
            with pytest.raises(ValueError, match="timeout must be a positive number of seconds"):
                c.put("k", b"v", timeout=endless)
    with pytest.raises(ValueError, match="timeout must be a positive number of seconds"):
        Client(server.address, timeout=float("inf"))
    assert server.node.calls == []


def test_text_that_is_no_unicode_is_refused_naming_the_argument(server: FakeServer) -> None:
    """A lone surrogate (what a bad decode leaves) has no UTF-8: a
    ValueError naming the key or value, not UnicodeEncodeError from inside
    protobuf."""
    with Client(server.address, timeout=T) as c:
        for call, words in [
            (
                lambda: c.put("bad\ud800key", b"v"),
                "key is not valid Unicode text: '\\ud800' at offset 3",
            ),
            (
                lambda: c.put("k", "v\udcff"),
                "value is not valid Unicode text: '\\udcff' at offset 1",
            ),
            (lambda: c.get("\ud800"), "key is not valid Unicode text"),
            (lambda: TxnOp.put("k", "\ud800"), "value is not valid Unicode text"),
        ]:
            with pytest.raises(ValueError, match=re.escape(words)):
                call()
        assert c.put("caf\u00e9", "na\u00efve") == 1  # text that is Unicode goes through
    assert [call.method for call in server.node.calls] == ["Put"]


def test_integers_no_request_field_holds_are_refused_naming_the_argument(
    server: FakeServer,
) -> None:
    """protobuf's own errors ('Value out of range: -1', "'str' object cannot
    be interpreted as an integer") named no argument."""
    with Client(server.address, timeout=T) as c:
        for call, words in [
            (lambda: c.range("", limit=-1), "limit must be between 0 and 4294967295, not -1"),
            (lambda: c.range("", limit=2**32), "limit must be between 0 and"),
            (lambda: c.put("k", b"v", lease="x"), "lease must be an int, not str"),  # type: ignore[arg-type]
            (lambda: c.put("k", b"v", lease=2**63), "lease must be between"),
            (lambda: c.lease_grant("10"), "ttl must be an int, not str"),  # type: ignore[arg-type]
            (lambda: c.lease_revoke(1.5), "lease_id must be an int, not float"),  # type: ignore[arg-type]
            (lambda: c.lease_keep_alive(True), "lease_id must be an int, not bool"),
            (lambda: c.watch("w", start_revision=-1), "start_revision must be between 0 and"),
            (lambda: TxnOp.range("p", limit=-1), "limit must be between 0 and"),
            (lambda: TxnOp.put("k", b"v", lease=None), "lease must be an int, not NoneType"),  # type: ignore[arg-type]
        ]:
            with pytest.raises((TypeError, ValueError), match=re.escape(words)):
                call()
    assert server.node.calls == []


def test_bad_transaction_ops_and_compares_fail_where_they_are_built() -> None:
    """As for put: a value that is no bytes or str is refused, not sent as
    something else (``bytes(5)`` is five zero bytes, ``bytes({})`` none)."""
    with pytest.raises(TypeError, match="value must be bytes or str, not int"):
        TxnOp.put("k", 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="value must be bytes or str, not dict"):
        TxnOp.put("k", {"a": 1})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="value must be bytes or str, not int"):
        Compare.value("k", "==", 5)  # type: ignore[arg-type]
    for build in (TxnOp.get, TxnOp.delete, TxnOp.range, TxnOp.delete_prefix):
        with pytest.raises(TypeError, match="key must be str, not NoneType"):
            build(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key must be str, not int"):
        Compare.version(1, "==", 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="compare target 'bogus'"):
        Compare("k", "bogus", "==", 1)
    with pytest.raises(TypeError, match="a value compares with bytes"):
        Compare("k", "value", "==", 1)
    assert TxnOp.put("k", "text").request.put.value == b"text"
    assert Compare.value("k", "==", "v").operand == b"v"


def test_admin_calls(server: FakeServer) -> None:
    with Client(server.address, timeout=T) as c:
        c.put("k", b"v")
        status = c.status()
        assert status.node.id == "n1" and status.node.commit_index == 1
        assert [m.id for m in status.members] == ["n1", "n2"]
        assert [m.id for m in c.members()] == ["n1"]
        assert c.transfer_leadership("n3") == "n3"
        assert [m.id for m in c.add_member("n4", "127.0.0.1:7004")] == ["n1", "n4"]
        assert [m.id for m in c.remove_member("n2")] == ["n1"]
        with pytest.raises(NotFound):
            c.remove_member("nope")
        assert c.snapshot() == 1
        with pytest.raises(ValueError, match="invalid endpoint 'no-port'"):
            c.add_member("n5", "no-port")


def test_pinned_endpoint_is_not_rotated(servers) -> None:
    a, b = servers(), servers()
    a.node.fail_next(1)
    with Client([b.address], timeout=T) as c:
        with pytest.raises(Unavailable, match="injected"):  # a's failure, not retried on b
            c.status(endpoint=a.address)
        assert c.status(endpoint=a.address).node.address == a.address
        assert c.snapshot(endpoint=a.address) == 0
    assert not b.node.calls


def test_client_is_usable_from_many_threads(server: FakeServer) -> None:
    with Client(server.address, timeout=T) as c:
        threads = [
            threading.Thread(target=lambda i=i: [c.put(f"{i}-{j}", b"v") for j in range(20)])
            for i in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    sequences = [s[1] for s in server.node.sessions() if s]
    assert sorted(sequences) == list(range(1, 161))


class _Start(random.Random):
    """A random source that makes the client start at endpoint i."""

    def __init__(self, i: int) -> None:
        super().__init__(0)
        self.i = i

    def randrange(self, *args: object, **kwargs: object) -> int:
        n = args[-1] if len(args) == 1 else args[1]
        assert isinstance(n, int)
        return self.i % n


def test_a_watch_left_unclosed_ends_with_it_or_with_the_client(server: FakeServer) -> None:
    """A watch broken out of without close() held gRPC's thread that sends
    its requests (and its own channel) for good, even after client.close();
    a watch of a closed client connected nonetheless."""
    server.node.changes = [("PUT", "w", b"1"), ("PUT", "w", b"2")]

    def ours() -> list[str]:  # the fake node's pool grows as it serves
        return [t.name for t in threading.enumerate() if "ThreadPoolExecutor" not in t.name]

    before = len(ours())

    def settled() -> bool:
        deadline = time.monotonic() + 5
        while len(ours()) > before and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(ours()) <= before

    with Client(server.address, timeout=T, transport="unary") as c:
        for event in c.watch("w", start_revision=1):
            assert event == WatchEvent("PUT", "w", b"1", 1)
            break  # the watch is dropped, unclosed
        assert settled(), ours()
        kept = c.watch("w", start_revision=1)
        assert next(kept) == WatchEvent("PUT", "w", b"1", 1)
    assert settled(), ours()
    assert kept.is_closed() and list(kept) == []
    with pytest.raises(RuntimeError, match="closed"):
        c.watch("w")


def test_errors_survive_pickling_with_their_details() -> None:
    """As exceptions must to cross a process pool: WatchCompacted, whose
    compact_revision was a required keyword, could not be unpickled."""
    for error in (
        NotFound("Put: NOT_FOUND", code=grpc.StatusCode.NOT_FOUND, details="d", endpoint="e:1"),
        WatchCompacted("compacted", compact_revision=7, details="d", endpoint="e:1"),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
        assert (copy.code, copy.details, copy.endpoint) == (error.code, "d", "e:1")
    assert pickle.loads(pickle.dumps(error)).compact_revision == 7

"""Sessions for pipelined clients (server/machines/sessions.py; Raft thesis 6.3): many
writes in flight under one client id, arriving in any order, with
``first_unacked`` telling the table which replies it may forget."""

from __future__ import annotations

import io
import random
import re
from dataclasses import dataclass, field

import pytest

from ramraft.proto import kv_pb2
from ramraft.server.machines.embed import (
    ModelMachine,
    ReplicatedModel,
    command,
    decode_call,
    encode_call,
)
from ramraft.server.machines.kv import (
    KVMachine,
    PutResult,
    Session,
    decode_command,
    encode_delete,
    encode_put,
)
from ramraft.server.machines.sessions import SessionRecord, SessionTable
from ramraft.server.machines.statemachine import CommandError, ErrorCode


def is_error(result: object, code: ErrorCode) -> bool:
    return isinstance(result, CommandError) and result.code is code


class Counted:
    """A SessionTable driven like a machine does, counting executions."""

    def __init__(self, table: SessionTable) -> None:
        self.table = table
        self.index = 0
        self.executed: dict[tuple[int, int], int] = {}

    def apply(self, client: int, seq: int, first: int) -> object:
        self.index += 1
        verdict = self.table.begin(client, seq, first, self.index)
        if not verdict.apply:
            return verdict.reply
        self.executed[client, seq] = self.executed.get((client, seq), 0) + 1
        reply = ("reply", seq, self.index)
        self.table.finish(client, seq, first, self.index, reply)
        return reply


# -- the rules, one at a time ----------------------------------------------------


def test_a_thousand_pipelined_sequences_in_any_order_are_each_applied_once() -> None:
    rng = random.Random(7)
    m = KVMachine()
    order = list(range(1, 1001))
    rng.shuffle(order)
    first_replies = {}
    for index, seq in enumerate(order, 1):
        # none acknowledged yet: first_unacked stays 1
        result = m.apply(index, encode_put(f"k{seq}", b"%d" % seq, (42, seq, 1)))
        assert result == PutResult(index), (seq, result)
        first_replies[seq] = result
    assert len(m) == 1000
    record = m.sessions.get(42)
    assert record is not None and len(record.replies) == 1000 and record.floor == 1
    # overwrite everything, then retry every sequence (in another order): no
    # retry is applied again, each gets the reply of its first application
    index = 1000
    for seq in range(1, 1001):
        index += 1
        m.apply(index, encode_put(f"k{seq}", b"overwritten"))
    rng.shuffle(order)
    for seq in order:
        index += 1
        assert m.apply(index, encode_put(f"k{seq}", b"again", (42, seq, 1))) == first_replies[seq]
    assert all(v == b"overwritten" for _, v in m.items())


def test_replies_below_first_unacked_are_forgotten_and_those_sequences_refused() -> None:
    m = KVMachine()
    for seq in range(1, 11):
        m.apply(seq, encode_put("k", b"%d" % seq, (5, seq, 1)))
    # the client has its replies for 1..6: its next write says first_unacked 7
    assert m.apply(11, encode_put("k", b"11", (5, 11, 7))) == PutResult(11)
    record = m.sessions.get(5)
    assert record is not None and record.floor == 7
    assert [s for s, _ in record.replies] == [7, 8, 9, 10, 11]
    # a delayed duplicate of 3 is refused, not applied; 8 still gets its reply
    stale = m.apply(12, encode_put("k", b"dup of 3", (5, 3, 1)))
    assert is_error(stale, ErrorCode.STALE_SEQUENCE)
    assert m.get("k") == (True, b"11")
    assert m.apply(13, encode_put("k", b"8", (5, 8, 7))) == PutResult(8)
    assert m.get("k") == (True, b"11")


def test_an_abandoned_sequence_arriving_after_first_unacked_passed_it_is_not_applied() -> None:
    m = KVMachine()
    m.apply(1, encode_put("a", b"1", (5, 1, 1)))
    # the client gave up on 2 (deadline) and got 3's reply; 4 says so
    m.apply(2, encode_put("a", b"3", (5, 3, 1)))
    m.apply(3, encode_put("a", b"4", (5, 4, 4)))
    late = m.apply(4, encode_put("a", b"2", (5, 2, 1)))  # 2 finally reaches the log
    assert is_error(late, ErrorCode.STALE_SEQUENCE)
    assert m.get("a") == (True, b"4")


def test_a_stale_command_does_not_lower_the_floor() -> None:
    t = Counted(SessionTable())
    t.apply(1, 1, 1)
    t.apply(1, 2, 2)
    t.apply(1, 3, 3)
    t.apply(1, 4, 1)  # an old in-flight copy still carrying first_unacked 1
    record = t.table.get(1)
    assert record is not None and record.floor == 3
    assert is_error(t.apply(1, 2, 1), ErrorCode.STALE_SEQUENCE)


def test_without_first_unacked_one_write_at_a_time() -> None:
    """first_unacked 0 behaves as first_unacked == sequence: only the latest
    reply is kept (the behaviour of a client that does not pipeline)."""
    m = KVMachine()
    assert m.apply(1, encode_put("k", b"1", (7, 1))) == PutResult(1)
    assert m.apply(2, encode_put("k", b"2", (7, 2, 0))) == PutResult(2)
    record = m.sessions.get(7)
    assert record is not None and record.floor == 2 and [s for s, _ in record.replies] == [2]
    assert m.apply(3, encode_put("k", b"2", (7, 2))) == PutResult(2)  # retry of the latest
    assert is_error(m.apply(4, encode_put("k", b"1", (7, 1))), ErrorCode.STALE_SEQUENCE)
    assert m.get("k") == (True, b"2")


def test_unknown_client_opens_a_session_only_if_it_never_had_a_reply() -> None:
    m = KVMachine()
    # pipelined first writes: 3 arrives before 1 and 2, first_unacked still 1
    assert m.apply(1, encode_put("k", b"3", (9, 3, 1))) == PutResult(1)
    assert 9 in m.sessions
    # an unknown client that has had replies (first_unacked > 1) cannot be deduplicated
    result = m.apply(2, encode_put("k", b"x", (10, 8, 5)))
    assert is_error(result, ErrorCode.SESSION_EXPIRED)
    assert 10 not in m.sessions and m.get("k") == (True, b"3")
    # without first_unacked: only sequence 1 opens one
    assert is_error(m.apply(3, encode_put("k", b"x", (11, 2))), ErrorCode.SESSION_EXPIRED)
    assert m.apply(4, encode_put("k", b"y", (11, 1))) == PutResult(4)


def test_per_client_reply_bound_raises_the_floor_never_reapplies() -> None:
    t = Counted(SessionTable(max_replies=10, idle_entries=None))
    for seq in range(1, 16):
        t.apply(1, seq, 1)  # 15 applied, none acknowledged
    record = t.table.get(1)
    assert record is not None
    assert [s for s, _ in record.replies] == list(range(6, 16)) and record.floor == 6
    # the forgotten ones are refused (at most once), the kept ones answered
    assert is_error(t.apply(1, 3, 1), ErrorCode.STALE_SEQUENCE)
    assert t.apply(1, 10, 1) == ("reply", 10, 10)
    assert all(n == 1 for n in t.executed.values()) and len(t.executed) == 15
    # an out-of-order arrival below everything kept is the one forgotten
    t2 = Counted(SessionTable(max_replies=3, idle_entries=None))
    for seq in (5, 6, 7, 1):
        t2.apply(1, seq, 1)
    record = t2.table.get(1)
    assert record is not None and [s for s, _ in record.replies] == [5, 6, 7]
    assert record.floor == 2
    assert is_error(t2.apply(1, 1, 1), ErrorCode.STALE_SEQUENCE)
    assert t2.executed[1, 1] == 1


def test_idle_expiry_by_log_index_with_many_replies() -> None:
    m = KVMachine(session_idle_entries=10)
    for seq in (1, 2, 3):
        m.apply(seq, encode_put("k", b"%d" % seq, (1, seq, 1)))
    # a retry at index 13 (idle exactly 10 since index 3) is still answered
    assert m.apply(13, encode_put("k", b"2", (1, 2, 1))) == PutResult(2)
    # another client's write at 24 sweeps the session (idle 11 entries)
    m.apply(24, encode_put("other", b"", (2, 1)))
    assert 1 not in m.sessions
    result = m.apply(25, encode_put("k", b"4", (1, 4, 2)))
    assert is_error(result, ErrorCode.SESSION_EXPIRED)
    assert m.get("k") == (True, b"3")


def test_size_bound_drops_least_recently_used_client() -> None:
    m = KVMachine(max_sessions=2, session_idle_entries=None)
    m.apply(1, encode_put("k", b"", (1, 1, 1)))
    m.apply(2, encode_put("k", b"", (2, 1, 1)))
    m.apply(3, encode_put("k", b"", (1, 2, 1)))  # 1 used again: 2 is the LRU
    m.apply(4, encode_put("k", b"", (3, 1, 1)))
    assert 2 not in m.sessions and 1 in m.sessions and 3 in m.sessions
    assert is_error(m.apply(5, encode_put("k", b"", (2, 2, 2))), ErrorCode.SESSION_EXPIRED)


# -- a pipelined client against a reordering, duplicating log ----------------------


@dataclass
class PipelinedClient:
    """A model of client/_core.SessionTracker: first_unacked is the lowest
    sequence still waiting; some writes are abandoned (deadline)."""

    rng: random.Random
    next_seq: int = 1
    waiting: set[int] = field(default_factory=set)
    abandoned: set[int] = field(default_factory=set)
    answers: dict[int, object] = field(default_factory=dict)

    def first_unacked(self) -> int:
        return min(self.waiting) if self.waiting else self.next_seq

    def send(self) -> tuple[int, int]:
        seq = self.next_seq
        self.next_seq += 1
        self.waiting.add(seq)
        return seq, self.first_unacked()


@pytest.mark.parametrize("seed", range(5))
def test_random_pipelined_client_exactly_once(seed: int) -> None:
    """Writes sent with a window of up to 64 in flight reach the log in random
    order, some several times (retries carry the first_unacked of their own
    send); some are abandoned. Every write is applied at most once; a write
    the client still waits for is never refused; every reply to a write is
    the reply of its first application."""
    rng = random.Random(seed)
    t = Counted(SessionTable(idle_entries=None))
    client = PipelinedClient(rng)
    network: list[tuple[int, int]] = []  # (sequence, first_unacked) in flight
    first_reply: dict[int, object] = {}
    for _ in range(3000):
        if len(client.waiting) < 64 and rng.random() < 0.5:
            network.append(client.send())
        if not network:
            continue
        seq, first = network.pop(rng.randrange(len(network)))
        if seq in client.waiting and rng.random() < 0.2:
            network.append((seq, client.first_unacked()))  # a retry, also in flight
        reply = t.apply(1, seq, first)
        if isinstance(reply, CommandError):
            assert seq not in client.waiting, f"refused a write the client waits for: {reply}"
            continue
        first_reply.setdefault(seq, reply)
        assert reply == first_reply[seq]
        if seq in client.waiting:
            client.waiting.discard(seq)
            # now and then the client gives up on its oldest write instead
            if client.waiting and rng.random() < 0.05:
                client.waiting.discard(min(client.waiting))
    assert all(n == 1 for n in t.executed.values())
    assert len(t.executed) > 500
    record = t.table.get(1)
    assert record is not None and len(record.replies) <= 64 + 1


# -- encoding, the servicer's checks ----------------------------------------------


def test_command_encoding_carries_first_unacked() -> None:
    cmd = decode_command(encode_put("k", b"v", (3, 9, 4)))
    assert cmd.session == Session(3, 9, 4)
    assert decode_command(encode_delete("k", (3, 9))).session == Session(3, 9, 0)
    rule = "with ids in 1..2**64-1 and 0 <= first_unacked <= sequence; got "
    for bad in ((3, 9, 10), (3, 9, -1), (0, 1, 0), (3, 0, 0), (1, 2, 3, 4)):
        with pytest.raises(ValueError, match=re.escape(f"{rule}{bad}")):
            encode_put("k", b"v", bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape(f"{rule}(3, 9, 10)")):
        encode_call("f", session=(3, 9, 10))


def test_undecodable_first_unacked_is_a_bad_command() -> None:
    import msgpack

    data = bytes([encode_put("k", b"")[0]]) + msgpack.packb([1, "k", b"v", 3, 9, 10])
    m = KVMachine()
    assert is_error(m.apply(1, data), ErrorCode.BAD_COMMAND)
    assert m.get("k") == (False, b"")


def test_servicer_session_checks() -> None:
    from ramraft.server.request_errors import BadRequest
    from ramraft.server.rpc.services import _session

    def req(**session: int) -> kv_pb2.PutRequest:
        return kv_pb2.PutRequest(key="k", session=kv_pb2.Session(**session))

    assert _session(kv_pb2.PutRequest(key="k")) is None
    assert _session(req()) is None
    assert _session(req(client_id=1, sequence=5, first_unacked=2)) == Session(1, 5, 2)
    assert _session(req(client_id=1, sequence=5)) == Session(1, 5, 0)
    with pytest.raises(BadRequest, match="must not exceed"):
        _session(req(client_id=1, sequence=5, first_unacked=6))
    with pytest.raises(BadRequest, match="needs both client_id and sequence"):
        _session(req(client_id=1))
    with pytest.raises(BadRequest, match="first_unacked but no client_id and sequence"):
        _session(req(first_unacked=1))


# -- snapshots ------------------------------------------------------------------------


def pipelined_machine() -> KVMachine:
    m = KVMachine(max_sessions=50, session_idle_entries=None, session_max_replies=20)
    rng = random.Random(3)
    index = 0
    for client in range(1, 6):
        seqs = list(range(1, 31))
        rng.shuffle(seqs)
        for seq in seqs:
            index += 1
            first = 1 if client % 2 else max(1, seq - 3)
            m.apply(index, encode_put(f"c{client}", b"%d" % seq, (client, seq, min(first, seq))))
    return m


def snapshot_bytes(m: KVMachine | ModelMachine) -> bytes:
    buf = io.BytesIO()
    m.snapshot().write_to(buf)
    return buf.getvalue()


def test_kv_snapshot_keeps_every_reply_and_floor() -> None:
    m = pipelined_machine()
    records = m.sessions.copy_entries()
    assert any(len(r.replies) > 1 for r in records) and any(r.floor > 1 for r in records)
    data = snapshot_bytes(m)
    r = KVMachine(max_sessions=50, session_idle_entries=None, session_max_replies=20)
    r.restore(io.BytesIO(data))
    assert r.sessions.copy_entries() == records
    assert snapshot_bytes(r) == data  # canonical
    # behaviour after restore is the same as on the original
    probe = [(c, s, 1) for c in range(1, 7) for s in (1, 5, 25, 31)]
    for n, session in enumerate(probe, 1000):
        command = encode_put("p", b"", session)
        assert r.apply(n, command) == m.apply(n, command)


def test_restore_refuses_a_table_that_breaks_its_invariants() -> None:
    increasing = "client 1: reply sequences must be increasing and >= the floor"
    bad = [
        ([SessionRecord(1, 5, 1, ((4, None),))], increasing),  # reply below the floor
        ([SessionRecord(1, 1, 1, ((3, None), (2, None)))], increasing),  # not increasing
        (
            [SessionRecord(1, 1, 1, ()), SessionRecord(1, 1, 2, ())],  # client twice
            "bad or repeated session client id 1",
        ),
        ([SessionRecord(0, 1, 1, ())], "bad or repeated session client id 0"),
    ]
    for records, reason in bad:
        table = SessionTable()
        table.load([SessionRecord(7, 1, 1, ((1, "kept"),))])
        with pytest.raises(ValueError, match=re.escape(reason)):
            table.load(records)
        assert table.get(7) == SessionRecord(7, 1, 1, ((1, "kept"),))


class Tally(ReplicatedModel):
    def __init__(self) -> None:
        self.seen: list[int] = []

    @command
    def add(self, n: int) -> int:
        self.seen.append(n)
        return len(self.seen)


def test_model_machine_pipelined_sessions_survive_snapshots() -> None:
    machine = ModelMachine(Tally())
    for index, seq in enumerate((3, 1, 2), 1):
        assert machine.apply(index, encode_call("add", [seq], session=(4, seq, 1))) == index
    assert decode_call(encode_call("add", [1], session=(4, 3, 1))).session == (4, 3, 1)
    data = snapshot_bytes(machine)
    replica = ModelMachine(Tally())
    replica.restore(io.BytesIO(data))
    assert replica.sessions.copy_entries() == machine.sessions.copy_entries()
    # retries after restore get their first replies and are not applied again
    assert replica.apply(4, encode_call("add", [1], session=(4, 1, 1))) == 2
    assert replica.apply(5, encode_call("add", [9], session=(4, 9, 4))) == 4
    stale = replica.apply(6, encode_call("add", [2], session=(4, 2, 1)))
    assert is_error(stale, ErrorCode.STALE_SEQUENCE)
    assert replica.model.seen == [3, 1, 2, 9]  # type: ignore[attr-defined]

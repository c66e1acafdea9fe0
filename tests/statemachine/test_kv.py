"""The key-value machine: commands, results, reads, bad input, sessions."""

from __future__ import annotations

import msgpack
import pytest

from ramraft.server.machines import kv
from ramraft.server.machines.kv import (
    BadCommandError,
    CasResult,
    DeleteResult,
    KVCommand,
    KVMachine,
    Op,
    PutResult,
    Session,
    decode_command,
    encode_cas,
    encode_delete,
    encode_noop,
    encode_put,
)
from ramraft.server.machines.statemachine import (
    TAG_KV,
    TAG_MODEL,
    ApplyHalted,
    CommandError,
    ErrorCode,
)
from tests.statemachine.contract import check_state_machine_contract


def test_is_a_state_machine() -> None:
    commands = [
        encode_put("a", b"1"),
        encode_put("b", b"2", (7, 1)),
        encode_cas("a", b"1", b"3"),
        encode_delete("b"),
        encode_noop(),
        encode_put("c", b"4"),
    ]
    check_state_machine_contract(KVMachine, commands, lambda m: list(m.items()))


def test_put_get_delete() -> None:
    m = KVMachine()
    assert m.apply(1, encode_put("a", b"1")) == PutResult(1)
    assert m.get("a") == (True, b"1")
    assert m.get("b") == (False, b"")
    assert m.apply(2, encode_put("a", b"2")) == PutResult(2)
    assert m.get("a") == (True, b"2")
    assert len(m) == 1
    assert m.apply(3, encode_delete("a")) == DeleteResult(True, 3)
    assert m.apply(4, encode_delete("a")) == DeleteResult(False, 4)
    assert m.get("a") == (False, b"")
    assert len(m) == 0
    assert m.applied_index == 4


def test_empty_value_is_a_value() -> None:
    m = KVMachine()
    m.apply(1, encode_put("a", b""))
    assert m.get("a") == (True, b"")
    assert m.range()[0] == [("a", b"")]


def test_cas_semantics() -> None:
    m = KVMachine()
    # expected None: only if absent
    assert m.apply(1, encode_cas("k", None, b"v1")) == CasResult(True, False, b"v1", 1)
    assert m.apply(2, encode_cas("k", None, b"v2")) == CasResult(False, True, b"v1", 2)
    assert m.get("k") == (True, b"v1")
    # expected value must match
    assert m.apply(3, encode_cas("k", b"nope", b"v3")) == CasResult(False, True, b"v1", 3)
    assert m.apply(4, encode_cas("k", b"v1", b"v3")) == CasResult(True, True, b"v3", 4)
    assert m.get("k") == (True, b"v3")
    # expected a value on an absent key
    assert m.apply(5, encode_cas("absent", b"x", b"y")) == CasResult(False, False, b"", 5)
    assert m.get("absent") == (False, b"")
    # b"" is a value, not absence
    assert m.apply(6, encode_cas("absent", b"", b"y")) == CasResult(False, False, b"", 6)
    m.apply(7, encode_put("e", b""))
    assert m.apply(8, encode_cas("e", None, b"z")) == CasResult(False, True, b"", 8)
    assert m.apply(9, encode_cas("e", b"", b"z")) == CasResult(True, True, b"z", 9)


def test_noop_and_empty_entry() -> None:
    m = KVMachine()
    assert m.apply(1, b"") is None
    assert m.apply(2, encode_noop()) is None
    assert m.applied_index == 2
    assert len(m) == 0


def test_range_prefix_start_after_limit() -> None:
    m = KVMachine()
    keys = ["a", "b/1", "b/2", "b/3", "b/30", "b0", "c", "b", "b/\U0010ffff", "b/\U0010ffffz"]
    for i, k in enumerate(keys, 1):
        m.apply(i, encode_put(k, k.encode()))
    items, more = m.range("b/")
    assert [k for k, _ in items] == ["b/1", "b/2", "b/3", "b/30", "b/\U0010ffff", "b/\U0010ffffz"]
    assert more is False
    assert all(v == k.encode() for k, v in items)
    items, more = m.range("b/", limit=2)
    assert [k for k, _ in items] == ["b/1", "b/2"] and more is True
    items, more = m.range("b/", start_after="b/2", limit=2)
    assert [k for k, _ in items] == ["b/3", "b/30"] and more is True
    items, more = m.range("b/", start_after="b/30", limit=2)
    assert [k for k, _ in items] == ["b/\U0010ffff", "b/\U0010ffffz"] and more is False
    # start_after before the prefix: starts at the prefix
    items, _ = m.range("b/", start_after="a", limit=1)
    assert items == [("b/1", b"b/1")]
    # start_after beyond every prefixed key
    assert m.range("b/", start_after="b0") == ([], False)
    # no prefix: everything, in code point order
    items, more = m.range()
    assert [k for k, _ in items] == sorted(keys) and more is False
    assert m.range(limit=len(keys)) == (items, False)
    assert m.range(limit=len(keys) - 1)[1] is True
    assert m.range("zzz") == ([], False)
    assert m.range("\U0010ffff") == ([], False)
    with pytest.raises(ValueError, match="limit must be >= 0"):
        m.range(limit=-1)


def test_range_matches_brute_force() -> None:
    import random

    rng = random.Random(7)
    m = KVMachine()
    alphabet = "ab/é\U0010ffff"
    present: dict[str, bytes] = {}
    for i in range(1, 400):
        k = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4)))
        if rng.random() < 0.3 and present:
            k = rng.choice(sorted(present))
            m.apply(i, encode_delete(k))
            present.pop(k)
        else:
            m.apply(i, encode_put(k, str(i).encode()))
            present[k] = str(i).encode()
    for _ in range(300):
        prefix = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 2)))
        after = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 3)))
        limit = rng.randint(0, 5)
        expect = sorted((k, v) for k, v in present.items() if k.startswith(prefix) and k > after)
        items, more = m.range(prefix, after, limit)
        if limit:
            assert items == expect[:limit] and more == (len(expect) > limit)
        else:
            assert items == expect and more is False
    # the sorted order is the order of UTF-8 bytes
    assert [k for k, _ in m.items()] == sorted(present, key=lambda s: s.encode())


def test_encode_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="empty"):
        encode_put("", b"v")
    with pytest.raises(TypeError, match="key must be str"):
        encode_put(b"k", b"v")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="value must be bytes"):
        encode_put("k", "v")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected must be bytes"):
        encode_cas("k", "x", b"v")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="session"):
        encode_put("k", b"v", Session(0, 1))
    with pytest.raises(ValueError, match="session"):
        encode_delete("k", (1, 2**64))
    with pytest.raises(ValueError, match="Unicode"):
        encode_put("\ud800", b"v")
    data = encode_put("k", bytearray(b"v"))  # type: ignore[arg-type]
    assert decode_command(data).value == b"v"


def test_decode_round_trip() -> None:
    assert decode_command(encode_put("k", b"v")) == KVCommand(Op.PUT, "k", b"v")
    assert decode_command(encode_put("k", b"v", (3, 4))) == KVCommand(
        Op.PUT, "k", b"v", None, Session(3, 4)
    )
    assert decode_command(encode_delete("k", (1, 2**64 - 1))).session == Session(1, 2**64 - 1)
    assert decode_command(encode_cas("k", None, b"v")) == KVCommand(Op.CAS, "k", b"v", None)
    assert decode_command(encode_cas("k", b"e", b"v", (9, 9))).expected == b"e"
    assert decode_command(encode_noop()).op is Op.NOOP
    assert decode_command(b"").op is Op.NOOP


BAD_COMMANDS = [
    bytes([TAG_MODEL]) + msgpack.packb([1, "k", b"v"]),  # another machine's tag
    bytes([TAG_KV]),  # nothing after the tag
    bytes([TAG_KV]) + b"\xc1",  # reserved msgpack byte
    bytes([TAG_KV]) + msgpack.packb([1, "k", b"v"])[:-1],  # truncated
    bytes([TAG_KV]) + msgpack.packb([1, "k", b"v"]) + b"\x00",  # trailing bytes
    bytes([TAG_KV]) + msgpack.packb({"op": 1}),
    bytes([TAG_KV]) + msgpack.packb([]),
    bytes([TAG_KV]) + msgpack.packb(["put", "k", b"v"]),
    bytes([TAG_KV]) + msgpack.packb([1, "k"]),  # put without value
    bytes([TAG_KV]) + msgpack.packb([1, "k", "str value"], use_bin_type=True),
    bytes([TAG_KV]) + msgpack.packb([1, b"bytes key", b"v"], use_bin_type=True),
    bytes([TAG_KV]) + msgpack.packb([1, "", b"v"], use_bin_type=True),  # empty key
    bytes([TAG_KV]) + msgpack.packb([1, "k", b"v", 0, 1], use_bin_type=True),  # client 0
    bytes([TAG_KV]) + msgpack.packb([1, "k", b"v", 1, -1], use_bin_type=True),
    bytes([TAG_KV]) + msgpack.packb([1, "k", b"v", 1], use_bin_type=True),  # half a session
    bytes([TAG_KV]) + msgpack.packb([3, "k", "x", b"v"], use_bin_type=True),
    bytes([TAG_KV]) + msgpack.packb([2, "k", b"extra"], use_bin_type=True),
    bytes([TAG_KV]) + msgpack.packb([0, 1, 2], use_bin_type=True),
    bytes([TAG_KV]) + b"\x93\x01\xa2\xff\xfe\xc4\x01v",  # key not UTF-8
    bytes([TAG_KV]) + msgpack.packb([1, "k", msgpack.ExtType(5, b"x")], use_bin_type=True),
    bytes([TAG_KV]) + b"\x91" * 100_000,  # nested too deep
    bytes([TAG_KV]) + b"\xdd\xff\xff\xff\xff",  # array claiming 4G items
]


@pytest.mark.parametrize("data", BAD_COMMANDS)
def test_bad_bytes_give_an_error_result_not_an_exception(data: bytes) -> None:
    m = KVMachine()
    m.apply(1, encode_put("k", b"before"))
    with pytest.raises(BadCommandError) as decoding:
        decode_command(data)
    result = m.apply(2, data)
    assert isinstance(result, CommandError)
    assert result.code is ErrorCode.BAD_COMMAND
    # the reason the decoder gave, e.g. "put takes 3 fields, got 2"
    assert result.message == str(decoding.value)
    # the entry counts as applied, and nothing changed
    assert m.applied_index == 2
    assert list(m.items()) == [("k", b"before")]
    # the machine goes on working
    assert m.apply(3, encode_put("k", b"after")) == PutResult(3)


def test_an_unknown_operation_halts_apply_and_changes_nothing() -> None:
    """A well-formed command with an operation this code does not know was
    written by a newer release: apply stops (ApplyHalted), changing nothing,
    and a leader refuses to propose it."""
    m = KVMachine()
    m.apply(1, encode_put("k", b"v"))
    unknown = bytes([TAG_KV]) + msgpack.packb([9, "k"])
    with pytest.raises(ApplyHalted, match="operation 9 is unknown"):
        m.apply(2, unknown)
    assert m.applied_index == 1 and m.get("k") == (True, b"v")
    assert m.check_proposal(unknown) is not None
    assert m.check_proposal(encode_put("k", b"w")) is None


def test_an_operation_newer_than_the_active_version_is_not_applied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(kv.SINCE, kv.Op.CAS, 2)
    m = KVMachine()
    cas = encode_cas("k", None, b"v")
    assert m.check_proposal(cas) is not None
    result = m.apply(1, cas)
    assert isinstance(result, CommandError) and result.code is ErrorCode.NOT_ACTIVE
    assert m.get("k") == (False, b"") and m.applied_index == 1
    m.active_version = 2
    assert m.check_proposal(cas) is None
    assert m.apply(2, cas) == CasResult(True, False, b"v", 2)


def test_bad_command_result_is_the_same_on_every_node() -> None:
    a, b = KVMachine(), KVMachine()
    for i, data in enumerate(BAD_COMMANDS, 1):
        assert a.apply(i, data) == b.apply(i, data)


# -- sessions -------------------------------------------------------------------


def test_retry_is_applied_once_and_gets_the_first_reply() -> None:
    m = KVMachine()
    s1 = Session(42, 1)
    put = encode_put("k", b"v1", s1)
    assert m.apply(1, put) == PutResult(1)
    m.apply(2, encode_put("k", b"other"))  # someone else writes
    # the retry of s1 is not applied again: the value stays b"other"
    assert m.apply(3, put) == PutResult(1)
    assert m.get("k") == (True, b"other")
    # a retried CAS returns its first reply, even though it would now fail
    cas = encode_cas("k", b"other", b"mine", Session(42, 2))
    assert m.apply(4, cas) == CasResult(True, True, b"mine", 4)
    m.apply(5, encode_put("k", b"theirs"))
    assert m.apply(6, cas) == CasResult(True, True, b"mine", 4)
    assert m.get("k") == (True, b"theirs")
    # delete too
    d = encode_delete("k", Session(42, 3))
    assert m.apply(7, d) == DeleteResult(True, 7)
    m.apply(8, encode_put("k", b"again"))
    assert m.apply(9, d) == DeleteResult(True, 7)
    assert m.get("k") == (True, b"again")


def test_older_sequence_is_stale_and_not_applied() -> None:
    m = KVMachine()
    m.apply(1, encode_put("k", b"1", (7, 1)))
    m.apply(2, encode_put("k", b"2", (7, 2)))
    result = m.apply(3, encode_put("k", b"old", (7, 1)))
    assert isinstance(result, CommandError) and result.code is ErrorCode.STALE_SEQUENCE
    assert m.get("k") == (True, b"2")


def test_sequence_gaps_are_allowed() -> None:
    m = KVMachine()
    m.apply(1, encode_put("k", b"1", (7, 1)))
    assert m.apply(2, encode_put("k", b"5", (7, 5))) == PutResult(2)
    assert m.get("k") == (True, b"5")


def test_unknown_client_must_start_at_one() -> None:
    m = KVMachine()
    result = m.apply(1, encode_put("k", b"v", (9, 2)))
    assert isinstance(result, CommandError) and result.code is ErrorCode.SESSION_EXPIRED
    assert m.get("k") == (False, b"")
    assert m.apply(2, encode_put("k", b"v", (9, 1))) == PutResult(2)


def test_sessions_are_per_client() -> None:
    m = KVMachine()
    assert m.apply(1, encode_put("a", b"x", (1, 1))) == PutResult(1)
    assert m.apply(2, encode_put("b", b"y", (2, 1))) == PutResult(2)
    assert m.get("b") == (True, b"y")


def test_error_replies_are_remembered_too() -> None:
    # A session write whose result is an error... there is none for KV writes
    # except through bad bytes (which carry no session). The reply of a failed
    # CAS is an ordinary result and is remembered like any other.
    m = KVMachine()
    cas = encode_cas("k", b"x", b"y", (5, 1))
    assert m.apply(1, cas) == CasResult(False, False, b"", 1)
    m.apply(2, encode_put("k", b"x"))
    assert m.apply(3, cas) == CasResult(False, False, b"", 1)
    assert m.get("k") == (True, b"x")


def test_idle_sessions_expire_by_log_index() -> None:
    m = KVMachine(session_idle_entries=10)
    m.apply(1, encode_put("k", b"1", (1, 1)))
    # index 11: idle for exactly 10 entries, still alive
    assert m.apply(11, encode_put("k", b"1", (1, 1))) == PutResult(1)
    # the retry refreshed it; at 22 it has been idle for 11 entries
    result = m.apply(22, encode_put("k", b"2", (1, 2)))
    assert isinstance(result, CommandError) and result.code is ErrorCode.SESSION_EXPIRED
    assert m.get("k") == (True, b"1")
    assert 1 not in m.sessions


def test_idle_sweep_happens_on_other_clients_writes() -> None:
    m = KVMachine(session_idle_entries=5)
    m.apply(1, encode_put("a", b"", (1, 1)))
    m.apply(2, encode_put("a", b"", (2, 1)))
    m.apply(8, encode_put("a", b"", (3, 1)))  # 1 and 2 idle > 5 entries: swept
    assert 1 not in m.sessions and 2 not in m.sessions and 3 in m.sessions


def test_table_size_bound_evicts_least_recently_used() -> None:
    m = KVMachine(max_sessions=3, session_idle_entries=None)
    for cid in (1, 2, 3):
        m.apply(cid, encode_put("k", b"", (cid, 1)))
    m.apply(4, encode_put("k", b"", (1, 1)))  # a retry counts as use: 2 is now LRU
    m.apply(5, encode_put("k", b"", (4, 1)))
    assert 2 not in m.sessions
    assert {1, 3, 4} <= {c for c in (1, 2, 3, 4) if c in m.sessions}
    result = m.apply(6, encode_put("k", b"", (2, 2)))
    assert isinstance(result, CommandError) and result.code is ErrorCode.SESSION_EXPIRED


def test_session_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_sessions must be at least 1"):
        KVMachine(max_sessions=0)
    with pytest.raises(ValueError, match="idle_entries must be at least 1"):
        KVMachine(session_idle_entries=0)


def test_indexes_must_increase() -> None:
    m = KVMachine()
    m.apply(5, encode_put("k", b"v"))
    for bad in (5, 4):
        with pytest.raises(ValueError, match="after applied index 5"):
            m.apply(bad, encode_put("k", b"w"))
    assert m.get("k") == (True, b"v")

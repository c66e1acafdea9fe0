"""Key-value version 2 in the machine alone: revisions, transactions,
delete-range and leases (machines/kvops.py), their snapshots (format 3) and
the switch that turns them on."""

from __future__ import annotations

import hashlib
import io
import random

import msgpack
import pytest

from ramraft.server.machines import kv
from ramraft.server.machines.cluster import ClusterMachine, encode_versions
from ramraft.server.machines.kv import (
    CasResult,
    DeleteResult,
    KVMachine,
    PutResult,
    Session,
    encode_cas,
    encode_delete,
    encode_lease_grant,
    encode_lease_renew,
    encode_lease_revoke,
    encode_put,
    encode_txn,
)
from ramraft.server.machines.kvops import (
    MAX_LEASE_KEYS,
    Compare,
    CompareResult,
    CompareTarget,
    Event,
    EventKind,
    KeyMeta,
    LeaseGrantResult,
    LeaseRenewResult,
    LeaseRevokeResult,
    Txn,
    TxnOp,
    TxnOpKind,
    TxnResult,
)
from ramraft.server.machines.statemachine import TAG_KV, CommandError, ErrorCode


class Applier:
    """A machine switched to key-value version 2, and its log index."""

    def __init__(self, machine: KVMachine | None = None) -> None:
        self.machine = machine or KVMachine()
        self.cluster = ClusterMachine(self.machine, kv=self.machine)
        self.index = self.machine.applied_index
        self.events: list[tuple[int, tuple[Event, ...]]] = []
        self.resets: list[int] = []
        self.machine.on_events = lambda r, e: self.events.append((r, e))
        self.machine.on_reset = self.resets.append

    def __call__(self, command: bytes) -> object:
        self.index += 1
        return self.cluster.apply(self.index, command)

    def switch(self) -> None:
        assert self(encode_versions(1, 2)) is None
        assert self.cluster.state.kv_version == 2


def put(key: str, value: bytes, lease: int = 0) -> TxnOp:
    return TxnOp(TxnOpKind.PUT, key, value, lease)


def get(key: str) -> TxnOp:
    return TxnOp(TxnOpKind.GET, key)


def delete_prefix(prefix: str, limit: int = 100) -> TxnOp:
    return TxnOp(TxnOpKind.DELETE_RANGE, prefix, limit=limit)


def value_is(key: str, value: bytes) -> Compare:
    return Compare(key, CompareTarget.VALUE, CompareResult.EQUAL, value)


def snapshot_bytes(machine: KVMachine) -> bytes:
    out = io.BytesIO()
    machine.snapshot().write_to(out)
    return out.getvalue()


def restored(data: bytes) -> KVMachine:
    machine = KVMachine()
    machine.restore(io.BytesIO(data))
    return machine


# -- the switch -----------------------------------------------------------------


def test_before_the_switch_nothing_changes_and_new_ops_are_refused() -> None:
    apply = Applier()
    assert apply(encode_put("a", b"1")) == PutResult(1)  # no revision yet
    assert apply.machine.revision == 0 and apply.machine.key_meta("a") == KeyMeta(0, 0, 0, 0)
    txn = encode_txn(Txn((), (put("b", b"2"),), ()))
    assert apply.machine.check_proposal(txn) is not None
    refused = apply(txn)
    assert isinstance(refused, CommandError) and refused.code is ErrorCode.NOT_ACTIVE
    assert apply.machine.get("b") == (False, b"")
    assert apply.events == []
    # A snapshot before the switch is format 2: what the previous release reads.
    assert snapshot_bytes(apply.machine)[4] == 2


def test_the_switch_gives_existing_keys_revision_one_and_changes_count_from_there() -> None:
    apply = Applier()
    apply(encode_put("old", b"x"))
    apply(encode_put("old", b"y"))  # versions before the switch are not counted
    apply.switch()
    m = apply.machine
    assert apply.resets == [1]
    assert m.revision == 1 and m.key_meta("old") == KeyMeta(1, 1, 1, 0)
    assert apply(encode_put("old", b"z")) == PutResult(apply.index, 2)
    assert m.key_meta("old") == KeyMeta(1, 2, 2, 0)
    assert apply(encode_put("new", b"n")) == PutResult(apply.index, 3)
    assert m.key_meta("new") == KeyMeta(3, 3, 1, 0)
    # A change that changes nothing does not advance the revision.
    assert apply(encode_delete("absent")) == DeleteResult(False, apply.index, 3)
    failed = apply(encode_cas("new", b"wrong", b"v"))
    assert failed == CasResult(False, True, b"n", apply.index, 3, 3, 1)
    assert apply(encode_delete("new")) == DeleteResult(True, apply.index, 4)
    assert m.key_meta("new") == KeyMeta(0, 0, 0, 0)
    assert apply(encode_put("new", b"again")) == PutResult(apply.index, 5)
    assert m.key_meta("new") == KeyMeta(5, 5, 1, 0), "a re-created key starts over"
    assert [r for r, _ in apply.events] == [2, 3, 4, 5]
    assert apply.events[2][1] == (Event(EventKind.DELETE, "new", b"", 0, 4, 0, 0),)


def test_switch_is_the_same_on_every_replica_whatever_their_history() -> None:
    """Two replicas that reached the same data by different writes before
    the switch hold equal states (and snapshot bytes) after it."""
    a, b = Applier(), Applier()
    a(encode_put("k", b"1"))
    a(encode_put("filler", b""))
    a(encode_delete("filler"))
    a(encode_put("other", b"o"))
    b(encode_put("k", b"0"))
    b(encode_put("other", b"o"))
    b(encode_put("k", b"1"))
    while b.index < a.index:
        b(b"")  # a no-op entry: the same index on both
    a.switch()
    b.switch()
    for key in ("k", "other"):
        assert a.machine.key_meta(key) == b.machine.key_meta(key) == KeyMeta(1, 1, 1, 0)
    assert snapshot_bytes(a.machine) == snapshot_bytes(b.machine)


# -- transactions ------------------------------------------------------------------


def test_txn_applies_one_branch_in_one_revision() -> None:
    apply = Applier()
    apply.switch()
    apply(encode_put("acct/a", b"10"))
    apply(encode_put("acct/b", b"5"))
    transfer = Txn(
        (value_is("acct/a", b"10"), value_is("acct/b", b"5")),
        (put("acct/a", b"7"), put("acct/b", b"8"), get("acct/a")),
        (get("acct/a"),),
    )
    result = apply(encode_txn(transfer))
    assert isinstance(result, TxnResult) and result.succeeded
    assert result.revision == 4 and apply.machine.revision == 4
    assert result.responses[0] == (0,) and result.responses[1] == (0,)
    # A get after a put of the same branch sees it.
    assert result.responses[2] == (2, True, b"7", 2, 4, 2, 0)
    revision, events = apply.events[-1]
    assert revision == 4 and [e.key for e in events] == ["acct/a", "acct/b"]
    # The same transaction again: the compares fail, the failure branch runs,
    # nothing changes, the revision stays.
    again = apply(encode_txn(transfer))
    assert isinstance(again, TxnResult) and not again.succeeded
    assert again.responses == ((2, True, b"7", 2, 4, 2, 0),) and again.revision == 4
    assert apply.events[-1][0] == 4, "a read-only branch emits nothing"


def test_txn_compares_on_every_target() -> None:
    apply = Applier()
    apply.switch()
    apply(encode_put("k", b"v"))  # revision 2, version 1
    apply(encode_put("k", b"w"))  # revision 3, version 2

    def holds(target: CompareTarget, result: CompareResult, operand: bytes | int) -> bool:
        out = apply(encode_txn(Txn((Compare("k", target, result, operand),), (), ())))
        assert isinstance(out, TxnResult)
        return out.succeeded

    assert holds(CompareTarget.VERSION, CompareResult.EQUAL, 2)
    assert holds(CompareTarget.CREATE, CompareResult.EQUAL, 2)
    assert holds(CompareTarget.MOD, CompareResult.GREATER, 2)
    assert not holds(CompareTarget.MOD, CompareResult.LESS, 3)
    assert holds(CompareTarget.VALUE, CompareResult.NOT_EQUAL, b"v")
    assert holds(CompareTarget.VALUE, CompareResult.GREATER, b"v")
    assert holds(CompareTarget.LEASE, CompareResult.EQUAL, 0)
    # An absent key: version 0; its value compares false whatever the test.
    absent = Compare("nope", CompareTarget.VERSION, CompareResult.EQUAL, 0)
    value = Compare("nope", CompareTarget.VALUE, CompareResult.NOT_EQUAL, b"x")
    out = apply(encode_txn(Txn((absent,), (), ())))
    assert isinstance(out, TxnResult) and out.succeeded
    out = apply(encode_txn(Txn((value,), (), ())))
    assert isinstance(out, TxnResult) and not out.succeeded


def test_txn_writes_of_one_branch_may_not_overlap() -> None:
    for ops in (
        (put("k", b"1"), put("k", b"2")),
        (put("p/k", b"1"), delete_prefix("p/")),
        (delete_prefix("p/"), delete_prefix("p/q")),
        (TxnOp(TxnOpKind.DELETE, "k"), put("k", b"1")),
    ):
        with pytest.raises(ValueError, match=r"twice|inside|overlapping"):
            encode_txn(Txn((), ops, ()))
    # Crafted past the encoder, the same verdict on every node.
    items = [
        TAG_KV,
        *msgpack.packb([4, [], [[0, "k", b"1", 0], [0, "k", b"2", 0]], []], use_bin_type=True),
    ]
    apply = Applier()
    apply.switch()
    result = apply(bytes(items))
    assert isinstance(result, CommandError) and result.code is ErrorCode.BAD_COMMAND
    assert apply.machine.get("k") == (False, b"")


def test_delete_range_is_bounded_and_whole() -> None:
    apply = Applier()
    apply.switch()
    for n in range(5):
        apply(encode_put(f"p/{n}", b"x"))
    apply(encode_put("q", b"keep"))
    too_many = apply(encode_txn(Txn((), (put("q", b"changed"), delete_prefix("p/", 4)), ())))
    assert isinstance(too_many, CommandError) and too_many.code is ErrorCode.LIMIT_EXCEEDED
    assert apply.machine.count("p/") == 5 and apply.machine.get("q") == (True, b"keep")
    before = apply.machine.revision
    done = apply(encode_txn(Txn((), (delete_prefix("p/", 5),), ())))
    assert isinstance(done, TxnResult) and done.responses == ((4, 5),)
    assert done.revision == before + 1 and apply.machine.count("p/") == 0
    revision, events = apply.events[-1]
    assert revision == before + 1 and [e.key for e in events] == [f"p/{n}" for n in range(5)]
    assert all(e.kind is EventKind.DELETE and e.mod_revision == revision for e in events)


def test_txn_range_is_bounded_by_count_and_bytes() -> None:
    apply = Applier()
    apply.switch()
    for n in range(10):
        apply(encode_put(f"r/{n}", b"v" * 100))
    op = TxnOp(TxnOpKind.RANGE, "r/", limit=5, max_bytes=1 << 20)
    result = apply(encode_txn(Txn((), (op,), ())))
    assert isinstance(result, TxnResult)
    kind, items, more = result.responses[0]
    assert kind == 3 and len(items) == 5 and more
    op = TxnOp(TxnOpKind.RANGE, "r/", limit=10, max_bytes=250)
    result = apply(encode_txn(Txn((), (op,), ())))
    assert isinstance(result, TxnResult)
    _, items, more = result.responses[0]
    assert len(items) == 2 and more, "bytes bound the page too"
    assert items[0][:2] == ("r/0", b"v" * 100) and items[0][2:] == (2, 2, 1, 0)


def test_a_retried_txn_is_applied_once() -> None:
    apply = Applier()
    apply.switch()
    txn = encode_txn(Txn((), (put("k", b"1"),), ()), Session(9, 1))
    first = apply(txn)
    apply(encode_put("k", b"other"))
    assert apply(txn) == first
    assert apply.machine.get("k") == (True, b"other")


# -- leases -----------------------------------------------------------------------


def test_lease_grant_attach_revoke() -> None:
    apply = Applier()
    apply.switch()
    granted = apply(encode_lease_grant(0, 30))
    assert isinstance(granted, LeaseGrantResult) and granted.lease_id == 1 and granted.ttl == 30
    mine = apply(encode_lease_grant(77, 5))
    assert isinstance(mine, LeaseGrantResult) and mine.lease_id == 77
    taken = apply(encode_lease_grant(77, 5))
    assert isinstance(taken, CommandError) and taken.code is ErrorCode.ALREADY_EXISTS
    apply(encode_txn(Txn((), (put("l/a", b"1", 77), put("l/b", b"2", 77)), ())))
    assert apply.machine.key_meta("l/a").lease == 77
    assert apply.machine.lease(77) == (5, 0, ["l/a", "l/b"])
    # A plain put detaches the key (etcd's rule).
    apply(encode_put("l/b", b"3"))
    assert apply.machine.lease(77) == (5, 0, ["l/a"])
    unknown = apply(encode_txn(Txn((), (put("x", b"1", 999),), ())))
    assert isinstance(unknown, CommandError) and unknown.code is ErrorCode.NOT_FOUND
    before = apply.machine.revision
    revoked = apply(encode_lease_revoke(77))
    assert revoked == LeaseRevokeResult(True, 1, apply.index, before + 1)
    assert apply.machine.get("l/a") == (False, b"") and apply.machine.get("l/b")[0]
    gone = apply(encode_lease_revoke(77))
    assert isinstance(gone, CommandError) and gone.code is ErrorCode.NOT_FOUND


def test_an_expiry_with_a_stale_epoch_does_not_revoke() -> None:
    """The leader's expiry names the epoch it saw; a renew applied before it
    (under another leader, say) bumps the epoch and the expiry is void."""
    apply = Applier()
    apply.switch()
    apply(encode_lease_grant(5, 10))
    apply(encode_txn(Txn((), (put("held", b"1", 5),), ())))
    seen_epoch = apply.machine.lease(5)[1]  # type: ignore[index]
    renewed = apply(encode_lease_renew([5, 6]))
    assert renewed == LeaseRenewResult(((5, 10, seen_epoch + 1), (6, 0, 0)), apply.index)
    stale = apply(encode_lease_revoke(5, seen_epoch))
    assert isinstance(stale, LeaseRevokeResult) and not stale.revoked
    assert apply.machine.get("held") == (True, b"1")
    fresh = apply(encode_lease_revoke(5, seen_epoch + 1))
    assert isinstance(fresh, LeaseRevokeResult) and fresh.revoked and fresh.deleted == 1
    assert apply.machine.get("held") == (False, b"")


def test_a_lease_holds_a_bounded_number_of_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kv, "MAX_LEASE_KEYS", 3)
    apply = Applier()
    apply.switch()
    apply(encode_lease_grant(1, 10))
    ok = apply(encode_txn(Txn((), tuple(put(f"k{n}", b"", 1) for n in range(3)), ())))
    assert isinstance(ok, TxnResult)
    full = apply(encode_txn(Txn((), (put("k3", b"", 1),), ())))
    assert isinstance(full, CommandError) and full.code is ErrorCode.LIMIT_EXCEEDED
    assert MAX_LEASE_KEYS == 10_000


# -- snapshots ----------------------------------------------------------------------


def build_state(seed: int) -> Applier:
    rng = random.Random(seed)
    apply = Applier()
    for n in range(50):
        apply(encode_put(f"pre/{n}", bytes([n])))
    apply.switch()
    apply(encode_lease_grant(0, 20))
    apply(encode_lease_grant(0, 40))
    for n in range(300):
        key = f"k/{rng.randrange(80)}"
        choice = rng.random()
        if choice < 0.5:
            apply(encode_put(key, bytes([n % 256]), Session(1 + n % 3, 1 + n // 3)))
        elif choice < 0.7:
            apply(encode_txn(Txn((), (put(key, b"leased", rng.choice([1, 2])),), ())))
        elif choice < 0.8:
            apply(encode_delete(key))
        elif choice < 0.9:
            apply(encode_put(f"pre/{rng.randrange(50)}", b"changed"))
        else:
            apply(encode_lease_renew([1]))
    return apply


def test_format_3_round_trip_keeps_revisions_meta_and_leases() -> None:
    apply = build_state(7)
    m = apply.machine
    data = snapshot_bytes(m)
    assert data[4] == 3
    back = restored(data)
    assert back.revision == m.revision and back.applied_index == m.applied_index
    assert list(back.items()) == list(m.items())
    for key, _ in m.items():
        assert back.key_meta(key) == m.key_meta(key), key
    assert back.leases() == m.leases()
    for lease_id in m.leases():
        assert back.lease(lease_id) == m.lease(lease_id)
    assert snapshot_bytes(back) == data, "canonical: restore then snapshot gives the same bytes"
    # And the restored machine goes on exactly as the original.
    after = Applier(back)
    after.cluster.load_state(apply.cluster.state)
    apply(encode_lease_revoke(2))
    after(encode_lease_revoke(2))
    assert snapshot_bytes(back) == snapshot_bytes(m)


def test_format_3_view_is_the_state_when_taken() -> None:
    apply = build_state(3)
    m = apply.machine
    expected = snapshot_bytes(m)
    job = m.snapshot()
    for n in range(200):
        apply(encode_put(f"k/{n % 90}", b"later"))
        if n % 7 == 0:
            apply(encode_delete(f"pre/{n % 50}"))
    apply(encode_lease_revoke(1))
    out = io.BytesIO()
    job.write_to(out)
    assert out.getvalue() == expected


def test_format_2_snapshots_stay_readable() -> None:
    apply = Applier()
    for n in range(10):
        apply(encode_put(f"k{n}", b"v", Session(3, n + 1)))
    data = snapshot_bytes(apply.machine)
    assert data[4] == 2
    back = restored(data)
    assert back.revision == 0 and list(back.items()) == list(apply.machine.items())
    later = Applier(back)
    later.switch()
    assert back.key_meta("k1") == KeyMeta(1, 1, 1, 0)


def test_restore_says_the_history_is_gone() -> None:
    apply = build_state(1)
    data = snapshot_bytes(apply.machine)
    other = KVMachine()
    resets: list[int] = []
    other.on_reset = resets.append
    other.restore(io.BytesIO(data))
    assert resets == [apply.machine.revision]


@pytest.mark.parametrize("damage", ["meta", "lease", "header"])
def test_bad_format_3_contents_are_refused(damage: str) -> None:
    from ramraft.server.machines.statemachine import (
        FrameReader,
        FrameWriter,
        SnapshotFormatError,
    )

    apply = build_state(5)
    data = snapshot_bytes(apply.machine)
    reader = FrameReader(io.BytesIO(data), b"RRKV", 3)
    frames = []
    while True:
        try:
            frames.append(msgpack.unpackb(reader.frame(), raw=False))
        except SnapshotFormatError:
            break
    header, body = frames[0], frames[1:]
    if damage == "header":
        header["base_revision"] = header["revision"] + 1
    for frame in body:
        if damage == "meta" and frame[0] == 2:
            frame[3][0] = [1, 2]
            break
        if damage == "lease" and frame[0] == 4:
            frame[1] = [x for x in frame[1] if x[0] != 1]
            break
    out = io.BytesIO()
    writer = FrameWriter(out, b"RRKV", 3)
    for frame in [header, *body]:
        writer.frame(msgpack.packb(frame, use_bin_type=True))
    with pytest.raises(SnapshotFormatError):
        restored(out.getvalue())


def _many_keys(apply: Applier, seed: int, leases: bool) -> None:
    """Enough keys for several data frames, cut by count and by bytes."""
    rng = random.Random(seed)
    for n in range(9_000):
        value = rng.randbytes(rng.choice((0, 3, 40, 120, 700)))
        key = f"many/{rng.getrandbits(40):010x}/{n}"
        if leases and n % 7 == 0:
            apply(encode_txn(Txn((), (put(key, value, 1 + n % 2),), ())))
        else:
            apply(encode_put(key, value, Session(1 + n % 5, 1 + n // 5)))
        if n % 11 == 0:
            apply(encode_delete(key))
    for n in range(5_000):  # small pairs: frames cut at _MAX_CHUNK_KEYS
        apply(encode_put(f"tiny/{n:05d}", b""))


# The sha256 of the snapshots below, as this release writes them. A state
# check (runtime/checks.py) compares these bytes between nodes, and during a
# rolling upgrade between two releases: bytes that change for the same state
# are a new snapshot format (a new _KV_VERSION), never a quiet change.
FORMAT_2_SHA256 = "5e70f366fdbbc4a6618ab8895c7150fd2f8e6f83db7b4d689a1fe140d5cc0008"
FORMAT_3_SHA256 = "953e23d1a94264e54ab51ad1e8577658680d9ffddcb6f952d32774fc989e6b88"
FORMAT_3_VIEW_SHA256 = "568c46254c11cf740bb57ef429aba89f159090e27a14fdf10b551d4303417e28"


def test_the_snapshot_bytes_of_a_given_state_do_not_change() -> None:
    plain = Applier()
    _many_keys(plain, 3, leases=False)
    data = snapshot_bytes(plain.machine)
    assert data[4] == 2
    assert hashlib.sha256(data).hexdigest() == FORMAT_2_SHA256

    apply = build_state(7)
    _many_keys(apply, 4, leases=True)
    data = snapshot_bytes(apply.machine)
    assert data[4] == 3
    assert hashlib.sha256(data).hexdigest() == FORMAT_3_SHA256

    # A view taken before writes it must not see (its copy-on-write path).
    job = apply.machine.snapshot()
    rng = random.Random(5)
    keys = [key for key, _ in apply.machine.items()]
    for n in range(2_000):
        key = rng.choice(keys)
        if n % 3 == 0:
            apply(encode_delete(key))
        else:
            apply(encode_put(key if n % 2 else f"{key}/new", b"later"))
    out = io.BytesIO()
    job.write_to(out)
    assert out.getvalue() == data, "the view is the state it was taken at"
    assert hashlib.sha256(snapshot_bytes(apply.machine)).hexdigest() == FORMAT_3_VIEW_SHA256

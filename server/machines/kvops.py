"""The key-value commands new in key-value version 2: transactions and
leases, and the data they carry (revisions, events, results).

Everything here is plain data and pure functions: encoding a command,
decoding and checking one (the same verdict on every node), and the shapes
of their results. The key-value machine (machines/kv.py) applies them.

Revisions
---------
From the switch to key-value version 2 on (machines/cluster.py), the machine
keeps a *revision*: a cluster-wide counter that every applied change advances
by exactly one (all changes of one transaction, or of one lease revoke, share
one revision; a command that changes nothing does not advance it). It is not
the Raft index: no-ops, reads in a transaction, failed compare-and-swaps,
cluster and application entries leave it alone. Every key carries
:class:`KeyMeta`: the revision that created it, the one that last changed it,
its version (1 at creation, +1 per change) and the lease it is attached to.
At the switch the revision becomes 1 and every key that exists then is
deemed created and changed at revision 1, version 1 (no per-key work: the
machine stores no meta for such keys and reports these values).

Transactions (``TAG_KV`` then msgpack ``[4, compares, success, failure(,
client, seq, fua)]``)
-------------------------------------------------------------------------
``compares`` is a list of ``[key, target, result, operand]``; when all hold
the ``success`` ops run, otherwise the ``failure`` ops. Targets: the value
(``operand`` bytes; a comparison of an absent key's value is always false, as
etcd has it), version, create revision, mod revision, lease (``operand`` an
int; 0 for an absent key). Results: equal, greater, less, not equal.

Ops run in order and see the effects of earlier ops of the same branch:

======== ============================================= =========================
op       array                                         result (plain tuple)
======== ============================================= =========================
put      ``[0, key, value, lease]``                    ``(0,)``
delete   ``[1, key]``                                  ``(1, deleted)``
get      ``[2, key]``                                  ``(2, found, value, *meta)``
range    ``[3, prefix, start_after, limit, max_bytes]`` ``(3, ((key, value, *meta), ...), more)``
del-rng  ``[4, prefix, max_keys]``                     ``(4, deleted_count)``
======== ============================================= =========================

The bounds (``limit``, ``max_bytes``, ``max_keys``) travel in the command, so
an apply is bounded and the same on every node whatever each node's flags
say; the leader sets them from its own before proposing. A delete-range
that would remove more than ``max_keys`` keys fails whole (LIMIT_EXCEEDED):
nothing of the transaction is applied. The keys one branch writes (puts,
deletes, delete-range prefixes) must not overlap, so that every key changes
at most once per revision (checked when decoding: BAD_COMMAND otherwise).

Leases
------
====== ========================================= ===============================
op     array                                     result
====== ========================================= ===============================
grant  ``[5, lease_id, ttl(, session)]``         ``LeaseGrantResult``
revoke ``[6, lease_id, epoch|nil(, session)]``   ``LeaseRevokeResult``
renew  ``[7, [lease_id, ...]]``                  ``LeaseRenewResult``
====== ========================================= ===============================

``lease_id`` 0 in a grant: the machine picks the lowest unused id above the
last one it picked. A revoke with an ``epoch`` is the leader's expiry: it only
takes effect if the lease has not been renewed since the leader read that
epoch (a renew bumps it), so an expiry decided by a leader that has since
been deposed cannot kill a lease renewed under the next one. A revoke
without one is a client's. Revoking deletes the lease's keys, in one revision.
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

MAX_INT64 = (1 << 63) - 1
MAX_LEASE_TTL = 10 * 365 * 24 * 3600  # seconds: ten years
MAX_LEASE_KEYS = 10_000
"""Keys one lease may hold: its revoke (or expiry) deletes them in one apply,
which must stay short. Part of the code, not configuration: every node must
decide the same."""


class KeyMeta(NamedTuple):
    """What a key carries besides its value (all 0 for an absent key)."""

    create_revision: int
    mod_revision: int
    version: int
    lease: int


ABSENT = KeyMeta(0, 0, 0, 0)


class EventKind(enum.IntEnum):
    PUT = 0
    DELETE = 1


class Event(NamedTuple):
    """One change of one key, as watchers see it. A delete carries the key,
    an empty value and the deleting revision as ``mod_revision``."""

    kind: EventKind
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    def size(self) -> int:
        """About what the event costs to hold and send, in bytes."""
        return len(self.key) + len(self.value) + 64


class CompareTarget(enum.IntEnum):
    VALUE = 0
    VERSION = 1
    CREATE = 2
    MOD = 3
    LEASE = 4


class CompareResult(enum.IntEnum):
    EQUAL = 0
    GREATER = 1
    LESS = 2
    NOT_EQUAL = 3


class Compare(NamedTuple):
    key: str
    target: CompareTarget
    result: CompareResult
    operand: bytes | int

    def holds(self, found: bool, value: bytes, meta: KeyMeta) -> bool:
        """Whether this comparison holds for the key's current state."""
        target = self.target
        if target is CompareTarget.VALUE:
            if not found:
                return False  # an absent key has no value to compare (etcd's rule)
            return _compare(value, self.operand, self.result)
        actual = {
            CompareTarget.VERSION: meta.version,
            CompareTarget.CREATE: meta.create_revision,
            CompareTarget.MOD: meta.mod_revision,
            CompareTarget.LEASE: meta.lease,
        }[target]
        return _compare(actual, self.operand, self.result)


def _compare(actual: Any, operand: Any, result: CompareResult) -> bool:
    if result is CompareResult.EQUAL:
        return bool(actual == operand)
    if result is CompareResult.NOT_EQUAL:
        return bool(actual != operand)
    if result is CompareResult.GREATER:
        return bool(actual > operand)
    return bool(actual < operand)


class TxnOpKind(enum.IntEnum):
    PUT = 0
    DELETE = 1
    GET = 2
    RANGE = 3
    DELETE_RANGE = 4


class TxnOp(NamedTuple):
    """One op of a transaction branch (see the module docstring); ``key``
    is the prefix for RANGE and DELETE_RANGE, ``limit`` the most keys a
    RANGE returns or a DELETE_RANGE may delete."""

    kind: TxnOpKind
    key: str
    value: bytes = b""
    lease: int = 0
    start_after: str = ""
    limit: int = 0
    max_bytes: int = 0


class Txn(NamedTuple):
    compares: tuple[Compare, ...]
    success: tuple[TxnOp, ...]
    failure: tuple[TxnOp, ...]


# -- results -------------------------------------------------------------------
#
# Op results are plain tuples (the table above): they go into the session
# table, snapshots and forwarded answers as they are.

OpResult = tuple[Any, ...]


class TxnResult(NamedTuple):
    succeeded: bool
    responses: tuple[OpResult, ...]
    # The field shadows tuple.index(); the name is the API's.
    index: int  # type: ignore[assignment]
    revision: int


class LeaseGrantResult(NamedTuple):
    lease_id: int
    ttl: int
    # The field shadows tuple.index(); the name is the API's.
    index: int  # type: ignore[assignment]
    revision: int


class LeaseRevokeResult(NamedTuple):
    revoked: bool
    """False: an expiry whose epoch is stale (the lease was renewed since)."""
    deleted: int
    # The field shadows tuple.index(); the name is the API's.
    index: int  # type: ignore[assignment]
    revision: int


class LeaseRenewResult(NamedTuple):
    leases: tuple[tuple[int, int, int], ...]
    """``(lease_id, ttl, epoch)`` per renewed lease; ttl 0: no such lease."""
    # The field shadows tuple.index(); the name is the API's.
    index: int  # type: ignore[assignment]


class BadV2Command(ValueError):
    """The bytes are not a valid version-2 command (the reason says why)."""


# -- encoding ------------------------------------------------------------------


def compare_plain(compare: Compare) -> list[Any]:
    return [compare.key, int(compare.target), int(compare.result), compare.operand]


def op_plain(op: TxnOp) -> list[Any]:
    kind = op.kind
    if kind is TxnOpKind.PUT:
        return [int(kind), op.key, op.value, op.lease]
    if kind in (TxnOpKind.DELETE, TxnOpKind.GET):
        return [int(kind), op.key]
    if kind is TxnOpKind.RANGE:
        return [int(kind), op.key, op.start_after, op.limit, op.max_bytes]
    return [int(kind), op.key, op.limit]


def txn_items(txn: Txn) -> list[Any]:
    """The array after the op number; checked (raises BadV2Command) so that
    a command that would be refused at apply is refused before proposing."""
    check_txn(txn)
    return [
        [compare_plain(c) for c in txn.compares],
        [op_plain(o) for o in txn.success],
        [op_plain(o) for o in txn.failure],
    ]


# -- decoding ------------------------------------------------------------------


def _int(value: object, what: str, low: int = 0, high: int = MAX_INT64) -> int:
    if type(value) is not int or not low <= value <= high:
        raise BadV2Command(f"{what} must be an integer in {low}..{high}, not {value!r}")
    return value


def _key(value: object, what: str = "key", empty: bool = False) -> str:
    if type(value) is not str or (not value and not empty):
        raise BadV2Command(f"{what} must be a {'' if empty else 'non-empty '}string")
    return value


def decode_compare(item: object) -> Compare:
    items: Any = item
    if type(items) not in (list, tuple) or len(items) != 4:
        raise BadV2Command("a compare is [key, target, result, operand]")
    key, raw_target, raw_result, operand = items
    try:
        target = CompareTarget(raw_target)
        result = CompareResult(raw_result)
    except ValueError:
        raise BadV2Command(
            f"unknown compare target {raw_target!r} or result {raw_result!r}"
        ) from None
    if target is CompareTarget.VALUE:
        if type(operand) is not bytes:
            raise BadV2Command("a value compare needs bytes")
    else:
        _int(operand, f"a {target.name.lower()} compare's operand", -MAX_INT64, MAX_INT64)
    return Compare(_key(key), target, result, operand)


def decode_op(item: object) -> TxnOp:
    items: Any = item
    if type(items) not in (list, tuple) or not items or type(items[0]) is not int:
        raise BadV2Command("a transaction op is an array starting with its kind")
    try:
        kind = TxnOpKind(items[0])
    except ValueError:
        raise BadV2Command(f"unknown transaction op {items[0]}") from None
    arity = {
        TxnOpKind.PUT: 4,
        TxnOpKind.DELETE: 2,
        TxnOpKind.GET: 2,
        TxnOpKind.RANGE: 5,
        TxnOpKind.DELETE_RANGE: 3,
    }[kind]
    if len(items) != arity:
        raise BadV2Command(f"a {kind.name.lower()} op takes {arity} fields, got {len(items)}")
    if kind is TxnOpKind.PUT:
        if type(items[2]) is not bytes:
            raise BadV2Command("a put's value must be bytes")
        return TxnOp(kind, _key(items[1]), items[2], lease=_int(items[3], "lease"))
    if kind in (TxnOpKind.DELETE, TxnOpKind.GET):
        return TxnOp(kind, _key(items[1]))
    if kind is TxnOpKind.RANGE:
        return TxnOp(
            kind,
            _key(items[1], "prefix", empty=True),
            start_after=_key(items[2], "start_after", empty=True),
            limit=_int(items[3], "range limit", 1),
            max_bytes=_int(items[4], "range max_bytes", 1),
        )
    return TxnOp(kind, _key(items[1], "prefix", empty=True), limit=_int(items[2], "max_keys", 1))


def decode_txn(items: tuple[Any, ...]) -> Txn:
    """``items``: the command's array after the op number, without the
    session."""
    if len(items) != 3 or not all(type(part) in (list, tuple) for part in items):
        raise BadV2Command("a transaction is [compares, success, failure]")
    txn = Txn(
        tuple(decode_compare(c) for c in items[0]),
        tuple(decode_op(o) for o in items[1]),
        tuple(decode_op(o) for o in items[2]),
    )
    check_txn(txn)
    return txn


def check_txn(txn: Txn) -> None:
    """The rules every node checks the same way: the keys written by one
    branch do not overlap."""
    for name, ops in (("success", txn.success), ("failure", txn.failure)):
        written: set[str] = set()
        prefixes: list[str] = []
        for op in ops:
            if op.kind in (TxnOpKind.PUT, TxnOpKind.DELETE):
                if op.key in written:
                    raise BadV2Command(f"the {name} ops write key {op.key!r} twice")
                written.add(op.key)
            elif op.kind is TxnOpKind.DELETE_RANGE:
                prefixes.append(op.key)
        for i, prefix in enumerate(prefixes):
            for other in prefixes[i + 1 :]:
                if prefix.startswith(other) or other.startswith(prefix):
                    raise BadV2Command(
                        f"the {name} ops delete overlapping prefixes {prefix!r} and {other!r}"
                    )
            clash = sorted(k for k in written if k.startswith(prefix))
            if clash:
                raise BadV2Command(
                    f"the {name} ops write key {clash[0]!r} inside deleted prefix {prefix!r}"
                )


def decode_renew(items: tuple[Any, ...]) -> tuple[int, ...]:
    if len(items) != 1 or type(items[0]) not in (list, tuple) or not items[0]:
        raise BadV2Command("a renew is [[lease_id, ...]]")
    return tuple(_int(i, "lease id", 1) for i in items[0])


# -- results as plain data (session table, snapshots, forwarded answers) ----------


def meta_fields(meta: KeyMeta) -> tuple[int, int, int, int]:
    return (meta.create_revision, meta.mod_revision, meta.version, meta.lease)


def results_to_plain(result: object) -> tuple[Any, ...] | None:
    """A version-2 result as plain data; None if ``result`` is none of them."""
    kind = type(result)
    if kind is TxnResult:
        assert isinstance(result, TxnResult)
        return (4, result.succeeded, list(result.responses), result.index, result.revision)
    if kind is LeaseGrantResult:
        assert isinstance(result, LeaseGrantResult)
        return (5, result.lease_id, result.ttl, result.index, result.revision)
    if kind is LeaseRevokeResult:
        assert isinstance(result, LeaseRevokeResult)
        return (6, result.revoked, result.deleted, result.index, result.revision)
    if kind is LeaseRenewResult:
        assert isinstance(result, LeaseRenewResult)
        return (7, [list(x) for x in result.leases], result.index)
    return None


def _ints(values: Any, n: int) -> tuple[int, ...]:
    if type(values) not in (list, tuple) or len(values) != n:
        raise ValueError(f"expected {n} integers, got {values!r}")
    if not all(type(v) is int for v in values):
        raise ValueError(f"expected integers, got {values!r}")
    return tuple(values)


def _op_result_from_plain(plain: Any) -> OpResult:
    if type(plain) not in (list, tuple) or not plain or type(plain[0]) is not int:
        raise ValueError(f"malformed op result {plain!r}")
    kind = plain[0]
    if kind == TxnOpKind.PUT and len(plain) == 1:
        return (0,)
    if kind in (TxnOpKind.DELETE, TxnOpKind.DELETE_RANGE) and len(plain) == 2:
        value = plain[1]
        if type(value) is not (bool if kind == TxnOpKind.DELETE else int):
            raise ValueError(f"malformed op result {plain!r}")
        return (kind, value)
    if kind == TxnOpKind.GET and len(plain) == 7:
        if type(plain[1]) is not bool or type(plain[2]) is not bytes:
            raise ValueError(f"malformed get result {plain!r}")
        return (2, plain[1], plain[2], *_ints(plain[3:], 4))
    if kind == TxnOpKind.RANGE and len(plain) == 3:
        items = []
        for item in plain[1]:
            if type(item) not in (list, tuple) or len(item) != 6:
                raise ValueError(f"malformed range item {item!r}")
            if type(item[0]) is not str or type(item[1]) is not bytes:
                raise ValueError(f"malformed range item {item!r}")
            items.append((item[0], item[1], *_ints(item[2:], 4)))
        if type(plain[2]) is not bool:
            raise ValueError(f"malformed range result {plain!r}")
        return (3, tuple(items), plain[2])
    raise ValueError(f"malformed op result {plain!r}")


def results_from_plain(plain: Any) -> object:
    """The inverse of :func:`results_to_plain`; ValueError for anything else."""
    kind = plain[0]
    if kind == 4 and len(plain) == 5 and type(plain[1]) is bool:
        responses = tuple(_op_result_from_plain(p) for p in plain[2])
        return TxnResult(plain[1], responses, *_ints(plain[3:], 2))
    if kind == 5 and len(plain) == 5:
        return LeaseGrantResult(*_ints(plain[1:], 4))
    if kind == 6 and len(plain) == 5 and type(plain[1]) is bool:
        return LeaseRevokeResult(plain[1], *_ints(plain[2:], 3))
    if kind == 7 and len(plain) == 3:
        leases = tuple(_ints(x, 3) for x in plain[1])
        return LeaseRenewResult(leases, *_ints(plain[2:], 1))  # type: ignore[arg-type]
    raise ValueError(f"unknown reply kind {kind!r}")

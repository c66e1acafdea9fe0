"""The built-in key-value state machine.

State: a ``dict[str, bytes]`` for point reads plus a ``SortedList`` of the keys
(sortedcontainers) for prefix ranges in O(log n + k), and the client session
table (server/machines/sessions.py). Keys are non-empty ``str``; they sort by code point,
which is the order of their UTF-8 bytes.

Commands (log entry data)
-------------------------
``TAG_KV`` then one msgpack array (never pickle: entries come from the
network):

====== ======================================= ===============================
op     array                                   result of apply()
====== ======================================= ===============================
noop   ``[0]``                                 ``None``
put    ``[1, key, value(, client, seq, fua)]`` ``PutResult(index)``
delete ``[2, key(, client, seq, fua)]``        ``DeleteResult(deleted, index)``
cas    ``[3, key, expected|nil, value(, ...)]`` ``CasResult(swapped, found, current, index)``
====== ======================================= ===============================

``cas`` swaps when the key's value equals ``expected``, or, with ``expected``
nil, when the key is absent. ``found`` says whether the key existed before the
command; ``current`` is the key's value after it (the new value when swapped,
the unchanged value otherwise, ``b""`` when absent). ``index`` in every result
is the index of the entry that was applied: for a retried write (same session)
it is the index of the first application, not of the retry, because the
retry's reply is the first application's.

Bytes that do not decode, or decode to something else, give a ``CommandError``
with ``BAD_COMMAND``; the entry still counts as applied. Size limits on keys
and values are the servicers' business (they are configuration, and apply()
must not depend on configuration).

Key-value version 2 (machines/kvops.py) adds transactions (``[4, ...]``) and
leases (``[5..7, ...]``), and revisions: from the switch to version 2 on,
every change advances the machine's revision by one and every key carries
its create/mod revision, version and lease. Results then carry the revision
too (``revision`` 0 before the switch: revisions are not kept yet). A plain
put detaches the key from its lease, as etcd's does. After each revision
``on_events(revision, events)`` is called (the node's watch history), and
``on_reset(revision)`` whenever the history before ``revision`` is gone
(restore, clear, the switch).

Snapshots without stopping the node: copy-on-write with a journal
-----------------------------------------------------------------
The obvious strategy, a shallow ``dict.copy()`` plus a copy of the sorted key
list taken on the event loop, costs about 140 ms per million keys on this
machine: a pause of the whole node that grows with the state and at ten million
keys would outlast an election timeout. So ``snapshot()`` copies nothing but
the session table (at most ``max_sessions`` clients, each with the replies of
its writes still unacknowledged: usually one or a few) and installs a *view*:

- the view walks the live keys in sorted order behind a cursor (the last key
  it has emitted);
- before the first change of a key above the cursor, apply() saves the key's
  old value (or "absent") in the view's journal; a key of the view that is
  deleted goes into a small sorted list of "gone" keys so the walk still
  meets it;
- keys at or below the cursor are no longer tracked: the view has them.

``write_to`` (in a worker thread) takes the machine's lock for one chunk of
up to a few thousand keys (~256 KiB; a few hundred microseconds), reads the
live value or the journal's older one, then packs, checksums and writes the
chunk without the lock, and gives the GIL away before the next chunk. apply()
takes the same lock, so the loop waits at most for one chunk; CPU-wise the
writer yields to a busy loop (bench/bench_statemachine.py measures the cost).
The journal holds only keys changed during the snapshot that the walk has not
reached yet. Values are immutable ``bytes``, so nothing is ever copied but
references. Snapshots are canonical: the same state gives the
same bytes on every node (keys sorted, sessions in LRU order, data frames cut
by their content, never by the writes made while the view is walked), which
is what lets nodes compare digests of their state (runtime/checks.py).

Restore reads the stream frame by frame into a fresh dict and key list and
swaps them in at the end under the lock: readers see the old state until then,
and a corrupt stream leaves the machine unchanged. While an InstallSnapshot
replaces a large state, old and new state are both in memory; a runtime that
cannot afford that calls ``clear()`` first.
"""

from __future__ import annotations

import bisect
import enum
import operator
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from itertools import accumulate, islice
from typing import Any, NamedTuple

import msgpack
import structlog
from sortedcontainers import SortedList

from ramraft.server.machines.kvops import (
    ABSENT,
    MAX_LEASE_KEYS,
    MAX_LEASE_TTL,
    BadV2Command,
    Event,
    EventKind,
    KeyMeta,
    LeaseGrantResult,
    LeaseRenewResult,
    LeaseRevokeResult,
    OpResult,
    Txn,
    TxnOpKind,
    TxnResult,
    decode_renew,
    decode_txn,
    meta_fields,
    results_from_plain,
    results_to_plain,
    txn_items,
)
from ramraft.server.machines.sessions import (
    DEFAULT_IDLE_ENTRIES,
    DEFAULT_MAX_REPLIES,
    DEFAULT_MAX_SESSIONS,
    SessionRecord,
    SessionTable,
    chunk_records,
    records_from_plain,
    records_to_plain,
    session_error,
    valid_session,
)
from ramraft.server.machines.statemachine import (
    TAG_KV,
    ApplyHalted,
    CommandError,
    ErrorCode,
    FrameReader,
    FrameWriter,
    ReadableStream,
    SnapshotAbortedError,
    SnapshotFormatError,
    SnapshotInProgressError,
    WritableStream,
)

log = structlog.get_logger(__name__)

__all__ = [
    "BadCommandError",
    "CasResult",
    "DeleteResult",
    "KVCommand",
    "KVMachine",
    "Op",
    "PutResult",
    "Session",
    "decode_command",
    "encode_cas",
    "encode_delete",
    "encode_lease_grant",
    "encode_lease_renew",
    "encode_lease_revoke",
    "encode_noop",
    "encode_put",
    "encode_txn",
]


class Op(enum.IntEnum):
    NOOP = 0
    PUT = 1
    DELETE = 2
    CAS = 3
    TXN = 4
    LEASE_GRANT = 5
    LEASE_REVOKE = 6
    LEASE_RENEW = 7


class Session(NamedTuple):
    """A write's exactly-once identity (server/machines/sessions.py): ids and sequences
    are 1..2**64-1; ``first_unacked`` is the client's lowest sequence still
    waiting for a reply, 0..sequence (0: not given, one write at a time)."""

    client_id: int
    sequence: int
    first_unacked: int = 0


SessionLike = Session | tuple[int, int] | tuple[int, int, int]


class KVCommand(NamedTuple):
    op: Op
    key: str = ""
    value: bytes = b""
    expected: bytes | None = None
    session: Session | None = None
    # The version-2 ops' arguments: a Txn, (lease_id, ttl), (lease_id,
    # epoch | None) or the renewed lease ids.
    extra: Any = None


class PutResult(NamedTuple):
    # The field shadows tuple.index(); the name is the API's (PutResponse.index).
    index: int  # type: ignore[assignment]
    revision: int = 0
    """The revision of the change (0 before key-value version 2)."""


class DeleteResult(NamedTuple):
    deleted: bool
    # The field shadows tuple.index(); the name is the API's.
    index: int  # type: ignore[assignment]
    revision: int = 0
    """The revision of the delete, or the current one when nothing was
    deleted (0 before key-value version 2)."""


class CasResult(NamedTuple):
    swapped: bool
    found: bool
    current: bytes
    # The field shadows tuple.index(); the name is the API's.
    index: int  # type: ignore[assignment]
    revision: int = 0
    """The revision of the swap, or the current one when it did not happen
    (0 before key-value version 2)."""
    mod_revision: int = 0
    """The key's mod revision after the request (0: absent)."""
    version: int = 0
    """The key's version after the request (0: absent)."""


KVResult = (
    PutResult
    | DeleteResult
    | CasResult
    | TxnResult
    | LeaseGrantResult
    | LeaseRevokeResult
    | LeaseRenewResult
    | CommandError
    | None
)


class UnknownOperationError(ValueError):
    """A well-formed key-value command whose operation this code does not
    know: it was written by a newer release."""


class BadCommandError(ValueError):
    """The bytes are not a key-value command."""


# -- encoding -----------------------------------------------------------------

_TAG = bytes([TAG_KV])
_NOOP = _TAG + msgpack.packb([Op.NOOP.value])


def _check_key(key: object) -> str:
    if type(key) is not str:
        raise TypeError(f"key must be str, not {type(key).__name__}")
    if not key:
        raise ValueError("key must not be empty")
    return key


def _check_value(value: object, what: str = "value") -> bytes:
    if type(value) is bytes:
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{what} must be bytes, not {type(value).__name__}")


def _with_session(items: list[Any], session: SessionLike | None) -> bytes:
    if session is not None:
        if len(session) not in (2, 3) or not valid_session(*session):
            raise ValueError(session_error(session))
        items.extend(session)
        if len(session) == 2:
            items.append(0)
    try:
        return _TAG + msgpack.packb(items, use_bin_type=True)
    except UnicodeEncodeError as exc:
        raise ValueError(f"key is not valid Unicode text: {exc}") from None


def encode_put(key: str, value: bytes, session: SessionLike | None = None) -> bytes:
    """Entry data for ``put(key, value)``. ``session`` is ``(client_id,
    sequence, first_unacked)`` (a pair means first_unacked 0). Raises
    TypeError/ValueError for bad arguments (empty key, non-bytes value,
    session ids out of range)."""
    return _with_session([Op.PUT.value, _check_key(key), _check_value(value)], session)


def encode_delete(key: str, session: SessionLike | None = None) -> bytes:
    """Entry data for ``delete(key)``."""
    return _with_session([Op.DELETE.value, _check_key(key)], session)


def encode_cas(
    key: str,
    expected: bytes | None,
    value: bytes,
    session: SessionLike | None = None,
) -> bytes:
    """Entry data for ``cas(key, expected, value)``; ``expected=None`` means
    "only if the key is absent"."""
    exp = None if expected is None else _check_value(expected, "expected")
    return _with_session([Op.CAS.value, _check_key(key), exp, _check_value(value)], session)


def encode_noop() -> bytes:
    """Entry data that changes nothing (e.g. a read barrier)."""
    return _NOOP


def encode_txn(txn: Txn, session: SessionLike | None = None) -> bytes:
    """Entry data for a transaction (machines/kvops.py); ValueError for a
    transaction every node would refuse (overlapping writes)."""
    try:
        items = txn_items(txn)
    except BadV2Command as exc:
        raise ValueError(str(exc)) from None
    return _with_session([Op.TXN.value, *items], session)


def encode_lease_grant(lease_id: int, ttl: int, session: SessionLike | None = None) -> bytes:
    """Grant a lease of ``ttl`` seconds; ``lease_id`` 0: the cluster picks it."""
    if not 0 <= lease_id < 1 << 63 or not 1 <= ttl <= MAX_LEASE_TTL:
        raise ValueError(
            f"a lease id is 0..2**63-1 and a ttl 1..{MAX_LEASE_TTL} seconds; got {lease_id}, {ttl}"
        )
    return _with_session([Op.LEASE_GRANT.value, lease_id, ttl], session)


def encode_lease_revoke(
    lease_id: int, epoch: int | None = None, session: SessionLike | None = None
) -> bytes:
    """Revoke a lease (deleting its keys). With ``epoch`` (the leader's
    expiry): only if the lease was not renewed since that epoch."""
    if not 1 <= lease_id < 1 << 63:
        raise ValueError(f"a lease id is 1..2**63-1, not {lease_id}")
    return _with_session([Op.LEASE_REVOKE.value, lease_id, epoch], session)


def encode_lease_renew(lease_ids: list[int]) -> bytes:
    """Renew leases (keep-alive): bumps each one's epoch."""
    if not lease_ids or not all(1 <= i < 1 << 63 for i in lease_ids):
        raise ValueError("renew needs lease ids in 1..2**63-1")
    return _with_session([Op.LEASE_RENEW.value, list(lease_ids)], None)


# Number of array items per op without a session (a session adds three:
# client_id, sequence, first_unacked).
_ARITY = {
    Op.NOOP: 1,
    Op.PUT: 3,
    Op.DELETE: 2,
    Op.CAS: 4,
    Op.TXN: 4,
    Op.LEASE_GRANT: 3,
    Op.LEASE_REVOKE: 3,
    Op.LEASE_RENEW: 2,
}
SINCE = {
    Op.NOOP: 1,
    Op.PUT: 1,
    Op.DELETE: 1,
    Op.CAS: 1,
    Op.TXN: 2,
    Op.LEASE_GRANT: 2,
    Op.LEASE_REVOKE: 2,
    Op.LEASE_RENEW: 2,
}
"""The key-value version each operation is new in (machines/cluster.py): an
operation added later gets a higher one, so a rolling upgrade never writes it
before every node can apply it."""
_NOOP_COMMAND = KVCommand(Op.NOOP)
_OPS = {op.value: op for op in Op}


def decode_command(data: bytes) -> KVCommand:
    """Decode entry data made by the ``encode_*`` helpers. Raises
    :class:`BadCommandError` (with a reason) for anything else."""
    if not data:
        return _NOOP_COMMAND
    if data[0] != TAG_KV:
        raise BadCommandError(f"command tag 0x{data[0]:02x} is not the key-value machine's")
    # Slicing copies; for small commands that is cheaper than a memoryview.
    body = data[1:] if len(data) < 4096 else memoryview(data)[1:]
    try:
        items = msgpack.unpackb(body, use_list=False, raw=False)
    except Exception as exc:  # msgpack raises several types for bad input
        raise BadCommandError(f"undecodable key-value command: {exc}") from None
    if type(items) is not tuple or not items:
        raise BadCommandError("a key-value command is a non-empty array")
    if type(items[0]) is not int:
        raise BadCommandError(f"a key-value operation is a number, not {items[0]!r}")
    op = _OPS.get(items[0])
    if op is None:
        raise UnknownOperationError(
            f"key-value operation {items[0]} is unknown to this node's code (written by a "
            "newer release of ramraft)"
        )
    arity = _ARITY[op]
    session: Session | None = None
    if len(items) == arity + 3 and op not in (Op.NOOP, Op.LEASE_RENEW):
        if not valid_session(*items[-3:]):
            raise BadCommandError(f"bad session {items[-3:]!r}")
        session = Session(*items[-3:])
    elif len(items) != arity:
        raise BadCommandError(f"{op.name.lower()} takes {arity} fields, got {len(items)}")
    if op is Op.NOOP:
        return _NOOP_COMMAND
    if op >= Op.TXN:
        return _decode_v2(op, items[1:arity], session)
    key = items[1]
    if type(key) is not str or not key:
        raise BadCommandError("key must be a non-empty string")
    if op is Op.PUT:
        if type(items[2]) is not bytes:
            raise BadCommandError("put value must be bytes")
        return KVCommand(op, key, items[2], None, session)
    if op is Op.DELETE:
        return KVCommand(op, key, b"", None, session)
    expected, value = items[2], items[3]
    if (expected is not None and type(expected) is not bytes) or type(value) is not bytes:
        raise BadCommandError("cas expected must be bytes or nil, value bytes")
    return KVCommand(op, key, value, expected, session)


def _decode_v2(op: Op, args: tuple[Any, ...], session: Session | None) -> KVCommand:
    try:
        if op is Op.TXN:
            return KVCommand(op, session=session, extra=decode_txn(args))
        if op is Op.LEASE_RENEW:
            return KVCommand(op, extra=decode_renew(args))
        lease_id, other = args
        if type(lease_id) is not int or not 0 <= lease_id < 1 << 63:
            raise BadV2Command(f"bad lease id {lease_id!r}")
        if op is Op.LEASE_GRANT:
            if type(other) is not int or not 1 <= other <= MAX_LEASE_TTL:
                raise BadV2Command(f"a lease ttl is 1..{MAX_LEASE_TTL} seconds, not {other!r}")
            return KVCommand(op, session=session, extra=(lease_id, other))
        if lease_id == 0 or (other is not None and type(other) is not int):
            raise BadV2Command("revoke takes a lease id and an epoch (or nil)")
        return KVCommand(op, session=session, extra=(lease_id, other))
    except BadV2Command as exc:
        raise BadCommandError(str(exc)) from None


# -- session replies in snapshots ---------------------------------------------
#
# Replies of key-value version 1 keep their shape (a snapshot written before
# the switch is read by nodes of the previous release too); from version 2
# on, results carry revisions and have longer shapes, written only in
# snapshots of format 3.


def reply_to_plain(reply: object) -> tuple[Any, ...]:
    if type(reply) is PutResult:
        if reply.revision:
            return (1, reply.index, reply.revision)
        return (1, reply.index)
    if type(reply) is DeleteResult:
        if reply.revision:
            return (2, reply.deleted, reply.index, reply.revision)
        return (2, reply.deleted, reply.index)
    if type(reply) is CasResult:
        old = (3, reply.swapped, reply.found, reply.current, reply.index)
        if reply.revision:
            return (*old, reply.revision, reply.mod_revision, reply.version)
        return old
    if type(reply) is CommandError:
        return (0, int(reply.code), reply.message)
    plain = results_to_plain(reply)
    if plain is None:
        raise TypeError(f"unexpected session reply {reply!r}")
    return plain


_REPLY_SHAPES: dict[int, tuple[tuple[type, ...], ...]] = {
    1: ((int, int), (int, int, int)),
    2: ((int, bool, int), (int, bool, int, int)),
    3: ((int, bool, bool, bytes, int), (int, bool, bool, bytes, int, int, int, int)),
    0: ((int, int, str),),
}


def reply_from_plain(plain: Any) -> KVResult:
    """The inverse of reply_to_plain; ValueError for anything else."""
    kind = plain[0]
    shapes = _REPLY_SHAPES.get(kind)
    if shapes is None:
        return results_from_plain(plain)  # type: ignore[return-value]
    if not any(
        len(plain) == len(shape) and all(type(x) is t for x, t in zip(plain, shape, strict=True))
        for shape in shapes
    ):
        raise ValueError(f"malformed reply {plain!r}")
    if kind == 1:
        return PutResult(*plain[1:])
    if kind == 2:
        return DeleteResult(*plain[1:])
    if kind == 3:
        return CasResult(*plain[1:])
    return CommandError(ErrorCode(plain[1]), plain[2])


# -- the copy-on-write snapshot view -------------------------------------------


class _View:
    """The state of one snapshot in progress (see the module docstring).

    Invariants: every key in ``before`` is above ``cursor``; ``gone`` holds
    exactly the keys above ``cursor`` that existed when the view was taken and
    are absent from the live map now; ``before[k] is None`` means k did not
    exist when the view was taken. With revisions (``revisions`` set: a
    format-3 snapshot), ``before_meta`` holds the same keys' meta as of the
    view (None: the implicit meta of a key older than the switch).
    """

    __slots__ = (
        "before",
        "before_meta",
        "closed",
        "cursor",
        "gone",
        "index",
        "revisions",
        "sessions",
    )

    def __init__(
        self,
        index: int,
        sessions: list[SessionRecord],
        revisions: _RevisionState | None = None,
    ) -> None:
        self.index = index
        self.sessions = sessions
        self.revisions = revisions
        self.cursor: str | None = None
        self.before: dict[str, bytes | None] = {}
        self.before_meta: dict[str, KeyMeta | None] = {}
        self.gone: SortedList[str] = SortedList()
        self.closed = False

    def note_put(self, key: str, old: bytes | None, old_meta: KeyMeta | None = None) -> None:
        cursor = self.cursor
        if cursor is not None and key <= cursor:
            return
        before = self.before
        if key not in before:
            before[key] = old
            if self.revisions is not None:
                self.before_meta[key] = old_meta
        elif old is None and before[key] is not None:
            self.gone.remove(key)  # a key of the view, deleted, now back

    def note_delete(self, key: str, old: bytes, old_meta: KeyMeta | None = None) -> None:
        cursor = self.cursor
        if cursor is not None and key <= cursor:
            return
        before = self.before
        if key not in before:
            before[key] = old
            if self.revisions is not None:
                self.before_meta[key] = old_meta
            self.gone.add(key)
        elif before[key] is not None:
            self.gone.add(key)

    def next_chunk(
        self,
        keys: SortedList[str],
        data: dict[str, bytes],
        limit: int,
        meta: dict[str, KeyMeta] | None = None,
    ) -> tuple[list[str], list[bytes], list[KeyMeta | None]] | None:
        """The next keys of the view (at most ``limit``), their values and,
        given the live ``meta`` map, their meta as of the view (None: the
        implicit meta of a key older than the switch; without ``meta`` the
        list is empty). None when the walk is over. Called under the
        machine's lock."""
        cursor = self.cursor
        if cursor is None:
            live = list(keys.islice(0, limit))
        else:
            live = list(islice(keys.irange(cursor, None, (False, True)), limit))
        gone = self.gone
        candidates = sorted(live + list(gone.islice(0, limit)))[:limit] if gone else live
        if not candidates:
            return None
        new_cursor = candidates[-1]
        if gone:
            del gone[: gone.bisect_right(new_cursor)]
        self.cursor = new_cursor
        before = self.before
        if not before:
            metas = list(map(meta.get, candidates)) if meta is not None else []
            return candidates, list(map(data.__getitem__, candidates)), metas
        out_keys: list[str] = []
        out_values: list[bytes] = []
        out_metas: list[KeyMeta | None] = []
        before_meta = self.before_meta
        for key in candidates:
            if key in before:
                old = before.pop(key)
                old_meta = before_meta.pop(key, None)
                if old is None:
                    continue  # created after the view was taken
                out_keys.append(key)
                out_values.append(old)
                if meta is not None:
                    out_metas.append(old_meta)
            else:
                out_keys.append(key)
                out_values.append(data[key])
                if meta is not None:
                    out_metas.append(meta.get(key))
        return out_keys, out_values, out_metas


class _RevisionState(NamedTuple):
    """What a format-3 snapshot holds besides keys and sessions, as of its
    view: taken whole when the view is (the lease table is small)."""

    revision: int
    base_revision: int
    next_lease: int
    leases: tuple[tuple[int, int, int], ...]  # (id, ttl, epoch), by id


MAX_VIEWS = 2
"""Snapshot views open at once: a snapshot being written and a state check."""
_KV_MAGIC = b"RRKV"
_KV_VERSION = 2  # 2: sessions keep a floor and many replies per client
# 3: revisions (key-value version 2): the header holds the revision, the base
# revision and the next lease id; a leases frame; data frames carry each
# key's meta. Written only once the cluster runs key-value version 2, so a
# node of the previous release reads every snapshot a mixed cluster makes.
_KV_VERSION_REVISIONS = 3
_FRAME_SESSIONS = 1
_FRAME_DATA = 2
_FRAME_END = 3
_FRAME_LEASES = 4
_SESSIONS_PER_FRAME = 4096  # about this many replies per sessions frame
_CHUNK_BYTES = 1 << 18
_MIN_CHUNK_KEYS = 16
_MAX_CHUNK_KEYS = 4096


class KVSnapshotJob:
    """A snapshot of a :class:`KVMachine`; see ``SnapshotJob``."""

    def __init__(self, machine: KVMachine, view: _View) -> None:
        self._machine = machine
        self._view = view
        self._finalizer = weakref.finalize(self, machine._release_view, view)

    @property
    def index(self) -> int:
        return self._view.index

    def write_to(self, stream: WritableStream) -> int:
        machine, view = self._machine, self._view
        started = time.perf_counter()
        try:
            if view.closed:
                raise SnapshotAbortedError("snapshot job already written or closed")
            revisions = view.revisions
            version = _KV_VERSION if revisions is None else _KV_VERSION_REVISIONS
            frames = FrameWriter(stream, _KV_MAGIC, version)
            sessions = view.sessions
            header: dict[str, Any] = {
                "index": view.index,
                "sessions": len(sessions),
                "max_sessions": machine.sessions.max_sessions,
                "idle_entries": machine.sessions.idle_entries,
                "max_replies": machine.sessions.max_replies,
            }
            if revisions is not None:
                header.update(
                    revision=revisions.revision,
                    base_revision=revisions.base_revision,
                    next_lease=revisions.next_lease,
                    leases=len(revisions.leases),
                )
            frames.frame(msgpack.packb(header))
            for chunk in chunk_records(sessions, _SESSIONS_PER_FRAME):
                plain = records_to_plain(chunk, reply_to_plain)
                frames.frame(msgpack.packb((_FRAME_SESSIONS, plain), use_bin_type=True))
            view.sessions = []
            if revisions is not None:
                for start in range(0, len(revisions.leases), _SESSIONS_PER_FRAME):
                    piece = [list(x) for x in revisions.leases[start : start + _SESSIONS_PER_FRAME]]
                    frames.frame(msgpack.packb((_FRAME_LEASES, piece)))
            count = 0
            limit = _MIN_CHUNK_KEYS
            lock = machine._lock
            framer = _DataFramer(frames, None if revisions is None else revisions.base_revision)
            while True:
                with lock:
                    if view.closed:
                        raise SnapshotAbortedError("snapshot view dropped (machine restored)")
                    walked = view.next_chunk(
                        machine._keys,
                        machine._data,
                        limit,
                        machine._meta if revisions is not None else None,
                    )
                if walked is None:
                    break
                keys, values, metas = walked
                if not keys:
                    continue
                count += len(keys)
                framer.add(keys, values, metas)
                # Aim at ~256 KiB walks whatever the value sizes.
                per_key = max(1, (sum(map(len, values)) + 16 * len(keys)) // len(keys))
                limit = max(_MIN_CHUNK_KEYS, min(_MAX_CHUNK_KEYS, _CHUNK_BYTES // per_key))
                # Give the GIL away between chunks: a loop thread waiting for
                # it runs now, and the writer waits for the loop's next
                # switch (5 ms) or idle moment. The writer thus behaves as a
                # low-priority task: full speed when the loop is idle, a small
                # share when it is busy.
                time.sleep(0)
            framer.flush()
            if revisions is None:
                frames.frame(msgpack.packb((_FRAME_END, count, len(sessions))))
            else:
                end = (_FRAME_END, count, len(sessions), len(revisions.leases))
                frames.frame(msgpack.packb(end))
            log.info(
                "kv snapshot written",
                index=view.index,
                keys=count,
                bytes=frames.bytes_written,
                seconds=round(time.perf_counter() - started, 3),
            )
            return frames.bytes_written
        finally:
            self.close()

    def close(self) -> None:
        self._finalizer()


class _Lease:
    """One lease of the replicated state: its ttl (seconds), its renewal
    epoch and the keys attached to it. The time left is not replicated: the
    leader keeps it (runtime/leases.py)."""

    __slots__ = ("epoch", "keys", "ttl")

    def __init__(self, ttl: int, epoch: int = 0) -> None:
        self.ttl = ttl
        self.epoch = epoch
        self.keys: set[str] = set()  # iterated only sorted: set order is not replicated


LeaseHook = Callable[[str, int, int, int], None]


class KVMachine:
    """The key-value state machine. All methods run on the event loop except
    ``KVSnapshotJob.write_to`` and (if the runtime wishes) ``restore``."""

    # restore() streams into new structures and swaps them in under the lock,
    # so the runtime may run it in a worker thread while the loop serves reads.
    restore_in_thread = True

    def __init__(
        self,
        *,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        session_idle_entries: int | None = DEFAULT_IDLE_ENTRIES,
        session_max_replies: int = DEFAULT_MAX_REPLIES,
    ) -> None:
        self._data: dict[str, bytes] = {}
        self._keys: SortedList[str] = SortedList()
        # Each key's meta from key-value version 2 on; a key without an entry
        # and a base revision has the implicit meta (base, base, 1, 0).
        self._meta: dict[str, KeyMeta] = {}
        # The same objects as one tuple: readers that need several take them
        # in one read, so a restore() swapping them from a worker thread can
        # never show them a new map with an old key index.
        self._maps = (self._data, self._keys, self._meta)
        self.sessions = SessionTable(max_sessions, session_idle_entries, session_max_replies)
        self._applied_index = 0
        self._revision = 0
        """The revision (0 until the switch to key-value version 2)."""
        self._base_revision = 0
        """The revision the switch gave every key that existed then."""
        self._leases: dict[int, _Lease] = {}
        self._next_lease = 1
        # Events of the revision being applied, handed to on_events after it.
        self._events: list[Event] = []
        # Held by apply() while it mutates and by a snapshot job while it reads
        # one chunk; never held across I/O.
        self._lock = threading.Lock()
        # Open snapshot views: usually none or one; a state check's digest
        # (runtime/checks.py) may run beside a snapshot being written.
        self._views: list[_View] = []
        self.active_version = 1
        """The key-value version the cluster runs (machines/cluster.py keeps
        it current)."""
        self.on_events: Callable[[int, tuple[Event, ...]], None] | None = None
        """Called (on the loop) after each applied revision with its events."""
        self.on_reset: Callable[[int], None] | None = None
        """Called when the history up to a revision is gone: after a restore
        (possibly in the restoring thread), clear() and the switch."""
        self.on_lease: LeaseHook | None = None
        """``(what, lease_id, ttl, epoch)`` after a lease is "granted",
        "renewed" or "revoked" (on the loop): the leader's lease clock."""

    # -- reads (never through the log) ----------------------------------------

    @property
    def applied_index(self) -> int:
        return self._applied_index

    @property
    def revision(self) -> int:
        """The revision of the state (0: revisions are not kept yet)."""
        return self._revision

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> tuple[bool, bytes]:
        """``(found, value)``; value is b"" when not found."""
        value = self._data.get(key)
        if value is None:
            return False, b""
        return True, value

    def key_meta(self, key: str) -> KeyMeta:
        """The key's create/mod revision, version and lease (all 0 when it
        is absent, or before key-value version 2)."""
        data, _, meta = self._maps
        found = meta.get(key)
        if found is not None:
            return found
        base = self._base_revision
        if base and key in data:
            return KeyMeta(base, base, 1, 0)
        return ABSENT

    def count(self, prefix: str) -> int:
        """How many keys start with ``prefix`` (O(log n))."""
        _, keys, _ = self._maps
        lo = keys.bisect_left(prefix)
        upper = _prefix_successor(prefix)
        hi = len(keys) if upper is None else keys.bisect_left(upper)
        return max(0, hi - lo)

    def leases(self) -> dict[int, tuple[int, int]]:
        """Every lease: id -> (ttl, epoch)."""
        return {i: (lease.ttl, lease.epoch) for i, lease in self._leases.items()}

    def lease(self, lease_id: int) -> tuple[int, int, list[str]] | None:
        """``(ttl, epoch, keys)`` of a lease, None if there is none."""
        lease = self._leases.get(lease_id)
        if lease is None:
            return None
        return lease.ttl, lease.epoch, sorted(lease.keys)

    def range(
        self, prefix: str = "", start_after: str = "", limit: int = 0, max_bytes: int = 0
    ) -> tuple[list[tuple[str, bytes]], bool]:
        """Keys starting with ``prefix`` and greater than ``start_after``, in
        order, at most ``limit`` of them (0: no limit) and, with
        ``max_bytes``, no more keys and values than fit in that many bytes
        (always at least one item, so that a page makes progress). Returns
        ``(items, more)``; ``more`` says whether further matching keys exist
        (pass the last key as ``start_after`` to continue)."""
        if limit < 0:
            raise ValueError("limit must be >= 0")
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        data, keys, _ = self._maps
        if start_after and start_after >= prefix:
            lo = keys.bisect_right(start_after)
        else:
            lo = keys.bisect_left(prefix)
        upper = _prefix_successor(prefix)
        hi = len(keys) if upper is None else keys.bisect_left(upper)
        stop = hi if not limit else min(hi, lo + limit)
        if stop <= lo:
            return [], False
        if not max_bytes:
            items = [(k, data[k]) for k in keys.islice(lo, stop)]
            return items, stop < hi
        items = []
        size = 0
        for k in keys.islice(lo, stop):
            value = data[k]
            size += len(k) + len(value)
            if size > max_bytes and items:
                break
            items.append((k, value))
        return items, lo + len(items) < hi

    def items(self) -> Iterator[tuple[str, bytes]]:
        """All pairs in key order (for tests and tools; not for large maps on
        the loop)."""
        data, keys, _ = self._maps
        return ((k, data[k]) for k in keys)

    # -- apply ----------------------------------------------------------------

    def apply(self, index: int, command: bytes) -> KVResult:
        if index <= self._applied_index:
            raise ValueError(f"apply({index}) after applied index {self._applied_index}")
        if not command:
            self._applied_index = index
            return None
        try:
            cmd = decode_command(command)
        except UnknownOperationError as exc:
            raise ApplyHalted(index, f"{exc}; restart this node with that release") from None
        except BadCommandError as exc:
            self._applied_index = index
            return CommandError(ErrorCode.BAD_COMMAND, str(exc))
        self._applied_index = index
        if SINCE[cmd.op] > self.active_version:
            return CommandError(ErrorCode.NOT_ACTIVE, _not_active(cmd.op, self.active_version))
        result = self.sessions.run_once(cmd.session, index, self._execute, index, cmd)
        if self._events:
            events, self._events = tuple(self._events), []
            if self.on_events is not None:
                self.on_events(self._revision, events)
        return result  # type: ignore[return-value]

    def check_proposal(self, command: bytes) -> str | None:
        """Why this node must not propose ``command``, or None (see
        ModelMachine.check_proposal)."""
        # Every write the leader proposes comes here. Most are read without
        # decoding them: an array of 1-15 fields (msgpack's fixarray, 0x91-
        # 0x9f) whose first is a known operation's number (a positive
        # fixint) that the active version allows. Decoding the rest could
        # only find it malformed, which applies as BAD_COMMAND and is not
        # refused here either.
        if len(command) > 2 and 0x91 <= command[1] <= 0x9F:
            op = _OPS.get(command[2])
            if op is not None and SINCE[op] <= self.active_version:
                return None
        return self.check_decoded(command)

    def check_decoded(self, command: bytes) -> str | None:
        """``check_proposal``'s answer from the whole command, decoded."""
        try:
            cmd = decode_command(command)
        except UnknownOperationError as exc:
            return str(exc)
        except BadCommandError:
            return None  # applies as a BAD_COMMAND result, the same everywhere
        if SINCE[cmd.op] > self.active_version:
            return _not_active(cmd.op, self.active_version)
        return None

    def upgrade(self, from_version: int, to_version: int) -> None:
        """The switch to a newer key-value version, applied at the same index
        on every node (machines/cluster.py). Into version 2: revisions start
        at 1, and every key that exists now is deemed created and changed at
        revision 1 (nothing per key is stored for that)."""
        if from_version < 2 <= to_version and not self._base_revision:
            with self._lock:
                self._revision = self._base_revision = 1
            if self.on_reset is not None:
                self.on_reset(1)

    def _execute(self, index: int, cmd: KVCommand) -> KVResult:
        op = cmd.op
        if op >= Op.TXN:
            return self._execute_v2(index, cmd)
        key = cmd.key
        data = self._data
        with self._lock:
            old = data.get(key)
            if op is Op.PUT:
                revision = self._next_revision()
                self._set(key, old, cmd.value, revision, 0)
                self._revision = revision
                return PutResult(index, revision)
            if op is Op.DELETE:
                if old is None:
                    return DeleteResult(False, index, self._revision)
                revision = self._next_revision()
                self._remove(key, old, revision)
                self._revision = revision
                return DeleteResult(True, index, revision)
            if op is Op.CAS:
                expected = cmd.expected
                if (old is None) if expected is None else (old == expected):
                    revision = self._next_revision()
                    self._set(key, old, cmd.value, revision, 0)
                    self._revision = revision
                    meta = self.key_meta(key)
                    return CasResult(
                        True,
                        old is not None,
                        cmd.value,
                        index,
                        revision,
                        meta.mod_revision,
                        meta.version,
                    )
                meta = self.key_meta(key)
                return CasResult(
                    False,
                    old is not None,
                    b"" if old is None else old,
                    index,
                    self._revision,
                    meta.mod_revision,
                    meta.version,
                )
            return None

    def _next_revision(self) -> int:
        """The revision a change applied now gets (0: none are kept yet)."""
        return self._revision + 1 if self._base_revision else 0

    def _set(self, key: str, old: bytes | None, value: bytes, revision: int, lease: int) -> None:
        old_meta = self._meta.get(key)
        for view in self._views:
            view.note_put(key, old, old_meta)
        if old is None:
            self._keys.add(key)
        self._data[key] = value
        if not revision:
            return
        if old is None:
            meta = KeyMeta(revision, revision, 1, lease)
        else:
            before = old_meta or KeyMeta(self._base_revision, self._base_revision, 1, 0)
            meta = KeyMeta(before.create_revision, revision, before.version + 1, lease)
            if before.lease != lease:
                self._detach(key, before.lease)
        if lease and (old_meta is None or old_meta.lease != lease):
            self._leases[lease].keys.add(key)
        self._meta[key] = meta
        self._events.append(Event(EventKind.PUT, key, value, *meta))

    def _remove(self, key: str, old: bytes, revision: int = 0) -> None:
        old_meta = self._meta.pop(key, None)
        for view in self._views:
            view.note_delete(key, old, old_meta)
        del self._data[key]
        self._keys.remove(key)
        if old_meta is not None and old_meta.lease:
            self._detach(key, old_meta.lease)
        if revision:
            self._events.append(Event(EventKind.DELETE, key, b"", 0, revision, 0, 0))

    def _detach(self, key: str, lease_id: int) -> None:
        lease = self._leases.get(lease_id)
        if lease is not None:
            lease.keys.discard(key)

    # -- key-value version 2: transactions and leases ---------------------------

    def _execute_v2(self, index: int, cmd: KVCommand) -> KVResult:
        op = cmd.op
        with self._lock:
            if op is Op.TXN:
                return self._txn(index, cmd.extra)
            if op is Op.LEASE_GRANT:
                return self._grant(index, *cmd.extra)
            if op is Op.LEASE_REVOKE:
                return self._revoke(index, *cmd.extra)
            return self._renew(index, cmd.extra)

    def _state(self, key: str) -> tuple[bool, bytes, KeyMeta]:
        value = self._data.get(key)
        if value is None:
            return False, b"", ABSENT
        return True, value, self.key_meta(key)

    def _txn(self, index: int, txn: Txn) -> TxnResult | CommandError:
        succeeded = all(c.holds(*self._state(c.key)) for c in txn.compares)
        ops = txn.success if succeeded else txn.failure
        refused = self._check_ops(ops)
        if refused is not None:
            return refused
        revision = self._revision + 1
        changed = False
        responses: list[OpResult] = []
        data = self._data
        for op in ops:
            kind = op.kind
            if kind is TxnOpKind.PUT:
                self._set(op.key, data.get(op.key), op.value, revision, op.lease)
                changed = True
                responses.append((0,))
            elif kind is TxnOpKind.DELETE:
                old = data.get(op.key)
                if old is not None:
                    self._remove(op.key, old, revision)
                    changed = True
                responses.append((1, old is not None))
            elif kind is TxnOpKind.GET:
                found, value, meta = self._state(op.key)
                responses.append((2, found, value, *meta_fields(meta)))
            elif kind is TxnOpKind.RANGE:
                responses.append(self._txn_range(op.key, op.start_after, op.limit, op.max_bytes))
            else:
                keys = self._prefix_keys(op.key)
                for key in keys:
                    self._remove(key, data[key], revision)
                changed = changed or bool(keys)
                responses.append((4, len(keys)))
        if changed:
            self._revision = revision
        return TxnResult(succeeded, tuple(responses), index, self._revision)

    def _check_ops(self, ops: tuple[Any, ...]) -> CommandError | None:
        """Refuse, before anything changes, a branch that names a lease that
        does not exist, fills a lease past MAX_LEASE_KEYS or deletes more
        keys than its bound: a transaction applies whole or not at all."""
        adding: dict[int, int] = {}
        for op in ops:
            if op.kind is TxnOpKind.PUT and op.lease:
                lease = self._leases.get(op.lease)
                if lease is None:
                    return CommandError(ErrorCode.NOT_FOUND, f"lease {op.lease} not found")
                if op.key not in lease.keys:
                    adding[op.lease] = adding.get(op.lease, 0) + 1
            elif op.kind is TxnOpKind.DELETE_RANGE:
                count = self.count(op.key)
                if count > op.limit:
                    return CommandError(
                        ErrorCode.LIMIT_EXCEEDED,
                        f"{count} keys start with {op.key!r}; a delete-range may remove at "
                        f"most {op.limit}",
                    )
        for lease_id, more in sorted(adding.items()):
            held = len(self._leases[lease_id].keys)
            if held + more > MAX_LEASE_KEYS:
                return CommandError(
                    ErrorCode.LIMIT_EXCEEDED,
                    f"lease {lease_id} holds {held} keys; a lease holds at most {MAX_LEASE_KEYS}",
                )
        return None

    def _prefix_keys(self, prefix: str) -> list[str]:
        keys = self._keys
        lo = keys.bisect_left(prefix)
        upper = _prefix_successor(prefix)
        hi = len(keys) if upper is None else keys.bisect_left(upper)
        return list(keys.islice(lo, hi))

    def _txn_range(self, prefix: str, start_after: str, limit: int, max_bytes: int) -> OpResult:
        items, more = self.range(prefix, start_after, limit)
        out: list[tuple[Any, ...]] = []
        size = 0
        for key, value in items:
            if out and size + len(key) + len(value) > max_bytes:
                more = True
                break
            size += len(key) + len(value)
            out.append((key, value, *meta_fields(self.key_meta(key))))
        return (3, tuple(out), more)

    def _grant(self, index: int, lease_id: int, ttl: int) -> LeaseGrantResult | CommandError:
        leases = self._leases
        if lease_id == 0:
            lease_id = self._next_lease
            while lease_id in leases:
                lease_id += 1
            self._next_lease = lease_id + 1
        elif lease_id in leases:
            return CommandError(ErrorCode.ALREADY_EXISTS, f"lease {lease_id} exists")
        leases[lease_id] = _Lease(ttl)
        if self.on_lease is not None:
            self.on_lease("granted", lease_id, ttl, 0)
        return LeaseGrantResult(lease_id, ttl, index, self._revision)

    def _revoke(
        self, index: int, lease_id: int, epoch: int | None
    ) -> LeaseRevokeResult | CommandError:
        lease = self._leases.get(lease_id)
        if lease is None:
            if epoch is None:
                return CommandError(ErrorCode.NOT_FOUND, f"lease {lease_id} not found")
            return LeaseRevokeResult(False, 0, index, self._revision)
        if epoch is not None and epoch != lease.epoch:
            # Renewed since the leader that decided this expiry read the epoch.
            return LeaseRevokeResult(False, 0, index, self._revision)
        del self._leases[lease_id]
        keys = sorted(lease.keys)
        if keys:
            revision = self._revision + 1
            for key in keys:
                self._remove(key, self._data[key], revision)
            self._revision = revision
        if self.on_lease is not None:
            self.on_lease("revoked", lease_id, lease.ttl, lease.epoch)
        return LeaseRevokeResult(True, len(keys), index, self._revision)

    def _renew(self, index: int, lease_ids: tuple[int, ...]) -> LeaseRenewResult:
        out: list[tuple[int, int, int]] = []
        for lease_id in lease_ids:
            lease = self._leases.get(lease_id)
            if lease is None:
                out.append((lease_id, 0, 0))
                continue
            lease.epoch += 1
            out.append((lease_id, lease.ttl, lease.epoch))
            if self.on_lease is not None:
                self.on_lease("renewed", lease_id, lease.ttl, lease.epoch)
        return LeaseRenewResult(tuple(out), index)

    # -- snapshots ------------------------------------------------------------

    def snapshot(self) -> KVSnapshotJob:
        """Fix a view of the current state (cost: a copy of the session
        table and of the lease table). Several views may be open at once
        (each change of a key is then noted in each); each costs memory for
        the keys changed above its cursor, so a runtime keeps their number
        small."""
        with self._lock:
            if len(self._views) >= MAX_VIEWS:
                raise SnapshotInProgressError(
                    f"{len(self._views)} snapshot views are still open (at indexes "
                    f"{', '.join(str(v.index) for v in self._views)})"
                )
            revisions = None
            if self._base_revision:
                revisions = _RevisionState(
                    self._revision,
                    self._base_revision,
                    self._next_lease,
                    tuple(sorted((i, x.ttl, x.epoch) for i, x in self._leases.items())),
                )
            view = _View(self._applied_index, self.sessions.copy_entries(), revisions)
            self._views.append(view)
        return KVSnapshotJob(self, view)

    def _release_view(self, view: _View) -> None:
        with self._lock:
            view.closed = True
            view.before = {}
            view.before_meta = {}
            view.gone = SortedList()
            if view in self._views:
                self._views.remove(view)

    def clear(self) -> None:
        """Drop all state (and any snapshot view), e.g. to free memory before a
        restore."""
        with self._lock:
            self._drop_views()
            self._data = {}
            self._keys = SortedList()
            self._meta = {}
            self._maps = (self._data, self._keys, self._meta)
            self.sessions.load(())
            self._applied_index = 0
            self._revision = self._base_revision = 0
            self._leases = {}
            self._next_lease = 1
        if self.on_reset is not None:
            self.on_reset(0)

    def _drop_views(self) -> None:
        for view in self._views:
            view.closed = True
        self._views = []

    def restore(self, stream: ReadableStream) -> None:
        """Replace the whole state from a stream written by a snapshot job.
        Raises SnapshotFormatError (state unchanged) if the stream is bad.

        May run in a worker thread while the loop keeps serving reads (they
        see the old state until the swap); apply() must not run meanwhile.
        An open snapshot job is aborted. Reads formats 2 and 3."""
        started = time.perf_counter()
        frames = FrameReader(stream, _KV_MAGIC, _KV_VERSION_REVISIONS, also=(_KV_VERSION,))
        with_revisions = frames.version == _KV_VERSION_REVISIONS
        header = _unpack(frames.frame(), "header")
        if not isinstance(header, dict):
            raise SnapshotFormatError("kv snapshot header is not a map")
        index, n_sessions = header.get("index"), header.get("sessions")
        if type(index) is not int or index < 0 or type(n_sessions) is not int:
            raise SnapshotFormatError(f"bad kv snapshot header {header!r}")
        revisions = _revision_header(header) if with_revisions else None
        limits = ("max_sessions", "idle_entries", "max_replies")
        ours = (
            self.sessions.max_sessions,
            self.sessions.idle_entries,
            self.sessions.max_replies,
        )
        theirs = tuple(header.get(name) for name in limits)
        if theirs != ours:
            log.warning(
                "snapshot taken with other session limits",
                snapshot=dict(zip(limits, theirs, strict=True)),
                ours=dict(zip(limits, ours, strict=True)),
            )
        sessions: list[SessionRecord] = []
        data: dict[str, bytes] = {}
        meta: dict[str, KeyMeta] = {}
        leases: dict[int, _Lease] = {}
        ordered: list[str] = []
        last: str | None = None
        while True:
            frame = _unpack(frames.frame(), "frame")
            if type(frame) is not list or not frame:
                raise SnapshotFormatError("kv snapshot frame is not a tagged array")
            kind = frame[0]
            if kind == _FRAME_DATA and len(frame) == (4 if revisions else 3):
                keys, values = frame[1], frame[2]
                last = _check_data_chunk(keys, values, last)
                data.update(zip(keys, values, strict=True))
                ordered.extend(keys)
                if revisions is not None:
                    _read_metas(keys, frame[3], revisions.base_revision, meta, leases)
            elif kind == _FRAME_SESSIONS and len(frame) == 2:
                try:
                    sessions.extend(records_from_plain(frame[1], reply_from_plain))
                except (TypeError, ValueError, IndexError) as exc:
                    raise SnapshotFormatError(f"bad session record in kv snapshot: {exc}") from None
            elif kind == _FRAME_LEASES and revisions is not None and len(frame) == 2:
                _read_leases(frame[1], leases)
            elif kind == _FRAME_END and len(frame) == (4 if revisions else 3):
                counts = (len(data), len(sessions)) + ((len(leases),) if revisions else ())
                expected = (frame[1], n_sessions) + ((revisions.leases_count,) if revisions else ())
                if tuple(frame[1:]) != expected or counts != expected:
                    raise SnapshotFormatError(
                        f"kv snapshot counts disagree: trailer says {frame[1:]} (keys, sessions"
                        f"{', leases' if revisions else ''}); read {list(counts)}"
                    )
                break
            else:
                raise SnapshotFormatError(f"unknown kv snapshot frame kind {kind!r}")
        keys_index = SortedList(ordered)  # already sorted: linear time
        del ordered
        table = self.sessions.empty_like()
        try:
            table.load(sessions)
        except ValueError as exc:
            raise SnapshotFormatError(f"bad session record in kv snapshot: {exc}") from None
        with self._lock:
            self.sessions.adopt(table)
            self._drop_views()
            self._maps = (data, keys_index, meta)
            self._data = data
            self._keys = keys_index
            self._meta = meta
            self._applied_index = index
            self._leases = leases
            if revisions is not None:
                self._revision = revisions.revision
                self._base_revision = revisions.base_revision
                self._next_lease = revisions.next_lease
            else:
                self._revision = self._base_revision = 0
                self._next_lease = 1
        if self.on_reset is not None:
            self.on_reset(self._revision)
        log.info(
            "kv snapshot restored",
            index=index,
            keys=len(data),
            sessions=len(sessions),
            revision=self._revision,
            seconds=round(time.perf_counter() - started, 3),
        )


class _RevisionHeader(NamedTuple):
    revision: int
    base_revision: int
    next_lease: int
    leases_count: int


def _revision_header(header: dict[str, Any]) -> _RevisionHeader:
    fields = [header.get(n) for n in ("revision", "base_revision", "next_lease", "leases")]
    numbers = [v for v in fields if type(v) is int and v >= 0]
    if len(numbers) != len(fields):
        raise SnapshotFormatError(f"bad revisions in kv snapshot header {header!r}")
    revision, base, next_lease, count = numbers
    if not 1 <= base <= revision or next_lease < 1:
        raise SnapshotFormatError(f"bad revisions in kv snapshot header {header!r}")
    return _RevisionHeader(revision, base, next_lease, count)


def _read_leases(plain: Any, leases: dict[int, _Lease]) -> None:
    if type(plain) is not list:
        raise SnapshotFormatError("kv snapshot leases frame is not an array")
    for item in plain:
        if (
            type(item) is not list
            or len(item) != 3
            or not all(type(x) is int for x in item)
            or item[0] < 1
            or item[1] < 1
            or item[0] in leases
        ):
            raise SnapshotFormatError(f"bad lease {item!r} in kv snapshot")
        leases[item[0]] = _Lease(item[1], item[2])


def _read_metas(
    keys: list[str], plain: Any, base: int, meta: dict[str, KeyMeta], leases: dict[int, _Lease]
) -> None:
    if type(plain) is not list or len(plain) != len(keys):
        raise SnapshotFormatError("kv snapshot data frame has no meta for every key")
    implicit = [base, base, 1, 0]
    for key, item in zip(keys, plain, strict=True):
        if item == implicit:
            continue
        if type(item) is not list or len(item) != 4 or not all(type(x) is int for x in item):
            raise SnapshotFormatError(f"bad meta {item!r} of key {key!r} in kv snapshot")
        if item[3]:
            lease = leases.get(item[3])
            if lease is None:
                raise SnapshotFormatError(f"key {key!r} names lease {item[3]}, not in the snapshot")
            lease.keys.add(key)
        meta[key] = KeyMeta(*item)


def _not_active(op: Op, active: int) -> str:
    return (
        f"key-value operation {op.name.lower()} needs key-value version {SINCE[op]}; the "
        f"cluster runs version {active} until every node supports it"
    )


class _DataFramer:
    """Cuts the walk's (key, value) pairs into data frames at places that
    depend only on the pairs: at most _MAX_CHUNK_KEYS pairs and about
    _CHUNK_BYTES a frame. The walk's own chunks depend on the writes made
    while it runs (a key created after the view is skipped); framing by them
    would make equal states give different bytes, and the bytes are what
    state checks compare (runtime/checks.py)."""

    __slots__ = ("_base", "_frames", "_keys", "_metas", "_sizes", "_values")

    def __init__(self, frames: FrameWriter, base_revision: int | None = None) -> None:
        self._frames = frames
        # Format 3: each key's meta goes with it; a key older than the switch
        # is written with its implicit meta, so that equal states give equal
        # bytes however their meta is stored.
        self._base = base_revision
        self._keys: list[str] = []
        self._values: list[bytes] = []
        # KeyMeta is a tuple, which msgpack writes as the array a list is.
        self._metas: list[Sequence[int]] = []
        self._sizes: list[int] = []

    def add(self, keys: list[str], values: list[bytes], metas: list[KeyMeta | None]) -> None:
        self._keys += keys
        self._values += values
        extra = 0
        if self._base is not None:
            if None in metas:
                implicit = KeyMeta(self._base, self._base, 1, 0)
                self._metas += [implicit if m is None else m for m in metas]
            else:
                self._metas += metas  # type: ignore[arg-type]  # no None in it
            extra = 24
        self._sizes += [len(k) + len(v) + 16 + extra for k, v in zip(keys, values, strict=True)]
        while len(self._keys) > _MAX_CHUNK_KEYS or sum(self._sizes) > _CHUNK_BYTES:
            self._emit(self._cut())

    def flush(self) -> None:
        while self._keys:
            self._emit(self._cut())

    def _cut(self) -> int:
        """Pairs in the next frame: as many as fit in _CHUNK_BYTES (at least one)."""
        fits = bisect.bisect_right(list(accumulate(self._sizes[:_MAX_CHUNK_KEYS])), _CHUNK_BYTES)
        return max(1, fits)

    def _emit(self, n: int) -> None:
        payload: tuple[Any, ...] = (_FRAME_DATA, self._keys[:n], self._values[:n])
        if self._base is not None:
            payload = (*payload, self._metas[:n])
            del self._metas[:n]
        self._frames.frame(msgpack.packb(payload, use_bin_type=True))
        del self._keys[:n], self._values[:n], self._sizes[:n]


def _unpack(payload: bytes, what: str) -> Any:
    try:
        return msgpack.unpackb(payload, raw=False, use_list=True)
    except Exception as exc:
        raise SnapshotFormatError(f"undecodable kv snapshot {what}: {exc}") from None


def _check_data_chunk(keys: Any, values: Any, last: str | None) -> str | None:
    if type(keys) is not list or type(values) is not list or len(keys) != len(values):
        raise SnapshotFormatError("kv snapshot data frame is not two arrays of equal length")
    if not keys:
        return last
    if set(map(type, keys)) != {str} or set(map(type, values)) != {bytes}:
        raise SnapshotFormatError(
            "kv snapshot data frame holds keys that are not text or values that are not bytes"
        )
    if (last is not None and keys[0] <= last) or not all(
        map(operator.lt, keys, islice(keys, 1, None))
    ):
        raise SnapshotFormatError("kv snapshot keys are not in strictly increasing order")
    last_key: str = keys[-1]
    return last_key


def _prefix_successor(prefix: str) -> str | None:
    """The least string greater than every string that starts with
    ``prefix``; None if there is none (empty prefix, or all max code points)."""
    stripped = prefix.rstrip("\U0010ffff")
    if not stripped:
        return None
    return stripped[:-1] + chr(ord(stripped[-1]) + 1)

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
from collections.abc import Iterator
from itertools import accumulate, islice
from typing import Any, NamedTuple

import msgpack
import structlog
from sortedcontainers import SortedList

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
    "encode_noop",
    "encode_put",
]


class Op(enum.IntEnum):
    NOOP = 0
    PUT = 1
    DELETE = 2
    CAS = 3


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


class PutResult(NamedTuple):
    # The field shadows tuple.index(); the name is the API's (PutResponse.index).
    index: int  # type: ignore[assignment]


class DeleteResult(NamedTuple):
    deleted: bool
    # The field shadows tuple.index(); the name is the API's.
    index: int  # type: ignore[assignment]


class CasResult(NamedTuple):
    swapped: bool
    found: bool
    current: bytes
    # The field shadows tuple.index(); the name is the API's.
    index: int  # type: ignore[assignment]


KVResult = PutResult | DeleteResult | CasResult | CommandError | None


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


# Number of array items per op without a session (a session adds three:
# client_id, sequence, first_unacked).
_ARITY = {Op.NOOP: 1, Op.PUT: 3, Op.DELETE: 2, Op.CAS: 4}
SINCE = {Op.NOOP: 1, Op.PUT: 1, Op.DELETE: 1, Op.CAS: 1}
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
    if len(items) == arity + 3 and op is not Op.NOOP:
        if not valid_session(*items[-3:]):
            raise BadCommandError(f"bad session {items[-3:]!r}")
        session = Session(*items[-3:])
    elif len(items) != arity:
        raise BadCommandError(f"{op.name.lower()} takes {arity} fields, got {len(items)}")
    if op is Op.NOOP:
        return _NOOP_COMMAND
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


# -- session replies in snapshots ---------------------------------------------


def reply_to_plain(reply: object) -> tuple[Any, ...]:
    if type(reply) is PutResult:
        return (1, reply.index)
    if type(reply) is DeleteResult:
        return (2, reply.deleted, reply.index)
    if type(reply) is CasResult:
        return (3, reply.swapped, reply.found, reply.current, reply.index)
    if type(reply) is CommandError:
        return (0, int(reply.code), reply.message)
    raise TypeError(f"unexpected session reply {reply!r}")


def reply_from_plain(plain: Any) -> KVResult:
    """The inverse of reply_to_plain; ValueError for anything else."""
    kind = plain[0]
    shape: tuple[type, ...]
    if kind == 1:
        shape = (int, int)
    elif kind == 2:
        shape = (int, bool, int)
    elif kind == 3:
        shape = (int, bool, bool, bytes, int)
    elif kind == 0:
        shape = (int, int, str)
    else:
        raise ValueError(f"unknown reply kind {kind!r}")
    if len(plain) != len(shape) or any(type(x) is not t for x, t in zip(plain, shape, strict=True)):
        raise ValueError(f"malformed reply {plain!r}")
    if kind == 1:
        return PutResult(plain[1])
    if kind == 2:
        return DeleteResult(plain[1], plain[2])
    if kind == 3:
        return CasResult(plain[1], plain[2], plain[3], plain[4])
    return CommandError(ErrorCode(plain[1]), plain[2])


# -- the copy-on-write snapshot view -------------------------------------------


class _View:
    """The state of one snapshot in progress (see the module docstring).

    Invariants: every key in ``before`` is above ``cursor``; ``gone`` holds
    exactly the keys above ``cursor`` that existed when the view was taken and
    are absent from the live map now; ``before[k] is None`` means k did not
    exist when the view was taken.
    """

    __slots__ = ("before", "closed", "cursor", "gone", "index", "sessions")

    def __init__(self, index: int, sessions: list[SessionRecord]) -> None:
        self.index = index
        self.sessions = sessions
        self.cursor: str | None = None
        self.before: dict[str, bytes | None] = {}
        self.gone: SortedList[str] = SortedList()
        self.closed = False

    def note_put(self, key: str, old: bytes | None) -> None:
        cursor = self.cursor
        if cursor is not None and key <= cursor:
            return
        before = self.before
        if key not in before:
            before[key] = old
        elif old is None and before[key] is not None:
            self.gone.remove(key)  # a key of the view, deleted, now back

    def note_delete(self, key: str, old: bytes) -> None:
        cursor = self.cursor
        if cursor is not None and key <= cursor:
            return
        before = self.before
        if key not in before:
            before[key] = old
            self.gone.add(key)
        elif before[key] is not None:
            self.gone.add(key)

    def next_chunk(
        self, keys: SortedList[str], data: dict[str, bytes], limit: int
    ) -> tuple[list[str], list[bytes]] | None:
        """The next keys of the view (at most ``limit``) and their values as of
        the view; None when the walk is over. Called under the machine's lock."""
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
            return candidates, list(map(data.__getitem__, candidates))
        out_keys: list[str] = []
        out_values: list[bytes] = []
        for key in candidates:
            if key in before:
                old = before.pop(key)
                if old is None:
                    continue  # created after the view was taken
                out_keys.append(key)
                out_values.append(old)
            else:
                out_keys.append(key)
                out_values.append(data[key])
        return out_keys, out_values


MAX_VIEWS = 2
"""Snapshot views open at once: a snapshot being written and a state check."""
_KV_MAGIC = b"RRKV"
_KV_VERSION = 2  # 2: sessions keep a floor and many replies per client
_FRAME_SESSIONS = 1
_FRAME_DATA = 2
_FRAME_END = 3
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
            frames = FrameWriter(stream, _KV_MAGIC, _KV_VERSION)
            sessions = view.sessions
            frames.frame(
                msgpack.packb(
                    {
                        "index": view.index,
                        "sessions": len(sessions),
                        "max_sessions": machine.sessions.max_sessions,
                        "idle_entries": machine.sessions.idle_entries,
                        "max_replies": machine.sessions.max_replies,
                    }
                )
            )
            for chunk in chunk_records(sessions, _SESSIONS_PER_FRAME):
                plain = records_to_plain(chunk, reply_to_plain)
                frames.frame(msgpack.packb((_FRAME_SESSIONS, plain), use_bin_type=True))
            view.sessions = []
            count = 0
            limit = _MIN_CHUNK_KEYS
            lock = machine._lock
            framer = _DataFramer(frames)
            while True:
                with lock:
                    if view.closed:
                        raise SnapshotAbortedError("snapshot view dropped (machine restored)")
                    pairs = view.next_chunk(machine._keys, machine._data, limit)
                if pairs is None:
                    break
                keys, values = pairs
                if not keys:
                    continue
                count += len(keys)
                framer.add(keys, values)
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
            frames.frame(msgpack.packb((_FRAME_END, count, len(sessions))))
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
        # The same two objects as one tuple: readers that need both take them
        # in one read, so a restore() swapping them from a worker thread can
        # never show them a new map with an old key index.
        self._maps = (self._data, self._keys)
        self.sessions = SessionTable(max_sessions, session_idle_entries, session_max_replies)
        self._applied_index = 0
        # Held by apply() while it mutates and by a snapshot job while it reads
        # one chunk; never held across I/O.
        self._lock = threading.Lock()
        # Open snapshot views: usually none or one; a state check's digest
        # (runtime/checks.py) may run beside a snapshot being written.
        self._views: list[_View] = []
        self.active_version = 1
        """The key-value version the cluster runs (machines/cluster.py keeps
        it current)."""

    # -- reads (never through the log) ----------------------------------------

    @property
    def applied_index(self) -> int:
        return self._applied_index

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> tuple[bool, bytes]:
        """``(found, value)``; value is b"" when not found."""
        value = self._data.get(key)
        if value is None:
            return False, b""
        return True, value

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
        data, keys = self._maps
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
        data, keys = self._maps
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
        return self.sessions.run_once(cmd.session, index, self._execute, index, cmd)  # type: ignore[return-value]

    def check_proposal(self, command: bytes) -> str | None:
        """Why this node must not propose ``command``, or None (see
        ModelMachine.check_proposal)."""
        try:
            cmd = decode_command(command)
        except UnknownOperationError as exc:
            return str(exc)
        except BadCommandError:
            return None  # applies as a BAD_COMMAND result, the same everywhere
        if SINCE[cmd.op] > self.active_version:
            return _not_active(cmd.op, self.active_version)
        return None

    def _execute(self, index: int, cmd: KVCommand) -> KVResult:
        op = cmd.op
        key = cmd.key
        data = self._data
        with self._lock:
            if op is Op.PUT:
                self._set(key, data.get(key), cmd.value)
                return PutResult(index)
            old = data.get(key)
            if op is Op.DELETE:
                if old is None:
                    return DeleteResult(False, index)
                self._remove(key, old)
                return DeleteResult(True, index)
            if op is Op.CAS:
                expected = cmd.expected
                if (old is None) if expected is None else (old == expected):
                    self._set(key, old, cmd.value)
                    return CasResult(True, old is not None, cmd.value, index)
                return CasResult(False, old is not None, b"" if old is None else old, index)
            return None

    def _set(self, key: str, old: bytes | None, value: bytes) -> None:
        for view in self._views:
            view.note_put(key, old)
        if old is None:
            self._keys.add(key)
        self._data[key] = value

    def _remove(self, key: str, old: bytes) -> None:
        for view in self._views:
            view.note_delete(key, old)
        del self._data[key]
        self._keys.remove(key)

    # -- snapshots ------------------------------------------------------------

    def snapshot(self) -> KVSnapshotJob:
        """Fix a view of the current state (cost: a copy of the session
        table). Several views may be open at once (each change of a key is
        then noted in each); each costs memory for the keys changed above its
        cursor, so a runtime keeps their number small."""
        with self._lock:
            if len(self._views) >= MAX_VIEWS:
                raise SnapshotInProgressError(
                    f"{len(self._views)} snapshot views are still open (at indexes "
                    f"{', '.join(str(v.index) for v in self._views)})"
                )
            view = _View(self._applied_index, self.sessions.copy_entries())
            self._views.append(view)
        return KVSnapshotJob(self, view)

    def _release_view(self, view: _View) -> None:
        with self._lock:
            view.closed = True
            view.before = {}
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
            self._maps = (self._data, self._keys)
            self.sessions.load(())
            self._applied_index = 0

    def _drop_views(self) -> None:
        for view in self._views:
            view.closed = True
        self._views = []

    def restore(self, stream: ReadableStream) -> None:
        """Replace the whole state from a stream written by a snapshot job.
        Raises SnapshotFormatError (state unchanged) if the stream is bad.

        May run in a worker thread while the loop keeps serving reads (they
        see the old state until the swap); apply() must not run meanwhile.
        An open snapshot job is aborted."""
        started = time.perf_counter()
        frames = FrameReader(stream, _KV_MAGIC, _KV_VERSION)
        header = _unpack(frames.frame(), "header")
        if not isinstance(header, dict):
            raise SnapshotFormatError("kv snapshot header is not a map")
        index, n_sessions = header.get("index"), header.get("sessions")
        if type(index) is not int or index < 0 or type(n_sessions) is not int:
            raise SnapshotFormatError(f"bad kv snapshot header {header!r}")
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
        ordered: list[str] = []
        last: str | None = None
        while True:
            frame = _unpack(frames.frame(), "frame")
            if type(frame) is not list or not frame:
                raise SnapshotFormatError("kv snapshot frame is not a tagged array")
            kind = frame[0]
            if kind == _FRAME_DATA and len(frame) == 3:
                keys, values = frame[1], frame[2]
                last = _check_data_chunk(keys, values, last)
                data.update(zip(keys, values, strict=True))
                ordered.extend(keys)
            elif kind == _FRAME_SESSIONS and len(frame) == 2:
                try:
                    sessions.extend(records_from_plain(frame[1], reply_from_plain))
                except (TypeError, ValueError, IndexError) as exc:
                    raise SnapshotFormatError(f"bad session record in kv snapshot: {exc}") from None
            elif kind == _FRAME_END and len(frame) == 3:
                if frame[1] != len(data) or frame[2] != n_sessions or len(sessions) != n_sessions:
                    raise SnapshotFormatError(
                        f"kv snapshot counts disagree: trailer says {frame[1]} keys, "
                        f"{frame[2]} sessions; read {len(data)} keys, {len(sessions)} sessions"
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
            self._maps = (data, keys_index)
            self._data = data
            self._keys = keys_index
            self._applied_index = index
        log.info(
            "kv snapshot restored",
            index=index,
            keys=len(data),
            sessions=len(sessions),
            seconds=round(time.perf_counter() - started, 3),
        )


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

    __slots__ = ("_frames", "_keys", "_sizes", "_values")

    def __init__(self, frames: FrameWriter) -> None:
        self._frames = frames
        self._keys: list[str] = []
        self._values: list[bytes] = []
        self._sizes: list[int] = []

    def add(self, keys: list[str], values: list[bytes]) -> None:
        self._keys += keys
        self._values += values
        self._sizes += [len(k) + len(v) + 16 for k, v in zip(keys, values, strict=True)]
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
        payload = (_FRAME_DATA, self._keys[:n], self._values[:n])
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

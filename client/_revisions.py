"""What the sync and the asyncio client share for key-value version 2:
transactions, watches and leases -- the request builders, the result types
and the watch's resume rule. No I/O here.

Watches resume: a watch remembers the next revision it needs (after the last
event, or the last progress notification, it received: a watch asks for
them by default, and a stopping node sends one before it ends the stream);
when its stream breaks it opens a new one, on the next node, from that
revision. Every
revision comes whole in one response, so nothing is missed or repeated. A
node that no longer holds that revision answers "compacted": the watch then
tries the other nodes, and raises :class:`WatchCompacted` only when none
holds it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from ramraft.client._core import UINT32, put_request, to_int, to_key, to_value
from ramraft.client.errors import FailedPrecondition, RamraftError
from ramraft.proto import kv_pb2

__all__ = [
    "Compare",
    "DeleteResult",
    "KeyValue",
    "LeaseGrant",
    "OpResult",
    "PutResult",
    "TxnOp",
    "TxnResult",
    "WatchCanceled",
    "WatchCompacted",
    "WatchEvent",
    "WatchProgress",
]

PUT: Final = "PUT"
DELETE: Final = "DELETE"


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    lease: int = 0


def key_value(message: kv_pb2.KeyValue) -> KeyValue:
    return KeyValue(
        message.key,
        message.value,
        message.create_revision,
        message.mod_revision,
        message.version,
        message.lease,
    )


# -- transactions -------------------------------------------------------------------

_RESULTS = {
    "==": kv_pb2.COMPARE_RESULT_EQUAL,
    "!=": kv_pb2.COMPARE_RESULT_NOT_EQUAL,
    "<": kv_pb2.COMPARE_RESULT_LESS,
    ">": kv_pb2.COMPARE_RESULT_GREATER,
}
Operator = Literal["==", "!=", "<", ">"]
_TARGETS = ("value", "version", "create_revision", "mod_revision", "lease")


@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of a transaction::

    Compare.value("k", "==", b"v")          # absent keys never compare equal by value
    Compare.version("k", "==", 0)           # the key is absent
    Compare.mod_revision("k", "<", 42)
    Compare.create_revision("k", ">", 0)
    Compare.lease("k", "==", lease_id)
    """

    key: str
    target: str
    op: str
    operand: bytes | int

    def __post_init__(self) -> None:
        to_key(self.key)
        if self.op not in _RESULTS:
            raise ValueError(f"compare operator {self.op!r}: use one of ==, !=, <, >")
        if self.target not in _TARGETS:
            raise ValueError(f"compare target {self.target!r}: use one of {', '.join(_TARGETS)}")
        if self.target == "value":
            if not isinstance(self.operand, bytes):
                raise TypeError(f"a value compares with bytes, not {type(self.operand).__name__}")
        elif not isinstance(self.operand, int) or isinstance(self.operand, bool):
            raise TypeError(f"a {self.target} compares with an int, not {self.operand!r}")

    @classmethod
    def value(cls, key: str, op: Operator, value: bytes | str) -> Compare:
        # bytes(5) would be five zero bytes, bytes({}) none: only bytes or str.
        return cls(key, "value", op, to_value(value))

    @classmethod
    def version(cls, key: str, op: Operator, version: int) -> Compare:
        return cls(key, "version", op, int(version))

    @classmethod
    def create_revision(cls, key: str, op: Operator, revision: int) -> Compare:
        return cls(key, "create_revision", op, int(revision))

    @classmethod
    def mod_revision(cls, key: str, op: Operator, revision: int) -> Compare:
        return cls(key, "mod_revision", op, int(revision))

    @classmethod
    def lease(cls, key: str, op: Operator, lease_id: int) -> Compare:
        return cls(key, "lease", op, int(lease_id))

    def message(self) -> kv_pb2.Compare:
        compare = kv_pb2.Compare(key=self.key, result=_RESULTS[self.op])
        setattr(compare, self.target, self.operand)
        return compare


@dataclass(frozen=True, slots=True)
class TxnOp:
    """One op of a transaction branch::

    TxnOp.put("k", b"v", lease=0)
    TxnOp.get("k")
    TxnOp.delete("k")
    TxnOp.range("prefix/", limit=100)
    TxnOp.delete_prefix("prefix/")
    """

    request: kv_pb2.RequestOp

    @classmethod
    def put(cls, key: str, value: bytes | str, *, lease: int = 0) -> TxnOp:
        return cls(kv_pb2.RequestOp(put=put_request(key, value, lease)))

    @classmethod
    def get(cls, key: str) -> TxnOp:
        return cls(kv_pb2.RequestOp(get=kv_pb2.GetRequest(key=to_key(key))))

    @classmethod
    def delete(cls, key: str) -> TxnOp:
        return cls(kv_pb2.RequestOp(delete=kv_pb2.DeleteRequest(key=to_key(key))))

    @classmethod
    def range(cls, prefix: str, *, limit: int = 0, start_after: str = "") -> TxnOp:
        request = kv_pb2.RangeRequest(
            prefix=to_key(prefix),
            limit=to_int(limit, "limit", UINT32),
            start_after=to_key(start_after),
        )
        return cls(kv_pb2.RequestOp(range=request))

    @classmethod
    def delete_prefix(cls, prefix: str) -> TxnOp:
        request = kv_pb2.DeleteRangeRequest(prefix=to_key(prefix))
        return cls(kv_pb2.RequestOp(delete_range=request))


def txn_request(
    compare: Iterable[Compare], success: Iterable[TxnOp], failure: Iterable[TxnOp]
) -> kv_pb2.TxnRequest:
    for item in compare:
        if not isinstance(item, Compare):
            raise TypeError(f"a compare must be a Compare, not {type(item).__name__}")
    ops = [*success, *failure]
    for op in ops:
        if not isinstance(op, TxnOp):
            raise TypeError(f"a transaction op must be a TxnOp, not {type(op).__name__}")
    return kv_pb2.TxnRequest(
        compare=[c.message() for c in compare],
        success=[o.request for o in success],
        failure=[o.request for o in failure],
    )


@dataclass(frozen=True, slots=True)
class OpResult:
    """The answer to one op: ``kind`` is "put", "get", "delete", "range" or
    "delete_range". A get sets ``found`` and ``kv`` (None when not found); a
    range ``kvs`` and ``more``; a delete ``deleted`` (0 or 1), a delete_range
    ``deleted`` (the count)."""

    kind: str
    found: bool = False
    kv: KeyValue | None = None
    kvs: tuple[KeyValue, ...] = ()
    more: bool = False
    deleted: int = 0


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    responses: list[OpResult]
    revision: int
    index: int


def txn_result(response: kv_pb2.TxnResponse) -> TxnResult:
    out: list[OpResult] = []
    for r in response.responses:
        kind = r.WhichOneof("response") or ""
        if kind == "get":
            g = r.get
            kv = KeyValue("", g.value, g.create_revision, g.mod_revision, g.version, g.lease)
            out.append(OpResult(kind, found=g.found, kv=kv if g.found else None))
        elif kind == "range":
            out.append(
                OpResult(kind, kvs=tuple(key_value(i) for i in r.range.items), more=r.range.more)
            )
        elif kind == "delete":
            out.append(OpResult(kind, deleted=int(r.delete.deleted)))
        elif kind == "delete_range":
            out.append(OpResult(kind, deleted=r.delete_range.deleted))
        else:
            out.append(OpResult(kind))
    return TxnResult(response.succeeded, out, response.header.revision, response.index)


def fill_get_keys(request: kv_pb2.TxnRequest, result: TxnResult) -> TxnResult:
    """Name the key of each get result (the wire answer does not repeat it)."""
    ops = request.success if result.succeeded else request.failure
    named: list[OpResult] = []
    for op, r in zip(ops, result.responses, strict=False):
        if r.kind == "get" and r.kv is not None:
            kv = r.kv
            r = OpResult(
                "get",
                found=True,
                kv=KeyValue(
                    op.get.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease
                ),
            )
        named.append(r)
    return TxnResult(result.succeeded, named, result.revision, result.index)


@dataclass(frozen=True, slots=True)
class PutResult:
    index: int
    revision: int  # the revision of the write (0 before key-value version 2)


@dataclass(frozen=True, slots=True)
class DeleteResult:
    deleted: bool
    index: int
    revision: int  # of the delete, or the current one when nothing was deleted


# -- leases ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    id: int
    ttl: int
    revision: int = 0


# -- watches ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change: ``type`` is "PUT" or "DELETE"; ``revision`` the change's
    revision (a delete's ``value`` is empty)."""

    type: str
    key: str
    value: bytes
    revision: int
    create_revision: int = 0
    version: int = 0
    lease: int = 0


@dataclass(frozen=True, slots=True)
class WatchProgress:
    """A progress notification: every change up to ``revision`` has been
    delivered (yielded only with ``progress=True``)."""

    revision: int


class WatchCanceled(RamraftError):
    """The node ended the watch (too slow, too many watches, the cluster
    still runs key-value version 1, ...): ``details`` says why."""


class WatchCompacted(WatchCanceled):
    """No node holds the history from the revision the watch needs any more
    (``compact_revision``: the oldest one the last node could send from).
    Read the state and watch again from its revision + 1."""

    # compact_revision has a default for pickle, which builds an exception
    # from its message alone, then restores its attributes.
    def __init__(self, message: str, *, compact_revision: int = 0, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.compact_revision = compact_revision


def event(e: kv_pb2.Event) -> WatchEvent:
    return WatchEvent(
        DELETE if e.type == kv_pb2.EVENT_TYPE_DELETE else PUT,
        e.kv.key,
        e.kv.value,
        e.kv.mod_revision,
        e.kv.create_revision,
        e.kv.version,
        e.kv.lease,
    )


@dataclass
class WatchState:
    """One watch as the client follows it across streams and nodes."""

    key: str
    prefix: bool = False
    start_revision: int = 0
    progress_notify: bool = True
    progress: bool = False
    next_revision: int = 0
    """The next revision to ask for (0: not known yet: from now)."""
    compacted_on: set[str] = field(default_factory=set)
    """Endpoints that answered "compacted" for next_revision."""

    def __post_init__(self) -> None:
        if not isinstance(self.key, str):
            raise TypeError(f"key must be str, not {type(self.key).__name__}")
        to_int(self.start_revision, "start_revision", (0, 2**63 - 1))
        self.next_revision = self.start_revision

    def create(self) -> kv_pb2.WatchRequest:
        return kv_pb2.WatchRequest(
            create=kv_pb2.WatchCreateRequest(
                key=self.key,
                prefix=self.prefix,
                start_revision=self.next_revision,
                progress_notify=self.progress_notify or self.progress,
            )
        )

    def take(
        self, response: kv_pb2.WatchResponse, endpoint: str, endpoints: Sequence[str]
    ) -> list[WatchEvent | WatchProgress]:
        """What a response gives the caller. Raises WatchCanceled for a
        watch the node ended, and _TryElsewhere for a compacted answer while
        other endpoints may hold the history."""
        if response.canceled:
            if response.compact_revision:
                self.compacted_on.add(endpoint)
                if set(endpoints) - self.compacted_on:
                    raise TryElsewhere(response.cancel_reason)
                raise WatchCompacted(
                    f"watch {self.key!r}: {response.cancel_reason}",
                    compact_revision=response.compact_revision,
                    code=None,
                    details=response.cancel_reason,
                    endpoint=endpoint,
                )
            cls = FailedPrecondition if "key-value version 2" in response.cancel_reason else None
            raise (cls or WatchCanceled)(
                f"watch {self.key!r} canceled by {endpoint}: {response.cancel_reason}",
                details=response.cancel_reason,
                endpoint=endpoint,
            )
        if response.created:
            if not self.next_revision:
                # "From now" is fixed now: a resumed stream starts here.
                self.next_revision = response.header.revision + 1
            return []
        self.compacted_on.clear()
        if not response.events:
            self.next_revision = max(self.next_revision, response.header.revision + 1)
            return [WatchProgress(response.header.revision)] if self.progress else []
        # A resumed stream starts at next_revision; anything older would be a
        # repeat (never expected: every revision comes whole in one response).
        events = [e for e in map(event, response.events) if e.revision >= self.next_revision]
        if events:
            self.next_revision = events[-1].revision + 1
        return list(events)


class TryElsewhere(Exception):
    """This node cannot serve the watch's next revision; another may."""


def check_lease_entry(started: bool, closed: bool) -> None:
    """A lease is kept alive by one ``with`` block, once: a second would
    start a second keep-alive (the async one used to, and kept it running
    after the block), and a closed lease has been revoked or left to expire."""
    if closed:
        raise RuntimeError(
            "this lease was closed (revoked, or left to expire): grant a new one "
            "with client.lease(ttl)"
        )
    if started:
        raise RuntimeError("this lease is kept alive already: enter it in one with block only")

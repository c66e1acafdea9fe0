"""The key-value version 2 messages of proto/kv.proto, to and from the
machine's plain data (machines/kvops.py): transactions and their checks
before proposing, response headers, key-values with their meta, events.
The servicers (rpc/services.py, rpc/leases.py) and nothing else use it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ramraft.proto import kv_pb2
from ramraft.server.machines.kvops import (
    Compare,
    CompareResult,
    CompareTarget,
    Event,
    EventKind,
    KeyMeta,
    OpResult,
    Txn,
    TxnOp,
    TxnOpKind,
    TxnResult,
)
from ramraft.server.request_errors import BadRequest, LimitExceeded
from ramraft.server.runtime.node_api import InputLimits
from ramraft.server.security.budget import reserve_answer

__all__ = [
    "check_delete_ranges",
    "event_message",
    "key_value",
    "linearizable",
    "txn_from_request",
    "txn_response",
]

_TARGETS = {
    "value": CompareTarget.VALUE,
    "version": CompareTarget.VERSION,
    "create_revision": CompareTarget.CREATE,
    "mod_revision": CompareTarget.MOD,
    "lease": CompareTarget.LEASE,
}


def compare_result(value: int) -> CompareResult:
    try:
        return CompareResult(value)
    except ValueError:
        raise BadRequest(
            f"unknown compare result {value}; use 0 (EQUAL) to 3 (NOT_EQUAL)"
        ) from None


def linearizable(value: int) -> bool:
    """Whether a read's Consistency asks for a linearizable read
    (BadRequest for a value the proto does not define)."""
    if value == kv_pb2.LINEARIZABLE:
        return True
    if value == kv_pb2.SERIALIZABLE:
        return False
    raise BadRequest(f"unknown consistency {value}; use LINEARIZABLE (0) or SERIALIZABLE (1)")


def _compare(n: int, message: kv_pb2.Compare, limits: InputLimits) -> Compare:
    limits.check_key(message.key)
    which = message.WhichOneof("target")
    if which is None:
        raise BadRequest(
            f"compare {n} names no target: set one of value, version, create_revision, "
            "mod_revision, lease"
        )
    operand: bytes | int = getattr(message, which)
    if isinstance(operand, bytes):
        limits.check_value(operand)
    return Compare(message.key, _TARGETS[which], compare_result(message.result), operand)


def _no_session(what: str, message: Any) -> None:
    if message.HasField("session"):
        raise BadRequest(
            f"a {what} inside a transaction takes no session (the transaction's applies)"
        )


def _op(message: kv_pb2.RequestOp, limits: InputLimits) -> TxnOp:
    which = message.WhichOneof("request")
    if which == "put":
        put = message.put
        _no_session("put", put)
        limits.check_new_key(put.key)
        limits.check_value(put.value)
        if put.lease < 0:
            raise BadRequest(f"lease {put.lease} is not a lease id")
        return TxnOp(TxnOpKind.PUT, put.key, put.value, put.lease)
    if which == "get":
        # A transaction's reads are made at its apply, whatever they ask;
        # a value the proto does not define is still the caller's error.
        linearizable(message.get.consistency)
        limits.check_key(message.get.key)
        return TxnOp(TxnOpKind.GET, message.get.key)
    if which == "delete":
        _no_session("delete", message.delete)
        limits.check_key(message.delete.key)
        return TxnOp(TxnOpKind.DELETE, message.delete.key)
    if which == "range":
        r = message.range
        linearizable(r.consistency)
        limit = min(r.limit or limits.max_range_limit, limits.max_range_limit)
        return TxnOp(
            TxnOpKind.RANGE,
            r.prefix,
            start_after=r.start_after,
            limit=limit,
            max_bytes=limits.max_txn_bytes,
        )
    if which == "delete_range":
        _no_session("delete_range", message.delete_range)
        limits.check_prefix(message.delete_range.prefix)
        return TxnOp(
            TxnOpKind.DELETE_RANGE, message.delete_range.prefix, limit=limits.max_delete_range_keys
        )
    raise BadRequest("a transaction op sets none of put, get, delete, range, delete_range")


def txn_from_request(request: kv_pb2.TxnRequest, limits: InputLimits) -> Txn:
    """The transaction a TxnRequest asks for, checked against the node's
    limits (BadRequest otherwise); the bounds of its ranges and
    delete-ranges come from them."""
    ops = len(request.compare) + len(request.success) + len(request.failure)
    if ops > limits.max_txn_ops:
        raise BadRequest(
            f"the transaction has {ops} compares and ops; the limit is {limits.max_txn_ops}"
        )
    size = request.ByteSize()
    if size > limits.max_txn_bytes:
        raise BadRequest(f"the transaction is {size} bytes; the limit is {limits.max_txn_bytes}")
    return Txn(
        tuple(_compare(n, c, limits) for n, c in enumerate(request.compare)),
        tuple(_op(o, limits) for o in request.success),
        tuple(_op(o, limits) for o in request.failure),
    )


def check_delete_ranges(txn: Txn, count: Callable[[str], int]) -> None:
    """Refuse before proposing a delete-range that already holds more keys
    than its bound here (the apply checks it again, on every node)."""
    for op in (*txn.success, *txn.failure):
        if op.kind is TxnOpKind.DELETE_RANGE:
            found = count(op.key)
            if found > op.limit:
                raise LimitExceeded(
                    f"{found} keys start with {op.key!r}; a delete-range may remove at most "
                    f"{op.limit} (--max-delete-range-keys)"
                )


def key_value(key: str, value: bytes, meta: KeyMeta | Iterable[int]) -> kv_pb2.KeyValue:
    create, mod, version, lease = meta
    return kv_pb2.KeyValue(
        key=key,
        value=value,
        create_revision=create,
        mod_revision=mod,
        version=version,
        lease=lease,
    )


def _op_response(result: OpResult, index: int) -> kv_pb2.ResponseOp:
    kind = result[0]
    if kind == TxnOpKind.PUT:
        return kv_pb2.ResponseOp(put=kv_pb2.PutResponse(index=index))
    if kind == TxnOpKind.DELETE:
        return kv_pb2.ResponseOp(delete=kv_pb2.DeleteResponse(deleted=result[1], index=index))
    if kind == TxnOpKind.GET:
        _, found, value, create, mod, version, lease = result
        return kv_pb2.ResponseOp(
            get=kv_pb2.GetResponse(
                found=found,
                value=value,
                index=index,
                create_revision=create,
                mod_revision=mod,
                version=version,
                lease=lease,
            )
        )
    if kind == TxnOpKind.RANGE:
        items = [key_value(item[0], item[1], item[2:]) for item in result[1]]
        return kv_pb2.ResponseOp(
            range=kv_pb2.RangeResponse(items=items, more=result[2], index=index)
        )
    return kv_pb2.ResponseOp(
        delete_range=kv_pb2.DeleteRangeResponse(deleted=result[1], index=index)
    )


def txn_response(result: TxnResult, header: kv_pb2.ResponseHeader) -> kv_pb2.TxnResponse:
    return kv_pb2.TxnResponse(
        succeeded=result.succeeded,
        responses=[_op_response(r, result.index) for r in result.responses],
        index=result.index,
        header=header,
    )


_EVENT_TYPES = {EventKind.PUT: kv_pb2.EVENT_TYPE_PUT, EventKind.DELETE: kv_pb2.EVENT_TYPE_DELETE}


def event_message(event: Event) -> kv_pb2.Event:
    return kv_pb2.Event(
        type=_EVENT_TYPES[event.kind],
        kv=kv_pb2.KeyValue(
            key=event.key,
            value=event.value,
            create_revision=event.create_revision,
            mod_revision=event.mod_revision,
            version=event.version,
            lease=event.lease,
        ),
    )


async def reserve_txn_reads(txn: Txn, limits: InputLimits, timeout: float) -> None:
    """Reserve, before it is proposed, room in the node's memory budget for
    what a transaction's reads may return (--max-txn-bytes): its answer is
    built at apply, too late to refuse an applied write for want of room."""
    reads = (TxnOpKind.GET, TxnOpKind.RANGE)
    if any(op.kind in reads for op in (*txn.success, *txn.failure)):
        await reserve_answer(limits.max_txn_bytes, timeout)

"""Which stream Gets a node answers in place, without a task or the unary
path's coroutines (server/rpc/services.py KVService._stream_now): only
those that wait for nothing. A linearizable read answered in place before
its ReadIndex round is confirmed would be a stale read from a deposed
leader; a value over SMALL_ANSWER answered in place would skip its
reservation in the memory budget. tests/server/test_stream.py shows the
answers equal the unary Get's."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Any

from ramraft import Application
from ramraft.proto import kv_pb2
from ramraft.server.inprocess import ClusterHarness
from ramraft.server.machines.kv import encode_put
from ramraft.server.rpc.services import KVService
from ramraft.server.rpc.streams import ROUND_CONFIRMED
from ramraft.server.security.budget import SMALL_ANSWER
from tests.server.apps.ticker import Ticker

Make = Callable[..., ClusterHarness]
LINEARIZABLE, SERIALIZABLE = kv_pb2.LINEARIZABLE, kv_pb2.SERIALIZABLE
NO_STREAM: Any = None  # a Get answered in place does not look at its stream


def get(key: str, consistency: int) -> kv_pb2.StreamRequest:
    return kv_pb2.StreamRequest(id=7, get=kv_pb2.GetRequest(key=key, consistency=consistency))  # type: ignore[arg-type]


def test_only_reads_that_wait_for_nothing_are_answered_in_place(ramraft_cluster: Make) -> None:
    cluster = ramraft_cluster(lambda: Application(Ticker()))
    node = cluster.node(cluster.leader())
    for key, value in (("small", b"s"), ("big", b"b" * (SMALL_ANSWER + 1))):
        cluster.run(node.api.write(encode_put(key, value), 5.0))
    service = KVService(node.api, node.kv)
    observed: list[tuple[str, str]] = []
    service.observers.append(lambda rpc, code, seconds: observed.append((rpc, code)))

    def now(request: kv_pb2.StreamRequest, confirmed: bool = False) -> kv_pb2.StreamResponse | None:
        context = contextvars.copy_context()
        context.run(ROUND_CONFIRMED.set, confirmed)
        answer = context.run(
            service._stream_now, request, request.WhichOneof("op") or "", NO_STREAM, 0.0
        )
        assert not isinstance(answer, asyncio.Future)
        return answer

    answer = now(get("small", SERIALIZABLE))
    assert answer is not None and answer.id == 7
    assert (answer.get.found, answer.get.value) == (True, b"s")
    assert answer.get.index == node.kv.applied_index > 0
    assert answer.get.header.revision == node.kv.revision
    assert observed == [("Get", "OK")]
    confirmed = now(get("small", LINEARIZABLE), confirmed=True)
    assert confirmed is not None and confirmed.get.value == b"s"
    absent = now(get("absent", SERIALIZABLE))
    assert absent is not None and absent.get.found is False

    assert now(get("small", LINEARIZABLE)) is None, "a linearizable read waits for its round"
    assert now(get("big", SERIALIZABLE)) is None, "a big value is reserved first"
    assert now(get("big", LINEARIZABLE), confirmed=True) is None
    assert now(get("", SERIALIZABLE)) is None, "a bad key is answered by Get, with its error"
    assert now(get("small", 7)) is None, "an unknown consistency too"
    page = kv_pb2.StreamRequest(id=8, range=kv_pb2.RangeRequest(prefix="s"))
    assert now(page) is None, "other reads than Get take the unary path"
    assert len(observed) == 3, "only what was answered is reported"

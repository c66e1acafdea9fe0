"""The small holes of issue 17 item 9, and the rules around them, each with
its test: bytes that are no protobuf are INVALID_ARGUMENT (not UNKNOWN), a
JSON body nested 100k deep is a 400 (not a 500), one rule for keys with
control characters on gRPC and HTTP, HTTPS without CBC suites, a call that
sends no message gives its slot back, Range pages bounded in bytes, peers'
batches cut to the receiving port's limit, and tokens without TLS refused
unless --insecure; and a transaction's reads reserved before it is proposed
(issue 16)."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from ramraft.client import InvalidArgument
from ramraft.consensus.types import Entry, Message, MsgType
from ramraft.server.config import ConfigError, NodeConfig, TLSConfig
from ramraft.server.machines.kv import KVMachine, encode_put
from ramraft.server.machines.kvops import Txn, TxnOp, TxnOpKind
from ramraft.server.request_errors import Overloaded
from ramraft.server.rpc.kvproto import reserve_txn_reads
from ramraft.server.runtime.node_api import InputLimits
from ramraft.server.runtime.transport import split_batch
from ramraft.server.runtime.wire import serialize_batch
from ramraft.server.security.budget import (
    CALL_RESERVATION,
    MESSAGE_COPIES,
    MemoryBudget,
    Reservation,
)
from tests.security.cluster import READ_TOKEN, WRITE_TOKEN, SecureCluster, rss_mib
from tests.security.conftest import https
from tests.security.h2raw import RawCaller, grpc_message, grpc_status
from tests.server.procs import REPO


def raw_caller(cluster: SecureCluster) -> RawCaller:
    certs = cluster.creds.certs
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    context.load_cert_chain(str(certs / "client.pem"), str(certs / "client-key.pem"))
    return RawCaller(cluster.grpc[cluster.ids[0]], tls=context)


def test_bytes_that_are_no_protobuf_are_invalid_argument(cluster: SecureCluster) -> None:
    caller = raw_caller(cluster)
    try:
        stream = caller.call("/ramraft.v1.KV/Get", b"\xff\xff\xff", READ_TOKEN)
        code, message = grpc_status(caller.read_frames(stream), stream)
        assert code == grpc.StatusCode.INVALID_ARGUMENT.value[0], message
        assert "not a valid /ramraft.v1.KV/Get message" in message
        for method in ("/ramraft.v1.KV/Stream", "/ramraft.v1.KV/StreamBatch"):
            stream = caller.open(method, READ_TOKEN)
            caller.send(stream, grpc_message(b"\xff\xff\xff"))
            code, message = grpc_status(caller.read_frames(stream), stream)
            assert code == grpc.StatusCode.INVALID_ARGUMENT.value[0], message
    finally:
        caller.close()


def test_bytes_that_are_no_protobuf_on_long_streams_are_invalid_argument(
    cluster: SecureCluster,
) -> None:
    """KV.Watch and Lease.KeepAlive too: KeepAlive ended UNKNOWN with a
    traceback in the node's log, Watch ended OK as if nothing was wrong;
    also with a watch open, and for a key that is no UTF-8."""
    caller = raw_caller(cluster)
    create = b"\x0a\x03\x0a\x01a"  # WatchRequest(create=WatchCreateRequest(key="a"))
    not_utf8 = b"\x0a\x04\x0a\x02\xff\xfe"  # the same, its key the bytes ff fe
    try:
        for method, messages in (
            ("/ramraft.v1.KV/Watch", [b"\xff\xff\xff"]),
            ("/ramraft.v1.KV/Watch", [create, not_utf8]),
            ("/ramraft.v1.Lease/KeepAlive", [b"\xff\xff\xff"]),
        ):
            stream = caller.open(method, WRITE_TOKEN)
            for n, raw in enumerate(messages, 1):
                caller.send(stream, grpc_message(raw), end=n == len(messages))
            code, message = grpc_status(caller.read_frames(stream), stream)
            assert code == grpc.StatusCode.INVALID_ARGUMENT.value[0], (method, message)
            assert f"not a valid {method} message" in message
    finally:
        caller.close()


def test_a_batch_is_counted_before_it_is_decoded(cluster: SecureCluster) -> None:
    """A StreamBatchRequest of a million empty requests is 2 MB on the wire
    and would be about 56 MB decoded: INVALID_ARGUMENT from counting its
    fields, and the node's memory does not move by the decoded size."""
    caller = raw_caller(cluster)
    node = cluster.ids[0]
    try:
        before = rss_mib(cluster.procs[node].pid)
        stream = caller.open("/ramraft.v1.KV/StreamBatch", READ_TOKEN)
        caller.send(stream, grpc_message(b"\x0a\x00" * 1_000_000))
        code, message = grpc_status(caller.read_frames(stream), stream)
        assert code == grpc.StatusCode.INVALID_ARGUMENT.value[0], message
        assert "more than 1024 requests" in message
        assert rss_mib(cluster.procs[node].pid) - before < 40
    finally:
        caller.close()


def test_a_call_that_sends_no_message_gives_its_slot_back(cluster: SecureCluster) -> None:
    """Headers, then nothing: DEADLINE_EXCEEDED after --request-timeout-ms
    (5 s by default), not a slot held for as long as the client likes."""
    caller = raw_caller(cluster)
    try:
        stream = caller.open("/ramraft.v1.KV/Get", READ_TOKEN)
        caller.sock.settimeout(15)
        code, message = grpc_status(caller.read_frames(stream), stream)
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0], message
        assert "did not arrive within 5 s" in message
    finally:
        caller.close()


def test_deeply_nested_json_is_a_400(cluster: SecureCluster) -> None:
    reply = https(
        cluster.http[cluster.ids[0]],
        "POST",
        "/v1/cas/nested",
        ca=cluster.creds.certs / "ca.pem",
        token=WRITE_TOKEN,
        body=b"[" * 100_000,
        headers={"Content-Type": "application/json"},
    )
    assert reply.status == 400, reply.body
    assert reply.json()["error"] == "bad_json" and "nested too deeply" in reply.json()["detail"]


def test_one_rule_for_control_characters_in_keys(cluster: SecureCluster) -> None:
    """Refused in a write on both front doors; over HTTP a key with a
    newline still reaches the key-value routes (404 "no key", not a route
    that does not exist), so keys written before the rule can be read."""
    with cluster.client() as client, pytest.raises(InvalidArgument, match="U\\+000A"):
        client.put("line\nbreak", b"v")
    ca = cluster.creds.certs / "ca.pem"
    address = cluster.http[cluster.ids[0]]
    put = https(address, "PUT", "/v1/kv/line%0Abreak", ca=ca, token=WRITE_TOKEN, body=b"v")
    assert put.status == 400 and "U+000A" in put.json()["detail"], put.body
    get = https(address, "GET", "/v1/kv/line%0Abreak", ca=ca, token=READ_TOKEN)
    assert get.status == 404 and get.json()["error"] == "not_found", get.body
    assert "no key 'line\\nbreak'" in get.json()["detail"]


def test_https_offers_no_cbc_suites(cluster: SecureCluster) -> None:
    address = cluster.http[cluster.ids[0]]
    ca = cluster.creds.certs / "ca.pem"

    def handshake(ciphers: str) -> str:
        context = ssl.create_default_context(cafile=str(ca))
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(ciphers)
        host, port = address.rsplit(":", 1)
        import socket

        with (
            socket.create_connection((host, int(port)), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            return str(tls.cipher()[0])

    with pytest.raises((ssl.SSLError, ConnectionError)):  # an alert, or a hang-up
        handshake("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384:ECDHE-ECDSA-AES128-SHA")
    assert handshake("ECDHE-ECDSA-AES128-GCM-SHA256") == "ECDHE-ECDSA-AES128-GCM-SHA256"


def test_range_pages_stop_at_the_byte_budget() -> None:
    kv = KVMachine()
    for n in range(10):
        kv.apply(n + 1, encode_put(f"k/{n}", b"x" * 100))
    items, more = kv.range("k/", limit=0, max_bytes=350)
    assert [k for k, _ in items] == ["k/0", "k/1", "k/2"] and more
    items, more = kv.range("k/", start_after="k/8", max_bytes=350)
    assert [k for k, _ in items] == ["k/9"] and not more
    items, more = kv.range("k/", max_bytes=10)  # at least one item: a page makes progress
    assert [k for k, _ in items] == ["k/0"] and more


def test_peer_batches_are_cut_to_the_receiving_limit() -> None:
    entries = tuple(Entry(1, n, b"e" * 1000) for n in range(1, 101))
    messages = [
        Message(MsgType.APPEND, "n1", "n2", 1, entries=entries[i : i + 10], index=i)
        for i in range(0, 100, 10)
    ]
    parts = split_batch(messages, 25_000)
    assert [m for part in parts for m in part] == messages  # all of them, in order
    assert len(parts) > 1
    assert all(len(serialize_batch(part)) <= 25_000 for part in parts)


def test_tokens_without_tls_need_insecure(tmp_path: Path) -> None:
    config = NodeConfig("n1", {"n1": "127.0.0.1:7001"}, str(tmp_path), auth_tokens="tokens")
    with pytest.raises(ConfigError, match="--auth-tokens without TLS protects nothing"):
        config.validate()
    config.insecure = True
    config.validate()
    config.insecure = False
    config.tls = TLSConfig("c.pem", "k.pem", "ca.pem")
    config.validate()
    # The command line says so in one line, and exits 2.
    (tmp_path / "tokens.txt").write_text("admin ops 0123456789abcdef0123\n")
    result = subprocess.run(
        [
            *(sys.executable, "-m", "ramraft", "node", "--id", "n1"),
            *("--peers", "n1=127.0.0.1:1", "--data-dir", str(tmp_path / "d")),
            *("--auth-tokens", str(tmp_path / "tokens.txt")),
        ],
        capture_output=True,
        text=True,
        cwd=str(REPO),
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "--insecure" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_help_states_one_memory_formula() -> None:
    from ramraft.tools.cli import build_parser

    text = build_parser()._subparsers._group_actions[0].choices["node"].format_help()  # type: ignore[union-attr]
    assert "RSS <= 120 MiB" in text and "--max-inflight-bytes" in text
    for flag in (
        "--insecure", "--max-range-bytes", "--max-connections-per-source",
        "--handshake-timeout-ms", "--request-timeout-ms", "--idle-timeout-ms",
        "--max-deadline-ms",
    ):  # fmt: skip
        assert flag in text, flag
    json.dumps(text)  # printable as one block


def test_a_transaction_with_reads_reserves_its_answer_before_it_is_proposed() -> None:
    """A Txn's reads are answered at apply, too late to refuse the write for
    want of memory: the room for them (--max-txn-bytes) is reserved first,
    and a node without it refuses the Txn unapplied (RESOURCE_EXHAUSTED)."""
    limits = InputLimits(1024, 1 << 20, 100, max_txn_bytes=1 << 20)
    put = TxnOp(TxnOpKind.PUT, "k", b"v")
    reads = [TxnOp(TxnOpKind.GET, "k"), TxnOp(TxnOpKind.RANGE, "p/", limit=10)]

    async def reserved(txn: Txn, budget_bytes: int, in_use: int = 0) -> int:
        budget = MemoryBudget(budget_bytes, reserve=0)
        assert budget.try_take(in_use)  # other calls' bytes
        reservation = Reservation(budget)
        CALL_RESERVATION.set(reservation)
        await reserve_txn_reads(txn, limits, timeout=0.05)
        return reservation.held

    room = MESSAGE_COPIES * limits.max_txn_bytes
    assert asyncio.run(reserved(Txn((), (put,), ()), 1024)) == 0  # writes only: nothing
    for read in reads:
        for txn in (Txn((), (put, read), ()), Txn((), (put,), (read,))):
            assert asyncio.run(reserved(txn, room)) == room
            with pytest.raises(Overloaded, match="memory budget"):
                asyncio.run(reserved(txn, room, in_use=1))

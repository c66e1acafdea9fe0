"""server/security/auth.py without a network: the token file, bearer parsing, the
in-flight limiter, rate-limited refusal logs, and the runtime's own queue
bound (server/runtime/loop.py max_pending_requests)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog

from ramraft.proto import kv_pb2
from ramraft.server.logs import RateLimitedLog
from ramraft.server.machines.kv import encode_put
from ramraft.server.request_errors import Overloaded
from ramraft.server.security.auth import (
    AccessRole,
    AuthConfigError,
    Gatekeeper,
    InflightLimiter,
    StreamGate,
    TokenStore,
    bearer_token,
    count_fields,
    http_required_role,
    parse_tokens,
)
from ramraft.server.storage import MemoryDisk
from ramraft.tools.cli import main
from tests.httpcalls import wait_until_async
from tests.runtime.test_runtime_single import make_runtime, started

TOKEN = "s3cret-token-for-tests"
GUARD_SECONDS = 30.0  # a hang guard for waits on the runtime, not a speed claim


def test_token_file_roles_names_and_digests(tmp_path: Path) -> None:
    hashed = hashlib.sha256(b"another-long-token-xyz").hexdigest()
    path = tmp_path / "tokens"
    path.write_text(f"# comment\n\nadmin ops {TOKEN}\nread dash sha256:{hashed}\n")
    store = TokenStore(str(path))
    ops = store.authenticate(TOKEN)
    assert ops is not None and (ops.name, ops.role) == ("ops", AccessRole.ADMIN)
    dash = store.authenticate("another-long-token-xyz")
    assert dash is not None and dash.role == AccessRole.READ
    assert store.authenticate("wrong") is None
    assert store.authenticate(TOKEN + "x") is None
    assert store.authenticate(f"sha256:{hashed}") is None, "a digest is not the token"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("admin ops", "expected ROLE NAME TOKEN"),
        ("root ops " + TOKEN, "not read, write or admin"),
        ("admin ops short", "shorter than 16"),
        (f"admin ops {TOKEN}\nread ops {TOKEN}x", "used twice"),
        ("# only comments\n", "no tokens"),
        ("admin o\x00ps " + TOKEN, "name must be"),
    ],
)
def test_bad_token_files_are_refused_without_echoing_tokens(text: str, problem: str) -> None:
    with pytest.raises(AuthConfigError, match=problem) as e:
        parse_tokens(text, "tokens.txt")
    assert TOKEN not in str(e.value)


def test_token_file_is_reloaded_when_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ramraft.server.security.auth.TOKENS_RECHECK_SECONDS", 0.0)
    path = tmp_path / "tokens"
    path.write_text(f"write app {TOKEN}\n")
    store = TokenStore(str(path))
    assert store.authenticate(TOKEN) is not None
    replacement = tmp_path / "tokens.new"
    replacement.write_text("read app rotated-token-0123456789\n")
    os.replace(replacement, path)
    assert store.authenticate(TOKEN) is None
    principal = store.authenticate("rotated-token-0123456789")
    assert principal is not None and principal.role == AccessRole.READ
    path.write_text("garbage\n")  # a broken file keeps the last good one
    assert store.authenticate("rotated-token-0123456789") is not None


def test_a_token_file_that_is_not_text_is_refused_and_never_replaces_a_good_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "tokens"
    path.write_bytes(b"\xff\xfe binary, not a token file")
    with pytest.raises(AuthConfigError, match="not a text file"):
        TokenStore(str(path))
    monkeypatch.setattr("ramraft.server.security.auth.TOKENS_RECHECK_SECONDS", 0.0)
    path.write_text(f"write app {TOKEN}\n")
    store = TokenStore(str(path))
    path.write_bytes(b"\xff\xfe binary, not a token file")
    assert store.authenticate(TOKEN) is not None  # the last good one, no exception


def test_bearer_and_basic_credentials() -> None:
    assert bearer_token(f"Bearer {TOKEN}") == TOKEN
    assert bearer_token(f"bearer   {TOKEN} ") == TOKEN
    basic = base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
    assert bearer_token(f"Basic {basic}") == TOKEN
    for bad in (
        None,
        "",
        "Bearer",
        "Token x",
        "Basic !!!",
        "Basic " + base64.b64encode(b"nopass").decode(),
    ):
        assert bearer_token(bad) is None


def test_http_roles() -> None:
    assert http_required_role("GET", "/healthz") is None
    assert http_required_role("GET", "/v1/kv/a") == AccessRole.READ
    assert http_required_role("GET", "/metrics") == AccessRole.READ
    assert http_required_role("PUT", "/v1/kv/a") == AccessRole.WRITE
    assert http_required_role("POST", "/app/notes") == AccessRole.WRITE


def test_inflight_limiter_per_connection_and_total() -> None:
    limiter = InflightLimiter(total=3, per_connection=2, reserve=0)
    assert limiter.enter("a") is None and limiter.enter("a") is None
    assert "on this connection" in (limiter.enter("a") or "")
    assert limiter.enter("b") is None
    assert "serving 3 requests" in (limiter.enter("c") or "")
    limiter.leave("a")
    assert limiter.enter("c") is None
    for conn in ("a", "b", "c"):
        limiter.leave(conn)
    assert limiter.total == 0 and limiter.by_connection == {} and limiter.refused == 2


def test_inflight_reserve_keeps_light_clients_served() -> None:
    """Heavy connections fill the total; a connection with almost nothing in
    flight still gets in, up to the reserve -- and never beyond it."""
    limiter = InflightLimiter(total=4, per_connection=4, reserve=3)
    for _ in range(4):
        assert limiter.enter("heavy") is None
    assert limiter.enter("heavy") is not None, "a heavy connection gets no reserved slot"
    assert limiter.enter("light") is None and limiter.enter("light") is None
    assert limiter.enter("light") is not None, "...a light one only while it is light"
    assert limiter.enter("polite") is None
    assert limiter.enter("another") is not None, "the reserve is used up"
    assert limiter.total == 7
    limiter.leave("heavy")
    assert limiter.enter("another") is None


def test_inflight_reserve_is_shared_by_addresses() -> None:
    """One address opening many connections with one request each (issue
    17: 200 light connections took every reserved slot) gets at most a
    quarter of the reserve; another address still gets in, and the slots
    come back when the requests end."""
    limiter = InflightLimiter(total=8, per_connection=8, reserve=8)
    for _ in range(8):
        assert limiter.enter("ipv4:10.0.0.1:1000") is None  # the total is full
    admitted = [limiter.enter(f"ipv4:10.0.0.2:{port}") is None for port in range(2000, 2010)]
    assert admitted.count(True) == 2, admitted  # max(LIGHT, 8 // 4)
    assert limiter.enter("ipv4:10.0.0.3:3000") is None, "another address is served"
    assert not limiter.is_light("ipv4:10.0.0.1:1000") and limiter.is_light("ipv4:10.0.0.4:1")
    assert not limiter.is_light("ipv4:10.0.0.2:2000"), "its address holds its share"
    for port in range(2000, 2002):
        limiter.leave(f"ipv4:10.0.0.2:{port}")
    assert limiter.reserved_by_source == {"ipv4:10.0.0.3": 1}
    assert limiter.enter("ipv4:10.0.0.2:2005") is None


def test_refusal_log_is_rate_limited() -> None:
    with structlog.testing.capture_logs() as logs:
        refusals = RateLimitedLog(burst=3, seconds=60)
        for n in range(50):
            refusals.warning("request_refused", n=n)
    assert len(logs) == 3 and all(entry["log_level"] == "warning" for entry in logs)


def test_cli_makes_a_usable_token_file(tmp_path: Path) -> None:
    out = tmp_path / "tokens.txt"
    assert main(["tokens", "--out", str(out), "--read", "grafana,ci"]) == 0
    entries = parse_tokens(out.read_text())
    assert sorted((p.role.label, p.name) for _, p in entries) == [
        ("admin", "admin"), ("read", "ci"), ("read", "grafana"), ("write", "writer")
    ]  # fmt: skip
    assert out.stat().st_mode & 0o077 == 0
    assert main(["tokens", "--out", str(out)]) == 1, "never overwrites"


def test_cli_says_why_it_cannot_write_the_token_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "absent" / "tokens.txt"
    assert main(["tokens", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"ramraft tokens: cannot create {out}: No such file or directory\n"


def test_runtime_counts_requests_queued_for_the_next_turn() -> None:
    """max_pending_requests bounds everything the runtime holds, including
    proposals queued while the loop is busy persisting (they were not
    counted, so a slow disk let the queue grow without bound)."""

    async def scenario() -> None:
        runtime, _ = make_runtime(MemoryDisk(), tick_ms=5)
        runtime.config.limits.max_pending_requests = 5
        await started(runtime)
        entered, release = threading.Event(), threading.Event()
        persist = runtime._persist

        def slow_persist(rd: object, hard_state: object, sync: bool) -> None:
            entered.set()
            release.wait(GUARD_SECONDS)
            persist(rd, hard_state, sync)  # type: ignore[arg-type]

        runtime._persist = slow_persist  # type: ignore[method-assign]
        first = asyncio.ensure_future(runtime.propose(encode_put("k0", b"v")))
        # the loop is now inside the slow persist
        assert await asyncio.to_thread(entered.wait, GUARD_SECONDS)
        queued = [
            asyncio.ensure_future(runtime.propose(encode_put(f"k{n}", b"v"))) for n in range(1, 5)
        ]
        # One yield: asyncio runs the four new tasks (up to their wait) first.
        await asyncio.sleep(0)
        assert runtime.pending_requests() == 5, "the proposals queued for the next turn count"
        with pytest.raises(Overloaded, match="5 requests are waiting on this node already"):
            await runtime.propose(encode_put("one-too-many", b"v"))
        release.set()
        # all five are then committed, each at its own index (the guard only
        # bounds a hang)
        results = await asyncio.wait_for(asyncio.gather(first, *queued), GUARD_SECONDS)
        assert len({index for index, _ in results}) == 5
        await runtime.close()

    asyncio.run(scenario())


def test_runtime_logs_rejected_peer_messages() -> None:
    """A well-formed but impossible message (entries that do not follow the
    previous index) is dropped by the core; the runtime says so at warning
    level, once per burst rather than once per message."""
    from ramraft.consensus.types import Entry, EntryKind, Message, MsgType

    async def scenario() -> list[dict[str, object]]:
        runtime, _ = make_runtime(MemoryDisk(), tick_ms=5)
        await started(runtime)
        bad = Message(
            MsgType.APPEND, "intruder", "solo", 99, log_term=1, index=5,
            entries=(Entry(99, 9, b"x", EntryKind.NORMAL),),
        )  # fmt: skip
        core = runtime.core
        assert core is not None
        with structlog.testing.capture_logs() as logs:
            for n in range(1, 101):  # one at a time: a hundred turns of the loop
                runtime.receive([bad])
                # the turn that counts a rejection also logs it (or not)
                await wait_until_async(
                    lambda n=n: core.rejected_messages >= n, GUARD_SECONDS, f"rejection {n}"
                )
        term = core.term
        await runtime.close()
        assert term < 99, "the rejected message moved the term"
        return [e for e in logs if e["event"] == "peer_message_rejected"]

    rejected = asyncio.run(scenario())
    assert rejected and all(e["log_level"] == "warning" for e in rejected)
    assert "do not follow" in str(rejected[0]["last"])
    assert len(rejected) <= RateLimitedLog().burst


def test_stream_gate_admits_each_request_under_the_connection_limits() -> None:
    """KV.Stream's requests take in-flight slots like unary calls: refused
    with RESOURCE_EXHAUSTED beyond the per-connection limit, admitted again
    once a response is written (release)."""

    class Context:
        def peer(self) -> str:
            return "ipv4:127.0.0.1:5555"

    limiter = InflightLimiter(total=100, per_connection=2)
    keeper = Gatekeeper(None, limiter, lambda node: False, RateLimitedLog())
    gate = StreamGate(keeper, None, Context())  # type: ignore[arg-type]
    assert gate.admit("Put") is None
    assert gate.admit("Get") is None
    refused = gate.admit("Put")
    assert refused is not None and refused[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    gate.release()
    assert gate.admit("Put") is None
    assert limiter.total == 2


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class _CallContext:
    """The part of grpc.aio.ServicerContext the gatekeeper's guards use."""

    def peer(self) -> str:
        return "ipv4:127.0.0.1:6000"

    def add_done_callback(self, callback: object) -> None:
        pass

    async def abort(self, code: grpc.StatusCode, message: str) -> None:
        raise _Aborted(code, message)


@pytest.mark.parametrize("shape", ["unary", "server stream", "client stream"])
def test_a_call_past_its_connections_slots_is_refused_and_logged_before_it_is_read(
    shape: str,
) -> None:
    """Every call shape that takes an in-flight slot (KV.Put, Admin.Backup,
    Blobs.PutBlob) is refused RESOURCE_EXHAUSTED once its connection's slots
    are taken, before a byte of its request is read, and the refusal is
    logged (Admin.Backup's was not before the guards shared ``_admit``)."""
    read: list[str] = []

    async def requests() -> AsyncIterator[bytes]:
        read.append("read")
        yield b""

    async def never(*args: object) -> None:
        raise AssertionError("a refused call reached its handler")

    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "unary": grpc.unary_unary_rpc_method_handler(never, request_deserializer=bytes),
        "server stream": grpc.unary_stream_rpc_method_handler(never, request_deserializer=bytes),
        "client stream": grpc.stream_unary_rpc_method_handler(never, request_deserializer=bytes),
    }

    class Details:
        method = "/ramraft.v1.Test/Call"
        invocation_metadata = ()

    async def refused() -> _Aborted:
        async def continuation(details: object) -> grpc.RpcMethodHandler[Any, Any]:
            return handlers[shape]

        limiter = InflightLimiter(total=100, per_connection=1, reserve=0)
        keeper = Gatekeeper(None, limiter, lambda node: False, RateLimitedLog())
        assert limiter.enter(_CallContext().peer()) is None  # the one slot is taken
        guarded = await keeper.intercept_service(continuation, Details())  # type: ignore[arg-type]
        assert guarded is not None
        serve: Any = guarded.stream_stream if shape == "server stream" else guarded.stream_unary
        assert serve is not None
        with pytest.raises(_Aborted) as aborted:
            result = serve(requests(), _CallContext())
            if shape == "server stream":
                async for _ in result:
                    pass
            else:
                await result
        assert limiter.total == 1, "the refused call took no slot"
        return aborted.value

    with structlog.testing.capture_logs() as logs:
        error = asyncio.run(refused())
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "on this connection" in str(error)
    assert read == [], "nothing of a refused call is read"
    assert [(e["event"], e["code"]) for e in logs] == [("request_refused", "RESOURCE_EXHAUSTED")]


def test_count_fields_counts_a_batch_without_decoding_it() -> None:
    """What the gatekeeper counts a StreamBatchRequest's requests with:
    exact on valid protobuf (every wire type), stopping past the limit, None
    on bytes that are not protobuf (truncated, a bad wire type, field 0)."""
    put = kv_pb2.StreamRequest(id=300, put=kv_pb2.PutRequest(key="k", value=b"v" * 200))
    for n in (0, 1, 7, 1024):
        raw = kv_pb2.StreamBatchRequest(requests=[put] * n).SerializeToString()
        assert count_fields(raw, 1024) == n
    assert count_fields(b"\x0a\x00" * 5000, 1024) == 1025  # stops counting there
    # varint (id), fixed64, fixed32 and length-delimited fields all count one each
    assert count_fields(put.SerializeToString(), 10) == 2
    assert count_fields(b"\x09" + b"\x00" * 8 + b"\x15" + b"\x00" * 4, 10) == 2
    raw = kv_pb2.StreamBatchRequest(requests=[put]).SerializeToString()
    assert count_fields(raw[:-1], 1024) is None  # truncated
    assert count_fields(b"\x0b", 1024) is None  # wire type 3 (groups): not ours
    assert count_fields(b"\x02\x00", 1024) is None  # field number 0
    assert count_fields(b"\x0a\xff", 1024) is None  # a length that never ends


def test_an_unreadable_request_body_logs_no_traceback() -> None:
    """aiohttp's "Unhandled exception" for a body that did not decode (the
    client's error, answered 400) is dropped; its other records are kept."""
    from aiohttp.http_exceptions import ContentEncodingError
    from aiohttp.web_protocol import RequestPayloadError

    from ramraft.server.logs import drop_unreadable_bodies

    def record(name: str, error: BaseException) -> logging.LogRecord:
        return logging.LogRecord(
            name, logging.ERROR, __file__, 1, "Unhandled exception", (), (type(error), error, None)
        )

    broken = RequestPayloadError("Can not decode content-encoding: gzip")
    broken.__cause__ = ContentEncodingError("gzip")
    assert not drop_unreadable_bodies(record("aiohttp.server", broken))
    assert drop_unreadable_bodies(record("aiohttp.server", RuntimeError("a bug")))
    assert drop_unreadable_bodies(record("asyncio", broken))


def test_a_made_token_never_reads_as_an_option(monkeypatch: pytest.MonkeyPatch) -> None:
    """token_urlsafe starts one token in 64 with "-", which a command line
    then reads as an option (`--token -nB...`: CI's chaos run failed so):
    make_token draws again."""
    import secrets

    from ramraft.tools import tokens

    drawn = iter(["-nBMuOcFBORHxjAUFCYzx75M", "kQ3xYq9Lw0aZ"])
    monkeypatch.setattr(secrets, "token_urlsafe", lambda nbytes: next(drawn))
    assert tokens.make_token() == "kQ3xYq9Lw0aZ"

"""``ramraft chaos``: a recorded client workload against a cluster, and its verdict.

    ramraft chaos --endpoints HOST:PORT,... --duration 120 --history run.jsonl \\
        [--clients 4] [--keys 5]

While something else breaks the cluster (k8s/chaos.sh deleting pods, the
nemesis of tests/chaos), ``--clients`` concurrent clients, each with its own
session, run puts, linearizable gets, deletes and compare-and-swaps on a few
keys, and record every operation: its invocation and completion times
(CLOCK_MONOTONIC, seconds) and its outcome:

- ``ok``: the cluster answered;
- ``failed``: certainly not applied (a read that got no answer: reads change
  nothing; a write the cluster refused as invalid);
- ``unknown``: a write that got no answer (Unavailable, DeadlineExceeded...):
  it may have been applied, at any moment after its invocation, or never.

Every write stores a value no other write stores (``c<client>.<n>``), so a
read names the write it saw.

Key-value version 2 adds two kinds of clients (once the cluster runs it):
``--txn-clients`` move money between ``--accounts`` accounts with
transactions (read every account in one transaction, then a transfer that
checks both accounts' mod revisions), and ``--watchers`` watch the run's
whole prefix from its first revision, resuming on other nodes as nodes die.
Every answer records the revision it names; watchers record every event.

``--web URL,...`` adds clients of the nodes' web tiers (``--web-clients``,
one per URL by default), each staying on its node as behind a load
balancer: writes through a follower are forwarded to the leader, and the
run counts them from the nodes' /metrics (tools/chaos_web.py).

After ``--duration`` seconds the clients stop
(operations in flight finish within their deadline), a fresh client reads
every key linearizably (retrying up to ``--final-timeout``), and the history
is checked (tools/history.py):

1. linearizability (server.linearizability: Wing & Gong search with Lowe's
   memoization, key by key), over every operation including the final reads;
2. no lost acknowledged write: every write the cluster acknowledged is either
   what the final read of its key shows, or some other write of that key might
   have been ordered after it (one that was not finished before it started);
3. revisions follow real time, one per change; every audit sees the bank's
   total; every watcher's events are a gap-free, duplicate-free subsequence
   of the changes in revision order (tools/history.py has the details).

The history is JSON lines: a ``meta`` record, then one ``op`` record per
operation in completion order. ``ramraft chaos --check-only FILE`` re-checks
a recorded history.

Exit status: 0 the history is linearizable and no acknowledged write was
lost; 1 a violation (the summary shows the smallest failing sub-history);
2 bad usage; 3 no verdict (the final reads never succeeded, the check timed
out, or the history file could not be written or read).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import structlog

from ramraft.client import (
    LINEARIZABLE,
    SERIALIZABLE,
    AsyncClient,
    Compare,
    TLSOptions,
    TxnOp,
    WatchEvent,
    parse_endpoints,
)
from ramraft.client._core import session_expired
from ramraft.client.errors import FailedPrecondition, InvalidArgument, NotFound, RamraftError
from ramraft.tools.cli import tls_from_args, token_from_args
from ramraft.tools.history import (
    EXIT_NO_VERDICT,
    HISTORY_VERSION,
    KINDS,
    HistoryError,
    Record,
    Verdict,
    WatcherLog,
    check_history,
    load_history,
    load_watchers,
    value_bytes,
    value_text,
    watchers_from,
)

__all__ = ["DEFAULT_MIX", "WorkloadConfig", "register", "run_workload"]

log = structlog.get_logger("ramraft.chaos")

EXIT_USAGE: Final = 2
DEFAULT_MIX: Final = {"get": 4, "put": 3, "cas": 2, "delete": 1}
OP_KINDS: Final = ("get", "put", "cas", "delete")  # what --mix weighs
ACCOUNT_START: Final = 250  # each account's first balance
# Errors after which a write certainly did not take effect: the cluster
# validated the request and refused it before proposing it (SESSION_EXPIRED
# and STALE_SEQUENCE come as FailedPrecondition and say "not applied").
_DEFINITE_REFUSALS: Final = (InvalidArgument, NotFound, FailedPrecondition)


# -- the workload ------------------------------------------------------------------


@dataclass
class WorkloadConfig:
    endpoints: list[str]
    duration: float
    clients: int = 4
    keys: int = 5
    timeout: float = 5.0  # each operation's deadline, retries included
    attempt_timeout: float = 1.0  # one attempt (moves off a paused node)
    key_prefix: str = ""  # default: a random "chaos-<hex>/" per run
    seed: int | None = None
    think: float = 0.0  # pause between a client's operations, seconds
    final_timeout: float = 60.0  # how long to keep trying each final read
    mix: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MIX))
    # Key-value version 2: transaction clients and their accounts, watchers.
    txn_clients: int = 1
    accounts: int = 4
    watchers: int = 2
    # SERIALIZABLE reads may be stale: only for showing that the checker
    # catches stale reads.
    read_consistency: int = LINEARIZABLE
    # Credentials, as the cluster asks for them (k8s: TLS and a token).
    token: str | None = None
    tls: TLSOptions | None = None
    # Clients of the nodes' web tiers, each staying on one (tools/chaos_web.py).
    web: list[str] = field(default_factory=list)
    web_clients: int = 0

    def validate(self) -> None:
        # nan too (it passed `<= 0`: a run that never ends); inf is a run
        # until Ctrl-C, which then checks what was recorded.
        if not self.duration > 0:
            raise ValueError("--duration must be a positive number of seconds")
        if not 1 <= self.clients <= 256:
            raise ValueError("--clients must be between 1 and 256")
        if not 1 <= self.keys <= 10_000:
            raise ValueError("--keys must be between 1 and 10000")
        for name in ("timeout", "attempt_timeout", "final_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")
        if not 0 <= self.think < math.inf:
            raise ValueError("--think must not be negative")
        if set(self.mix) - set(OP_KINDS) or not sum(self.mix.values()) > 0:
            raise ValueError(f"--mix: weights for {', '.join(OP_KINDS)}, not all zero")
        if not 0 <= self.txn_clients <= 64 or not 0 <= self.watchers <= 64:
            raise ValueError("--txn-clients and --watchers must be between 0 and 64")
        if not 2 <= self.accounts <= 100:
            raise ValueError("--accounts must be between 2 and 100")
        if any(w < 0 for w in self.mix.values()):
            raise ValueError("--mix: weights must not be negative")
        if not 0 <= self.web_clients <= 64:
            raise ValueError("--web-clients must be between 0 and 64")
        if self.web_clients and not self.web:
            raise ValueError("--web-clients needs --web: the nodes' web tier URLs")


class _Recorder:
    """Appends op records to the history file, one line each, flushed."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._next = 0
        self.records: list[Record] = []
        self.lines: list[dict[str, Any]] = []

    def new_id(self) -> int:
        self._next += 1
        return self._next

    def meta(self, doc: dict[str, Any]) -> None:
        self._out.write(json.dumps({"type": "meta", "version": HISTORY_VERSION, **doc}) + "\n")
        self._out.flush()

    def done(self, rec: Record) -> None:
        self.records.append(rec)
        self._out.write(rec.to_json() + "\n")
        self._out.flush()

    def line(self, doc: dict[str, Any]) -> None:
        """A watcher's record (tools/history.py watchers_from)."""
        self.lines.append(doc)
        self._out.write(json.dumps(doc) + "\n")
        self._out.flush()


async def _run_op(client: AsyncClient, rec: Record, timeout: float, consistency: int) -> None:
    """Runs one operation and fills in the record's outcome."""
    try:
        if rec.kind == "get":
            g = await client.get_result(rec.key, consistency=consistency, timeout=timeout)
            rec.result = {"found": g.found, "value": value_text(g.value)}
            rec.index, rec.revision = g.index, g.revision or None
        elif rec.kind == "put":
            value = value_bytes(rec.value) or b""
            p = await client.put_result(rec.key, value, timeout=timeout)
            rec.result = {}
            rec.index, rec.revision = p.index, p.revision or None
        elif rec.kind == "delete":
            d = await client.delete_result(rec.key, timeout=timeout)
            rec.result = {"deleted": d.deleted}
            rec.index, rec.revision = d.index, d.revision or None
        elif rec.kind == "txn":
            await _run_txn(client, rec, timeout)
        else:
            c = await client.cas(
                rec.key, value_bytes(rec.expected), value_bytes(rec.value) or b"", timeout=timeout
            )
            rec.result = {"swapped": c.swapped, "found": c.found, "current": value_text(c.current)}
            rec.index, rec.revision = c.index, c.revision or None
        rec.outcome = "ok"
    except RamraftError as e:
        rec.error = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
        # A read that got no answer changed nothing; so did a refused write
        # -- but not one whose session the cluster forgot while the client
        # retried it (an earlier attempt may have been applied).
        refused = isinstance(e, _DEFINITE_REFUSALS) and not session_expired(e)
        rec.outcome = "failed" if not _writes(rec) or refused else "unknown"
    except (asyncio.CancelledError, Exception) as e:
        rec.error = f"{type(e).__name__}: {e}"
        rec.outcome = "unknown" if _writes(rec) else "failed"
        if isinstance(e, asyncio.CancelledError):
            raise
        log.warning("chaos_op_error", op=rec.op, kind=rec.kind, error=rec.error)
    finally:
        rec.complete = time.monotonic()


def _writes(rec: Record) -> bool:
    """Whether the operation may change the state: a put, CAS or delete, or
    a transaction with puts (a transfer or the setup; an audit only reads)."""
    return rec.is_write or bool(rec.written())


async def _run_txn(client: AsyncClient, rec: Record, timeout: float) -> None:
    """A transaction record: an audit (gets of every account), a transfer
    (puts of two accounts if their mod revisions are what the audit saw) or
    the setup (puts of every account)."""
    txn = rec.txn
    assert txn is not None
    if "audit" in txn:
        result = await client.txn(success=[TxnOp.get(k) for k in txn["audit"]], timeout=timeout)
        reads = {r.kv.key: value_text(r.kv.value) for r in result.responses if r.kv is not None}
        for key in txn["audit"]:
            reads.setdefault(key, None)
        rec.result = {"succeeded": result.succeeded, "reads": reads}
        rec.result["mods"] = {
            r.kv.key: r.kv.mod_revision for r in result.responses if r.kv is not None
        }
    else:
        puts = txn.get("setup") or txn["transfer"]
        compares = [Compare.mod_revision(k, "==", m) for k, m in txn.get("mods", {}).items()]
        result = await client.txn(
            compares,
            [TxnOp.put(k, value_bytes(v) or b"") for k, v in sorted(puts.items())],
            timeout=timeout,
        )
        rec.result = {"succeeded": result.succeeded}
    rec.index, rec.revision = result.index, result.revision or None


async def _txn_loop(
    cid: int,
    config: WorkloadConfig,
    accounts: list[str],
    recorder: _Recorder,
    stop: asyncio.Event,
    stop_at: float,
) -> None:
    """Transfers between accounts: audit, then a transfer checked against
    the mod revisions the audit saw (it fails when another moved first)."""
    rng = random.Random(None if config.seed is None else config.seed * 1000 + cid)
    n = 0
    async with AsyncClient(
        config.endpoints,
        timeout=config.timeout,
        attempt_timeout=config.attempt_timeout,
        rng=rng,
        token=config.token,
        tls=config.tls,
    ) as client:
        while not stop.is_set() and time.monotonic() < stop_at:
            n += 1
            audit = Record(
                op=recorder.new_id(),
                client=cid,
                kind="txn",
                key=accounts[0],
                invoke=time.monotonic(),
                txn={"audit": accounts},
            )
            await _run_op(client, audit, config.timeout, LINEARIZABLE)
            recorder.done(audit)
            if audit.outcome != "ok" or audit.result is None:
                continue
            reads, mods = audit.result["reads"], audit.result.pop("mods")
            a, b = rng.sample(accounts, 2)
            if reads.get(a) is None or reads.get(b) is None:
                continue
            have = int(reads[a].split(":", 1)[0])
            amount = rng.randint(0, have)
            other = int(reads[b].split(":", 1)[0])
            transfer = Record(
                op=recorder.new_id(),
                client=cid,
                kind="txn",
                key=a,
                invoke=time.monotonic(),
                txn={
                    "transfer": {
                        a: f"{have - amount}:t{cid}.{n}",
                        b: f"{other + amount}:t{cid}.{n}",
                    },
                    "mods": {a: mods[a], b: mods[b]},
                },
            )
            await _run_op(client, transfer, config.timeout, LINEARIZABLE)
            recorder.done(transfer)
            if config.think:
                await asyncio.sleep(config.think)


async def _watch_loop(
    wid: int,
    config: WorkloadConfig,
    prefix: str,
    start: int,
    recorder: _Recorder,
    done: asyncio.Event,
    reached: dict[int, int],
) -> None:
    """Records every event of the run's prefix from ``start`` on; it resumes
    on another node by itself (the client), and reports how far it got."""
    reached[wid] = start - 1
    recorder.line({"type": "watcher", "watcher": wid, "prefix": prefix, "start": start})
    error: str | None = None
    async with AsyncClient(
        config.endpoints,
        timeout=max(config.timeout, 30.0),
        attempt_timeout=config.attempt_timeout,
        token=config.token,
        tls=config.tls,
    ) as client:
        watch = client.watch(prefix, prefix=True, start_revision=start, progress=True)

        async def follow() -> None:
            async for item in watch:
                if isinstance(item, WatchEvent):
                    recorder.line(
                        {
                            "type": "event",
                            "watcher": wid,
                            "revision": item.revision,
                            "kind": item.type,
                            "key": item.key,
                            "value": value_text(item.value) if item.type == "PUT" else None,
                        }
                    )
                reached[wid] = max(reached[wid], item.revision)

        task = asyncio.create_task(follow())
        stopper = asyncio.create_task(done.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if task.done() and task.exception() is not None:
                error = f"{type(task.exception()).__name__}: {task.exception()}"
        finally:
            stopper.cancel()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            await watch.aclose()
    recorder.line(
        {
            "type": "watcher",
            "watcher": wid,
            "prefix": prefix,
            "start": start,
            "through": reached[wid],
            **({"error": error} if error else {}),
        }
    )


async def _revision_now(config: WorkloadConfig, key: str) -> int:
    """The cluster's revision (0 while it still runs key-value version 1),
    asked until the cluster answers or final_timeout passes."""
    give_up = time.monotonic() + config.final_timeout
    async with AsyncClient(
        config.endpoints,
        timeout=config.timeout,
        attempt_timeout=config.attempt_timeout,
        token=config.token,
        tls=config.tls,
    ) as client:
        while True:
            try:
                revision = (await client.get_result(key)).revision
            except RamraftError:
                revision = 0
            if revision or time.monotonic() > give_up:
                return revision
            await asyncio.sleep(0.5)


def _rng(config: WorkloadConfig, cid: int) -> random.Random:
    return random.Random(None if config.seed is None else config.seed * 1000 + cid)


@dataclass
class _Clients:
    """What every client of the key-value operations shares."""

    config: WorkloadConfig
    keys: list[str]
    recorder: _Recorder
    stop: asyncio.Event
    stop_at: float


async def _client_loop(cid: int, clients: _Clients) -> None:
    """A gRPC client (AsyncClient, all the endpoints) running operations."""
    config = clients.config
    rng = _rng(config, cid)
    async with AsyncClient(
        config.endpoints,
        timeout=config.timeout,
        attempt_timeout=config.attempt_timeout,
        rng=rng,
        token=config.token,
        tls=config.tls,
    ) as client:

        async def run(rec: Record) -> None:
            await _run_op(client, rec, config.timeout, config.read_consistency)

        await _operations(cid, clients, rng, run)


async def _operations(
    cid: int, clients: _Clients, rng: random.Random, run: Callable[[Record], Awaitable[None]]
) -> None:
    """One client's operations, one at a time, until stop or stop_at: the
    mix's kinds on random keys, each recorded once `run` has filled it in."""
    config, keys, recorder = clients.config, clients.keys, clients.recorder
    stop, stop_at = clients.stop, clients.stop_at
    kinds = [k for k in KINDS if config.mix.get(k, 0) > 0]
    weights = [config.mix[k] for k in kinds]
    seen: dict[str, str | None] = {}  # the last value this client saw per key
    n = 0
    while not stop.is_set() and time.monotonic() < stop_at:
        key = rng.choice(keys)
        kind = rng.choices(kinds, weights)[0]
        n += 1
        rec = Record(op=recorder.new_id(), client=cid, kind=kind, key=key, invoke=time.monotonic())
        if kind in ("put", "cas"):
            rec.value = f"c{cid}.{n}"
        if kind == "cas":
            # The last value seen makes a swap likely; absent now and then.
            rec.expected = seen.get(key) if rng.random() < 0.9 else None
        await run(rec)
        recorder.done(rec)
        if rec.outcome == "ok" and rec.result is not None:
            if kind == "get":
                seen[key] = rec.result["value"] if rec.result["found"] else None
            elif kind == "put" or (kind == "cas" and rec.result["swapped"]):
                seen[key] = rec.value
            elif kind == "cas":
                seen[key] = rec.result["current"] if rec.result["found"] else None
            elif kind == "delete":
                seen[key] = None
        if config.think:
            await asyncio.sleep(config.think)


async def _final_reads(
    config: WorkloadConfig, keys: list[str], recorder: _Recorder, client_id: int
) -> None:
    """A linearizable read of every key, retried until it succeeds or
    final_timeout passes."""
    async with AsyncClient(
        config.endpoints,
        timeout=config.timeout,
        attempt_timeout=config.attempt_timeout,
        token=config.token,
        tls=config.tls,
    ) as client:
        for key in keys:
            give_up = time.monotonic() + config.final_timeout
            while True:
                rec = Record(
                    op=recorder.new_id(),
                    client=client_id,
                    kind="get",
                    key=key,
                    invoke=time.monotonic(),
                    final=True,
                )
                await _run_op(client, rec, config.timeout, LINEARIZABLE)
                recorder.done(rec)
                if rec.outcome == "ok" or time.monotonic() > give_up:
                    break
                log.info("chaos_final_read_retry", key=key, error=rec.error)
                await asyncio.sleep(0.5)


@dataclass
class Workload:
    """What a run recorded (also in the history file)."""

    records: list[Record]
    watchers: list[WatcherLog]
    bank_total: int | None
    web: dict[str, Any] = field(default_factory=dict)  # the web clients' counts


async def run_workload(
    config: WorkloadConfig, history: IO[str], stop: asyncio.Event | None = None
) -> Workload:
    """Runs the workload and the final reads, writing the history to
    ``history``; returns what it recorded. ``stop`` ends the workload early."""
    config.validate()
    stop = stop or asyncio.Event()
    prefix = config.key_prefix or f"chaos-{secrets.token_hex(4)}/"
    keys = [f"{prefix}k{i}" for i in range(config.keys)]
    recorder = _Recorder(history)
    started_mono, started_wall = time.monotonic(), time.time()
    wants_v2 = bool(config.txn_clients or config.watchers)
    first_web = config.clients + 1 + config.txn_clients  # after the transaction clients
    web_ids = range(first_web, first_web + config.web_clients)
    # Transactions and watches need key-value version 2 (revisions), which
    # the cluster switches to once every node runs a release that has it.
    revision = await _revision_now(config, f"{prefix}probe") if wants_v2 else 0
    accounts = [f"{prefix}bank/{i}" for i in range(config.accounts)] if revision else []
    bank_total = ACCOUNT_START * len(accounts) if accounts else None
    recorder.meta(
        {
            "endpoints": config.endpoints,
            "clients": config.clients,
            "keys": keys,
            "duration": config.duration,
            "timeout": config.timeout,
            "attempt_timeout": config.attempt_timeout,
            "seed": config.seed,
            "read_consistency": "linearizable"
            if config.read_consistency == LINEARIZABLE
            else "serializable",
            "clock": "CLOCK_MONOTONIC",
            "started_monotonic": started_mono,
            "started_unix": started_wall,
            "accounts": accounts,
            "bank_total": bank_total,
            "revisions": bool(revision),
            "web": config.web,
            "web_clients": list(web_ids),
        }
    )
    log.info("chaos_workload_started", clients=config.clients, keys=keys, duration=config.duration)
    stop_at = started_mono + config.duration
    clients = _Clients(config, keys, recorder, stop, stop_at)
    loops: list[Awaitable[object]] = [_client_loop(cid, clients) for cid in range(config.clients)]
    watching = asyncio.Event()
    reached: dict[int, int] = {}
    watchers: list[asyncio.Task[None]] = []
    if accounts:
        setup = Record(
            op=recorder.new_id(),
            client=config.clients,
            kind="txn",
            key=accounts[0],
            invoke=time.monotonic(),
            txn={"setup": {a: f"{ACCOUNT_START}:setup" for a in accounts}},
        )
        async with AsyncClient(
            config.endpoints, timeout=config.final_timeout, token=config.token, tls=config.tls
        ) as client:
            await _run_op(client, setup, config.final_timeout, LINEARIZABLE)
        recorder.done(setup)
        if setup.outcome != "ok":
            raise RamraftError(f"the accounts could not be set up: {setup.error}")
        start = setup.revision or revision
        watchers = [
            asyncio.create_task(_watch_loop(w, config, prefix, start, recorder, watching, reached))
            for w in range(config.watchers)
        ]
        loops += [
            _txn_loop(config.clients + 1 + t, config, accounts, recorder, stop, stop_at)
            for t in range(config.txn_clients)
        ]
    web: asyncio.Task[dict[str, Any]] | None = None
    if config.web_clients:
        from ramraft.tools.chaos_web import run_web_clients  # aiohttp: only when asked

        web = asyncio.create_task(
            run_web_clients(
                config.web,
                config.web_clients,
                first_web,
                lambda cid, run: _operations(cid, clients, _rng(config, cid), run),
                timeout=config.timeout,
                tls=config.tls,
                token=config.token,
                serializable=config.read_consistency == SERIALIZABLE,
            )
        )
        loops.append(web)
    await asyncio.gather(*loops)
    log.info("chaos_workload_done", operations=len(recorder.records))
    await _final_reads(config, keys + accounts, recorder, client_id=config.clients)
    if watchers:
        # Every watcher must reach the last revision the final reads saw
        # (or end with an error: then it is checked as far as it got).
        final = max((r.revision or 0) for r in recorder.records if r.final)
        give_up = time.monotonic() + config.final_timeout
        while time.monotonic() < give_up and any(
            reached.get(w, 0) < final and not t.done() for w, t in enumerate(watchers)
        ):
            await asyncio.sleep(0.2)
        watching.set()
        await asyncio.gather(*watchers, return_exceptions=True)
    web_summary: dict[str, Any] = {}
    if web is not None:
        mine = [r for r in recorder.records if r.client in web_ids]
        web_summary = {
            **web.result(),
            "ok": sum(r.outcome == "ok" for r in mine),
            "ok_writes": sum(r.outcome == "ok" and _writes(r) for r in mine),
            "operations": len(mine),
        }
    return Workload(recorder.records, watchers_from(recorder.lines), bank_total, web_summary)


# -- the command -----------------------------------------------------------------------


def _mix(text: str) -> dict[str, int]:
    """``get=4,put=3,cas=2,delete=1``."""
    mix: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, sep, weight = part.partition("=")
        if not sep or kind not in OP_KINDS or not weight.isdigit():
            raise argparse.ArgumentTypeError(f"{part!r} is not KIND=WEIGHT ({'/'.join(OP_KINDS)})")
        mix[kind] = int(weight)
    return mix


def register(sub: Any) -> None:
    from ramraft.tools.cli import add_client_options

    p = sub.add_parser(
        "chaos",
        help="run a recorded workload and check it (linearizability, lost writes)",
        description=(
            "Run concurrent clients against the cluster for --duration seconds, record every "
            "operation to --history, read every key at the end, then check the history for "
            "linearizability and lost acknowledged writes. Run it while something breaks the "
            "cluster (k8s/chaos.sh, tests/chaos)."
        ),
        epilog=(
            "exit status: 0 pass; 1 violation (not linearizable, or an acknowledged write "
            "lost); 2 bad usage; 3 no verdict (final reads failed, check timed out, history "
            "unreadable).\n"
            "example: ramraft chaos --endpoints ramraft.default.svc:7000 --duration 300 "
            "--history run.jsonl"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_client_options(p)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of workload (60)")
    p.add_argument("--history", help="where to write the history (JSON lines; required)")
    p.add_argument("--clients", type=int, default=4, help="concurrent clients (4)")
    p.add_argument("--keys", type=int, default=5, help="how many keys they share (5)")
    p.add_argument(
        "--attempt-timeout",
        type=float,
        default=1.0,
        help="longest single attempt before trying another node (1 s)",
    )
    p.add_argument("--key-prefix", default="", help="key prefix (default: random per run)")
    p.add_argument("--seed", type=int, default=None, help="seed the clients' choices")
    p.add_argument(
        "--think", type=float, default=0.0, help="pause between a client's operations (s)"
    )
    p.add_argument(
        "--mix",
        type=_mix,
        default=dict(DEFAULT_MIX),
        help="operation weights (get=4,put=3,cas=2,delete=1)",
    )
    p.add_argument(
        "--txn-clients",
        type=int,
        default=1,
        help="clients moving money between accounts with transactions (1; 0: none)",
    )
    p.add_argument("--accounts", type=int, default=4, help="their accounts (4)")
    p.add_argument(
        "--watchers", type=int, default=2, help="watchers of the run's prefix (2; 0: none)"
    )
    p.add_argument(
        "--final-timeout",
        type=float,
        default=60.0,
        help="how long to keep retrying each final read (60 s)",
    )
    p.add_argument(
        "--check-timeout",
        type=float,
        default=600.0,
        help="give up the linearizability search after this long (600 s)",
    )
    p.add_argument(
        "--serializable-reads",
        action="store_true",
        help="read at SERIALIZABLE (may be stale): to see the checker catch stale reads",
    )
    p.add_argument(
        "--web",
        metavar="URL,...",
        help=(
            "also run clients of these web tiers (https://HOST:8080,...), each staying on one "
            "node as behind a load balancer: writes through a follower are forwarded"
        ),
    )
    p.add_argument(
        "--web-clients",
        type=int,
        default=None,
        help="how many web clients, spread over the --web URLs in turn (one per URL)",
    )
    p.add_argument(
        "--check-only",
        metavar="FILE",
        help="do not run a workload: check the history in FILE",
    )
    p.add_argument("--log-level", default=os.environ.get("RAMRAFT_LOG_LEVEL", "warning"))
    p.set_defaults(func=run_chaos)


def _print(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _emit(verdict: Verdict, as_json: bool, header: dict[str, Any]) -> int:
    if as_json:
        _print(json.dumps({**header, **verdict.summary()}))
    else:
        web = header.get("web")
        if web:
            _print(
                f"web clients: {web['clients']} on {len(web['urls'])} nodes, "
                f"{web['operations']} operations ({web['ok']} ok, {web['ok_writes']} writes "
                f"acknowledged); the nodes forwarded {web['forwarded_writes']} writes"
            )
        _print(verdict.report())
        _print("summary: " + json.dumps({**header, **verdict.summary()}))
    return verdict.exit_code


class _Usage(Exception):
    """Bad command-line input (exit status 2)."""


def _endpoints(args: argparse.Namespace) -> list[str]:
    # As the client subcommands read them (client.cli): flag, env, default.
    from ramraft.tools.cli import DEFAULT_ENDPOINTS

    raw = getattr(args, "endpoints", None) or os.environ.get("RAMRAFT_ENDPOINTS")
    try:
        return parse_endpoints(raw or DEFAULT_ENDPOINTS)
    except ValueError as e:
        raise _Usage(f"--endpoints: {e}") from None


def _timeout(args: argparse.Namespace) -> float:
    raw: Any = getattr(args, "timeout", None) or os.environ.get("RAMRAFT_TIMEOUT") or 5.0
    try:
        value = float(raw)
    except ValueError:
        raise _Usage(f"--timeout: not a number: {raw!r}") from None
    if not value > 0:
        raise _Usage("--timeout must be positive")
    return value


def _credential(read: Any, args: argparse.Namespace) -> Any:
    """--token/--token-file and --tls-* as the other client commands read
    them, their errors reported as this command's usage errors."""
    try:
        return read(args)
    except Exception as e:
        if type(e).__name__ == "UsageError":
            raise _Usage(str(e)) from None
        raise


def run_chaos(args: argparse.Namespace) -> int:
    try:
        return _run_chaos(args)
    except _Usage as e:
        # Reported here, not raised: under `python -m ramraft.tools.cli` the
        # CLI's own UsageError class is a different object from
        # ramraft.tools.cli's.
        sys.stderr.write(f"ramraft chaos: error: {e}\n")
        return EXIT_USAGE


def _run_chaos(args: argparse.Namespace) -> int:
    from ramraft.server.logs import configure_logging

    configure_logging(args.log_level)
    as_json = bool(getattr(args, "json", False))
    if args.check_only:
        try:
            meta, records = load_history(args.check_only)
            watchers = load_watchers(args.check_only)
        except HistoryError as e:
            sys.stderr.write(f"ramraft chaos: {e}\n")
            return EXIT_NO_VERDICT
        verdict = check_history(
            records,
            timeout=args.check_timeout,
            watchers=watchers,
            bank_total=meta.get("bank_total"),
        )
        return _emit(verdict, as_json, {"history": args.check_only, "keys_meta": meta.get("keys")})
    if not args.history:
        raise _Usage("--history FILE is required (or --check-only FILE)")
    try:
        from ramraft.tools.chaos_web import parse_web_urls

        web_urls = parse_web_urls(args.web) if args.web else []
    except ValueError as e:
        raise _Usage(f"--web: {e}") from None
    config = WorkloadConfig(
        endpoints=_endpoints(args),
        duration=args.duration,
        clients=args.clients,
        keys=args.keys,
        timeout=_timeout(args),
        attempt_timeout=args.attempt_timeout,
        key_prefix=args.key_prefix,
        seed=args.seed,
        think=args.think,
        final_timeout=args.final_timeout,
        mix=args.mix,
        txn_clients=args.txn_clients,
        accounts=args.accounts,
        watchers=args.watchers,
        read_consistency=SERIALIZABLE if args.serializable_reads else LINEARIZABLE,
        token=_credential(token_from_args, args),
        tls=_credential(tls_from_args, args),
        web=web_urls,
        web_clients=len(web_urls) if args.web_clients is None else args.web_clients,
    )
    try:
        config.validate()
    except ValueError as e:
        raise _Usage(str(e)) from None
    try:
        history = open(args.history, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as e:
        sys.stderr.write(f"ramraft chaos: cannot write {args.history}: {e.strerror or e}\n")
        return EXIT_NO_VERDICT

    async def main() -> Workload:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        return await run_workload(config, history, stop)

    started = time.monotonic()
    try:
        workload = asyncio.run(main())
    except OSError as e:
        sys.stderr.write(f"ramraft chaos: writing {args.history}: {e.strerror or e}\n")
        return EXIT_NO_VERDICT
    except RamraftError as e:
        sys.stderr.write(f"ramraft chaos: {e}\n")
        return EXIT_NO_VERDICT
    finally:
        history.close()
    ran = time.monotonic() - started
    verdict = check_history(
        workload.records,
        timeout=args.check_timeout,
        watchers=workload.watchers,
        bank_total=workload.bank_total,
    )
    header = {
        "history": str(Path(args.history)),
        "clients": config.clients,
        "seconds": round(ran, 1),
        **({"web": workload.web} if workload.web else {}),
    }
    return _emit(verdict, as_json, header)

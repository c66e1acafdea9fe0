"""Histories of client operations and their verdict (for ``ramraft chaos``).

A history is JSON lines: a ``meta`` record, then one ``op`` record per
operation (see :class:`Record`). :func:`check_history` judges it:

1. linearizability (server.linearizability: Wing & Gong search with Lowe's
   memoization, key by key), over every operation including the final reads;
   a transaction counts as the puts and gets it made, each on its key (its
   atomicity is checked by 4);
2. no lost acknowledged write: every write the cluster acknowledged is either
   what the final read of its key shows, or some other write of that key might
   have been ordered after it (one that was not finished before it started);
3. revisions (key-value version 2): every acknowledged change has a revision
   of its own (a transaction's changes share theirs), and revisions follow
   real time: an operation that finished before another began has a smaller
   revision (not larger, for reads);
4. transactions: every audit (a transaction reading every account) sees the
   bank's total, whatever transfers ran;
5. watches: every watcher's events are a gap-free, duplicate-free
   subsequence of the history of changes in revision order -- revisions
   strictly increasing, each revision's changes exactly those of the write
   that made it (the same for every watcher), every acknowledged change of a
   watched key between the watcher's start and the revision it reached
   delivered, and no change that no write made.

Outcomes: ``ok`` (answered), ``failed`` (certainly not applied: a read without
an answer, a write the cluster refused) and ``unknown`` (a write without an
answer: applied at some moment after its invocation, or never).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import Any, Final

from ramraft.tools.linearizability import CheckTimeoutError, Operation, check

__all__ = [
    "EXIT_NO_VERDICT",
    "EXIT_PASS",
    "EXIT_VIOLATION",
    "KINDS",
    "WRITE_KINDS",
    "HistoryError",
    "LostWrite",
    "Record",
    "Verdict",
    "WatcherLog",
    "WritePause",
    "check_history",
    "check_revisions",
    "check_transfers",
    "check_watches",
    "find_lost_writes",
    "load_history",
    "load_watchers",
    "longest_write_pause",
    "to_operations",
    "value_bytes",
    "value_text",
    "watchers_from",
]

EXIT_PASS: Final = 0
EXIT_VIOLATION: Final = 1
EXIT_NO_VERDICT: Final = 3

KINDS: Final = ("get", "put", "cas", "delete", "txn")
WRITE_KINDS: Final = frozenset({"put", "cas", "delete"})
HISTORY_VERSION: Final = 1


class HistoryError(ValueError):
    """A history file that cannot be read (not JSON lines, missing fields)."""


# -- records -------------------------------------------------------------------


@dataclass(slots=True)
class Record:
    """One operation, as recorded. Values are the UTF-8 text of the bytes."""

    op: int
    client: int
    kind: str  # get | put | cas | delete
    key: str
    invoke: float  # CLOCK_MONOTONIC seconds
    complete: float | None = None  # when the answer (or the give-up) came
    outcome: str = "unknown"  # ok | failed | unknown
    value: str | None = None  # put / cas: the value written
    expected: str | None = None  # cas: the expected value (None: "absent")
    # ok results: get {"found", "value"}, put {}, delete {"deleted"},
    # cas {"swapped", "found", "current"} (current: the value *before*).
    result: dict[str, Any] | None = None
    index: int | None = None  # the log index the answer names
    error: str | None = None
    final: bool = False  # one of the final reads
    revision: int | None = None  # the revision the answer names (key-value version 2)
    # A transaction: {"setup": {key: value}}, {"audit": [key, ...]} or
    # {"transfer": {key: value, key: value}} (the values it puts); its ok
    # result is {"succeeded", "reads": {key: value | None}}.
    txn: dict[str, Any] | None = None

    def to_json(self) -> str:
        doc = {"type": "op", **asdict(self)}
        return json.dumps({k: v for k, v in doc.items() if v is not None and v is not False})

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Record:
        try:
            rec = cls(
                op=int(doc["op"]),
                client=int(doc["client"]),
                kind=str(doc["kind"]),
                key=str(doc["key"]),
                invoke=float(doc["invoke"]),
                complete=None if doc.get("complete") is None else float(doc["complete"]),
                outcome=str(doc.get("outcome", "unknown")),
                value=doc.get("value"),
                expected=doc.get("expected"),
                result=doc.get("result"),
                index=doc.get("index"),
                error=doc.get("error"),
                final=bool(doc.get("final", False)),
                revision=doc.get("revision"),
                txn=doc.get("txn"),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise HistoryError(f"bad op record {doc!r}: {e}") from None
        if rec.kind not in KINDS:
            raise HistoryError(f"op {rec.op}: unknown kind {rec.kind!r}")
        if rec.outcome not in ("ok", "failed", "unknown"):
            raise HistoryError(f"op {rec.op}: unknown outcome {rec.outcome!r}")
        if rec.outcome == "ok" and (rec.result is None or rec.complete is None):
            raise HistoryError(f"op {rec.op}: ok without a result or completion time")
        return rec

    @property
    def is_write(self) -> bool:
        return self.kind in WRITE_KINDS

    def changes(self) -> dict[str, str | None] | None:
        """What an ok write changed: key -> the value it left (None: deleted);
        None when it changed nothing."""
        if self.outcome != "ok" or self.result is None:
            return None
        if self.kind == "txn":
            assert self.txn is not None
            if not self.result.get("succeeded"):
                return None
            puts = self.txn.get("setup") or self.txn.get("transfer")
            return dict(puts) if puts else None
        if not self.is_write:
            return None
        changed, left = self.effect()
        return {self.key: left} if changed else None

    def written(self) -> dict[str, str | None]:
        """Every change this write may make, whatever its outcome."""
        if self.kind == "txn":
            assert self.txn is not None
            return dict(self.txn.get("setup") or self.txn.get("transfer") or {})
        if self.kind in ("put", "cas"):
            return {self.key: self.value}
        if self.kind == "delete":
            return {self.key: None}
        return {}

    def effect(self) -> tuple[bool, str | None]:
        """(whether it changed the key, the value it left: None = absent), for
        an ok write."""
        assert self.result is not None
        if self.kind == "put":
            return True, self.value
        if self.kind == "delete":
            return bool(self.result.get("deleted")), None
        return bool(self.result.get("swapped")), self.value


def value_bytes(text: str | None) -> bytes | None:
    """A recorded value as the bytes the cluster stores."""
    return None if text is None else text.encode()


def value_text(data: bytes | None) -> str | None:
    """Bytes from the cluster as a recorded value."""
    return None if data is None else data.decode("utf-8", errors="backslashreplace")


def to_operations(records: Iterable[Record]) -> list[Operation]:
    """The checker's view: failed operations took no effect and are left out;
    unknown ones have no return time."""
    ops: list[Operation] = []
    for r in records:
        if r.outcome == "failed":
            continue
        if r.kind == "txn":
            ops += _txn_operations(r)
            continue
        ret = r.complete if r.outcome == "ok" else None
        out: Any = None
        if r.outcome == "ok":
            assert r.result is not None
            if r.kind == "get":
                found = bool(r.result["found"])
                value = value_bytes(r.result.get("value")) if found else None
                out = (found, value if value is not None else b"")
            elif r.kind == "delete":
                out = bool(r.result["deleted"])
            elif r.kind == "cas":
                swapped = bool(r.result["swapped"])
                # The API reports the value before the request; the checker
                # wants the value after it.
                after = (
                    value_bytes(r.value)
                    if swapped
                    else (value_bytes(r.result.get("current")) or b"")
                )
                out = (swapped, bool(r.result["found"]), after)
        ops.append(
            Operation(
                client=r.client,
                call=r.invoke,
                ret=ret,
                kind=r.kind,
                key=r.key,
                value=value_bytes(r.value),
                expected=value_bytes(r.expected),
                output=out,
            )
        )
    return ops


def _txn_operations(r: Record) -> list[Operation]:
    """A transaction as the per-key operations it made: its puts (outcome
    unknown when the transaction's is), and its reads."""
    assert r.txn is not None
    ops: list[Operation] = []
    ret = r.complete if r.outcome == "ok" else None
    puts = r.txn.get("setup") or r.txn.get("transfer")
    if puts and (r.outcome != "ok" or (r.result or {}).get("succeeded")):
        for key, value in sorted(puts.items()):
            ops.append(Operation(r.client, r.invoke, ret, "put", key, value=value_bytes(value)))
    if r.outcome == "ok" and r.result is not None:
        for key, value in sorted((r.result.get("reads") or {}).items()):
            found = value is not None
            out = (found, value_bytes(value) if found else b"")
            ops.append(Operation(r.client, r.invoke, ret, "get", key, output=out))
    return ops


# -- revisions, transactions, watches (key-value version 2) --------------------------


@dataclass
class WatcherLog:
    """What one watcher received: its events (revision, "PUT"|"DELETE", key,
    value) in the order they came, from ``start`` on, and the revision up to
    which it had received everything (``through``: its last event or
    progress notification)."""

    watcher: int
    prefix: str
    start: int
    events: list[tuple[int, str, str, str | None]] = field(default_factory=list)
    through: int = 0
    error: str | None = None


def _checked_writes(records: Sequence[Record]) -> list[Record]:
    return [r for r in records if r.outcome == "ok" and r.revision]


def check_revisions(records: Sequence[Record]) -> list[str]:
    """Problems with the revisions the answers named (see the module
    docstring, 3)."""
    problems: list[str] = []
    owner: dict[int, Record] = {}
    for r in _checked_writes(records):
        if r.changes() is None or r.revision is None:
            continue
        other = owner.get(r.revision)
        if other is not None:
            problems.append(
                f"ops {other.op} and {r.op} both changed something at revision {r.revision}"
            )
        owner[r.revision] = r
    # Real time: x finished before y began => rev(x) <= rev(y), and < when y
    # is a change. A sweep over completion times keeps the largest revision
    # finished so far.
    timed = [r for r in _checked_writes(records) if r.complete is not None]
    by_complete = sorted(timed, key=lambda r: r.complete or 0.0)
    by_invoke = sorted(timed, key=lambda r: r.invoke)
    best: Record | None = None
    i = 0
    for y in by_invoke:
        while i < len(by_complete) and (by_complete[i].complete or 0.0) < y.invoke:
            x = by_complete[i]
            if best is None or (x.revision or 0) > (best.revision or 0):
                best = x
            i += 1
        if best is None or y.revision is None or best.revision is None:
            continue
        change = y.changes() is not None
        if best.revision > y.revision or (change and best.revision == y.revision):
            problems.append(
                f"op {y.op} (revision {y.revision}) began after op {best.op} (revision "
                f"{best.revision}) had finished, yet its revision is not later"
            )
        if len(problems) > 50:
            break
    return problems


def _balance(value: str | None) -> int:
    return int((value or "0").split(":", 1)[0])


def check_transfers(records: Sequence[Record], total: int | None) -> list[str]:
    """Every audit sees the bank's total (see the module docstring, 4)."""
    if total is None:
        return []
    problems = []
    for r in records:
        if r.kind != "txn" or r.outcome != "ok" or r.txn is None or "audit" not in r.txn:
            continue
        reads = (r.result or {}).get("reads") or {}
        if len(reads) != len(r.txn["audit"]):
            problems.append(f"op {r.op}: the audit read {len(reads)} of the accounts")
            continue
        seen = sum(_balance(v) for v in reads.values())
        if seen != total:
            problems.append(f"op {r.op}: an audit at revision {r.revision} saw a total of {seen}")
    return problems


def check_watches(records: Sequence[Record], watchers: Sequence[WatcherLog]) -> list[str]:
    """Problems with the watchers' event streams (see the module docstring, 5)."""
    problems: list[str] = []
    acked: dict[int, dict[str, str | None]] = {}
    for r in records:
        changes = r.changes()
        if changes is not None and r.revision:
            acked[r.revision] = changes
    # What a write whose outcome is unknown may have done.
    maybe: dict[str, set[str | None]] = defaultdict(set)
    for r in records:
        if r.outcome == "unknown":
            for key, value in r.written().items():
                maybe[key].add(value)
    seen_at: dict[int, tuple[int, dict[str, str | None]]] = {}
    for w in watchers:
        groups: list[tuple[int, dict[str, str | None]]] = []
        for revision, kind, key, value in w.events:
            if groups and groups[-1][0] == revision:
                if key in groups[-1][1]:
                    problems.append(f"watcher {w.watcher}: key {key!r} twice at {revision}")
                groups[-1][1][key] = value if kind == "PUT" else None
                continue
            if groups and revision <= groups[-1][0]:
                problems.append(
                    f"watcher {w.watcher}: revision {revision} after {groups[-1][0]} "
                    "(out of order, or a repeat)"
                )
            if revision < w.start:
                problems.append(f"watcher {w.watcher}: revision {revision} before its start")
            groups.append((revision, {key: value if kind == "PUT" else None}))
        got = dict(groups)
        for revision, changes in groups:
            expected = acked.get(revision)
            if expected is not None:
                mine = {k: v for k, v in expected.items() if k.startswith(w.prefix)}
                if changes != mine:
                    problems.append(
                        f"watcher {w.watcher}: revision {revision} shows {changes}, "
                        f"the write that made it {mine}"
                    )
            else:
                for key, value in changes.items():
                    if value not in maybe.get(key, set()):
                        problems.append(
                            f"watcher {w.watcher}: revision {revision} shows {key!r} = "
                            f"{value!r}, which no write made"
                        )
            before = seen_at.get(revision)
            if before is None:
                seen_at[revision] = (w.watcher, changes)
            elif before[1] != changes:
                problems.append(
                    f"watchers {before[0]} and {w.watcher} disagree on revision {revision}"
                )
        through = max(w.through, groups[-1][0] if groups else 0)
        for revision, changes in sorted(acked.items()):
            if not w.start <= revision <= through:
                continue
            if any(k.startswith(w.prefix) for k in changes) and revision not in got:
                problems.append(
                    f"watcher {w.watcher}: no event for revision {revision} ({changes}), "
                    f"though it received everything from {w.start} to {through}"
                )
        if len(problems) > 50:
            break
    return problems


# -- the verdict -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LostWrite:
    record: Record
    final_value: str | None  # what the final read showed (None: absent)

    def describe(self) -> str:
        r = self.record
        what = {"put": f"put {r.value!r}", "cas": f"cas -> {r.value!r}", "delete": "delete"}[r.kind]
        final = "absent" if self.final_value is None else repr(self.final_value)
        return (
            f"op {r.op} (client {r.client}): {what} on {r.key!r} acknowledged at "
            f"{r.complete:.3f} (index {r.index}), no later write, but the final read shows {final}"
        )


def find_lost_writes(records: Sequence[Record]) -> tuple[list[LostWrite], list[str]]:
    """Acknowledged writes that neither the final read of their key shows nor
    any other write of that key may have overwritten. Returns (lost, keys
    without a successful final read)."""
    final: dict[str, str | None] = {}
    for r in records:
        if r.final and r.outcome == "ok" and r.result is not None:
            final[r.key] = r.result.get("value") if r.result.get("found") else None
    by_key: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        if r.is_write and not r.final:
            by_key[r.key].append(r)
    lost: list[LostWrite] = []
    unchecked = sorted(k for k in by_key if k not in final)
    for key, writes in by_key.items():
        if key not in final:
            continue
        # Writes that may change the key, with the latest time they can have
        # taken effect (inf: unknown outcome).
        changers: list[tuple[Record, float]] = []
        for w in writes:
            if w.outcome == "failed":
                continue
            if w.outcome == "ok" and not w.effect()[0]:
                continue  # a cas that did not swap, a delete of nothing
            end = w.complete if w.outcome == "ok" and w.complete is not None else math.inf
            changers.append((w, end))
        for w, _ in changers:
            if w.outcome != "ok":
                continue
            left = w.effect()[1]
            if left == final[key]:
                continue
            assert w.complete is not None
            # Another write may come after w unless it finished before w began.
            overwritten = any(other is not w and end >= w.invoke for other, end in changers)
            if not overwritten:
                lost.append(LostWrite(w, final[key]))
    return lost, unchecked


@dataclass(frozen=True, slots=True)
class WritePause:
    """The longest time no write completed successfully."""

    seconds: float
    start: float
    end: float


def longest_write_pause(
    records: Iterable[Record], start: float | None = None, end: float | None = None
) -> WritePause:
    """The longest gap between consecutive acknowledged writes (by completion
    time) within [start, end] (default: the first and last operation)."""
    ops = [r for r in records if not r.final]
    times = sorted(r.complete for r in ops if r.is_write and r.outcome == "ok" and r.complete)
    lo = start if start is not None else min((r.invoke for r in ops), default=0.0)
    hi = end if end is not None else max((r.complete or r.invoke for r in ops), default=lo)
    points = [lo, *(t for t in times if lo < t < hi), hi]
    best = WritePause(0.0, lo, lo)
    for a, b in pairwise(points):
        if b - a > best.seconds:
            best = WritePause(b - a, a, b)
    return best


@dataclass
class Verdict:
    operations: int
    outcomes: dict[str, int]  # ok / failed / unknown, workload operations only
    by_kind: dict[str, dict[str, int]]
    final_reads: int  # keys read at the end
    keys: int
    linearizable: bool | None  # None: undecided (timeout)
    explanation: str
    lost: list[LostWrite]
    unchecked_keys: list[str]
    check_seconds: float
    write_latency: dict[str, float] = field(default_factory=dict)
    longest_write_pause: float = 0.0
    revision_problems: list[str] = field(default_factory=list)
    transfer_problems: list[str] = field(default_factory=list)
    watch_problems: list[str] = field(default_factory=list)
    watchers: int = 0
    watch_events: int = 0

    @property
    def problems(self) -> list[str]:
        return self.revision_problems + self.transfer_problems + self.watch_problems

    @property
    def unanswered(self) -> bool:
        """No final read succeeded: the cluster did not answer at the end
        (perhaps never: a run against the wrong endpoints records nothing
        but failures), and such a history proves nothing."""
        return self.keys > 0 and self.final_reads == 0

    @property
    def passed(self) -> bool:
        return (
            self.linearizable is True
            and not self.lost
            and not self.unchecked_keys
            and not self.problems
            and not self.unanswered
        )

    @property
    def exit_code(self) -> int:
        if self.linearizable is False or self.lost or self.problems:
            return EXIT_VIOLATION
        if self.linearizable is None or self.unchecked_keys or self.unanswered:
            return EXIT_NO_VERDICT
        return EXIT_PASS

    def summary(self) -> dict[str, Any]:
        return {
            "operations": self.operations,
            "outcomes": self.outcomes,
            "by_kind": self.by_kind,
            "keys": self.keys,
            "final_reads": self.final_reads,
            "linearizable": self.linearizable,
            "violations": (0 if self.linearizable else 1) + len(self.lost),
            "lost_writes": len(self.lost),
            "unchecked_keys": self.unchecked_keys,
            "check_seconds": round(self.check_seconds, 3),
            "write_latency": self.write_latency,
            "longest_write_pause": round(self.longest_write_pause, 3),
            "revision_problems": len(self.revision_problems),
            "transfer_problems": len(self.transfer_problems),
            "watchers": self.watchers,
            "watch_events": self.watch_events,
            "watch_problems": len(self.watch_problems),
            "passed": self.passed,
            **({"problems": self.problems[:20]} if self.problems else {}),
            **({"explanation": self.explanation} if self.linearizable is not True else {}),
            **({"lost": [lw.describe() for lw in self.lost[:20]]} if self.lost else {}),
        }

    def report(self) -> str:
        o = self.outcomes
        lines = [
            f"operations: {self.operations} (ok {o.get('ok', 0)}, failed {o.get('failed', 0)}, "
            f"unknown {o.get('unknown', 0)}) on {self.keys} keys",
        ]
        for kind in KINDS:
            c = self.by_kind.get(kind, {})
            lines.append(
                f"  {kind:<6} ok {c.get('ok', 0):>6}  failed {c.get('failed', 0):>5}  "
                f"unknown {c.get('unknown', 0):>5}"
            )
        if self.write_latency:
            wl = self.write_latency
            lines.append(
                f"write latency (ok): p50 {wl['p50'] * 1000:.1f} ms, p99 {wl['p99'] * 1000:.1f} ms,"
                f" max {wl['max'] * 1000:.1f} ms; longest write pause "
                f"{self.longest_write_pause:.3f} s"
            )
        lines.append(f"final reads: {self.final_reads} of {self.keys} keys")
        if self.unchecked_keys:
            lines.append(f"  no final read for: {', '.join(self.unchecked_keys)}")
        if self.unanswered:
            lines.append("  no final read succeeded: the cluster did not answer")
        lin = {True: "yes", False: "NO", None: "undecided"}[self.linearizable]
        lines.append(f"linearizable: {lin} (checked in {self.check_seconds:.1f} s)")
        if self.linearizable is not True:
            lines.append(self.explanation)
        lines.append(f"lost acknowledged writes: {len(self.lost)}")
        lines.extend("  " + lw.describe() for lw in self.lost[:20])
        lines.append(
            f"revisions: {len(self.revision_problems)} problems; transactions: "
            f"{len(self.transfer_problems)} problems; watchers: {self.watchers} "
            f"({self.watch_events} events), {len(self.watch_problems)} problems"
        )
        lines.extend("  " + p for p in self.problems[:20])
        verdict = {EXIT_PASS: "PASS", EXIT_VIOLATION: "FAIL", EXIT_NO_VERDICT: "NO VERDICT"}
        lines.append(f"verdict: {verdict[self.exit_code]}")
        return "\n".join(lines)


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[i]


def check_history(
    records: Sequence[Record],
    *,
    timeout: float = 600.0,
    watchers: Sequence[WatcherLog] = (),
    bank_total: int | None = None,
) -> Verdict:
    """Checks a recorded history: linearizability, lost writes, revisions,
    transactions and watches (see the module docstring)."""
    work = [r for r in records if not r.final]
    outcomes = Counter(r.outcome for r in work)
    by_kind: dict[str, dict[str, int]] = {
        k: dict(Counter(r.outcome for r in work if r.kind == k)) for k in KINDS
    }
    started = time.monotonic()
    try:
        result = check(to_operations(records), timeout=timeout)
        linearizable: bool | None = result.ok
        explanation = result.explanation
    except CheckTimeoutError as e:
        linearizable, explanation = None, f"the check timed out after {timeout:g} s: {e}"
    check_seconds = time.monotonic() - started
    lost, unchecked = find_lost_writes(records)
    latencies = sorted(
        r.complete - r.invoke
        for r in work
        if r.is_write and r.outcome == "ok" and r.complete is not None
    )
    latency = (
        {
            "p50": round(_percentile(latencies, 0.5), 4),
            "p99": round(_percentile(latencies, 0.99), 4),
            "max": round(latencies[-1], 4),
        }
        if latencies
        else {}
    )
    keys = {r.key for r in records}
    return Verdict(
        operations=len(work),
        outcomes={k: outcomes.get(k, 0) for k in ("ok", "failed", "unknown")},
        by_kind=by_kind,
        final_reads=len({r.key for r in records if r.final and r.outcome == "ok"}),
        keys=len(keys),
        linearizable=linearizable,
        explanation=explanation,
        lost=lost,
        unchecked_keys=unchecked,
        check_seconds=check_seconds,
        write_latency=latency,
        longest_write_pause=longest_write_pause(work).seconds if work else 0.0,
        revision_problems=check_revisions(records),
        transfer_problems=check_transfers(records, bank_total),
        watch_problems=check_watches(records, watchers),
        watchers=len(watchers),
        watch_events=sum(len(w.events) for w in watchers),
    )


def watchers_from(docs: Iterable[dict[str, Any]]) -> list[WatcherLog]:
    """The watchers that ``watcher`` records (start and end) and ``event``
    records describe, in the order written."""
    logs: dict[int, WatcherLog] = {}
    for doc in docs:
        kind = doc.get("type")
        try:
            if kind == "watcher":
                n = int(doc["watcher"])
                log = logs.setdefault(n, WatcherLog(n, str(doc["prefix"]), 0))
                log.prefix, log.start = str(doc["prefix"]), int(doc["start"])
                log.through = max(log.through, int(doc.get("through", 0)))
                log.error = doc.get("error") or log.error
            elif kind == "event":
                n = int(doc["watcher"])
                log = logs.setdefault(n, WatcherLog(n, "", 0))
                event = (int(doc["revision"]), str(doc["kind"]), str(doc["key"]))
                log.events.append((*event, doc.get("value")))
        except (KeyError, TypeError, ValueError) as e:
            raise HistoryError(f"bad {kind} record {doc!r}: {e}") from None
    return [logs[n] for n in sorted(logs)]


def load_watchers(path: str | os.PathLike[str]) -> list[WatcherLog]:
    """The watchers of a history file (see :func:`watchers_from`)."""
    docs: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue  # load_history says what is wrong with the file
                if isinstance(doc, dict) and doc.get("type") in ("watcher", "event"):
                    docs.append(doc)
    except OSError as e:
        raise HistoryError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise HistoryError(f"{path}: not a history (not UTF-8 text)") from None
    return watchers_from(docs)


def load_history(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[Record]]:
    """(the meta record, the op records) of a history file."""
    meta: dict[str, Any] = {}
    records: list[Record] = []
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)
                except ValueError as e:
                    # A torn last line (the workload was killed mid-write) is dropped.
                    if not line.endswith("\n"):
                        break
                    raise HistoryError(f"{path}:{n}: not JSON: {e}") from None
                if not isinstance(doc, dict):
                    raise HistoryError(f"{path}:{n}: not a JSON object")
                if doc.get("type") == "meta":
                    meta = doc
                elif doc.get("type") == "op":
                    records.append(Record.from_dict(doc))
    except OSError as e:
        raise HistoryError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise HistoryError(f"{path}: not a history (not UTF-8 text)") from None
    return meta, records

"""Histories of client operations and their verdict (for ``ramraft chaos``).

A history is JSON lines: a ``meta`` record, then one ``op`` record per
operation (see :class:`Record`). :func:`check_history` judges it:

1. linearizability (server.linearizability: Wing & Gong search with Lowe's
   memoization, key by key), over every operation including the final reads;
2. no lost acknowledged write: every write the cluster acknowledged is either
   what the final read of its key shows, or some other write of that key might
   have been ordered after it (one that was not finished before it started).

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
    "WritePause",
    "check_history",
    "find_lost_writes",
    "load_history",
    "longest_write_pause",
    "to_operations",
    "value_bytes",
    "value_text",
]

EXIT_PASS: Final = 0
EXIT_VIOLATION: Final = 1
EXIT_NO_VERDICT: Final = 3

KINDS: Final = ("get", "put", "cas", "delete")
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

    @property
    def passed(self) -> bool:
        return self.linearizable is True and not self.lost and not self.unchecked_keys

    @property
    def exit_code(self) -> int:
        if self.linearizable is False or self.lost:
            return EXIT_VIOLATION
        if self.linearizable is None or self.unchecked_keys:
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
            "passed": self.passed,
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
        lin = {True: "yes", False: "NO", None: "undecided"}[self.linearizable]
        lines.append(f"linearizable: {lin} (checked in {self.check_seconds:.1f} s)")
        if self.linearizable is not True:
            lines.append(self.explanation)
        lines.append(f"lost acknowledged writes: {len(self.lost)}")
        lines.extend("  " + lw.describe() for lw in self.lost[:20])
        verdict = {EXIT_PASS: "PASS", EXIT_VIOLATION: "FAIL", EXIT_NO_VERDICT: "NO VERDICT"}
        lines.append(f"verdict: {verdict[self.exit_code]}")
        return "\n".join(lines)


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[i]


def check_history(records: Sequence[Record], *, timeout: float = 600.0) -> Verdict:
    """Checks a recorded history: linearizability, then lost writes."""
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
    )


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
    return meta, records

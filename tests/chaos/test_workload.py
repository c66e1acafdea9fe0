"""`ramraft chaos` (tools/chaos.py, tools/history.py): its verdict on hand-made histories, the
history file, the command line, and a short run against real nodes on
loopback (no root needed)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from ramraft.client._core import SESSION_EXPIRED
from ramraft.client.errors import DeadlineExceeded, FailedPrecondition, Unavailable
from ramraft.tools.chaos import WorkloadConfig, _emit, _run_op
from ramraft.tools.history import (
    EXIT_NO_VERDICT,
    EXIT_PASS,
    EXIT_VIOLATION,
    HistoryError,
    Record,
    WatcherLog,
    check_history,
    check_revisions,
    check_transfers,
    check_watches,
    find_lost_writes,
    load_history,
    longest_write_pause,
    to_operations,
)
from tests.server.procs import ProcessCluster

REPO = Path(__file__).resolve().parents[2]

_ids = iter(range(1, 1_000_000))


def op(
    kind: str,
    invoke: float,
    complete: float | None,
    *,
    key: str = "k",
    value: str | None = None,
    expected: str | None = None,
    outcome: str = "ok",
    result: dict[str, object] | None = None,
    client: int = 0,
    final: bool = False,
) -> Record:
    if result is None and outcome == "ok":
        defaults: dict[str, dict[str, object]] = {"put": {}, "delete": {"deleted": True}}
        result = defaults.get(kind, {})
    return Record(
        op=next(_ids),
        client=client,
        kind=kind,
        key=key,
        invoke=invoke,
        complete=complete,
        outcome=outcome,
        value=value,
        expected=expected,
        result=result,
        final=final,
    )


def read(invoke: float, complete: float, value: str | None, **kw: object) -> Record:
    found = value is not None
    return op("get", invoke, complete, result={"found": found, "value": value}, **kw)  # type: ignore[arg-type]


def cas_result(swapped: bool, found: bool, current: str | None) -> dict[str, object]:
    return {"swapped": swapped, "found": found, "current": current}


OP_PREFIX = '{"type": "op", "op": 1, "client": 0, "key": "k", '


def final(at: float, value: str | None, key: str = "k") -> Record:
    return read(at, at + 0.1, value, key=key, client=99, final=True)


# -- the verdict ------------------------------------------------------------------


def test_a_clean_history_passes() -> None:
    h = [
        op("put", 0, 1, value="a", client=1),
        read(2, 3, "a", client=2),
        op("cas", 4, 5, value="b", expected="a", result=cas_result(True, True, "a")),
        op("delete", 6, 7, result={"deleted": True}),
        op("put", 8, 9, value="c"),
        final(10, "c"),
    ]
    v = check_history(h)
    assert v.passed and v.exit_code == EXIT_PASS, v.report()
    assert v.operations == 5 and v.outcomes == {"ok": 5, "failed": 0, "unknown": 0}
    assert v.final_reads == 1


def test_a_stale_read_is_a_violation() -> None:
    h = [
        op("put", 0, 1, value="a"),
        op("put", 2, 3, value="b"),
        read(4, 5, "a", client=1),  # b was acknowledged before this read began
        final(6, "b"),
    ]
    v = check_history(h)
    assert v.linearizable is False and v.exit_code == EXIT_VIOLATION
    assert "not linearizable" in v.report() and "FAIL" in v.report()


def test_a_lost_acknowledged_write_is_found() -> None:
    h = [op("put", 0, 1, value="a"), op("put", 2, 3, value="b"), final(5, "a")]
    lost, unchecked = find_lost_writes(h)
    assert [lw.record.value for lw in lost] == ["b"] and not unchecked
    v = check_history(h)
    assert v.exit_code == EXIT_VIOLATION and len(v.lost) == 1
    assert "no later write, but the final read shows 'a'" in v.report()


def test_a_write_that_may_have_been_overwritten_is_not_lost() -> None:
    # An unknown write invoked before b returned may come after it; so may a
    # concurrent ok write; a write that finished before b began may not.
    for other in (
        op("put", 2.5, None, value="c", outcome="unknown", client=1),
        op("put", 2.5, 4, value="c", client=1),
        op("delete", 2.5, 4, client=1),
    ):
        h = [op("put", 2, 3, value="b"), other, final(5, None if other.kind == "delete" else "c")]
        assert find_lost_writes(h) == ([], []), other
    h = [op("put", 0, 1, value="c", client=1), op("put", 2, 3, value="b"), final(5, "c")]
    assert len(find_lost_writes(h)[0]) == 1
    # A cas that did not swap and a delete of nothing change nothing.
    h = [
        op("put", 2, 3, value="b"),
        op("cas", 2.5, 4, value="x", expected="zz", result=cas_result(False, True, "b")),
        op("delete", 2.5, 4, result={"deleted": False}, key="other"),
        final(5, "x"),
    ]
    assert len(find_lost_writes(h)[0]) == 1


def test_a_lost_delete_is_found() -> None:
    h = [op("put", 0, 1, value="a"), op("delete", 2, 3), final(5, "a")]
    assert [lw.record.kind for lw in find_lost_writes(h)[0]] == ["delete"]


def test_no_final_read_means_no_verdict() -> None:
    h = [op("put", 0, 1, value="a"), op("get", 2, 3, outcome="failed", final=True, result=None)]
    v = check_history(h)
    assert v.unchecked_keys == ["k"] and v.exit_code == EXIT_NO_VERDICT


def test_a_cluster_that_never_answered_is_no_verdict() -> None:
    """Wrong endpoints: every operation failed, and so did every final read;
    nothing was checked, which is no pass."""
    h = [
        op("get", 0, 1, outcome="failed", result=None),
        op("get", 2, 3, outcome="failed", final=True, result=None),
    ]
    v = check_history(h)
    assert not v.passed and v.exit_code == EXIT_NO_VERDICT, v.report()
    assert "the cluster did not answer" in v.report() and "NO VERDICT" in v.report()


def test_unknown_writes_may_or_may_not_have_happened() -> None:
    for seen in ("a", "b"):
        h = [
            op("put", 0, 1, value="a"),
            op("put", 2, None, value="b", outcome="unknown"),
            read(3, 4, seen, client=1),
            final(5, seen),
        ]
        assert check_history(h).passed, seen


def test_failed_operations_took_no_effect() -> None:
    h = [
        op("put", 0, 1, value="a"),
        op("put", 2, 3, value="b", outcome="failed", result=None),  # refused as invalid
        op("get", 2, 3, outcome="failed", result=None, client=1),
        final(5, "b"),
    ]
    assert check_history(h).linearizable is False  # b cannot be there
    assert len(to_operations(h)) == 2


def test_cas_reports_the_value_before_and_the_checker_gets_the_value_after() -> None:
    swap = op("cas", 2, 3, value="b", expected="a", result=cas_result(True, True, "a"))
    (converted,) = to_operations([swap])
    assert converted.output == (True, True, b"b")
    miss = op("cas", 2, 3, value="c", expected="x", result=cas_result(False, True, "a"))
    assert to_operations([miss])[0].output == (False, True, b"a")
    h = [op("put", 0, 1, value="a"), swap, read(4, 5, "b", client=1), final(6, "b")]
    assert check_history(h).passed


def test_longest_write_pause() -> None:
    h = [
        op("put", 0, 0.1, value="a"),
        op("put", 0.2, 0.3, value="b"),
        op("put", 0.3, 2.3, value="c"),  # nothing acknowledged for 2 s
        op("get", 2.3, 2.4, result={"found": True, "value": "c"}),
        op("put", 2.4, 2.5, value="d"),
    ]
    p = longest_write_pause(h)
    assert round(p.seconds, 6) == 2.0 and (p.start, p.end) == (0.3, 2.3)
    assert round(longest_write_pause(h, 2.35, 3.0).seconds, 6) == 0.5


# -- the history file ---------------------------------------------------------------


def test_history_file_round_trip_and_a_torn_tail(tmp_path: Path) -> None:
    recs = [op("put", 0, 1, value="a"), read(2, 3, "a"), final(4, "a")]
    path = tmp_path / "h.jsonl"
    lines = [json.dumps({"type": "meta", "keys": ["k"]}), *(r.to_json() for r in recs)]
    path.write_text("\n".join(lines) + "\n" + '{"type": "op", "op": 9, "cli')
    meta, loaded = load_history(path)
    assert meta["keys"] == ["k"]
    assert loaded == recs


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json\n", "not JSON"),
        ('{"type": "op", "op": 1}\n', "bad op record"),
        (OP_PREFIX + '"kind": "incr", "invoke": 0}\n', "unknown kind"),
        (OP_PREFIX + '"kind": "put", "invoke": 0, "outcome": "ok"}\n', "ok without a result"),
        ("[1]\n", "not a JSON object"),
    ],
)
def test_bad_history_files_are_refused_clearly(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "h.jsonl"
    path.write_text(text)
    with pytest.raises(HistoryError, match=message):
        load_history(path)
    with pytest.raises(HistoryError, match="cannot read"):
        load_history(tmp_path / "missing.jsonl")


# -- the command line -------------------------------------------------------------------


def ramraft(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ramraft", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


def test_check_only_judges_a_recorded_history(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    stale = [op("put", 0, 1, value="a"), op("put", 2, 3, value="b"), read(4, 5, "a"), final(6, "b")]
    path.write_text("".join(r.to_json() + "\n" for r in stale))
    r = ramraft("chaos", "--check-only", str(path))
    assert r.returncode == EXIT_VIOLATION, r.stdout + r.stderr
    assert "linearizable: NO" in r.stdout and "verdict: FAIL" in r.stdout
    path.write_text("".join(r.to_json() + "\n" for r in stale[:2] + stale[3:]))
    r = ramraft("chaos", "--check-only", str(path), "--json")
    assert r.returncode == EXIT_PASS, r.stdout + r.stderr
    assert json.loads(r.stdout)["passed"] is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "--history FILE is required"),
        (("--history", "h", "--clients", "0"), "--clients"),
        (("--history", "h", "--mix", "incr=3"), "not KIND=WEIGHT"),
        (("--history", "h", "--duration", "-1"), "--duration"),
        (("--history", "h", "--endpoints", "nohost"), "expected HOST:PORT"),
        (("--history", "h", "--web", "host:8080"), "--web: 'host:8080' is not an http://"),
        (("--history", "h", "--web-clients", "2"), "--web-clients needs --web"),
        (("--history", "h", "--web", "http://h:1", "--web-clients", "65"), "between 0 and 64"),
    ],
)
def test_usage_errors(args: tuple[str, ...], message: str) -> None:
    r = ramraft("chaos", *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_the_text_report_names_the_web_clients(capsys: pytest.CaptureFixture[str]) -> None:
    verdict = check_history([op("put", 0, 1, value="a"), final(2, "a")])
    web = {"urls": ["http://a:1", "http://b:1"], "clients": 4, "operations": 10, "ok": 9}
    _emit(verdict, False, {"web": {**web, "ok_writes": 5, "forwarded_writes": 3}})
    out = capsys.readouterr().out
    assert (
        "web clients: 4 on 2 nodes, 10 operations (9 ok, 5 writes acknowledged); "
        "the nodes forwarded 3 writes"
    ) in out
    assert "verdict: PASS" in out


def test_check_only_of_a_missing_file_has_no_verdict(tmp_path: Path) -> None:
    r = ramraft("chaos", "--check-only", str(tmp_path / "nope.jsonl"))
    assert r.returncode == EXIT_NO_VERDICT and "cannot read" in r.stderr


@pytest.mark.parametrize("field", ["duration", "think"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_a_duration_or_think_time_that_is_no_number_of_seconds_is_refused(
    field: str, value: float
) -> None:
    """`--duration nan` passed `duration <= 0` and ran until killed."""
    config = WorkloadConfig(endpoints=["127.0.0.1:1"], duration=1.0)
    setattr(config, field, value)
    if (field, value) == ("duration", float("inf")):
        config.validate()  # until Ctrl-C
        return
    with pytest.raises(ValueError, match=f"--{field} must"):
        config.validate()


def test_check_only_of_a_file_that_is_no_history_has_no_verdict(tmp_path: Path) -> None:
    binary = tmp_path / "cluster.backup"
    binary.write_bytes(b"RAMRAFT-BACKUP\x00\xff\xfe\x80 not text\n")
    bad_watcher = tmp_path / "h.jsonl"
    bad_watcher.write_text('{"type": "meta"}\n{"type": "watcher"}\n')
    for path, problem in ((binary, "not a history"), (bad_watcher, "bad watcher record")):
        r = ramraft("chaos", "--check-only", str(path))
        assert r.returncode == EXIT_NO_VERDICT, r.stderr
        assert r.stderr.startswith("ramraft chaos: ") and problem in r.stderr, r.stderr
        assert "internal error" not in r.stderr and r.stderr.count("\n") == 1, r.stderr


# -- revisions, transactions, watches ------------------------------------------------------


def rev(record: Record, revision: int) -> Record:
    record.revision = revision
    return record


def txn(
    invoke: float,
    complete: float | None,
    revision: int | None,
    *,
    setup: dict[str, str] | None = None,
    transfer: dict[str, str] | None = None,
    audit: dict[str, str | None] | None = None,
    succeeded: bool = True,
    outcome: str = "ok",
) -> Record:
    body: dict[str, object] = (
        {"setup": setup}
        if setup
        else {"transfer": transfer}
        if transfer
        else {"audit": sorted(audit or {})}
    )
    result = {"succeeded": succeeded, **({"reads": audit} if audit else {})}
    return Record(
        op=next(_ids),
        client=5,
        kind="txn",
        key="a",
        invoke=invoke,
        complete=complete,
        outcome=outcome,
        result=result if outcome == "ok" else None,
        revision=revision,
        txn=body,
    )


def bank_history() -> list[Record]:
    return [
        txn(0, 1, 10, setup={"a": "50:s", "b": "50:s"}),
        rev(op("put", 1.5, 2, key="k", value="v1"), 11),
        txn(3, 4, 12, transfer={"a": "30:t1", "b": "70:t1"}),
        txn(4.5, 5, 12, audit={"a": "30:t1", "b": "70:t1"}),
        txn(6, None, None, transfer={"a": "0:t2", "b": "100:t2"}, outcome="unknown"),
        rev(op("delete", 7, 8, key="k", result={"deleted": True}), 14),
        rev(final(20, None, key="k"), 14),
        rev(final(21, "0:t2", key="a"), 14),
        rev(final(22, "100:t2", key="b"), 14),
    ]


def watcher(events: list[tuple[int, str, str, str | None]], through: int = 14) -> WatcherLog:
    return WatcherLog(0, "", 10, events, through)


CLEAN_EVENTS = [
    (10, "PUT", "a", "50:s"),
    (10, "PUT", "b", "50:s"),
    (11, "PUT", "k", "v1"),
    (12, "PUT", "a", "30:t1"),
    (12, "PUT", "b", "70:t1"),
    (13, "PUT", "a", "0:t2"),  # the unknown transfer: it was applied
    (13, "PUT", "b", "100:t2"),
    (14, "DELETE", "k", None),
]


def test_a_clean_history_with_transactions_and_watchers_passes() -> None:
    h = bank_history()
    v = check_history(h, watchers=[watcher(CLEAN_EVENTS)], bank_total=100)
    assert v.passed, v.report()
    assert v.watchers == 1 and v.watch_events == 8
    assert v.by_kind["txn"] == {"ok": 3, "unknown": 1}


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda e: [x for x in e if x[0] != 11], "no event for revision 11"),
        (lambda e: e[:3] + e[2:], "'k' twice at 11"),
        (lambda e: [*e[:5], e[2], *e[5:]], "revision 11 after 12"),
        (lambda e: [e[2], *e[:2], *e[3:]], "after 11"),
        (lambda e: [*e[:4], *e[5:]], "shows"),  # half a transaction
        (lambda e: [*e, (15, "PUT", "k", "never-written")], "which no write made"),
        (lambda e: [(r, k, key, "other" if r == 11 else v) for r, k, key, v in e], "shows"),
    ],
    ids=[
        "gap",
        "repeat",
        "repeat later",
        "out of order",
        "torn transaction",
        "phantom",
        "wrong value",
    ],
)
def test_a_broken_watcher_stream_is_a_violation(damage: object, words: str) -> None:
    events = damage(list(CLEAN_EVENTS))  # type: ignore[operator]
    problems = check_watches(bank_history(), [watcher(events)])
    assert any(words in p for p in problems), problems
    v = check_history(bank_history(), watchers=[watcher(events)], bank_total=100)
    assert not v.passed and v.exit_code == EXIT_VIOLATION


def test_watchers_must_agree() -> None:
    other = [(r, k, key, "0:x" if r == 13 and key == "a" else v) for r, k, key, v in CLEAN_EVENTS]
    unknown = txn(6.5, None, None, transfer={"a": "0:x", "b": "100:t2"}, outcome="unknown")
    problems = check_watches([*bank_history(), unknown], [watcher(CLEAN_EVENTS), watcher(other)])
    assert any("disagree on revision 13" in p for p in problems), problems


def test_a_watcher_is_held_only_to_what_it_reached() -> None:
    """A watcher that stopped at revision 12 (its node died, the run ended)
    is not blamed for 13 and 14."""
    assert check_watches(bank_history(), [watcher(CLEAN_EVENTS[:5], through=12)]) == []


def test_revisions_must_follow_real_time_and_be_unique() -> None:
    assert check_revisions(bank_history()) == []
    late = [*bank_history(), rev(op("put", 30, 31, key="k", value="v9"), 13)]
    assert any("not later" in p for p in check_revisions(late))
    twice = [*bank_history(), rev(op("put", 30, 31, key="k", value="v9"), 11)]
    assert any("both changed something at revision 11" in p for p in check_revisions(twice))
    stale_read = [*bank_history(), rev(read(30, 31, None, key="k"), 12)]
    assert any("not later" in p for p in check_revisions(stale_read))


def test_an_audit_that_sees_a_torn_transfer_is_a_violation() -> None:
    torn = txn(4.5, 5, 12, audit={"a": "30:t1", "b": "50:s"})
    h = [*bank_history(), torn]
    assert any("total of 80" in p for p in check_transfers(h, 100))
    # The per-key check sees it too: b was 70 before the audit began.
    assert check_history(h, bank_total=100).linearizable is False


# -- against real nodes ---------------------------------------------------------------------


def test_workload_against_nodes_on_loopback_with_a_leader_kill(tmp_path: Path) -> None:
    """A short run while the leader is SIGKILLed and restarted: linearizable,
    nothing lost, every key read at the end; the history is complete. Two
    web clients stay on each node's web tier: four write through followers,
    two at a time through each one's forward stream."""
    history = tmp_path / "history.jsonl"
    with ProcessCluster(tmp_path / "nodes", nodes=3, http=True) as cluster:
        cluster.wait_for_leader()
        web = ",".join(f"http://{cluster.http[i]}" for i in cluster.ids)
        cmd = [
            sys.executable, "-m", "ramraft", "chaos",
            "--endpoints", cluster.endpoints(),
            "--duration", "8", "--history", str(history),
            "--clients", "3", "--keys", "3", "--seed", "7", "--json",
            "--web", web, "--web-clients", "6",
        ]  # fmt: skip
        workload = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
        killed: list[str] = []

        def nemesis() -> None:
            time.sleep(2.5)
            leader = cluster.wait_for_leader()
            cluster.kill(leader, signal.SIGKILL)
            killed.append(leader)
            time.sleep(2)
            cluster.start(leader)

        t = threading.Thread(target=nemesis)
        t.start()
        out, _ = workload.communicate(timeout=300)
        t.join()
    assert killed
    summary = json.loads(out)
    assert workload.returncode == 0, out
    assert summary["passed"] and summary["linearizable"] and summary["lost_writes"] == 0
    # The transaction client and the two watchers ran, and were checked.
    assert summary["by_kind"]["txn"].get("ok", 0) > 0
    assert summary["watchers"] == 2 and summary["watch_events"] > 0
    assert summary["watch_problems"] == summary["revision_problems"] == 0
    assert summary["transfer_problems"] == 0
    assert summary["final_reads"] == summary["keys"] == 3 + 4  # the keys and the accounts
    meta, records = load_history(history)
    assert meta["clients"] == 3 and len(meta["keys"]) == 3 and len(meta["accounts"]) == 4
    assert len([r for r in records if not r.final]) == summary["operations"] > 0
    finals = {r.key for r in records if r.final and r.outcome == "ok"}
    assert finals == set(meta["keys"]) | set(meta["accounts"])
    # Every write stores a value of its own.
    values = [r.value for r in records if r.kind in ("put", "cas")]
    assert len(values) == len(set(values))
    # The web clients (ids after the transaction client) ran every kind on
    # the same keys, and the followers forwarded their writes.
    assert meta["web_clients"] == [5, 6, 7, 8, 9, 10]
    web_ops = [r for r in records if r.client in meta["web_clients"]]
    assert {r.kind for r in web_ops if r.outcome == "ok"} == {"get", "put", "cas", "delete"}
    assert summary["web"]["ok_writes"] > 0 and summary["web"]["forwarded_writes"] > 0, summary


class _FailingClient:
    """Stands for AsyncClient: every call raises ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __getattr__(self, name: str) -> Any:
        async def call(*args: Any, **kwargs: Any) -> Any:
            raise self.error

        return call


@pytest.mark.parametrize(
    "error",
    [
        Unavailable("Txn: no node answered"),
        DeadlineExceeded("Txn: deadline"),
        FailedPrecondition(
            "Txn: the cluster forgot this client's session while the write was being retried",
            code=grpc.StatusCode.FAILED_PRECONDITION,
            details=f"{SESSION_EXPIRED}: session 7 expired",
            attempts=2,
        ),
    ],
    ids=["unavailable", "deadline", "session forgotten on a retry"],
)
def test_a_transfer_without_a_definite_answer_is_unknown_not_failed(error: Exception) -> None:
    """A transfer whose answer was lost may have been applied: recorded as
    "failed", the checker would call its effects (seen by reads and
    watchers) writes nobody made. An audit that failed changed nothing."""
    transfer = Record(
        op=1, client=5, kind="txn", key="b/0", invoke=1.0,
        txn={"transfer": {"b/0": "49:t5.165", "b/3": "53:t5.165"}, "mods": {"b/0": 3, "b/3": 4}},
    )  # fmt: skip
    audit = Record(op=2, client=5, kind="txn", key="b/0", invoke=1.0, txn={"audit": ["b/0"]})
    asyncio.run(_run_op(_FailingClient(error), transfer, 1.0, 0))  # type: ignore[arg-type]
    asyncio.run(_run_op(_FailingClient(error), audit, 1.0, 0))  # type: ignore[arg-type]
    assert (transfer.outcome, audit.outcome) == ("unknown", "failed")
    refused = FailedPrecondition("Txn: refused", code=grpc.StatusCode.FAILED_PRECONDITION)
    asyncio.run(_run_op(_FailingClient(refused), transfer, 1.0, 0))  # type: ignore[arg-type]
    assert transfer.outcome == "failed"  # a definite refusal: not applied

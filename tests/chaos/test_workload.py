"""`ramraft chaos` (tools/chaos.py, tools/history.py): its verdict on hand-made histories, the
history file, the command line, and a short run against real nodes on
loopback (no root needed)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ramraft.tools.history import (
    EXIT_NO_VERDICT,
    EXIT_PASS,
    EXIT_VIOLATION,
    HistoryError,
    Record,
    check_history,
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
    ],
)
def test_usage_errors(args: tuple[str, ...], message: str) -> None:
    r = ramraft("chaos", *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_check_only_of_a_missing_file_has_no_verdict(tmp_path: Path) -> None:
    r = ramraft("chaos", "--check-only", str(tmp_path / "nope.jsonl"))
    assert r.returncode == EXIT_NO_VERDICT and "cannot read" in r.stderr


# -- against real nodes ---------------------------------------------------------------------


def test_workload_against_nodes_on_loopback_with_a_leader_kill(tmp_path: Path) -> None:
    """A short run while the leader is SIGKILLed and restarted: linearizable,
    nothing lost, every key read at the end; the history is complete."""
    history = tmp_path / "history.jsonl"
    with ProcessCluster(tmp_path / "nodes", nodes=3) as cluster:
        cluster.wait_for_leader()
        cmd = [
            sys.executable, "-m", "ramraft", "chaos",
            "--endpoints", cluster.endpoints(),
            "--duration", "8", "--history", str(history),
            "--clients", "3", "--keys", "3", "--seed", "7", "--json",
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
    assert summary["final_reads"] == summary["keys"] == 3
    meta, records = load_history(history)
    assert meta["clients"] == 3 and len(meta["keys"]) == 3
    assert len([r for r in records if not r.final]) == summary["operations"] > 0
    assert {r.key for r in records if r.final and r.outcome == "ok"} == set(meta["keys"])
    # Every write stores a value of its own.
    values = [r.value for r in records if r.kind in ("put", "cas")]
    assert len(values) == len(set(values))

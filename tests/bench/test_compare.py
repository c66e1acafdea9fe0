"""``python -m bench.compare``: the table and its ratios from known results,
its one-line errors, a tiny offline run of the ramraft-only sections, and
(marked ``peers``, only where ``--install`` put etcd and PySyncObj in the
cache) a tiny run against the peers. No speed is asserted: the real run is
a benchmark."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import compare, peer_etcd, peer_pysyncobj
from tests.needs import not_installed

REPO = Path(__file__).resolve().parents[2]


def _row(driver: str, mode: str, level: int, rate: float, **extra: Any) -> dict[str, Any]:
    return {
        "driver": driver,
        "client": driver,
        "mode": mode,
        "in_flight": level,
        "ops_per_s": rate,
        "p50_ms": 1000 / rate,
        "cores": {"leader": 0.97, "client1": 0.3},
        **extra,
    }


def test_the_table_puts_each_figure_beside_its_peer() -> None:
    results = {
        "started": "now",
        "load_average_before": (0.5, 0.5, 0.5),
        "load_average_after": (0.7, 0.5, 0.5),
        "value_bytes": 100,
        "duration_s": 5,
        "etcd_version": "3.5.1",
        "pysyncobj_version": "0.3.17",
        "etcd": [_row("etcd", "write", 64, 5000.0), _row("etcd blocking", "write", 64, 2500.0)],
        "ramraft": [
            _row("AsyncClient stream", "write", 64, 6000.0),
            _row("AsyncClient unary", "write", 64, 1000.0, contaminated=True),
            _row("raw unary stubs", "write", 64, 1100.0),
            _row("raw KV.Stream", "write", 64, 7000.0),
            _row("Client stream", "write", 64, 5500.0),
        ],
        "reads": [
            _row("AsyncClient stream", "read-serializable", 64, 4000.0),
            _row("AsyncClient stream", "read-linearizable", 64, 3000.0),
        ],
        "inproc": [_row("NodeAPI", "inproc-write", 1000, 15000.0)],
        "pysyncobj": [_row("PySyncObj ReplDict.set", "inproc-write", 1000, 5000.0)],
        "floor": [
            {"shape": "unary", "in_flight": 64, "per_s": 3000, "server_us_per_echo": 300.0},
            {"shape": "stream", "in_flight": 64, "per_s": 8000, "server_us_per_echo": 110.0},
        ],
    }
    out = io.StringIO()
    compare.print_table(results, out)
    text = out.getvalue()
    assert "| 64 | 5,000 | 6,000 | 1,000* | 1,100 | 7,000 | 1.20 | leader 0.97 / leader 0.97 |" in (
        text
    )
    # The blocking client against etcd's blocking stubs, in a table of its own.
    assert "| 64 | 2,500 | 5,500 | 2.20 |" in text
    assert "linearizable / serializable 0.75; serializable / stream echo floor 0.50" in text
    assert "ramraft NodeAPI 15,000/s" in text and "PySyncObj 5,000/s" in text and "3.00x" in text
    assert "unary echo 3,000/s (300.0 us server CPU per call)" in text
    assert "load average 0.50 before" in text


def test_missing_peers_and_bad_arguments_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert compare.main(["--cache", str(tmp_path), "--only", "etcd,pysyncobj"]) == 2
    err = capsys.readouterr().err
    assert "etcd and PySyncObj not installed" in err and "--install" in err
    assert err.count("\n") == 1
    with pytest.raises(SystemExit) as e:
        compare.main(["--only", "redis"])
    assert e.value.code == 2
    assert "unknown section redis" in capsys.readouterr().err
    assert compare.main(["--duration", "0", "--only", "floor"]) == 2
    capsys.readouterr()
    assert compare.main(["--connections", "0", "--only", "floor"]) == 2
    assert "--connections >= 1" in capsys.readouterr().err
    assert compare.main(["--rounds", "0", "--only", "floor"]) == 2
    assert "--rounds >= 1" in capsys.readouterr().err


def test_rounds_give_each_figure_its_median_and_each_ratio_its_range() -> None:
    """With --rounds, a figure is its median round's, CPU and p50 with it;
    a ratio is of the medians, bracketed by the lowest and highest ratio
    of the two runs one round took (not of runs minutes apart)."""
    etcd_rates = [5000.0, 4000.0, 6000.0]
    mine_rates = [5000.0, 6000.0, 6600.0]  # ratios within a round: 1.00, 1.50, 1.10
    by_round = {
        "etcd": [[_row("etcd", "write", 64, rate)] for rate in etcd_rates],
        "ramraft": [
            [_row("AsyncClient stream", "write", 64, rate, cores={"n1": rate / 10000})]
            for rate in mine_rates
        ],
        "floor": [
            [
                {"shape": "unary", "in_flight": 64, "per_s": echo / 2, "server_us_per_echo": 1.0},
                {"shape": "stream", "in_flight": 64, "per_s": echo, "server_us_per_echo": 1.0},
            ]
            for echo in (8000, 9000, 7000)
        ],
    }
    results: dict[str, Any] = {"rounds": 3, "by_round": by_round}
    for name, rounds in by_round.items():
        results[name] = compare.merge_rounds(rounds)
    (mine,) = results["ramraft"]
    assert mine["ops_per_s"] == 6000.0 and mine["cores"] == {"n1": 0.6}
    assert mine["rates"] == mine_rates
    floor = {row["shape"]: row["per_s"] for row in results["floor"]}
    assert floor == {"unary": 4000, "stream": 8000}  # each shape its own median
    out = io.StringIO()
    compare.print_table(results, out)
    text = out.getvalue()
    assert "median of 3 rounds" in text
    assert "| 64 | 5,000 | 6,000 | - | - | - | 1.20 (1.00-1.50) |" in text
    # One round alone: no brackets.
    results["by_round"] = {name: rounds[:1] for name, rounds in by_round.items()}
    out = io.StringIO()
    compare.print_table(results, out)
    assert "| 1.20 |" in out.getvalue()


def test_a_run_whose_requests_failed_is_marked_and_listed_with_its_round() -> None:
    """A rate taken while requests failed (a leader lost mid-run) is not a
    steady rate: the table marks the run with ``!`` where it is the median,
    and a list at the end names every such run, whichever round took it."""
    failed = {"errors": 1000, "error_kinds": {"Unavailable": 1000}}
    by_round = {
        "inproc": [
            [_row("NodeAPI", "inproc-write", 1000, rate, **(failed if n == 2 else {}))]
            for n, rate in enumerate((15000.0, 9000.0, 11000.0), 1)
        ],
        "pysyncobj": [[_row("PySyncObj ReplDict.set", "inproc-write", 1000, 5000.0)]] * 3,
        "etcd": [[_row("etcd", "write", 64, 5000.0, errors=3)]] * 3,
    }
    results: dict[str, Any] = {"rounds": 3, "by_round": by_round}
    for name, rounds in by_round.items():
        results[name] = compare.merge_rounds(rounds)
    out = io.StringIO()
    compare.print_table(results, out)
    text = out.getvalue()
    assert "! = requests failed during the run" in text
    assert "| 64 | 5,000! |" in text, "the median run had errors: marked"
    assert "ramraft NodeAPI 11,000/s (p50" in text, "the median run had none: not marked"
    listed = text[text.index("Runs with failed requests:") :].splitlines()[1:]
    assert [line.strip() for line in listed] == [
        "round 2, inproc: NodeAPI inproc-write at 1000 in flight: 1,000 errors (Unavailable 1,000)",
        "round 1, etcd: etcd write at 64 in flight: 3 errors",
        "round 2, etcd: etcd write at 64 in flight: 3 errors",
        "round 3, etcd: etcd write at 64 in flight: 3 errors",
    ]
    clean = {
        name: [[{**row, "errors": 0} for row in rows] for rows in rounds]
        for name, rounds in by_round.items()
    }
    results = {"rounds": 3, "by_round": clean}
    for name, rounds in clean.items():
        results[name] = compare.merge_rounds(rounds)
    out = io.StringIO()
    compare.print_table(results, out)
    body = out.getvalue().split("listed at the end)\n", 1)[1]
    assert "Runs with failed requests" not in body and "!" not in body


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench.compare", "--no-progress", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_a_tiny_offline_run(tmp_path: Path) -> None:
    """The ramraft sections and the floor, nothing to install: the same
    code path as the real run, cut to fractions of a second per run."""
    out = tmp_path / "results.json"
    done = _run(
        "--only", "floor,inproc", "--duration", "0.3", "--warmup", "0.1",
        "--inproc-in-flight", "2", "--floor-in-flight", "2", "--retakes", "0",
        "--rounds", "2", "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "In-process writes at 2 in flight: ramraft NodeAPI" in done.stdout
    assert "grpc-python floor at 2 in flight" in done.stdout
    assert "median of 2 rounds" in done.stdout
    results = json.loads(out.read_text())
    (inproc,) = results["inproc"]
    assert inproc["mode"] == "inproc-write" and inproc["ops"] > 0
    assert len(inproc["rates"]) == 2 and inproc["ops_per_s"] == min(inproc["rates"])
    assert [len(rows) for rows in results["by_round"]["inproc"]] == [1, 1]
    assert any(name.startswith("ramraft leader") for name in inproc["cores"])
    assert {row["shape"] for row in results["floor"]} == {"unary", "stream"}


def _peers_site() -> Path:
    return compare.default_cache() / "site"


@pytest.mark.peers
@pytest.mark.skipif(
    peer_etcd.binary(_peers_site()) is None or not peer_pysyncobj.installed(_peers_site()),
    reason=not_installed(
        "etcd and PySyncObj in bench.compare's cache (or RAMRAFT_BENCH_CACHE)",
        "python -m bench.compare --install-only",
    ),
)
def test_a_tiny_run_against_the_peers(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    done = _run(
        "--only", "etcd,pysyncobj", "--duration", "0.5", "--warmup", "0.2",
        "--in-flight", "2", "--inproc-in-flight", "20", "--retakes", "0", "--json", str(out),
        env=dict(os.environ),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    etcd, blocking = results["etcd"]  # grpc.aio stubs, then threads with blocking stubs
    assert (etcd["driver"], blocking["driver"]) == ("etcd", "etcd blocking")
    for row in (etcd, blocking):
        assert row["ops"] > 0 and row["errors"] == 0
        assert "etcd leader" in row["cores"]
    (pso,) = results["pysyncobj"]
    assert pso["ops"] > 0
    assert results["etcd_version"].startswith("3.5")

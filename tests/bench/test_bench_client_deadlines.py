"""Smoke tests of bench/bench_client_deadlines.py: one run of a few cases,
no speed asserts (the client tests check the behaviour)."""

from __future__ import annotations

import json

import pytest

from bench import bench_client_deadlines


def test_every_case_is_measured_once() -> None:
    records = bench_client_deadlines.run(1)
    assert [r["case"] for r in records] == list(bench_client_deadlines.CASES)
    for record in records:
        assert record["runs"] == 1
        assert record["min_ms"] == record["median_ms"] == record["max_ms"]


def test_command_line_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--runs", "2", "--case", "leader_hint", "--case", "per_call_timeout", "--json"]
    assert bench_client_deadlines.main(argv) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["case"] for r in records] == ["leader_hint", "per_call_timeout"]
    assert all(r["runs"] == 2 for r in records)


def test_bad_arguments_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        bench_client_deadlines.main(["--runs", "0"])
    assert exit_.value.code == 2
    assert "--runs must be at least 1" in capsys.readouterr().err

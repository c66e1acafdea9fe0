"""Smoke test of bench/bench_inprocess.py: one short round, no speed asserts."""

from __future__ import annotations

from bench import bench_inprocess


def test_the_inprocess_bench_reports_both_modes() -> None:
    records = bench_inprocess.run(rounds=1, commands=20)
    assert [r["mode"] for r in records] == ["virtual time", "real time"]
    for record in records:
        assert record["start_ms"] > 0 and record["commands_per_s"] > 0
        assert record["virtual_speed"] > 0

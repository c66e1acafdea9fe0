"""Smoke test of bench/bench_backup.py: a tiny run that checks the benchmark
still works end to end (digest on a loop, ramraft restore, a node started
from it, ramraft backup and --verify) and reports every figure. No speed is
asserted."""

from __future__ import annotations

import json

import pytest

from bench import bench_backup


def test_backup_bench_reports_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_backup.main(["--keys", "3000", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["keys"] == report["backup_keys"] == 3000
    assert report["digest_loop_max_ms"] >= 0 and report["idle_loop_max_ms"] >= 0
    for figure in (
        "digest_s",
        "digest_mb_per_s",
        "restore_s",
        "restored_node_serves_s",
        "backup_s",
        "verify_s",
    ):
        assert report[figure] > 0, figure
    assert report["digest_bytes"] > 3000 * 100  # every value was hashed

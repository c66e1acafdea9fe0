"""Smoke tests of bench/bench_core.py: a few hundred entries, no speed asserts."""

from __future__ import annotations

import json

import pytest

from bench import bench_core


def test_core_bench_commits_entries_on_all_three_nodes() -> None:
    result = bench_core.run(seconds=30, batch=50, max_entries=300)
    assert result.entries >= 300
    assert result.follower_entries > 0  # followers apply too
    assert result.messages > 0
    record = result.as_dict()
    assert record["entries_per_s"] > 0
    assert record["nodes"] == 3 and record["batch"] == 50


def test_core_bench_compacts_the_log() -> None:
    cluster = bench_core.MemoryCluster()
    leader = cluster.nodes[cluster.elect()]
    for _ in range(20):
        leader.propose_batch([b"x" * 10] * 10)
        cluster.turn()
    for _ in range(5):
        cluster.turn()
    cluster.compact(retain=50)
    for node in cluster.nodes.values():
        assert node.log.offset > 0
        node.check_invariants()


def test_core_bench_command_line_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_core.main(["--entries", "200", "--batch", "20,40", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["batch"] for r in records] == [20, 40]
    assert all(r["entries"] >= 200 for r in records)

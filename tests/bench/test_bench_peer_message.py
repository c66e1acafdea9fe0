"""Smoke tests of bench/bench_peer_message.py: every mode delivers what it
sends and reports its CPU per message; no speed asserts."""

from __future__ import annotations

import json

import pytest

from bench import bench_peer_message


def test_every_mode_delivers_each_message_and_reports_its_cost() -> None:
    rows = bench_peer_message.measure(list(bench_peer_message.MODES), 0.3, 0.002)
    assert [r["mode"] for r in rows] == list(bench_peer_message.MODES)
    idle, *senders = rows
    assert idle["sent"] == idle["received"] == 0 and idle["turns"] > 0
    assert "sender_us_per_message" not in idle
    for row in senders:
        assert row["sent"] > 0, row
        assert row["received"] == row["sent"], row
        assert row["sender_us_per_message"] > 0 and row["receiver_us_per_message"] > 0
        assert "sender_us_above_idle" in row


def test_command_line_prints_one_json_line_per_mode(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--modes", "socket,aio", "--seconds", "0.2", "--gap-ms", "2", "--json"]
    assert bench_peer_message.main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["mode"] for r in rows] == ["socket", "aio"]
    # Without an idle run there is no baseline to subtract.
    assert all("sender_us_above_idle" not in r and r["received"] == r["sent"] for r in rows)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--modes", "idle,carrier-pigeon"], "unknown mode(s) carrier-pigeon"),
        (["--modes", ","], "unknown mode(s) (none)"),
        (["--gap-ms", "0"], "--seconds and --gap-ms must be positive"),
    ],
)
def test_bad_arguments_are_refused(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        bench_peer_message.main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err

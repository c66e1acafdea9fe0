"""The in-process cluster of the ``ramraft_cluster`` fixture: how long a
three-node cluster takes to start (to a serving leader), how many commands a
test can run per second through it, and how fast virtual time runs (virtual
seconds of an idle cluster per real second). A script, not a test.

    python -m bench.bench_inprocess [--rounds R] [--commands N]

Each figure is the median of R rounds, on virtual time and on real time
(``virtual=False``). Prints one JSON object per mode on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ramraft import ReplicatedModel, command
from ramraft.server.inprocess import ClusterHarness


class Counter(ReplicatedModel):
    def __init__(self) -> None:
        self.value = 0

    @command
    def add(self, n: int) -> int:
        self.value += n
        return self.value


def one_round(virtual: bool, commands: int, seed: int) -> dict[str, float]:
    started = time.perf_counter()
    cluster = ClusterHarness(Counter, seed=seed, virtual=virtual)
    start_seconds = time.perf_counter() - started
    try:
        model = cluster.model()
        began = time.perf_counter()
        for _ in range(commands):
            cluster.run(model.add(1))
        command_seconds = time.perf_counter() - began
        idle = 2.0
        began = time.perf_counter()
        cluster.sleep(idle)
        idle_seconds = time.perf_counter() - began
    finally:
        cluster.close()
    return {
        "start_ms": start_seconds * 1000,
        "commands_per_s": commands / command_seconds,
        "virtual_speed": idle / idle_seconds,
    }


def run(rounds: int, commands: int) -> list[dict[str, Any]]:
    out = []
    for virtual in (True, False):
        results = [one_round(virtual, commands, seed) for seed in range(rounds)]
        record: dict[str, Any] = {"mode": "virtual time" if virtual else "real time"}
        for key in results[0]:
            record[key] = round(statistics.median(r[key] for r in results), 2)
        out.append(record)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--commands", type=int, default=500)
    args = parser.parse_args(argv)
    for record in run(args.rounds, args.commands):
        print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

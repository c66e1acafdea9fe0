"""Measure leader failover many times (not a test: a measurement to report).

    python -m tests.server.measure_failover --runs 20

Each run: a fresh three-node cluster (tick 20 ms, 10 ticks), a workload of 8
async workers, SIGKILL of the leader, then fresh writes until one is
acknowledged. Prints, per run, the gap from the kill to that acknowledgement
in election timeouts and the number of election rounds (terms), then the
distribution.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from tests.server.history import History, run_workload
from tests.server.procs import ProcessCluster
from tests.server.test_failover import _probe_until_a_write_succeeds


def one_run(root: Path) -> tuple[float, int]:
    with ProcessCluster(root) as cluster:
        old = cluster.wait_for_leader()
        before = cluster.status(old)
        assert before is not None

        async def scenario() -> float:
            stop = asyncio.Event()
            load = asyncio.create_task(
                run_workload(cluster.endpoints(), stop, workers=8, history=History())
            )
            await asyncio.sleep(1.0)
            killed = time.monotonic()
            await asyncio.to_thread(cluster.kill, old)
            acked = await _probe_until_a_write_succeeds(cluster.endpoints(), killed, killed + 10.0)
            stop.set()
            await load
            return acked - killed

        gap = asyncio.run(scenario())
        after = cluster.status(cluster.wait_for_leader())
        assert after is not None
        return gap / cluster.election_timeout, after.term - before.term


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.server.measure_failover", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--runs", type=int, default=10, help="fresh clusters, one leader kill each (default 10)"
    )
    args = parser.parse_args()
    gaps: list[float] = []
    rounds: list[int] = []
    for n in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            gap, terms = one_run(Path(tmp))
        gaps.append(gap)
        rounds.append(terms)
        print(f"run {n + 1}: {gap:.2f} election timeouts, {terms} round(s)", flush=True)
    gaps.sort()
    print(
        f"runs={len(gaps)} median={statistics.median(gaps):.2f} max={gaps[-1]:.2f} "
        f"min={gaps[0]:.2f} election timeouts; over 3: {sum(g >= 3 for g in gaps)}; "
        f"split votes (more than one round): {sum(r > 1 for r in rounds)}"
    )


if __name__ == "__main__":
    main()

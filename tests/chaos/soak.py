"""The long chaos run: the CI test's lab and nemesis, for as long as you like.

    sudo python -m tests.chaos.soak --minutes 30 [--out DIR] [--seed N]
                                    [--clients 4] [--keys 20]

Runs from the repository root, as root (network namespaces). Every fault kind
once, then random faults until the time is up; the workload (`ramraft chaos`
in the client namespace) is checked at the end. Writes into DIR (default
./chaos-soak-<time>): history.jsonl, faults.json, report.json, and each
process's log under logs/. Prints the numbers: operations, ok/failed/unknown,
faults by kind, the longest write pause after a leader kill, the longest time
to serve again after a heal. Exit status: the workload's (0 = linearizable,
nothing lost), or 4 if the lab itself failed.

More keys than the CI test keep each key's history short enough for the
linearizability search of a long run.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import sys
import time
from pathlib import Path

from tests.chaos.cluster import format_windows, run_session
from tests.chaos.netns import ChaosNet, sweep, unsupported_reason


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.chaos.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--keys", type=int, default=20)
    args = p.parse_args(argv)
    if args.minutes <= 0:
        p.error("--minutes must be positive")
    reason = unsupported_reason()
    if reason is not None:
        sys.stderr.write(f"soak: the chaos lab cannot run here: {reason}\n")
        return 4
    sweep()
    seed = args.seed if args.seed is not None else secrets.randbits(32)
    out: Path = args.out or Path(f"chaos-soak-{time.strftime('%Y%m%dT%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    sys.stdout.write(f"soak: {args.minutes:g} min, seed {seed}, output in {out}\n")
    sys.stdout.flush()
    net = ChaosNet(host_access=True)
    try:
        with net:
            try:
                session = run_session(
                    net, out, args.minutes * 60, seed, clients=args.clients, keys=args.keys
                )
            finally:
                shutil.copytree(net.workdir / "logs", out / "logs", dirs_exist_ok=True)
    except Exception as e:
        sys.stderr.write(f"soak: the run failed: {type(e).__name__}: {e} (logs in {out})\n")
        return 4
    rep = session.report
    wall = time.monotonic() - started
    lines = [
        f"soak: {wall / 60:.1f} min in all ({args.minutes:g} min of faults), seed {seed}",
        f"operations: {rep['operations']}  outcomes: {json.dumps(rep['outcomes'])}",
        f"faults: {rep['faults']}  by kind: {json.dumps(rep['faults_by_kind'])}",
        f"linearizable: {rep['linearizable']}  lost acknowledged writes: {rep['lost_writes']}",
        "longest write pause after a leader kill: "
        f"{rep['longest_write_pause_after_leader_kill']} s",
        f"longest heal -> write acknowledged: {rep['longest_serving_after_heal']} s; "
        f"heal -> every node Ready: {rep['longest_ready_after_heal']} s",
        f"workload exit code: {session.code}",
        format_windows(session.windows),
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    return session.code


if __name__ == "__main__":
    sys.exit(main())

"""Throughput of the Raft core alone (a script, not a test).

    python -m bench.bench_core [--seconds 5] [--batch 500] [--value-bytes 100] [--json]

Three ``consensus.RaftNode`` in one process, no I/O at all: every Ready is
"persisted" by doing nothing, its messages are handed straight to the
destination's inbox, its committed entries are counted as applied, then
``advance()``. One *turn* of the cluster:

1. the leader takes ``--batch`` new commands with one ``propose_batch``;
2. every node steps the messages that reached it during the previous turn,
   then handles its Ready (which carries the messages for the next turn).

So AppendEntries are pipelined exactly as over a network with one turn of
latency: the leader keeps proposing while the acknowledgements of earlier
batches are still on their way. The log is compacted every ``--compact``
applied entries (keeping the memory flat as a long run would).

Reports committed entries per second as the leader sees them (applied on
the leader, i.e. acknowledged to a client), plus the same on the slowest
follower; ``--profile`` runs it under cProfile and prints the top functions.
The target in issue 2 is >= 200,000 entries/s on the project's 2-core VM.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ramraft.consensus import ConfState, Message, RaftNode, Role
from ramraft.consensus.raft import Config

IDS = ("n1", "n2", "n3")


@dataclass
class CoreResult:
    entries: int  # committed and applied on the leader in the measured window
    follower_entries: int  # the same, on the slowest follower
    seconds: float
    turns: int
    batch: int
    value_bytes: int
    messages: int
    leader: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def entries_per_s(self) -> float:
        return self.entries / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "bench": "core",
            "nodes": len(IDS),
            "batch": self.batch,
            "value_bytes": self.value_bytes,
            "seconds": round(self.seconds, 3),
            "turns": self.turns,
            "entries": self.entries,
            "entries_per_s": round(self.entries_per_s, 1),
            "follower_entries_per_s": round(self.follower_entries / self.seconds, 1)
            if self.seconds > 0
            else 0.0,
            "messages_per_s": round(self.messages / self.seconds, 1) if self.seconds > 0 else 0.0,
            "leader": self.leader,
            **self.extra,
        }


class MemoryCluster:
    """Three cores wired to each other through in-memory inboxes."""

    def __init__(self, seed: int = 1, max_inflight: int = 256) -> None:
        conf = ConfState(voters=frozenset(IDS))
        self.nodes: dict[str, RaftNode] = {}
        for node_id in IDS:
            config = Config(
                id=node_id,
                rng=random.Random(f"{seed}-{node_id}"),
                election_tick=10,
                heartbeat_tick=1,
                max_inflight_msgs=max_inflight,
            )
            self.nodes[node_id] = RaftNode(config, bootstrap=conf)
        self.inbox: dict[str, list[Message]] = {node_id: [] for node_id in IDS}
        self.applied: dict[str, int] = dict.fromkeys(IDS, 0)
        self.messages = 0

    def turn(self) -> None:
        """Deliver last turn's messages, then handle every node's Ready."""
        nodes, inbox, applied = self.nodes, self.inbox, self.applied
        for node_id, node in nodes.items():
            pending = inbox[node_id]
            if pending:
                inbox[node_id] = []
                for m in pending:
                    node.step(m)
            if node.has_ready():
                rd = node.ready()
                # persist: nothing to do in memory; send:
                for m in rd.messages:
                    inbox[m.dst].append(m)
                self.messages += len(rd.messages)
                # apply:
                applied[node_id] += len(rd.committed_entries)
                node.advance(rd)

    def leader(self) -> str | None:
        for node_id, node in self.nodes.items():
            if node.role == Role.LEADER:
                return node_id
        return None

    def elect(self, max_ticks: int = 1000) -> str:
        for _ in range(max_ticks):
            for node in self.nodes.values():
                node.tick()
            for _ in range(5):
                self.turn()
            leader = self.leader()
            if leader is not None and self.nodes[leader].commit_index >= 2:
                return leader
        raise RuntimeError(f"no leader after {max_ticks} ticks")

    def compact(self, retain: int) -> None:
        for node in self.nodes.values():
            index = node.applied_index - retain
            if index > node.log.offset:
                node.compact(node.snapshot_meta(index))


def run(
    seconds: float = 5.0,
    batch: int = 500,
    value_bytes: int = 100,
    *,
    max_entries: int | None = None,
    ticks_every: int = 50,
    compact_every: int = 100_000,
    retain: int = 10_000,
    progress: Callable[[int], None] | None = None,
) -> CoreResult:
    """Drive the cluster until ``seconds`` passed or ``max_entries`` were
    committed on the leader (whichever first)."""
    cluster = MemoryCluster()
    leader_id = cluster.elect()
    leader = cluster.nodes[leader_id]
    commands = [bytes([n % 251]) * value_bytes for n in range(batch)]
    applied = cluster.applied
    followers = [i for i in IDS if i != leader_id]
    start_leader = applied[leader_id]
    start_followers = {i: applied[i] for i in followers}
    start_messages = cluster.messages
    next_compact = leader.applied_index + compact_every
    turns = 0
    started = time.perf_counter()
    deadline = started + seconds
    limit = max_entries if max_entries is not None else 1 << 62
    while True:
        leader.propose_batch(commands)
        cluster.turn()
        turns += 1
        if turns % ticks_every == 0:
            # A heartbeat now and then, as real time would bring.
            for node in cluster.nodes.values():
                node.tick()
            if progress is not None:
                progress(applied[leader_id] - start_leader)
            if time.perf_counter() >= deadline:
                break
        if applied[leader_id] - start_leader >= limit:
            break
        if leader.applied_index >= next_compact:
            cluster.compact(retain)
            next_compact = leader.applied_index + compact_every
    elapsed = time.perf_counter() - started
    if cluster.leader() != leader_id:
        raise RuntimeError("leadership moved during the run: the numbers would mean nothing")
    return CoreResult(
        entries=applied[leader_id] - start_leader,
        follower_entries=min(applied[i] - start_followers[i] for i in followers),
        seconds=elapsed,
        turns=turns,
        batch=batch,
        value_bytes=value_bytes,
        messages=cluster.messages - start_messages,
        leader=leader_id,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_core",
        description="Committed entries/s of a 3-node in-memory cluster of Raft cores (no I/O).",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="per run (default 5)")
    parser.add_argument(
        "--batch", type=str, default="500", help="entries per propose_batch; a comma list sweeps"
    )
    parser.add_argument(
        "--value-bytes", type=int, default=100, help="bytes a command (default 100)"
    )
    parser.add_argument(
        "--entries", type=int, default=None, help="stop after this many committed entries"
    )
    parser.add_argument("--json", action="store_true", help="only JSON lines on stdout")
    parser.add_argument("--profile", action="store_true", help="run under cProfile, print top 25")
    args = parser.parse_args(argv)
    try:
        batches = [int(b) for b in args.batch.split(",") if b]
    except ValueError:
        parser.error(f"--batch: not a list of whole numbers: {args.batch!r}")
    if not batches or min(batches) < 1 or args.seconds <= 0 or args.value_bytes < 0:
        parser.error("need --batch >= 1, --seconds > 0 and --value-bytes >= 0")
    for batch in batches:
        profiler = cProfile.Profile() if args.profile else None
        if profiler is not None:
            profiler.enable()
        result = run(args.seconds, batch, args.value_bytes, max_entries=args.entries)
        if profiler is not None:
            profiler.disable()
        record = result.as_dict()
        if args.json:
            print(json.dumps(record), flush=True)
        else:
            print(
                f"batch {batch:>5}: {record['entries_per_s']:>11,.0f} committed entries/s "
                f"(leader), {record['follower_entries_per_s']:>11,.0f} on the slowest follower; "
                f"{record['messages_per_s']:,.0f} messages/s, {result.turns} turns in "
                f"{result.seconds:.2f} s"
            )
        if profiler is not None:
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
            print(out.getvalue(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

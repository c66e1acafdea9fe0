"""A writer process for the crash tests (run as a script, killed with SIGKILL).

It performs a deterministic sequence of storage steps (from ``steps(seed)``)
on a real data directory and prints ``done <n>`` after step n returned, i.e.
after it was synced. The test kills it at a random moment and checks that
the data directory recovers to the state after step n or n + 1 (the one in
flight), using the memory store as the oracle.

    python tests/storage/crash_writer.py DIR SEED [--start N] [--fsize-limit BYTES]
"""

from __future__ import annotations

import argparse
import random
import resource
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script: make the worktree importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ramraft.consensus.types import ConfState, Entry, HardState, SnapshotMeta

CONF = ConfState(voters=frozenset({"n1", "n2", "n3"}))
SEGMENT_SIZE = 1 << 16

Step = tuple[str, Any]


def snapshot_data(meta: SnapshotMeta, size: int) -> bytes:
    unit = f"<{meta.index}:{meta.term}>".encode()
    return (unit * (size // len(unit) + 1))[:size]


def steps(seed: int) -> Iterator[Step]:
    """An endless, valid sequence of storage steps. Pure: the same seed
    always gives the same steps."""
    rng = random.Random(seed)
    term, vote, commit = 1, "n1", 0
    base = 0  # the log restarts after this index
    terms: dict[int, int] = {}  # index -> term of the stored log after base
    last = 0
    snap_at = 0
    yield "save", {"hard_state": HardState(term, vote, commit)}
    while True:
        op = rng.random()
        if op < 0.7:
            if rng.random() < 0.1 and last > max(commit, base):
                term, vote = term + 1, ""
                first = rng.randint(max(commit, base) + 1, last)
            else:
                first = last + 1
            batch = [
                Entry(term, i, rng.randbytes(rng.randint(10, 200)))
                for i in range(first, first + rng.randint(1, 20))
            ]
            for i in range(first, last + 1):
                terms.pop(i, None)
            terms.update((e.index, e.term) for e in batch)
            last = batch[-1].index
            commit = max(commit, min(last, commit + rng.randint(0, 25)))
            yield "save", {"entries": batch, "hard_state": HardState(term, vote, commit)}
        elif op < 0.85:
            if rng.random() < 0.5:
                term, vote = term + 1, rng.choice(["", "n2"])
            commit = max(commit, min(last, commit + rng.randint(0, 5)))
            yield "save", {"hard_state": HardState(term, vote, commit)}
        elif op < 0.95 and commit > max(base, snap_at):  # local snapshot + compaction
            index = rng.randint(max(base, snap_at) + 1, commit)
            meta = SnapshotMeta(index, terms[index], CONF)
            snap_at = index
            yield "snapshot", (meta, rng.randint(0, 20_000))
            yield "compact", index
        elif op >= 0.95:  # a snapshot from the leader, beyond our commit
            index = rng.randint(commit + 1, last + 10)
            t = terms.get(index, term) if rng.random() < 0.5 else term
            meta = SnapshotMeta(index, t, CONF)
            yield "snapshot", (meta, rng.randint(0, 20_000))
            keep = terms.get(index) == t
            terms = {i: x for i, x in terms.items() if i > index} if keep else {}
            last = max(last, index) if keep else index
            base = snap_at = index
            commit = index
            yield "save", {"snapshot": meta, "hard_state": HardState(term, vote, commit)}


def apply(step: Step, log: Any, snaps: Any) -> None:
    kind, arg = step
    if kind == "save":
        log.save(**arg)
    elif kind == "snapshot":
        meta, size = arg
        with snaps.create(meta) as writer:
            data = snapshot_data(meta, size)
            for start in range(0, len(data), 7000):
                writer.write(data[start : start + 7000])
            writer.commit()
    elif kind == "compact":
        log.compact(arg)
    else:
        raise ValueError(kind)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dir")
    parser.add_argument("seed", type=int)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--fsize-limit", type=int, default=0)
    parser.add_argument("--no-preallocate", action="store_true")
    parser.add_argument("--segment-size", type=int, default=SEGMENT_SIZE)
    args = parser.parse_args()

    import structlog

    from ramraft.server.storage import StorageFailedError, StorageIOError, open_storage

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    if args.fsize_limit:  # writes past the limit fail with EFBIG, like a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (args.fsize_limit, args.fsize_limit))
    log, snaps = open_storage(
        args.dir, segment_size=args.segment_size, preallocate=not args.no_preallocate
    )
    log.load()
    print("ready", flush=True)
    for number, step in enumerate(steps(args.seed), start=1):
        if number <= args.start:
            continue
        try:
            apply(step, log, snaps)
        except StorageFailedError as exc:
            print(f"failed {number} {exc}", flush=True)
            try:
                log.save(hard_state=HardState(10**6, "", 0))
            except StorageFailedError:
                print("refused", flush=True)
            return
        except StorageIOError as exc:
            print(f"snapshot-failed {number} {exc}", flush=True)
            return
        print(f"done {number}", flush=True)


if __name__ == "__main__":
    main()

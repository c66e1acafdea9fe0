"""Storage benchmarks (a script, not a test).

    python -m bench.bench_storage [--quick] [--dir DIR] [--machine MODULE:FUNCTION]

Prints one JSON object per measurement on stdout and a human summary on
stderr.

1. fsync floor: one 100-byte pwrite + fdatasync on a preallocated file, the
   cost no WAL can beat (the baseline for the ratios below).
2. appends: 100-byte entries in batches of 1, 10 and 100 per save() (one
   fsync each, with a hard state, as the runtime does every loop turn):
   appends/s, MB/s of entry data, and the cost of a batch of 100 relative to
   a batch of 1 (the aim: about two single-entry fsyncs).
3. recovery: a 1,000,000-key state (key -> 100-byte value) in a snapshot,
   plus 100,000 entries after it; timed from open_storage() to a state
   machine that has restored the snapshot and applied the log (aim: < 5 s).

The recovery state machine is a stand-in dict with its own streaming
snapshot format, shaped like server/machines/statemachine.py's StateMachine protocol
(apply(index, command), snapshot() -> job.write_to(stream),
restore(stream)). To measure a real machine, pass ``--machine
module:function`` where ``function()`` returns ``(machine, encode_set)`` and
``encode_set(key: bytes, value: bytes) -> bytes`` builds the command that
sets a key.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import structlog

from ramraft.consensus.types import ConfState, Entry, HardState, SnapshotMeta
from ramraft.server.storage import open_storage
from ramraft.server.storage._fs import datasync, preallocate

CONF = ConfState(voters=frozenset({"ramraft-0", "ramraft-1", "ramraft-2"}))


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# -- 1. fsync floor ------------------------------------------------------------


def bench_fsync_floor(directory: Path, count: int) -> float:
    path = directory / "floor"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        preallocate(fd, 64 << 20)
        os.fsync(fd)
        data = b"x" * 100
        start = time.perf_counter()
        for i in range(count):
            os.pwrite(fd, data, i * 100)
            datasync(fd)
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
        path.unlink()
    return elapsed / count


# -- 2. appends ------------------------------------------------------------------


def bench_appends(directory: Path, batch: int, saves: int) -> dict[str, float]:
    data_dir = directory / f"append-{batch}"
    log, _ = open_storage(data_dir)
    log.load()
    payload = os.urandom(100)
    batches = []
    index = 1
    for _ in range(saves):
        batches.append([Entry(1, i, payload) for i in range(index, index + batch)])
        index += batch
    start = time.perf_counter()
    for entries in batches:
        log.save(entries=entries, hard_state=HardState(1, "ramraft-0", entries[-1].index))
    elapsed = time.perf_counter() - start
    log.close()
    shutil.rmtree(data_dir)
    appends = saves * batch
    return {
        "us_per_save": elapsed / saves * 1e6,
        "appends_per_s": appends / elapsed,
        "mb_per_s": appends * 100 / elapsed / 1e6,
    }


# -- 3. recovery -----------------------------------------------------------------

_RECORD = struct.Struct("<HI")  # key length, value length
_CHUNK = 1 << 20


class Stream(Protocol):
    def read(self, n: int, /) -> bytes: ...


class StandInKV:
    """key -> value dict with a streamed snapshot: records of
    (key length u16, value length u32, key, value), written in ~1 MiB chunks."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.applied = 0

    @staticmethod
    def encode_set(key: bytes, value: bytes) -> bytes:
        return _RECORD.pack(len(key), len(value)) + key + value

    def apply(self, index: int, command: bytes) -> None:
        klen, _vlen = _RECORD.unpack_from(command)
        start = _RECORD.size
        self.data[command[start : start + klen]] = command[start + klen :]
        self.applied = index

    def snapshot(self) -> StandInKV:
        return self  # the job: the bench does not write while it runs

    def write_to(self, stream: Any) -> int:
        pack = _RECORD.pack
        parts: list[bytes] = []
        size = total = 0
        for key, value in self.data.items():
            parts.append(pack(len(key), len(value)))
            parts.append(key)
            parts.append(value)
            size += _RECORD.size + len(key) + len(value)
            if size >= _CHUNK:
                stream.write(b"".join(parts))
                total += size
                parts, size = [], 0
        if parts:
            stream.write(b"".join(parts))
            total += size
        return total

    def restore(self, stream: Stream) -> None:
        data: dict[bytes, bytes] = {}
        unpack = _RECORD.unpack_from
        head = _RECORD.size
        pending = b""
        while chunk := stream.read(_CHUNK):
            buf = pending + chunk if pending else chunk
            pos, end = 0, len(buf)
            while pos + head <= end:
                klen, vlen = unpack(buf, pos)
                stop = pos + head + klen + vlen
                if stop > end:
                    break
                data[buf[pos + head : pos + head + klen]] = buf[pos + head + klen : stop]
                pos = stop
            pending = buf[pos:]
        if pending:
            raise ValueError("snapshot ends in the middle of a record")
        self.data = data


def stand_in() -> tuple[Any, Callable[[bytes, bytes], bytes]]:
    machine = StandInKV()
    return machine, machine.encode_set


def real_kv() -> tuple[Any, Callable[[bytes, bytes], bytes]]:
    """The built-in key-value machine (``--machine bench.bench_storage:real_kv``)."""
    from ramraft.server.machines.kv import KVMachine, encode_put

    def encode_set(key: bytes, value: bytes) -> bytes:
        return encode_put(key.decode(), value)

    return KVMachine(), encode_set


def load_machine(spec: str | None) -> tuple[Any, Callable[[bytes, bytes], bytes]]:
    if spec is None:
        return stand_in()
    module, _, function = spec.partition(":")
    factory = getattr(importlib.import_module(module), function)
    machine, encode_set = factory()
    return machine, encode_set


def state_digest(machine: Any) -> str | None:
    data = getattr(machine, "data", None)
    if not isinstance(data, dict):
        return None
    digest = hashlib.sha256()
    for key, value in data.items():
        digest.update(key)
        digest.update(value)
    return digest.hexdigest()


def bench_recovery(directory: Path, keys: int, entries: int, spec: str | None) -> dict[str, Any]:
    data_dir = directory / "recovery"
    values = os.urandom(100 * 1024)

    def value(i: int) -> bytes:
        start = (i * 37) % (len(values) - 100)
        return values[start : start + 100]

    # Setup (not timed): the state, its snapshot, then the log after it.
    machine, encode_set = load_machine(spec)
    for i in range(keys):
        machine.apply(i + 1, encode_set(b"key%07d" % i, value(i)))
    log, snaps = open_storage(data_dir)
    log.load()
    meta = SnapshotMeta(index=keys, term=1, conf=CONF)
    start = time.perf_counter()
    job = machine.snapshot()
    with snaps.create(meta) as writer:
        snapshot_bytes = job.write_to(writer)
        writer.commit()
    snapshot_write_s = time.perf_counter() - start
    log.save(snapshot=meta, hard_state=HardState(1, "ramraft-0", keys))
    index = keys
    for first in range(0, entries, 100):
        batch = []
        for j in range(first, min(first + 100, entries)):
            index += 1
            key = b"key%07d" % ((j * 7919) % keys)
            command = encode_set(key, value(j + keys))
            machine.apply(index, command)
            batch.append(Entry(1, index, command))
        log.save(entries=batch, hard_state=HardState(1, "ramraft-0", index), sync=False)
    log.save()
    log.close()
    want = state_digest(machine)
    del machine

    # Timed: what a restarting node does.
    start = time.perf_counter()
    log, snaps = open_storage(data_dir)
    state = log.load()
    loaded = time.perf_counter()
    machine, _ = load_machine(spec)
    assert state.snapshot is not None
    with snaps.open(state.snapshot.index) as reader:
        machine.restore(reader)
    restored = time.perf_counter()
    for entry in state.entries:
        machine.apply(entry.index, entry.data)
    done = time.perf_counter()
    with snaps.open(state.snapshot.index) as reader:  # storage's share: read + verify only
        read_start = time.perf_counter()
        for _chunk in reader:
            pass
        snapshot_read_s = time.perf_counter() - read_start
    log.close()
    got = state_digest(machine)
    if want is not None and got != want:
        raise SystemExit("recovered state differs from the state that was saved")
    shutil.rmtree(data_dir)
    return {
        "keys": keys,
        "log_entries": len(state.entries),
        "snapshot_mb": snapshot_bytes / 1e6,
        "snapshot_write_s": snapshot_write_s,
        "load_wal_s": loaded - start,
        "restore_snapshot_s": restored - loaded,
        "snapshot_read_verify_only_s": snapshot_read_s,
        "replay_log_s": done - restored,
        "total_s": done - start,
        "verified": want is not None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", help="where to write (default: a temporary directory)")
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds of the append runs (median)")
    parser.add_argument("--machine", help="module:function giving (machine, encode_set)")
    args = parser.parse_args()
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())  # keep output clean

    base = Path(tempfile.mkdtemp(prefix="ramraft-bench-", dir=args.dir))
    scale = 10 if args.quick else 1
    try:
        emit(
            {
                "bench": "environment",
                "dir": str(base),
                "python": sys.version.split()[0],
                "cpus": os.cpu_count(),
            }
        )
        # Rounds interleave the floor and the three batch sizes so that noise
        # from other work on the machine hits them alike; medians per size.
        sizes = ((1, 2000), (10, 1000), (100, 500))
        floors: list[float] = []
        runs: dict[int, list[dict[str, float]]] = {batch: [] for batch, _ in sizes}
        ratios: list[float] = []
        for _ in range(args.repeat):
            floors.append(bench_fsync_floor(base, 1000 // scale))
            for batch, saves in sizes:
                runs[batch].append(bench_appends(base, batch, saves // scale))
            ratios.append(runs[100][-1]["us_per_save"] / runs[1][-1]["us_per_save"])
        floor = statistics.median(floors)
        emit({"bench": "fsync_floor", "us_per_sync": floor * 1e6})
        results: dict[int, dict[str, float]] = {}
        for batch, _ in sizes:
            median = {k: statistics.median(r[k] for r in runs[batch]) for k in runs[batch][0]}
            results[batch] = median
            emit(
                {
                    "bench": "append",
                    "batch": batch,
                    **median,
                    "vs_fsync_floor": median["us_per_save"] / (floor * 1e6),
                }
            )
        ratio = statistics.median(ratios)
        emit(
            {
                "bench": "append_ratio",
                "batch100_save_vs_batch1_save": ratio,
                "per_round": ratios,
            }
        )
        keys, entries = (100_000, 10_000) if args.quick else (1_000_000, 100_000)
        recovery = bench_recovery(base, keys, entries, args.machine)
        emit({"bench": "recovery", **recovery})
    finally:
        shutil.rmtree(base, ignore_errors=True)

    say("")
    say(f"storage benchmarks ({'quick' if args.quick else 'full'}; {base.parent})")
    say(f"  fsync floor (100 B pwrite + fdatasync):    {floor * 1e6:8.0f} us")
    for batch, r in results.items():
        say(
            f"  batch {batch:>3}: {r['us_per_save']:8.0f} us/save  {r['appends_per_s']:10.0f} "
            f"appends/s  {r['mb_per_s']:6.2f} MB/s  ({r['us_per_save'] / (floor * 1e6):.2f}x floor)"
        )
    say(
        f"  a batch of 100 costs {ratio:.2f}x a single-entry save (median of rounds; aim: about 2x)"
    )
    say(
        f"  recovery of {recovery['keys']:,} keys + {recovery['log_entries']:,} entries: "
        f"{recovery['total_s']:.2f} s (WAL {recovery['load_wal_s']:.2f} s, snapshot "
        f"{recovery['restore_snapshot_s']:.2f} s of which reading+verifying "
        f"{recovery['snapshot_read_verify_only_s']:.2f} s, "
        f"replay {recovery['replay_log_s']:.2f} s; "
        f"aim < 5 s); snapshot {recovery['snapshot_mb']:.0f} MB written in "
        f"{recovery['snapshot_write_s']:.2f} s"
    )


if __name__ == "__main__":
    main()

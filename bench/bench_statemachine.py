"""Benchmark of the state machines: apply rate, snapshot pause, snapshot write
and restore times, and how much a snapshot in a worker thread slows the loop.

    python bench/bench_statemachine.py                 # 1,000,000 keys, 100-byte values
    python bench/bench_statemachine.py --keys 200000 --json
    python bench/bench_statemachine.py --kv-version 1   # the format before revisions

Ratios are against baselines measured in the same run:
- snapshot() pause vs. the obvious strategy it replaces (``dict.copy()`` plus
  a copy of the sorted key list on the loop);
- apply rate while a snapshot is being written vs. without;
- KV restore vs. simply re-applying the same puts.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import structlog

from ramraft.server.machines.embed import ModelMachine, ReplicatedModel, command, encode_call
from ramraft.server.machines.kv import KVMachine, encode_put


def quiet_logs() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))


def timed(fn: Any, *args: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


def build_kv(
    keys: int, value_size: int, kv_version: int = 2
) -> tuple[KVMachine, list[bytes], float]:
    """A machine holding ``keys`` keys, put at key-value version
    ``kv_version`` (2, what a new cluster runs, keeps each key's revisions
    and writes snapshot format 3)."""
    machine = new_kv(kv_version)
    value = os.urandom(value_size)
    commands = [encode_put(f"user/{i * 7919 % keys:09d}", value) for i in range(keys)]
    started = time.perf_counter()
    apply = machine.apply
    for index, data in enumerate(commands, 1):
        apply(index, data)
    return machine, commands, time.perf_counter() - started


def new_kv(kv_version: int) -> KVMachine:
    machine = KVMachine()
    if kv_version >= 2:
        machine.upgrade(1, 2)  # as ClusterMachine switches it
        machine.active_version = 2
    return machine


def apply_rate_with_sessions(n: int) -> float:
    machine = KVMachine()
    commands = [
        encode_put(f"k{i % 1000}", b"x" * 100, (i % 500 + 1, i // 500 + 1)) for i in range(n)
    ]
    started = time.perf_counter()
    for index, data in enumerate(commands, 1):
        machine.apply(index, data)
    return n / (time.perf_counter() - started)


def baseline_copy_pause(machine: KVMachine) -> float:
    started = time.perf_counter()
    data_copy = machine._data.copy()
    keys_copy = list(machine._keys)
    pause = time.perf_counter() - started
    del data_copy, keys_copy
    return pause


async def loop_during_snapshot(machine: KVMachine, path: Path, value_size: int) -> dict[str, float]:
    """Apply puts on the loop in batches, with a 1 ms ticker measuring how late
    the loop wakes it, first without and then with a snapshot being written
    from a worker thread."""
    value = os.urandom(value_size)
    index = machine.applied_index
    keys = len(machine)

    async def run(seconds: float, job: Any = None) -> dict[str, float]:
        nonlocal index
        lags: list[float] = []
        stop = False

        async def ticker() -> None:
            while not stop:
                before = time.perf_counter()
                await asyncio.sleep(0.001)
                lags.append(time.perf_counter() - before - 0.001)

        tick = asyncio.create_task(ticker())
        loop = asyncio.get_running_loop()
        writer = None
        if job is not None:
            f = open(path, "wb")  # noqa: SIM115
            writer = loop.run_in_executor(None, job.write_to, f)
        applied = 0
        started = time.perf_counter()
        while True:
            for _ in range(100):
                index += 1
                machine.apply(index, encode_put(f"user/{index * 31 % keys:09d}", value))
            applied += 100
            await asyncio.sleep(0)
            elapsed = time.perf_counter() - started
            if writer is not None:
                if writer.done():
                    break
            elif elapsed > seconds:
                break
        stop = True
        await tick
        if writer is not None:
            await writer
            f.close()
        lags.sort()
        return {
            "seconds": elapsed,
            "applies_per_s": applied / elapsed,
            "lag_p50_ms": 1000 * lags[len(lags) // 2],
            "lag_p99_ms": 1000 * lags[int(len(lags) * 0.99)],
            "lag_max_ms": 1000 * lags[-1],
        }

    idle = await run(2.0)
    pause_started = time.perf_counter()
    job = machine.snapshot()
    pause = time.perf_counter() - pause_started
    busy = await run(0, job)
    return {
        "snapshot_call_s": pause,
        **{f"idle_{k}": v for k, v in idle.items()},
        **{f"during_{k}": v for k, v in busy.items()},
    }


class Catalog(ReplicatedModel):
    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}

    @command
    def add(self, sku: str, name: str, price: int) -> None:
        self.items[sku] = {"name": name, "price": price, "tags": ["a", "b"]}


def bench_model(items: int, directory: Path) -> dict[str, float]:
    model = Catalog()
    machine = ModelMachine(model)
    calls = [encode_call("add", [f"sku-{i:08d}", f"item {i}", i]) for i in range(items)]
    started = time.perf_counter()
    for index, data in enumerate(calls, 1):
        machine.apply(index, data)
    apply_s = time.perf_counter() - started
    pause, job = timed(machine.snapshot)
    path = directory / "model.snap"
    with open(path, "wb") as f:
        write_s, size = timed(job.write_to, f)
    replica = ModelMachine(Catalog())
    with open(path, "rb") as f:
        restore_s, _ = timed(replica.restore, f)
    assert replica.model.items == model.items  # type: ignore[attr-defined]
    return {
        "items": items,
        "apply_per_s": items / apply_s,
        "snapshot_call_s": pause,
        "write_s": write_s,
        "restore_s": restore_s,
        "bytes": size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000, help="keys (default 1,000,000)")
    parser.add_argument("--value-size", type=int, default=100, help="bytes a value (default 100)")
    parser.add_argument(
        "--kv-version",
        type=int,
        choices=(1, 2),
        default=2,
        help="key-value version of the machine (default 2, a new cluster's: revisions, "
        "snapshot format 3)",
    )
    parser.add_argument(
        "--model-items",
        type=int,
        default=200_000,
        help="items in the model bench (default 200,000)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args()
    quiet_logs()
    out: dict[str, Any] = {
        "keys": args.keys,
        "value_size": args.value_size,
        "kv_version": args.kv_version,
    }

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        machine, commands, build_s = build_kv(args.keys, args.value_size, args.kv_version)
        out["kv_apply_per_s"] = args.keys / build_s
        out["kv_apply_with_session_per_s"] = apply_rate_with_sessions(200_000)

        pauses = []
        for _ in range(5):
            t, job = timed(machine.snapshot)
            job.close()
            pauses.append(t)
        out["kv_snapshot_call_s"] = statistics.median(pauses)
        out["baseline_copy_pause_s"] = statistics.median(
            baseline_copy_pause(machine) for _ in range(3)
        )
        out["pause_ratio_baseline_over_cow"] = (
            out["baseline_copy_pause_s"] / out["kv_snapshot_call_s"]
        )

        path = directory / "kv.snap"
        job = machine.snapshot()
        with open(path, "wb") as f:
            out["kv_write_s"], out["kv_bytes"] = timed(job.write_to, f)
            f.flush()
            os.fsync(f.fileno())

        replica = new_kv(args.kv_version)
        gc.collect()
        with open(path, "rb") as f:
            out["kv_restore_s"], _ = timed(replica.restore, f)
        assert len(replica) == len(machine)
        assert replica.range(limit=10) == machine.range(limit=10)
        del replica
        gc.collect()
        replay_s = 0.0
        scratch = new_kv(args.kv_version)
        started = time.perf_counter()
        for index, data in enumerate(commands, 1):
            scratch.apply(index, data)
        replay_s = time.perf_counter() - started
        out["kv_replay_log_s"] = replay_s
        out["restore_speedup_vs_replay"] = replay_s / out["kv_restore_s"]
        del scratch, commands
        gc.collect()

        # reads
        n = 200_000
        keys = [f"user/{i * 7919 % args.keys:09d}" for i in range(n)]
        started = time.perf_counter()
        for k in keys:
            machine.get(k)
        out["kv_get_per_s"] = n / (time.perf_counter() - started)
        started = time.perf_counter()
        for k in keys[:2000]:
            machine.range("user/", start_after=k, limit=100)
        out["kv_range100_per_s"] = 2000 / (time.perf_counter() - started)

        loop_stats = asyncio.run(
            loop_during_snapshot(machine, directory / "kv2.snap", args.value_size)
        )
        out.update({f"loop_{k}": v for k, v in loop_stats.items()})
        out["loop_apply_ratio_during_over_idle"] = (
            loop_stats["during_applies_per_s"] / loop_stats["idle_applies_per_s"]
        )
        del machine
        gc.collect()
        out["model"] = bench_model(args.model_items, directory)

    if args.json:
        print(json.dumps(out, indent=2))
        return
    model = out.pop("model")
    width = max(map(len, out))
    for k, v in out.items():
        print(f"{k:<{width}}  {v:,.4f}" if isinstance(v, float) else f"{k:<{width}}  {v:,}")
    print("model:")
    for k, v in model.items():
        print(
            f"  {k:<{width - 2}}  {v:,.4f}"
            if isinstance(v, float)
            else f"  {k:<{width - 2}}  {v:,}"
        )


if __name__ == "__main__":
    main()

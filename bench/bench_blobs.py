"""Blob throughput against the disk's own write rate (a script, not a test).

    python -m bench.bench_blobs                          # 20 blobs of 20 MiB
    python -m bench.bench_blobs --count 200 --size-mib 20   # the issue's 200 x 20 MiB
    python -m bench.bench_blobs --dir /mnt/fast --parallel 4

Prints one JSON object per measurement on stdout and a summary on stderr.

1. disk: files of --size-mib MiB written the way a node writes a blob (1 MiB
   writes, fdatasync, rename, directory fsync) in the directory the nodes
   use: one writer, then three at once (a local three-node cluster writes
   every blob three times, to the same disk); the best of three runs each.
2. put: --count blobs of random bytes, uploaded by --parallel clients, each
   upload through another node of a local three-node cluster (real
   processes, fsync on); MiB/s of acknowledged blobs. An upload is
   acknowledged once a majority holds it, the third copy follows.
3. get: every blob read back from every node, hashed as it arrives and
   checked against its SHA-256 (byte-equal, never held whole); MiB/s.

The ratios say what the blob path costs beside the disk: put against the
three-writer rate (the copies of a local cluster share the disk), get
against the one-writer rate. Exits non-zero if any acknowledged blob does
not read back byte-equal from any node.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ramraft.client import Client
from ramraft.server.storage._fs import datasync, fsync_dir
from ramraft.tools.bench import Cluster

MIB = 1 << 20


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _write_like_a_blob(directory: Path, name: str, size: int) -> None:
    piece = os.urandom(MIB)
    temporary = directory / f"{name}.part"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        left = size
        while left > 0:
            left -= os.write(fd, piece[: min(MIB, left)])
        datasync(fd)
    finally:
        os.close(fd)
    os.rename(temporary, directory / name)
    fsync_dir(str(directory))


def disk_rate(directory: Path, size: int, files: int, writers: int, runs: int = 3) -> float:
    """MiB/s of ``files`` blob-like files of ``size`` bytes by ``writers``
    threads at once: the best of ``runs`` (a shared or virtual disk is noisy;
    the best run is what the disk can do)."""
    best = 0.0
    for run in range(runs):
        target = directory / f"disk-{writers}-{run}"
        target.mkdir()
        started = time.perf_counter()
        with ThreadPoolExecutor(writers) as pool:
            names = [f"f{i}" for i in range(files)]
            list(pool.map(_write_like_a_blob, [target] * files, names, [size] * files))
        seconds = time.perf_counter() - started
        shutil.rmtree(target)
        best = max(best, files * size / MIB / seconds)
    return best


class Hashing:
    """A write-only sink that hashes what it gets."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        return len(data)


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_blobs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,  # the docstring's own layout
    )
    parser.add_argument("--count", type=int, default=20, help="blobs to upload (default 20)")
    parser.add_argument("--size-mib", type=int, default=20, help="MiB per blob (default 20)")
    parser.add_argument("--parallel", type=int, default=2, help="uploaders at once (default 2)")
    parser.add_argument("--dir", type=Path, default=None, help="where the nodes keep their data")
    args = parser.parse_args()
    size = args.size_mib * MIB
    root = Path(tempfile.mkdtemp(prefix="ramraft-bench-blobs-", dir=args.dir))
    try:
        return asyncio.run(run(root, args.count, size, args.parallel))
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def run(root: Path, count: int, size: int, parallel: int) -> int:
    sample = max(3, min(count, (512 * MIB) // size))
    one = disk_rate(root, size, sample, 1)
    three = disk_rate(root, size, sample, 3)
    emit({"measure": "disk", "writers": 1, "mib_per_s": round(one, 1), "files": sample})
    emit({"measure": "disk", "writers": 3, "mib_per_s": round(three, 1), "files": sample})
    say(f"disk: {one:,.0f} MiB/s one writer, {three:,.0f} MiB/s three at once")

    cluster = Cluster(None, inproc=False, root=root, tick_ms=0, fsync=True, node_args=[])
    await cluster.start()
    try:
        endpoints = cluster.endpoints
        with Client(endpoints, timeout=30) as client:
            deadline = time.monotonic() + 60
            while client.status().node.kv_version < 2:  # blobs need every node's support
                if time.monotonic() > deadline:
                    say("blobs were not enabled within 60 s")
                    return 1
                await asyncio.sleep(0.2)
        digests: dict[str, int] = {}
        lock = threading.Lock()

        def upload(seed: int) -> None:
            order = endpoints[seed % 3 :] + endpoints[: seed % 3]  # through another node each time
            data = payload(seed, size)
            with Client(order, timeout=30) as client:
                info = client.put_blob(data, timeout=600)
            with lock:
                digests[info.sha256] = seed

        started = time.perf_counter()
        with ThreadPoolExecutor(parallel) as pool:
            list(pool.map(upload, range(count)))
        put_seconds = time.perf_counter() - started
        put_rate = count * size / MIB / put_seconds
        emit(
            {
                "measure": "put",
                "blobs": count,
                "mib_each": size // MIB,
                "parallel": parallel,
                "seconds": round(put_seconds, 2),
                "mib_per_s": round(put_rate, 1),
                "of_disk_three_writers": round(put_rate / three, 3),
            }
        )
        say(f"put: {put_rate:,.0f} MiB/s ({put_rate / three:.0%} of the three-writer disk rate)")

        bad: list[str] = []

        def download(item: tuple[str, str]) -> None:
            endpoint, digest = item
            sink = Hashing()
            with Client(endpoint, timeout=30) as client:
                client.read_blob(digest, sink, timeout=600)
            if sink.hash.hexdigest() != digest:
                with lock:
                    bad.append(f"{endpoint} {digest}")

        jobs = [(e, d) for e in endpoints for d in digests]
        started = time.perf_counter()
        with ThreadPoolExecutor(parallel) as pool:
            list(pool.map(download, jobs))
        get_seconds = time.perf_counter() - started
        get_rate = len(jobs) * size / MIB / get_seconds
        emit(
            {
                "measure": "get",
                "reads": len(jobs),
                "seconds": round(get_seconds, 2),
                "mib_per_s": round(get_rate, 1),
                "of_disk_one_writer": round(get_rate / one, 3),
                "mismatches": len(bad),
            }
        )
        say(f"get: {get_rate:,.0f} MiB/s ({get_rate / one:.0%} of the one-writer disk rate)")
        for line in bad:
            say(f"MISMATCH {line}")
        return 1 if bad else 0
    finally:
        await cluster.stop()


if __name__ == "__main__":
    sys.exit(main())

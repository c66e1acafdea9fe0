"""Where one write's time goes, stage by stage, across the three nodes.

    python -m bench.trace_write                     # in-process writer, 1 in flight, 5 s
    python -m bench.trace_write --mode write        # the same through AsyncClient over gRPC
    python -m bench.trace_write --mode write --in-flight 64   # where writes wait under load

A profile (bench/profile_leader.py) says where the CPU goes; at one write in
flight the question is latency, which is mostly waiting: on a gRPC hop
between two processes, on a disk, on a thread or a core. This runs ``ramraft
bench`` with one writer (or ``--in-flight`` N), with every node process made
to note a timestamp (time.perf_counter: CLOCK_MONOTONIC, the same clock in
every process) at each step of a write's path, tagged with the entry's
index; then it lines the notes up by index and prints the median of each
stage:

    leader   propose -> the append leaves for a follower (the loop's turn)
    hop      the append leaves -> the follower has parsed it (gRPC)
    follower parsed -> its save starts; the save (pwrite + fdatasync);
             saved -> the acknowledgement leaves
    hop      the acknowledgement leaves -> the leader has parsed it (gRPC)
    leader   the first acknowledgement (or its own save, if later) ->
             the entry applied -> the proposer resumed (the proposal's
             future done: a task awaiting it, or a stream write's answer
             made from its callback, services.py _WriteNow)

and, beside them, the leader's own save on its disk thread (handed over ->
started -> done), which runs in parallel with the round trip. The stages of
the follower whose acknowledgement arrived first are the ones counted.

How the notes are taken: a ``sitecustomize`` module, written to a temporary
directory put first on PYTHONPATH, wraps a few functions of the runtime
(server/runtime/loop.py, transport.py) as their modules load. It costs a few
microseconds per note, so the total here is a little above what ``ramraft
bench`` reports without it (both are printed). A benchmark's companion,
never a test.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The tracer every node process loads (as sitecustomize). Kept small: it
# wraps functions, and writes one line per note to its own file. Its head:
# the file of notes of each process, and _note (bench/trace_read.py shares it).
TRACER_HEAD = r'''
import os, sys, time
_dir = os.environ.get("RAMRAFT_TRACE_DIR")
if _dir:
    import atexit

    class _File:
        """One file per process (a forked child opens its own)."""
        def __init__(self):
            self.open()
        def open(self):
            self.f = open(os.path.join(_dir, f"trace.{os.getpid()}"), "w", buffering=1 << 16)
            self.write = self.f.write

    _file = _File()
    os.register_at_fork(after_in_child=_file.open)
    atexit.register(lambda: _file.f.flush())

    class _Out:
        def write(self, text):
            _file.write(text)

    _out = _Out()
    _clock = time.perf_counter

    def _note(event, index, extra=""):
        _out.write(f"{_clock():.7f} {event} {index} {extra}\n")

'''

# What every tracer ends with: _patches (module name -> patch(module)),
# applied as each module loads.
TRACER_TAIL = r"""
    class _Finder:
        def find_spec(self, name, path=None, target=None):
            patch = _patches.pop(name, None)
            if patch is None:
                return None
            sys.meta_path.remove(self)
            try:
                import importlib.util
                spec = importlib.util.find_spec(name)
            finally:
                if _patches:
                    sys.meta_path.insert(0, self)
            loader = spec.loader
            execute = loader.exec_module
            def exec_module(module):
                execute(module)
                patch(module)
            loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _Finder())
"""

# The write path's notes (the stages below line them up).
TRACER = (
    TRACER_HEAD
    + r'''
    def _patch_loop(L):
        R = L.RaftRuntime
        # offer: every proposal's way in (propose awaits it; a stream's
        # write on the leader is answered from its future's callback).
        offer = R.offer
        def traced_offer(self, *args, **kwargs):
            started = _clock()
            proposal = offer(self, *args, **kwargs)
            def resumed(done):
                if done.cancelled() or done.exception() is not None:
                    return
                index = done.result()[0]
                _out.write(f"{started:.7f} propose {index} \n")
                _note("resumed", index)
            proposal.add_done_callback(resumed)
            return proposal
        R.offer = traced_offer
        persist = R._persist
        def traced_persist(self, rd, *args):
            last = rd.entries[-1].index if rd is not None and rd.entries else 0
            if last:
                _note("save_start", last)
            persist(self, rd, *args)
            if last:
                _note("save_end", last)
        R._persist = traced_persist
        run_on_disk = R.run_on_disk
        def traced_run_on_disk(self, fn, *args):
            rd = args[0] if args else None
            if getattr(rd, "entries", None):
                _note("disk_submit", rd.entries[-1].index)
            return run_on_disk(self, fn, *args)
        R.run_on_disk = traced_run_on_disk
        apply = R._apply
        def traced_apply(self, entry):
            apply(self, entry)
            _note("applied", entry.index)
        R._apply = traced_apply

    def _note_messages(messages, way, peer_of):
        """An append carrying entries, or an acknowledgement, that left
        (way "out") or arrived ("in"), with the peer it went to or came from."""
        now = _clock()
        for m in messages:
            name = m.type.name
            if name == "APPEND" and m.entries:
                _out.write(f"{now:.7f} append_{way} {m.entries[-1].index} {peer_of(m)}\n")
            elif name == "APPEND_RESP" and not m.reject:
                _out.write(f"{now:.7f} ack_{way} {m.index} {peer_of(m)}\n")

    def _patch_transport(T):
        serialize = T.serialize_batch
        def traced_serialize(part):
            _note_messages(part, "out", lambda m: m.dst)
            return serialize(part)
        T.serialize_batch = traced_serialize
        parse = T.parse_batch
        def traced_parse(raw):
            messages = parse(raw)
            _note_messages(messages, "in", lambda m: m.src)
            return messages
        T.parse_batch = traced_parse

    _patches = {
        "ramraft.server.runtime.loop": _patch_loop,
        "ramraft.server.runtime.transport": _patch_transport,
    }

'''
    + TRACER_TAIL
)

# One process's notes: {event: {index: [(time, extra), ...]}}.
Events = dict[str, dict[int, list[tuple[float, str]]]]


def load(directory: Path) -> dict[int, Events]:
    """Every process's notes, by pid."""
    notes: dict[int, Events] = {}
    for path in directory.glob("trace.*"):
        pid = int(path.suffix[1:])
        events: Events = collections.defaultdict(dict)
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split(" ", 3)
            if len(parts) < 3:
                continue
            try:
                t, event, index = float(parts[0]), parts[1], int(parts[2])
            except ValueError:
                continue  # a line cut short when a node was killed
            extra = parts[3].strip() if len(parts) > 3 else ""
            events[event].setdefault(index, []).append((t, extra))
        notes[pid] = events
    return notes


def stages(
    notes: dict[int, dict[str, dict[int, list[tuple[float, str]]]]],
) -> dict[str, list[float]]:
    """Per stage, the durations (µs) of every traced write."""
    # The process that proposed the most: another node may have led first,
    # for the few proposals made before the bench moved leadership.
    leader = max(notes, key=lambda p: len(notes[p].get("propose", {})), default=None)
    if leader is None or not notes[leader].get("propose"):
        raise SystemExit("bench.trace_write: no write was traced (did the nodes start?)")
    lead = notes[leader]
    followers = {p: ev for p, ev in notes.items() if p != leader}
    out: dict[str, list[float]] = collections.defaultdict(list)

    def first(events: Events, event: str, index: int) -> float | None:
        seen = events.get(event, {}).get(index)
        return min(t for t, _ in seen) if seen else None

    for index, proposed in sorted(lead["propose"].items()):
        t0 = proposed[0][0]
        resumed = first(lead, "resumed", index)
        applied = first(lead, "applied", index)
        sent = first(lead, "append_out", index)
        acks = lead.get("ack_in", {}).get(index, [])
        if None in (resumed, applied, sent) or not acks:
            continue  # a write whose notes are incomplete (the run's first and last)
        ack_at = min(t for t, _ in acks)
        # The follower whose acknowledgement left first: the one on the path.
        sent_acks = [
            (at, events)
            for events in followers.values()
            if (at := first(events, "ack_out", index)) is not None and at <= ack_at
        ]
        if not sent_acks:
            continue
        follower = min(sent_acks, key=lambda pair: pair[0])[1]
        f_in = first(follower, "append_in", index)
        f_start = first(follower, "save_start", index)
        f_end = first(follower, "save_end", index)
        f_ack = first(follower, "ack_out", index)
        own_submit = first(lead, "disk_submit", index)
        own_start = first(lead, "save_start", index)
        own_end = first(lead, "save_end", index)
        if None in (f_in, f_start, f_end, f_ack, own_start, own_end):
            continue
        assert resumed is not None and applied is not None and sent is not None
        assert f_in is not None and f_start is not None and f_end is not None and f_ack is not None
        assert own_start is not None and own_end is not None
        both = max(ack_at, own_end)
        row = {
            "leader: propose -> append leaves": sent - t0,
            "hop: append leaves -> follower parsed it": f_in - sent,
            "follower: parsed -> save starts": f_start - f_in,
            "follower: save (pwrite + fdatasync)": f_end - f_start,
            "follower: saved -> acknowledgement leaves": f_ack - f_end,
            "hop: acknowledgement leaves -> leader parsed it": ack_at - f_ack,
            "leader: waits for its own save after that": both - ack_at,
            "leader: ack (and own save) -> entry applied": applied - both,
            "leader: applied -> proposer resumed": resumed - applied,
            "total: propose -> resumed": resumed - t0,
            "(parallel) leader's save: handed to the disk thread -> started": (
                own_start - own_submit if own_submit is not None else float("nan")
            ),
            "(parallel) leader's save: pwrite + fdatasync": own_end - own_start,
        }
        for name, seconds in row.items():
            out[name].append(seconds * 1e6)
    return out


def tracer_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """The command line every tracer takes (--duration, --keep, --json),
    described by the third paragraph of its module's ``doc``; add yours."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {prog}",
        description=doc.split("\n\n")[2] if doc else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    parser.add_argument("--keep", type=Path, help="keep the raw notes in this directory")
    parser.add_argument("--json", action="store_true", help="print the medians as JSON")
    return parser


def tracer_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser``'s arguments, with --duration refused in one line unless positive."""
    args = parser.parse_args(argv)
    if args.duration <= 0:
        parser.error("--duration must be more than 0")
    return args


def main(argv: list[str] | None = None) -> int:
    parser = tracer_parser("bench.trace_write", __doc__)
    parser.add_argument(
        "--mode",
        choices=("inproc-write", "write"),
        default="inproc-write",
        help="inproc-write: NodeAPI.write in the leader's process (default); "
        "write: AsyncClient over gRPC from a client process",
    )
    parser.add_argument(
        "--in-flight", type=int, default=1, help="writes in flight (default 1: one writer)"
    )
    args = tracer_args(parser, argv)
    if args.in_flight < 1:
        parser.error("--in-flight must be at least 1")
    bench_run, durations = traced_bench(
        "bench.trace_write", TRACER, stages, args.keep, "--mode", args.mode,
        "--in-flight", str(args.in_flight), "--duration", str(args.duration),
    )  # fmt: skip
    bench_p50 = _bench_p50(bench_run)
    medians = {name: statistics.median(values) for name, values in durations.items() if values}
    writes = len(durations.get("total: propose -> resumed", []))
    if args.json:
        print(
            json.dumps(
                {
                    "writes": writes,
                    "in_flight": args.in_flight,
                    "bench_p50_ms": bench_p50,
                    "stages_us": medians,
                }
            )
        )
        return 0
    writers = "one writer" if args.in_flight == 1 else f"{args.in_flight} in flight"
    print(f"{args.mode}, {writers}: {writes} writes traced; medians in microseconds")
    for name, value in medians.items():
        print(f"  {value:8.0f}  {name}")
    if bench_p50 is not None:
        print(f"  {bench_p50 * 1000:8.0f}  p50 the bench measured (its caller's view, traced)")
    return 0


def traced_bench(
    prog: str,
    tracer: str,
    lineup: Callable[[dict[int, Events]], dict[str, list[float]]],
    keep: Path | None,
    *bench_args: str,
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Run ``ramraft bench BENCH_ARGS --json`` with ``tracer`` as every
    process's sitecustomize, noting into a directory (``keep``, or a
    temporary one); returns the bench's one run (its JSON) and what
    ``lineup`` makes of the notes."""
    with tempfile.TemporaryDirectory(prefix="ramraft-trace-") as tmp:
        root = Path(tmp)
        (root / "site").mkdir()
        (root / "site" / "sitecustomize.py").write_text(tracer)
        notes_dir = keep or root / "notes"
        notes_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, RAMRAFT_TRACE_DIR=str(notes_dir))
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(root / "site"), env.get("PYTHONPATH", "")) if p
        )
        command = [sys.executable, "-m", "ramraft", "bench", *bench_args, "--json", "--no-progress"]
        print(f"{prog}: " + " ".join(command[2:]), file=sys.stderr)
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.stderr.write(done.stderr[-2000:])
            raise SystemExit(f"{prog}: ramraft bench failed ({done.returncode})")
        return _bench_run(done.stdout), lineup(load(notes_dir))


def _bench_run(stdout: str) -> dict[str, Any]:
    """The first run of ``ramraft bench --json`` output ({} if it does not parse)."""
    try:
        document = json.loads(stdout)
    except json.JSONDecodeError:
        return {}
    runs = document.get("runs") if isinstance(document, dict) else None
    for run in runs or []:
        if isinstance(run, dict):
            return run
    return {}


def _bench_p50(run: dict[str, Any]) -> float | None:
    """The bench run's p50 in ms, if it has one."""
    p50 = run.get("p50_ms")
    return float(p50) if p50 is not None else None


if __name__ == "__main__":
    raise SystemExit(main())

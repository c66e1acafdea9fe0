"""Where a linearizable read's time goes, round by round, across the nodes
and the client.

    python -m bench.trace_read                      # 64 reads in flight, one AsyncClient, 5 s
    python -m bench.trace_read --in-flight 16

With one client the reads in flight travel in batches: a KV.StreamBatch
message carries them to the leader, one ReadIndex round confirms them, the
leader answers them 32 at a time (server/rpc/streams.py ANSWER_CHUNK), and
the callers of the first answers send the next batch, whose round starts
while the rest are answered; at 64 in flight two groups take turns. So a
round's cycle is a chain of steps, each of which waits for the one before;
this names them (a round whose next batch comes after the next round began
is left out). Every process (the three nodes and the client) notes a
timestamp (time.perf_counter: CLOCK_MONOTONIC, the same clock in every
process) at each step, the leader's tagged with the round; the medians:

    leader   the batch read -> its round starts (the reads admitted, the
             Raft loop's turn) -> the heartbeat leaves
    hop      the heartbeat leaves -> the follower has parsed it (gRPC)
    follower parsed -> its answer leaves (its Raft loop's turn)
    hop      the answer leaves -> the leader has parsed it
    leader   parsed -> the round released -> its first answers written
             (the first group's message)
    client   the answers written -> the next batch sent (the hop back, the
             callers resumed, their next reads made)
    hop      the batch sent -> the leader has read it

The follower counted is the one whose answer came first. Serializable reads
take the same path without the round (the leader's steps from "released"
on). The notes cost a few microseconds each, so the rate is a little below
``ramraft bench``'s (both are printed). A benchmark's companion, never a
test; the tracer's machinery is bench/trace_write.py's.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import json
import statistics

from bench.trace_write import (
    TRACER_HEAD,
    TRACER_TAIL,
    Events,
    traced_bench,
    tracer_args,
    tracer_parser,
)

# The read path's notes. Rounds are noted by their id (consensus/read_only.py
# round_context); messages between nodes by the round they carry.
READ_TRACER = (
    TRACER_HEAD
    + r"""
    def _patch_read_only(R):
        start_round = R.ReadOnly.start_round
        def traced_start_round(self, index, self_id):
            context = start_round(self, index, self_id)
            if context is not None:
                _note("round_start", R.parse_round_context(context))
            return context
        R.ReadOnly.start_round = traced_start_round
        release_through = R.ReadOnly.release_through
        def traced_release_through(self, context):
            _note("released", R.parse_round_context(context) or 0)
            return release_through(self, context)
        R.ReadOnly.release_through = traced_release_through

    def _round_of(context):
        return int.from_bytes(context, "big") if len(context) == 8 else None

    def _note_messages(messages, way):
        now = _clock()
        for m in messages:
            name = m.type.name
            if name in ("HEARTBEAT", "HEARTBEAT_RESP") and (r := _round_of(m.context)):
                _out.write(f"{now:.7f} {name.lower()}_{way} {r} {m.src}>{m.dst}\n")

    def _patch_transport(T):
        serialize = T.serialize_batch
        def traced_serialize(part):
            _note_messages(part, "out")
            return serialize(part)
        T.serialize_batch = traced_serialize
        parse = T.parse_batch
        def traced_parse(raw):
            messages = parse(raw)
            _note_messages(messages, "in")
            return messages
        T.parse_batch = traced_parse

    def _patch_streams(S):
        message = S._Message
        class _TracedMessage(message):
            __slots__ = ()
            def __init__(self, reservation, unanswered):
                _note("batch_in", unanswered)
                message.__init__(self, reservation, unanswered)
        S._Message = _TracedMessage
        written = S.StreamServer._written
        def traced_written(self, out):
            _note("answer_written", 0)
            written(self, out)
        S.StreamServer._written = traced_written

    def _patch_client(C):
        take_batch = C.take_batch
        def traced_take_batch(first, more):
            batch = take_batch(first, more)
            _note("batch_out", 0)
            return batch
        C.take_batch = traced_take_batch

    _patches = {
        "ramraft.consensus.read_only": _patch_read_only,
        "ramraft.server.runtime.transport": _patch_transport,
        "ramraft.server.rpc.streams": _patch_streams,
        "ramraft.client._stream": _patch_client,
    }
"""
    + TRACER_TAIL
)

STAGES = (
    "leader: batch read -> round starts",
    "leader: round starts -> heartbeat leaves",
    "hop: heartbeat leaves -> follower parsed it",
    "follower: parsed -> its answer leaves",
    "hop: answer leaves -> leader parsed it",
    "leader: parsed -> round released",
    "leader: released -> answers written",
    "client: answers written -> next batch sent",
    "hop: batch sent -> leader read it",
    "total: one round's cycle",
)


def _times(events: Events, event: str) -> list[float]:
    return sorted(t for seen in events.get(event, {}).values() for t, _ in seen)


def _after(times: list[float], t: float) -> float | None:
    """The first of ``times`` (sorted) at or after ``t``."""
    i = bisect.bisect_left(times, t)
    return times[i] if i < len(times) else None


def _before(times: list[float], t: float) -> float | None:
    """The last of ``times`` (sorted) at or before ``t``."""
    i = bisect.bisect_right(times, t)
    return times[i - 1] if i else None


def stages(notes: dict[int, Events]) -> dict[str, list[float]]:
    """Per stage, the durations (µs) of every round traced whole."""
    leader = max(notes, key=lambda p: len(notes[p].get("round_start", {})), default=None)
    if leader is None or not notes[leader].get("round_start"):
        raise SystemExit("bench.trace_read: no read round was traced (did the nodes start?)")
    lead = notes[leader]
    client = max(notes, key=lambda p: len(notes[p].get("batch_out", {}).get(0, [])))
    batches_in = _times(lead, "batch_in")
    written = _times(lead, "answer_written")
    sent = _times(notes[client], "batch_out")
    starts = sorted((seen[0][0], r) for r, seen in lead["round_start"].items())
    out: dict[str, list[float]] = collections.defaultdict(list)

    for (t0, r), (t_next, _) in itertools.pairwise(starts):
        row = _round(notes, leader, r, t0, t_next, batches_in, written, sent)
        if row is None:
            continue  # a round whose notes are incomplete (the run's first and last)
        for name, seconds in zip(STAGES, row, strict=True):
            out[name].append(seconds * 1e6)
    return out


def _first(events: Events, event: str, r: int, peer: str = "") -> float | None:
    """When ``event`` was first noted for round ``r`` (by a message whose
    "src>dst" contains ``peer``)."""
    seen = [t for t, extra in events.get(event, {}).get(r, []) if peer in extra]
    return min(seen) if seen else None


def _round(
    notes: dict[int, Events],
    leader: int,
    r: int,
    t0: float,
    t_next: float,
    batches_in: list[float],
    written: list[float],
    sent: list[float],
) -> tuple[float, ...] | None:
    """The stages of round ``r`` (started at ``t0``; the next at ``t_next``),
    in STAGES' order, or None if some step was not noted."""
    lead = notes[leader]
    arrived = _before(batches_in, t0)
    answered = _first(lead, "heartbeat_resp_in", r)
    released = _first(lead, "released", r)
    if arrived is None or answered is None or released is None:
        return None
    # The follower whose answer arrived first, and its steps.
    peer = next(e.split(">")[0] for t, e in lead["heartbeat_resp_in"][r] if t == answered)
    hb_out = _first(lead, "heartbeat_out", r, f">{peer}")
    hb_in = resp_out = None
    for pid, events in notes.items():
        if pid != leader and _first(events, "heartbeat_in", r, f">{peer}") is not None:
            hb_in = _first(events, "heartbeat_in", r)
            resp_out = _first(events, "heartbeat_resp_out", r)
    answers = _after(written, released)
    next_batch = _after(sent, answers) if answers is not None else None
    next_in = _after(batches_in, next_batch) if next_batch is not None else None
    if (
        hb_out is None
        or hb_in is None
        or resp_out is None
        or answers is None
        or next_batch is None
        or next_in is None
        or next_in > t_next
    ):
        return None
    return (
        t0 - arrived,
        hb_out - t0,
        hb_in - hb_out,
        resp_out - hb_in,
        answered - resp_out,
        released - answered,
        answers - released,
        next_batch - answers,
        next_in - next_batch,
        t_next - t0,
    )


def main(argv: list[str] | None = None) -> int:
    parser = tracer_parser("bench.trace_read", __doc__)
    parser.add_argument("--in-flight", type=int, default=64, help="reads in flight (default 64)")
    args = tracer_args(parser, argv)
    if args.in_flight < 1:
        parser.error("--in-flight must be at least 1")
    run, durations = traced_bench(
        "bench.trace_read", READ_TRACER, stages, args.keep,
        "--mode", "read-linearizable", "--in-flight", str(args.in_flight),
        "--duration", str(args.duration),
    )  # fmt: skip
    medians = {name: statistics.median(durations[name]) for name in STAGES if durations[name]}
    rounds = len(durations.get("total: one round's cycle", []))
    rate = run.get("reads_per_s")
    if args.json:
        print(json.dumps({"rounds": rounds, "reads_per_s": rate, "stages_us": medians}))
        return 0
    print(f"linearizable reads, {args.in_flight} in flight: {rounds} rounds traced; medians in µs")
    for name, value in medians.items():
        print(f"  {value:8.0f}  {name}")
    if rate:
        print(f"  {rate:8.0f}  reads/s the bench measured (traced)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

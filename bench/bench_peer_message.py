"""What one lone message costs on a peer link: a Raft-sized message sent on
its own every ``--gap-ms`` (as a linearizable read round's heartbeat is,
one per round), over a long-lived client stream, with no Raft and no disk.

The modes, each against a fresh receiver process:

- ``idle``: the sender's loop doing only its sleeps, no message: the
  baseline the other modes' sender CPU is counted above.
- ``socket``: an asyncio TCP stream with a 4-byte length before each
  message: what the kernel and asyncio alone cost, the floor under any
  transport.
- ``aio``: grpc.aio's ``call.write`` from the event loop on a stream_unary
  call, as ramraft's PeerLink sends (server/runtime/transport.py); the
  receiver is a grpc.aio server's ``async for``, as the PeerServicer's.
- ``sync-thread``: grpc's blocking API, the call fed from a queue that
  grpc's own thread consumes; the event loop only puts the message in the
  queue. The receiver as in ``aio``.

So the question "would another way of driving grpc-python make a lone
message cheaper" has a figure from one window; the answer is in README's
Performance section ("what limits").

    python -m bench.bench_peer_message                  # every mode, 4 s each, 1 ms apart
    python -m bench.bench_peer_message --modes idle,aio --gap-ms 0.5 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import queue
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

SERVICE = "bench.Sink"
PAYLOAD = b"h" * 64  # a heartbeat with a round's context, about
MODES = ("idle", "socket", "aio", "sync-thread")


def _identity(data: bytes) -> bytes:
    return data


def _receive(kind: str, port: Any, ready: Any, received: Any, cpu: Any, ask: Any) -> None:
    """The receiving side, on a port the kernel picks: counts what arrives.
    Its own CPU time goes in ``cpu`` when it is ready and again when ``ask``
    is set (``time.process_time``: nanoseconds, where /proc counts 10 ms
    ticks, which a short run's few milliseconds fall between), by a thread
    that waits for the question, off the path each message takes."""

    def note_cpu_when_asked() -> None:
        ask.wait()
        cpu.value = time.process_time()
        ask.clear()  # the answer is in

    threading.Thread(target=note_cpu_when_asked, daemon=True).start()

    async def grpc_sink(requests: Any, context: Any) -> bytes:
        async for _ in requests:
            received.value += 1
        return b""

    async def socket_sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                size = int.from_bytes(await reader.readexactly(4), "big")
                await reader.readexactly(size)
                received.value += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        if kind == "socket":
            server = await asyncio.start_server(socket_sink, "127.0.0.1", 0)
            port.value = server.sockets[0].getsockname()[1]
            cpu.value = time.process_time()
            ready.set()
            await server.serve_forever()
        grpc_server = grpc.aio.server()
        handlers = {
            "Sink": grpc.stream_unary_rpc_method_handler(
                grpc_sink, request_deserializer=_identity, response_serializer=_identity
            )
        }
        grpc_server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        port.value = grpc_server.add_insecure_port("127.0.0.1:0")
        await grpc_server.start()
        cpu.value = time.process_time()
        ready.set()
        await grpc_server.wait_for_termination()

    asyncio.run(main())


async def _send(mode: str, port: int, seconds: float, gap: float) -> tuple[int, int, float]:
    """Send one message every ``gap`` for ``seconds``; (messages, turns of
    the loop, this process's CPU seconds meanwhile, grpc's threads
    included)."""
    address = f"127.0.0.1:{port}"
    send: Callable[[bytes], Awaitable[None]] | None = None  # idle: none

    async def finish() -> None:
        return None

    if mode == "socket":
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        frame = len(PAYLOAD).to_bytes(4, "big") + PAYLOAD

        async def send(_: bytes) -> None:
            writer.write(frame)

        async def finish() -> None:
            writer.close()
    elif mode == "aio":
        channel = grpc.aio.insecure_channel(address)
        call = channel.stream_unary(
            f"/{SERVICE}/Sink", request_serializer=_identity, response_deserializer=_identity
        )()
        send = call.write

        async def finish() -> None:
            call.cancel()
            await channel.close()
    elif mode == "sync-thread":
        sync_channel = grpc.insecure_channel(address)
        outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        future = sync_channel.stream_unary(
            f"/{SERVICE}/Sink", request_serializer=_identity, response_deserializer=_identity
        ).future(iter(outbox.get, None))

        async def send(message: bytes) -> None:
            outbox.put(message)

        async def finish() -> None:
            outbox.put(None)
            future.cancel()
            sync_channel.close()

    if send is not None:
        await send(PAYLOAD)  # connected before measuring
    await asyncio.sleep(0.2)
    sent = turns = 0
    cpu0 = time.process_time()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if send is not None:
            await send(PAYLOAD)
            sent += 1
        turns += 1
        await asyncio.sleep(gap)
    await asyncio.sleep(0.05)  # what grpc's thread still had queued
    used = time.process_time() - cpu0
    await finish()
    return sent, turns, used


def measure(modes: list[str], seconds: float, gap: float) -> list[dict[str, Any]]:
    """One run per mode, each against a receiver process of its own."""
    spawn = mp.get_context("spawn")
    rows: list[dict[str, Any]] = []
    for mode in modes:
        port, ready, received = spawn.Value("i", 0), spawn.Event(), spawn.Value("l", 0)
        cpu, ask = spawn.Value("d", 0.0), spawn.Event()
        kind = "socket" if mode == "socket" else "grpc"
        receiver = spawn.Process(
            target=_receive, args=(kind, port, ready, received, cpu, ask), daemon=True
        )
        receiver.start()
        try:
            if not ready.wait(30):
                raise RuntimeError("the receiver did not start")
            cpu0 = cpu.value
            start = time.monotonic()
            sent, turns, sender_cpu = asyncio.run(_send(mode, int(port.value), seconds, gap))
            elapsed = time.monotonic() - start
            expected = sent + (1 if mode != "idle" else 0)
            deadline = time.monotonic() + 2.0
            while received.value < expected and time.monotonic() < deadline:
                time.sleep(0.01)  # the last messages still on their way
            ask.set()
            deadline = time.monotonic() + 5.0
            while ask.is_set() and time.monotonic() < deadline:
                time.sleep(0.001)  # the receiver's thread notes its CPU time
            receiver_cpu = cpu.value - cpu0
            got = int(received.value) - (1 if mode != "idle" else 0)  # the connecting one
        finally:
            receiver.kill()
            receiver.join(5)
        rows.append(
            {
                "mode": mode,
                "gap_ms": round(gap * 1000, 3),
                "seconds": round(elapsed, 2),
                "turns": turns,
                "sent": sent,
                "received": got,
                "sender_cpu_s": round(sender_cpu, 6),
                "receiver_cpu_s": round(receiver_cpu, 6),
            }
        )
    idle = next((r for r in rows if r["mode"] == "idle"), None)
    for row in rows:
        if row["sent"]:
            row["sender_us_per_message"] = round(1e6 * row["sender_cpu_s"] / row["sent"], 1)
            row["receiver_us_per_message"] = round(
                1e6 * row["receiver_cpu_s"] / max(1, row["received"]), 1
            )
            if idle is not None:
                # The idle run's sleeps cost the same per turn; a run with
                # messages makes fewer turns in the same time (each turn
                # also sends), so scale the idle CPU by its own turns.
                idle_per_turn = idle["sender_cpu_s"] / max(1, idle["turns"])
                row["sender_us_above_idle"] = round(
                    1e6 * (row["sender_cpu_s"] / row["sent"] - idle_per_turn), 1
                )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per mode (default 4)")
    parser.add_argument(
        "--gap-ms", type=float, default=1.0, help="sleep between messages (default 1 ms)"
    )
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)} (default all)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON line per mode")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        parser.error(f"unknown mode(s) {', '.join(unknown) or '(none)'}; choose from {MODES}")
    if args.seconds <= 0 or args.gap_ms <= 0:
        parser.error("--seconds and --gap-ms must be positive")
    try:
        rows = measure(modes, args.seconds, args.gap_ms / 1000)
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    for row in rows:
        if args.json:
            print(json.dumps(row), flush=True)
        elif not row["sent"]:
            print(f"{row['mode']:11}  sender {row['sender_cpu_s']:.3f} s of CPU for its sleeps")
        else:
            above = row.get("sender_us_above_idle")
            print(
                f"{row['mode']:11}  {row['sent']:6,} sent, {row['received']:6,} received  "
                f"sender {row['sender_us_per_message']:6.1f} us/message"
                + (f" ({above:.1f} above idle)" if above is not None else "")
                + f"  receiver {row['receiver_us_per_message']:6.1f} us/message",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

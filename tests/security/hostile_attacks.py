"""The attacks of issue 17, each bounded in time, run as a process of its
own (so that it does not share a GIL with the well-behaved client whose
service tests/security/test_hostile.py measures):

    python -m tests.security.hostile_attacks ATTACK SECONDS JSON_OPTIONS

JSON_OPTIONS: {"grpc": [addresses], "http": [addresses], "certs": dir,
"token": read token, "write_token": ..., "source": "127.0.0.2"}. Prints one
JSON object of counters when done. Every attacker connects from ``source``
(another loopback address), as an attacker on another machine would.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ramraft.proto import kv_pb2
from tests.security.h2raw import RawCaller, grpc_message

Options = dict[str, Any]


def tls_context(options: Options) -> ssl.SSLContext:
    certs = Path(options["certs"])
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    context.load_cert_chain(str(certs / "client.pem"), str(certs / "client-key.pem"))
    return context


def caller(options: Options, address: str, window: int = 65_535) -> RawCaller:
    return RawCaller(
        address, tls=tls_context(options), source=options["source"], window=window, timeout=2
    )


def _until(seconds: float) -> Callable[[], bool]:
    end = time.monotonic() + seconds
    return lambda: time.monotonic() < end


def _hold_unread(
    options: Options,
    seconds: float,
    counts: Counter[str],
    connections: int,
    calls: int,
    start: Callable[[RawCaller], None],
) -> None:
    """``connections`` per node, each making ``calls`` with ``start`` and
    never reading an answer, held for ``seconds``."""
    held = []
    for address in options["grpc"]:
        for _ in range(connections):
            c = caller(options, address)
            for _ in range(calls):
                start(c)
                counts["sent"] += 1
            held.append(c)
    running = _until(seconds)
    while running():
        time.sleep(0.1)
    for c in held:
        c.close()


def stream_ranges(options: Options, seconds: float, counts: Counter[str]) -> None:
    """KV.Streams full of Range requests whose answers are never read
    (issue 17 item 1: 40 ranges of ~16 MiB took a node to 850 MiB)."""
    request = kv_pb2.StreamRequest(
        id=1, range=kv_pb2.RangeRequest(prefix="data/", consistency=kv_pb2.SERIALIZABLE)
    )
    message = grpc_message(request.SerializeToString())
    streams: dict[int, int] = {}

    def start(c: RawCaller) -> None:
        if id(c) not in streams:
            streams[id(c)] = c.open("/ramraft.v1.KV/Stream", options["token"])
        c.send(streams[id(c)], message, end=False)

    _hold_unread(options, seconds, counts, 4, 60, start)


def unary_ranges(options: Options, seconds: float, counts: Counter[str]) -> None:
    """Unary Ranges whose answers are never read (16 concurrent unary
    Ranges over 40 MiB peaked at 1.4 GiB)."""
    request = kv_pb2.RangeRequest(prefix="data/", consistency=kv_pb2.SERIALIZABLE)

    def start(c: RawCaller) -> None:
        c.call("/ramraft.v1.KV/Range", request.SerializeToString(), options["token"])

    _hold_unread(options, seconds, counts, 12, 8, start)


def big_puts(options: Options, seconds: float, counts: Counter[str]) -> None:
    """Puts of 60 MiB, six at a time, with a write token (item 2: on a
    shared port they took a node to 3.3 GiB before being refused)."""
    value = b"v" * (60 << 20)
    message = grpc_message(kv_pb2.PutRequest(key="big", value=value).SerializeToString())
    running = _until(seconds)

    def one(n: int) -> None:
        address = options["grpc"][n % len(options["grpc"])]
        while running():
            try:
                c = caller(options, address, window=1 << 20)
                stream = c.open("/ramraft.v1.KV/Put", options["write_token"])
                c.send(stream, message)
                counts["sent"] += 1
            except OSError as e:
                counts[type(e).__name__] += 1
                time.sleep(0.05)
                continue
            c.close()

    _threads(one, 6)


def hoard(options: Options, seconds: float, counts: Counter[str]) -> None:
    """Plain TCP connections that never handshake, held and re-opened, on
    every client gRPC and HTTP port (item 3: 1,024 of them locked out new
    clients until they closed)."""
    running = _until(seconds)
    targets = options["grpc"] + options["http"]

    def one(n: int) -> None:
        held: list[socket.socket] = []
        host_port = targets[n % len(targets)].rsplit(":", 1)
        while running():
            held = [s for s in held if _open(s)]
            while len(held) < 40 and running():
                try:
                    s = socket.create_connection(
                        (host_port[0], int(host_port[1])),
                        timeout=1,
                        source_address=(options["source"], 0),
                    )
                    held.append(s)
                    counts["connections"] += 1
                except OSError:
                    counts["refused"] += 1
                    break
            time.sleep(0.1)
        for s in held:
            s.close()

    _threads(one, 2 * len(targets))


def slowloris(options: Options, seconds: float, counts: Counter[str]) -> None:
    """HTTPS connections that send their headers one byte at a time (item
    3: 1,100 of them stopped every legitimate request for 40 s)."""
    running = _until(seconds)
    line = b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000

    def one(n: int) -> None:
        address = options["http"][n % len(options["http"])]
        host, port = address.rsplit(":", 1)
        held: list[tuple[ssl.SSLSocket, int]] = []
        while running():
            while len(held) < 25 and running():
                try:
                    raw = socket.create_connection(
                        (host, int(port)), timeout=1, source_address=(options["source"], 0)
                    )
                    held.append((tls_context(options).wrap_socket(raw, server_hostname=host), 0))
                    counts["connections"] += 1
                except OSError:
                    counts["refused"] += 1
                    break
            kept = []
            for s, sent in held:
                try:
                    s.sendall(line[sent : sent + 1])
                    kept.append((s, sent + 1))
                except OSError:
                    counts["cut_off"] += 1
                    s.close()
            held = kept
            time.sleep(0.2)
        for s, _ in held:
            s.close()

    _threads(one, 2 * len(options["http"]))


def slots(options: Options, seconds: float, counts: Counter[str]) -> None:
    """Calls that send headers but no message and no deadline (item 4: 3
    heavy and 200 light connections left others 0 of 78 calls), opened
    again as the node frees them."""
    running = _until(seconds)

    def one(n: int) -> None:
        address = options["grpc"][n % len(options["grpc"])]
        heavy = n < 3 * len(options["grpc"])
        while running():
            try:
                c = caller(options, address)
                for _ in range(30 if heavy else 1):
                    c.open("/ramraft.v1.KV/Get", options["token"])
                    counts["calls"] += 1
                c.read_frames(limit=10_000 if heavy else 100)  # until the node closes them
                c.close()
            except OSError as e:
                counts[type(e).__name__] += 1
                time.sleep(0.05)

    _threads(one, 3 * len(options["grpc"]) + 30)


def stream_refused(options: Options, seconds: float, counts: Counter[str]) -> None:
    """A KV.Stream of writes that a read token may not make, never reading
    the refusals (item 5: 239 -> 321 MiB in 45 s and growing)."""
    running = _until(seconds)
    put = kv_pb2.StreamRequest(id=7, put=kv_pb2.PutRequest(key="no", value=b"x" * 1000))
    message = grpc_message(put.SerializeToString())

    def one(n: int) -> None:
        address = options["grpc"][n % len(options["grpc"])]
        c = caller(options, address)
        c.sock.settimeout(0.5)
        stream = c.open("/ramraft.v1.KV/Stream", options["token"])
        while running():
            try:
                c.send(stream, message, end=False)
                counts["sent"] += 1
            except OSError:  # the node stopped reading: flow control holds us
                counts["blocked"] += 1
        c.close()

    _threads(one, len(options["grpc"]))


def leaky_headers(options: Options, seconds: float, counts: Counter[str]) -> None:
    """Requests whose Authorization headers carry real and made-up tokens:
    over the size limits (aiohttp's parser error used to log the header's
    first 100 bytes), wrong, and on calls that fail otherwise. The test then
    greps the nodes' logs for every token."""
    running = _until(seconds)
    tokens = [options["token"], options["write_token"], options["canary"]]

    def one(n: int) -> None:
        http = options["http"][n % len(options["http"])]
        address = options["grpc"][n % len(options["grpc"])]
        host, port = http.rsplit(":", 1)
        while running():
            token = tokens[counts["sent"] % len(tokens)]
            for header in (f"Bearer {token}" + "x" * 9000, f"Bearer {token}", f"Basic {token}"):
                try:
                    raw = socket.create_connection(
                        (host, int(port)), timeout=1, source_address=(options["source"], 0)
                    )
                    with tls_context(options).wrap_socket(raw, server_hostname=host) as s:
                        s.sendall(
                            f"GET /v1/kv/x HTTP/1.1\r\nHost: x\r\nAuthorization: {header}"
                            "\r\n\r\n".encode()
                        )
                        s.recv(1000)
                    counts["sent"] += 1
                except OSError:
                    counts["refused"] += 1
            try:
                c = caller(options, address)
                c.call("/ramraft.v1.KV/Put", b"\xff\xff", options["canary"])
                c.call("/ramraft.v1.KV/Get", b"\x0a\x01k", options["canary"] + "x" * 9000)
                c.read_frames(limit=20)
                c.close()
                counts["grpc"] += 1
            except OSError:
                counts["refused"] += 1

    _threads(one, 4)


ATTACKS: dict[str, Callable[[Options, float, Counter[str]], None]] = {
    "leaky-headers": leaky_headers,
    "stream-ranges": stream_ranges,
    "unary-ranges": unary_ranges,
    "big-puts": big_puts,
    "hoard": hoard,
    "slowloris": slowloris,
    "slots": slots,
    "stream-refused": stream_refused,
}


def _open(s: socket.socket) -> bool:
    try:
        s.setblocking(False)
        data = s.recv(1, socket.MSG_PEEK)
        return data != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        s.setblocking(True)


def _threads(target: Callable[[int], None], n: int) -> None:
    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main(argv: list[str]) -> int:
    name, seconds, options = argv[0], float(argv[1]), json.loads(argv[2])
    counts: Counter[str] = Counter()
    ATTACKS[name](options, seconds, counts)
    sys.stdout.write(json.dumps(dict(counts)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

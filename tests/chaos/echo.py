"""A tiny TCP/UDP echo server and probe, to test the lab without ramraft nodes.

python -m tests.chaos.echo serve --port 7000
    TCP: answers each line with "<hostname> <line>". UDP on the same port:
    writes "udp <payload>" to stdout for every datagram (so a test can see
    which packets arrived even when the way back is cut).
python -m tests.chaos.echo probe HOST PORT [--timeout S] [--udp]
    TCP: sends a line, prints the answer, exits 0; exits 1 on any failure.
    UDP: sends one datagram "<payload>" and exits 0.
"""

from __future__ import annotations

import argparse
import socket
import socketserver
import sys
import threading


class _TCPEcho(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(f"{socket.gethostname()} ".encode() + line)
            self.wfile.flush()


class _UDPLog(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        payload: bytes = self.request[0]
        sys.stdout.write(f"udp {payload.decode(errors='replace')}\n")
        sys.stdout.flush()


class _TCPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def serve(port: int) -> None:
    tcp = _TCPServer(("0.0.0.0", port), _TCPEcho)
    udp = socketserver.UDPServer(("0.0.0.0", port), _UDPLog)
    threading.Thread(target=udp.serve_forever, daemon=True).start()
    sys.stdout.write(f"serving on {port}\n")
    sys.stdout.flush()
    tcp.serve_forever()


def probe(host: str, port: int, timeout: float, udp: bool, payload: str) -> int:
    try:
        if udp:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(payload.encode(), (host, port))
            return 0
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(payload.encode() + b"\n")
            answer = s.makefile("rb").readline().decode().strip()
    except OSError as exc:
        sys.stderr.write(f"probe {host}:{port} failed: {exc}\n")
        return 1
    if not answer.endswith(payload):
        sys.stderr.write(f"probe {host}:{port}: unexpected answer {answer!r}\n")
        return 1
    sys.stdout.write(answer + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.echo")
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    p = sub.add_parser("probe")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--timeout", type=float, default=1.0)
    p.add_argument("--udp", action="store_true")
    p.add_argument("--payload", default="ping")
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        serve(args.port)
        return 0
    return probe(args.host, args.port, args.timeout, args.udp, args.payload)


if __name__ == "__main__":
    sys.exit(main())

"""``ramraft cluster``: N ``ramraft node`` processes on this machine, in the
foreground, looked after the way a real deployment looks after its nodes.

- It prints the addresses only once every node serves (each node writes
  ``<data-dir>/ports.json`` when it does); a node that cannot start (a port
  in use, a bad --app) stops the whole start-up, its own one-line error above.
- A node that exits later (``kill -9`` of the leader, say) is restarted after
  a short delay, with a line on stderr; the others keep serving meanwhile. A
  node that keeps crashing right after each start is restarted with a
  doubling delay and, after ``--restart-attempts`` such crashes in a row,
  left down with a message saying so.
- Ctrl-C (or SIGTERM) stops every node gracefully (SIGTERM, then SIGKILL
  after 20 s) and exits 0.

Output follows the CLI's rule: the addresses and the equivalent ``ramraft
node`` commands on stdout; what happens to the nodes on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ramraft.server.config import PORTS_FILE, ConfigError, parse_address

POLL = 0.2  # seconds between looks at the nodes
START_TIMEOUT = 60.0  # for every node to serve at start-up
STOP_TIMEOUT = 20.0  # per node, after SIGTERM, before SIGKILL
HALT_CHECK_EVERY = 2.0  # seconds between asking a serving node whether it halted
STABLE_AFTER = 10.0  # a node that ran this long before exiting was not crash-looping


def add_cluster_parser(sub: Any) -> None:
    p = sub.add_parser(
        "cluster",
        help="run a local cluster in the foreground",
        description="Run a local cluster of N nodes in the foreground: a node that exits is "
        "restarted, Ctrl-C stops them all.",
        epilog="Run it from the directory where ./ramraft-data should go; with --app, from the "
        "directory holding the app's package (for examples.notes:app, the repository root), or "
        "give --app-path.",
    )
    p.add_argument("--nodes", type=int, default=3, help="how many nodes (default 3)")
    p.add_argument(
        "--data-dir",
        default="ramraft-data",
        help="parent of the nodes' data dirs (default ./ramraft-data)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address every node binds and is reached at (default 127.0.0.1)",
    )
    p.add_argument(
        "--grpc-port", type=int, default=7001, help="first node's gRPC port (default 7001)"
    )
    p.add_argument(
        "--http-port",
        type=int,
        default=8001,
        help="first node's HTTP port (default 8001; 0: no web tier)",
    )
    p.add_argument(
        "--app", default="", help="serve an application model: MODULE:FACTORY (see examples/)"
    )
    p.add_argument(
        "--app-path",
        default="",
        help="directories to import --app from, ':'-separated (default: the current "
        "directory, else the ramraft checkout this command runs from)",
    )
    p.add_argument(
        "--node-arg", action="append", default=[], help="extra argument for every node (repeatable)"
    )
    p.add_argument(
        "--tls-dir",
        default="",
        help="turn TLS on with the certificates in this directory (made there with "
        "`ramraft certs` if it has none)",
    )
    p.add_argument(
        "--restart-delay",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="wait before restarting a node that exited (default 1); doubled after each "
        f"exit within {STABLE_AFTER:.0f} s of a start",
    )
    p.add_argument(
        "--restart-attempts",
        type=int,
        default=5,
        metavar="N",
        help="leave a node down after N exits in a row, each within "
        f"{STABLE_AFTER:.0f} s of its start (default 5)",
    )
    p.set_defaults(func=run_cluster)


@dataclass
class LocalNode:
    id: str
    argv: list[str]  # after `python -m ramraft`
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    quick_exits: int = 0  # exits in a row, each within STABLE_AFTER of its start
    restart_at: float | None = None  # when a restart is due
    given_up: bool = False
    ports: dict[str, Any] = field(default_factory=dict)
    halt_checked_at: float = 0.0  # when HaltWatch last asked it
    halt_said: bool = False  # its halt has been reported (this start)

    def start(self, env: dict[str, str]) -> None:
        # A stale file would pass for this start's; the node says what is
        # wrong with a data directory that is not one.
        with contextlib.suppress(OSError):
            (self.data_dir / PORTS_FILE).unlink(missing_ok=True)
        # The node starts with SIGINT ignored (that survives exec; the node
        # handles it itself once it runs): a Ctrl-C at the terminal reaches
        # the whole process group, and a node still starting its interpreter
        # would print Python's tracebacks. This command stops them (SIGTERM).
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "ramraft", *self.argv], env=env)
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        self.started_at = time.monotonic()
        self.restart_at = None
        self.ports = {}
        self.halt_checked_at, self.halt_said = 0.0, False

    def serving(self) -> bool:
        """Whether it serves (its ports.json names its pid); reads the ports."""
        if self.proc is None:
            return False
        try:
            ports = json.loads((self.data_dir / PORTS_FILE).read_text())
        except (OSError, ValueError):
            return False
        if ports.get("pid") != self.proc.pid:
            return False
        self.ports = ports
        return True

    def command(self) -> str:
        return shlex.join(["ramraft", *self.argv])


class HaltWatch:
    """Asks each serving node now and then (Admin Status) whether it halted
    at an entry its code cannot apply, and says so once per start: such a
    node runs on, so nothing else here would tell the user why it refuses
    every request. A node that does not answer (starting, down) is asked
    again later. On nodes with --auth-tokens it asks with RAMRAFT_TOKEN, else
    with a token of their token file (``status_token``); refused all the
    same, it says so once and asks no more (each refusal is a warning in
    the node's log)."""

    def __init__(self, tls_dir: Path | None, token: str | None = None) -> None:
        self.tls_dir = tls_dir
        self.token = token
        self.clients: dict[str, Any] = {}
        self.refused = False

    def check(self, node: LocalNode, now: float) -> None:
        if self.refused or node.halt_said or now - node.halt_checked_at < HALT_CHECK_EVERY:
            return
        node.halt_checked_at = now
        if not node.serving():
            return
        endpoint = str(node.ports["grpc"])
        from ramraft.client import PermissionDenied, Unauthenticated

        try:
            client = self.clients.get(endpoint) or self._client(endpoint)
            halted = client.status(endpoint=endpoint).node.halted
        except (Unauthenticated, PermissionDenied) as e:
            self.refused = True
            _say(
                f"not watching the nodes for a halt: {node.id} refused the status call "
                f"({e.details or e}); set RAMRAFT_TOKEN to a read token of --auth-tokens"
            )
            return
        except Exception:
            return
        if halted:
            node.halt_said = True
            _say(
                f"{node.id} halted: {halted}. It refuses every request until it is "
                "restarted with code that can apply that entry (the --app the cluster ran)"
            )

    def _client(self, endpoint: str) -> Any:
        from ramraft.client import Client, TLSOptions

        tls = TLSOptions.from_files(*_client_tls(self.tls_dir)) if self.tls_dir else None
        client = Client(endpoint, timeout=1.0, tls=tls, token=self.token)
        self.clients[endpoint] = client
        return client

    def close(self) -> None:
        for client in self.clients.values():
            with contextlib.suppress(Exception):
                client.close()
        self.clients.clear()


def status_token(node_args: list[str], environ: Mapping[str, str]) -> str | None:
    """The token HaltWatch asks with: RAMRAFT_TOKEN if set, else the least
    powerful plain token (read, then write, then admin) of the nodes'
    --auth-tokens file (a --node-arg, or RAMRAFT_AUTH_TOKENS, which the
    nodes inherit), which is this user's own file; None without tokens, or
    when the file holds only digests of them."""
    if environ.get("RAMRAFT_TOKEN"):
        return environ["RAMRAFT_TOKEN"]
    path = environ.get("RAMRAFT_AUTH_TOKENS")
    for at, arg in enumerate(node_args):
        if arg.startswith("--auth-tokens="):
            path = arg.split("=", 1)[1]
        elif arg == "--auth-tokens" and at + 1 < len(node_args):
            path = node_args[at + 1]
    if not path:
        return None
    from ramraft.server.security.auth import AuthConfigError, is_digest, token_lines

    try:
        lines = token_lines(Path(path).read_text(), path)
    except (OSError, UnicodeDecodeError, AuthConfigError):
        return None  # the nodes say what is wrong with it
    plain = [(role, secret) for role, _, secret in lines if not is_digest(secret)]
    return min(plain, key=lambda entry: entry[0])[1] if plain else None


def _client_tls(tls_dir: Path) -> tuple[Path, Path, Path]:
    """The CA, certificate and key a client of the cluster uses (``ramraft
    certs`` writes them into --tls-dir)."""
    return tls_dir / "ca.pem", tls_dir / "client.pem", tls_dir / "client-key.pem"


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _say(text: str) -> None:
    print(f"ramraft cluster: {text}", file=sys.stderr, flush=True)


def _find_app(args: argparse.Namespace) -> str | None:
    """The --app-path the nodes need for --app, checked by importing the app
    here first; None (after a message) if it cannot be imported."""
    from ramraft.server.hosting import AppLoadError
    from ramraft.tools.node_cli import load_app_from_args

    paths = [args.app_path] if args.app_path else [".", str(_checkout())]
    errors = []
    for app_path in paths:
        try:
            load_app_from_args(argparse.Namespace(app=args.app, app_path=app_path))
        except AppLoadError as e:
            errors.append(str(e))
            continue
        if app_path != paths[0]:
            _say(f"--app {args.app}: not in the current directory; found in {app_path}")
        return str(Path(app_path).resolve())
    where = (
        f"--app-path {args.app_path}"
        if args.app_path
        else f"the current directory ({Path.cwd()}) or {_checkout()}"
    )
    # Where the module was found, what went wrong after the import says most.
    found_there = [e for e in errors if "cannot import" not in e]
    if found_there:
        # Found and imported: the app's own code failed; where it was
        # looked for is not the problem.
        _say(f"{found_there[0].removeprefix('--app ')}; fix the application and start again")
        return None
    error = errors[0]
    _say(
        f"{error.removeprefix('--app ')}; looked in {where}. Run ramraft cluster from the "
        "directory that holds the app's package (for examples.notes:app, the repository root), "
        "or give --app-path DIR"
    )
    return None


def _checkout() -> Path:
    """The directory holding the ramraft package (a source checkout has
    examples/ there)."""
    import ramraft

    return Path(ramraft.__file__).resolve().parent.parent


def run_cluster(args: argparse.Namespace) -> int:
    if not 1 <= args.nodes <= 9:
        _say("--nodes must be between 1 and 9")
        return 2
    if not 0 <= args.restart_delay < math.inf or args.restart_attempts < 1:  # nan too
        _say("--restart-delay must be a number of seconds >= 0 and --restart-attempts >= 1")
        return 2
    g, h, n = args.grpc_port, args.http_port, args.nodes
    if g < 1:
        _say(f"--grpc-port {g}: must be a port number (the nodes' addresses must be known)")
        return 2
    if h and h < g + n and g < h + n:
        # Each node takes the next port of each run: one node's HTTP port
        # would be another's gRPC port ("in use by another process").
        _say(
            f"--http-port {h}: the {n} nodes use ports {g}-{g + n - 1} for gRPC and "
            f"{h}-{h + n - 1} for HTTP; give runs that do not overlap (or 0: no web tier)"
        )
        return 2
    ids = [f"n{i + 1}" for i in range(args.nodes)]
    grpc_addresses = {i: f"{args.host}:{args.grpc_port + n}" for n, i in enumerate(ids)}
    try:
        for address in grpc_addresses.values():
            parse_address(address, "--host/--grpc-port")
    except ConfigError as e:
        _say(str(e))
        return 2
    app_path = ""
    if args.app:
        found = _find_app(args)
        if found is None:
            return 2
        app_path = found
    peers = ",".join(f"{i}={a}" for i, a in grpc_addresses.items())
    data = Path(args.data_dir)
    tls_dir = Path(args.tls_dir) if args.tls_dir else None
    if tls_dir is not None and not all(
        (tls_dir / name).exists() for name in ["ca.pem", *(f"{i}.pem" for i in ids)]
    ):
        from ramraft.tools.certs import CertsError, make_cluster_certs

        try:
            make_cluster_certs(tls_dir, {i: [args.host, "localhost"] for i in ids})
        except (CertsError, OSError) as e:
            _say(f"--tls-dir {tls_dir}: {e}")
            return 2
    nodes: list[LocalNode] = []
    for n, node_id in enumerate(ids):
        argv = ["node", "--id", node_id, "--peers", peers, "--data-dir", str(data / node_id)]
        argv += args.node_arg
        if args.http_port:
            argv += ["--http", f"{args.host}:{args.http_port + n}"]
        if args.app:
            argv += ["--app", args.app, "--app-path", app_path]
        if tls_dir is not None:
            argv += ["--tls-cert", str(tls_dir / f"{node_id}.pem")]
            argv += ["--tls-key", str(tls_dir / f"{node_id}-key.pem")]
            argv += ["--tls-ca", str(tls_dir / "ca.pem")]
        nodes.append(LocalNode(node_id, argv, data / node_id))
    env = dict(os.environ, RAMRAFT_LOG_LEVEL=os.environ.get("RAMRAFT_LOG_LEVEL", "warning"))

    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)  # its terminal closed: stop the nodes, then exit
    _say(f"starting {args.nodes} nodes, data under {data.resolve()}")
    try:
        if not _start_all(nodes, env, lambda: stop):
            return 1 if not stop else 0
        _print_addresses(nodes, args, tls_dir)
        watch = HaltWatch(tls_dir, status_token(args.node_arg, env))
        try:
            _supervise(nodes, env, args, lambda: stop, watch)
        finally:
            watch.close()
    finally:
        _stop_all(nodes)
    return 0 if any(not node.given_up for node in nodes) else 1


def _start_all(nodes: list[LocalNode], env: dict[str, str], stopped: Any) -> bool:
    """Start every node and wait until all serve. False if one exited first
    (its own error is on stderr above) or we were told to stop."""
    for node in nodes:
        node.start(env)
    deadline = time.monotonic() + START_TIMEOUT
    waiting = list(nodes)
    while waiting and not stopped():
        for node in list(waiting):
            assert node.proc is not None
            if node.serving():
                waiting.remove(node)
            elif node.proc.poll() is not None:
                _say(
                    f"{node.id} could not start ({_exit_text(node.proc.returncode)}; its error "
                    "is above); stopping the others"
                )
                return False
        if time.monotonic() > deadline:
            _say(f"{', '.join(n.id for n in waiting)} did not start within {START_TIMEOUT:.0f} s")
            return False
        time.sleep(POLL / 4)
    return not stopped()


def _print_addresses(
    nodes: list[LocalNode], args: argparse.Namespace, tls_dir: Path | None
) -> None:
    scheme = "https" if tls_dir is not None else "http"
    lines = [f"ramraft cluster: {len(nodes)} nodes serving"]
    for node in nodes:
        http = node.ports.get("http")
        line = f"  {node.id}: grpc {node.ports['grpc']}"
        if http:
            line += f"  http {scheme}://{http}/"
            if args.app:
                line += f"  app {scheme}://{http}/app/"
        lines.append(line + f"  (pid {node.ports['pid']})")
    lines.append("the same nodes by hand, one terminal each (stop this cluster first):")
    lines += [f"  {node.command()}" for node in nodes]
    tls_options = ""
    if tls_dir is not None:
        # One port for peers and clients: clients need a certificate too.
        ca, cert, key = _client_tls(tls_dir)
        tls_options = f" --tls-ca {ca} --tls-cert {cert} --tls-key {key}"
    if any("--auth-tokens" in arg for arg in args.node_arg):
        tls_options += " --token-file FILE  (a file holding one of the token file's tokens)"
    endpoints = ",".join(str(node.ports["grpc"]) for node in nodes)
    lines.append(f"try: ramraft put hello world --endpoints {endpoints}{tls_options}")
    lines.append("A node that exits is restarted; Ctrl-C stops the cluster.")
    print("\n".join(lines), flush=True)


def _supervise(
    nodes: list[LocalNode],
    env: dict[str, str],
    args: argparse.Namespace,
    stopped: Any,
    watch: HaltWatch | None = None,
) -> None:
    announced: set[str] = set()  # restarted nodes whose serving we have not said yet
    while not stopped():
        now = time.monotonic()
        for node in nodes:
            if node.given_up or node.proc is None:
                continue
            if node.restart_at is not None:
                if now >= node.restart_at and not stopped():
                    node.start(env)
                    _say(f"{node.id} restarted (pid {node.proc.pid})")
                    announced.add(node.id)
                continue
            code = node.proc.poll()
            if code is None:
                if node.id in announced and node.serving():
                    announced.discard(node.id)
                    _say(f"{node.id} serves again")
                if watch is not None:
                    watch.check(node, now)
                continue
            if stopped():
                break
            announced.discard(node.id)
            ran = now - node.started_at
            node.quick_exits = node.quick_exits + 1 if ran < STABLE_AFTER else 0
            if node.quick_exits >= args.restart_attempts:
                node.given_up = True
                _say(
                    f"{node.id} stopped ({_exit_text(code)}); it stopped {node.quick_exits} "
                    "times in a row "
                    f"within {STABLE_AFTER:.0f} s of starting, so it is left down (its errors "
                    f"are above; fix them and run: {node.command()}). The other nodes keep "
                    "serving; Ctrl-C stops the cluster."
                )
                continue
            delay = args.restart_delay * 2**node.quick_exits
            node.restart_at = now + delay
            _say(
                f"{node.id} stopped ({_exit_text(code)}) after {ran:.1f} s; "
                f"restarting it in {delay:g} s"
            )
        if all(node.given_up for node in nodes):
            _say("every node is down; stopping")
            return
        time.sleep(POLL)


def _stop_all(nodes: list[LocalNode]) -> None:
    running = [n for n in nodes if n.proc is not None and n.proc.poll() is None]
    if running:
        _say(f"stopping {', '.join(n.id for n in running)}")
    for node in running:
        assert node.proc is not None
        node.proc.send_signal(signal.SIGTERM)
    for node in running:
        assert node.proc is not None
        try:
            node.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            _say(f"{node.id} did not stop in {STOP_TIMEOUT:.0f} s; killing it")
            node.proc.kill()
            node.proc.wait()
    _say("stopped")

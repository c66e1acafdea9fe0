"""``ramraft node`` and ``ramraft cluster`` (registered into client/cli.py).

Every ``node`` flag can also be given as an environment variable
(``--data-dir`` -> ``RAMRAFT_DATA_DIR``), so a StatefulSet pod derives its id
from its hostname without typing anything per pod.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.config import ConfigError, Limits, NodeConfig, parse_address, parse_peers

if TYPE_CHECKING:
    from server.hosting import Application

NODE_EPILOG = """\
examples:
  ramraft node --id a --peers a=127.0.0.1:7001,b=127.0.0.1:7002,c=127.0.0.1:7003 \\
      --data-dir /var/lib/ramraft/a --http 127.0.0.1:8001
  RAMRAFT_ID=$(hostname) RAMRAFT_PEERS=... RAMRAFT_DATA_DIR=/data ramraft node
  ramraft node ... --http 127.0.0.1:8001 --app examples.notes:app   # pages at /app/

The node's gRPC address is its own entry in --peers unless --listen overrides
the bind address. With --peer-listen, peers talk on that separate port and
--peers lists peer addresses.
"""


def _env(name: str, default: str = "") -> str:
    return os.environ.get(f"RAMRAFT_{name}", default)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(f"RAMRAFT_{name}")
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"ramraft node: RAMRAFT_{name}={raw!r} is not a whole number") from None


def add_node_parser(sub: Any) -> None:
    p = sub.add_parser(
        "node",
        help="run one node",
        description=(
            "Run one ramraft node: Raft peer, gRPC KV/Admin API and (with --http) the web tier."
        ),
        epilog=NODE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--id", default=_env("ID"), help="this node's id (env RAMRAFT_ID)")
    p.add_argument(
        "--peers",
        default=_env("PEERS"),
        help="initial members, ID=HOST:PORT,... including this node (env RAMRAFT_PEERS)",
    )
    p.add_argument(
        "--data-dir",
        default=_env("DATA_DIR"),
        help="where the WAL and snapshots live (env RAMRAFT_DATA_DIR)",
    )
    p.add_argument(
        "--listen", default=_env("LISTEN"), help="gRPC bind address (env RAMRAFT_LISTEN)"
    )
    p.add_argument(
        "--peer-listen",
        default=_env("PEER_LISTEN"),
        help="separate peer port bind address (env RAMRAFT_PEER_LISTEN)",
    )
    p.add_argument(
        "--http",
        default=_env("HTTP"),
        help="web tier bind address, e.g. 0.0.0.0:8080 (env RAMRAFT_HTTP)",
    )
    p.add_argument(
        "--app",
        default=_env("APP"),
        help=(
            "serve an application model next to the key-value store: MODULE:FACTORY, e.g. "
            "examples.notes:app; its pages are under /app/ on --http (env RAMRAFT_APP)"
        ),
    )
    p.add_argument(
        "--app-path",
        default=_env("APP_PATH", "."),
        help=(
            "directories to import the --app module from, ':'-separated "
            "(default: the current directory; env RAMRAFT_APP_PATH)"
        ),
    )
    p.add_argument(
        "--join",
        action="store_true",
        default=_env("JOIN") in ("1", "true", "yes"),
        help="start empty and wait to be added with AddMember (env RAMRAFT_JOIN=1)",
    )
    p.add_argument(
        "--tick-ms", type=int, default=_env_int("TICK_MS", 10), help="Raft tick in ms (default 10)"
    )
    p.add_argument(
        "--election-ticks",
        type=int,
        default=_env_int("ELECTION_TICKS", 50),
        help="ticks without a leader before a follower campaigns, randomized up to twice "
        "that (default 50: 0.5-1 s)",
    )
    p.add_argument(
        "--heartbeat-ticks",
        type=int,
        default=_env_int("HEARTBEAT_TICKS", 5),
        help="ticks between the leader's heartbeats (default 5: 50 ms)",
    )
    p.add_argument(
        "--snapshot-entries",
        type=int,
        default=_env_int("SNAPSHOT_ENTRIES", 20_000),
        help="snapshot after this many applied entries (default 20000)",
    )
    p.add_argument(
        "--retain-entries",
        type=int,
        default=_env_int("RETAIN_ENTRIES", 5_000),
        help="log entries kept behind a snapshot for slow followers (default 5000)",
    )
    p.add_argument("--max-key-bytes", type=int, default=_env_int("MAX_KEY_BYTES", 1024))
    p.add_argument("--max-value-bytes", type=int, default=_env_int("MAX_VALUE_BYTES", 1 << 20))
    p.add_argument(
        "--no-fsync",
        action="store_true",
        default=_env("NO_FSYNC") in ("1", "true"),
        help="do not fsync (benchmarks only: acknowledged writes can be lost on power loss)",
    )
    p.add_argument(
        "--log-level", default=_env("LOG_LEVEL", "info"), help="debug, info, warning, error"
    )
    p.set_defaults(func=run_node)


def config_from_args(args: argparse.Namespace) -> NodeConfig:
    if not args.id:
        raise ConfigError("--id (or RAMRAFT_ID) is required")
    if not args.peers:
        raise ConfigError("--peers (or RAMRAFT_PEERS) is required")
    if not args.data_dir:
        raise ConfigError("--data-dir (or RAMRAFT_DATA_DIR) is required")
    config = NodeConfig(
        node_id=args.id,
        peers=parse_peers(args.peers),
        data_dir=args.data_dir,
        listen=args.listen,
        peer_listen=args.peer_listen,
        http=args.http,
        tick_ms=args.tick_ms,
        election_ticks=args.election_ticks,
        heartbeat_ticks=args.heartbeat_ticks,
        snapshot_entries=args.snapshot_entries,
        retain_entries=args.retain_entries,
        join=args.join,
        fsync=not args.no_fsync,
        limits=Limits(max_key_bytes=args.max_key_bytes, max_value_bytes=args.max_value_bytes),
    )
    config.validate()
    return config


def load_app_from_args(args: argparse.Namespace) -> Application | None:
    """The --app application, imported with --app-path on sys.path."""
    from server.hosting import load_app

    if not args.app:
        return None
    for directory in reversed([d for d in args.app_path.split(os.pathsep) if d]):
        path = str(Path(directory).resolve())
        if path not in sys.path:
            sys.path.insert(0, path)
    return load_app(args.app)


def run_node(args: argparse.Namespace) -> int:
    from server.hosting import AppLoadError
    from server.logs import configure_logging
    from server.node import Node
    from server.statemachine import SnapshotError
    from server.storage import StorageError

    configure_logging(args.log_level)
    try:
        config = config_from_args(args)
        Path(config.data_dir).mkdir(parents=True, exist_ok=True)
        app = load_app_from_args(args)
    except (ConfigError, OSError, AppLoadError) as e:
        print(f"ramraft node: {e}", file=sys.stderr)
        return 2
    try:
        asyncio.run(Node(config, app=app).run_until_signalled())
    except (StorageError, OSError) as e:
        print(f"ramraft node: {e}", file=sys.stderr)
        return 1
    except SnapshotError as e:
        served = f"--app {args.app}" if app is not None else "no --app"
        print(
            f"ramraft node: cannot restore the snapshot in {config.data_dir} with {served}: {e}. "
            "A data directory holds the state of the machines it was written with: start the "
            "node with the same --app as before (or none), or with a fresh data directory.",
            file=sys.stderr,
        )
        return 1
    return 0


# ---- ramraft cluster --------------------------------------------------------------------------


def add_cluster_parser(sub: Any) -> None:
    p = sub.add_parser(
        "cluster",
        help="run a local cluster in the foreground",
        description="Run a local cluster of N nodes in the foreground (Ctrl-C stops them all).",
    )
    p.add_argument("--nodes", type=int, default=3, help="how many nodes (default 3)")
    p.add_argument(
        "--data-dir",
        default="ramraft-data",
        help="parent of the nodes' data dirs (default ./ramraft-data)",
    )
    p.add_argument("--host", default="127.0.0.1")
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
        "--app", default="", help="serve an application model: module:factory (see examples/)"
    )
    p.add_argument(
        "--node-arg", action="append", default=[], help="extra argument for every node (repeatable)"
    )
    p.set_defaults(func=run_cluster)


def run_cluster(args: argparse.Namespace) -> int:
    if not 1 <= args.nodes <= 9:
        print("ramraft cluster: --nodes must be between 1 and 9", file=sys.stderr)
        return 2
    ids = [f"n{i + 1}" for i in range(args.nodes)]
    grpc_addresses = {i: f"{args.host}:{args.grpc_port + n}" for n, i in enumerate(ids)}
    for address in grpc_addresses.values():
        parse_address(address, "address")
    peers = ",".join(f"{i}={a}" for i, a in grpc_addresses.items())
    data = Path(args.data_dir)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    print(f"ramraft cluster: {args.nodes} nodes, data under {data.resolve()}")
    for n, node_id in enumerate(ids):
        cmd = [
            sys.executable,
            "-m",
            "client",
            "node",
            "--id",
            node_id,
            "--peers",
            peers,
            "--data-dir",
            str(data / node_id),
            *args.node_arg,
        ]
        http = ""
        if args.http_port:
            http = f"{args.host}:{args.http_port + n}"
            cmd += ["--http", http]
        if args.app:
            cmd += ["--app", args.app]
        env = dict(os.environ, RAMRAFT_LOG_LEVEL=os.environ.get("RAMRAFT_LOG_LEVEL", "warning"))
        procs[node_id] = subprocess.Popen(cmd, env=env)
        print(
            f"  {node_id}: grpc {grpc_addresses[node_id]}"
            + (f"  http http://{http}/" if http else "")
            + (f"  app http://{http}/app/" if http and args.app else "")
        )
    print(f"try: ramraft put hello world --endpoints {','.join(grpc_addresses.values())}")
    print("Ctrl-C stops the cluster.")
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    code = 0
    while not stop:
        for node_id, proc in procs.items():
            if proc.poll() is not None:
                print(
                    f"ramraft cluster: {node_id} exited with {proc.returncode}; stopping",
                    file=sys.stderr,
                )
                code = 1
                stop = True
                break
        time.sleep(0.2)
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for node_id, proc in procs.items():
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            print(f"ramraft cluster: {node_id} did not stop in 20 s; killing it", file=sys.stderr)
            proc.kill()
    print("ramraft cluster: stopped")
    return code


def register(sub: Any) -> None:
    add_node_parser(sub)
    add_cluster_parser(sub)
    # Subcommands that live in modules of their own (each defines register()).
    import importlib

    for name in ("server.bench", "server.chaos", "server.certs"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        module.register(sub)

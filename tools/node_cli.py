"""``ramraft node`` and ``ramraft cluster`` (registered into tools/cli.py).

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

from ramraft.server.config import (
    ConfigError,
    NodeConfig,
    NodeLimits,
    TLSConfig,
    memory_bound,
    parse_address,
    parse_peers,
)

if TYPE_CHECKING:
    from ramraft.server.hosting import Application

NODE_EPILOG_TEMPLATE = """\
examples:
  ramraft node --id a --peers a=127.0.0.1:7001,b=127.0.0.1:7002,c=127.0.0.1:7003 \\
      --data-dir /var/lib/ramraft/a --http 127.0.0.1:8001
  RAMRAFT_ID=$(hostname) RAMRAFT_PEERS=... RAMRAFT_DATA_DIR=/data ramraft node
  ramraft node ... --http 127.0.0.1:8001 --app examples.notes:app   # pages at /app/

The node's gRPC address is its own entry in --peers unless --listen overrides
the bind address. With --peer-listen, peers talk on that separate port and
--peers lists peer addresses.

security (off by default; on in k8s/):
  --tls-cert/--tls-key/--tls-ca turn TLS on for every port (make the files with
  `ramraft certs`). Peers always use mutual TLS: a peer must present a
  certificate from the CA whose ramraft-node:<id> identity is a member, and
  every message it sends must carry that id as its sender. Without
  --peer-listen the client port carries the peer protocol too, and then every
  caller must present a certificate from the CA. The files are re-read when
  they change on disk; new connections use the new certificate.
  --auth-tokens FILE requires a bearer token (roles read, write, admin; see
  `ramraft tokens`) on the gRPC and HTTP ports; health checks stay open.

  Tokens without TLS protect nothing (cleartext tokens, an unauthenticated
  peer port): the node refuses to start so unless --insecure says so.

limits (excess requests get RESOURCE_EXHAUSTED / HTTP 429 at once, before
their message is read). Memory, in one formula:
  RSS <= 120 MiB + 3 x (the keys' and values' bytes)
         + --snapshot-bytes + --retain-bytes + min(64 MiB, 2 x --snapshot-bytes)
         + --max-inflight-bytes + 3 x --max-connections x 128 KiB
  (the baseline; the state machine's data as Python objects; the log held in
  RAM until a snapshot covers it, and its uncommitted tail; every request
  being read and every response being built or sent; the open connections
  of the gRPC, peer and HTTP ports). With the defaults: {default_bound} MiB + 3 x data.
  --max-key-bytes, --max-value-bytes, --max-request-bytes, --max-http-body-bytes,
  --max-inflight, --max-inflight-per-connection, --max-inflight-bytes,
  --max-connections, --max-connections-per-source, --max-pending-requests,
  --max-range-page, --max-range-bytes, --snapshot-chunk-bytes
connections and calls:
  --handshake-timeout-ms (TLS/HTTP2 handshake, HTTP request headers),
  --request-timeout-ms (a call's request message), --idle-timeout-ms (a
  connection without a call; calls in use, such as KV.Stream, are never cut),
  --max-deadline-ms (the longest a call may wait, and what one without a
  deadline gets)
"""


NODE_EPILOG = NODE_EPILOG_TEMPLATE.replace(
    "{default_bound}",
    str(memory_bound(NodeLimits(), NodeConfig.snapshot_bytes, NodeConfig.retain_bytes) >> 20),
)


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
    p.add_argument(
        "--snapshot-bytes",
        type=int,
        default=_env_int("SNAPSHOT_BYTES", 64 << 20),
        help="also snapshot after this many bytes of applied commands (default 64 MiB): the "
        "log is held in RAM until a snapshot covers it",
    )
    p.add_argument(
        "--retain-bytes",
        type=int,
        default=_env_int("RETAIN_BYTES", 32 << 20),
        help="cap on the bytes of entries kept behind a snapshot (default 32 MiB)",
    )
    tls = p.add_argument_group("TLS and authentication")
    tls.add_argument(
        "--tls-cert",
        default=_env("TLS_CERT"),
        help="this node's certificate (PEM; env RAMRAFT_TLS_CERT); with --tls-key and "
        "--tls-ca turns TLS on for every port",
    )
    tls.add_argument("--tls-key", default=_env("TLS_KEY"), help="its key (env RAMRAFT_TLS_KEY)")
    tls.add_argument(
        "--tls-ca",
        default=_env("TLS_CA"),
        help="the cluster CA that signs peers' and clients' certificates (env RAMRAFT_TLS_CA)",
    )
    tls.add_argument(
        "--tls-client-auth",
        choices=("none", "require"),
        default=_env("TLS_CLIENT_AUTH", "none"),
        help="require a client certificate from the CA on the client gRPC and HTTP ports "
        "(default none; env RAMRAFT_TLS_CLIENT_AUTH)",
    )
    tls.add_argument(
        "--auth-tokens",
        default=_env("AUTH_TOKENS"),
        help="token file (lines: ROLE NAME TOKEN): clients must send a token "
        "(env RAMRAFT_AUTH_TOKENS)",
    )
    tls.add_argument(
        "--insecure",
        action="store_true",
        default=_env("INSECURE") in ("1", "true", "yes"),
        help="start with --auth-tokens but without TLS: tokens then travel in cleartext "
        "and anyone who reaches the peer port can act as a peer (env RAMRAFT_INSECURE=1)",
    )
    tls.add_argument(
        "--peer-id-pattern",
        default=_env("PEER_ID_PATTERN"),
        help="node ids accepted as peers besides the known members, fnmatch patterns, "
        "comma-separated, e.g. 'ramraft-*' (env RAMRAFT_PEER_ID_PATTERN)",
    )
    tls.add_argument(
        "--health-listen",
        default=_env("HEALTH_LISTEN"),
        help="a plaintext gRPC port serving only grpc.health.v1, for probes that speak no TLS "
        "(env RAMRAFT_HEALTH_LISTEN)",
    )
    lim = p.add_argument_group("limits")
    d = NodeLimits()

    def limit(flag: str, default: int, text: str) -> None:
        env = flag.upper().replace("-", "_")
        lim.add_argument(
            f"--{flag}",
            type=int,
            default=_env_int(env, default),
            metavar="N",
            help=f"{text} (default {default}; env RAMRAFT_{env})",
        )

    limit("max-key-bytes", d.max_key_bytes, "longest key, in UTF-8 bytes")
    limit("max-value-bytes", d.max_value_bytes, "longest value")
    limit(
        "max-request-bytes",
        d.max_request_bytes,
        "largest gRPC request any port accepts; 0: 2 x value + key + 64 KiB (a "
        "CompareAndSwap of two values). "
        "Only a --peer-listen port with TLS (every caller an authenticated member) takes "
        "64 MiB peer messages; elsewhere peers cut theirs to this size",
    )
    limit(
        "max-http-body-bytes",
        d.max_http_body_bytes,
        "largest HTTP request body; 0: room for the largest value as base64 JSON",
    )
    limit(
        "max-inflight",
        d.max_inflight,
        "client requests served at once, gRPC and HTTP together; more are refused at once",
    )
    limit(
        "max-inflight-per-connection",
        d.max_inflight_per_connection,
        "client requests served at once on one connection",
    )
    limit(
        "max-inflight-bytes",
        d.max_inflight_bytes,
        "memory budget, node-wide: bytes of requests being read and responses being built "
        "or sent (3 copies each); a call that cannot reserve its bytes is refused before "
        "its message is read",
    )
    limit("max-connections", d.max_connections, "open client connections per port")
    limit(
        "max-connections-per-source",
        d.max_connections_per_source,
        "open HTTP connections from one address",
    )
    limit(
        "max-pending-requests",
        d.max_pending_requests,
        "writes and reads waiting inside the node (including forwarded ones)",
    )
    limit("max-range-page", d.max_range_limit, "most items in one Range page")
    limit(
        "max-range-bytes",
        d.max_range_bytes,
        "most key and value bytes in one Range page (at least one item; `more` says continue)",
    )
    limit(
        "handshake-timeout-ms",
        d.handshake_timeout_ms,
        "a connection's TLS/HTTP2 handshake, and an HTTP request's headers, must arrive within",
    )
    limit(
        "request-timeout-ms",
        d.request_timeout_ms,
        "a call's request message (an HTTP body) must arrive within this, or it is refused "
        "and its slot freed",
    )
    limit(
        "idle-timeout-ms",
        d.idle_timeout_ms,
        "a gRPC connection without a call is closed after this (calls in use never are)",
    )
    limit(
        "max-deadline-ms",
        d.max_deadline_ms,
        "the longest a call may wait (a longer deadline is cut to it); also the deadline of "
        "a call that sets none",
    )
    limit(
        "snapshot-chunk-bytes",
        d.snapshot_chunk_bytes,
        "data bytes per InstallSnapshot chunk this node sends",
    )
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
        snapshot_bytes=args.snapshot_bytes,
        retain_bytes=args.retain_bytes,
        join=args.join,
        fsync=not args.no_fsync,
        limits=NodeLimits(
            max_key_bytes=args.max_key_bytes,
            max_value_bytes=args.max_value_bytes,
            max_range_limit=args.max_range_page,
            max_pending_requests=args.max_pending_requests,
            max_request_bytes=args.max_request_bytes,
            max_http_body_bytes=args.max_http_body_bytes,
            max_inflight=args.max_inflight,
            max_inflight_per_connection=args.max_inflight_per_connection,
            max_connections=args.max_connections,
            snapshot_chunk_bytes=args.snapshot_chunk_bytes,
            max_range_bytes=args.max_range_bytes,
            max_inflight_bytes=args.max_inflight_bytes,
            max_connections_per_source=args.max_connections_per_source,
            handshake_timeout_ms=args.handshake_timeout_ms,
            request_timeout_ms=args.request_timeout_ms,
            idle_timeout_ms=args.idle_timeout_ms,
            max_deadline_ms=args.max_deadline_ms,
        ),
        tls=TLSConfig(
            cert=args.tls_cert, key=args.tls_key, ca=args.tls_ca, client_auth=args.tls_client_auth
        ),
        auth_tokens=args.auth_tokens,
        peer_id_pattern=args.peer_id_pattern,
        health_listen=args.health_listen,
        insecure=args.insecure,
    )
    config.validate()
    return config


def load_app_from_args(args: argparse.Namespace) -> Application | None:
    """The --app application, imported with --app-path on sys.path."""
    from ramraft.server.hosting import load_app

    if not args.app:
        return None
    for directory in reversed([d for d in args.app_path.split(os.pathsep) if d]):
        path = str(Path(directory).resolve())
        if path not in sys.path:
            sys.path.insert(0, path)
    return load_app(args.app)


def run_node(args: argparse.Namespace) -> int:
    from ramraft.server.hosting import AppLoadError
    from ramraft.server.logs import configure_logging, quiet_grpc_core
    from ramraft.server.machines.statemachine import SnapshotError
    from ramraft.server.node import Node
    from ramraft.server.security.auth import AuthConfigError
    from ramraft.server.storage import StorageError

    configure_logging(args.log_level)
    quiet_grpc_core()
    try:
        config = config_from_args(args)
        Path(config.data_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        app = load_app_from_args(args)
    except (ConfigError, OSError, AppLoadError) as e:
        print(f"ramraft node: {e}", file=sys.stderr)
        return 2
    try:
        node = Node(config, app=app)
    except (ConfigError, AuthConfigError) as e:
        print(f"ramraft node: {e}", file=sys.stderr)
        return 2
    try:
        asyncio.run(node.run_until_signalled())
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
    p.add_argument(
        "--tls-dir",
        default="",
        help="turn TLS on with the certificates in this directory (made there with "
        "`ramraft certs` if it has none)",
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
    tls_dir = Path(args.tls_dir) if args.tls_dir else None
    if tls_dir is not None and not all(
        (tls_dir / name).exists() for name in ["ca.pem", *(f"{i}.pem" for i in ids)]
    ):
        from ramraft.tools.certs import make_cluster_certs

        make_cluster_certs(tls_dir, {i: [args.host, "localhost"] for i in ids})
    procs: dict[str, subprocess.Popen[bytes]] = {}
    scheme = "https" if tls_dir is not None else "http"
    print(f"ramraft cluster: {args.nodes} nodes, data under {data.resolve()}")
    for n, node_id in enumerate(ids):
        cmd = [
            sys.executable,
            "-m",
            "ramraft",
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
        if tls_dir is not None:
            cmd += ["--tls-cert", str(tls_dir / f"{node_id}.pem")]
            cmd += ["--tls-key", str(tls_dir / f"{node_id}-key.pem")]
            cmd += ["--tls-ca", str(tls_dir / "ca.pem")]
        env = dict(os.environ, RAMRAFT_LOG_LEVEL=os.environ.get("RAMRAFT_LOG_LEVEL", "warning"))
        procs[node_id] = subprocess.Popen(cmd, env=env)
        print(
            f"  {node_id}: grpc {grpc_addresses[node_id]}"
            + (f"  http {scheme}://{http}/" if http else "")
            + (f"  app {scheme}://{http}/app/" if http and args.app else "")
        )
    tls_options = ""
    if tls_dir is not None:
        # One port for peers and clients: clients need a certificate too.
        tls_options = (
            f" --tls-ca {tls_dir / 'ca.pem'} --tls-cert {tls_dir / 'client.pem'}"
            f" --tls-key {tls_dir / 'client-key.pem'}"
        )
    print(
        f"try: ramraft put hello world --endpoints {','.join(grpc_addresses.values())}"
        + tls_options
    )
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
    from ramraft.tools import bench, certs, chaos, tokens

    for module in (bench, chaos, certs, tokens):
        module.register(sub)

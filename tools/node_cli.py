"""``ramraft node`` (and, from local_cluster.py, ``ramraft cluster``), registered
into tools/cli.py.

Every ``node`` flag can also be given as an environment variable
(``--data-dir`` -> ``RAMRAFT_DATA_DIR``), so a StatefulSet pod derives its id
from its hostname without typing anything per pod.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ramraft.server.config import (
    BlobConfig,
    ConfigError,
    NodeConfig,
    NodeLimits,
    TLSConfig,
    memory_bound,
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
the bind address. --http and --health-listen may give port 0 (any free port).
Once the node serves, <data-dir>/ports.json names its pid and the addresses it
listens on (JSON: id, pid, grpc, peer, http, health); it is removed at stop.
With --peer-listen, peers talk on that separate port and
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

exit status: 0 stopped cleanly (SIGTERM, Ctrl-C, SIGHUP); 1 stopped by a failure
(storage, snapshot); 2 a bad setting, data directory or address; 4 a port is
in use by another process (the same settings with another port can work).

limits (excess requests get RESOURCE_EXHAUSTED / HTTP 429 at once, before
their message is read). Memory, in one formula:
  RSS <= 120 MiB + 3 x (the keys' and values' bytes)
         + --snapshot-bytes + --retain-bytes + min(64 MiB, 2 x --snapshot-bytes)
         + --max-inflight-bytes + 3 x --max-connections x 128 KiB
         + --watch-history-bytes + --watch-history-revisions x 512 B
  (the baseline; the state machine's data as Python objects; the log held in
  RAM until a snapshot covers it, and its uncommitted tail; every request
  being read and every response being built or sent; the open connections
  of the gRPC, peer and HTTP ports; the changes held for watches).
  With the defaults: {default_bound} MiB + 3 x data.
  --max-key-bytes, --max-value-bytes, --max-request-bytes, --max-http-body-bytes,
  --max-inflight, --max-inflight-per-connection, --max-inflight-bytes,
  --max-connections, --max-connections-per-source, --max-pending-requests,
  --max-range-page, --max-range-bytes, --snapshot-chunk-bytes
  --max-blob-bytes (INVALID_ARGUMENT / HTTP 413), --blob-reserve-bytes
  (RESOURCE_EXHAUSTED / HTTP 507)
key-value version 2 (transactions, delete-range, watches):
  --max-txn-ops, --max-txn-bytes, --max-delete-range-keys, --max-watches,
  --watch-history-revisions, --watch-history-bytes, --watch-buffer-bytes,
  --watch-progress-ms
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


# ---- ramraft node: its settings ----------------------------------------------------------------
#
# Every flag of `ramraft node` is one Setting below, so that each has its
# environment twin RAMRAFT_<FLAG> and its help names it (a test checks both).
# The parser leaves a flag that was not given as None; resolve_settings()
# fills it from the environment, then from the default. It runs only when
# `ramraft node` runs: a bad RAMRAFT_TICK_MS must not break `ramraft get`.

EXIT_PORT_IN_USE = 4  # ramraft node: a port to listen on is taken (a retry can pick another)

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class Setting:
    flag: str  # without the dashes: "tick-ms"
    help: str
    default: str | int | bool = ""
    kind: type = str  # str, int or bool (a switch)
    group: str = ""  # "" (general), "tls" or "limits"
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    default_text: str = ""  # how --help shows the default, if not str(default)

    @property
    def dest(self) -> str:
        return self.flag.replace("-", "_")

    @property
    def env(self) -> str:
        return "RAMRAFT_" + self.flag.upper().replace("-", "_")

    def help_text(self) -> str:
        if self.kind is bool:
            return f"{self.help} (env {self.env}=1)"
        shown = self.default_text or (str(self.default) if self.default != "" else "")
        default = f"default {shown}; " if shown else ""
        return f"{self.help} ({default}env {self.env})"

    def convert(self, raw: str, source: str) -> str | int | bool:
        """``raw`` from the command line or the environment, checked;
        ``source`` names it in the error (--tick-ms, RAMRAFT_TICK_MS)."""
        if self.kind is bool:
            if raw.lower() in _TRUE:
                return True
            if raw.lower() in _FALSE:
                return False
            raise ConfigError(f"{source}={raw!r}: not one of {', '.join(_TRUE + _FALSE)}")
        if self.kind is int:
            try:
                return int(raw)
            except ValueError:
                raise ConfigError(f"{source}={raw!r}: not a whole number") from None
        if self.choices and raw not in self.choices:
            raise ConfigError(f"{source}={raw!r}: not one of {', '.join(self.choices)}")
        return raw


def _limit(flag: str, default: int, text: str) -> Setting:
    return Setting(flag, text, default, int, "limits", metavar="N")


_LIMITS = NodeLimits()
_BLOBS = BlobConfig()

NODE_SETTINGS: tuple[Setting, ...] = (
    Setting("id", "this node's id", metavar="ID"),
    Setting("peers", "initial members, including this node", metavar="ID=HOST:PORT,..."),
    Setting("data-dir", "where the WAL and snapshots live (created if missing)", metavar="DIR"),
    Setting(
        "listen",
        "client gRPC bind address (default: this node's own --peers entry)",
        metavar="HOST:PORT",
    ),
    Setting("peer-listen", "separate peer port bind address", metavar="HOST:PORT"),
    Setting("http", "web tier bind address, e.g. 0.0.0.0:8080", metavar="HOST:PORT"),
    Setting(
        "app",
        "serve an application model next to the key-value store, e.g. examples.notes:app; "
        "its pages are under /app/ on --http",
        metavar="MODULE:FACTORY",
    ),
    Setting(
        "app-path",
        "directories to import the --app module from, ':'-separated ('.': the current one)",
        ".",
        metavar="DIRS",
    ),
    Setting("join", "start empty and wait to be added with AddMember", False, bool),
    Setting("tick-ms", "Raft tick in ms", 10, int, metavar="MS"),
    Setting(
        "election-ticks",
        "ticks without a leader before a follower campaigns, randomized up to twice that",
        50,
        int,
        metavar="N",
        default_text="50: 0.5-1 s",
    ),
    Setting(
        "heartbeat-ticks",
        "ticks between the leader's heartbeats",
        5,
        int,
        metavar="N",
        default_text="5: 50 ms",
    ),
    Setting(
        "snapshot-entries",
        "snapshot after this many applied entries, once 10x the last snapshot's duration "
        "has passed since it ended (a large state is not snapshotted back to back)",
        20_000,
        int,
        metavar="N",
    ),
    Setting(
        "retain-entries",
        "log entries kept behind a snapshot for slow followers",
        5_000,
        int,
        metavar="N",
    ),
    Setting(
        "snapshot-bytes",
        "also snapshot after this many bytes of applied entries (commands plus 144 bytes "
        "each): the log is held in RAM until a snapshot covers it",
        64 << 20,
        int,
        metavar="N",
        default_text="64 MiB",
    ),
    Setting(
        "retain-bytes",
        "cap on the bytes of entries kept behind a snapshot",
        32 << 20,
        int,
        metavar="N",
        default_text="32 MiB",
    ),
    Setting(
        "no-fsync",
        "do not fsync (benchmarks only: acknowledged writes can be lost on power loss)",
        False,
        bool,
    ),
    Setting("log-level", "how much to log", "info", choices=LOG_LEVELS),
    Setting(
        "cluster-id",
        "the cluster this node belongs to: peers of another cluster are refused, and a data "
        "directory of another cluster is not started (default: the id the cluster was given "
        "when it was formed, or by a restore)",
        metavar="ID",
    ),
    Setting(
        "check-entries",
        "the leader compares every node's state digest every this many applied entries, "
        "but leaves at least 20x the last digest's duration between two such checks "
        "(0: only on demand, ramraft check)",
        10_000,
        int,
        metavar="N",
    ),
    Setting(
        "blob-dir",
        "where blob files live (default: <data-dir>/blobs); on a shared file system only if "
        "it is this node's own directory there (README: Blobs)",
        metavar="DIR",
    ),
    Setting(
        "blob-gc-interval",
        "seconds between the leader's blob collections (0: none)",
        int(_BLOBS.gc_interval),
        int,
        metavar="SECONDS",
    ),
    Setting(
        "blob-gc-grace",
        "seconds a blob stays after its last upload or last reference",
        int(_BLOBS.gc_grace),
        int,
        metavar="SECONDS",
    ),
    Setting(
        "tls-cert",
        "this node's certificate (PEM); with --tls-key and --tls-ca turns TLS on for every port",
        group="tls",
        metavar="FILE",
    ),
    Setting("tls-key", "its key", group="tls", metavar="FILE"),
    Setting(
        "tls-ca",
        "the cluster CA that signs peers' and clients' certificates",
        group="tls",
        metavar="FILE",
    ),
    Setting(
        "tls-client-auth",
        "require a client certificate from the CA on the client gRPC and HTTP ports",
        "none",
        group="tls",
        choices=("none", "require"),
    ),
    Setting(
        "auth-tokens",
        "token file (lines: ROLE NAME TOKEN): clients must send a token",
        group="tls",
        metavar="FILE",
    ),
    Setting(
        "insecure",
        "start with --auth-tokens but without TLS: tokens then travel in cleartext and anyone "
        "who reaches the peer port can act as a peer",
        False,
        bool,
        group="tls",
    ),
    Setting(
        "peer-id-pattern",
        "node ids accepted as peers besides the known members, fnmatch patterns, "
        "comma-separated, e.g. 'ramraft-*'",
        group="tls",
        metavar="PATTERNS",
    ),
    Setting(
        "health-listen",
        "a plaintext gRPC port serving only grpc.health.v1, for probes that speak no TLS",
        group="tls",
        metavar="HOST:PORT",
    ),
    _limit("max-key-bytes", _LIMITS.max_key_bytes, "longest key, in UTF-8 bytes"),
    _limit("max-value-bytes", _LIMITS.max_value_bytes, "longest value"),
    _limit(
        "max-request-bytes",
        _LIMITS.max_request_bytes,
        "largest gRPC request any port accepts; 0: 2 x value + key + 64 KiB (a "
        "CompareAndSwap of two values). Only a --peer-listen port with TLS (every caller an "
        "authenticated member) takes 64 MiB peer messages; elsewhere peers cut theirs to fit",
    ),
    _limit(
        "max-http-body-bytes",
        _LIMITS.max_http_body_bytes,
        "largest HTTP request body; 0: room for the largest value as base64 JSON",
    ),
    _limit(
        "max-inflight",
        _LIMITS.max_inflight,
        "client requests served at once, gRPC and HTTP together; more are refused at once",
    ),
    _limit(
        "max-inflight-per-connection",
        _LIMITS.max_inflight_per_connection,
        "client requests served at once on one connection",
    ),
    _limit(
        "max-inflight-bytes",
        _LIMITS.max_inflight_bytes,
        "memory budget, node-wide: bytes of requests being read and responses being built "
        "or sent (3 copies each); a call that cannot reserve its bytes is refused before "
        "its message is read",
    ),
    _limit("max-connections", _LIMITS.max_connections, "open client connections per port"),
    _limit(
        "max-connections-per-source",
        _LIMITS.max_connections_per_source,
        "open HTTP connections from one address",
    ),
    _limit(
        "max-pending-requests",
        _LIMITS.max_pending_requests,
        "writes and reads waiting inside the node (including forwarded ones)",
    ),
    _limit("max-range-page", _LIMITS.max_range_limit, "most items in one Range page"),
    _limit(
        "max-range-bytes",
        _LIMITS.max_range_bytes,
        "most key and value bytes in one Range page (at least one item; `more` says continue)",
    ),
    _limit(
        "handshake-timeout-ms",
        _LIMITS.handshake_timeout_ms,
        "a connection's TLS/HTTP2 handshake, and an HTTP request's headers, must arrive within",
    ),
    _limit(
        "request-timeout-ms",
        _LIMITS.request_timeout_ms,
        "a call's request message (an HTTP body) must arrive within this, or it is refused "
        "and its slot freed",
    ),
    _limit(
        "idle-timeout-ms",
        _LIMITS.idle_timeout_ms,
        "a gRPC connection without a call is closed after this (calls in use never are)",
    ),
    _limit(
        "max-deadline-ms",
        _LIMITS.max_deadline_ms,
        "the longest a call may wait (a longer deadline is cut to it); also the deadline of "
        "a call that sets none",
    ),
    _limit(
        "snapshot-chunk-bytes",
        _LIMITS.snapshot_chunk_bytes,
        "data bytes per InstallSnapshot chunk this node sends",
    ),
    _limit("max-txn-ops", _LIMITS.max_txn_ops, "compares and ops in one transaction"),
    _limit(
        "max-txn-bytes",
        _LIMITS.max_txn_bytes,
        "bytes of one transaction, and the most data a range inside one returns",
    ),
    _limit(
        "max-delete-range-keys",
        _LIMITS.max_delete_range_keys,
        "keys one delete-range may remove (more: refused, nothing deleted)",
    ),
    _limit("max-watches", _LIMITS.max_watches, "watches served by this node at once"),
    _limit(
        "watch-history-revisions",
        _LIMITS.watch_history_revisions,
        "revisions of changes kept in RAM for watches to replay (older: compacted)",
    ),
    _limit(
        "watch-history-bytes",
        _LIMITS.watch_history_bytes,
        "bytes of changes kept in RAM for watches to replay",
    ),
    _limit(
        "watch-buffer-bytes",
        _LIMITS.watch_buffer_bytes,
        "how far (bytes of history) a watch may fall behind before it is canceled as too slow",
    ),
    _limit(
        "watch-progress-ms",
        _LIMITS.watch_progress_ms,
        "idle time before a watch asking for progress notifications gets one",
    ),
    _limit("max-blob-bytes", _BLOBS.max_blob_bytes, "largest blob taken (uploads and copies)"),
    _limit(
        "blob-reserve-bytes",
        _BLOBS.reserve_bytes,
        "refuse blobs (RESOURCE_EXHAUSTED, HTTP 507) that would leave less than this free on "
        "the blob directory's file system",
    ),
)


def _argparse_type(setting: Setting) -> Callable[[str], object]:
    def convert(raw: str) -> object:
        try:
            return setting.convert(raw, f"--{setting.flag}")
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e).partition(": ")[2]) from None

    return convert


def add_node_parser(sub: Any) -> None:
    p = sub.add_parser(
        "node",
        help="run one node",
        description=(
            "Run one ramraft node: Raft peer, gRPC KV/Admin API and (with --http) the web tier. "
            "Every flag has an environment variable, named in its help; the flag wins."
        ),
        epilog=NODE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    groups = {
        "": p,
        "tls": p.add_argument_group("TLS and authentication"),
        "limits": p.add_argument_group("limits"),
    }
    for setting in NODE_SETTINGS:
        group = groups[setting.group]
        if setting.kind is bool:
            group.add_argument(
                f"--{setting.flag}", action="store_const", const=True, help=setting.help_text()
            )
        else:
            choices = "{" + ",".join(setting.choices) + "}" if setting.choices else None
            group.add_argument(
                f"--{setting.flag}",
                type=_argparse_type(setting),
                metavar=setting.metavar or choices,
                help=setting.help_text(),
            )
    p.set_defaults(func=run_node)


def resolve_settings(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> None:
    """Fill every node setting not given as a flag from its environment
    variable (an empty one counts as unset), else its default. Raises
    ConfigError naming the variable of a bad value."""
    environ = os.environ if environ is None else environ
    for setting in NODE_SETTINGS:
        if getattr(args, setting.dest, None) is not None:
            continue
        raw = environ.get(setting.env, "")
        value = setting.convert(raw, setting.env) if raw else setting.default
        setattr(args, setting.dest, value)


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
            max_txn_ops=args.max_txn_ops,
            max_txn_bytes=args.max_txn_bytes,
            max_delete_range_keys=args.max_delete_range_keys,
            max_watches=args.max_watches,
            watch_history_revisions=args.watch_history_revisions,
            watch_history_bytes=args.watch_history_bytes,
            watch_buffer_bytes=args.watch_buffer_bytes,
            watch_progress_ms=args.watch_progress_ms,
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
        cluster_id=args.cluster_id,
        check_entries=args.check_entries,
        insecure=args.insecure,
        blobs=BlobConfig(
            directory=args.blob_dir,
            max_blob_bytes=args.max_blob_bytes,
            reserve_bytes=args.blob_reserve_bytes,
            gc_interval=args.blob_gc_interval,
            gc_grace=args.blob_gc_grace,
        ),
    )
    config.validate()
    return config


def prepare_data_dir(path: str, option: str = "--data-dir") -> None:
    """Create the data directory (or the --blob-dir) if missing and check
    that this user can write it; a ConfigError says what is wrong with
    ``option`` and what to do."""
    directory = Path(path)
    flag = f"{option} {path}"
    advice = "give a directory this user can create and write (it is created if missing)"
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{flag}: is a file, not a directory; {advice}")
    try:
        # 0700: the WAL holds the values in plaintext (server/storage/datadir.py).
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(
            f"{flag}: a part of the path is a file, not a directory; {advice}"
        ) from None
    except PermissionError:
        raise ConfigError(
            f"{flag}: permission denied creating it (uid {os.getuid()}); {advice}, or create it "
            "and give this user write access"
        ) from None
    except OSError as e:
        raise ConfigError(f"{flag}: cannot create it ({e.strerror}); {advice}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{flag}: not writable by this user (uid {os.getuid()}); {advice}, or give this "
            "user write access"
        )


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


def run_to_the_end(main: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run(main)``, except that the tasks still running when
    ``main`` returns get a bounded time to end once cancelled, not for
    ever (server/jobs.py ``end_leftover_tasks``): an application's
    background job that catches its cancellation and goes on must not keep
    a stopped node's process from exiting."""
    from ramraft.server.jobs import end_leftover_tasks

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(main)
    finally:
        try:
            end_leftover_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def run_node(args: argparse.Namespace) -> int:
    from ramraft.server.hosting import AppLoadError
    from ramraft.server.logs import configure_logging
    from ramraft.server.machines.statemachine import SnapshotError
    from ramraft.server.node import ListenError, Node
    from ramraft.server.security.auth import AuthConfigError
    from ramraft.server.storage import StorageError

    try:
        resolve_settings(args)
        config = config_from_args(args)
        prepare_data_dir(config.data_dir)
        if config.blobs.directory:
            prepare_data_dir(config.blobs.directory, "--blob-dir")
        configure_logging(args.log_level)
        app = load_app_from_args(args)
    except (ConfigError, AppLoadError) as e:
        print(f"ramraft node: {e}", file=sys.stderr)
        return 2
    try:
        node = Node(config, app=app)
    except (ConfigError, AuthConfigError) as e:
        print(f"ramraft node: {e}", file=sys.stderr)
        return 2
    try:
        run_to_the_end(node.run_until_signalled())
    except ListenError as e:
        print(f"ramraft node: {e}", file=sys.stderr)
        return EXIT_PORT_IN_USE if e.in_use else 2
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


def register(sub: Any) -> None:
    from ramraft.tools.local_cluster import add_cluster_parser

    add_node_parser(sub)
    add_cluster_parser(sub)
    # Subcommands that live in modules of their own (each defines register()).
    from ramraft.tools import backup, bench, blobs_cli, certs, chaos, restore, tokens, versions

    for module in (bench, chaos, certs, tokens, backup, restore, versions, blobs_cli):
        module.register(sub)

"""One ramraft node process: storage, runtime, transport, gRPC servers,
health, metrics, and (optionally) the web tier and an application model,
with graceful shutdown.

With an application (``--app``, server/hosting.py) the runtime applies the log
to ``CompositeMachine({TAG_KV: kv, TAG_MODEL: ModelMachine(model)})``; the
model's commands are bound to this node's write path once the API exists.

Start-up checks every address it must listen on before it opens its data
directory, and gRPC servers bind without SO_REUSEPORT (gRPC's default would
let a second node share a busy port and split the clients between the two):
a busy port is a one-line ListenError naming the flag and the port. Once
everything serves, ``<data-dir>/ports.json`` says what the node listens on
(with ports chosen by the kernel for ``--http``/``--health-listen`` port 0),
so that whoever started the process knows it is up; it is removed when the
node stops.

Shutdown on SIGTERM/SIGINT/SIGHUP: stop taking new requests on this node, hand
leadership to the most caught-up voter that answered lately if we lead
(none: no transfer, no wait), let in-flight writes finish (they commit under
the new leader and resolve here when applied), flush, close, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ramraft.consensus import Role
from ramraft.proto import (
    admin_pb2,
    admin_pb2_grpc,
    blobs_pb2,
    blobs_pb2_grpc,
    kv_pb2,
    kv_pb2_grpc,
    raft_pb2,
)
from ramraft.server.blobs.manager import BlobSettings, NodeBlobs
from ramraft.server.blobs.metrics import BlobCollector
from ramraft.server.blobs.store import BlobStore
from ramraft.server.config import (
    PEER_MESSAGE_BYTES,
    PORTS_FILE,
    STOP_GRACE,
    ConfigError,
    NodeConfig,
    NodeLimits,
    join_address,
    parse_address,
)
from ramraft.server.hosting import (
    Application,
    HostedApp,
    decode_result,
    encode_result,
)
from ramraft.server.logs import RateLimitedLog
from ramraft.server.machines.cluster import ClusterMachine
from ramraft.server.machines.history import EventHistory
from ramraft.server.machines.kv import KVMachine
from ramraft.server.rpc.blobs import BlobsService
from ramraft.server.rpc.leases import LeaseService
from ramraft.server.rpc.services import AdminService, KVService
from ramraft.server.rpc.watch import WatchHub, WatchLimits
from ramraft.server.runtime.ending import StreamsEnding
from ramraft.server.runtime.leases import Lessor
from ramraft.server.runtime.loop import RaftRuntime
from ramraft.server.runtime.membership import MembershipChanges
from ramraft.server.runtime.node_api import InputLimits, NodeAPI
from ramraft.server.runtime.steward import Steward
from ramraft.server.runtime.transport import PeerServicer, PeerTransport
from ramraft.server.security.auth import CallLimits, Gatekeeper, InflightLimiter, TokenStore
from ramraft.server.security.budget import MemoryBudget
from ramraft.server.security.tls import TLSFiles
from ramraft.server.storage import open_storage
from ramraft.server.web.metrics import NodeMetrics
from ramraft.server.web.tier import WebTier
from ramraft.server.web.view import WebTierView

log = structlog.get_logger("ramraft.node")

LIVENESS_SERVICE = "liveness"
HEALTH_PORT_LIMIT = 64  # connections and concurrent calls on the plaintext health port
# SIGTERM hands leadership only to a voter heard from within this many
# heartbeat intervals (at least HANDOVER_MIN_ANSWER_WINDOW seconds): a
# stopped peer keeps its match index, so only its silence tells it apart.
HANDOVER_HEARTBEATS = 4
HANDOVER_MIN_ANSWER_WINDOW = 0.2
# How often a hand-over checks that its target still answers.
HANDOVER_POLL_SECONDS = 0.05


class ListenError(OSError):
    """A port this node must listen on cannot be had. ``in_use``: another
    process holds it (the same settings with another port can work)."""

    def __init__(self, flag: str, address: str, reason: str, *, in_use: bool) -> None:
        super().__init__(f"{flag} {address}: cannot listen: {reason}")
        self.in_use = in_use


def probe_listen(flag: str, address: str) -> None:
    """Raise ListenError unless ``address`` can be bound now, as the servers
    bind it (SO_REUSEADDR, no SO_REUSEPORT). gRPC says only "Failed to bind";
    this says why."""
    host, port = parse_address(address, flag)
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_ADDRCONFIG
        )
    except socket.gaierror as e:
        reason = f"cannot resolve {host!r}: {e.strerror}"
        raise ListenError(flag, address, reason, in_use=False) from None
    errors: list[OSError] = []
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(sockaddr)
            except OSError as e:
                errors.append(e)
    in_use = [e for e in errors if e.errno == errno.EADDRINUSE]
    if in_use:
        raise ListenError(
            flag,
            address,
            f"port {port} is in use by another process (stop it, or choose another port)",
            in_use=True,
        )
    if errors and len(errors) == len(infos):
        first = errors[0]
        reason = {
            errno.EADDRNOTAVAIL: f"{host} is not an address of this machine",
            errno.EACCES: f"permission denied for port {port} (ports below 1024 need privileges)",
        }.get(first.errno or 0, f"port {port}: {first.strerror}")
        raise ListenError(flag, address, reason, in_use=False)


def server_options(
    max_receive: int, max_connections: int, limits: NodeLimits, max_streams: int
) -> list[tuple[str, int]]:
    """A gRPC server's channel arguments. grpc-python has no hook before a
    connection's handshake, so these are what bound a connection that sends
    nothing useful: the handshake must finish within --handshake-timeout-ms;
    a connection without a call is closed after --idle-timeout-ms (calls in
    use, a KV.Stream or a peer's stream, are never cut for idleness: an
    open call is not idle); at most ``max_streams`` calls at once per
    connection (more wait in the client); at most ``max_connections``
    connections (the fd limit is raised above that, raise_fd_limit)."""
    return [
        # gRPC sets SO_REUSEPORT by default: a second process could then listen
        # on the same port and take half of the connections.
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", max_receive),
        ("grpc.max_send_message_length", PEER_MESSAGE_BYTES),
        ("grpc.max_allowed_incoming_connections", max_connections),
        ("grpc.server_handshake_timeout_ms", limits.handshake_timeout_ms),
        ("grpc.max_connection_idle_ms", limits.idle_timeout_ms),
        ("grpc.max_concurrent_streams", max_streams),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_ping_strikes", 0),
    ]


# The cyclic garbage collector's thresholds for a node's process. The
# defaults (700, 10, 10) run a young collection every 700 new container
# objects and a full one every 100 of those (when enough survived): with a
# state of a million keys, a log held until the next snapshot and a watch
# history, the full collections scan millions of objects and took 17% of a
# leader's time at 16,000 writes/s (gc.callbacks, ramraft bench --mode
# inproc-write --in-flight 1000). The state is acyclic, plain data that only
# grows; cycles are rare and still collected, later.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Raise this process's GC thresholds to at least GC_THRESHOLDS (the
    node owns the process, as it owns the file-descriptor limit; higher
    thresholds a host set are kept)."""
    current = gc.get_threshold()
    wanted = tuple(max(c, w) for c, w in zip(current, GC_THRESHOLDS, strict=False))
    if wanted != current:
        gc.set_threshold(*wanted)


def raise_fd_limit(needed: int) -> None:
    """Raise the soft limit on open files to the hard one, so that the
    connection limits (--max-connections per port) are what binds, not the
    process's file descriptors (often 1024 by default: fewer than one
    port's connections)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "fd_limit_below_connection_limits",
            fd_limit=soft,
            needed=needed,
            detail="the file-descriptor limit, not --max-connections, bounds connections; "
            "raise the hard limit (ulimit -Hn) or lower --max-connections",
        )


class Node:
    def __init__(
        self,
        config: NodeConfig,
        *,
        machine: Any = None,
        kv: KVMachine | None = None,
        app: Application | None = None,
        encode_result: Callable[[object], bytes] = encode_result,
        decode_result: Callable[[bytes], object] = decode_result,
    ) -> None:
        config.validate()
        self.config = config
        self.kv = kv if kv is not None else KVMachine()
        self.app: HostedApp | None = None
        if app is not None:
            if machine is not None:
                raise ValueError("give either an app or a machine, not both")
            self.app, machine = HostedApp.build(app, self.kv)
        elif machine is None:
            machine = ClusterMachine(self.kv, kv=self.kv)
        # The runtime applies the log to this machine; with the cluster
        # record (machines/cluster.py) it also carries the versions, the
        # cluster id and the divergence alarm.
        self.machine = machine
        self.encode_result = encode_result
        self.decode_result = decode_result
        self.runtime: RaftRuntime | None = None
        self.api: NodeAPI | None = None
        self.blobs: NodeBlobs | None = None  # with the cluster record (machines/cluster.py)
        self.membership: MembershipChanges | None = None
        self.metrics: NodeMetrics | None = None  # made by start(), with the runtime
        self.servers: list[grpc.aio.Server] = []
        self.peer_servicer: PeerServicer | None = None  # made by start(), with the runtime
        self.client_streams = StreamsEnding()  # KV.Stream(Batch), Lease.KeepAlive
        self.watches: WatchHub | None = None  # made by start(), with the key-value history
        self.health = health.aio.HealthServicer()
        self.tls: TLSFiles | None = (
            TLSFiles(config.tls, node_id=config.node_id) if config.tls.enabled else None
        )
        self.tokens: TokenStore | None = (
            TokenStore(config.auth_tokens) if config.auth_tokens else None
        )
        self.limiter = InflightLimiter(
            config.limits.max_inflight, config.limits.max_inflight_per_connection
        )
        self.refusals = RateLimitedLog()
        self.budget = MemoryBudget(config.limits.max_inflight_bytes)
        self.web: WebTier | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()
        self._bound: dict[str, str] = {}  # flag -> address with the port bound
        self.started_at = time.time()

    def listen_addresses(self) -> list[tuple[str, str]]:
        """(flag, address) of every port this node listens on."""
        cfg = self.config
        out = [("--listen", cfg.client_listen)]
        if cfg.peer_listen:
            out.append(("--peer-listen", cfg.peer_listen))
        if cfg.http:
            out.append(("--http", cfg.http))
        if cfg.health_listen:
            out.append(("--health-listen", cfg.health_listen))
        return out

    async def start(self) -> None:
        """Check the ports, open the data directory, serve. On any failure,
        whatever was started is stopped again before the error propagates
        (a server left to the garbage collector after the loop closed would
        print a traceback after the one-line error)."""
        cfg = self.config
        self._ports_file().unlink(missing_ok=True)  # a killed run's; we are not up yet
        for flag, address in self.listen_addresses():
            probe_listen(flag, address)
        try:
            await self._start()
        except BaseException:
            await self._close_after_failed_start()
            raise
        self._write_ports_file()
        log.info(
            "node_started",
            id=cfg.node_id,
            grpc=cfg.client_listen,
            peer=cfg.peer_listen or cfg.client_listen,
            http=self.web.address if self.web is not None else None,
            health=self._bound.get("--health-listen"),
            tls=self.tls is not None,
            auth=self.tokens is not None,
            data_dir=cfg.data_dir,
        )

    async def _start(self) -> None:
        cfg = self.config
        log_store, snapshots = open_storage(cfg.data_dir)
        runtime = RaftRuntime(cfg, self.machine, log_store, snapshots)
        self.runtime = runtime
        runtime.refusals = self.refusals
        runtime.transport = PeerTransport(
            cfg.node_id,
            runtime.addresses,
            snapshots,
            runtime.report_unreachable,
            runtime.report_snapshot,
            tls=self.tls,
            snapshot_chunk_bytes=min(
                cfg.limits.snapshot_chunk_bytes, cfg.peer_message_bytes() // 2
            ),
            max_message_bytes=cfg.peer_message_bytes(),
        )
        limits = InputLimits.of(cfg.limits)
        self.api = api = NodeAPI(runtime, self.encode_result, self.decode_result, limits)
        self._start_watches_and_leases(runtime, api)
        self.membership = MembershipChanges(runtime)
        self.steward = Steward(runtime, self.membership.transfer_leadership)
        self.membership.admit = self.steward.admit
        runtime.transport.cluster_id = self.steward.cluster_id
        hosted = self.app
        if hosted is not None:
            hosted.attach(api, cfg.node_id)
        self.metrics = metrics = NodeMetrics(
            runtime,
            lambda: api.forwarded,
            jobs=hosted.jobs.report if hosted is not None and hosted.jobs is not None else None,
            events=hosted.events if hosted is not None else None,
        )
        runtime.listeners.append(metrics.runtime_listener)
        cluster = runtime.cluster
        if cluster is not None:
            store = BlobStore(
                cfg.blobs.path(cfg.data_dir),
                max_blob_bytes=cfg.blobs.max_blob_bytes,
                reserve_bytes=cfg.blobs.reserve_bytes,
                fsync=cfg.fsync,
            )
            settings = BlobSettings(
                cfg.blobs.gc_interval,
                cfg.blobs.gc_grace,
                # Half the peers' message limit: room for the message around the bytes.
                peer_chunk_bytes=min(1 << 20, cfg.peer_message_bytes() // 2),
            )
            self.blobs = NodeBlobs(runtime, api, store, cluster.blobs, settings)
            await self.blobs.prepare()
            metrics.registry.register(BlobCollector(self.blobs))

        self.peer_servicer = peer_servicer = PeerServicer(
            receive=runtime.receive,
            snapshots=snapshots,
            deliver_snapshot=lambda m: runtime.receive([m]),
            forward=self.api.serve_forward,
            current_term=lambda: runtime.core.term if runtime.core else 0,
            authenticate=self.tls is not None,
            is_member=runtime.peers.is_member,
            refusals=self.refusals,
            cluster_id=self.steward.cluster_id,
            info=self.steward.info,
            blobs=self.blobs,
        )
        self.kv_service = KVService(self.api, self.kv, self.watches, self.client_streams)
        self.lease_service = LeaseService(self.api, self.kv, self.lessor, self.client_streams)
        self.admin_service = AdminService(self.api, self.membership, self.steward)
        self.admin_service.blobs = self.blobs
        self.kv_service.observers.append(metrics.observer("grpc"))
        self.lease_service.observers.append(metrics.observer("grpc"))
        self.admin_service.observers.append(metrics.observer("grpc"))
        node_limits = cfg.limits
        # The client port accepts --max-request-bytes, also where it carries
        # the peers' messages (no --peer-listen): peers then cut theirs to
        # that size (NodeConfig.peer_message_bytes).
        max_receive = node_limits.request_bytes()
        raise_fd_limit(3 * node_limits.max_connections + HEALTH_PORT_LIMIT + 256)
        tune_gc()
        gatekeeper = Gatekeeper(
            self.tokens,
            self.limiter,
            runtime.peers.is_member,
            self.refusals,
            CallLimits(
                budget=self.budget,
                request_bytes=max_receive,
                request_timeout=node_limits.request_timeout_ms / 1000,
                stream_share=node_limits.max_inflight_bytes // 8,
            ),
        )
        # Per connection: a client's calls, or (shared port) a peer's
        # forwarded writes, which are bounded by its own --max-inflight.
        # Well above the in-flight limit, which answers RESOURCE_EXHAUSTED:
        # past this one grpc refuses the stream itself (REFUSED_STREAM, which
        # clients see as UNAVAILABLE).
        client_streams = 4 * node_limits.max_inflight_per_connection + 64
        if not cfg.peer_listen:
            client_streams = max(client_streams, node_limits.max_inflight + 64)
        client_server = grpc.aio.server(
            interceptors=[gatekeeper],
            options=server_options(
                max_receive, node_limits.max_connections, node_limits, client_streams
            ),
            # A backstop behind the gatekeeper's limits (which refuse first):
            # health checks, reflection and peer calls are not counted there.
            maximum_concurrent_rpcs=4 * node_limits.max_inflight + 64,
        )
        self.servers.append(client_server)
        kv_pb2_grpc.add_KVServicer_to_server(self.kv_service, client_server)
        kv_pb2_grpc.add_LeaseServicer_to_server(self.lease_service, client_server)
        admin_pb2_grpc.add_AdminServicer_to_server(self.admin_service, client_server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, client_server)
        services = [
            kv_pb2.DESCRIPTOR.services_by_name["KV"].full_name,
            kv_pb2.DESCRIPTOR.services_by_name["Lease"].full_name,
            admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ]
        if self.blobs is not None:
            blobs_service = BlobsService(self.blobs, runtime)
            blobs_service.observers.append(metrics.observer("grpc"))
            blobs_pb2_grpc.add_BlobsServiceServicer_to_server(blobs_service, client_server)
            services.append(blobs_pb2.DESCRIPTOR.services_by_name["BlobsService"].full_name)
        tls = self.tls
        if cfg.peer_listen:
            peer_server = grpc.aio.server(
                options=server_options(
                    cfg.peer_message_bytes(),
                    node_limits.max_connections,
                    node_limits,
                    node_limits.max_inflight + 64,
                ),
                maximum_concurrent_rpcs=4 * node_limits.max_inflight + 64,
            )
            self.servers.append(peer_server)
            peer_server.add_generic_rpc_handlers(
                (
                    peer_servicer.handler(),
                    peer_servicer.admin_status_handler(
                        self.admin_service.Status,
                        admin_pb2.StatusRequest.FromString,
                        admin_pb2.StatusResponse.SerializeToString,
                    ),
                )
            )
            self._bind(peer_server, cfg.peer_listen, "--peer-listen", tls, require_client=True)
            require_client = cfg.tls.client_auth == "require"
        else:
            client_server.add_generic_rpc_handlers((peer_servicer.handler(),))
            services.append(raft_pb2.DESCRIPTOR.services_by_name["Peer"].full_name)
            # Peers are authenticated by their certificates: on a shared port
            # every caller must present one (see server/runtime/transport.py).
            require_client = True
        reflection.enable_server_reflection(services, client_server)
        self._bind(client_server, cfg.client_listen, "--listen", tls, require_client)
        if cfg.health_listen:
            # Plaintext, health only: kubelet's gRPC probes cannot speak TLS.
            health_server = grpc.aio.server(
                options=server_options(64 << 10, HEALTH_PORT_LIMIT, node_limits, 4),
                maximum_concurrent_rpcs=HEALTH_PORT_LIMIT,
            )
            self.servers.append(health_server)
            health_pb2_grpc.add_HealthServicer_to_server(self.health, health_server)
            self._bind(health_server, cfg.health_listen, "--health-listen", None, False)
        self._warn_about_security()
        # Every port is bound: now the log is loaded and the core runs, before
        # any server takes a call.
        await runtime.start()
        if hosted is not None and hosted.events is not None:
            # Events of entries up to the snapshot it started from are not
            # known here (a resume from before them gets a reset).
            hosted.events.restart_at(runtime.machine.applied_index)
        self._check_cluster_id()
        self.steward.start()
        self.lessor.start()
        if self.blobs is not None:
            assert runtime.core is not None
            # Log entries up to here were in this node's log before it
            # started: their deletions are replays (server/blobs/manager.py).
            self.blobs.start(runtime.core.last_index)
        for server in self.servers:
            await server.start()
        if hosted is not None and hosted.jobs is not None:
            hosted.jobs.start()
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        self._health_task = asyncio.get_running_loop().create_task(self._watch_health())
        if cfg.http:
            self.web = WebTier(
                WebTierView(
                    node_id=cfg.node_id,
                    started_at=self.started_at,
                    limits=cfg.limits,
                    reports=runtime,
                    api=api,
                    kv=self.kv,
                    metrics=metrics,
                    tokens=self.tokens,
                    limiter=self.limiter,
                    budget=self.budget,
                    refusals=self.refusals,
                    tls=self.tls,
                    app=self.app,
                    peer_channel=runtime.transport.channel,
                    watches=self.watches,
                    blobs=self.blobs,
                )
            )
            try:
                await self.web.start(cfg.http)
            except OSError:
                probe_listen("--http", cfg.http)  # the reason, as for the gRPC ports
                raise

    def _start_watches_and_leases(self, runtime: RaftRuntime, api: NodeAPI) -> None:
        """The history of changes watches replay, fed by the key-value
        machine from the first entry the runtime applies (so before it
        starts), and the leader's lease clock."""
        limits = self.config.limits
        history = EventHistory(limits.watch_history_revisions, limits.watch_history_bytes)
        self.kv.on_events = history.append
        self.kv.on_reset = history.reset
        kv = self.kv

        def inactive() -> str | None:
            if kv.active_version >= 2 and kv.revision:
                return None
            return (
                "watches need key-value version 2; the cluster runs version 1 until every "
                "node supports it"
            )

        self.watches = WatchHub(
            history,
            WatchLimits(
                max_watches=limits.max_watches,
                buffer_bytes=limits.watch_buffer_bytes,
                progress_interval=limits.watch_progress_ms / 1000,
                max_key_bytes=limits.max_key_bytes,
            ),
            inactive,
        )

        def role() -> tuple[Role, int]:
            core = runtime.core
            return runtime.role, core.term if core is not None else 0

        cfg = self.config
        self.lessor = Lessor(
            kv,
            role,
            lambda: api.linearizable(1.0),
            runtime.propose,
            # The longest an old leader may still believe it leads.
            election_timeout=2 * cfg.election_ticks * cfg.tick_ms / 1000,
        )

    async def _close_after_failed_start(self) -> None:
        # stop() after this returns at once: there is nothing left to stop.
        self._stopped.set()
        if self.runtime is not None:
            self.runtime.stopping = True
        with contextlib.suppress(Exception):
            if self.app is not None and self.app.jobs is not None:
                await self.app.jobs.close()
        with contextlib.suppress(Exception):
            if self.web is not None:
                await self.web.stop()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await server.stop(None)
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._health_task
        lessor: Lessor | None = getattr(self, "lessor", None)
        if lessor is not None:
            await lessor.close()
        if self.blobs is not None:
            with contextlib.suppress(Exception):
                await self.blobs.close()
        runtime = self.runtime
        if runtime is not None:
            with contextlib.suppress(Exception):
                await runtime.transport.close()
            with contextlib.suppress(Exception):
                await runtime.close()

    def _ports_file(self) -> Path:
        return Path(self.config.data_dir) / PORTS_FILE

    def listening(self) -> dict[str, Any]:
        """What this node serves on, with the ports actually bound."""
        cfg = self.config
        client = self._bound.get("--listen", cfg.client_listen)
        return {
            "id": cfg.node_id,
            "pid": os.getpid(),
            "grpc": client,
            "peer": self._bound.get("--peer-listen", client),
            "http": self.web.address if self.web is not None else None,
            "health": self._bound.get("--health-listen"),
        }

    def _write_ports_file(self) -> None:
        # Written whole and renamed into place: a reader never sees half of it.
        path = self._ports_file()
        temporary = path.with_name(f".{PORTS_FILE}.tmp")
        temporary.write_text(json.dumps(self.listening()) + "\n")
        os.replace(temporary, path)

    def _warn_about_security(self) -> None:
        cfg = self.config
        if self.tls is None and self.tokens is not None:
            # Started only with --insecure (NodeConfig.validate refuses otherwise).
            log.warning(
                "tokens_without_tls",
                detail="--insecure: tokens travel in cleartext, and the peer port is "
                "unauthenticated: anyone who reaches it can act as a peer (and write through "
                "Peer.Forward); turn TLS on (--tls-cert/--tls-key/--tls-ca)",
                peer=cfg.peer_listen or cfg.client_listen,
            )
        if self.tls is not None and not cfg.peer_listen and cfg.tls.client_auth != "require":
            log.info(
                "client_certificates_required",
                detail="TLS on a port shared with peers requires a client certificate from "
                "every caller; use --peer-listen to serve clients without one",
            )

    def _bind(
        self,
        server: grpc.aio.Server,
        address: str,
        flag: str,
        tls: TLSFiles | None = None,
        require_client: bool = False,
    ) -> None:
        try:
            if tls is not None:
                port = server.add_secure_port(address, tls.server_credentials(require_client))
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as e:
            # Taken since probe_listen() looked, or not bindable for a reason
            # the probe cannot see: ask the probe again for the reason.
            probe_listen(flag, address)
            raise ListenError(flag, address, f"gRPC could not bind it: {e}", in_use=False) from e
        if port == 0:
            probe_listen(flag, address)
            raise ListenError(flag, address, "gRPC could not bind it", in_use=False)
        self._bound[flag] = join_address(parse_address(address, flag)[0], port)

    def ready(self) -> bool:
        """Knows a leader and has applied what it knows to be committed
        (the gRPC health service's "" status, and /readyz)."""
        return self.runtime is not None and self.runtime.ready()

    def _check_cluster_id(self) -> None:
        """A data directory of one cluster is never started as a node of
        another (--cluster-id, RAMRAFT_CLUSTER_ID)."""
        assert self.runtime is not None
        recorded = self.runtime.cluster_state().cluster_id
        wanted = self.config.cluster_id
        if recorded and wanted and recorded != wanted:
            raise ConfigError(
                f"--cluster-id {wanted}: the data directory {self.config.data_dir} belongs to "
                f"cluster {recorded}; start it with that id, or with an empty data directory"
            )

    async def _watch_health(self) -> None:
        serving = None
        while True:
            now = self.ready()
            if now != serving:
                serving = now
                status = (
                    health_pb2.HealthCheckResponse.SERVING
                    if now
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                await self.health.set("", status)
                for name in ("ramraft.v1.KV", "ramraft.v1.Admin"):
                    await self.health.set(name, status)
            if self.runtime is not None and self.runtime.failed is not None:
                await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
            if self.tls is not None:
                # Notice rotated files even when no connection comes in (at most
                # one stat of the files a second; server/security/tls.py).
                self.tls.refresh()
            await asyncio.sleep(0.1)

    async def stop(self, *, transfer: bool = True, grace: float = 10.0) -> None:
        """Graceful shutdown; safe to call twice."""
        runtime = self.runtime
        if runtime is None and not self._stopped.is_set():
            return  # never started
        if runtime is None or runtime.stopping:
            await self._stopped.wait()
            return
        log.info("node_stopping", id=self.config.node_id, role=runtime.role.value)
        self._ports_file().unlink(missing_ok=True)  # no longer (fully) serving
        if self.app is not None and self.app.jobs is not None:
            # First: a job must not propose while leadership is handed over.
            await self.app.jobs.close()
        if self.app is not None and self.app.events is not None:
            self.app.events.close_all("the node is shutting down")  # browsers reconnect elsewhere
        deadline = time.monotonic() + grace
        if transfer and runtime.core is not None and runtime.failed is None:
            alone = False
            if runtime.role is Role.LEADER and len(runtime.core.conf.voters) > 1:
                alone = not await self._hand_over(grace)
            # Let writes already in the log finish: they commit under the
            # new leader and resolve here when applied. With no peer
            # answering they cannot commit: they fail at once (Unavailable;
            # the client retries them under the same session).
            if not alone:
                await runtime.wait_idle(deadline - time.monotonic())
        runtime.stopping = True
        await self.health.enter_graceful_shutdown()
        self.end_streams()
        if self.web is not None:
            await self.web.stop()
        for server in self.servers:
            # In-flight writes were awaited above and the streams ended;
            # what is left are reads and transfers (blobs, backups) in service.
            await server.stop(grace=max(0.0, min(STOP_GRACE, deadline - time.monotonic())))
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        await self.steward.close()
        await self.lessor.close()
        if self.blobs is not None:
            await self.blobs.close()
        if self.api is not None:
            await self.api.close()
        await runtime.transport.close()
        await runtime.close()
        log.info("node_stopped", id=self.config.node_id)
        self._stopped.set()

    def end_streams(self) -> None:
        """End the streams held open to this node as it stops: the peers'
        (Stream, ForwardStream), the clients' (KV.Stream(Batch),
        Lease.KeepAlive) and the watches, over gRPC and HTTP. Each answers
        what it read and ends; left open, they would hold the gRPC servers'
        grace and the web tier's shutdown."""
        peers, forwards = (
            self.peer_servicer.end_streams() if self.peer_servicer is not None else (0, 0)
        )
        clients = self.client_streams.end_all()
        watches = self.watches.shut_down() if self.watches is not None else 0
        log.info(
            "streams_ended",
            peer_streams=peers,
            forward_streams=forwards,
            client_streams=clients,
            watch_streams=watches,
        )

    async def _hand_over(self, grace: float) -> bool:
        """Hand leadership to a voter that answered lately and holds every
        committed entry; without one, do not wait for a transfer that cannot
        complete. Returns whether any such voter was found."""
        cfg = self.config
        membership = self.membership
        assert membership is not None
        within = max(
            HANDOVER_MIN_ANSWER_WINDOW,
            HANDOVER_HEARTBEATS * cfg.heartbeat_ticks * cfg.tick_ms / 1000,
        )
        unfit = self.steward.unfit_to_lead()
        candidates = [
            c
            for c in await membership.handover_candidates(answered_within=within)
            if c not in unfit
        ]
        if not candidates:
            log.warning(
                "leadership_not_handed_over",
                reason=f"no voter answered in the last {within:.2f}s holding every committed "
                "entry; stopping without a transfer (the others elect a leader)",
            )
            return False
        target = candidates[0]
        assert self.runtime is not None
        peers = self.runtime.peers
        transfer = asyncio.ensure_future(
            membership.transfer_leadership(target, timeout=min(5.0, grace / 2))
        )
        try:
            # A target that goes silent is stopping too (the whole cluster
            # stops at once: it ended its streams): do not wait the transfer's
            # whole timeout for it.
            while not transfer.done():
                await asyncio.wait({transfer}, timeout=HANDOVER_POLL_SECONDS)
                if not transfer.done() and not peers.answered_within(
                    target, within, time.monotonic()
                ):
                    transfer.cancel()
                    # Expected when the whole cluster stops (Ctrl-C of
                    # `ramraft cluster`): not a warning every time.
                    log.info(
                        "leadership_handover_abandoned",
                        to=target,
                        reason="it stopped answering (stopping too)",
                    )
                    return True
            log.info("leadership_handed_over", to=transfer.result())
        except Exception as e:
            log.warning("leadership_handover_failed", to=target, error=str(e))
        return True

    async def run_until_signalled(self) -> None:
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        # SIGHUP too: a closed terminal (or a habit of `kill -HUP`) stops the
        # node as SIGTERM does, not by the signal's default, which kills it
        # without a hand-over. Certificates and tokens reload by themselves
        # when their files change.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, stop_requested.set)
        await self.start()
        await stop_requested.wait()
        await self.stop()

"""A node's settings, and parsing of the ``--peers`` list."""

from __future__ import annotations

from dataclasses import dataclass, field

from ramraft.consensus.types import check_node_id
from ramraft.server.machines.cluster import valid_cluster_id


class ConfigError(ValueError):
    """A setting that cannot work; the message says which and why."""


def parse_address(text: str, what: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port). Port 0 passes: a bind
    address may ask for any free port; addresses others must know refuse it
    (parse_peers, NodeConfig.validate)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{what}: {text!r} is not HOST:PORT")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        # grpc would read all of it as an IPv6 address (and bind port 443).
        raise ConfigError(f"{what}: {text!r}: write an IPv6 address in brackets, [{host}]:{port}")
    return host.strip("[]"), int(port)


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _known_port(text: str, what: str) -> None:
    if parse_address(text, what)[1] == 0:
        raise ConfigError(
            f"{what}: {text!r}: port 0 (any free port) is not allowed here: members and "
            "clients must know this address in advance"
        )


def parse_peers(text: str) -> dict[str, str]:
    """``a=host:port,b=host:port`` -> {"a": "host:port", ...}."""
    peers: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        node_id, sep, address = item.partition("=")
        if not sep:
            raise ConfigError(f"--peers: {item!r} is not ID=HOST:PORT")
        try:
            check_node_id(node_id)
        except ValueError as e:
            raise ConfigError(f"--peers: {e}") from e
        _known_port(address, f"--peers entry {node_id}")
        if node_id in peers:
            raise ConfigError(f"--peers: {node_id} is listed twice")
        twin = next((other for other, a in peers.items() if a == address.strip()), None)
        if twin is not None:
            # Each node listens on its own address: the messages meant for
            # one would reach the other, which refuses them, and no leader is
            # ever elected.
            raise ConfigError(
                f"--peers: {twin} and {node_id} have the same address {address.strip()}: "
                "give each node its own"
            )
        peers[node_id] = address.strip()
    if not peers:
        raise ConfigError("--peers: no members given")
    return peers


@dataclass
class NodeLimits:
    """Input and resource limits; every one is configurable (``ramraft node
    --help`` lists the flags). Together they bound a node's memory under a
    flood (see :func:`memory_bound` for the one formula): at most
    ``max_inflight`` requests are served at once, on at most
    ``max_connections`` connections per port, and every byte of a request
    being read or a response being built or waiting to be sent counts against
    ``max_inflight_bytes`` (server/security/budget.py); excess requests get
    RESOURCE_EXHAUSTED (HTTP 429) at once, before their message is read,
    instead of waiting in a queue."""

    max_key_bytes: int = 1024
    max_value_bytes: int = 1 << 20
    max_range_limit: int = 10_000  # items per Range page
    max_pending_requests: int = 20_000  # writes + reads waiting in the runtime
    max_request_bytes: int = 0  # gRPC request message size; 0: derived from the value limit
    max_http_body_bytes: int = 0  # HTTP request body; 0: derived from the value limit
    max_inflight: int = 2_048  # client requests being served at once (gRPC + HTTP)
    max_inflight_per_connection: int = 1_024  # of those, on one client connection
    max_connections: int = 1_024  # client connections per port (gRPC, HTTP)
    snapshot_chunk_bytes: int = 1 << 20  # data bytes per InstallSnapshot chunk sent
    # Key-value version 2: one transaction's compares + ops, and its bytes
    # (also the most data a range inside it returns); the keys one
    # delete-range may remove (one apply must stay short).
    max_txn_ops: int = 128
    max_txn_bytes: int = 2 << 20
    max_delete_range_keys: int = 10_000
    # Watches: how many on this node; the history of changes they replay
    # (node-local, in RAM); how far behind (bytes of history) a watch may
    # fall before it is canceled as too slow; idle time before a progress
    # notification.
    max_watches: int = 10_000
    watch_history_revisions: int = 100_000
    watch_history_bytes: int = 64 << 20
    watch_buffer_bytes: int = 4 << 20
    watch_progress_ms: int = 10_000
    max_range_bytes: int = 4 << 20  # key and value bytes per Range page
    # Every request being read and every response being built or sent, in
    # bytes, node-wide (gRPC and HTTP together): the memory budget.
    max_inflight_bytes: int = 256 << 20
    max_connections_per_source: int = 256  # HTTP connections from one address
    handshake_timeout_ms: int = 5_000  # TLS/HTTP2 handshake, and HTTP request headers
    request_timeout_ms: int = 5_000  # a call must deliver its request message within this
    idle_timeout_ms: int = 300_000  # a connection without a call is closed after this
    max_deadline_ms: int = 60_000  # the deadline of a call that sets none (or a longer one)

    def request_bytes(self) -> int:
        """The gRPC request size limit: room for the largest request, a
        CompareAndSwap with two values of the largest size and a key."""
        if self.max_request_bytes:
            return self.max_request_bytes
        return 2 * self.max_value_bytes + self.max_key_bytes + (64 << 10)

    def http_body_bytes(self) -> int:
        """The HTTP body limit: room for the largest value sent as base64 JSON."""
        if self.max_http_body_bytes:
            return self.max_http_body_bytes
        return self.max_value_bytes * 4 // 3 + (64 << 10)

    def validate(self) -> None:
        for name in (
            "max_key_bytes",
            "max_value_bytes",
            "max_range_limit",
            "max_pending_requests",
            "max_inflight",
            "max_inflight_per_connection",
            "max_connections",
            "snapshot_chunk_bytes",
            "max_txn_ops",
            "max_txn_bytes",
            "max_delete_range_keys",
            "max_watches",
            "watch_history_revisions",
            "watch_history_bytes",
            "watch_buffer_bytes",
            "watch_progress_ms",
            "max_range_bytes",
            "max_inflight_bytes",
            "max_connections_per_source",
            "handshake_timeout_ms",
            "request_timeout_ms",
            "idle_timeout_ms",
            "max_deadline_ms",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if self.max_request_bytes < 0 or self.max_http_body_bytes < 0:
            raise ConfigError("--max-request-bytes and --max-http-body-bytes must be >= 0")
        smallest = self.max_value_bytes + self.max_key_bytes + 1024
        if self.max_request_bytes and self.max_request_bytes < smallest:
            raise ConfigError(
                f"--max-request-bytes {self.max_request_bytes} is below --max-value-bytes + "
                f"--max-key-bytes + 1 KiB ({smallest}): the largest value could never be "
                "written over gRPC, nor replicated (peers' messages are held to it too)"
            )
        if self.snapshot_chunk_bytes > PEER_MESSAGE_BYTES // 2:
            raise ConfigError(
                f"--snapshot-chunk-bytes must be at most {PEER_MESSAGE_BYTES // 2} "
                "(half the peer port's message limit)"
            )
        if self.max_inflight_bytes < 2 * self.request_bytes():
            raise ConfigError(
                f"--max-inflight-bytes {self.max_inflight_bytes} is below twice "
                f"--max-request-bytes ({self.request_bytes()}): not even one request of the "
                "largest size could be read and answered"
            )


# <data-dir>/ports.json: what a node listens on (id, pid, grpc, peer, http,
# health), written once it serves and removed when it stops (server/node.py).
PORTS_FILE = "ports.json"

# How long a stopping node lets a request still running finish before it is
# cancelled, on its gRPC servers and its web tier (server/node.py ``stop``).
# Writes were waited for before this (a leader's hand-over and in-flight
# writes have the stop's whole grace); what is left are reads and
# forwarded calls, which take milliseconds, and long handlers that would
# otherwise hold the stop.
STOP_GRACE = 0.5

# The largest message a node sends to a peer or accepts from one (a batch of
# AppendEntries, a snapshot chunk, a forwarded write) on a separate peer
# port whose callers are authenticated (mutual TLS); every other port
# accepts at most NodeLimits.request_bytes(), and a node never sends a peer
# more than that (server/runtime/transport.py splits its batches;
# server/runtime/wire.py refuses larger batches).
PEER_MESSAGE_BYTES = 64 << 20

# What a node holds before it serves anything: the interpreter, grpc, aiohttp
# and the code (measured: 60-75 MiB at rest), with headroom.
BASELINE_RSS_BYTES = 120 << 20
# What one open connection may hold in the gRPC core and the event loop
# without a call in flight: the HTTP/2 windows and TLS buffers (measured:
# about 40 KiB per idle TLS connection; the bound leaves room).
CONNECTION_BYTES = 128 << 10
# What the watch history holds per revision besides its events' key and
# value bytes: the tuples and the Event objects (measured with tracemalloc:
# about 350 bytes for a one-event revision).
HISTORY_REVISION_BYTES = 512


def memory_bound(limits: NodeLimits, snapshot_bytes: int, retain_bytes: int) -> int:
    """The documented bound on a node's RSS, less the state machine's own
    data (about three times the bytes of its keys and values in Python
    objects): the baseline, the log held in RAM until a snapshot covers it
    and its uncommitted tail, the in-flight budget (requests being read, responses being built and
    sent, each counted once it is admitted; the wire copy and the Python
    objects of a message are both counted), the connections of the three
    ports (gRPC, peer, HTTP) and the watch history (its events' bytes and
    their objects). ``ramraft node --help`` prints the formula."""
    return (
        BASELINE_RSS_BYTES
        + snapshot_bytes
        + retain_bytes
        + uncommitted_bytes(snapshot_bytes)
        + limits.max_inflight_bytes
        + 3 * limits.max_connections * CONNECTION_BYTES
        + limits.watch_history_bytes
        + limits.watch_history_revisions * HISTORY_REVISION_BYTES
    )


def uncommitted_bytes(snapshot_bytes: int) -> int:
    """The most a leader holds of proposals not yet committed (the core's
    max_uncommitted_bytes; server/runtime/loop.py)."""
    return min(64 << 20, 2 * snapshot_bytes)


@dataclass
class TLSConfig:
    """Certificate files (PEM). All three or none: TLS is on when they are
    given. ``client_auth`` is "none" or "require" (a client certificate
    signed by ``ca`` on the client gRPC and HTTP ports); the peer port
    always requires one, with a member's identity."""

    cert: str = ""
    key: str = ""
    ca: str = ""
    client_auth: str = "none"

    @property
    def enabled(self) -> bool:
        return bool(self.cert or self.key or self.ca)

    def validate(self) -> None:
        given = {"--tls-cert": self.cert, "--tls-key": self.key, "--tls-ca": self.ca}
        if self.enabled and not all(given.values()):
            missing = ", ".join(flag for flag, value in given.items() if not value)
            raise ConfigError(
                f"TLS needs --tls-cert, --tls-key and --tls-ca together; missing {missing} "
                "(the CA verifies peers: every peer connection is mutual TLS)"
            )
        if self.client_auth not in ("none", "require"):
            raise ConfigError(f"--tls-client-auth: {self.client_auth!r} is not none or require")
        if self.client_auth == "require" and not self.enabled:
            raise ConfigError("--tls-client-auth require needs TLS (--tls-cert/--tls-key/--tls-ca)")


@dataclass
class BlobConfig:
    """Where a node keeps blob files and how it treats them (server/blobs/)."""

    directory: str = ""  # --blob-dir; empty: <data-dir>/blobs
    max_blob_bytes: int = 1 << 30  # the largest blob taken
    # Blobs are refused (RESOURCE_EXHAUSTED, HTTP 507) when taking one would
    # leave less than this free on the blob directory's file system: the WAL
    # and snapshots (on the same volume by default) must still fit.
    reserve_bytes: int = 256 << 20
    gc_interval: float = 600.0  # seconds between the leader's collect entries; 0: none
    gc_grace: float = 3600.0  # seconds a blob stays after its last put or reference

    def path(self, data_dir: str) -> str:
        return self.directory or f"{data_dir.rstrip('/')}/blobs"

    def validate(self) -> None:
        if self.max_blob_bytes < 1:
            raise ConfigError("--max-blob-bytes must be at least 1")
        if self.reserve_bytes < 0:
            raise ConfigError("--blob-reserve-bytes must not be negative")
        if self.gc_interval < 0 or self.gc_grace < 0:
            raise ConfigError("--blob-gc-interval and --blob-gc-grace must not be negative")
        if self.gc_interval and self.gc_grace < self.gc_interval:
            raise ConfigError(
                f"--blob-gc-grace {self.gc_grace:g} is shorter than --blob-gc-interval "
                f"{self.gc_interval:g}: a blob is kept at least the grace minus the interval "
                "after its last reference, which would be nothing"
            )


@dataclass
class NodeConfig:
    node_id: str
    peers: dict[str, str]  # initial members: id -> peer gRPC address
    data_dir: str
    listen: str = ""  # client gRPC bind address; default: own --peers address
    peer_listen: str = ""  # separate peer port; default: the client port serves peers too
    http: str = ""  # web tier bind address (empty: no web tier)
    # A fine tick (10 ms) with many ticks per timeout: the randomized election
    # timeout then takes one of 50 values in [0.5 s, 1 s), not 10, so two
    # followers rarely time out together (a split vote costs a whole round).
    tick_ms: int = 10
    election_ticks: int = 50
    heartbeat_ticks: int = 5
    snapshot_entries: int = 20_000  # take a snapshot after this many applied entries
    snapshot_bytes: int = 64 << 20  # ... or after this many bytes of applied commands
    retain_entries: int = 5_000  # log entries kept behind a snapshot for slow followers
    retain_bytes: int = 32 << 20  # ... but no more than this many bytes of them
    join: bool = False  # start empty and wait to be added, instead of bootstrapping
    fsync: bool = True
    limits: NodeLimits = field(default_factory=NodeLimits)
    tls: TLSConfig = field(default_factory=TLSConfig)
    auth_tokens: str = ""  # token file (server/security/auth.py); empty: no client authentication
    # Node ids (fnmatch patterns) accepted as peers besides the known
    # members, e.g. "ramraft-*": a member that missed the addition of a new
    # member still accepts it as leader (see server/runtime/transport.py).
    peer_id_pattern: str = ""
    health_listen: str = ""  # plaintext gRPC health-only port (k8s probes speak no TLS)
    # The cluster this node belongs to (machines/cluster.py). Empty: whatever
    # the cluster it joins is named (a new cluster is named by its first
    # leader); set: peers of another cluster are refused, and a data
    # directory of another cluster is not started.
    cluster_id: str = ""
    # The leader runs a state check (all nodes digest their state at one
    # index and compare: runtime/checks.py) every this many applied entries;
    # 0: only on demand (ramraft check).
    check_entries: int = 10_000
    # Start with tokens but without TLS: tokens then travel in cleartext and
    # the peer port is unauthenticated (anyone who reaches it can act as a
    # peer). Refused unless this says so (see validate()).
    insecure: bool = False
    blobs: BlobConfig = field(default_factory=BlobConfig)

    def validate(self) -> None:
        try:
            check_node_id(self.node_id)
        except ValueError as e:
            raise ConfigError(f"--id: {e}") from e
        if self.node_id not in self.peers and not self.join:
            raise ConfigError(
                f"--id {self.node_id} is not in --peers ({', '.join(self.peers)}); "
                "use --join to start a node that will be added later"
            )
        _known_port(self.client_listen, "--listen")
        if self.peer_listen:
            _known_port(self.peer_listen, "--peer-listen")
        if self.http:
            parse_address(self.http, "--http")
        if self.health_listen:
            parse_address(self.health_listen, "--health-listen")
        self._check_ports_differ()
        self.limits.validate()
        self.tls.validate()
        self.blobs.validate()
        if self.auth_tokens and not self.tls.enabled and not self.insecure:
            raise ConfigError(
                "--auth-tokens without TLS protects nothing: tokens would travel in cleartext "
                "and the peer port would accept anyone as a peer (a forged Peer.Forward "
                "writes, a forged AppendEntries deposes the leader). Turn TLS on "
                "(--tls-cert/--tls-key/--tls-ca), or pass --insecure (env RAMRAFT_INSECURE=1) "
                "on a network you trust"
            )
        if self.tick_ms < 1 or self.election_ticks <= self.heartbeat_ticks:
            raise ConfigError("need --tick-ms >= 1 and --election-ticks > --heartbeat-ticks")
        if self.cluster_id and not valid_cluster_id(self.cluster_id):
            raise ConfigError(
                f"--cluster-id {self.cluster_id!r}: 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        if self.check_entries < 0:
            raise ConfigError("--check-entries must not be negative")

    def peer_message_bytes(self) -> int:
        """The largest message this node sends to or accepts from a peer: the
        peer port's larger limit only where every caller of that port is an
        authenticated member (a separate --peer-listen port with TLS);
        elsewhere --max-request-bytes, as for clients. Batches, AppendEntries
        and snapshot chunks are cut to fit (server/runtime/transport.py)."""
        if self.peer_listen and self.tls.enabled:
            return PEER_MESSAGE_BYTES
        return self.limits.request_bytes()

    def _check_ports_differ(self) -> None:
        """Two of this node's own ports on one number would collide (the
        second bind would read as "in use by another process")."""
        wildcard = ("", "0.0.0.0", "::")
        seen: list[tuple[str, str, int]] = []
        for flag, address in (
            ("--listen", self.client_listen),
            ("--peer-listen", self.peer_listen),
            ("--http", self.http),
            ("--health-listen", self.health_listen),
        ):
            if not address:
                continue
            host, port = parse_address(address, flag)
            for other_flag, other_host, other_port in seen:
                same_host = host == other_host or host in wildcard or other_host in wildcard
                if port and port == other_port and same_host:
                    raise ConfigError(
                        f"{flag} {address} and {other_flag} use the same port {port}: "
                        "give each its own"
                    )
            seen.append((flag, host, port))

    @property
    def client_listen(self) -> str:
        if self.listen:
            return self.listen
        own = self.peers.get(self.node_id)
        if own is None:
            raise ConfigError(f"--listen is needed: {self.node_id} has no entry in --peers")
        return own

    def client_address_of(self, peer_address: str) -> str:
        """The address clients should use for the member at ``peer_address``:
        the same one, unless peers talk on a separate port, in which case the
        member's host with this node's client port."""
        if not self.peer_listen:
            return peer_address
        host, _ = parse_address(peer_address, "peer address")
        _, port = parse_address(self.client_listen, "--listen")
        return join_address(host, port)

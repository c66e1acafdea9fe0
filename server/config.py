"""A node's settings, and parsing of the ``--peers`` list."""

from __future__ import annotations

from dataclasses import dataclass, field

from consensus.types import check_node_id


class ConfigError(ValueError):
    """A setting that cannot work; the message says which and why."""


def parse_address(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what}: {text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


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
        parse_address(address, f"--peers entry {node_id}")
        if node_id in peers:
            raise ConfigError(f"--peers: {node_id} is listed twice")
        peers[node_id] = address.strip()
    if not peers:
        raise ConfigError("--peers: no members given")
    return peers


@dataclass
class Limits:
    """Input limits; every one is configurable (see ``ramraft node --help``)."""

    max_key_bytes: int = 1024
    max_value_bytes: int = 1 << 20
    max_range_limit: int = 10_000
    max_pending_requests: int = 20_000  # writes + reads waiting in the runtime
    max_request_bytes: int = 4 << 20  # gRPC message size


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
    retain_entries: int = 5_000  # log entries kept behind a snapshot for slow followers
    join: bool = False  # start empty and wait to be added, instead of bootstrapping
    fsync: bool = True
    limits: Limits = field(default_factory=Limits)

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
        parse_address(self.client_listen, "--listen")
        if self.peer_listen:
            parse_address(self.peer_listen, "--peer-listen")
        if self.http:
            parse_address(self.http, "--http")
        if self.tick_ms < 1 or self.election_ticks <= self.heartbeat_ticks:
            raise ConfigError("need --tick-ms >= 1 and --election-ticks > --heartbeat-ticks")

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
        return f"{host}:{port}"

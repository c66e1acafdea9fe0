"""A ProcessCluster with TLS and tokens on: the certificates, token file and
the client options that go with them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ramraft.client import Client, TLSOptions
from ramraft.proto import admin_pb2
from ramraft.tools.certs import make_cluster_certs
from tests.server.procs import ProcessCluster, free_ports

ADMIN_TOKEN = "admin-token-0123456789abcdef"
WRITE_TOKEN = "write-token-0123456789abcdef"
READ_TOKEN = "read-token-0123456789abcdef0"


@dataclass(frozen=True)
class Credentials:
    certs: Path
    tokens: Path

    def tls(self, name: str = "client", *, ca: str = "ca.pem") -> TLSOptions:
        return TLSOptions.from_files(
            self.certs / ca, self.certs / f"{name}.pem", self.certs / f"{name}-key.pem"
        )


def make_credentials(root: Path, nodes: list[str], extra_nodes: list[str] = ()) -> Credentials:  # type: ignore[assignment]
    certs = root / "certs"
    hosts = ["127.0.0.1", "localhost"]
    make_cluster_certs(certs, {n: hosts for n in [*nodes, *extra_nodes]}, days=2)
    tokens = root / "tokens.txt"
    tokens.write_text(
        "# test tokens\n"
        f"admin ops {ADMIN_TOKEN}\n"
        f"write app {WRITE_TOKEN}\n"
        f"read  dash {READ_TOKEN}\n"
    )
    return Credentials(certs, tokens)


class SecureCluster(ProcessCluster):
    """Every node with --tls-* (its own certificate) and, if ``tokens``,
    --auth-tokens; ``client()`` and ``status()`` use the admin token and the
    client certificate."""

    def __init__(
        self,
        root: Path,
        creds: Credentials,
        nodes: int = 3,
        *,
        tokens: bool = True,
        peer_listen: bool = False,
        **kwargs: object,
    ) -> None:
        self.peer_listen = peer_listen
        self.peer_ports: dict[str, str] = {}
        super().__init__(root, nodes, **kwargs)  # type: ignore[arg-type]
        self.creds = creds
        self.tokens = tokens

    def pick_ports(self) -> None:
        super().pick_ports()
        if self.peer_listen:
            ports = free_ports(len(self.ids))
            self.peer_ports = {i: f"127.0.0.1:{ports[n]}" for n, i in enumerate(self.ids)}
            self.peers = ",".join(f"{i}={a}" for i, a in self.peer_ports.items())

    def argv(self, node_id: str) -> list[str]:
        argv = super().argv(node_id)
        certs = self.creds.certs
        argv += ["--tls-cert", str(certs / f"{node_id}.pem")]
        argv += ["--tls-key", str(certs / f"{node_id}-key.pem")]
        argv += ["--tls-ca", str(certs / "ca.pem")]
        if self.tokens:
            argv += ["--auth-tokens", str(self.creds.tokens)]
        if self.peer_ports:
            argv += ["--listen", self.grpc[node_id], "--peer-listen", self.peer_ports[node_id]]
        return argv

    def client(
        self, timeout: float = 10.0, ids: list[str] | None = None, **kwargs: object
    ) -> Client:
        options: dict[str, object] = {"token": ADMIN_TOKEN if self.tokens else None}
        options["tls"] = self.creds.tls()
        options.update(kwargs)
        return Client(self.endpoints(ids), timeout=timeout, **options)  # type: ignore[arg-type]

    def status(self, node_id: str) -> admin_pb2.NodeStatus | None:
        try:
            with self.client(timeout=1.0, ids=[node_id]) as c:
                return c.status(endpoint=self.grpc[node_id]).node
        except Exception:
            return None


def rss_mib(pid: int) -> float:
    """The resident set size of process ``pid``, in MiB (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")

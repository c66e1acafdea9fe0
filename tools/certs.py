"""``ramraft certs``: a certificate authority and the certificates a cluster
needs, with the well-kept ``cryptography`` package.

    ramraft certs --out certs --nodes n1,n2,n3 --hosts 127.0.0.1,localhost
    ramraft certs --out certs --k8s-namespace prod --replicas 3 --secret > secret.yaml

It writes ``ca.pem``/``ca-key.pem`` (kept if they exist: re-running adds or
renews certificates under the same CA), one ``<node>.pem``/``<node>-key.pem``
per node, valid for both serving and peer (client) authentication, whose
identity (the common name and a ``ramraft-node:<id>`` URI SAN) is the node id,
and ``client.pem``/``client-key.pem`` for clients. Private keys are created
0600. ``--secret`` prints two Kubernetes Secrets: ``ramraft-tls`` with the CA
certificate and the nodes' certificates and keys (for the StatefulSet), and
``ramraft-client-tls`` with the CA certificate and the client certificates
and keys (for client pods; never mounted by a node).

``ramraft certs own-key`` (run in the pod, k8s/statefulset.yaml) copies one
node's certificate, key and the CA from the mounted Secret into a directory
of its own (an in-memory volume), so that the node's container sees its own
key and no other member's: a StatefulSet's pod template cannot pick a
Secret per pod. With ``--watch`` it keeps the copy current (rotations).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import ipaddress
import os
import sys
from pathlib import Path
from typing import Any

from ramraft.server.security.tls import NODE_URI_PREFIX, node_id_of

__all__ = ["node_id_of"]  # re-exported: the tools' users check what they made

# Where k8s/statefulset.yaml mounts the ramraft-tls and ramraft-tokens Secrets.
# The node container reads its own certificate, key and the CA from an
# in-memory volume that `ramraft certs own-key` fills from the Secret.
K8S_TLS_DIR = "/run/ramraft/tls"
K8S_TOKENS_FILE = "/etc/ramraft/tokens/tokens"
K8S_HEALTH_LISTEN = "0.0.0.0:7002"


def node_security_env(
    node_id: str,
    tls_dir: str = K8S_TLS_DIR,
    tokens_file: str | None = K8S_TOKENS_FILE,
    *,
    peer_id_pattern: str = "ramraft-*",
    health_listen: str = K8S_HEALTH_LISTEN,
) -> dict[str, str]:
    """The security settings a StatefulSet pod gets (k8s/statefulset.yaml), for
    node ``node_id`` reading the files `ramraft certs` wrote in ``tls_dir``
    and the token file ``tokens_file`` (None: no tokens). A test checks that
    the defaults are exactly what the StatefulSet sets; a lab that runs
    nodes like pods (tests/chaos) passes its own directories."""
    env = {
        "RAMRAFT_TLS_CERT": f"{tls_dir}/{node_id}.pem",
        "RAMRAFT_TLS_KEY": f"{tls_dir}/{node_id}-key.pem",
        "RAMRAFT_TLS_CA": f"{tls_dir}/ca.pem",
        "RAMRAFT_PEER_ID_PATTERN": peer_id_pattern,
        "RAMRAFT_HEALTH_LISTEN": health_listen,
    }
    if tokens_file is not None:
        env["RAMRAFT_AUTH_TOKENS"] = tokens_file
    return env


def _lazy_crypto() -> Any:
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError as e:  # pragma: no cover - a dependency
        raise SystemExit(f"ramraft certs needs the 'cryptography' package: {e}") from e
    return x509, hashes, serialization, ec, ExtendedKeyUsageOID, NameOID


def _write(path: Path, data: bytes, private: bool = False) -> None:
    """Write ``data`` to a temporary file and rename it over ``path``. A
    private key's file is created 0600 (os.open with the mode): it is never
    readable by others, not even for the moment before a chmod."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.unlink(missing_ok=True)  # left by an interrupted run; O_EXCL below
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class CertsError(Exception):
    """The files found in the output directory cannot be used; one line."""


def load_or_create_ca(out: Path, days: int) -> tuple[Any, Any]:
    x509, hashes, serialization, ec, _, NameOID = _lazy_crypto()
    cert_path, key_path = out / "ca.pem", out / "ca-key.pem"
    if cert_path.exists() and key_path.exists():
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except (ValueError, TypeError) as e:  # not PEM, another kind, a password-protected key
            raise CertsError(
                f"{cert_path} and {key_path} are not a CA certificate and its unencrypted key in "
                f"PEM ({' '.join(str(e).split())}): move them away to make a new CA"
            ) from None
        if _public_bytes(cert.public_key()) != _public_bytes(key.public_key()):
            raise CertsError(
                f"{key_path} is not the key of {cert_path}: certificates it signed would not "
                "chain to that CA; put the right pair there, or move both away to make a new CA"
            )
        return cert, key
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ramraft cluster CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    _write(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        private=True,
    )
    return cert, key


def _public_bytes(key: Any) -> bytes:
    _, _, serialization, _, _, _ = _lazy_crypto()
    data: bytes = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data


def issue(
    ca_cert: Any, ca_key: Any, common_name: str, hosts: list[str], days: int, *, node: bool
) -> tuple[bytes, bytes]:
    """A leaf certificate for ``common_name`` (PEM cert, PEM key)."""
    x509, hashes, serialization, ec, EKU, NameOID = _lazy_crypto()
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[Any] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    if node:
        names.append(x509.UniformResourceIdentifier(NODE_URI_PREFIX + common_name))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [EKU.SERVER_AUTH, EKU.CLIENT_AUTH] if node else [EKU.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def k8s_node_hosts(
    namespace: str,
    replicas: int,
    *,
    statefulset: str = "ramraft",
    peer_service: str = "ramraft-peers",
    client_service: str = "ramraft",
    cluster_domain: str = "cluster.local",
    extra_hosts: list[str] | None = None,
) -> dict[str, list[str]]:
    """Node id -> the DNS names its certificate must carry in a StatefulSet
    (its pod name under the headless peer Service, and the client Service),
    for ``make_cluster_certs``. A lab that gives nodes the same names (tests/
    chaos) makes its certificates with this too."""
    return {
        f"{statefulset}-{n}": [
            f"{statefulset}-{n}.{peer_service}.{namespace}.svc.{cluster_domain}",
            f"{client_service}.{namespace}.svc.{cluster_domain}",
            f"{client_service}.{namespace}.svc",
            client_service,
            *(extra_hosts or []),
        ]
        for n in range(replicas)
    }


def make_cluster_certs(
    out: Path, nodes: dict[str, list[str]], days: int = 825, client_names: list[str] | None = None
) -> list[Path]:
    """CA (kept if present), node and client certificates under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = load_or_create_ca(out, days)
    written = [out / "ca.pem"]
    for node_id, hosts in nodes.items():
        cert, key = issue(ca_cert, ca_key, node_id, hosts, days, node=True)
        _write(out / f"{node_id}.pem", cert)
        _write(out / f"{node_id}-key.pem", key, private=True)
        written += [out / f"{node_id}.pem", out / f"{node_id}-key.pem"]
    for name in client_names or ["client"]:
        cert, key = issue(ca_cert, ca_key, name, [], days, node=False)
        _write(out / f"{name}.pem", cert)
        _write(out / f"{name}-key.pem", key, private=True)
        written += [out / f"{name}.pem", out / f"{name}-key.pem"]
    return written


def secret_yaml(
    out: Path, files: list[Path], name: str, client_names: list[str] | None = None
) -> str:
    """The nodes' Secret ``name`` (CA certificate, node certificates and
    keys) and, when ``client_names`` are given, ``<name minus -tls>-client-tls``
    with the CA certificate and those clients' certificates and keys: a
    client's key never sits in the nodes' Secret, nor a node's in the
    clients'. The CA's key goes into neither."""
    clients = {f"{c}.pem" for c in client_names or []} | {
        f"{c}-key.pem" for c in client_names or []
    }

    def secret(secret_name: str, paths: list[Path]) -> list[str]:
        lines = ["apiVersion: v1", "kind: Secret", "metadata:", f"  name: {secret_name}"]
        lines += ["type: Opaque", "data:"]
        for path in paths:
            lines.append(f"  {path.name}: {base64.b64encode(path.read_bytes()).decode()}")
        return lines

    public = [p for p in files if p.name != "ca-key.pem"]  # the CA's key never goes in
    nodes = [p for p in public if p.name not in clients]
    docs = ["\n".join(secret(name, nodes))]
    if client_names:
        client_files = [out / "ca.pem", *(p for p in public if p.name in clients)]
        docs.append("\n".join(secret(client_secret_name(name), client_files)))
    return "\n---\n".join(docs) + "\n"


def client_secret_name(nodes_secret: str) -> str:
    base = nodes_secret.removesuffix("-tls")
    return f"{base}-client-tls"


def copy_own_key(source: Path, target: Path, node_id: str) -> bool:
    """Copy ``node_id``'s certificate and key and the CA from ``source``
    (the mounted Secret) to ``target``, each file written to a temporary
    file created 0600 and renamed into place (the node re-reads them when
    they change); returns whether anything changed."""
    changed = False
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in (f"{node_id}.pem", f"{node_id}-key.pem", "ca.pem"):
        data = (source / name).read_bytes()
        path = target / name
        if path.exists() and path.read_bytes() == data:
            continue
        _write(path, data, private=True)
        changed = True
    return changed


def run_own_key(args: argparse.Namespace) -> int:
    import time

    node_id = args.node or os.environ.get("RAMRAFT_ID", "")
    if not node_id:
        print("ramraft certs own-key: --node (or RAMRAFT_ID) is required", file=sys.stderr)
        return 2
    if not args.watch >= 0:
        print(f"ramraft certs own-key: --watch {args.watch}: must not be negative", file=sys.stderr)
        return 2
    while True:
        try:
            if copy_own_key(Path(args.source), Path(args.target), node_id):
                print(f"ramraft certs own-key: {node_id}'s files copied to {args.target}")
                sys.stdout.flush()
        except OSError as e:
            print(f"ramraft certs own-key: {e}", file=sys.stderr)
            if not args.watch:
                return 1
        if not args.watch:
            return 0
        time.sleep(args.watch)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.days < 1:
        print(f"ramraft certs: --days {args.days}: must be at least 1", file=sys.stderr)
        return 2
    clients = [c for c in args.clients.split(",") if c]
    if not clients:
        print("ramraft certs: --clients: give at least one name", file=sys.stderr)
        return 2
    hosts = [h for h in args.hosts.split(",") if h]
    if args.k8s_namespace:
        nodes = k8s_node_hosts(
            args.k8s_namespace,
            args.replicas,
            statefulset=args.statefulset,
            peer_service=args.peer_service,
            client_service=args.client_service,
            cluster_domain=args.cluster_domain,
            extra_hosts=hosts,
        )
    else:
        node_ids = [n for n in args.nodes.split(",") if n]
        if not node_ids:
            print("ramraft certs: --nodes (or --k8s-namespace) is required", file=sys.stderr)
            return 2
        nodes = {i: hosts or ["127.0.0.1", "localhost"] for i in node_ids}
    try:
        written = make_cluster_certs(out, nodes, args.days, clients)
    except OSError as e:
        print(f"ramraft certs: cannot write to {out}: {e}", file=sys.stderr)
        return 1
    except CertsError as e:
        print(f"ramraft certs: {e}", file=sys.stderr)
        return 1
    if args.secret:
        sys.stdout.write(secret_yaml(out, written, args.secret_name, clients))
        print(f"ramraft certs: the files, and the CA's key, are in {out}/", file=sys.stderr)
    else:
        for path in [out / "ca-key.pem", *written]:
            print(path)
        print(
            f"ramraft certs: keep {out / 'ca-key.pem'} private: it signs certificates "
            "(re-running this command with it renews them under the same CA)",
            file=sys.stderr,
        )
    return 0


def register(sub: Any) -> None:
    from ramraft.tools.backup import help_from_doc

    p = sub.add_parser(
        "certs",
        help="make a CA and the node and client certificates of a cluster",
        description=help_from_doc(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="certs", help="directory for the PEM files (default ./certs)")
    p.add_argument("--nodes", default="", help="node ids, comma-separated (local clusters)")
    p.add_argument("--hosts", default="", help="extra DNS names / IPs for every node certificate")
    p.add_argument("--clients", default="client", help="client certificate names (default: client)")
    p.add_argument("--days", type=int, default=825, help="validity in days (default 825)")
    p.add_argument(
        "--k8s-namespace",
        default="",
        help="make certificates for the StatefulSet in this namespace",
    )
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--statefulset", default="ramraft")
    p.add_argument("--peer-service", default="ramraft-peers")
    p.add_argument("--client-service", default="ramraft")
    p.add_argument("--cluster-domain", default="cluster.local")
    p.add_argument(
        "--secret",
        action="store_true",
        help="print the Kubernetes Secrets: the nodes' (--secret-name) and the clients' "
        "(<name>-client-tls)",
    )
    p.add_argument("--secret-name", default="ramraft-tls")
    p.set_defaults(func=run)
    own = p.add_subparsers(dest="certs_command")
    q = own.add_parser(
        "own-key",
        help="copy one node's certificate, key and the CA out of a mounted Secret",
        description=(
            "Copy NODE.pem, NODE-key.pem and ca.pem from --source (the mounted Secret with "
            "every node's files) to --target (an in-memory volume the node alone reads), "
            "files 0600. k8s/statefulset.yaml runs it beside the node."
        ),
    )
    q.add_argument("--source", default="/etc/ramraft/secret", help="the mounted Secret")
    q.add_argument("--target", default=K8S_TLS_DIR, help="where the node reads its files")
    q.add_argument("--node", default="", help="the node id (default: env RAMRAFT_ID)")
    q.add_argument(
        "--watch",
        type=float,
        default=0.0,
        help="copy again every SECONDS when the files change (rotations); 0: once",
    )
    q.set_defaults(func=run_own_key)

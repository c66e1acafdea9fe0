"""TLS for every port: certificate files, reloaded when they change on disk.

One ``TLSFiles`` holds the node's certificate, key and CA bundle (PEM, as
``ramraft certs`` writes them and a Kubernetes Secret mounts them). It
re-reads them when their stat signature changes (checked at most once a
second; Kubernetes swaps a Secret volume's ``..data`` symlink atomically):

- gRPC servers use ``grpc.dynamic_ssl_server_credentials``, whose fetcher is
  called before every new connection's handshake and returns the new
  certificate configuration when the files changed;
- the web tier's ``ssl.SSLContext`` gets an SNI callback (called for every
  handshake, with or without SNI) that switches the connection to a context
  built from the newest files;
- outbound peer channels are recreated when the generation changes
  (server/runtime/transport.py), so new connections present the new certificate.

Files that change into something unusable (a cert without its key, halfway
through a copy, a certificate for another node) are refused with a warning
and the previous material stays in use; a later change is tried again.

The peer identity is the ``ramraft-node:<id>`` URI SAN of the certificate the
other side presented (tools/certs.py), read from the gRPC auth context.
"""

from __future__ import annotations

import functools
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

from ramraft.server.config import ConfigError, TLSConfig

log = structlog.get_logger("ramraft.tls")

CERTS_RECHECK_SECONDS = 1.0
# The web tier's TLS 1.2 suites (OpenSSL cipher string).
HTTPS_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"


# A node certificate names its node in a URI subject alternative name with
# this prefix (``ramraft certs`` writes it; peers check it).
NODE_URI_PREFIX = "ramraft-node:"


def node_id_of(cert_pem: bytes) -> str | None:
    """The node id a certificate vouches for (its ramraft-node: URI SAN)."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(NODE_URI_PREFIX):
            return str(uri[len(NODE_URI_PREFIX) :])
    return None


class TLSError(ConfigError):
    """Certificate files that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class TLSMaterial:
    cert: bytes
    key: bytes
    ca: bytes
    generation: int
    node_id: str | None  # the ramraft-node id the certificate vouches for


def _signature(paths: tuple[str, ...]) -> tuple[tuple[int, int, int], ...]:
    out = []
    for path in paths:
        st = os.stat(path)  # follows symlinks: a Secret's ..data swap changes the inode
        out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


def check_material(cert: bytes, key: bytes, ca: bytes, expect_node: str | None) -> str | None:
    """Parse and cross-check the PEM files; returns the certificate's node id.
    Raises TLSError naming the problem."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        certificate = x509.load_pem_x509_certificate(cert)
    except ValueError as e:
        raise TLSError(f"the certificate is not a PEM X.509 certificate: {e}") from None
    try:
        private_key = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as e:
        raise TLSError(f"the key is not an unencrypted PEM private key: {e}") from None
    try:
        authorities = x509.load_pem_x509_certificates(ca)
    except ValueError as e:
        raise TLSError(f"the CA file holds no PEM certificate: {e}") from None
    if not authorities:
        raise TLSError("the CA file holds no certificate")
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if certificate.public_key().public_bytes(*raw) != private_key.public_key().public_bytes(*raw):
        raise TLSError("the key does not belong to the certificate")
    node_id = node_id_of(cert)
    if expect_node is not None:
        if node_id is None:
            raise TLSError(
                "the certificate has no ramraft-node:<id> URI SAN, so peers would refuse this "
                "node; make node certificates with `ramraft certs`"
            )
        if node_id != expect_node:
            raise TLSError(
                f"the certificate is for node {node_id!r}, but this node is {expect_node!r}"
            )
    left = certificate.not_valid_after_utc.timestamp() - time.time()
    if left < 0:
        raise TLSError(f"the certificate expired on {certificate.not_valid_after_utc:%Y-%m-%d}")
    if left < 7 * 86400:
        log.warning("certificate_expires_soon", not_after=str(certificate.not_valid_after_utc))
    return node_id


class TLSFiles:
    """The node's certificate, key and CA, re-read when they change on disk.
    Thread-safe: gRPC's certificate fetcher runs on a gRPC thread."""

    def __init__(self, config: TLSConfig, node_id: str | None = None) -> None:
        self.paths = (config.cert, config.key, config.ca)
        self.client_auth = config.client_auth
        self.node_id = node_id  # when set, the certificate must be this node's
        self._lock = threading.Lock()
        self._signature: tuple[tuple[int, int, int], ...] | None = None
        self._checked = 0.0
        self._generation = 0
        try:
            self.material = self._load()
        except OSError as e:
            raise TLSError(f"cannot read {e.filename}: {e.strerror}") from None
        self.listeners: list[Callable[[TLSMaterial], None]] = []

    def _load(self) -> TLSMaterial:
        signature = _signature(self.paths)
        cert, key, ca = (_read(path) for path in self.paths)
        try:
            node_id = check_material(cert, key, ca, self.node_id)
        except TLSError as e:
            raise TLSError(f"{self.paths[0]} / {self.paths[1]} / {self.paths[2]}: {e}") from None
        self._signature = signature
        self._generation += 1
        return TLSMaterial(cert, key, ca, self._generation, node_id)

    @property
    def generation(self) -> int:
        return self.material.generation

    def refresh(self, force: bool = False) -> bool:
        """Re-read the files if they changed (looked at most once a second
        unless ``force``); returns whether new material is in use."""
        now = time.monotonic()
        with self._lock:
            if not force and now - self._checked < CERTS_RECHECK_SECONDS:
                return False
            self._checked = now
            try:
                if _signature(self.paths) == self._signature:
                    return False
                material = self._load()
            except (OSError, TLSError) as e:
                log.warning("tls_reload_refused", error=str(e), keeping=self.material.generation)
                return False
            self.material = material
        log.info("tls_reloaded", generation=material.generation, cert=self.paths[0])
        for listener in self.listeners:
            listener(material)
        return True

    # ---- gRPC ----------------------------------------------------------------------------

    def server_credentials(self, require_client_auth: bool) -> grpc.ServerCredentials:
        """Credentials whose certificate follows the files (checked before
        each new connection's handshake)."""
        served = [self.material.generation]

        def fetch() -> Any:
            try:
                self.refresh()
                material = self.material
                if material.generation == served[0]:
                    return None
                served[0] = material.generation
                return _server_config(material)
            except Exception:  # never let an exception escape into gRPC's thread
                log.exception("tls_fetch_failed")
                return None

        return grpc.dynamic_ssl_server_credentials(
            _server_config(self.material), fetch, require_client_authentication=require_client_auth
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """For outbound peer connections: our certificate as the client's."""
        m = self.material
        return grpc.ssl_channel_credentials(m.ca, m.key, m.cert)

    # ---- HTTP ----------------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        """A server context for the web tier. Each handshake switches to a
        context built from the newest files (the SNI callback runs for every
        handshake, with or without a server name)."""
        current: list[tuple[int, ssl.SSLContext]] = []

        def latest() -> ssl.SSLContext:
            material = self.material
            if not current or current[0][0] != material.generation:
                current[:] = [(material.generation, _http_context(material, self.client_auth))]
            return current[0][1]

        base = latest()

        def on_handshake(sslobj: Any, name: str | None, ctx: ssl.SSLContext) -> None:
            # Runs on the listening (base) context for every handshake; the
            # contexts it switches to need no callback of their own.
            self.refresh()
            fresh = latest()
            if fresh is not ctx:
                sslobj.context = fresh

        base.sni_callback = on_handshake
        return base


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _server_config(material: TLSMaterial) -> Any:
    return grpc.ssl_server_certificate_configuration([(material.key, material.cert)], material.ca)


def _http_context(material: TLSMaterial, client_auth: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # TLS 1.2: forward-secret key exchange and AEAD ciphers only (no CBC
    # suites); TLS 1.3's suites are all AEAD.
    ctx.set_ciphers(HTTPS_CIPHERS)
    # ssl loads keys from files only: write them to a private temporary file.
    with tempfile.TemporaryDirectory(prefix="ramraft-tls-") as tmp:
        cert_path, key_path = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(material.key)
        with open(cert_path, "wb") as f:
            f.write(material.cert)
        ctx.load_cert_chain(cert_path, key_path)
    ctx.load_verify_locations(cadata=material.ca.decode("ascii", errors="replace"))
    ctx.verify_mode = ssl.CERT_REQUIRED if client_auth == "require" else ssl.CERT_NONE
    return ctx


# ---- who is on the other end -------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _node_id_of_pem(pem: bytes) -> str | None:
    try:
        return node_id_of(pem)
    except ValueError:
        return None


def peer_certificate(context: Any) -> bytes | None:
    """The PEM certificate the caller presented (verified by the TLS
    handshake against the CA), or None (no TLS, or no client certificate)."""
    try:
        auth = context.auth_context()
    except Exception:
        return None
    pems = auth.get("x509_pem_cert") if auth else None
    if not pems:
        return None
    pem = pems[0]
    return pem if isinstance(pem, bytes) else str(pem).encode()


def fingerprint(pem: bytes) -> str:
    """The SHA-256 fingerprint of a PEM certificate's DER form, hex (for logs)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    return x509.load_pem_x509_certificate(pem).fingerprint(hashes.SHA256()).hex()


def peer_node_id(context: Any) -> str | None:
    """The node id of the caller's verified certificate, or None."""
    pem = peer_certificate(context)
    return _node_id_of_pem(pem) if pem is not None else None

"""`ramraft certs`: a CA, node and client certificates, a k8s Secret."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ramraft.tools.certs import make_cluster_certs, node_id_of, secret_yaml
from ramraft.tools.cli import main


def verify_signed_by(cert: x509.Certificate, ca: x509.Certificate) -> None:
    key = ca.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))


def test_node_and_client_certificates_chain_to_the_ca(tmp_path: Path) -> None:
    make_cluster_certs(tmp_path, {"n1": ["127.0.0.1", "localhost"], "n2": ["10.0.0.2"]})
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    for name in ("n1", "n2", "client"):
        cert = x509.load_pem_x509_certificate((tmp_path / f"{name}.pem").read_bytes())
        verify_signed_by(cert, ca)
    assert node_id_of((tmp_path / "n1.pem").read_bytes()) == "n1"
    assert node_id_of((tmp_path / "client.pem").read_bytes()) is None, "a client is no node"
    assert (tmp_path / "n1-key.pem").stat().st_mode & 0o077 == 0, "keys are private"


def test_rerunning_keeps_the_ca(tmp_path: Path) -> None:
    make_cluster_certs(tmp_path, {"n1": []})
    first = (tmp_path / "ca.pem").read_bytes()
    make_cluster_certs(tmp_path, {"n4": []})
    assert (tmp_path / "ca.pem").read_bytes() == first
    ca = x509.load_pem_x509_certificate(first)
    verify_signed_by(x509.load_pem_x509_certificate((tmp_path / "n4.pem").read_bytes()), ca)


def test_secret_holds_everything_but_the_ca_key(tmp_path: Path) -> None:
    files = make_cluster_certs(
        tmp_path, {"ramraft-0": ["ramraft-0.ramraft-peers.ns.svc.cluster.local"]}
    )
    doc = yaml.safe_load(secret_yaml(tmp_path, files, "ramraft-tls"))
    assert doc["kind"] == "Secret" and "ca-key.pem" not in doc["data"]
    assert base64.b64decode(doc["data"]["ca.pem"]) == (tmp_path / "ca.pem").read_bytes()


def test_cli_for_a_statefulset(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    code = main(["certs", "--out", str(tmp_path), "--k8s-namespace", "prod", "--replicas", "3"])
    assert code == 0
    cert = x509.load_pem_x509_certificate((tmp_path / "ramraft-2.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "ramraft-2.ramraft-peers.prod.svc.cluster.local" in names.get_values_for_type(
        x509.DNSName
    )


def test_cli_lists_every_file_it_writes(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["certs", "--out", str(tmp_path), "--nodes", "n1,n2"]) == 0
    out, err = capsys.readouterr()
    assert sorted(out.split()) == sorted(str(p) for p in tmp_path.iterdir())
    assert "ca-key.pem private" in err


def test_cli_refuses_without_nodes(tmp_path: Path) -> None:
    assert main(["certs", "--out", str(tmp_path)]) == 2


def test_cli_refuses_a_validity_of_no_days_and_no_client_name(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    for days in ("0", "-1"):
        assert main(["certs", "--out", str(tmp_path), "--nodes", "n1", "--days", days]) == 2
        assert capsys.readouterr().err == f"ramraft certs: --days {days}: must be at least 1\n"
    assert main(["certs", "--out", str(tmp_path), "--nodes", "n1", "--clients", ""]) == 2
    assert capsys.readouterr().err == "ramraft certs: --clients: give at least one name\n"
    argv = ["certs", "own-key", "--node", "n1", "--source", str(tmp_path), "--watch", "-1"]
    assert main([*argv, "--target", str(tmp_path / "own")]) == 2
    assert capsys.readouterr().err == "ramraft certs own-key: --watch -1.0: must not be negative\n"
    assert list(tmp_path.iterdir()) == []


def test_cli_says_when_the_ca_files_there_cannot_be_used(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    argv = ["certs", "--out", str(tmp_path), "--nodes", "n1"]
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    (tmp_path / "ca-key.pem").write_text("not a key\n")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "are not a CA certificate and its unencrypted key" in err and err.count("\n") == 1
    # A CA certificate with another CA's key: what it signed would not chain.
    other = tmp_path / "other"
    make_cluster_certs(other, {})
    make_cluster_certs(tmp_path / "mine", {})
    (tmp_path / "ca.pem").write_bytes((tmp_path / "mine" / "ca.pem").read_bytes())
    (tmp_path / "ca-key.pem").write_bytes((other / "ca-key.pem").read_bytes())
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "is not the key of" in err and err.count("\n") == 1
    assert not (tmp_path / "n1.pem").exists()

"""``ramraft backup`` on a cluster with TLS and tokens: a backup is every key
and value, so it needs the admin role; read and write tokens are refused
with PERMISSION_DENIED, no token with UNAUTHENTICATED, and nothing is left
where the file would have gone."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ramraft.tools.backup import verify_backup
from ramraft.tools.cli import main
from tests.k8s.checks import expand_env, one
from tests.k8s.render import render
from tests.security.cluster import ADMIN_TOKEN, READ_TOKEN, WRITE_TOKEN, SecureCluster

EXIT_ERROR = 3


def backup_cli(
    cluster: SecureCluster,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    token: str | None,
    *,
    tls: bool = True,
) -> tuple[int, str, str, Path]:
    certs = cluster.creds.certs
    argv = ["backup", "--endpoints", cluster.endpoints(), "--timeout", "5"]
    if tls:
        argv += ["--tls-ca", str(certs / "ca.pem")]
        argv += [
            "--tls-cert",
            str(certs / "client.pem"),
            "--tls-key",
            str(certs / "client-key.pem"),
        ]
    if token is not None:
        token_file = tmp_path / "token"
        token_file.write_text(token + "\n")
        argv += ["--token-file", str(token_file)]
    out = tmp_path / "out" / "secure.backup"
    capsys.readouterr()
    code = main([*argv, "--out", str(out)])
    stdout, stderr = capsys.readouterr()
    return code, stdout, stderr, out


def test_an_admin_token_takes_a_backup_over_tls(
    cluster: SecureCluster, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cluster.wait_for_leader()
    with cluster.client() as client:
        client.put("secret/1", b"only for admins")
    code, stdout, stderr, out = backup_cli(cluster, capsys, tmp_path, ADMIN_TOKEN)
    assert code == 0, stderr
    assert "secure.backup: index " in stdout
    _, summary = verify_backup(out)
    assert summary.kv is not None and summary.kv.get("secret/1") == (True, b"only for admins")


@pytest.mark.parametrize(
    ("token", "refusal"),
    [
        (READ_TOKEN, "PERMISSION_DENIED"),
        (WRITE_TOKEN, "PERMISSION_DENIED"),
        (None, "UNAUTHENTICATED"),
    ],
    ids=["read-token", "write-token", "no-token"],
)
def test_other_tokens_are_refused(
    cluster: SecureCluster,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    token: str | None,
    refusal: str,
) -> None:
    cluster.wait_for_leader()
    code, stdout, stderr, out = backup_cli(cluster, capsys, tmp_path, token)
    assert code == EXIT_ERROR and stdout == ""
    assert stderr.count("\n") == 1 and stderr.startswith("ramraft: error: "), stderr
    assert refusal in stderr
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
    if token == READ_TOKEN:
        log = "".join(cluster.node_log(n) for n in cluster.ids)
        assert "/ramraft.v1.Admin/Backup" in log and READ_TOKEN not in log


def test_plaintext_to_a_tls_cluster_is_one_line(
    cluster: SecureCluster, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, stdout, stderr, out = backup_cli(cluster, capsys, tmp_path, ADMIN_TOKEN, tls=False)
    assert code == EXIT_ERROR and stdout == ""
    assert stderr.count("\n") == 1 and stderr.startswith("ramraft: error: "), stderr
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_a_plaintext_client_is_told_the_nodes_may_want_tls(
    cluster: SecureCluster, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node with TLS closes a plaintext client's connection, which grpc
    reports as 'Socket closed' only: the CLI adds which option is missing."""
    for name in ("RAMRAFT_TLS_CA", "RAMRAFT_TLS_CERT", "RAMRAFT_TLS_KEY"):
        monkeypatch.delenv(name, raising=False)
    capsys.readouterr()
    argv = ["--endpoints", cluster.grpc["n1"], "--timeout", "3", "--token", READ_TOKEN]
    assert main([*argv, "get", "k"]) == EXIT_ERROR
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    assert "give --tls-ca" in err, err


def test_the_k8s_cronjobs_own_command_takes_backups(
    cluster: SecureCluster,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """k8s/backup-cronjob.yaml's command and environment, as rendered, with
    its mounts as directories here: the Secrets' files (the cluster's
    certificates, the admin token under the key "admin") and the volume."""
    cron = one(render(), "CronJob")
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    token_dir = tmp_path / "token"
    token_dir.mkdir()
    (token_dir / "admin").write_text(ADMIN_TOKEN)
    mounts = {
        "/etc/ramraft/tls": str(cluster.creds.certs),
        "/etc/ramraft/token": str(token_dir),
        "/backups": str(tmp_path / "backups"),
    }

    def here(value: str) -> str:
        for mount, directory in mounts.items():
            value = value.replace(mount, directory)
        return value

    for var, value in expand_env(container, {"metadata.namespace": "prod"}).items():
        if var.startswith("RAMRAFT_"):
            monkeypatch.setenv(var, here(value))
    monkeypatch.setenv("RAMRAFT_ENDPOINTS", cluster.endpoints())  # the client Service, here
    (tmp_path / "backups").mkdir()
    args = [here(a) for a in container["args"]]
    cluster.wait_for_leader()
    for _ in range(2):
        capsys.readouterr()
        assert main(args) == 0, capsys.readouterr().err
        report = json.loads(capsys.readouterr().out)
        verify_backup(report["file"])
        time.sleep(1.1)  # backup names have a resolution of a second
    assert len(list((tmp_path / "backups").iterdir())) == 2

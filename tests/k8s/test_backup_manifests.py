"""The backup CronJob (k8s/backup-cronjob.yaml, part of kustomization.yaml)
and the restore Job template (k8s/restore-job.yaml, not part of it), checked
offline: strict Kubernetes 1.32 schema, the rules of tests/k8s/backup_checks.py
(each shown to fail on a manifest broken on purpose), and the restore Job's
own command run here with the environment a pod would give it."""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from ramraft.tools.cli import main
from tests.backups import node_view, write_state_backup
from tests.k8s import backup_checks
from tests.k8s.backup_checks import NAMESPACE, check_restore_job, job_pod
from tests.k8s.checks import Doc, expand_env, one, pod_spec
from tests.k8s.render import K8S_DIR, render
from tests.k8s.test_manifests import K8S_VERSION

BACKUP_FILE = "ramraft-20261205T031700Z-c-1234-5678.backup"
IMAGE = "registry.example/ramraft:0.1.0"


@pytest.fixture(scope="module")
def docs() -> list[Doc]:
    return render()


def restore_job(ordinal: int, backup_file: str = BACKUP_FILE) -> Doc:
    """k8s/restore-job.yaml filled in as k8s/README.md's sed line does."""
    text = (K8S_DIR / "restore-job.yaml").read_text()
    text = text.replace("ORDINAL", str(ordinal)).replace("BACKUP_FILE", backup_file)
    text = text.replace("IMAGE", IMAGE)
    (job,) = [d for d in yaml.safe_load_all(text) if d]
    return dict(job)


def test_the_cronjob_and_its_volume_are_rendered_and_valid(docs: list[Doc]) -> None:
    for kind in ("CronJob", "PersistentVolumeClaim"):
        doc = one(docs, kind)
        assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True) == "1.32"


@pytest.mark.parametrize("check", backup_checks.BACKUP_CHECKS, ids=lambda c: c.__name__)
def test_the_cronjob_passes(check: backup_checks.BackupCheck, docs: list[Doc]) -> None:
    assert check(docs) == []


def _cron_pod(docs: list[Doc]) -> Doc:
    """The CronJob's pod spec itself (to change in place)."""
    pod: Doc = one(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return pod


def _container(docs: list[Doc]) -> Doc:
    container: Doc = _cron_pod(docs)["containers"][0]
    return container


def _set_env(var: str, value: str) -> Callable[[list[Doc]], None]:
    def mutate(docs: list[Doc]) -> None:
        env = _container(docs)["env"]
        next(e for e in env if e["name"] == var)["value"] = value

    return mutate


def _set_args(args: list[str]) -> Callable[[list[Doc]], None]:
    def mutate(docs: list[Doc]) -> None:
        _container(docs)["args"] = args

    return mutate


def _tokens_secret(secret: str) -> Callable[[list[Doc]], None]:
    def mutate(docs: list[Doc]) -> None:
        volume = next(v for v in _cron_pod(docs)["volumes"] if v["name"] == "token")
        volume["secret"]["secretName"] = secret

    return mutate


def _token_key(key: str) -> Callable[[list[Doc]], None]:
    def mutate(docs: list[Doc]) -> None:
        volume = next(v for v in _cron_pod(docs)["volumes"] if v["name"] == "token")
        volume["secret"]["items"][0]["key"] = key

    return mutate


def _backups_on_empty_dir(docs: list[Doc]) -> None:
    volume = next(v for v in _cron_pod(docs)["volumes"] if v["name"] == "backups")
    del volume["persistentVolumeClaim"]
    volume["emptyDir"] = {}


def _labelled_as_node(docs: list[Doc]) -> None:
    template = one(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]
    template["metadata"]["labels"]["app.kubernetes.io/component"] = "node"


def _concurrent(docs: list[Doc]) -> None:
    one(docs, "CronJob")["spec"]["concurrencyPolicy"] = "Allow"


def _writable_root(docs: list[Doc]) -> None:
    _container(docs)["securityContext"]["readOnlyRootFilesystem"] = False


def _other_image(docs: list[Doc]) -> None:
    _container(docs)["image"] = "ramraft:latest"


ARGS = ["backup", "--out", "/backups/", "--keep", "7", "--json"]
BREAKAGES: list[tuple[str, Callable[[list[Doc]], None], backup_checks.BackupCheck, str]] = [
    (
        "headless-service",
        _set_env("RAMRAFT_ENDPOINTS", "ramraft-peers:7000"),
        backup_checks.check_backup_reaches_the_cluster,
        "is not the client Service",
    ),
    (
        "peer-port",
        _set_env("RAMRAFT_ENDPOINTS", "ramraft:7001"),
        backup_checks.check_backup_reaches_the_cluster,
        "grpc port",
    ),
    (
        "node-certificate",
        _set_env("RAMRAFT_TLS_CERT", "/etc/ramraft/tls/ca.pem"),
        backup_checks.check_backup_reaches_the_cluster,
        "RAMRAFT_TLS_CERT",
    ),
    (
        "other-tokens-secret",
        _tokens_secret("my-tokens"),
        backup_checks.check_backup_reaches_the_cluster,
        "RAMRAFT_TOKEN_FILE",
    ),
    (
        "token-file-of-all-tokens",
        _token_key("tokens"),
        backup_checks.check_backup_reaches_the_cluster,
        "not key 'admin'",
    ),
    (
        "out-a-file",
        _set_args(["backup", "--out", "/backups/x.backup", "--keep", "7"]),
        backup_checks.check_backup_keeps_files_on_a_volume,
        "is not a directory",
    ),
    (
        "no-keep",
        _set_args(["backup", "--out", "/backups/"]),
        backup_checks.check_backup_keeps_files_on_a_volume,
        "pile up",
    ),
    (
        "out-in-tmp",
        _set_args(["backup", "--out", "/tmp/", "--keep", "7"]),
        backup_checks.check_backup_keeps_files_on_a_volume,
        "PersistentVolumeClaim",
    ),
    (
        "out-on-empty-dir",
        _backups_on_empty_dir,
        backup_checks.check_backup_keeps_files_on_a_volume,
        "PersistentVolumeClaim",
    ),
    (
        "verify-not-backup",
        _set_args(["status", *ARGS[1:]]),
        backup_checks.check_backup_keeps_files_on_a_volume,
        "not `ramraft backup`",
    ),
    ("concurrent", _concurrent, backup_checks.check_backup_keeps_files_on_a_volume, "Forbid"),
    ("other-image", _other_image, backup_checks.check_backup_keeps_files_on_a_volume, "image"),
    (
        "labelled-as-node",
        _labelled_as_node,
        backup_checks.check_backup_pod_is_no_node,
        "selects the backup pod",
    ),
    ("writable-root", _writable_root, backup_checks.check_backup_pod_security, "writable"),
]


@pytest.mark.parametrize(
    ("mutate", "check", "expect"), [b[1:] for b in BREAKAGES], ids=[b[0] for b in BREAKAGES]
)
def test_check_catches_broken_cronjob(
    docs: list[Doc], mutate: Callable[[list[Doc]], None], check: Any, expect: str
) -> None:
    broken = copy.deepcopy(docs)
    mutate(broken)
    problems = check(broken)
    assert any(expect in p for p in problems), problems


def test_every_backup_check_has_a_breakage() -> None:
    assert {b[2] for b in BREAKAGES} == set(backup_checks.BACKUP_CHECKS)


def test_the_kustomization_includes_the_cronjob_and_not_the_restore_job() -> None:
    resources = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())["resources"]
    assert "backup-cronjob.yaml" in resources
    assert "restore-job.yaml" not in resources


def test_tokens_secret_carries_the_admin_token_alone(
    capsys: pytest.CaptureFixture[str],
) -> None:
    capsys.readouterr()
    assert main(["tokens", "--secret", "--admin", "ops,backup"]) == 0
    secret = yaml.safe_load(capsys.readouterr().out)
    assert kubernetes_validate.validate(secret, K8S_VERSION, strict=True) == "1.32"
    tokens = base64.b64decode(secret["data"]["tokens"]).decode()
    first_admin = next(line.split()[2] for line in tokens.splitlines() if line.startswith("admin"))
    assert base64.b64decode(secret["data"]["admin"]).decode() == first_admin


# -- the restore Job ------------------------------------------------------------------


@pytest.mark.parametrize("ordinal", [0, 1, 2])
def test_the_restore_job_is_valid_and_acts_as_its_pod(docs: list[Doc], ordinal: int) -> None:
    job = restore_job(ordinal)
    assert kubernetes_validate.validate(job, K8S_VERSION, strict=True) == "1.32"
    assert check_restore_job(job, docs, ordinal, BACKUP_FILE) == []


def _job_env(job: Doc, var: str, value: str) -> None:
    env = job_pod(job)["containers"][0]["env"]
    next(e for e in env if e["name"] == var)["value"] = value


RESTORE_BREAKAGES: list[tuple[str, Callable[[Doc], None], str]] = [
    ("other-id", lambda j: _job_env(j, "RAMRAFT_ID", "ramraft-1"), "RAMRAFT_ID"),
    (
        "other-peers",
        lambda j: _job_env(j, "RAMRAFT_PEERS", "ramraft-0=ramraft-0:7001"),
        "RAMRAFT_PEERS",
    ),
    (
        "other-volume",
        lambda j: job_pod(j)["volumes"][0]["persistentVolumeClaim"].update(claimName="data-x"),
        "is not in the volume data-ramraft-0",
    ),
    (
        "no-force",
        lambda j: job_pod(j)["containers"][0]["args"].remove("--force"),
        "no --force",
    ),
    (
        "writable-backups",
        lambda j: job_pod(j)["containers"][0]["volumeMounts"][1].pop("readOnly"),
        "mounted writable",
    ),
    (
        "root",
        lambda j: job_pod(j)["securityContext"].update(runAsUser=0),
        "uid 0",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "expect"), [b[1:] for b in RESTORE_BREAKAGES], ids=[b[0] for b in RESTORE_BREAKAGES]
)
def test_check_catches_broken_restore_job(
    docs: list[Doc], mutate: Callable[[Doc], None], expect: str
) -> None:
    job = restore_job(0)
    mutate(job)
    problems = check_restore_job(job, docs, 0, BACKUP_FILE)
    assert any(expect in p for p in problems), problems


def test_the_restore_jobs_command_restores_each_pod_into_one_new_cluster(
    docs: list[Doc], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    """Run each Job's own command and environment (as the kubelet expands
    it) here, with its volumes as directories: three data directories of
    one new cluster whose members are the set's pods at their DNS names."""
    backups = tmp_path / "backups"
    backups.mkdir()
    write_state_backup(backups / BACKUP_FILE, keys=100, notes=3)
    sts = one(docs, "StatefulSet")
    node_env = expand_env(
        pod_spec(sts)["containers"][0],
        {"metadata.name": "ramraft-0", "metadata.namespace": NAMESPACE},
    )
    cluster_ids = set()
    for ordinal in range(3):
        job = restore_job(ordinal)
        container = job_pod(job)["containers"][0]
        env = expand_env(container, {"metadata.namespace": NAMESPACE})
        volume = tmp_path / f"data-ramraft-{ordinal}"
        (volume / "lost+found").mkdir(parents=True)  # as a fresh ext4 volume has
        (volume / "LOCK").write_text("")  # and an old node's data, replaced (--force)
        (volume / "wal").mkdir()
        for var, value in env.items():
            if var.startswith("RAMRAFT_"):
                monkeypatch.setenv(var, value)
        monkeypatch.setenv("RAMRAFT_DATA_DIR", str(volume))  # the mount, here
        args = [a.replace("/backups", str(backups)) for a in container["args"]]
        capsys.readouterr()
        assert main(args) == 0, capsys.readouterr().err
        recovered, cluster, addresses = node_view(volume)
        peers = dict(p.split("=", 1) for p in node_env["RAMRAFT_PEERS"].split(","))
        assert addresses == peers
        assert recovered.snapshot is not None
        assert recovered.snapshot.conf.voters == frozenset(peers)
        assert cluster is not None
        cluster_ids.add(cluster["cluster_id"])
    assert len(cluster_ids) == 1

"""What a schema cannot see about the backup CronJob (k8s/backup-cronjob.yaml)
and the restore Job template (k8s/restore-job.yaml): that they reach the
cluster with the credentials the StatefulSet's Secrets hold, write where a
volume keeps the files, act as the pod they restore, and run as restricted
as the nodes. Each check returns sentences (empty: the rule holds)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePosixPath

from tests.k8s.checks import (
    Doc,
    by_kind,
    expand_env,
    name,
    one,
    pod_labels,
    pod_security_problems,
    pod_spec,
    selects,
)

BackupCheck = Callable[[list[Doc]], list[str]]

NAMESPACE = "ns-under-test"


def cronjob_pod(docs: list[Doc]) -> Doc:
    return dict(one(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"])


def job_pod(job: Doc) -> Doc:
    return dict(job["spec"]["template"]["spec"])


def _mount_of(container: Doc, path: str) -> Doc | None:
    """The volume mount that holds ``path`` (the longest mount path)."""
    found = [
        m
        for m in container.get("volumeMounts", [])
        if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")
    ]
    return max(found, key=lambda m: len(m["mountPath"]), default=None)


def _volume(pod: Doc, volume: str) -> Doc:
    return next((v for v in pod.get("volumes", []) if v["name"] == volume), {})


def _secret_file(pod: Doc, container: Doc, path: str) -> tuple[str, str] | None:
    """(Secret name, key) of the file ``path`` in a Secret volume, else None."""
    mount = _mount_of(container, path)
    if mount is None:
        return None
    secret = _volume(pod, mount["name"]).get("secret")
    if secret is None:
        return None
    relative = str(PurePosixPath(path).relative_to(mount["mountPath"]))
    items = secret.get("items")
    if items is None:
        return str(secret["secretName"]), relative
    key = next((i["key"] for i in items if i["path"] == relative), None)
    return (str(secret["secretName"]), key) if key is not None else None


def _sts_secret(sts: Doc, env_var: str, *, init: bool = False) -> str | None:
    """The Secret the StatefulSet's node reads ``env_var``'s file from; with
    ``init``, the Secret any of the pod's containers mounts for TLS (the
    node sees only its own key, copied by an init container)."""
    pod = pod_spec(sts)
    if init:
        for volume in pod.get("volumes", []):
            secret = volume.get("secret", {}).get("secretName", "")
            if secret.endswith("-tls") and not secret.endswith("-client-tls"):
                return str(secret)
        return None
    container = pod["containers"][0]
    env = expand_env(container, {"metadata.name": f"{name(sts)}-0", "metadata.namespace": "x"})
    found = _secret_file(pod, container, env.get(env_var, ""))
    return found[0] if found else None


def _arg_after(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args and args.index(flag) + 1 < len(args) else None


def check_backup_reaches_the_cluster(docs: list[Doc]) -> list[str]:
    """The client Service's gRPC port, TLS with the set's CA and the client
    certificate, and the admin token, all from the Secrets the nodes use."""
    sts, pod = one(docs, "StatefulSet"), cronjob_pod(docs)
    container = pod["containers"][0]
    env = expand_env(container, {"metadata.namespace": NAMESPACE})
    problems = []
    host, _, port = env.get("RAMRAFT_ENDPOINTS", "").rpartition(":")
    services = {name(s): s for s in by_kind(docs, "Service")}
    client = next(
        (s for s in services.values() if s["spec"].get("clusterIP") != "None"
         and selects(s["spec"].get("selector"), pod_labels(sts))),
        None,
    )  # fmt: skip
    if client is None:
        return ["no client Service selects the set's pods"]
    hosts = {name(client), f"{name(client)}.{NAMESPACE}.svc"}
    if host not in hosts:
        problems.append(
            f"RAMRAFT_ENDPOINTS host {host!r} is not the client Service {sorted(hosts)}"
        )
    grpc_ports = [str(p["port"]) for p in client["spec"]["ports"] if p.get("name") == "grpc"]
    if port not in grpc_ports:
        problems.append(f"RAMRAFT_ENDPOINTS port {port!r} is not the client Service's grpc port")
    # The clients' certificate: the Secret `ramraft certs --secret` prints for
    # clients (never the nodes' keys); the admin token: the nodes' token Secret.
    client_tls = f"{_sts_secret(sts, 'RAMRAFT_TLS_CA', init=True)}".removesuffix("-tls")
    for var, (secret, key) in (
        ("RAMRAFT_TLS_CA", (f"{client_tls}-client-tls", "ca.pem")),
        ("RAMRAFT_TLS_CERT", (f"{client_tls}-client-tls", "client.pem")),
        ("RAMRAFT_TLS_KEY", (f"{client_tls}-client-tls", "client-key.pem")),
        ("RAMRAFT_TOKEN_FILE", (_sts_secret(sts, "RAMRAFT_AUTH_TOKENS"), "admin")),
    ):
        path = env.get(var)
        if not path:
            problems.append(f"{var} is not set: the nodes need TLS and a token")
            continue
        found = _secret_file(pod, container, path)
        if found != (secret, key):
            problems.append(f"{var} {path} is {found}, not key {key!r} of Secret {secret!r}")
        mount = _mount_of(container, path)
        if mount is not None and not mount.get("readOnly"):
            problems.append(f"{var}: the Secret mount {mount['mountPath']} is not readOnly")
        mode = (
            int(_volume(pod, mount["name"]).get("secret", {}).get("defaultMode", 0o644))
            if (mount)
            else 0
        )
        if mode & 0o007:
            problems.append(f"{var}: the Secret's files are readable by other users")
    return problems


def check_backup_keeps_files_on_a_volume(docs: list[Doc]) -> list[str]:
    """`ramraft backup --out DIR/ --keep N` into a PersistentVolumeClaim of
    the manifests, one run at a time, with the set's image."""
    cron, pod, sts = one(docs, "CronJob"), cronjob_pod(docs), one(docs, "StatefulSet")
    container = pod["containers"][0]
    argv = [*container.get("command", []), *container.get("args", [])]
    problems = []
    if not argv or not argv[0].endswith("/ramraft") or argv[1:2] != ["backup"]:
        problems.append(f"the CronJob runs {argv[:2]}, not `ramraft backup`")
    out, keep = _arg_after(argv, "--out"), _arg_after(argv, "--keep")
    if out is None or not out.endswith("/"):
        problems.append(f"--out {out!r} is not a directory (DIR/): --keep needs one")
    else:
        mount = _mount_of(container, out)
        claim = _volume(pod, mount["name"]).get("persistentVolumeClaim") if mount else None
        claims = {name(c) for c in by_kind(docs, "PersistentVolumeClaim")}
        if claim is None or claim.get("claimName") not in claims:
            problems.append(f"--out {out} is not on a PersistentVolumeClaim of the manifests")
        elif mount and mount.get("readOnly"):
            problems.append(f"--out {out} is on a read-only mount")
    if keep is None or not keep.isdigit() or int(keep) < 1:
        problems.append(f"--keep {keep!r}: old backups would pile up until the volume is full")
    if cron["spec"].get("concurrencyPolicy") != "Forbid":
        problems.append("concurrencyPolicy must be Forbid: two backups would race for --keep")
    if container.get("image") != pod_spec(sts)["containers"][0].get("image"):
        problems.append("the CronJob's image is not the StatefulSet's")
    return problems


def check_backup_pod_is_no_node(docs: list[Doc]) -> list[str]:
    """The backup pod takes no client traffic, counts in no budget and gets
    no peer access: nothing that selects the nodes selects it."""
    labels = dict(
        one(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    )
    problems = []
    for kind, field in (
        ("Service", "selector"),
        ("PodDisruptionBudget", "selector"),
        ("NetworkPolicy", "podSelector"),
    ):
        for doc in by_kind(docs, kind):
            if selects(doc["spec"].get(field), labels):
                problems.append(f"{kind} {name(doc)} selects the backup pod")
    peer_ports = {
        p["containerPort"]
        for p in pod_spec(one(docs, "StatefulSet"))["containers"][0].get("ports", [])
        if p.get("name") == "peer"
    } | {"peer"}
    for np in by_kind(docs, "NetworkPolicy"):
        for rule in np["spec"].get("ingress", []):
            ports = {p.get("port") for p in rule.get("ports", [])}
            for source in rule.get("from", []):
                if selects(source.get("podSelector"), labels) and (not ports or ports & peer_ports):
                    problems.append(f"NetworkPolicy {name(np)} admits the backup pod as a node")
    return problems


def check_backup_pod_security(docs: list[Doc]) -> list[str]:
    return [f"backup pod: {p}" for p in pod_security_problems(cronjob_pod(docs))]


BACKUP_CHECKS: tuple[BackupCheck, ...] = (
    check_backup_reaches_the_cluster,
    check_backup_keeps_files_on_a_volume,
    check_backup_pod_is_no_node,
    check_backup_pod_security,
)


# -- the restore Job (a template: checked once filled in) ------------------------------


def check_restore_job(job: Doc, docs: list[Doc], ordinal: int, backup_file: str) -> list[str]:
    """The Job acts as pod <set>-<ordinal> would: its id, the set's peers and
    data directory, on that pod's volume; the file from the backups volume
    (read-only); restricted like the nodes."""
    sts = one(docs, "StatefulSet")
    pod, set_name = job_pod(job), name(sts)
    container = pod["containers"][0]
    values = {"metadata.namespace": NAMESPACE}
    env = expand_env(container, values)
    node_env = expand_env(
        pod_spec(sts)["containers"][0], {**values, "metadata.name": f"{set_name}-{ordinal}"}
    )
    problems = [f"restore pod: {p}" for p in pod_security_problems(pod)]
    for var in ("RAMRAFT_ID", "RAMRAFT_PEERS", "RAMRAFT_DATA_DIR"):
        if env.get(var) != node_env.get(var):
            problems.append(
                f"{var} is {env.get(var)!r}; pod {set_name}-{ordinal} has {node_env.get(var)!r}"
            )
    template = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    data_dir = env.get("RAMRAFT_DATA_DIR", "")
    mount = _mount_of(container, data_dir)
    claim = _volume(pod, mount["name"]).get("persistentVolumeClaim", {}) if mount else {}
    want = f"{template}-{set_name}-{ordinal}"
    node_mount = _mount_of(pod_spec(sts)["containers"][0], node_env.get("RAMRAFT_DATA_DIR", ""))
    # The same directory inside the same volume, mounted where the node mounts it.
    if claim.get("claimName") != want or (mount or {}).get("mountPath") != (node_mount or {}).get(
        "mountPath"
    ):
        problems.append(f"RAMRAFT_DATA_DIR {data_dir} is not in the volume {want} of the pod")
    argv = [*container.get("command", []), *container.get("args", [])]
    if not argv or not argv[0].endswith("/ramraft") or argv[1:2] != ["restore"]:
        problems.append(f"the Job runs {argv[:2]}, not `ramraft restore`")
    files = [a for a in argv[2:] if not a.startswith("--")]
    source = files[0] if files else ""
    if PurePosixPath(source).name != backup_file:
        problems.append(f"the Job restores {source!r}, not {backup_file!r}")
    mount = _mount_of(container, source)
    backups = _volume(pod, mount["name"]).get("persistentVolumeClaim", {}) if mount else {}
    cron_claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in cronjob_pod(docs).get("volumes", [])
        if "persistentVolumeClaim" in v
    }
    if backups.get("claimName") not in cron_claims:
        problems.append(f"{source} is not in the volume the backup CronJob writes")
    if mount is not None and not mount.get("readOnly"):
        problems.append("the backups volume is mounted writable: a restore only reads it")
    if "--force" not in argv:
        problems.append("no --force: the pod's volume holds the old cluster's data")
    return problems

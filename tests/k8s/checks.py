"""What a schema cannot see: cross-object rules for the rendered manifests.

Each check takes the rendered documents and returns the problems it finds, as
sentences (an empty list means the rule holds). Tests assert the list is empty
for k8s/, and that each check does flag a manifest broken on purpose.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

Doc = dict[str, Any]
Check = Callable[[list[Doc]], list[str]]

_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


# -- lookups ------------------------------------------------------------------


def by_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[Doc], kind: str) -> Doc:
    found = by_kind(docs, kind)
    if len(found) != 1:
        raise AssertionError(f"expected one {kind}, found {len(found)}")
    return found[0]


def name(doc: Doc) -> str:
    return str(doc["metadata"]["name"])


def pod_spec(sts: Doc) -> Doc:
    return dict(sts["spec"]["template"]["spec"])


def pod_labels(sts: Doc) -> dict[str, str]:
    return dict(sts["spec"]["template"]["metadata"].get("labels", {}))


def containers(sts: Doc) -> list[Doc]:
    return list(pod_spec(sts)["containers"])


def container_ports(sts: Doc) -> dict[str, int]:
    """name -> number for every named container port of the pod."""
    return {
        p["name"]: int(p["containerPort"])
        for c in containers(sts)
        for p in c.get("ports", [])
        if "name" in p
    }


def env_of(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env", [])}


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector (matchLabels/matchExpressions) or a plain map, against labels.

    An empty or missing selector selects nothing here: for our objects that is
    always a mistake (a PDB or policy over every pod in the namespace).
    """
    if not selector:
        return False
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        return all(labels.get(k) == v for k, v in selector.items())
    ok = all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In":
            ok &= labels.get(key) in values
        elif op == "NotIn":
            ok &= labels.get(key) not in values
        elif op == "Exists":
            ok &= key in labels
        elif op == "DoesNotExist":
            ok &= key not in labels
    return ok


def quorum(n: int) -> int:
    return n // 2 + 1


def _probes(c: Doc) -> Iterator[tuple[str, Doc]]:
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        if kind in c:
            yield kind, c[kind]


def _port_exists(port: int | str, ports: Mapping[str, int]) -> bool:
    return port in ports if isinstance(port, str) else port in ports.values()


def expand_env(container: Doc, values: Mapping[str, str]) -> dict[str, str]:
    """Env values as the kubelet expands them: `$(VAR)` refers to an EARLIER entry.

    `values` supplies what the downward API would give (fieldRef path -> value).
    A reference to an unknown or later variable stays literal, as in Kubernetes.
    """
    env: dict[str, str] = {}
    for e in container.get("env", []):
        if "valueFrom" in e:
            path = e["valueFrom"].get("fieldRef", {}).get("fieldPath", "")
            env[e["name"]] = values.get(path, f"<{path}>")
        else:
            raw = str(e.get("value", ""))
            env[e["name"]] = _VAR_REF.sub(lambda m: env.get(m.group(1), m.group(0)), raw)
    return env


# -- checks ---------------------------------------------------------------------


def check_headless_peer_service(docs: list[Doc]) -> list[str]:
    sts = one(docs, "StatefulSet")
    svc_name = sts["spec"].get("serviceName")
    svcs = [s for s in by_kind(docs, "Service") if name(s) == svc_name]
    if not svcs:
        return [f"StatefulSet serviceName {svc_name!r} names no Service in the manifests"]
    svc, problems = svcs[0], []
    if svc["spec"].get("clusterIP") != "None":
        problems.append(f"Service {svc_name} must be headless (clusterIP: None)")
    if svc["spec"].get("publishNotReadyAddresses") is not True:
        problems.append(
            f"Service {svc_name} needs publishNotReadyAddresses: true, or peers cannot "
            "resolve each other before they are Ready"
        )
    return problems


def check_selectors_match_pods(docs: list[Doc]) -> list[str]:
    sts = one(docs, "StatefulSet")
    labels = pod_labels(sts)
    problems = []
    if not selects(sts["spec"].get("selector"), labels):
        problems.append("StatefulSet selector does not match its pod template labels")
    for svc in by_kind(docs, "Service"):
        if not selects(svc["spec"].get("selector"), labels):
            problems.append(f"Service {name(svc)} selector does not select the pods")
    for pdb in by_kind(docs, "PodDisruptionBudget"):
        if not selects(pdb["spec"].get("selector"), labels):
            problems.append(f"PodDisruptionBudget {name(pdb)} selector does not select the pods")
    for np in by_kind(docs, "NetworkPolicy"):
        if not selects(np["spec"].get("podSelector"), labels):
            problems.append(f"NetworkPolicy {name(np)} podSelector does not select the pods")
    anti = pod_spec(sts).get("affinity", {}).get("podAntiAffinity", {})
    for term in anti.get("requiredDuringSchedulingIgnoredDuringExecution", []):
        if not selects(term.get("labelSelector"), labels):
            problems.append("pod anti-affinity labelSelector does not select the set's pods")
    return problems


def check_pdb_keeps_majority(docs: list[Doc]) -> list[str]:
    sts = one(docs, "StatefulSet")
    replicas = int(sts["spec"].get("replicas", 1))
    pdbs = by_kind(docs, "PodDisruptionBudget")
    if not pdbs:
        return ["no PodDisruptionBudget: a drain may take the quorum down"]
    problems = []
    for pdb in pdbs:
        spec = pdb["spec"]
        if "maxUnavailable" in spec:
            # The disruption controller rounds percentages up.
            unavailable = _scaled(spec["maxUnavailable"], replicas)
            left = replicas - unavailable
        elif "minAvailable" in spec:
            left = _scaled(spec["minAvailable"], replicas)
        else:
            problems.append(f"PodDisruptionBudget {name(pdb)} sets no budget")
            continue
        if left < quorum(replicas):
            problems.append(
                f"PodDisruptionBudget {name(pdb)} lets {replicas - left} of {replicas} pods go "
                f"at once; a quorum of {quorum(replicas)} would not survive"
            )
    return problems


def _scaled(value: int | str, total: int) -> int:
    if isinstance(value, str) and value.endswith("%"):
        return math.ceil(total * int(value[:-1]) / 100)
    return int(value)


def check_ports_exist(docs: list[Doc]) -> list[str]:
    sts = one(docs, "StatefulSet")
    ports = container_ports(sts)
    problems = []
    for c in containers(sts):
        for kind, probe in _probes(c):
            for handler in ("grpc", "httpGet", "tcpSocket"):
                port = probe.get(handler, {}).get("port")
                if port is not None and not _port_exists(port, ports):
                    problems.append(f"{c['name']} {kind} port {port!r} is not a container port")
    for svc in by_kind(docs, "Service"):
        for p in svc["spec"].get("ports", []):
            target = p.get("targetPort", p["port"])
            if not _port_exists(target, ports):
                problems.append(
                    f"Service {name(svc)} targetPort {target!r} is not a container port"
                )
    for np in by_kind(docs, "NetworkPolicy"):
        for rule in np["spec"].get("ingress", []):
            for p in rule.get("ports", []):
                if "port" in p and not _port_exists(p["port"], ports):
                    problems.append(
                        f"NetworkPolicy {name(np)} port {p['port']!r} is not a container port"
                    )
    return problems


def check_peer_list_matches_replicas(docs: list[Doc]) -> list[str]:
    """RAMRAFT_PEERS names exactly ramraft-0..N-1, each at its pod DNS name, on the peer port."""
    sts = one(docs, "StatefulSet")
    replicas = int(sts["spec"].get("replicas", 1))
    set_name, svc = name(sts), sts["spec"].get("serviceName")
    ports = container_ports(sts)
    problems = []
    for c in containers(sts):
        env = env_of(c)
        if "RAMRAFT_PEERS" not in env:
            problems.append(f"container {c['name']} has no RAMRAFT_PEERS")
            continue
        if env.get("RAMRAFT_ID", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != (
            "metadata.name"
        ):
            problems.append("RAMRAFT_ID must come from the pod name (downward API metadata.name)")
        # Expand as the kubelet would, for a pod named after ordinal 0.
        expanded = expand_env(
            c, {"metadata.name": f"{set_name}-0", "metadata.namespace": "ns-under-test"}
        )
        leftover = _VAR_REF.findall(expanded["RAMRAFT_PEERS"])
        if leftover:
            problems.append(f"RAMRAFT_PEERS refers to undefined or later env vars {leftover}")
        entries = [e for e in expanded["RAMRAFT_PEERS"].split(",") if e]
        ids = [e.partition("=")[0] for e in entries]
        want = [f"{set_name}-{i}" for i in range(replicas)]
        if ids != want:
            problems.append(f"RAMRAFT_PEERS ids {ids} do not match replicas={replicas}: {want}")
        domain = expanded.get("CLUSTER_DOMAIN", "cluster.local")
        peer_port = ports.get("peer")
        for entry in entries:
            node_id, _, addr = entry.partition("=")
            host, _, port = addr.rpartition(":")
            want_host = f"{node_id}.{svc}.ns-under-test.svc.{domain}"
            if host != want_host:
                problems.append(f"peer {node_id} is at {host!r}, its pod DNS name is {want_host!r}")
            if not port.isdigit() or int(port) != peer_port:
                problems.append(f"peer {node_id} port {port!r} is not the 'peer' container port")
        listen = expanded.get("RAMRAFT_PEER_LISTEN", "")
        if not listen.endswith(f":{peer_port}"):
            problems.append(f"RAMRAFT_PEER_LISTEN {listen!r} does not bind the peer port")
    return problems


def check_data_dir_is_persistent(docs: list[Doc]) -> list[str]:
    sts = one(docs, "StatefulSet")
    claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}
    problems = []
    for c in containers(sts):
        data_dir = env_of(c).get("RAMRAFT_DATA_DIR", {}).get("value") or ""
        mounts = {m["mountPath"].rstrip("/"): m["name"] for m in c.get("volumeMounts", [])}
        # The claim's mount, or a directory in it (the node creates it 0700;
        # the volume's root belongs to root).
        claim = next(
            (
                volume
                for path, volume in mounts.items()
                if data_dir == path or data_dir.startswith(path + "/")
            ),
            None,
        )
        if claim not in claims:
            problems.append(f"RAMRAFT_DATA_DIR {data_dir!r} is not in a volumeClaimTemplate mount")
    return problems


_QUANTITY = re.compile(r"^(\d+)(Ki|Mi|Gi|Ti)?$")
_UNITS = {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
BLOB_RESERVE_DEFAULT = 256 << 20  # server/config.py BlobConfig.reserve_bytes


def _quantity(text: str) -> int | None:
    match = _QUANTITY.match(str(text))
    return int(match.group(1)) * _UNITS[match.group(2)] if match else None


def check_blob_dir_is_persistent(docs: list[Doc]) -> list[str]:
    """Blobs (RAMRAFT_BLOB_DIR, default <data dir>/blobs) must live on a
    volume claim, whose size leaves room beyond the node's free-space
    reserve (RAMRAFT_BLOB_RESERVE_BYTES): otherwise every blob is refused."""
    sts = one(docs, "StatefulSet")
    claims = {
        t["metadata"]["name"]: _quantity(t["spec"]["resources"]["requests"]["storage"])
        for t in sts["spec"].get("volumeClaimTemplates", [])
    }
    problems = []
    for c in containers(sts):
        env = env_of(c)
        data_dir = env.get("RAMRAFT_DATA_DIR", {}).get("value", "")
        blob_dir = env.get("RAMRAFT_BLOB_DIR", {}).get("value") or f"{data_dir}/blobs"
        reserve = _quantity(env.get("RAMRAFT_BLOB_RESERVE_BYTES", {}).get("value", "")) or (
            BLOB_RESERVE_DEFAULT
        )
        mounted = [
            m for m in c.get("volumeMounts", []) if f"{blob_dir}/".startswith(f"{m['mountPath']}/")
        ]
        mount = max(mounted, key=lambda m: len(m["mountPath"]), default=None)
        if mount is None or mount["name"] not in claims:
            problems.append(f"the blob directory {blob_dir!r} is not on a volumeClaimTemplate")
            continue
        size = claims[mount["name"]]
        if size is not None and size <= reserve:
            problems.append(
                f"the {mount['name']!r} claim ({size} bytes) is not larger than the blob "
                f"reserve ({reserve} bytes): every blob would be refused"
            )
    return problems


def check_security_context(docs: list[Doc]) -> list[str]:
    return pod_security_problems(pod_spec(one(docs, "StatefulSet")))


def pod_security_problems(spec: Doc) -> list[str]:
    """The restricted rules for a pod spec (the set's, the backup Job's...)."""
    pod_sc = spec.get("securityContext", {})
    problems = []
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            problems.append(f"pod sets {flag}")
    if spec.get("automountServiceAccountToken") is not False:
        problems.append("pod mounts a service account token it does not need")
    if spec.get("enableServiceLinks") is not False:
        problems.append(
            "enableServiceLinks must be false: the Service 'ramraft' would inject RAMRAFT_PORT "
            "and friends into the env the node reads its RAMRAFT_* settings from"
        )
    for c in spec.get("containers", []):
        sc, who = c.get("securityContext", {}), f"container {c['name']}"

        def effective(key: str, sc: Doc = sc) -> Any:
            return sc.get(key, pod_sc.get(key))

        if effective("runAsNonRoot") is not True:
            problems.append(f"{who}: runAsNonRoot is not true")
        if effective("runAsUser") == 0:
            problems.append(f"{who}: runs as uid 0")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{who}: root filesystem is writable")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{who}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            problems.append(f"{who}: privileged")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []) or caps.get("add"):
            problems.append(f"{who}: must drop ALL capabilities and add none")
        if (effective("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{who}: seccompProfile is not RuntimeDefault")
        if sc.get("readOnlyRootFilesystem") and not any(
            m["mountPath"] == "/tmp" for m in c.get("volumeMounts", [])
        ):
            problems.append(f"{who}: read-only root filesystem but no writable /tmp")
    return problems


def check_peer_port_policy(docs: list[Doc]) -> list[str]:
    """Some NetworkPolicy selects the pods, and the peer port is open only to them."""
    sts = one(docs, "StatefulSet")
    labels, ports = pod_labels(sts), container_ports(sts)
    peer = ports.get("peer")
    if peer is None:
        return ["no container port named 'peer'"]
    policies = [
        np
        for np in by_kind(docs, "NetworkPolicy")
        if selects(np["spec"].get("podSelector"), labels)
        and "Ingress" in np["spec"].get("policyTypes", ["Ingress"])
    ]
    if not policies:
        return ["no NetworkPolicy isolates the pods' ingress"]
    problems = []
    for np in policies:
        for rule in np["spec"].get("ingress", []):
            rule_ports = rule.get("ports")
            admits_peer = not rule_ports or any(
                p.get("port") in (None, "peer", peer) for p in rule_ports
            )
            if not admits_peer:
                continue
            sources = rule.get("from")
            if not sources:
                problems.append(f"NetworkPolicy {name(np)} admits the peer port from anywhere")
                continue
            for src in sources:
                if "ipBlock" in src or "namespaceSelector" in src:
                    problems.append(
                        f"NetworkPolicy {name(np)} admits the peer port from outside the set"
                    )
                elif not selects(src.get("podSelector"), labels):
                    problems.append(
                        f"NetworkPolicy {name(np)} admits the peer port from pods of another app"
                    )
    return problems


CLIENT_LABEL = ("ramraft.io/client", "true")


def check_client_ports_policy(docs: list[Doc]) -> list[str]:
    """The client gRPC and HTTP ports admit only pods labelled
    ``ramraft.io/client: "true"`` (k8s/README.md), and egress goes only to
    the set's pods and the cluster DNS."""
    sts = one(docs, "StatefulSet")
    labels, ports = pod_labels(sts), container_ports(sts)
    problems = []
    policies = [
        np
        for np in by_kind(docs, "NetworkPolicy")
        if selects(np["spec"].get("podSelector"), labels)
    ]
    for np in policies:
        for rule in np["spec"].get("ingress", []):
            named = {p.get("port") for p in rule.get("ports") or [{}]}
            if not named & {None, "grpc", "http", ports.get("grpc"), ports.get("http")}:
                continue
            for src in rule.get("from") or [{}]:
                wanted = (src.get("podSelector") or {}).get("matchLabels", {})
                if wanted.get(CLIENT_LABEL[0]) != CLIENT_LABEL[1] and not selects(
                    src.get("podSelector"), labels
                ):
                    problems.append(
                        f"NetworkPolicy {name(np)} admits the client ports from pods without "
                        f"the label {CLIENT_LABEL[0]}={CLIENT_LABEL[1]}"
                    )
        if "Egress" not in np["spec"].get("policyTypes", []):
            problems.append(f"NetworkPolicy {name(np)} does not restrict egress")
        for rule in np["spec"].get("egress", []):
            for dst in rule.get("to") or [{}]:
                pods = dst.get("podSelector")
                dns = (pods or {}).get("matchLabels", {}).get("k8s-app") == "kube-dns"
                if "ipBlock" in dst or pods is None or not (dns or selects(pods, labels)):
                    problems.append(
                        f"NetworkPolicy {name(np)} allows egress beyond the set and the DNS"
                    )
    if not policies:
        problems.append("no NetworkPolicy selects the pods")
    return problems


def check_scheduling_and_shutdown(docs: list[Doc]) -> list[str]:
    sts = one(docs, "StatefulSet")
    spec, problems = pod_spec(sts), []
    if sts["spec"].get("podManagementPolicy") != "Parallel":
        problems.append("podManagementPolicy must be Parallel so a fresh cluster can form")
    terms = (
        spec.get("affinity", {})
        .get("podAntiAffinity", {})
        .get("requiredDuringSchedulingIgnoredDuringExecution", [])
    )
    if not any(t.get("topologyKey") == "kubernetes.io/hostname" for t in terms):
        problems.append("no required pod anti-affinity across nodes (kubernetes.io/hostname)")
    grace = int(spec.get("terminationGracePeriodSeconds", 30))
    for c in containers(sts):
        pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        # After preStop the node still needs time to hand leadership over and flush.
        if grace < int(pre_stop) + 10:
            problems.append(
                f"terminationGracePeriodSeconds {grace} leaves under 10 s after preStop "
                f"({pre_stop} s) for leadership transfer and flush"
            )
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in res.get(kind, {}):
                    problems.append(f"container {c['name']} has no {kind}.{resource}")
        if "readinessProbe" not in c or "livenessProbe" not in c:
            problems.append(f"container {c['name']} lacks a readiness or liveness probe")
        for kind, probe in _probes(c):
            if "grpc" not in probe:
                problems.append(f"container {c['name']} {kind} is not a native gRPC probe")
    return problems


TLS_FILE_VARS = ("RAMRAFT_TLS_CERT", "RAMRAFT_TLS_KEY", "RAMRAFT_TLS_CA")


def check_tls_wiring(docs: list[Doc]) -> list[str]:
    """TLS and tokens are on, from read-only mounts no other user can read:
    a Secret, or (the node's own certificate and key) an in-memory volume
    that an init container fills from a Secret the node container does not
    mount, since that Secret holds every member's key; each pod uses its
    own certificate; probes use the plaintext health port (kubelet's gRPC
    probes speak no TLS); the peer-id pattern admits every listed peer."""
    sts = one(docs, "StatefulSet")
    set_name = name(sts)
    pod = f"{set_name}-0"
    ports = container_ports(sts)
    volumes = {v["name"]: v for v in pod_spec(sts).get("volumes", [])}
    problems = []
    filled_from_secret = {
        m["name"]
        for init in pod_spec(sts).get("initContainers", [])
        if any("secret" in volumes.get(v["name"], {}) for v in init.get("volumeMounts", []))
        for m in init.get("volumeMounts", [])
    }
    for volume in volumes.values():
        mode = int(volume.get("secret", {}).get("defaultMode", 0o644))
        if "secret" in volume and mode & 0o007:
            problems.append(
                f"Secret {volume['secret'].get('secretName')} files are readable by other "
                f"users (defaultMode {mode:#o})"
            )
    for c in containers(sts):
        for m in c.get("volumeMounts", []):
            secret = volumes.get(m["name"], {}).get("secret", {})
            if secret.get("secretName") == "ramraft-tls":
                problems.append(
                    f"container {c['name']} mounts Secret ramraft-tls, which holds every "
                    "member's key: mount only the pod's own (tls-own-key)"
                )
        env = expand_env(c, {"metadata.name": pod, "metadata.namespace": "ns-under-test"})
        mounts = c.get("volumeMounts", [])
        for var in (*TLS_FILE_VARS, "RAMRAFT_AUTH_TOKENS"):
            path = env.get(var)
            if not path:
                problems.append(f"{var} is not set: TLS and tokens must be on in k8s")
                continue
            mount = next(
                (m for m in mounts if path.startswith(m["mountPath"].rstrip("/") + "/")), None
            )
            volume = volumes.get(mount["name"], {}) if mount else {}
            secret = volume.get("secret")
            if mount is None or (secret is None and mount["name"] not in filled_from_secret):
                problems.append(
                    f"{var} {path} is not in a mounted Secret (or a volume an init container "
                    "fills from one)"
                )
                continue
            if not mount.get("readOnly"):
                problems.append(f"{var}: the mount {mount['mountPath']} is not readOnly")
            if secret is None and volume.get("emptyDir", {}).get("medium") != "Memory":
                problems.append(
                    f"{var}: volume {mount['name']} must be an emptyDir in memory, never on a disk"
                )
        for var in ("RAMRAFT_TLS_CERT", "RAMRAFT_TLS_KEY"):
            path = env.get(var, "")
            if (
                path
                and not path.rsplit("/", 1)[-1].startswith(f"{pod}.")
                and not (path.rsplit("/", 1)[-1].startswith(f"{pod}-"))
            ):
                problems.append(f"{var} {path} is not the pod's own ({pod}) certificate")
        health = env.get("RAMRAFT_HEALTH_LISTEN", "")
        health_port = (
            int(health.rsplit(":", 1)[-1]) if health.rsplit(":", 1)[-1].isdigit() else None
        )
        if health_port is None:
            problems.append("RAMRAFT_HEALTH_LISTEN is not set: probes need a plaintext port")
        for kind, probe in _probes(c):
            port = probe.get("grpc", {}).get("port")
            number = ports.get(port) if isinstance(port, str) else port
            if port is not None and number != health_port:
                problems.append(
                    f"{c['name']} {kind} probes port {port!r}, which speaks TLS; use the "
                    f"health port {health_port}"
                )
        patterns = [p for p in env.get("RAMRAFT_PEER_ID_PATTERN", "").split(",") if p]
        for entry in filter(None, env.get("RAMRAFT_PEERS", "").split(",")):
            node_id = entry.partition("=")[0]
            if not any(fnmatch.fnmatchcase(node_id, p) for p in patterns):
                problems.append(
                    f"RAMRAFT_PEER_ID_PATTERN {patterns} does not admit peer {node_id}: a member "
                    "that missed a scale-up could not follow a new leader"
                )
    return problems


ALL_CHECKS: tuple[Check, ...] = (
    check_headless_peer_service,
    check_selectors_match_pods,
    check_pdb_keeps_majority,
    check_ports_exist,
    check_peer_list_matches_replicas,
    check_data_dir_is_persistent,
    check_blob_dir_is_persistent,
    check_security_context,
    check_peer_port_policy,
    check_client_ports_policy,
    check_scheduling_and_shutdown,
    check_tls_wiring,
)

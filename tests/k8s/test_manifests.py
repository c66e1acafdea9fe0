"""k8s/ rendered with kustomize, validated against the Kubernetes 1.32 schema in
strict mode, then checked for what a schema cannot see (tests/k8s/checks.py).

Every check also runs against a manifest broken on purpose, to show it fails.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from ramraft.tools.certs import node_security_env
from tests.chaos.netns import CONTAINER_DATA_DIR, ChaosNet
from tests.k8s import checks
from tests.k8s.checks import Doc, one
from tests.k8s.render import KUBECTL_INSTALL, kubectl, render, render_kubectl, render_python
from tests.needs import not_installed

K8S_VERSION = "1.32.0"


@pytest.fixture(scope="module")
def docs() -> list[Doc]:
    return render()


def _key(doc: Doc) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


def test_renders_every_object(docs: list[Doc]) -> None:
    assert sorted(_key(d) for d in docs) == [
        ("CronJob", "ramraft-backup"),
        ("NetworkPolicy", "ramraft"),
        ("PersistentVolumeClaim", "ramraft-backups"),
        ("PodDisruptionBudget", "ramraft"),
        ("Service", "ramraft"),
        ("Service", "ramraft-peers"),
        ("StatefulSet", "ramraft"),
    ]
    # No namespace is baked in: `kubectl apply -k k8s/ -n anything` works.
    assert all("namespace" not in d["metadata"] for d in docs)


@pytest.mark.skipif(kubectl() is None, reason=not_installed("kubectl", KUBECTL_INSTALL))
def test_python_renderer_agrees_with_kubectl() -> None:
    by_kubectl = {_key(d): d for d in render_kubectl()}
    by_python = {_key(d): d for d in render_python()}
    assert by_python == by_kubectl


def test_valid_against_kubernetes_1_32_strict(docs: list[Doc]) -> None:
    for doc in docs:
        assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True) == "1.32"


def test_strict_schema_rejects_an_unknown_field(docs: list[Doc]) -> None:
    sts = copy.deepcopy(one(docs, "StatefulSet"))
    sts["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # a typo
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(sts, K8S_VERSION, strict=True)


@pytest.mark.parametrize("check", checks.ALL_CHECKS, ids=lambda c: c.__name__)
def test_manifests_pass(check: checks.Check, docs: list[Doc]) -> None:
    assert check(docs) == []


# -- each check fails on a manifest broken on purpose ---------------------------


def _sts(docs: list[Doc]) -> Doc:
    return one(docs, "StatefulSet")


def _container(docs: list[Doc]) -> Doc:
    return dict(_sts(docs)["spec"]["template"]["spec"]["containers"][0])


def _env(docs: list[Doc], var: str) -> Doc:
    return next(e for e in _container(docs)["env"] if e["name"] == var)


def _svc(docs: list[Doc], svc_name: str) -> Doc:
    return next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == svc_name)


def _set(path: list[Any], value: Any) -> Callable[[list[Doc]], None]:
    """A mutation: docs[kind=path[0]] ... path[-1] = value (or deleted if value is DELETE)."""

    def mutate(docs: list[Doc]) -> None:
        node: Any = one(docs, path[0])
        for step in path[1:-1]:
            node = node[step]
        if value is DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value

    return mutate


def _add_env(var: str, value: str) -> Callable[[list[Doc]], None]:
    def mutate(docs: list[Doc]) -> None:
        _container(docs)["env"].append({"name": var, "value": value})

    return mutate


DELETE = object()
POD = ["StatefulSet", "spec", "template", "spec"]
CONTAINER = [*POD, "containers", 0]


def _scale_to_five(docs: list[Doc]) -> None:
    _sts(docs)["spec"]["replicas"] = 5


def _peer_port_in_list(docs: list[Doc]) -> None:
    e = _env(docs, "RAMRAFT_PEERS")
    e["value"] = e["value"].replace(":7001", ":7000")


def _peers_before_namespace(docs: list[Doc]) -> None:
    env = _container(docs)["env"]
    env.insert(0, env.pop(next(i for i, e in enumerate(env) if e["name"] == "RAMRAFT_PEERS")))


def _not_headless(docs: list[Doc]) -> None:
    del _svc(docs, "ramraft-peers")["spec"]["clusterIP"]


def _no_not_ready(docs: list[Doc]) -> None:
    _svc(docs, "ramraft-peers")["spec"]["publishNotReadyAddresses"] = False


def _client_selector_typo(docs: list[Doc]) -> None:
    _svc(docs, "ramraft")["spec"]["selector"]["app.kubernetes.io/name"] = "ramraf"


def _policy_from_namespace(docs: list[Doc]) -> None:
    rule = one(docs, "NetworkPolicy")["spec"]["ingress"][0]
    rule["from"].append({"namespaceSelector": {}})


def _peer_port_open_to_all(docs: list[Doc]) -> None:
    one(docs, "NetworkPolicy")["spec"]["ingress"].append({"ports": [{"port": "peer"}]})


def _clients_unlabelled(docs: list[Doc]) -> None:
    del one(docs, "NetworkPolicy")["spec"]["ingress"][1]["from"]


def _egress_anywhere(docs: list[Doc]) -> None:
    one(docs, "NetworkPolicy")["spec"]["egress"].append({})


def _node_mounts_every_key(docs: list[Doc]) -> None:
    _container(docs)["volumeMounts"].append(
        {"name": "tls", "mountPath": "/etc/ramraft/secret", "readOnly": True}
    )


def _own_tls_on_disk(docs: list[Doc]) -> None:
    del _volume(docs, "own-tls")["emptyDir"]["medium"]


def _probe_on_missing_port(docs: list[Doc]) -> None:
    _container(docs)["readinessProbe"]["grpc"]["port"] = 9000


def _root_user(docs: list[Doc]) -> None:
    _sts(docs)["spec"]["template"]["spec"]["securityContext"]["runAsUser"] = 0


def _drop_env(var: str) -> Callable[[list[Doc]], None]:
    def mutate(docs: list[Doc]) -> None:
        env = _container(docs)["env"]
        env[:] = [e for e in env if e["name"] != var]

    return mutate


def _set_env(var: str, value: str) -> Callable[[list[Doc]], None]:
    def mutate(docs: list[Doc]) -> None:
        _env(docs, var)["value"] = value

    return mutate


def _volume(docs: list[Doc], volume: str) -> Doc:
    return next(v for v in _sts(docs)["spec"]["template"]["spec"]["volumes"] if v["name"] == volume)


def _world_readable_tls(docs: list[Doc]) -> None:
    _volume(docs, "tls")["secret"]["defaultMode"] = 0o444


def _tls_mount_moved(docs: list[Doc]) -> None:
    mount = next(m for m in _container(docs)["volumeMounts"] if m["name"] == "own-tls")
    mount["mountPath"] = "/etc/elsewhere"


def _writable_tokens_mount(docs: list[Doc]) -> None:
    mount = next(m for m in _container(docs)["volumeMounts"] if m["name"] == "tokens")
    del mount["readOnly"]


def _probe_on_tls_port(docs: list[Doc]) -> None:
    _container(docs)["readinessProbe"]["grpc"]["port"] = "grpc"


BREAKAGES: list[tuple[str, Callable[[list[Doc]], None], checks.Check, str]] = [
    ("tls-off", _drop_env("RAMRAFT_TLS_CA"), checks.check_tls_wiring, "RAMRAFT_TLS_CA is not set"),
    ("no-tokens", _drop_env("RAMRAFT_AUTH_TOKENS"), checks.check_tls_wiring, "AUTH_TOKENS"),
    ("tls-not-mounted", _tls_mount_moved, checks.check_tls_wiring, "not in a mounted Secret"),
    ("world-readable", _world_readable_tls, checks.check_tls_wiring, "readable by other"),
    ("writable-mount", _writable_tokens_mount, checks.check_tls_wiring, "not readOnly"),
    (
        "other-pods-cert",
        _set_env("RAMRAFT_TLS_CERT", "/run/ramraft/tls/ramraft-1.pem"),
        checks.check_tls_wiring,
        "own",
    ),
    ("probe-on-tls-port", _probe_on_tls_port, checks.check_tls_wiring, "speaks TLS"),
    (
        "pattern-misses-peers",
        _set_env("RAMRAFT_PEER_ID_PATTERN", "node-*"),
        checks.check_tls_wiring,
        "does not admit peer ramraft-0",
    ),
    ("not-headless", _not_headless, checks.check_headless_peer_service, "headless"),
    ("no-publish-not-ready", _no_not_ready, checks.check_headless_peer_service, "publishNot"),
    (
        "wrong-serviceName",
        _set(["StatefulSet", "spec", "serviceName"], "ramraft"),
        checks.check_headless_peer_service,
        "headless",
    ),
    ("client-selector-typo", _client_selector_typo, checks.check_selectors_match_pods, "ramraft "),
    (
        "pdb-selector",
        _set(["PodDisruptionBudget", "spec", "selector", "matchLabels"], {"app": "x"}),
        checks.check_selectors_match_pods,
        "PodDisruptionBudget",
    ),
    (
        "pdb-two-down",
        _set(["PodDisruptionBudget", "spec", "maxUnavailable"], 2),
        checks.check_pdb_keeps_majority,
        "quorum of 2",
    ),
    (
        "pdb-percent",
        _set(["PodDisruptionBudget", "spec", "maxUnavailable"], "50%"),
        checks.check_pdb_keeps_majority,
        "quorum",
    ),
    ("probe-port", _probe_on_missing_port, checks.check_ports_exist, "readinessProbe port 9000"),
    ("scaled-without-peers", _scale_to_five, checks.check_peer_list_matches_replicas, "replicas=5"),
    ("peer-port", _peer_port_in_list, checks.check_peer_list_matches_replicas, "'peer' container"),
    (
        "env-order",
        _peers_before_namespace,
        checks.check_peer_list_matches_replicas,
        "undefined or later",
    ),
    (
        "data-dir-not-mounted",
        _set([*CONTAINER, "env", -1, "value"], "/data"),
        checks.check_data_dir_is_persistent,
        "/data",
    ),
    (
        "blobs-on-tmpfs",
        _add_env("RAMRAFT_BLOB_DIR", "/tmp/blobs"),
        checks.check_blob_dir_is_persistent,
        "/tmp/blobs",
    ),
    (
        "blob-reserve-fills-the-volume",
        _add_env("RAMRAFT_BLOB_RESERVE_BYTES", "1Gi"),
        checks.check_blob_dir_is_persistent,
        "every blob would be refused",
    ),
    ("root", _root_user, checks.check_security_context, "uid 0"),
    (
        "writable-root",
        _set([*CONTAINER, "securityContext", "readOnlyRootFilesystem"], False),
        checks.check_security_context,
        "writable",
    ),
    (
        "caps",
        _set([*CONTAINER, "securityContext", "capabilities"], {"add": ["NET_ADMIN"]}),
        checks.check_security_context,
        "drop ALL",
    ),
    (
        "service-links",
        _set([*POD, "enableServiceLinks"], DELETE),
        checks.check_security_context,
        "RAMRAFT_PORT",
    ),
    ("policy-namespace", _policy_from_namespace, checks.check_peer_port_policy, "outside"),
    ("policy-open-peer", _peer_port_open_to_all, checks.check_peer_port_policy, "from anywhere"),
    ("clients-unlabelled", _clients_unlabelled, checks.check_client_ports_policy, "label"),
    ("egress-anywhere", _egress_anywhere, checks.check_client_ports_policy, "egress"),
    ("every-key", _node_mounts_every_key, checks.check_tls_wiring, "every member's key"),
    ("key-on-disk", _own_tls_on_disk, checks.check_tls_wiring, "in memory"),
    (
        "ordered-start",
        _set(["StatefulSet", "spec", "podManagementPolicy"], "OrderedReady"),
        checks.check_scheduling_and_shutdown,
        "Parallel",
    ),
    (
        "short-grace",
        _set([*POD, "terminationGracePeriodSeconds"], 5),
        checks.check_scheduling_and_shutdown,
        "leadership transfer",
    ),
    (
        "no-anti-affinity",
        _set([*POD, "affinity"], DELETE),
        checks.check_scheduling_and_shutdown,
        "anti-affinity",
    ),
    (
        "no-memory-limit",
        _set([*CONTAINER, "resources", "limits", "memory"], DELETE),
        checks.check_scheduling_and_shutdown,
        "limits.memory",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "check", "expect"),
    [b[1:] for b in BREAKAGES],
    ids=[b[0] for b in BREAKAGES],
)
def test_check_catches_broken_manifest(
    docs: list[Doc],
    mutate: Callable[[list[Doc]], None],
    check: checks.Check,
    expect: str,
) -> None:
    broken = copy.deepcopy(docs)
    mutate(broken)
    problems = check(broken)
    assert any(expect in p for p in problems), problems


def test_every_check_has_a_breakage() -> None:
    assert {b[2] for b in BREAKAGES} == set(checks.ALL_CHECKS)


# -- the StatefulSet and the chaos lab agree on names ----------------------------


@pytest.mark.parametrize("ordinal", [0, 2])
def test_pod_env_gives_the_names_the_chaos_lab_uses(docs: list[Doc], ordinal: int) -> None:
    """The lab runs nodes as the pods run. The security settings point at
    Secret mounts the lab does not have: it may leave them out (TLS off) or
    set them from server.certs.node_security_env with its own directories;
    every other RAMRAFT_* variable must be the pod's."""
    pod = f"ramraft-{ordinal}"
    env = checks.expand_env(_container(docs), {"metadata.name": pod, "metadata.namespace": "prod"})
    lab = ChaosNet(k8s_namespace="prod")  # not set up: names only, no root needed
    ramraft_env = {k: v for k, v in env.items() if k.startswith("RAMRAFT_")}
    lab_env = lab.node_env(pod, data_dir=CONTAINER_DATA_DIR)
    security = set(node_security_env(pod))
    assert {k: v for k, v in ramraft_env.items() if k not in security} == {
        k: v for k, v in lab_env.items() if k not in security
    }
    assert env["RAMRAFT_ID"] == pod


@pytest.mark.parametrize("ordinal", [0, 2])
def test_pod_security_env_is_node_security_env(docs: list[Doc], ordinal: int) -> None:
    """server.certs.node_security_env(pod) is exactly what a pod gets: the
    certificate named after the pod, in the mounted Secrets."""
    pod = f"ramraft-{ordinal}"
    env = checks.expand_env(_container(docs), {"metadata.name": pod, "metadata.namespace": "prod"})
    expected = node_security_env(pod)
    assert {k: env.get(k) for k in expected} == expected

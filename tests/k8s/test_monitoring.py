"""k8s/monitoring/ (the PodMonitor and the alerts) and docs/MONITORING.md.

- The rules: `promtool check rules` on the file docs/MONITORING.md tells
  users to make from the PrometheusRule, and `promtool test rules` with
  tests/k8s/alerts_test.yaml: each alert fires when it should, with the
  labels it is routed by, and is quiet on a healthy cluster.
- The PodMonitor names what the StatefulSet and the Secrets have.
- A real Prometheus (Debian's `prometheus`) scrapes a three-node cluster
  with TLS and tokens on, configured by the docs' scrape job, loads the
  rules, and fires RamraftEventLoopLate when one node's process is stopped
  for a moment; the docs' metrics table matches what the nodes serve.
"""

from __future__ import annotations

import base64
import contextlib
import re
import shutil
import signal
import ssl
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ramraft.tools.bench import free_ports
from ramraft.tools.certs import k8s_node_hosts
from ramraft.tools.cli import main
from tests.httpcalls import http, wait_until
from tests.k8s.checks import Doc, one
from tests.k8s.render import K8S_DIR, REPO, render
from tests.needs import not_installed
from tests.security.cluster import READ_TOKEN, Credentials, SecureCluster, make_credentials

MONITORING = K8S_DIR / "monitoring"
DOC = REPO / "docs" / "MONITORING.md"
UNIT_TESTS = Path(__file__).with_name("alerts_test.yaml")
# What docs/MONITORING.md tells users to run for a plain rules file.
RULES_SED = "1,/^spec:/d; s/^  //"
RULES_COMMAND = f"sed '{RULES_SED}' k8s/monitoring/alerts.yaml > ramraft-rules.yaml"
PROMETHEUS_INSTALL = "apt-get install prometheus"
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason=not_installed("promtool", PROMETHEUS_INSTALL)
)
needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason=not_installed("prometheus", PROMETHEUS_INSTALL)
)


def rules_file(out: Path, *, annotations: bool = True) -> Path:
    """The plain rules file, made by the docs' command (without the
    annotations for `promtool test rules`, which compares them too)."""
    text = subprocess.run(
        ["sed", RULES_SED, "k8s/monitoring/alerts.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = out / "ramraft-rules.yaml"
    if annotations:
        path.write_text(text)
    else:
        rules = yaml.safe_load(text)
        for group in rules["groups"]:
            for rule in group["rules"]:
                rule.pop("annotations", None)
        path.write_text(yaml.safe_dump(rules))
    return path


def prometheus_rule() -> Doc:
    return one(render(MONITORING), "PrometheusRule")


def alert_names() -> set[str]:
    return {r["alert"] for g in prometheus_rule()["spec"]["groups"] for r in g["rules"]}


# -- the rules -----------------------------------------------------------------------------


def test_the_docs_command_makes_the_prometheusrules_spec_as_a_rules_file(
    tmp_path: Path,
) -> None:
    assert RULES_COMMAND in DOC.read_text()
    made = yaml.safe_load(rules_file(tmp_path).read_text())
    assert made == prometheus_rule()["spec"]
    assert len(alert_names()) == sum(len(g["rules"]) for g in made["groups"]) >= 10


@needs_promtool
def test_promtool_accepts_the_rules_and_their_templates(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["promtool", "check", "rules", str(rules_file(tmp_path))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in proc.stdout


def test_every_alert_has_a_firing_case_and_a_quiet_case() -> None:
    cases = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in cases:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    assert fires == quiet == alert_names()


@needs_promtool
def test_each_alert_fires_when_it_should_and_not_before(tmp_path: Path) -> None:
    rules_file(tmp_path, annotations=False)
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    proc = subprocess.run(
        ["promtool", "test", "rules", UNIT_TESTS.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


# -- the PodMonitor ------------------------------------------------------------------------


def test_the_monitoring_folder_is_not_in_the_main_kustomization() -> None:
    """The operator's kinds would fail `kubectl apply -k k8s/` where the
    operator is not installed."""
    assert {(d["kind"], d["metadata"]["name"]) for d in render(MONITORING)} == {
        ("PodMonitor", "ramraft"),
        ("PrometheusRule", "ramraft"),
    }
    assert all(d["kind"] not in ("PodMonitor", "PrometheusRule") for d in render())


def test_the_podmonitor_names_what_the_statefulset_and_the_secrets_have(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monitor = one(render(MONITORING), "PodMonitor")["spec"]
    pod = one(render(), "StatefulSet")["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert monitor["selector"]["matchLabels"].items() <= labels.items()
    # The job label the alerts select (up{job="ramraft"}) is the pods' label's value.
    assert labels[monitor["jobLabel"]] == "ramraft"
    exprs = [r["expr"] for g in prometheus_rule()["spec"]["groups"] for r in g["rules"]]
    assert any('up{job="ramraft"}' in expr for expr in exprs)
    (endpoint,) = monitor["podMetricsEndpoints"]
    ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert endpoint["port"] == "http" and env["RAMRAFT_HTTP"].endswith(f":{ports['http']}")
    assert (endpoint["scheme"], endpoint["path"]) == ("https", "/metrics")
    # Every node's certificate names the server name the scrape asks for.
    hosts = k8s_node_hosts("ns", 3)
    assert all(endpoint["tlsConfig"]["serverName"] in names for names in hosts.values())

    # The Secrets hold the keys it reads: the CA, and one read token alone.
    ca = endpoint["tlsConfig"]["ca"]["secret"]
    out = tmp_path / "certs"
    capsys.readouterr()
    assert main(["certs", "--out", str(out), "--k8s-namespace", "ns", "--secret"]) == 0
    secrets = {d["metadata"]["name"]: d for d in yaml.safe_load_all(capsys.readouterr().out) if d}
    assert ca["key"] in secrets[ca["name"]]["data"]
    token = endpoint["authorization"]["credentials"]
    assert main(["tokens", "--secret", "--read", "grafana,prometheus"]) == 0
    tokens = yaml.safe_load(capsys.readouterr().out)
    assert tokens["metadata"]["name"] == token["name"]
    lines = base64.b64decode(tokens["data"]["tokens"]).decode().splitlines()
    first_read = next(line.split()[2] for line in lines if line.startswith("read "))
    assert base64.b64decode(tokens["data"][token["key"]]).decode() == first_read


def test_a_tokens_secret_without_read_tokens_has_no_read_key(
    capsys: pytest.CaptureFixture[str],
) -> None:
    capsys.readouterr()
    assert main(["tokens", "--secret", "--read", ""]) == 0
    assert "read" not in yaml.safe_load(capsys.readouterr().out)["data"]


# -- a real Prometheus against a real cluster ----------------------------------------------


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> Credentials:
    return make_credentials(tmp_path_factory.mktemp("creds"), ["n1", "n2", "n3"])


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, creds: Credentials
) -> Iterator[SecureCluster]:
    """TLS and tokens on, the web tier, an application with a background
    job and live pages (so that every family is served)."""
    root = tmp_path_factory.mktemp("monitored")
    nodes = SecureCluster(root, creds, http=True, extra_args=["--app", "examples.notes:app"])
    with nodes:
        nodes.wait_for_leader()
        yield nodes


def scrape(cluster: SecureCluster, creds: Credentials, node_id: str) -> str:
    context = ssl.create_default_context(cafile=str(creds.certs / "ca.pem"))
    headers = {"Authorization": f"Bearer {READ_TOKEN}"}
    reply = http(cluster.http[node_id], "GET", "/metrics", headers=headers, context=context)
    assert reply.status == 200, reply.body
    return reply.body.decode()


def served_families(cluster: SecureCluster, creds: Credentials) -> set[str]:
    """The ramraft_ families the nodes serve, by the names queries use (the
    client's _created companions aside). The leader alone serves its
    members' lag: scraped again until one of the scrapes was a leader's."""

    def scrape_all() -> set[str]:
        names: set[str] = set()
        for node_id in cluster.ids:
            for line in scrape(cluster, creds, node_id).splitlines():
                if line.startswith("# TYPE ramraft_") and not line.split()[2].endswith("_created"):
                    names.add(line.split()[2])
        return names if "ramraft_member_lag_entries" in names else set()

    cluster.wait_for_leader()
    families: set[str] = wait_until(scrape_all, timeout=30, what="a scrape of the leader")
    return families


def test_the_docs_table_names_every_family_a_node_serves(
    cluster: SecureCluster, creds: Credentials
) -> None:
    documented = set(re.findall(r"^\| `(ramraft_\w+)` \|", DOC.read_text(), re.MULTILINE))
    assert served_families(cluster, creds) == documented


def test_every_series_the_alerts_read_is_served(cluster: SecureCluster, creds: Credentials) -> None:
    served = served_families(cluster, creds)
    exprs = " ".join(r["expr"] for g in prometheus_rule()["spec"]["groups"] for r in g["rules"])
    used = set(re.findall(r"\b(ramraft_\w+)", exprs))
    histograms = {f"{name}_{part}" for name in served for part in ("bucket", "count", "sum")}
    assert used and used <= served | histograms, used - served - histograms


def docs_scrape_job() -> dict[str, Any]:
    """The scrape job docs/MONITORING.md shows (its first yaml block)."""
    block = re.search(r"```yaml\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert block is not None
    config = yaml.safe_load(block.group(1))
    assert config["rule_files"] == ["ramraft-rules.yaml"]
    (job,) = config["scrape_configs"]
    return dict(job)


def _serve(root: Path, address: str) -> subprocess.Popen[bytes]:
    """Start Prometheus with ``root``'s prometheus.yml; wait until it is
    ready (returns it) or exits (raises; a taken port: OSError)."""
    log = root / "prometheus.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={root / 'prometheus.yml'}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address={address}",
            ],
            stdout=out,
            stderr=out,
            cwd=root,
        )

    def ready() -> bool:
        if proc.poll() is not None:
            text = log.read_text()
            if "address already in use" in text:
                raise OSError(f"{address} taken")
            raise AssertionError(f"Prometheus exited: {text[-2000:]}")
        with contextlib.suppress(OSError):
            return http(address, "GET", "/-/ready", timeout=2).status == 200
        return False

    try:
        wait_until(ready, timeout=30, what="Prometheus ready")
    except BaseException:
        _stop(proc)
        raise
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def prometheus(config: dict[str, Any], root: Path) -> Iterator[str]:
    """A Prometheus server on loopback with ``config``; yields its address."""
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    for _ in range(3):
        address = f"127.0.0.1:{free_ports(1)[0]}"
        try:
            proc = _serve(root, address)
        except OSError:
            continue  # the port was taken after it was picked
        try:
            yield address
        finally:
            _stop(proc)
        return
    raise AssertionError("no free port for Prometheus in three tries")


def api(address: str, path: str, **params: str) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    reply = http(address, "GET", f"/api/v1/{path}{query}")
    assert reply.status == 200, reply.body
    return reply.json()["data"]


@needs_prometheus
def test_prometheus_scrapes_the_cluster_as_the_docs_say_and_fires_on_a_stalled_loop(
    cluster: SecureCluster, creds: Credentials, tmp_path: Path
) -> None:
    token = tmp_path / "read-token"
    token.write_text(READ_TOKEN + "\n")
    job = docs_scrape_job()
    job["tls_config"]["ca_file"] = str(creds.certs / "ca.pem")
    job["authorization"]["credentials_file"] = str(token)
    targets = {cluster.http[n]: n for n in cluster.ids}
    job["static_configs"] = [{"targets": sorted(targets)}]
    job["scrape_interval"] = "1s"
    rules_file(tmp_path)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["ramraft-rules.yaml"],
        "scrape_configs": [job],
    }
    with prometheus(config, tmp_path) as address:

        def all_up() -> bool:
            active = api(address, "targets")["activeTargets"]
            return len(active) == 3 and all(t["health"] == "up" for t in active)

        wait_until(all_up, timeout=60, what="three targets up")

        # The nodes' series, under the job the alerts select.
        def leader_known() -> list[Any]:
            result: list[Any] = api(address, "query", query='ramraft_leader_known{job="ramraft"}')[
                "result"
            ]
            return result if len(result) == 3 else []

        known = wait_until(leader_known, timeout=30, what="ramraft_leader_known from every node")
        assert {r["metric"]["instance"] for r in known} == set(targets)
        assert all(r["value"][1] == "1" for r in known)
        # The background job's series keep the job label for the scrape job.
        runs = api(address, "query", query="ramraft_job_runs_total")["result"]
        assert runs and all(r["metric"]["job"] == "ramraft" for r in runs)
        assert {r["metric"]["job_name"] for r in runs} == {"archive_old_notes"}
        assert all("exported_job" not in r["metric"] for r in runs)

        def rules_evaluated() -> bool:
            (group,) = api(address, "rules")["groups"]
            return len(group["rules"]) == len(alert_names()) and all(
                r["health"] == "ok" for r in group["rules"]
            )

        wait_until(rules_evaluated, timeout=30, what="every rule evaluated without error")

        # Stop a follower's process for longer than a quarter of its election
        # timeout (ProcessCluster: 300 ms): its ticker wakes late when it
        # runs again, the node counts it, and the alert fires for that node.
        leader = cluster.wait_for_leader()
        follower = next(n for n in cluster.ids if n != leader)
        process = cluster.procs[follower]
        process.send_signal(signal.SIGSTOP)
        time.sleep(0.25)
        process.send_signal(signal.SIGCONT)

        def late_alert() -> list[Any]:
            return [
                a
                for a in api(address, "alerts")["alerts"]
                if a["labels"]["alertname"] == "RamraftEventLoopLate"
                and a["labels"]["instance"] == cluster.http[follower]
                and a["state"] == "firing"
            ]

        (alert,) = wait_until(late_alert, timeout=30, what="RamraftEventLoopLate firing")
        assert alert["labels"]["severity"] == "warning"
        assert cluster.http[follower] in alert["annotations"]["summary"]

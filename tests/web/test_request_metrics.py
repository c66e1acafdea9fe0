"""Each request's report (server/web/metrics.py observe_request) lands in
its own series, by API, RPC and code, also once the series are cached."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from ramraft import Application
from ramraft.server.inprocess import ClusterHarness
from ramraft.server.web.metrics import LATENCY_BUCKETS, NodeMetrics
from tests.server.apps.ticker import Ticker

Make = Callable[..., ClusterHarness]


def test_requests_are_counted_by_api_rpc_and_code(ramraft_cluster: Make) -> None:
    cluster = ramraft_cluster(lambda: Application(Ticker()))
    node = cluster.node(cluster.leader())
    metrics = NodeMetrics(node.runtime, lambda: 0, process=False)
    reports: list[tuple[str, str, str, float]] = [
        ("grpc", "Put", "OK", 0.001),
        ("grpc", "Put", "OK", 0.002),
        ("grpc", "Put", "DEADLINE_EXCEEDED", 0.5),
        ("grpc", "Get", "OK", 0.001),
        ("http", "GET /status", "200", 0.01),
    ] * 3
    for report in reports:
        metrics.observe_request(*report)
    text = metrics.exposition().decode()

    def count(api: str, rpc: str, code: str) -> Any:
        line = f'ramraft_requests_total{{api="{api}",code="{code}",rpc="{rpc}"}}'
        return next(float(row.split()[-1]) for row in text.splitlines() if row.startswith(line))

    assert count("grpc", "Put", "OK") == 6.0
    assert count("grpc", "Put", "DEADLINE_EXCEEDED") == 3.0
    assert count("grpc", "Get", "OK") == 3.0
    assert count("http", "GET /status", "200") == 3.0
    assert 'ramraft_request_seconds_count{api="grpc",rpc="Put"} 9.0' in text


def test_latency_buckets_are_those_prometheus_client_writes(ramraft_cluster: Make) -> None:
    """The request series are counted in plain numbers (metrics.py
    _Requests); what a scrape shows is what prometheus_client's own
    Histogram shows for the same latencies, bounds (a bucket counts values
    up to and including its bound) and +Inf included."""
    cluster = ramraft_cluster(lambda: Application(Ticker()))
    node = cluster.node(cluster.leader())
    metrics = NodeMetrics(node.runtime, lambda: 0, process=False)
    registry = CollectorRegistry()
    reference = Histogram(
        "ramraft_request_seconds",
        "reference",
        ["api", "rpc"],
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    latencies = [0.0, 0.0001, 0.00010001, 0.00025, 0.003, 0.05, 10.0, 10.5, 1e-9]
    for seconds in latencies:
        metrics.observe_request("grpc", "Get", "OK", seconds)
        reference.labels("grpc", "Get").observe(seconds)

    def samples(text: str) -> list[str]:
        wanted = tuple(f"ramraft_request_seconds_{part}" for part in ("bucket", "count", "sum"))
        return [row for row in text.splitlines() if row.startswith(wanted)]

    ours = samples(metrics.exposition().decode())
    assert len(ours) == len(LATENCY_BUCKETS) + 3  # the buckets, +Inf, count and sum
    assert ours == samples(generate_latest(registry).decode())

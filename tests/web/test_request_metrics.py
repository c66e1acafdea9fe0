"""Each request's report (server/web/metrics.py observe_request) lands in
its own series, by API, RPC and code, also once the series are cached."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ramraft import Application
from ramraft.server.inprocess import ClusterHarness
from ramraft.server.web.metrics import NodeMetrics
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

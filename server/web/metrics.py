"""A node's Prometheus metrics, and the recent request rates the status page shows.

Every node has its own :class:`CollectorRegistry` (never the process-global
one), so two nodes in one process -- tests, benchmarks -- never share or
clash over a metric. The metrics are fed by two kinds of hooks, neither of
which needs the runtime or the servicers to know about Prometheus:

- the runtime's ``listeners``: ``(event, fields)`` callbacks for "proposed",
  "fsync", "applied", "role", "snapshot" and "snapshot_installed";
- with an application: its background jobs' reports (server/jobs.py) and
  its event feed (web/sse.py), read at scrape time;
- the servicers' ``observers`` and the web tier's middleware:
  ``(rpc, code, seconds)`` for every request served.

Values that are state rather than events (term, commit and applied index,
member lag, whether this node leads) are read from the runtime's reports
(runtime/status.py RuntimeReports) at scrape time by a custom collector, so
they are never stale and cost nothing between scrapes. This module sees
nothing else of the node.

Metric names (all prefixed ``ramraft_``) are those :class:`NodeMetrics`
registers, each with its help text.
"""

from __future__ import annotations

import bisect
import collections
import functools
import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from ramraft._version import __version__
from ramraft.consensus import Role
from ramraft.server.jobs import JobReport
from ramraft.server.runtime.status import RuntimeReports
from ramraft.server.web.sse import EventFeed

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Latency buckets from 100 us (an in-memory read) to 10 s (a write that waits
# out an election).
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
FSYNC_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032,
    0.064, 0.128, 0.256, 0.512, 1.0,
)  # fmt: skip
SNAPSHOT_BYTES_BUCKETS = tuple(float(1 << n) for n in range(10, 36, 2))  # 1 KiB .. 32 GiB
SNAPSHOT_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# How late a held or starved event loop woke the ticker (only wake-ups a
# quarter of the election timeout late or more are observed).
LOOP_LATE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class RateWindow:
    """Events per second over the last ``seconds``, in one-second buckets,
    per name. Cheap to feed (one dict update), read when the page polls."""

    def __init__(self, seconds: int = 10, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self._buckets: collections.deque[tuple[int, collections.Counter[str]]] = collections.deque()

    def add(self, name: str, count: int = 1) -> None:
        now = int(self.clock())
        buckets = self._buckets
        if not buckets or buckets[-1][0] != now:
            buckets.append((now, collections.Counter()))
            while buckets and buckets[0][0] <= now - self.seconds - 1:
                buckets.popleft()
        buckets[-1][1][name] += count

    def rates(self) -> dict[str, float]:
        """Per name: events per second over the last complete seconds (the
        current, partial second is left out so a rate does not dip at each
        second's start)."""
        now = int(self.clock())
        total: collections.Counter[str] = collections.Counter()
        for second, counts in self._buckets:
            if now - self.seconds <= second < now:
                total.update(counts)
        return {name: count / self.seconds for name, count in sorted(total.items())}


class _StateCollector(Collector):
    """Gauges read from the runtime when Prometheus scrapes."""

    def __init__(self, reports: RuntimeReports, forwarded_writes: Callable[[], int]) -> None:
        self.reports = reports
        self.forwarded_writes = forwarded_writes

    def collect(self) -> Iterator[Metric]:
        status = self.reports.status()
        for name, help_text in (
            ("term", "Current Raft term"),
            ("commit_index", "Highest log index known to be committed"),
            ("applied_index", "Highest log index applied to the state machine"),
            ("last_index", "Last index in this node's log"),
            ("snapshot_index", "Index of the newest snapshot"),
            ("first_index", "First index still in the log (after compaction)"),
        ):
            gauge = GaugeMetricFamily(f"ramraft_{name}", help_text)
            gauge.add_metric([], float(getattr(status, name)))
            yield gauge
        leader = GaugeMetricFamily("ramraft_is_leader", "1 if this node is the leader, 0 otherwise")
        leader.add_metric([], 1.0 if status.leading else 0.0)
        yield leader
        known = GaugeMetricFamily("ramraft_leader_known", "1 if this node knows a leader")
        known.add_metric([], 1.0 if status.leader else 0.0)
        yield known
        ready = GaugeMetricFamily(
            "ramraft_ready", "1 when the node knows a leader and has applied its commit index"
        )
        ready.add_metric([], 1.0 if status.ready else 0.0)
        yield ready
        failed = GaugeMetricFamily(
            "ramraft_storage_failed",
            "1 if the node stopped after a storage failure (or its Raft loop crashed)",
        )
        failed.add_metric([], 1.0 if status.failed else 0.0)
        yield failed
        halted = GaugeMetricFamily(
            "ramraft_apply_halted",
            "1 if this node stopped applying the log at an entry its code cannot apply",
        )
        halted.add_metric([], 1.0 if status.halted else 0.0)
        yield halted
        divergence = GaugeMetricFamily(
            "ramraft_state_divergence",
            "1 while the divergence alarm is raised: a state check found nodes whose state "
            "differs from the majority's (the same on every node)",
        )
        divergence.add_metric([], 1.0 if status.diverged else 0.0)
        yield divergence
        versions = GaugeMetricFamily(
            "ramraft_app_version",
            "The application version the cluster runs (active) and this node's code supports",
            labels=["kind"],
        )
        versions.add_metric(["active"], float(status.app_version))
        versions.add_metric(["supported"], float(status.app_version_supported))
        yield versions
        if status.leading:
            lag = GaugeMetricFamily(
                "ramraft_member_lag_entries",
                "Entries a member is behind the leader's last index (reported by the leader)",
                labels=["member"],
            )
            for member in self.reports.members():
                lag.add_metric([member.id], float(member.lag))
            yield lag
        forwarded = CounterMetricFamily(
            "ramraft_forwarded_writes", "Writes this node forwarded to the leader"
        )
        forwarded.add_metric([], float(self.forwarded_writes()))
        yield forwarded


class _AppCollector(Collector):
    """The hosted application's background jobs (server/jobs.py) and live
    event streams (web/sse.py), read when Prometheus scrapes."""

    def __init__(
        self, jobs: Callable[[], list[JobReport]] | None, events: EventFeed | None
    ) -> None:
        self.jobs = jobs
        self.events = events

    def collect(self) -> Iterator[Metric]:
        if self.jobs is not None:
            reports = self.jobs()
            runs = CounterMetricFamily(
                "ramraft_job_runs", "Runs of a background job on this node", labels=["job_name"]
            )
            failures = CounterMetricFamily(
                "ramraft_job_failures",
                "Runs of a background job on this node that raised",
                labels=["job_name"],
            )
            running = GaugeMetricFamily(
                "ramraft_job_running",
                "1 while the job runs (or is scheduled) on this node: on the leader for a "
                "leader job",
                labels=["job_name", "on"],
            )
            last = GaugeMetricFamily(
                "ramraft_job_last_run_timestamp_seconds",
                "Unix time the job's last run on this node ended (0: never)",
                labels=["job_name"],
            )
            seconds = GaugeMetricFamily(
                "ramraft_job_last_run_seconds",
                "How long the job's last run on this node took",
                labels=["job_name"],
            )
            for r in reports:
                runs.add_metric([r.name], float(r.runs))
                failures.add_metric([r.name], float(r.failures))
                running.add_metric([r.name, r.on], 1.0 if r.running_here else 0.0)
                last.add_metric([r.name], r.last_finished)
                seconds.add_metric([r.name], r.last_seconds)
            yield from (runs, failures, running, last, seconds)
        if self.events is not None:
            streams = GaugeMetricFamily(
                "ramraft_event_streams", "Live event streams (SSE) open on this node"
            )
            streams.add_metric([], float(self.events.streams))
            published = CounterMetricFamily(
                "ramraft_events_published", "Events the application's commands published here"
            )
            published.add_metric([], float(self.events.published))
            dropped = CounterMetricFamily(
                "ramraft_event_streams_dropped",
                "Event streams closed because the client read too slowly (it resumes)",
            )
            dropped.add_metric([], float(self.events.dropped_streams))
            yield from (streams, published, dropped)


# The buckets' "le" labels, as prometheus_client's Histogram writes them.
_LATENCY_LE = tuple(
    floatToGoString(bound)  # type: ignore[no-untyped-call]
    for bound in (*LATENCY_BUCKETS, float("inf"))
)


class _Latency:
    """One (api, rpc)'s latency histogram: the count in each of
    LATENCY_BUCKETS' buckets (not cumulative; the last is +Inf) and the sum."""

    __slots__ = ("buckets", "created", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0
        self.created = time.time()


class _Series:
    """One (api, rpc, code): its count, its (api, rpc)'s histogram and its
    name in the rate window."""

    __slots__ = ("count", "created", "latency", "rate")

    def __init__(self, latency: _Latency, rate: str) -> None:
        self.count = 0
        self.created = time.time()
        self.latency = latency
        self.rate = rate


class _Requests(Collector):
    """``ramraft_requests`` and ``ramraft_request_seconds``, counted in plain
    numbers and turned into metric families when Prometheus scrapes. Every
    request served is reported, on the event loop's thread; prometheus_client's
    Counter.inc and Histogram.observe take a lock and check the metric's
    state on every call, which was 1.1 us of a report's 1.9 us (a
    serializable read costs the leader about 30 us in all). The series are
    bounded as their labels are (RPC names, routes, HTTP methods, codes)."""

    def __init__(self) -> None:
        self.series: dict[tuple[str, str, str], _Series] = {}
        self.latencies: dict[tuple[str, str], _Latency] = {}

    def add(self, api: str, rpc: str, code: str) -> _Series:
        latency = self.latencies.get((api, rpc))
        if latency is None:
            latency = self.latencies[api, rpc] = _Latency()
        series = self.series[api, rpc, code] = _Series(latency, f"{api} {rpc}")
        return series

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "ramraft_requests",
            "Requests served, by API (grpc/http), RPC or route, and result code",
            labels=["api", "rpc", "code"],
        )
        for (api, rpc, code), series in list(self.series.items()):
            requests.add_metric([api, rpc, code], series.count, created=series.created)
        yield requests
        seconds = HistogramMetricFamily(
            "ramraft_request_seconds",
            "Request latency by API and RPC or route",
            labels=["api", "rpc"],
        )
        for (api, rpc), latency in list(self.latencies.items()):
            cumulative = itertools.accumulate(latency.buckets)
            buckets = list(zip(_LATENCY_LE, cumulative, strict=True))
            seconds.add_metric([api, rpc], buckets, latency.sum)
            seconds.samples.append(
                Sample(
                    "ramraft_request_seconds_created",
                    {"api": api, "rpc": rpc},
                    latency.created,
                )
            )
        yield seconds


class NodeMetrics:
    """The metrics of one node. ``runtime_listener`` goes into
    ``runtime.listeners``; ``observer("grpc")`` into a servicer's
    ``observers``; the web tier calls ``observe_request`` itself.
    ``forwarded_writes`` counts the writes this node forwarded to the leader."""

    def __init__(
        self,
        reports: RuntimeReports,
        forwarded_writes: Callable[[], int],
        *,
        process: bool = True,
        jobs: Callable[[], list[JobReport]] | None = None,
        events: EventFeed | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.build_info = Gauge(
            "ramraft_build_info",
            "Always 1; the version label is this node's ramraft version",
            ["version"],
            registry=reg,
        )
        self.build_info.labels(__version__).set(1)
        self.proposals = Counter(
            "ramraft_proposals", "Commands this node proposed as leader", registry=reg
        )
        self.proposals_dropped = Counter(
            "ramraft_proposals_dropped",
            "Proposals refused by the Raft core (not the leader, transfer in progress)",
            registry=reg,
        )
        self.applied = Counter(
            "ramraft_applied_entries",
            "Committed entries with a command applied to the state machine",
            registry=reg,
        )
        self.fsync_seconds = Histogram(
            "ramraft_fsync_seconds",
            "Time to persist one Ready (WAL append + fsync)",
            buckets=FSYNC_BUCKETS,
            registry=reg,
        )
        self.persisted_entries = Counter(
            "ramraft_persisted_entries", "Log entries written to the WAL", registry=reg
        )
        self.elections = Counter(
            "ramraft_elections",
            "Elections this node started (became candidate or pre-candidate)",
            ["kind"],
            registry=reg,
        )
        for kind in ("pre-candidate", "candidate"):
            self.elections.labels(kind)  # exported as 0 before the first election
        self.became_leader = Counter(
            "ramraft_became_leader", "Times this node won an election", registry=reg
        )
        self.leader_changes = Counter(
            "ramraft_leader_changes",
            "Times this node learned of a new leader (a new term or another node)",
            registry=reg,
        )
        self.snapshot_bytes = Histogram(
            "ramraft_snapshot_bytes",
            "Size of snapshots this node took",
            buckets=SNAPSHOT_BYTES_BUCKETS,
            registry=reg,
        )
        self.snapshot_seconds = Histogram(
            "ramraft_snapshot_seconds",
            "Time to take a snapshot (write, sync, compact the log)",
            buckets=SNAPSHOT_SECONDS_BUCKETS,
            registry=reg,
        )
        self.snapshots_installed = Counter(
            "ramraft_snapshots_installed",
            "Snapshots received from the leader and installed",
            registry=reg,
        )
        self.loop_late = Histogram(
            "ramraft_event_loop_late_seconds",
            "How late the node's event loop woke its Raft ticker, for wake-ups a quarter of "
            "the election timeout late or more: a loop held by a long callback or starved of "
            "CPU, which past the election timeout costs a leader its leadership",
            buckets=LOOP_LATE_BUCKETS,
            registry=reg,
        )
        self._requests = _Requests()
        reg.register(self._requests)
        reg.register(_StateCollector(reports, forwarded_writes))
        if jobs is not None or events is not None:
            reg.register(_AppCollector(jobs, events))
        if process:
            ProcessCollector(registry=reg)
        self.rates = RateWindow()
        self._last_leader: tuple[int, str] = (0, "")

    # ---- hooks ------------------------------------------------------------------------------

    def runtime_listener(self, event: str, fields: dict[str, Any]) -> None:
        if event == "applied":  # once per batch of applied entries
            count = int(fields.get("entries", 1))
            self.applied.inc(count)
            self.rates.add("applied", count)
        elif event == "fsync":
            self.fsync_seconds.observe(fields["seconds"])
            self.persisted_entries.inc(fields.get("entries", 0))
        elif event == "proposed":
            count = int(fields.get("entries", 1))
            self.proposals.inc(count)
            self.rates.add("proposed", count)
        elif event == "proposals_dropped":
            self.proposals_dropped.inc(int(fields.get("entries", 1)))
        elif event == "role":
            self._on_role(fields)
        elif event == "snapshot":
            self.snapshot_bytes.observe(fields["bytes"])
            self.snapshot_seconds.observe(fields["seconds"])
        elif event == "snapshot_installed":
            self.snapshots_installed.inc()
        elif event == "loop_late":
            self.loop_late.observe(fields["seconds"])

    def _on_role(self, fields: dict[str, Any]) -> None:
        role = fields.get("role")
        if role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self.elections.labels(role.value).inc()
        elif role is Role.LEADER:
            self.became_leader.inc()
        leader = (int(fields.get("term", 0)), str(fields.get("leader", "")))
        if leader[1] and leader != self._last_leader:
            self.leader_changes.inc()
            self._last_leader = leader

    def observer(self, api: str) -> Callable[[str, str, float], None]:
        return functools.partial(self.observe_request, api)

    def observe_request(self, api: str, rpc: str, code: str, seconds: float) -> None:
        series = self._requests.series.get((api, rpc, code))
        if series is None:
            series = self._requests.add(api, rpc, code)
        series.count += 1
        latency = series.latency
        # Bucket "le" counts values up to and including its bound.
        latency.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        latency.sum += seconds
        self.rates.add(series.rate)

    # ---- output -----------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)

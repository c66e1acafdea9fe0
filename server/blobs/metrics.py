"""The node's blob gauges on /metrics, read when Prometheus scrapes:

- ``ramraft_blobs``, ``ramraft_blob_bytes``: the blobs the cluster holds (the
  replicated catalog, as this node has applied it) and their total size;
- ``ramraft_blobs_missing``: of those, how many this node lacks (it fetches
  them in the background: a value that stays up means no peer can send one);
- ``ramraft_blob_disk_free_bytes``: free space on the blob directory's file
  system (blobs are refused below ``--blob-reserve-bytes``);
- ``ramraft_blobs_fetched_total``, ``ramraft_blobs_deleted_total``: files
  this node copied from a peer, and removed (collected or deleted).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ramraft.server.blobs.manager import NodeBlobs


class BlobCollector(Collector):
    def __init__(self, blobs: NodeBlobs) -> None:
        self.blobs = blobs

    def collect(self) -> Iterator[Metric]:
        blobs = self.blobs
        for name, help_text, value in (
            ("ramraft_blobs", "Blobs in the cluster's catalog", len(blobs.catalog)),
            ("ramraft_blob_bytes", "Total size of those blobs", blobs.catalog.total_bytes()),
            ("ramraft_blobs_missing", "Blobs this node lacks (fetching)", len(blobs.missing)),
            (
                "ramraft_blob_disk_free_bytes",
                "Free space where this node keeps blobs",
                blobs.store.free_bytes(),
            ),
        ):
            gauge = GaugeMetricFamily(name, help_text)
            gauge.add_metric([], float(value))
            yield gauge
        for name, help_text, count in (
            ("ramraft_blobs_fetched", "Blobs copied from a peer", blobs.fetched),
            ("ramraft_blobs_deleted", "Blob files removed by the log", blobs.collected),
        ):
            counter = CounterMetricFamily(name, help_text)
            counter.add_metric([], float(count))
            yield counter

"""A digest of a node's whole state-machine state, for comparing nodes.

Nodes that applied the same log must hold the same state; a command that is
accidentally non-deterministic (a clock, randomness, set iteration order, a
float path) or a bug breaks that silently, and reads from different nodes then
disagree for ever. So at agreed indexes (state-check entries in the log, see
runtime/checks.py) every node digests its state and the leader compares.

The digest is SHA-256 over the cluster record's compared fields (canonical
JSON) followed by the snapshot stream of the state machine: snapshot bytes are
canonical (the same state gives the same bytes on every node: keys sorted,
frames cut by content, sets in a canonical order, session tables in their
replicated order), and they cover everything a node holds (key-value data,
every hosted model, the exactly-once session tables). Nothing in it depends on
a process's hash seed or on when the bytes were written.

Cost: taking the view is the same as for a snapshot (a copy of the session
table for the key-value machine; encoding the model's state for a hosted
model, on the loop); hashing runs in a worker thread that yields to the loop
between chunks. ``bench/bench_backup.py`` measures it (1M keys).
"""

from __future__ import annotations

import hashlib
import json

from ramraft.server.machines.cluster import ClusterState
from ramraft.server.machines.statemachine import SnapshotJob

__all__ = ["HashingSink", "digest_job"]


class HashingSink:
    """A write-only stream that hashes what is written and keeps nothing."""

    __slots__ = ("_hash", "bytes_written")

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.bytes_written = 0

    def write(self, data: bytes, /) -> int:
        self._hash.update(data)
        self.bytes_written += len(data)
        return len(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def digest_job(job: SnapshotJob, cluster: ClusterState) -> str:
    """The hex digest of the state ``job`` holds (a view taken on the loop);
    call it in a worker thread. Writes (and so closes) the job."""
    sink = HashingSink()
    sink.write(json.dumps(cluster.digest_fields(), sort_keys=True).encode())
    job.write_to(sink)
    return sink.hexdigest()

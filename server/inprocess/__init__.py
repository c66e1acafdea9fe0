"""A whole cluster inside one process, for application tests.

``cluster.py`` assembles every node as ``node.py`` does -- runtime, state
machines, request path, steward, background jobs, event feed -- but over
``network.py`` (messages, snapshots, forwarded writes and ``Peer.Info``
between runtimes, with partitions and seeded faults) and in-memory storage,
with no port and no file. ``clock.py`` is the virtual-time event loop that
makes a run deterministic for its seed. ``ramraft.testing`` is the pytest
plugin that hands it out.
"""

from ramraft.server.inprocess.cluster import (
    ClusterHarness,
    InProcessCluster,
    InProcessNode,
    Timing,
)
from ramraft.server.inprocess.network import Faults, MemoryNetwork

__all__ = [
    "ClusterHarness",
    "Faults",
    "InProcessCluster",
    "InProcessNode",
    "MemoryNetwork",
    "Timing",
]

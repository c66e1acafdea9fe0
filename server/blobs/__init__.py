"""Blobs: files kept beside the replicated state, outside the Raft log.

``store.py`` is one node's files (durable writes, the disk-space guard);
``manager.py`` (:class:`NodeBlobs`, what applications reach as
``ctx.blobs``) puts a blob on a majority of the voters and records it in the
catalog, fetches what a node lacks from its peers, and has the leader
propose collections. The catalog itself -- which blobs exist, replicated
through the log -- is a state machine: server/machines/blobs.py.
"""

from ramraft.server.machines.blobs import BlobRef, parse_sha256

__all__ = ["BlobRef", "parse_sha256"]

"""The runtime: one asyncio task owns the Raft core (``loop.py``), drives it
with ticks, proposals, reads and peer messages, persists what its Ready asks
for, sends, applies, and resolves the waiting futures; it reports its state
as the typed values of ``status.py``. Beside it, each acting through the
loop: the peer addresses and identity policy (``peers.py``), snapshot
scheduling and restoring (``snapshotting.py``), membership changes and
leadership transfer (``membership.py``), the peer transport
(``transport.py``, one gRPC stream per peer and chunked snapshots), the
conversion of core messages to and from protobuf (``wire.py``), and the
request path every front door uses (``node_api.py``: deadlines, forwarding
writes to the leader, linearizable read points).

No gRPC servicer, HTTP handler or state-machine code belongs here.
"""

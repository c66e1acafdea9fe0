"""The gRPC services clients call (``ramraft.v1.KV`` and ``ramraft.v1.Admin``).

Servicers decode a request, call the node's request path
(``runtime/node_api.py``) and encode the answer; they hold no Raft rules.
The peer service lives with the transport in ``runtime/``.
"""

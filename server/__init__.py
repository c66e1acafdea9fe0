"""ramraft.server: one node process, and nothing else.

- ``node.py`` assembles a node (storage, runtime, gRPC servers, web tier) and
  shuts it down gracefully; ``config.py`` is its settings; ``hosting.py``
  binds an application's model to the node; ``jobs.py`` runs its background
  jobs (on the leader, or on every node); ``logs.py`` its structured logs;
  ``request_errors.py`` the errors a request can end with and the one table
  of what each becomes on the wire (gRPC code, HTTP status).
- ``runtime/``: the one task that owns the Raft core, the peer transport, the
  wire format of peer messages, and the in-process request path (NodeAPI).
- ``machines/``: the state machines the log is applied to (key-value, the
  embedding API for application models, the composite of both) and the
  exactly-once session table.
- ``rpc/``: the gRPC services clients call (KV, Admin).
- ``web/``: the HTTP tier on the same event loop (JSON API, status page,
  /metrics).
- ``security/``: tokens, roles, in-flight limits and TLS.
- ``storage/``: the write-ahead log and snapshot files.
- ``blobs/``: blob files beside the state (outside the log): each node's
  store, replication to a majority, fetching from peers, the Blobs service.
- ``inprocess/``: a whole cluster inside one process (memory network and
  storage, virtual time) for application tests (``ramraft.testing``).

Arrows point inwards: server imports ``ramraft.consensus`` and
``ramraft.proto``, never ``ramraft.client`` or ``ramraft.tools``.
"""

"""State machines: what the committed log is applied to.

``statemachine.py`` is the protocol (apply, snapshot, restore) and the
composite that routes entries by tag; ``kv.py`` the built-in key-value
machine; ``embed.py`` the embedding API for application models
(``ReplicatedModel``, ``@command``); ``sessions.py`` the exactly-once client
table they share; ``cluster.py`` the cluster's own record (versions, id,
state checks) and ``blobs.py`` the blob catalog it carries. Everything here
is deterministic: no clock, no randomness, no I/O while applying.
"""

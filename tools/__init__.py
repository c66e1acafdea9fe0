"""ramraft.tools: what runs around a node, not inside it.

The ``ramraft`` command line (cli.py for the client commands, node_cli.py for
``node``, local_cluster.py for ``cluster``), the benchmark driver (bench.py), the chaos lab's
workload and nemesis (chaos.py), the history recorder and linearizability
checker (history.py, linearizability.py), and the generators of certificates
(certs.py) and token files (tokens.py).

Tools may import ``ramraft.client`` and ``ramraft.server``; nothing in those
imports ``ramraft.tools``.
"""

import os

# grpc's C core writes its own lines to stderr, outside Python's logging (a
# line per failed handshake or idle GOAWAY, at INFO): the command line, and
# so `ramraft node`, keeps it to errors unless GRPC_VERBOSITY says otherwise.
# The core reads the variable once, when grpc is imported: this package's
# __init__ runs before cli.py imports grpc.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

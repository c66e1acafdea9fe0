"""ramraft.tools: what runs around a node, not inside it.

The ``ramraft`` command line (cli.py for the client commands, node_cli.py for
``node``, local_cluster.py for ``cluster``), the benchmark driver (bench.py), the chaos lab's
workload and nemesis (chaos.py), the history recorder and linearizability
checker (history.py, linearizability.py), and the generators of certificates
(certs.py) and token files (tokens.py).

Tools may import ``ramraft.client`` and ``ramraft.server``; nothing in those
imports ``ramraft.tools``.
"""

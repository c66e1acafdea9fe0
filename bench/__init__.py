"""Benchmarks, run as ``python -m bench.NAME`` (README: Benchmarks)."""

import os

# As ramraft.tools does for the command line: grpc's C core writes lines of
# its own to stderr at INFO (an idle connection's GOAWAY), which would mix
# with a benchmark's output; it reads the variable when grpc is imported,
# which a benchmark module may do before importing ramraft.tools.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

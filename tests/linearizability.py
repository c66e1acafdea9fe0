"""The linearizability checker lives in the package, tools/linearizability.py,
because `ramraft chaos` (in the image, run by k8s/chaos.sh) uses it. This
module keeps the import path the tests use."""

from ramraft.tools.linearizability import (
    KINDS,
    CheckResult,
    CheckTimeoutError,
    Operation,
    _linearizable,
    cas,
    check,
    delete,
    get,
    put,
    step,
)

__all__ = [
    "KINDS",
    "CheckResult",
    "CheckTimeoutError",
    "Operation",
    "_linearizable",
    "cas",
    "check",
    "delete",
    "get",
    "put",
    "step",
]

"""ramraft: a replicated state-machine service in Python.

The public API, importable from here::

    from ramraft import Client, AsyncClient                      # gRPC clients
    from ramraft import ReplicatedModel, command, Application    # your own objects
    from ramraft import BlobRef                                   # files beside them (blobs)
    from ramraft import background, JobContext                   # their background jobs

Everything else lives in the sub-packages, each with a docstring saying what
belongs there: ``ramraft.client`` (the client library), ``ramraft.server``
(the node), ``ramraft.consensus`` (the sans-I/O Raft core), ``ramraft.proto``
(the gRPC API and its ``.proto`` files) and ``ramraft.tools`` (the command
line, benchmarks, chaos lab and checkers).

The names are loaded on first use, so ``from ramraft import Client`` does not
import the node (aiohttp, prometheus) into a client program.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ramraft._version import __version__
    from ramraft.client import AsyncClient, Client
    from ramraft.server.hosting import Application
    from ramraft.server.jobs import JobContext, background
    from ramraft.server.machines.blobs import BlobRef
    from ramraft.server.machines.embed import ReplicatedModel, command

__all__ = [
    "Application",
    "AsyncClient",
    "BlobRef",
    "Client",
    "JobContext",
    "ReplicatedModel",
    "__version__",
    "background",
    "command",
]

# __version__ too: reading the installed metadata imports importlib.metadata
# (about 55 ms), which the `ramraft` command's entry would otherwise spend
# before it can turn Ctrl-C into one line (ramraft/__main__.py).
_LAZY = {
    "__version__": "ramraft._version",
    "Client": "ramraft.client",
    "AsyncClient": "ramraft.client",
    "ReplicatedModel": "ramraft.server.machines.embed",
    "command": "ramraft.server.machines.embed",
    "Application": "ramraft.server.hosting",
    "BlobRef": "ramraft.server.machines.blobs",
    "background": "ramraft.server.jobs",
    "JobContext": "ramraft.server.jobs",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ramraft' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

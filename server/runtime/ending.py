"""The streams held open to a node, each known by how to end it, so that a
stopping node ends them all at once (``Node.end_streams``) instead of
waiting out the gRPC servers' grace for them: the peers' Stream and
ForwardStream calls (runtime/transport.py ``PeerServicer``) and the
clients' request streams and lease keep-alives (rpc/ending.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


class StreamsEnding:
    """Open streams of one kind, each known by how to end it."""

    def __init__(self) -> None:
        self.ended = False
        self._hooks: set[Callable[[], object]] = set()

    @contextlib.contextmanager
    def track(self, end: Callable[[], object]) -> Iterator[None]:
        """While the body runs, ``end_all`` calls ``end`` (at once, if the
        node is ending already)."""
        if self.ended:
            end()
        self._hooks.add(end)
        try:
            yield
        finally:
            self._hooks.discard(end)

    def end_all(self) -> int:
        """End every stream tracked now or later (the node is stopping);
        returns how many were open."""
        self.ended = True
        hooks = list(self._hooks)
        for end in hooks:
            end()
        return len(hooks)

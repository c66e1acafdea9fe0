"""How a stopping node ends its clients' long-lived streams (the
bookkeeping is runtime/ending.py ``StreamsEnding``, which the peers'
streams use too).

A client keeps its ``KV.StreamBatch`` (every request of the client library
goes over it) and its lease keep-alives open for as long as it runs. At a
node's graceful stop the gRPC server waits its grace for such calls and
then aborts them, so every stop took the whole grace (0.5 s) as soon as
one client was connected, and the client heard of it only then.

``Node.stop`` calls ``end_all`` once the node no longer takes requests
(``runtime.stopping``): each stream reads nothing more, answers what it
read, and ends UNAVAILABLE, which every client takes as "ask another
node": the requests it has no answer for are retried there (with their
sessions), a keep-alive goes on with the next leader. A stream opened
after that is refused at once, the same way. Watches, over gRPC and HTTP,
are ended by their hub (rpc/watch.py ``WatchHub.shut_down``): each sends
what it has and ends, and the watcher resumes after the last revision it
got.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

T = TypeVar("T")

SHUTTING_DOWN = "this node is shutting down; ask another node"


async def until_set(items: AsyncIterator[T], stop: asyncio.Event) -> AsyncIterator[T]:
    """``items`` until they end or ``stop`` is set, whichever comes first;
    an item that arrives together with ``stop`` is still given."""
    iterator = aiter(items)

    async def following() -> T:
        return await anext(iterator)

    stopped = asyncio.ensure_future(stop.wait())
    item: asyncio.Future[T] | None = None
    try:
        while True:
            item = asyncio.ensure_future(following())
            await asyncio.wait((item, stopped), return_when=asyncio.FIRST_COMPLETED)
            if not item.done():
                return
            try:
                value = item.result()
            except StopAsyncIteration:  # the client is done sending
                return
            yield value
    finally:
        stopped.cancel()
        # Also when the reader is cancelled in the wait (the client went
        # away): a read left running would end with the stream's end and
        # asyncio would log it as an error ("never retrieved").
        if item is not None:
            item.cancel()
            if item.done() and not item.cancelled():
                item.exception()

"""The node-wide memory budget for requests and responses in flight.

Every client call (gRPC or HTTP) reserves bytes here before its request
message is read, and keeps them until its answer has been handed to the
connection (for a unary gRPC call: until the call has ended, i.e. the
client took the response; for a KV.Stream request: until its response
was written to the stream; for HTTP: until the response body was written,
which waits while the client does not read):

- before reading, the most the request can take: ``MESSAGE_COPIES`` times
  the largest message the port accepts (the bytes the gRPC core received,
  the Python bytes, the decoded protobuf); once read, that shrinks to
  ``MESSAGE_COPIES`` times the message's real size;
- a Range reserves its page (``MESSAGE_COPIES`` times --max-range-bytes)
  before it builds it, and shrinks that to the page's real size.

A call that cannot reserve what it needs within its delivery deadline is
refused with RESOURCE_EXHAUSTED (HTTP 429) without its message being read.
A ``KV.Stream`` waits instead (its client sees a slow stream, not errors):
it reads its next request only once the bytes are reserved, and only while
its own requests and unwritten responses hold less than a share of the
budget, so one stream whose client does not read its answers stops being
read, and HTTP/2 flow control pushes back on that client alone.

Waiters are served first come, first served, within ``total - reserve``.
The reserve (1/8 of the budget) is for light callers, connections (or
KV.Streams) with at most a couple of requests in flight (security/auth.py
InflightLimiter.LIGHT): they take from it, past the heavy waiters (light
waiters have a queue of their own, served first), so that a client sending
one request at a time is served while heavy ones fill the rest -- even
when the heavy ones hold their answers unread until their deadlines. A
light call keeps that right, after its request is read, for small answers
only (``Reservation.light_answer``): a page is never taken from the reserve.
Used from the event loop only.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque

from ramraft.server.request_errors import Overloaded

# The copies of a message a node holds while it handles it (see above).
MESSAGE_COPIES = 3


class MemoryBudget:
    """``total`` bytes; ``take`` and ``try_take`` reserve, ``give`` returns."""

    def __init__(self, total: int, reserve: int | None = None) -> None:
        self.total = total
        self.reserve = total // 8 if reserve is None else reserve
        self.used = 0
        self.peak = 0
        self.refused = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._light_waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def available(self) -> int:
        return self.total - self.used

    def try_take(self, n: int, light: bool = False) -> bool:
        """Reserve ``n`` bytes now if they are free (for a light caller:
        also from the reserve, whoever waits) and nobody waits."""
        if light:
            if self._light_waiters or n > self.total - self.used:
                return False
        elif self._waiters or self._light_waiters or n > self.total - self.reserve - self.used:
            return False
        self._take(n)
        return True

    async def take(self, n: int, timeout: float | None, light: bool = False) -> bool:
        """Reserve ``n`` bytes, waiting at most ``timeout`` seconds (None:
        as long as it takes) behind earlier waiters; False if they did not
        come free in time (nothing is then reserved)."""
        n = min(n, self.total - self.reserve)  # larger: waits for all there is
        if self.try_take(n, light):
            return True
        if timeout is not None and timeout <= 0:
            self.refused += 1
            return False
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = (n, future)
        queue = self._light_waiters if light else self._waiters
        queue.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            if future.done() and not future.cancelled():
                return True  # granted just as the time ran out: it is ours
            if waiter in queue:  # _grant drops cancelled waiters itself
                queue.remove(waiter)
            self.refused += 1
            self._grant()  # those behind may fit now
            return False
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.give(n)
            elif waiter in queue:
                queue.remove(waiter)
                self._grant()
            raise
        return True

    def give(self, n: int) -> None:
        self.used -= n
        assert self.used >= 0, "gave back more than was taken"
        self._grant()

    def _take(self, n: int) -> None:
        self.used += n
        self.peak = max(self.peak, self.used)

    def _grant(self) -> None:
        # Light waiters first, from all of the budget; then heavy ones,
        # from all but the reserve (they never eat into it).
        for queue, keep in ((self._light_waiters, 0), (self._waiters, self.reserve)):
            while queue:
                n, future = queue[0]
                if future.done():  # cancelled: its owner removes it, skip it here
                    queue.popleft()
                    continue
                if n > self.total - keep - self.used:
                    break
                queue.popleft()
                self._take(n)
                future.set_result(None)


class Reservation:
    """The bytes one call holds; ``release`` returns all of them (once)."""

    __slots__ = ("budget", "held", "light", "read", "released")

    def __init__(self, budget: MemoryBudget, light: bool = False) -> None:
        self.budget = budget
        self.light = light  # the caller may use the budget's reserve
        self.read = False
        self.held = 0
        self.released = False

    @property
    def light_answer(self) -> int:
        """The largest answer a light call may still take from the reserve
        once its request is read: small ones (a Get's value, a header), never
        a page's worth."""
        return self.budget.reserve // 16

    def read_done(self) -> None:
        """The request is read: what the call takes from now on (a page, a
        value) comes from the shared part, not from the light callers'
        reserve (which is for reading requests), unless it is small."""
        self.read = True

    async def grow(self, n: int, timeout: float | None) -> bool:
        light = self.light and (not self.read or n <= self.light_answer)
        if self.released or not await self.budget.take(n, timeout, light):
            return False
        self.held += n
        return True

    def shrink(self, n: int) -> None:
        """Give back ``n`` of the bytes held (what a read or a page did not need)."""
        n = max(0, min(n, self.held))
        if n and not self.released:
            self.held -= n
            self.budget.give(n)

    def release(self) -> None:
        if not self.released:
            self.released = True
            if self.held:
                self.budget.give(self.held)
                self.held = 0


# The reservation of the call being served, for handlers that need more of
# the budget than the request took (a Range's page). None: no budget (a
# servicer called directly, as unit tests do).
CALL_RESERVATION: contextvars.ContextVar[Reservation | None] = contextvars.ContextVar(
    "ramraft_call_reservation", default=None
)


class _PageBudget:
    """A Range page's share of the memory budget (see ``page_budget``)."""

    def __init__(self, reservation: Reservation | None, page_bytes: int) -> None:
        self.reservation = reservation
        self.page_bytes = page_bytes
        self.taken = MESSAGE_COPIES * page_bytes if reservation is not None else 0

    def used(self, page_bytes: int) -> None:
        """Give back what the page did not need."""
        if self.reservation is not None:
            keep = MESSAGE_COPIES * page_bytes
            self.reservation.shrink(self.taken - keep)
            self.taken = keep


# An answer up to this size (a Get's value) is covered by what its request
# reserved already; a bigger one reserves its size first (reserve_answer).
SMALL_ANSWER = 64 << 10


async def reserve_answer(size: int, timeout: float) -> None:
    """Reserve an answer of ``size`` bytes known before it is built (a Get's
    value) in the calling request's budget; Overloaded if it has no room."""
    reservation = CALL_RESERVATION.get()
    if reservation is not None and not await reservation.grow(MESSAGE_COPIES * size, timeout):
        raise Overloaded(
            f"this node's memory budget for responses in flight ({reservation.budget.total} "
            "bytes) is in use; retry later"
        )


class page_budget:
    """Reserve a Range page of up to ``page_bytes`` in the calling request's
    budget (CALL_RESERVATION), waiting at most ``timeout``; Overloaded when
    the node's budget has no room. Without a reservation (no gatekeeper)
    the page is only capped. The bytes stay reserved with the call until
    its response is written."""

    def __init__(self, page_bytes: int, timeout: float) -> None:
        self.page_bytes = page_bytes
        self.timeout = timeout

    async def __aenter__(self) -> _PageBudget:
        reservation = CALL_RESERVATION.get()
        if reservation is not None and not await reservation.grow(
            MESSAGE_COPIES * self.page_bytes, self.timeout
        ):
            raise Overloaded(
                f"this node's memory budget for responses in flight ({reservation.budget.total} "
                "bytes) is in use; retry later, or ask for smaller pages"
            )
        return _PageBudget(reservation, self.page_bytes)

    async def __aexit__(self, *exc: object) -> None:
        return None

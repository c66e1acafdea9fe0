"""Virtual time for an in-process cluster: an event loop that never waits.

:class:`VirtualTimeLoop` is an asyncio loop whose clock is a number: when
nothing is ready to run, it jumps the clock to the next timer instead of
sleeping (as trio's autojump clock and TigerBeetle's simulator do). A
cluster on it runs its election timeouts, heartbeats and background jobs at
the speed of the CPU, and -- with no threads (:class:`InlineExecutor` runs
"disk" and "worker thread" jobs at once, on the loop), seeded randomness
and no real I/O -- the same way every time for the same seed.

While the loop runs, ``time.monotonic()`` and ``time.time()`` read the
virtual clock (:func:`virtual_time`), so code that measures deadlines with
them (the runtime, the request path, background jobs) agrees with the loop;
the wall clock starts at the real time the loop was made.

The loop still polls real file descriptors without blocking (its own wake-up
pipe), so nothing that works on a normal loop breaks here; but real network
I/O would never be waited for, which is why the in-process cluster has none.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class Deadlock(RuntimeError):
    """Nothing is ready and no timer is set: what the caller awaits can
    never happen."""


class VirtualClock:
    def __init__(self, wall_start: float | None = None) -> None:
        self.monotonic = 0.0
        self.wall_start = time.time() if wall_start is None else wall_start
        self.wall_offset = 0.0  # steps of the wall clock alone (travel)

    def wall(self) -> float:
        return self.wall_start + self.wall_offset + self.monotonic

    def travel(self, seconds: float) -> None:
        """Step the wall clock (``time.time()``) alone, as NTP may: timers,
        timeouts and ``time.monotonic()`` do not move."""
        self.wall_offset += seconds

    def advance(self, seconds: float) -> None:
        if seconds > 0:
            self.monotonic += seconds


class _JumpingSelector(selectors.SelectSelector):
    """Polls the real descriptors without waiting; a wait becomes a jump of
    the virtual clock."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self.clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise Deadlock(
                "the in-process cluster has nothing left to run: what the test awaits can "
                "never happen"
            )
        self.clock.advance(timeout)
        return []


class InlineExecutor(ThreadPoolExecutor):
    """Runs each job at once, in the caller's thread (asyncio requires the
    default executor to be a ThreadPoolExecutor; this one starts no thread)."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as e:
            future.set_exception(e)
        return future


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self, clock: VirtualClock | None = None) -> None:
        self.clock = clock if clock is not None else VirtualClock()
        super().__init__(_JumpingSelector(self.clock))
        self.set_default_executor(InlineExecutor())

    def time(self) -> float:
        return self.clock.monotonic


@contextlib.contextmanager
def virtual_time(clock: VirtualClock) -> Iterator[None]:
    """``time.monotonic()`` and ``time.time()`` read ``clock`` inside."""
    monotonic, wall = time.monotonic, time.time
    time.monotonic = lambda: clock.monotonic
    time.time = clock.wall
    try:
        yield
    finally:
        time.monotonic, time.time = monotonic, wall

"""The node-wide memory budget (server/security/budget.py): heavy callers
never take the light callers' reserve, light waiters are served before heavy
ones, and a light call keeps the reserve for small answers only."""

from __future__ import annotations

import asyncio

from ramraft.server.security.budget import MemoryBudget, Reservation

MIB = 1 << 20


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_heavy_callers_leave_the_reserve_alone() -> None:
    budget = MemoryBudget(8 * MIB)  # reserve: 1 MiB
    assert budget.reserve == MIB
    assert budget.try_take(7 * MIB)
    assert not budget.try_take(1)  # the last MiB is the reserve
    assert budget.try_take(MIB, light=True)
    assert budget.used == budget.total


def test_a_light_waiter_is_served_before_the_heavy_ones_queued_ahead_of_it() -> None:
    async def main() -> None:
        budget = MemoryBudget(8 * MIB)
        assert budget.try_take(8 * MIB, light=True)  # all of it, for now
        heavy = asyncio.create_task(budget.take(4 * MIB, timeout=None))
        await asyncio.sleep(0)
        light = asyncio.create_task(budget.take(MIB, timeout=None, light=True))
        await asyncio.sleep(0)
        assert not heavy.done() and not light.done()
        budget.give(MIB)  # room for the light waiter only
        await asyncio.sleep(0)
        assert light.done() and light.result() is True
        assert not heavy.done()
        budget.give(4 * MIB)  # 4 MiB free, but 1 of it is the reserve
        await asyncio.sleep(0)
        assert not heavy.done()
        budget.give(MIB)
        await asyncio.sleep(0)
        assert heavy.done() and heavy.result() is True
        # what is left of the first take, then both waiters
        assert budget.used == (8 - 6) * MIB + MIB + 4 * MIB

    run(main())


def test_a_waiter_that_times_out_takes_nothing_and_lets_the_next_in() -> None:
    async def main() -> None:
        budget = MemoryBudget(8 * MIB)
        assert budget.try_take(7 * MIB)
        assert not await budget.take(2 * MIB, timeout=0.01)
        assert budget.used == 7 * MIB and budget.refused == 1
        assert not await budget.take(2 * MIB, timeout=0.01, light=True)
        assert budget.used == 7 * MIB and budget.refused == 2

    run(main())


def test_a_light_call_keeps_the_reserve_for_small_answers_only() -> None:
    async def main() -> None:
        budget = MemoryBudget(16 * MIB)  # reserve 2 MiB; a small answer: up to 128 KiB
        assert budget.try_take(14 * MIB)  # the shared part is full
        call = Reservation(budget, light=True)
        assert await call.grow(MIB, timeout=0)  # reading its request: from the reserve
        call.shrink(MIB - 100)
        call.read_done()
        assert await call.grow(call.light_answer, timeout=0)  # a small answer
        assert not await call.grow(MIB, timeout=0)  # a page: not from the reserve
        heavy = Reservation(budget)
        assert not await heavy.grow(100, timeout=0)
        call.release()
        assert budget.used == 14 * MIB

    run(main())

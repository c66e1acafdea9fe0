"""The leader's lease clock: when each lease expires, and the revokes that
expire them.

Leases are replicated state (machines/kv.py: id, ttl, renewal epoch, keys);
the time left is not. Only the leader counts it, here, with its monotonic
clock, and expiry reaches the state through the log as a revoke that names
the epoch the leader saw (``encode_lease_revoke(id, epoch)``): applied on
every node at the same index, with no clock read during apply. A renewal
(keep-alive, ``encode_lease_renew``) bumps the epoch, so a revoke decided
before a renewal that commits first is void.

The rules that keep a lease from expiring early:

- A node that becomes leader first confirms its leadership and applies
  everything before its term (a linearizable read), so any revoke an earlier
  leader left in the log is applied before it counts anything; then it
  restarts EVERY lease at its full ttl plus an election timeout (the time the
  old leader may still have believed it led). A lease thus never expires
  early because of a failover; it may live up to ttl + an election timeout
  longer.
- A grant or renewal applied while leading restarts the lease's clock at the
  moment of the apply: after the client sent it, so the lease lives at least
  ttl from the client's send.
- A keep-alive is answered only once its renewal is applied (committed by a
  leader that held a quorum).

Revokes of expired leases go out at most ``MAX_EXPIRIES`` per round, one
round every ``interval`` seconds; each revoke deletes at most MAX_LEASE_KEYS
keys in its apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import structlog

from ramraft.consensus import Role
from ramraft.server.machines.kv import KVMachine, encode_lease_revoke
from ramraft.server.machines.kvops import LeaseRevokeResult

log = structlog.get_logger("ramraft.leases")

MAX_EXPIRIES = 64


class Lessor:
    def __init__(
        self,
        kv: KVMachine,
        role: Callable[[], tuple[Role, int]],
        confirm: Callable[[], Awaitable[object]],
        propose: Callable[[bytes], Awaitable[tuple[int, object]]],
        election_timeout: float,
        interval: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``role()``: this node's role and term; ``confirm()``: a
        linearizable read (raises when it cannot be had); ``propose``: the
        runtime's proposal path (leader only)."""
        self.kv = kv
        self.role = role
        self.confirm = confirm
        self.propose = propose
        self.election_timeout = election_timeout
        self.interval = interval
        self.clock = clock
        self.deadlines: dict[int, float] = {}
        self.epochs: dict[int, int] = {}
        self.leading_term = 0
        """The term in which this node restarted every lease's clock (0: not
        leading, or not yet)."""
        self.expired = 0
        self._pending: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        kv.on_lease = self._on_lease

    # -- what the leader tells clients ---------------------------------------------------

    def remaining(self, lease_id: int) -> float | None:
        """Seconds before this leader expires the lease; None when this node
        does not count (not leading yet) or has no such lease."""
        if not self.leading_term or lease_id not in self.deadlines:
            return None
        return max(0.0, self.deadlines[lease_id] - self.clock())

    # -- the machine's hook (on the loop, at apply) ----------------------------------------

    def _on_lease(self, what: str, lease_id: int, ttl: int, epoch: int) -> None:
        if what == "revoked":
            self.deadlines.pop(lease_id, None)
            self.epochs.pop(lease_id, None)
            return
        # granted or renewed: the clock restarts now (after the client sent it)
        self.deadlines[lease_id] = self.clock() + ttl
        self.epochs[lease_id] = epoch

    # -- the clock ----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="lease-clock")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lease_clock_failed")

    async def tick(self) -> None:
        role, term = self.role()
        if role is not Role.LEADER:
            self.leading_term = 0
            return
        if self.leading_term != term:
            await self._take_over(term)
            return
        now = self.clock()
        due = sorted(
            (deadline, lease_id)
            for lease_id, deadline in self.deadlines.items()
            if deadline <= now and lease_id not in self._pending
        )
        for _, lease_id in due[:MAX_EXPIRIES]:
            self._pending.add(lease_id)
            asyncio.get_running_loop().create_task(self._expire(lease_id))

    async def _take_over(self, term: int) -> None:
        """A new leader: confirm leadership (every earlier entry applied),
        then restart every lease at its full ttl plus an election timeout."""
        try:
            await self.confirm()
        except Exception as e:
            log.debug("lease_clock_waits_for_leadership", reason=str(e))
            return
        role, now_term = self.role()
        if role is not Role.LEADER or now_term != term:
            return
        now = self.clock()
        leases = self.kv.leases()
        self.deadlines = {
            lease_id: now + ttl + self.election_timeout for lease_id, (ttl, _) in leases.items()
        }
        self.epochs = {lease_id: epoch for lease_id, (_, epoch) in leases.items()}
        self.leading_term = term
        if leases:
            log.info("lease_clocks_restarted", leases=len(leases), term=term)

    async def _expire(self, lease_id: int) -> None:
        epoch = self.epochs.get(lease_id)
        try:
            if epoch is None:
                return
            _, result = await self.propose(encode_lease_revoke(lease_id, epoch))
            if isinstance(result, LeaseRevokeResult) and result.revoked:
                self.expired += 1
                log.info("lease_expired", lease=lease_id, deleted=result.deleted)
        except Exception as e:
            # Not leading any more, or the write failed: the next leader (or
            # the next round) decides again.
            log.debug("lease_expiry_not_applied", lease=lease_id, reason=str(e))
        finally:
            self._pending.discard(lease_id)

"""Membership changes and leadership transfer, as the Admin API asks for them.

:class:`MembershipChanges` adds a member (thesis 4.2.1: as a learner, then,
once it has caught up, promoted to voter), removes one, and hands leadership
to another voter. Each is a proposal or a call that runs inside the loop's
turn (``RaftRuntime.propose_conf_change``, ``RaftRuntime.call``), so the core
is never touched outside it. The Raft rules (one change at a time, catching
up) are the core's (consensus/); who the peers are and which ids may talk to
us is runtime/peers.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from ramraft.consensus import ConfChange, ConfChangeType, ConfState, RaftError, RaftNode, Role
from ramraft.consensus.progress import ProgressState
from ramraft.server.request_errors import BadRequest, NotLeader, Unavailable
from ramraft.server.runtime.loop import RaftRuntime


class MembershipChanges:
    def __init__(self, runtime: RaftRuntime) -> None:
        self.runtime = runtime
        # Asked before a new node is added; raises to refuse it (the steward:
        # its code must support the versions the cluster runs).
        self.admit: Callable[[str, str], Awaitable[None]] | None = None

    async def add_member(self, node_id: str, address: str, timeout: float = 30.0) -> None:
        """Thesis 4.2.1: join as a learner, catch up, then become a voter."""
        runtime = self.runtime
        deadline = time.monotonic() + timeout
        conf = runtime.core.conf if runtime.core else ConfState()
        if node_id not in conf.members:
            if runtime.role is not Role.LEADER:
                raise NotLeader(runtime.leader, runtime.leader_client_address())
            if self.admit is not None:
                await self.admit(node_id, address)
            await runtime.propose_conf_change(
                ConfChange(ConfChangeType.ADD_LEARNER, node_id, context=address.encode())
            )
        while True:
            core = runtime.core
            assert core is not None
            if node_id in core.conf.voters:
                return
            try:
                await runtime.propose_conf_change(ConfChange(ConfChangeType.PROMOTE, node_id))
                return
            except RaftError as e:
                if time.monotonic() > deadline:
                    raise Unavailable(f"{node_id} did not catch up in {timeout}s: {e}") from e
                await asyncio.sleep(runtime.config.tick_ms / 1000)

    async def remove_member(self, node_id: str) -> None:
        core = self.runtime.core
        if core is not None and node_id not in core.conf.members:
            return  # already gone: removing is idempotent for retrying clients
        await self.runtime.propose_conf_change(ConfChange(ConfChangeType.REMOVE, node_id))

    async def transfer_leadership(self, target: str = "", timeout: float = 5.0) -> str:
        """Hand leadership to ``target`` (default: the most caught-up voter)
        and wait until someone else leads. Returns the new leader."""
        runtime = self.runtime

        def start(core: RaftNode) -> str:
            if core.role is not Role.LEADER:
                raise NotLeader(core.leader, runtime.peers.client_address(core.leader))
            chosen = target or best_transfer_target(core)
            if not chosen:
                raise BadRequest("no other voter to hand leadership to")
            core.transfer_leadership(chosen)
            return chosen

        chosen = await runtime.call(start)
        if chosen == runtime.id:
            return runtime.id
        if not await runtime.wait_for_new_leader(runtime.id, timeout):
            raise Unavailable(f"leadership transfer to {chosen} did not complete in {timeout}s")
        return runtime.leader

    async def handover_candidates(self, answered_within: float) -> list[str]:
        """The voters this leader could hand leadership to right now, best
        first (most entries): each answered in the last ``answered_within``
        seconds and was not found unreachable since, holds every committed
        entry and is not waiting for a snapshot. Empty unless we lead."""
        peers = self.runtime.peers

        def choose(core: RaftNode) -> list[str]:
            if core.role is not Role.LEADER:
                return []
            now = time.monotonic()
            candidates = [
                (pr.match, peer)
                for peer, pr in core.progress.items()
                if peer != core.id
                and peer in core.conf.voters
                and peers.answered_within(peer, answered_within, now)
                and pr.state != ProgressState.SNAPSHOT
                and pr.match >= core.commit_index
            ]
            return [peer for _, peer in sorted(candidates, reverse=True)]

        return await self.runtime.call(choose)


def best_transfer_target(core: RaftNode) -> str:
    """The voter with the highest match index (it catches up soonest)."""
    candidates = [
        (pr.match, peer)
        for peer, pr in core.progress.items()
        if peer != core.id and peer in core.conf.voters
    ]
    return max(candidates)[1] if candidates else ""

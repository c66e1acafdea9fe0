"""The leader's lease clock (runtime/leases.py) with a fake clock, a fake
role and a proposal path that applies to a real key-value machine: expiry
after the ttl and not before, the restart of every lease at ttl + election
timeout by a new leader, and the epoch that voids a stale expiry."""

from __future__ import annotations

import asyncio

from ramraft.consensus import Role
from ramraft.server.machines.cluster import ClusterMachine, encode_versions
from ramraft.server.machines.kv import (
    KVMachine,
    encode_lease_grant,
    encode_lease_renew,
    encode_lease_revoke,
    encode_txn,
)
from ramraft.server.machines.kvops import LeaseRevokeResult, Txn, TxnOp, TxnOpKind
from ramraft.server.runtime.leases import Lessor

ELECTION = 1.0


class Rig:
    def __init__(self) -> None:
        self.kv = KVMachine()
        self.cluster = ClusterMachine(self.kv, kv=self.kv)
        self.index = 0
        self.now = 100.0
        self.role = (Role.LEADER, 1)
        self.confirmed = 0
        self.proposed: list[bytes] = []
        self.apply(encode_versions(1, 2))
        self.lessor = Lessor(
            self.kv,
            lambda: self.role,
            self.confirm,
            self.propose,
            ELECTION,
            clock=lambda: self.now,
        )

    def apply(self, command: bytes) -> object:
        self.index += 1
        return self.cluster.apply(self.index, command)

    async def confirm(self) -> None:
        self.confirmed += 1

    async def propose(self, command: bytes) -> tuple[int, object]:
        self.proposed.append(command)
        result = self.apply(command)
        return self.index, result

    async def tick(self) -> None:
        await self.lessor.tick()
        await asyncio.sleep(0)  # let the expiry tasks run
        await asyncio.sleep(0)

    def grant(self, ttl: int) -> int:
        result = self.apply(encode_lease_grant(0, ttl))
        lease_id: int = result.lease_id  # type: ignore[attr-defined]
        put = TxnOp(TxnOpKind.PUT, f"key{lease_id}", b"", lease_id)
        self.apply(encode_txn(Txn((), (put,), ())))
        return lease_id


def test_expiry_after_the_ttl_and_not_before() -> None:
    async def scenario() -> None:
        rig = Rig()
        await rig.tick()  # takes over: confirms leadership first
        assert rig.confirmed == 1 and rig.lessor.leading_term == 1
        lease = rig.grant(5)
        rig.now += 4.99
        await rig.tick()
        assert rig.proposed == [] and rig.kv.lease(lease) is not None
        assert rig.lessor.remaining(lease) is not None
        rig.now += 0.02
        await rig.tick()
        assert rig.proposed == [encode_lease_revoke(lease, 0)]
        assert rig.kv.lease(lease) is None and rig.kv.get(f"key{lease}")[0] is False
        assert rig.lessor.expired == 1

    asyncio.run(scenario())


def test_a_renewal_restarts_the_clock_and_voids_an_expiry_decided_before() -> None:
    async def scenario() -> None:
        rig = Rig()
        await rig.tick()
        lease = rig.grant(5)
        rig.now += 4
        rig.apply(encode_lease_renew([lease]))  # a keep-alive, applied
        rig.now += 4
        await rig.tick()
        assert rig.proposed == [], "renewed 4 s ago: 1 s left"
        # An expiry decided with the epoch of before the renewal (a deposed
        # leader's, say) is void when it reaches the log.
        stale = rig.apply(encode_lease_revoke(lease, 0))
        assert isinstance(stale, LeaseRevokeResult) and not stale.revoked
        assert rig.kv.lease(lease) is not None
        rig.now += 1.01
        await rig.tick()
        assert rig.proposed == [encode_lease_revoke(lease, 1)] and rig.kv.lease(lease) is None

    asyncio.run(scenario())


def test_a_new_leader_restarts_every_lease_at_ttl_plus_an_election_timeout() -> None:
    async def scenario() -> None:
        rig = Rig()
        rig.role = (Role.FOLLOWER, 1)
        lease = rig.grant(5)  # granted under another leader
        rig.now += 100  # long past its ttl, as this follower's clock goes
        await rig.tick()
        assert rig.proposed == [] and rig.lessor.remaining(lease) is None
        rig.role = (Role.LEADER, 2)
        await rig.tick()  # takes over now
        assert rig.lessor.leading_term == 2
        assert rig.lessor.remaining(lease) == 5 + ELECTION
        rig.now += 5 + ELECTION - 0.01
        await rig.tick()
        assert rig.proposed == []
        rig.now += 0.02
        await rig.tick()
        assert rig.proposed == [encode_lease_revoke(lease, 0)]

    asyncio.run(scenario())


def test_a_leader_that_cannot_confirm_counts_nothing() -> None:
    async def scenario() -> None:
        rig = Rig()
        lease = rig.grant(1)

        async def refuse() -> None:
            raise TimeoutError("no quorum")

        rig.lessor.confirm = refuse
        rig.now += 50
        await rig.tick()
        await rig.tick()
        assert rig.lessor.leading_term == 0 and rig.proposed == []
        assert rig.kv.lease(lease) is not None

    asyncio.run(scenario())

"""The ``Lease`` service (proto/kv.proto): grant, revoke, keep alive, time
to live. Decode, call the node API, encode; the lease clock is the leader's
(runtime/leases.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import structlog

from ramraft.consensus import Role
from ramraft.proto import kv_pb2, kv_pb2_grpc
from ramraft.server.machines.kv import (
    KVMachine,
    encode_lease_grant,
    encode_lease_renew,
    encode_lease_revoke,
)
from ramraft.server.machines.kvops import (
    MAX_LEASE_TTL,
    LeaseGrantResult,
    LeaseRenewResult,
    LeaseRevokeResult,
)
from ramraft.server.request_errors import (
    BadRequest,
    CommandRefused,
    NotLeader,
    Unavailable,
    check_command_result,
)
from ramraft.server.rpc.ending import SHUTTING_DOWN, until_set
from ramraft.server.rpc.services import (
    _session,
    _timeout,
    name_leader,
    response_header,
    rpc,
    rpc_stream,
)
from ramraft.server.runtime.ending import StreamsEnding
from ramraft.server.runtime.leases import Lessor
from ramraft.server.runtime.node_api import NodeAPI

log = structlog.get_logger("ramraft.grpc")

__all__ = ["LeaseService"]


def _lease_id(value: int, zero: bool = False) -> int:
    if value < 0 or (value == 0 and not zero):
        raise BadRequest(f"lease id {value}: a lease id is 1..2**63-1")
    return value


class LeaseService(kv_pb2_grpc.LeaseServicer):
    def __init__(
        self,
        api: NodeAPI,
        machine: KVMachine,
        lessor: Lessor,
        ending: StreamsEnding | None = None,
    ) -> None:
        self.api = api
        # The node's stop ends the KeepAlive streams.
        self.ending = ending if ending is not None else StreamsEnding()
        self.runtime = api.runtime
        self.limits = api.limits
        self.machine = machine
        self.lessor = lessor
        self.observers: list[Callable[[str, str, float], None]] = []

    def _timeout(self, context: grpc.aio.ServicerContext[Any, Any]) -> float:
        return _timeout(context, self.limits)

    def _header(self, revision: int | None = None) -> kv_pb2.ResponseHeader:
        return response_header(
            self.runtime, self.machine.revision if revision is None else revision
        )

    async def _write(
        self, command: bytes, session: object, context: grpc.aio.ServicerContext[Any, Any]
    ) -> object:
        """Grant's and Revoke's write, as KVService._write: retried only with
        a session, its refusal raised, the leader named when forwarded."""
        _, result = await self.api.write(
            command, self._timeout(context), retry_unsafe=bool(session)
        )
        check_command_result(result)
        name_leader(self.runtime, context)
        return result

    @rpc("LeaseGrant")
    async def Grant(
        self, request: kv_pb2.LeaseGrantRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> kv_pb2.LeaseGrantResponse:
        if not 1 <= request.ttl <= MAX_LEASE_TTL:
            raise BadRequest(f"ttl {request.ttl}: a lease lives 1..{MAX_LEASE_TTL} seconds")
        session = _session(request)
        command = encode_lease_grant(_lease_id(request.id, zero=True), request.ttl, session)
        result = await self._write(command, session, context)
        assert isinstance(result, LeaseGrantResult)
        return kv_pb2.LeaseGrantResponse(
            id=result.lease_id,
            ttl=result.ttl,
            index=result.index,
            header=self._header(result.revision),
        )

    @rpc("LeaseRevoke")
    async def Revoke(
        self, request: kv_pb2.LeaseRevokeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> kv_pb2.LeaseRevokeResponse:
        session = _session(request)
        command = encode_lease_revoke(_lease_id(request.id), None, session)
        result = await self._write(command, session, context)
        assert isinstance(result, LeaseRevokeResult)
        return kv_pb2.LeaseRevokeResponse(
            deleted=result.deleted, index=result.index, header=self._header(result.revision)
        )

    @rpc("LeaseTimeToLive")
    async def TimeToLive(
        self,
        request: kv_pb2.LeaseTimeToLiveRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> kv_pb2.LeaseTimeToLiveResponse:
        lease_id = _lease_id(request.id)
        if self.runtime.role is not Role.LEADER:
            # Only the leader counts the time left (runtime/leases.py).
            raise NotLeader(self.runtime.leader, self.runtime.leader_client_address())
        await self.api.linearizable(self._timeout(context))
        if self.machine.active_version < 2:
            raise CommandRefused(_NOT_ACTIVE)
        found = self.machine.lease(lease_id)
        if found is None:
            return kv_pb2.LeaseTimeToLiveResponse(id=lease_id, ttl=-1, header=self._header())
        granted, _, keys = found
        left = self.lessor.remaining(lease_id)
        return kv_pb2.LeaseTimeToLiveResponse(
            id=lease_id,
            # Not counting yet (a leader taking over): at least the full ttl.
            ttl=granted if left is None else int(left),
            granted_ttl=granted,
            keys=keys if request.keys else [],
            header=self._header(),
        )

    @rpc_stream("LeaseKeepAlive")
    async def KeepAlive(
        self,
        requests: AsyncIterator[kv_pb2.LeaseKeepAliveRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[kv_pb2.LeaseKeepAliveResponse]:
        """Each request renews one lease through the log (a renewal bumps the
        lease's epoch, so an expiry decided before it is void) and is
        answered once the renewal is applied: by then a leader holding a
        quorum has restarted the lease's clock. When the node stops, the
        stream ends UNAVAILABLE after the renewal in service, if any (the
        client keeps the lease alive through another node)."""
        stopping = asyncio.Event()
        with self.ending.track(stopping.set):
            async for request in until_set(requests, stopping):
                lease_id = _lease_id(request.id)
                # A renewal applied twice only bumps the epoch twice: safe to
                # retry without a session.
                _, result = await self.api.write(
                    encode_lease_renew([lease_id]),
                    self._timeout(context),
                    retry_unsafe=True,
                )
                check_command_result(result)
                assert isinstance(result, LeaseRenewResult)
                _, ttl, _ = result.leases[0]
                yield kv_pb2.LeaseKeepAliveResponse(id=lease_id, ttl=ttl, header=self._header())
        if stopping.is_set():
            raise Unavailable(SHUTTING_DOWN, before_proposal=True)


_NOT_ACTIVE = (
    "leases need key-value version 2; the cluster runs version 1 until every node supports it"
)

"""The asyncio client's key-value version 2 calls: transactions,
delete-prefix, watches and leases (mixed into ``AsyncClient``). The same
rules as the blocking client's (client/_sync_revisions.py)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import time
import weakref
from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import grpc

from ramraft.client import _core
from ramraft.client._revisions import (
    Compare,
    DeleteResult,
    LeaseGrant,
    PutResult,
    TryElsewhere,
    TxnOp,
    TxnResult,
    WatchEvent,
    WatchProgress,
    WatchState,
    check_lease_entry,
    fill_get_keys,
    txn_request,
    txn_result,
)
from ramraft.client._sync_revisions import WATCH_CHANNEL_OPTIONS
from ramraft.client.errors import RamraftError
from ramraft.proto import kv_pb2, kv_pb2_grpc

__all__ = ["AsyncLease", "AsyncRevisionsMixin", "AsyncWatcher"]


class AsyncRevisionsMixin:
    """Methods of ``AsyncClient`` (client/_async.py) for key-value version 2."""

    if TYPE_CHECKING:  # what the client class this is mixed into provides
        timeout: float
        _ring: _core.EndpointRing
        _policy: _core.RetryPolicy
        _rng: random.Random
        _metadata: tuple[tuple[str, str], ...] | None
        _tls: _core.TLSOptions | None
        _credentials: grpc.ChannelCredentials | None
        _closed: bool
        _watchers: weakref.WeakSet[AsyncWatcher]

        @property
        def endpoints(self) -> list[str]: ...

        async def _write(
            self, method: str, rpc: Any, request: Any, timeout: float | None
        ) -> Any: ...

        async def _call(
            self, method: str, rpc: Any, request: Any, timeout: float | None
        ) -> Any: ...

        def _stubs_for(self, endpoint: str) -> Any: ...

    async def txn(
        self,
        compare: Iterable[Compare] = (),
        success: Iterable[TxnOp] = (),
        failure: Iterable[TxnOp] = (),
        *,
        timeout: float | None = None,
    ) -> TxnResult:
        """See ``Client.txn``."""
        request = txn_request(list(compare), list(success), list(failure))
        response = await self._write("Txn", lambda s: s.kv.Txn, request, timeout)
        return fill_get_keys(request, txn_result(response))

    async def put_result(
        self, key: str, value: bytes | str, *, lease: int = 0, timeout: float | None = None
    ) -> PutResult:
        """Like put(), with the revision of the write."""
        request = _core.put_request(key, value, lease)
        r: kv_pb2.PutResponse = await self._write("Put", lambda s: s.kv.Put, request, timeout)
        return PutResult(r.index, r.header.revision)

    async def delete_result(self, key: str, *, timeout: float | None = None) -> DeleteResult:
        """Like delete(), with the revision of the delete."""
        request = kv_pb2.DeleteRequest(key=_core.to_key(key))
        r: kv_pb2.DeleteResponse = await self._write(
            "Delete", lambda s: s.kv.Delete, request, timeout
        )
        return DeleteResult(r.deleted, r.index, r.header.revision)

    async def delete_prefix(self, prefix: str, *, timeout: float | None = None) -> int:
        """See ``Client.delete_prefix``."""
        request = kv_pb2.DeleteRangeRequest(prefix=_core.to_key(prefix))
        response: kv_pb2.DeleteRangeResponse = await self._write(
            "DeleteRange", lambda s: s.kv.DeleteRange, request, timeout
        )
        return response.deleted

    def watch(
        self,
        key: str,
        *,
        prefix: bool = False,
        start_revision: int = 0,
        progress_notify: bool = True,
        progress: bool = False,
        timeout: float | None = None,
    ) -> AsyncWatcher:
        """See ``Client.watch``: ``async for event in client.watch(...)``.
        ``aclose()`` it (or use ``async with``); closing the client closes
        its watches too (an iteration waiting for events then ends)."""
        if self._closed:
            raise RuntimeError("the client is closed")
        state = WatchState(key, prefix, start_revision, progress_notify, progress)
        watcher = AsyncWatcher(self, state, self.timeout if timeout is None else timeout)
        self._watchers.add(watcher)  # closed with the client
        return watcher

    async def lease_grant(
        self, ttl: int, *, lease_id: int = 0, timeout: float | None = None
    ) -> LeaseGrant:
        """See ``Client.lease_grant``."""
        request = kv_pb2.LeaseGrantRequest(
            ttl=_core.to_int(ttl, "ttl"), id=_core.to_int(lease_id, "lease_id")
        )
        r = await self._write(
            "LeaseGrant", lambda s: kv_pb2_grpc.LeaseStub(s.channel).Grant, request, timeout
        )
        return LeaseGrant(r.id, r.ttl, r.header.revision)

    async def lease_revoke(self, lease_id: int, *, timeout: float | None = None) -> int:
        """See ``Client.lease_revoke``."""
        request = kv_pb2.LeaseRevokeRequest(id=_core.to_int(lease_id, "lease_id"))
        r: kv_pb2.LeaseRevokeResponse = await self._write(
            "LeaseRevoke", lambda s: kv_pb2_grpc.LeaseStub(s.channel).Revoke, request, timeout
        )
        return r.deleted

    async def lease_time_to_live(
        self, lease_id: int, *, keys: bool = False, timeout: float | None = None
    ) -> kv_pb2.LeaseTimeToLiveResponse:
        """See ``Client.lease_time_to_live``."""
        request = kv_pb2.LeaseTimeToLiveRequest(id=_core.to_int(lease_id, "lease_id"), keys=keys)
        response: kv_pb2.LeaseTimeToLiveResponse = await self._call(
            "LeaseTimeToLive",
            lambda s: kv_pb2_grpc.LeaseStub(s.channel).TimeToLive,
            request,
            timeout,
        )
        return response

    async def lease_keep_alive(self, lease_id: int, *, timeout: float | None = None) -> int:
        """See ``Client.lease_keep_alive``."""
        total = self.timeout if timeout is None else _core.check_timeout(timeout)
        # A renewal is a write (it goes through the log): to the leader,
        # when a follower named it.
        attempts = _core.CallAttempts(
            self._ring, total, self._policy, self._rng, method="LeaseKeepAlive", write=True
        )
        request = kv_pb2.LeaseKeepAliveRequest(id=_core.to_int(lease_id, "lease_id"))
        while True:
            target, attempt_timeout = attempts.next()
            stub = kv_pb2_grpc.LeaseStub(self._stubs_for(target).channel)
            try:
                call = stub.KeepAlive(timeout=attempt_timeout, metadata=self._metadata)
                await call.write(request)
                await call.done_writing()
                answer = await call.read()
                if answer is grpc.aio.EOF:
                    raise RamraftError(f"{target} ended the keep-alive stream without an answer")
                call.cancel()
            except grpc.RpcError as error:
                pause = attempts.failed(target, error)
                if pause > 0:
                    await asyncio.sleep(pause)
                continue
            return int(answer.ttl)

    async def lease(self, ttl: int, *, lease_id: int = 0) -> AsyncLease:
        """A lease that keeps itself alive in a task while the ``async with``
        block runs, and is revoked at its end::

            async with await client.lease(10) as lease:
                await client.put("service/me", b"addr", lease=lease.id)
        """
        return AsyncLease(self, await self.lease_grant(ttl, lease_id=lease_id))


class AsyncWatcher:
    """An async iterator of a watch's events (see ``AsyncClient.watch``)."""

    def __init__(self, client: AsyncRevisionsMixin, state: WatchState, timeout: float) -> None:
        self._client = client
        self.state = state
        self._timeout = _core.check_timeout(timeout)
        self._pending: collections.deque[WatchEvent | WatchProgress] = collections.deque()
        self._call: Any = None
        self._channel: grpc.aio.Channel | None = None
        self._endpoint = ""
        self._closed = False

    @property
    def next_revision(self) -> int:
        return self.state.next_revision

    def is_closed(self) -> bool:
        return self._closed

    def __aiter__(self) -> AsyncIterator[WatchEvent | WatchProgress]:
        return self

    async def __anext__(self) -> WatchEvent | WatchProgress:
        while not self._pending:
            if self._closed:
                raise StopAsyncIteration
            await self._receive()
        return self._pending.popleft()

    async def __aenter__(self) -> AsyncWatcher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        await self._hang_up()

    async def _hang_up(self) -> None:
        call, self._call = self._call, None
        channel, self._channel = self._channel, None
        if call is not None:
            call.cancel()
        if channel is not None:
            await channel.close()

    async def _receive(self) -> None:
        if self._call is None:
            await self._connect()
            return
        try:
            response = await self._call.read()
        except grpc.RpcError:
            if not self._closed:
                await self._moved_on()
            return
        except asyncio.CancelledError:
            # grpc.aio raises this from read() when the call was cancelled
            # here: by aclose() (or the client's close()) from another task,
            # which ends the iteration. A cancellation of this task goes on.
            task = asyncio.current_task()
            if self._closed and task is not None and not task.cancelling():
                return
            raise
        if response is grpc.aio.EOF:
            await self._moved_on()
            return
        try:
            self._pending.extend(self.state.take(response, self._endpoint, self._client.endpoints))
        except TryElsewhere:
            await self._moved_on()

    async def _moved_on(self) -> None:
        self._client._ring.failed(self._endpoint, connection=False)
        await self._hang_up()

    async def _connect(self) -> None:
        client = self._client
        attempts = _core.CallAttempts(
            client._ring, self._timeout, client._policy, client._rng, method="Watch"
        )
        while not self._closed:
            target, attempt_timeout = attempts.next()
            channel = _watch_channel(client, target)
            call = kv_pb2_grpc.KVStub(channel).Watch(metadata=client._metadata)
            self._call, self._channel, self._endpoint = call, channel, target
            try:
                await call.write(self.state.create())
                first: Any = await asyncio.wait_for(call.read(), attempt_timeout)
            except (grpc.RpcError, TimeoutError) as error:
                await self._hang_up()
                if self.is_closed():
                    return
                if isinstance(error, grpc.RpcError):
                    pause = attempts.failed(target, error)
                    if pause > 0:
                        await asyncio.sleep(pause)
                continue
            if first is grpc.aio.EOF:
                await self._hang_up()
                continue
            try:
                self._pending.extend(self.state.take(first, target, client.endpoints))
            except TryElsewhere:
                client._ring.failed(target, connection=False)
                await self._hang_up()
                continue
            return


def _watch_channel(client: AsyncRevisionsMixin, endpoint: str) -> grpc.aio.Channel:
    tls = client._tls
    if tls is None or client._credentials is None:
        return grpc.aio.insecure_channel(endpoint, options=WATCH_CHANNEL_OPTIONS)
    options = (*tls.channel_options(), *WATCH_CHANNEL_OPTIONS[len(_core.CHANNEL_OPTIONS) :])
    return grpc.aio.secure_channel(endpoint, client._credentials, options=options)


class AsyncLease:
    """See ``Client.lease`` / ``client._sync_revisions.Lease``."""

    def __init__(self, client: AsyncRevisionsMixin, grant: LeaseGrant) -> None:
        self._client = client
        self.id = grant.id
        self.ttl = grant.ttl
        self.lost = False
        self.error: RamraftError | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def __aenter__(self) -> AsyncLease:
        check_lease_entry(self._task is not None, self._closed)
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose(revoke=True)

    async def aclose(self, *, revoke: bool = True) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if revoke and not self.lost:
            try:
                await self._client.lease_revoke(self.id)
            except RamraftError as e:
                if e.code != grpc.StatusCode.NOT_FOUND:
                    raise

    async def _run(self) -> None:
        interval = max(0.2, self.ttl / 3)
        next_at = time.monotonic()
        while True:
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            try:
                ttl = await self._client.lease_keep_alive(self.id, timeout=max(1.0, interval))
            except RamraftError as e:
                self.error = e
                continue
            self.error = None
            if ttl <= 0:
                self.lost = True
                return

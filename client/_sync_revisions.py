"""The blocking client's key-value version 2 calls: transactions,
delete-prefix, watches and leases (mixed into ``Client``)."""

from __future__ import annotations

import collections
import queue
import random
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
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
from ramraft.client.errors import RamraftError
from ramraft.proto import kv_pb2, kv_pb2_grpc

__all__ = ["Lease", "RevisionsMixin", "Watcher"]

# A watch stream's connection is checked with HTTP/2 pings: a node that
# stops answering (paused, cut off) fails the stream within about
# WATCH_KEEPALIVE_MS * 2, and the watch resumes on another node. (Nodes
# accept pings every 5 s; a server that refuses them ends the stream, and the
# watch resumes too.)
WATCH_KEEPALIVE_MS = 10_000
WATCH_CHANNEL_OPTIONS = (
    *_core.CHANNEL_OPTIONS,
    ("grpc.keepalive_time_ms", WATCH_KEEPALIVE_MS),
    ("grpc.keepalive_timeout_ms", WATCH_KEEPALIVE_MS),
    ("grpc.keepalive_permit_without_calls", 1),
)


class RevisionsMixin:
    """Methods of ``Client`` (client/_sync.py) for key-value version 2."""

    if TYPE_CHECKING:  # what the client class this is mixed into provides
        timeout: float
        _ring: _core.EndpointRing
        _policy: _core.RetryPolicy
        _rng: random.Random
        _metadata: tuple[tuple[str, str], ...] | None
        _tls: _core.TLSOptions | None
        _credentials: grpc.ChannelCredentials | None
        _closed: bool
        _watchers: weakref.WeakSet[Watcher]

        @property
        def endpoints(self) -> list[str]: ...

        def _write(self, method: str, rpc: Any, request: Any, timeout: float | None) -> Any: ...

        def _call(self, method: str, rpc: Any, request: Any, timeout: float | None) -> Any: ...

        def _stubs_for(self, endpoint: str) -> Any: ...

    def txn(
        self,
        compare: Iterable[Compare] = (),
        success: Iterable[TxnOp] = (),
        failure: Iterable[TxnOp] = (),
        *,
        timeout: float | None = None,
    ) -> TxnResult:
        """If every compare holds, run the success ops, otherwise the failure
        ops -- atomically, in one revision. Sent with a session like every
        write (a retry is applied once)."""
        request = txn_request(list(compare), list(success), list(failure))
        response = self._write("Txn", lambda s: s.kv.Txn, request, timeout)
        return fill_get_keys(request, txn_result(response))

    def put_result(
        self, key: str, value: bytes | str, *, lease: int = 0, timeout: float | None = None
    ) -> PutResult:
        """Like put(), with the revision of the write."""
        request = _core.put_request(key, value, lease)
        r: kv_pb2.PutResponse = self._write("Put", lambda s: s.kv.Put, request, timeout)
        return PutResult(r.index, r.header.revision)

    def delete_result(self, key: str, *, timeout: float | None = None) -> DeleteResult:
        """Like delete(), with the revision of the delete."""
        request = kv_pb2.DeleteRequest(key=_core.to_key(key))
        r: kv_pb2.DeleteResponse = self._write("Delete", lambda s: s.kv.Delete, request, timeout)
        return DeleteResult(r.deleted, r.index, r.header.revision)

    def delete_prefix(self, prefix: str, *, timeout: float | None = None) -> int:
        """Deletes every key that starts with ``prefix`` (in one revision);
        returns how many. Refused (FailedPrecondition) when more keys match
        than the node's --max-delete-range-keys."""
        request = kv_pb2.DeleteRangeRequest(prefix=_core.to_key(prefix))
        response: kv_pb2.DeleteRangeResponse = self._write(
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
    ) -> Watcher:
        """The changes of ``key`` (every key starting with it, with
        ``prefix``) from ``start_revision`` on (0: from the next change), as
        an iterator of WatchEvent, in revision order. It resumes on another
        node when its stream breaks, without a gap or a repeat; ``timeout``
        bounds each reconnection. With ``progress`` it also yields
        WatchProgress notifications. ``progress_notify`` (on by default)
        asks the node for one whenever the watch has been quiet for its
        --watch-progress-ms: they keep the revision a broken watch resumes
        from recent, so that a quiet watch is not refused as compacted by a
        node whose history starts later (one restarted from a snapshot).
        ``close()`` it (or use ``with``); closing the client closes its
        watches too."""
        state = WatchState(key, prefix, start_revision, progress_notify, progress)
        if self._closed:
            raise RuntimeError("the client is closed")
        watcher = Watcher(self, state, self.timeout if timeout is None else timeout)
        self._watchers.add(watcher)  # closed with the client
        return watcher

    # -- leases ----------------------------------------------------------------------

    def lease_grant(
        self, ttl: int, *, lease_id: int = 0, timeout: float | None = None
    ) -> LeaseGrant:
        """A lease of ``ttl`` seconds (``lease_id`` 0: the cluster picks the id)."""
        request = kv_pb2.LeaseGrantRequest(
            ttl=_core.to_int(ttl, "ttl"), id=_core.to_int(lease_id, "lease_id")
        )
        r = self._write(
            "LeaseGrant", lambda s: kv_pb2_grpc.LeaseStub(s.channel).Grant, request, timeout
        )
        return LeaseGrant(r.id, r.ttl, r.header.revision)

    def lease_revoke(self, lease_id: int, *, timeout: float | None = None) -> int:
        """Revokes a lease; returns how many keys were deleted with it."""
        request = kv_pb2.LeaseRevokeRequest(id=_core.to_int(lease_id, "lease_id"))
        r: kv_pb2.LeaseRevokeResponse = self._write(
            "LeaseRevoke", lambda s: kv_pb2_grpc.LeaseStub(s.channel).Revoke, request, timeout
        )
        return r.deleted

    def lease_time_to_live(
        self, lease_id: int, *, keys: bool = False, timeout: float | None = None
    ) -> kv_pb2.LeaseTimeToLiveResponse:
        """The seconds the leader gives the lease (-1: no such lease)."""
        request = kv_pb2.LeaseTimeToLiveRequest(id=_core.to_int(lease_id, "lease_id"), keys=keys)
        response: kv_pb2.LeaseTimeToLiveResponse = self._call(
            "LeaseTimeToLive",
            lambda s: kv_pb2_grpc.LeaseStub(s.channel).TimeToLive,
            request,
            timeout,
        )
        return response

    def lease_keep_alive(self, lease_id: int, *, timeout: float | None = None) -> int:
        """Renews a lease once; returns its ttl from now (0: the lease is gone)."""
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
                responses = stub.KeepAlive(
                    iter([request]), timeout=attempt_timeout, metadata=self._metadata
                )
                answer: kv_pb2.LeaseKeepAliveResponse = next(responses)
                responses.cancel()
            except grpc.RpcError as error:
                pause = attempts.failed(target, error)
                if pause > 0:
                    time.sleep(pause)
                continue
            return answer.ttl

    def lease(self, ttl: int, *, lease_id: int = 0) -> Lease:
        """A lease that keeps itself alive (every ttl/3 seconds, in a thread)
        while the ``with`` block runs, and is revoked at its end::

            with client.lease(10) as lease:
                client.put("service/me", b"addr", lease=lease.id)
        """
        return Lease(self, self.lease_grant(ttl, lease_id=lease_id))


class Watcher:
    """An iterator of a watch's events (see ``Client.watch``)."""

    def __init__(self, client: RevisionsMixin, state: WatchState, timeout: float) -> None:
        self._client = client
        self.state = state
        self._timeout = _core.check_timeout(timeout)
        self._pending: collections.deque[WatchEvent | WatchProgress] = collections.deque()
        self._responses: Any = None
        self._requests: queue.Queue[kv_pb2.WatchRequest | None] | None = None
        self._channel: grpc.Channel | None = None
        self._endpoint = ""
        self._closed = False
        self._lock = threading.Lock()

    @property
    def next_revision(self) -> int:
        """The revision the watch needs next (where a resumed stream starts)."""
        return self.state.next_revision

    def is_closed(self) -> bool:
        return self._closed

    def __iter__(self) -> Iterator[WatchEvent | WatchProgress]:
        return self

    def __next__(self) -> WatchEvent | WatchProgress:
        while not self._pending:
            if self._closed:
                raise StopIteration
            self._receive()
        return self._pending.popleft()

    def __enter__(self) -> Watcher:
        return self

    def __del__(self) -> None:
        # A watch dropped without close() (``for event in client.watch(k):
        # break``): gRPC's thread that sends its requests would wait on the
        # queue for good, and its stream and channel stay open.
        if hasattr(self, "_lock"):  # else __init__ refused the arguments
            self._hang_up()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the watch (from any thread: a blocked iteration then ends)."""
        with self._lock:
            self._closed = True
        self._hang_up()

    def _hang_up(self) -> None:
        with self._lock:
            requests, self._requests = self._requests, None
            responses, self._responses = self._responses, None
            channel, self._channel = self._channel, None
        if requests is not None:
            requests.put(None)
        if responses is not None:
            responses.cancel()
        if channel is not None:
            channel.close()

    def _receive(self) -> None:
        if self._responses is None:
            self._connect()
            return
        try:
            response = next(self._responses)
        except StopIteration:
            self._moved_on(None)
            return
        except grpc.RpcError as error:
            if self._closed:
                return
            self._moved_on(error)
            return
        try:
            self._pending.extend(self.state.take(response, self._endpoint, self._client.endpoints))
        except TryElsewhere:
            self._client._ring.failed(self._endpoint, connection=False)
            self._hang_up()

    def _moved_on(self, error: grpc.RpcError | None) -> None:
        """The stream broke: resume on the next node."""
        self._client._ring.failed(self._endpoint, connection=False)
        self._hang_up()

    def _connect(self) -> None:
        """Open a stream on a working node and create the watch on it (from
        ``state.next_revision``), within the watch's timeout."""
        client = self._client
        attempts = _core.CallAttempts(
            client._ring, self._timeout, client._policy, client._rng, method="Watch"
        )
        while not self._closed:
            if client._closed:
                raise RuntimeError("the client is closed")
            target, _ = attempts.next()
            requests: queue.Queue[kv_pb2.WatchRequest | None] = queue.Queue()
            requests.put(self.state.create())
            channel = _watch_channel(client, target)
            stub = kv_pb2_grpc.KVStub(channel)
            responses = stub.Watch(_drain(requests), metadata=client._metadata)
            with self._lock:
                if self.is_closed():
                    responses.cancel()
                    channel.close()
                    return
                self._requests, self._responses, self._channel = requests, responses, channel
                self._endpoint = target
            try:
                first = next(responses)
            except (StopIteration, grpc.RpcError) as error:
                self._hang_up()
                if self.is_closed():
                    return
                if isinstance(error, grpc.RpcError):
                    pause = attempts.failed(target, error)
                    if pause > 0:
                        time.sleep(pause)
                continue
            try:
                self._pending.extend(self.state.take(first, target, client.endpoints))
            except TryElsewhere:
                client._ring.failed(target, connection=False)
                self._hang_up()
                continue
            return


def _drain(requests: queue.Queue[kv_pb2.WatchRequest | None]) -> Iterator[kv_pb2.WatchRequest]:
    while True:
        item = requests.get()
        if item is None:
            return
        yield item


def _watch_channel(client: RevisionsMixin, endpoint: str) -> grpc.Channel:
    """A channel of its own per watch stream, with keepalive pings."""
    tls = client._tls
    if tls is None or client._credentials is None:
        return grpc.insecure_channel(endpoint, options=WATCH_CHANNEL_OPTIONS)
    options = (*tls.channel_options(), *WATCH_CHANNEL_OPTIONS[len(_core.CHANNEL_OPTIONS) :])
    return grpc.secure_channel(endpoint, client._credentials, options=options)


class Lease:
    """A granted lease kept alive by a thread while in use (see
    ``Client.lease``). ``lost`` is set when the cluster says the lease is
    gone (expired or revoked): its keys are deleted, and keeping alive stops.
    ``error`` holds the last keep-alive failure (the thread keeps trying)."""

    def __init__(self, client: RevisionsMixin, grant: LeaseGrant) -> None:
        self._client = client
        self.id = grant.id
        self.ttl = grant.ttl
        self.lost = False
        self.error: RamraftError | None = None
        self._stop = threading.Event()  # set by close()
        self._thread = threading.Thread(
            target=self._run, name=f"ramraft-lease-{grant.id}", daemon=True
        )

    def __enter__(self) -> Lease:
        check_lease_entry(self._thread.ident is not None, self._stop.is_set())
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(revoke=True)

    def close(self, *, revoke: bool = True) -> None:
        """Stop keeping the lease alive; revoke it (deleting its keys) unless
        ``revoke`` is False (it then expires after its ttl)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if revoke and not self.lost:
            try:
                self._client.lease_revoke(self.id)
            except RamraftError as e:
                if e.code != grpc.StatusCode.NOT_FOUND:
                    raise

    def _run(self) -> None:
        interval = max(0.2, self.ttl / 3)
        while not self._stop.wait(interval):
            try:
                ttl = self._client.lease_keep_alive(self.id, timeout=max(1.0, interval))
            except RamraftError as e:
                self.error = e
                continue
            self.error = None
            if ttl <= 0:
                self.lost = True
                return

"""The asyncio client (grpc.aio)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import os
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from types import TracebackType
from typing import Any, TypeVar

import grpc

from ramraft.client import _blobs, _core, _stream
from ramraft.client._async_revisions import AsyncRevisionsMixin
from ramraft.client._core import (
    CallAttempts,
    CasResult,
    GetResult,
    RangePage,
    Ticket,
)
from ramraft.client.errors import FailedPrecondition, Unavailable
from ramraft.proto import (
    admin_pb2,
    admin_pb2_grpc,
    blobs_pb2,
    blobs_pb2_grpc,
    kv_pb2,
    kv_pb2_grpc,
)

__all__ = ["AsyncClient"]

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class _Stubs:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.kv = kv_pb2_grpc.KVStub(channel)  # typed as KVAsyncStub
        self.admin = admin_pb2_grpc.AdminStub(channel)  # typed as AdminAsyncStub


class _Stream:
    """One ``KV.StreamBatch`` (or ``KV.Stream``, where the node serves no
    batches) to one node, carrying many calls at once: each request gets an
    id, and the answer with that id wakes its caller. One task writes the
    requests (a gRPC stream takes one write at a time, and a caller
    cancelled in the middle of a write would cancel the whole stream): all
    those queued while it wrote the last message go in the next one. One
    task reads the answers. See client/_stream.py for what an answer, a
    timeout and the stream's end mean."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        endpoint: str,
        metadata: Any,
        unary_only: _core.UnaryOnly,
        no_batch: _core.UnaryOnly,
    ) -> None:
        self.endpoint = endpoint
        # Told at once when the node turns out not to serve the stream (or
        # the batch), so that calls starting meanwhile do not open another.
        self._unary_only = unary_only
        self._no_batch = no_batch
        self._batched = endpoint not in no_batch
        self._call = _stream.open_stream(channel, self._batched)(metadata=metadata)
        self._ids = 0
        self._waiting: dict[int, asyncio.Future[kv_pb2.StreamResponse]] = {}
        self._deadlines = _Deadlines(asyncio.get_running_loop())
        self._outbox: collections.deque[bytes] = collections.deque()
        self._wakeup: asyncio.Future[None] | None = None
        # Set once, when the stream is over: (code, details, trailing metadata).
        self.ended: _stream.End | None = None
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._writer = loop.create_task(self._write_all())
        self._reader = loop.create_task(self._read_all())

    async def call(self, op: str, request: Any, timeout: float) -> tuple[Any, _stream.Metadata]:
        """The unary response to ``request``, sent as ``op``, and its trailing
        metadata; raises a StreamStatus as the unary call would raise its
        RpcError, or NotCarried."""
        if self.ended is not None:
            raise _stream.ended(self.endpoint, *self.ended, self._batched)
        self._ids += 1
        request_id = self._ids
        message = _stream.stream_request(request_id, op, request, timeout)
        if not _stream.fits(message):
            raise _stream.NotCarried("too large for a stream")
        answer = self._loop.create_future()
        self._waiting[request_id] = answer
        own_timer = self._deadlines.add(timeout, answer)
        self._outbox.append(_stream.batch_entry(message) if self._batched else message)
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)
        try:
            response = await answer
        finally:
            if own_timer is not None:
                own_timer.cancel()
            self._waiting.pop(request_id, None)
        return _stream.stream_result(response, op)

    def _next_message(self) -> bytes:
        """What to write next: the first request queued, or, batched, as many
        of the queued ones as one batch takes."""
        outbox = self._outbox
        if not self._batched:
            return outbox.popleft()
        batch, left, _ = _stream.take_batch(
            outbox.popleft(), lambda: outbox.popleft() if outbox else None
        )
        if left is not None:
            outbox.appendleft(left)
        return batch

    async def _write_all(self) -> None:
        outbox = self._outbox
        while True:
            while outbox:
                try:
                    await self._call.write(self._next_message())
                except (grpc.RpcError, asyncio.InvalidStateError):
                    return  # the stream is over: the reader fails the waiting calls
                except Exception:
                    # Not an end the reader would see: end the stream, so that
                    # the waiting calls fail now (and are retried) rather
                    # than at their deadlines.
                    _core.log.debug("stream to %s: write failed", self.endpoint, exc_info=True)
                    self._call.cancel()
                    return
            self._wakeup = self._loop.create_future()
            await self._wakeup

    async def _read_all(self) -> None:
        waiting = self._waiting
        code: grpc.StatusCode | None = None
        details = "the node ended the stream"
        trailing: _stream.Metadata | None = None
        try:
            while True:
                message = await self._call.read()
                if message is grpc.aio.EOF:
                    code = await self._call.code()
                    details = await self._call.details() or details
                    trailing = await self._call.trailing_metadata()
                    break
                for response in _stream.answers(message):
                    answer = waiting.get(response.id)
                    if answer is not None and not answer.done():
                        answer.set_result(response)
        except grpc.RpcError as error:
            code, details = _core.error_code(error), _core.error_details(error) or ""
            trailing = _core.error_metadata(error, "trailing")
        except asyncio.CancelledError:
            code, details = grpc.StatusCode.CANCELLED, "the client closed the stream"
        self._finish((code, details, trailing))

    def _finish(self, end: _stream.End) -> None:
        if self.ended is not None:
            return
        if self._batched and _stream.batch_downgrade(end[0], end[1]):
            self._no_batch.add(self.endpoint)
        elif end[0] == grpc.StatusCode.UNIMPLEMENTED:
            self._unary_only.add(self.endpoint)
        self.ended = end
        for answer in list(self._waiting.values()):
            if not answer.done():
                answer.set_exception(_stream.ended(self.endpoint, *end, self._batched))
        self._writer.cancel()

    async def close(self) -> None:
        self._finish((grpc.StatusCode.CANCELLED, "the client closed the stream", None))
        self._deadlines.close()
        self._call.cancel()
        self._reader.cancel()
        self._writer.cancel()
        for task in (self._reader, self._writer):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _expire(answer: asyncio.Future[Any]) -> None:
    if not answer.done():
        answer.set_exception(_stream.expired())


class _Deadlines:
    """The deadlines of one stream's calls, kept with one timer. Calls made
    with the same timeout (the client's default, most often) reach their
    deadlines in the order they began, so those queue in order and one
    timer, set for the first one still waiting, expires each in turn and
    moves on. A timer per call (armed, then cancelled when the answer
    came) cost the client 1 us of the 25 it spends on a read. A call whose
    deadline comes before the last one queued (a shorter timeout than the
    calls before it) gets a timer of its own, from ``add``."""

    # How early a timer may fire (asyncio runs a timer due within the
    # clock's resolution): a deadline that close counts as passed.
    _EARLY = time.get_clock_info("monotonic").resolution

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: collections.deque[tuple[float, asyncio.Future[Any]]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, timeout: float, answer: asyncio.Future[Any]) -> asyncio.TimerHandle | None:
        """Expire ``answer`` (StreamStatus DEADLINE_EXCEEDED) if it is not
        done ``timeout`` seconds from now; returns the call's own timer, to
        cancel once it is done, or None if it joined the queue."""
        deadline = self._loop.time() + timeout
        queue = self._queue
        while queue and queue[0][1].done():
            queue.popleft()  # answered: the queue holds about the calls in flight
        if queue and deadline < queue[-1][0]:
            return self._loop.call_at(deadline, _expire, answer)
        queue.append((deadline, answer))
        if self._timer is None or deadline < self._timer.when():
            # No timer, or one set for a call answered since whose deadline
            # is later than this one's (the queue emptied in between).
            self._arm(deadline)
        return None

    def _arm(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(deadline, self._due)

    def _due(self) -> None:
        self._timer = None
        passed = self._loop.time() + self._EARLY
        queue = self._queue
        while queue:
            deadline, answer = queue[0]
            if not answer.done():
                if deadline > passed:
                    self._arm(deadline)
                    return
                _expire(answer)
            queue.popleft()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue.clear()


class AsyncClient(AsyncRevisionsMixin, _core.ClientBase):
    """An asyncio ramraft client (grpc.aio). Use it from one event loop; many
    calls may run at once (each write has its own session sequence), and
    the calls made together share one stream message: share one client
    among a process's coroutines rather than dealing calls out to several.

    ``endpoints``: ``"host:port,host:port"`` or a list; any node will do (a
    follower forwards to the leader, and names it: the client's next writes
    go to the leader, its reads stay where it started). ``timeout``: the
    default overall deadline of each call, retries included, in seconds.
    ``attempt_timeout``: the longest a single attempt may take before the
    client tries another node (default: no limit but the deadline).
    ``client_id``: the session id (default: random). ``token``: a bearer
    token, for clusters that require one. ``tls``: TLS options
    (``TLSOptions.from_files(ca=..., cert=..., key=...)``); without it the
    connections are plaintext. ``transport``: "stream" (the default, or
    the RAMRAFT_TRANSPORT environment variable) carries the key-value calls
    over one ``KV.Stream`` per node, many at once; "unary" makes one gRPC
    call each. Both keep the same sessions, retries, deadlines and errors; a
    node that does not serve the stream gets unary calls. Every method takes
    ``timeout=`` to override the default for that call.

    Writes that raise Unavailable or DeadlineExceeded may or may not have
    been applied (see client.errors).
    """

    _streams: dict[str, _Stream]
    # The event loop the client's channels and streams belong to: the one it
    # first ran a call on (it may be built outside any loop).
    _loop: asyncio.AbstractEventLoop | None = None

    async def close(self) -> None:
        self._closed = True
        # Its watches too: each has a channel of its own, which a watch
        # dropped without aclose() would keep open.
        for watcher in list(self._watchers):
            await watcher.aclose()
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            await stream.close()
        stubs, self._stubs = self._stubs, {}
        for s in stubs.values():
            await s.channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- key-value ------------------------------------------------------------

    async def put(
        self, key: str, value: bytes | str, *, lease: int = 0, timeout: float | None = None
    ) -> int:
        """Sets ``key`` to ``value`` (attached to ``lease``, if given);
        returns the log index of the write."""
        request = _core.put_request(key, value, lease)
        response = await self._write("Put", lambda s: s.kv.Put, request, timeout)
        return response.index

    async def get(
        self,
        key: str,
        *,
        consistency: int = _core.LINEARIZABLE,
        timeout: float | None = None,
    ) -> bytes | None:
        """The value of ``key``, or None when it is absent."""
        return (await self.get_result(key, consistency=consistency, timeout=timeout)).value

    async def get_result(
        self,
        key: str,
        *,
        consistency: int = _core.LINEARIZABLE,
        timeout: float | None = None,
    ) -> GetResult:
        """Like get(), with ``found`` and the index the read was served at."""
        request = kv_pb2.GetRequest(
            key=_core.to_key(key), consistency=_core.check_consistency(consistency)
        )
        return _core.get_result(await self._call("Get", lambda s: s.kv.Get, request, timeout))

    async def delete(self, key: str, *, timeout: float | None = None) -> bool:
        """Removes ``key``; returns whether it existed."""
        request = kv_pb2.DeleteRequest(key=_core.to_key(key))
        response = await self._write("Delete", lambda s: s.kv.Delete, request, timeout)
        return response.deleted

    async def cas(
        self,
        key: str,
        expected: bytes | str | None,
        value: bytes | str,
        *,
        timeout: float | None = None,
    ) -> CasResult:
        """Sets ``key`` to ``value`` if its value is ``expected`` (None: if
        the key is absent)."""
        request = _core.cas_request(key, expected, value)
        response = await self._write(
            "CompareAndSwap", lambda s: s.kv.CompareAndSwap, request, timeout
        )
        return _core.cas_result(response)

    async def range(
        self,
        prefix: str = "",
        *,
        start_after: str = "",
        limit: int = 0,
        consistency: int = _core.LINEARIZABLE,
        timeout: float | None = None,
    ) -> RangePage:
        """One page of keys starting with ``prefix``, after ``start_after``,
        at most ``limit`` (0: the server's page size)."""
        request = kv_pb2.RangeRequest(
            prefix=_core.to_key(prefix),
            start_after=_core.to_key(start_after),
            limit=_core.to_int(limit, "limit", _core.UINT32),
            consistency=_core.check_consistency(consistency),
        )
        return _core.range_page(await self._call("Range", lambda s: s.kv.Range, request, timeout))

    async def scan(
        self,
        prefix: str = "",
        *,
        page_size: int = 0,
        consistency: int = _core.LINEARIZABLE,
        timeout: float | None = None,
    ) -> AsyncIterator[tuple[str, bytes]]:
        """Every (key, value) with ``prefix``, fetched page by page (each page
        is one read with its own deadline; pages may come from different
        points in time)."""
        after = ""
        while True:
            page = await self.range(
                prefix,
                start_after=after,
                limit=page_size,
                consistency=consistency,
                timeout=timeout,
            )
            for item in page.items:
                yield item
            if not page.more or not page.items:
                return
            after = page.items[-1][0]

    # -- admin ------------------------------------------------------------------

    async def status(
        self, *, endpoint: str | None = None, timeout: float | None = None
    ) -> admin_pb2.StatusResponse:
        """The status of one node (``endpoint``, or whichever answers) and of
        the members as the leader sees them."""
        return await self._call(
            "Status", lambda s: s.admin.Status, admin_pb2.StatusRequest(), timeout, endpoint
        )

    async def members(self, *, timeout: float | None = None) -> list[admin_pb2.Member]:
        r = await self._call(
            "Members", lambda s: s.admin.Members, admin_pb2.MembersRequest(), timeout
        )
        return list(r.members)

    async def transfer_leadership(self, target: str = "", *, timeout: float | None = None) -> str:
        """Hands leadership to ``target`` (default: the most caught-up voter);
        returns the new leader's id."""
        request = admin_pb2.TransferLeadershipRequest(target=target)
        r = await self._call(
            "TransferLeadership", lambda s: s.admin.TransferLeadership, request, timeout
        )
        return r.leader

    async def add_member(
        self, node_id: str, address: str, *, timeout: float | None = None
    ) -> list[admin_pb2.Member]:
        """Adds a node (as a learner, promoted to voter once caught up);
        returns the membership after the change."""
        _core.parse_endpoints([address])
        request = admin_pb2.AddMemberRequest(id=node_id, address=address)
        return list(
            (await self._call("AddMember", lambda s: s.admin.AddMember, request, timeout)).members
        )

    async def remove_member(
        self, node_id: str, *, timeout: float | None = None
    ) -> list[admin_pb2.Member]:
        request = admin_pb2.RemoveMemberRequest(id=node_id)
        r = await self._call("RemoveMember", lambda s: s.admin.RemoveMember, request, timeout)
        return list(r.members)

    async def snapshot(self, *, endpoint: str | None = None, timeout: float | None = None) -> int:
        """Makes one node (``endpoint``, or whichever answers) snapshot now;
        returns the index the snapshot covers."""
        r = await self._call(
            "Snapshot", lambda s: s.admin.Snapshot, admin_pb2.SnapshotRequest(), timeout, endpoint
        )
        return r.index

    # -- blobs ----------------------------------------------------------------

    async def put_blob(
        self,
        data: _blobs.BlobSource | AsyncIterable[bytes],
        *,
        content_type: str | None = None,
        timeout: float | None = None,
    ) -> _blobs.BlobInfo:
        """Uploads a blob (see ``Client.put_blob``; ``data`` may also be an
        async iterable of bytes). Files are read in a worker thread."""
        upload = _blobs.Upload(data, content_type)
        attempts = _blobs.Attempts(self.endpoints, timeout)
        while True:
            target = attempts.next()
            stub = blobs_pb2_grpc.BlobsServiceStub(self._stubs_for(target).channel)
            try:
                response = await stub.PutBlob(
                    upload.requests_async(),
                    timeout=max(0.001, attempts.remaining()),
                    metadata=self._metadata,
                )
            except asyncio.CancelledError:
                # gRPC cancels the call when reading the data fails, and the
                # awaiting caller gets CancelledError, as if it was cancelled.
                if upload.failure is not None:
                    raise upload.failure from None
                raise
            except grpc.RpcError as error:
                if upload.failure is not None:  # reading the data failed, not the node
                    raise upload.failure from None
                if not attempts.retry(error, upload.replayable):
                    raise _core.error_from("PutBlob", error, target) from None
                await asyncio.sleep(attempts.pause())
                continue
            return _blobs.info_from(response.blob, response.index)

    async def read_blob(
        self,
        ref: object,
        out: _blobs.Writable | str | os.PathLike[str],
        *,
        offset: int = 0,
        length: int | None = None,
        timeout: float | None = None,
    ) -> _blobs.BlobInfo:
        """Downloads a blob into a binary file or a path (see
        ``Client.read_blob``)."""
        digest = _blobs.blob_ref(ref)
        output = _blobs.Output(out)
        try:
            info = await self._download(digest, output.write, offset, length, timeout)
            await asyncio.to_thread(output.done)
        except BaseException:
            output.abandon()
            raise
        return info

    async def get_blob(self, ref: object, *, timeout: float | None = None) -> bytes:
        """A whole blob as bytes (for small ones: ``read_blob`` streams)."""
        buffer = io.BytesIO()
        await self.read_blob(ref, buffer, timeout=timeout)
        return buffer.getvalue()

    async def blob_info(self, ref: object, *, timeout: float | None = None) -> _blobs.BlobInfo:
        """What a blob is (size, content type); raises NotFound."""
        digest = _blobs.blob_ref(ref)
        return await self._download(digest, lambda _: None, _blobs.INFO_ONLY_OFFSET, None, timeout)

    async def delete_blob(self, ref: object, *, timeout: float | None = None) -> bool:
        """Deletes a blob from every node; False if there was none."""
        request = blobs_pb2.DeleteBlobRequest(sha256=_blobs.blob_ref(ref))
        attempts = _blobs.Attempts(self.endpoints, self.timeout if timeout is None else timeout)
        while True:
            target = attempts.next()
            stub = blobs_pb2_grpc.BlobsServiceStub(self._stubs_for(target).channel)
            try:
                response = await stub.DeleteBlob(
                    request, timeout=max(0.001, attempts.remaining()), metadata=self._metadata
                )
            except grpc.RpcError as error:
                if not attempts.retry(error):
                    raise _core.error_from("DeleteBlob", error, target) from None
                await asyncio.sleep(attempts.pause())
                continue
            return bool(response.deleted)

    async def _download(
        self,
        digest: str,
        write: Callable[[bytes], object],
        offset: int,
        length: int | None,
        timeout: float | None,
    ) -> _blobs.BlobInfo:
        attempts = _blobs.Attempts(self.endpoints, timeout)
        info: _blobs.BlobInfo | None = None
        received = 0
        while True:
            target = attempts.next()
            stub = blobs_pb2_grpc.BlobsServiceStub(self._stubs_for(target).channel)
            left = None if length is None else length - received
            call = stub.GetBlob(
                _blobs.get_request(digest, offset + received, left),
                timeout=max(0.001, attempts.remaining()),
                metadata=self._metadata,
            )
            try:
                async for message in call:
                    if info is None and message.HasField("blob"):
                        info = _blobs.info_from(message.blob)
                    if message.data:
                        await asyncio.to_thread(write, message.data)
                        received += len(message.data)
            except grpc.RpcError as error:
                if not attempts.retry(error):
                    raise _core.error_from("GetBlob", error, target) from None
                await asyncio.sleep(attempts.pause())
                continue
            if info is None:
                raise Unavailable(f"{target} ended the download before saying what the blob is")
            return info

    # -- machinery ----------------------------------------------------------------

    def _channel(self, endpoint: str) -> grpc.aio.Channel:
        if self._tls is None or self._credentials is None:
            return grpc.aio.insecure_channel(endpoint, options=_core.CHANNEL_OPTIONS)
        return grpc.aio.secure_channel(
            endpoint, self._credentials, options=self._tls.channel_options()
        )

    def _same_loop(self) -> None:
        """Refuse a call from another event loop than the client's: grpc.aio
        channels and the client's streams belong to one loop, and on another
        fail with "Event loop is closed" or hang (the second asyncio.run)."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError(
                "this AsyncClient belongs to the event loop it first ran on: "
                "make one client per event loop (e.g. per asyncio.run)"
            )

    def _stubs_for(self, endpoint: str) -> _Stubs:
        self._same_loop()
        stubs = self._stubs.get(endpoint)
        if stubs is None:
            if self._closed:
                raise RuntimeError("the client is closed")
            channel = self._channel(endpoint)
            stubs = self._stubs[endpoint] = _Stubs(channel)
        return stubs

    def _stream_to(self, endpoint: str) -> _Stream:
        self._same_loop()
        stream = self._streams.get(endpoint)
        if stream is None or stream.ended is not None:
            stubs = self._stubs_for(endpoint)
            stream = self._streams[endpoint] = _Stream(
                stubs.channel, endpoint, self._metadata, self._unary_only, self._no_batch
            )
        return stream

    async def _attempt(
        self,
        method: str,
        rpc: Callable[[_Stubs], grpc.aio.UnaryUnaryMultiCallable[Req, Resp]],
        request: Req,
        target: str,
        timeout: float,
    ) -> tuple[Resp, _stream.Metadata | None]:
        """One attempt at ``target``: over its stream when the call has a
        stream form, else (or when the stream cannot carry it) unary."""
        op = _stream.op_for(method, self.transport)
        while op is not None and target not in self._unary_only:
            started = time.monotonic()
            try:
                return await self._stream_to(target).call(op, request, timeout)
            except _stream.NotCarried as e:
                timeout = max(0.001, timeout - (time.monotonic() - started))
                if not isinstance(e, _stream.BatchRefused):
                    break  # else again, over KV.Stream (at most once: see _Stream)
        call = rpc(self._stubs_for(target))(request, timeout=timeout, metadata=self._metadata)
        response = await call
        return response, await call.trailing_metadata()

    async def _write(
        self,
        method: str,
        rpc: Callable[[_Stubs], grpc.aio.UnaryUnaryMultiCallable[Req, Resp]],
        request: Any,
        timeout: float | None,
    ) -> Resp:
        total = self.timeout if timeout is None else _core.check_timeout(timeout)
        deadline = time.monotonic() + total
        ticket = self._sessions.begin()
        try:
            return await self._call(method, rpc, request, total, session=ticket)
        except FailedPrecondition as error:
            ticket, left = _core.renew_after_expiry(self._sessions, ticket, error, method, deadline)
            return await self._call(method, rpc, request, left, session=ticket)
        finally:
            self._sessions.end(ticket)

    async def _call(
        self,
        method: str,
        rpc: Callable[[_Stubs], grpc.aio.UnaryUnaryMultiCallable[Req, Resp]],
        request: Req,
        timeout: float | None,
        endpoint: str | None = None,
        *,
        session: Ticket | None = None,
    ) -> Resp:
        if endpoint is not None:
            (endpoint,) = _core.parse_endpoints([endpoint])
        attempts = CallAttempts(
            self._ring,
            self.timeout if timeout is None else _core.check_timeout(timeout),
            self._policy,
            self._rng,
            pinned=endpoint,
            method=method,
            sequence=session.sequence if session is not None else None,
            write=session is not None,
        )
        while True:
            target, attempt_timeout = attempts.next()
            if session is not None:
                request.session.CopyFrom(self._sessions.session(session))  # type: ignore[attr-defined]
            try:
                response, trailing = await self._attempt(
                    method, rpc, request, target, attempt_timeout
                )
            except grpc.RpcError as error:
                pause = attempts.failed(target, error)
                if pause > 0:
                    await asyncio.sleep(pause)
                continue
            attempts.succeeded(trailing)
            return response

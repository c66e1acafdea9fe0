"""The blocking client."""

from __future__ import annotations

import io
import itertools
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Protocol, TypeVar

import grpc

from ramraft.client import _blobs, _core, _stream
from ramraft.client._core import (
    CallAttempts,
    CasResult,
    GetResult,
    RangePage,
    Ticket,
)
from ramraft.client._sync_revisions import RevisionsMixin
from ramraft.client.errors import DeadlineExceeded, FailedPrecondition, Unavailable
from ramraft.proto import (
    admin_pb2,
    admin_pb2_grpc,
    blobs_pb2,
    blobs_pb2_grpc,
    kv_pb2,
    kv_pb2_grpc,
)

__all__ = ["Client"]

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class _Stubs:
    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.kv = kv_pb2_grpc.KVStub(channel)
        self.admin = admin_pb2_grpc.AdminStub(channel)


class _Answer:
    """Where the reader thread leaves one request's answer; the caller waits
    on the lock, which starts held and is released once the answer is in."""

    __slots__ = ("error", "lock", "response")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.response: kv_pb2.StreamResponse | None = None
        self.error: BaseException | None = None


_END_OF_REQUESTS: Any = object()

# How long the next batch may wait for the callers of the last one to come
# back (see _Stream).
GATHER_SECONDS = 0.001

# Refusals another node would repeat (every node has the same tokens and
# limits): a backup does not go on to the next node after them.
_FINAL_FOR_EVERY_NODE = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
    }
)


class _Stream:
    """One ``KV.StreamBatch`` (or ``KV.Stream``, where the node serves no
    batches) to one node, shared by the threads that call the client: each
    request gets an id, a reader thread hands each answer to the thread
    waiting for it. gRPC's own thread sends the requests from a queue, all
    those queued while it sent the last message in the next one. See
    client/_stream.py for what an answer, a timeout and the stream's end
    mean.

    Threads come back one by one: the answers of a batch wake its callers
    in turn, each needing the GIL, so the first of them to call again would
    leave in a message nearly alone. A batch therefore waits up to
    GATHER_SECONDS for as many requests as the last batch held (a lone
    caller's never waits): 16 threads writing 2,500-2,700 -> 3,200-3,900/s,
    64 threads 5,200-5,500 -> 5,800-6,300/s, with 6 and 20 requests per
    message before, 15 and 28 after."""

    def __init__(
        self,
        channel: grpc.Channel,
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
        self._outbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self._last_batch = 1  # requests in the last batch sent
        self._gathered = threading.Condition(threading.Lock())
        self._ids = itertools.count(1)  # next() is atomic in CPython
        self._waiting: dict[int, _Answer] = {}
        # Set once, when the stream is over: (code, details, trailing metadata).
        self.ended: _stream.End | None = None
        self._call = _stream.open_stream(channel, self._batched)(
            self._messages(), metadata=metadata
        )
        self._reader = threading.Thread(
            target=self._read_all, name=f"ramraft-stream-{endpoint}", daemon=True
        )
        self._reader.start()

    def _messages(self) -> Iterator[bytes]:
        """The messages to send (gRPC's thread takes the next one once it
        has sent the last): each queued request, or, batched, all those
        queued meanwhile (up to one batch's limits)."""
        outbox = self._outbox
        held: bytes | None = None
        while True:
            first = held if held is not None else outbox.get()
            held = None
            if first is _END_OF_REQUESTS:
                return
            if not self._batched:
                yield first
                continue
            self._gather()
            batch, held, self._last_batch = _stream.take_batch(first, self._queued)
            yield batch

    def _gather(self) -> None:
        """With one request taken: wait (GATHER_SECONDS at most) until the
        queue holds as many as the last batch did."""
        want = self._last_batch
        outbox = self._outbox
        if want > 1 and outbox.qsize() + 1 < want:
            with self._gathered:
                self._gathered.wait_for(lambda: outbox.qsize() + 1 >= want, GATHER_SECONDS)

    def _enqueue(self, entry: bytes) -> None:
        self._outbox.put(entry)
        want = self._last_batch
        if want > 1 and self._outbox.qsize() + 1 >= want:
            with self._gathered:
                self._gathered.notify()

    def _queued(self) -> Any:
        """The next request queued (or the end of them), None if none is."""
        try:
            return self._outbox.get_nowait()
        except queue.Empty:
            return None

    def call(self, op: str, request: Any, timeout: float) -> tuple[Any, _stream.Metadata]:
        """As client/_async.py _Stream.call, blocking."""
        if self.ended is not None:
            raise _stream.ended(self.endpoint, *self.ended, self._batched)
        request_id = next(self._ids)
        message = _stream.stream_request(request_id, op, request, timeout)
        if not _stream.fits(message):
            raise _stream.NotCarried("too large for a stream")
        answer = _Answer()
        self._waiting[request_id] = answer
        ended = self._ended()
        if ended is not None and self._waiting.pop(request_id, None) is not None:
            # The reader failed the waiting calls before this one was added.
            raise _stream.ended(self.endpoint, *ended, self._batched)
        self._enqueue(_stream.batch_entry(message) if self._batched else message)
        if not answer.lock.acquire(timeout=timeout):
            if self._waiting.pop(request_id, None) is not None:
                raise _stream.expired()
            answer.lock.acquire()  # the reader is handing the answer over right now
        if answer.error is not None:
            raise answer.error
        assert answer.response is not None
        return _stream.stream_result(answer.response, op)

    def _ended(self) -> _stream.End | None:
        return self.ended  # read again: the reader thread may have set it meanwhile

    def _read_all(self) -> None:
        code: grpc.StatusCode | None = None
        details = "the node ended the stream"
        trailing: _stream.Metadata | None = None
        try:
            for message in self._call:
                for response in _stream.answers(message):
                    answer = self._waiting.pop(response.id, None)
                    if answer is not None:
                        answer.response = response
                        answer.lock.release()
            code, details = self._call.code(), self._call.details() or details
            trailing = self._call.trailing_metadata()
        except grpc.RpcError as error:
            code, details = _core.error_code(error), _core.error_details(error) or ""
            trailing = _core.error_metadata(error, "trailing")
        if self._batched and _stream.batch_downgrade(code, details):
            self._no_batch.add(self.endpoint)
        elif code == grpc.StatusCode.UNIMPLEMENTED:
            self._unary_only.add(self.endpoint)
        self.ended = (code, details, trailing)
        # gRPC's thread that sends the requests waits on the queue until told
        # there are none left: without this, every stream that broke (a node
        # down, each reconnection attempt) would keep a thread for good.
        self._outbox.put(_END_OF_REQUESTS)
        for request_id in list(self._waiting):
            answer = self._waiting.pop(request_id, None)
            if answer is not None:
                answer.error = _stream.ended(self.endpoint, *self.ended, self._batched)
                answer.lock.release()

    def close(self) -> None:
        self._outbox.put(_END_OF_REQUESTS)
        self._call.cancel()


class Client(RevisionsMixin, _core.ClientBase):
    """A blocking ramraft client; safe to share between threads.

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
    over one ``KV.Stream`` per node, shared by all threads; "unary" makes
    one gRPC call each. Both keep the same sessions, retries, deadlines and
    errors; a node that does not serve the stream gets unary calls. Every
    method takes ``timeout=`` to override the default for that call.

    Writes that raise Unavailable or DeadlineExceeded may or may not have
    been applied (see client.errors).
    """

    _streams: dict[str, _Stream]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            streams, self._streams = self._streams, {}
            stubs, self._stubs = self._stubs, {}
            watchers = list(self._watchers)
        for watcher in watchers:
            watcher.close()
        for stream in streams.values():
            stream.close()
        for s in stubs.values():
            s.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- key-value ------------------------------------------------------------

    def put(
        self, key: str, value: bytes | str, *, lease: int = 0, timeout: float | None = None
    ) -> int:
        """Sets ``key`` to ``value`` (attached to ``lease``, if given);
        returns the log index of the write."""
        request = _core.put_request(key, value, lease)
        response = self._write("Put", lambda s: s.kv.Put, request, timeout)
        return response.index

    def get(
        self,
        key: str,
        *,
        consistency: int = _core.LINEARIZABLE,
        timeout: float | None = None,
    ) -> bytes | None:
        """The value of ``key``, or None when it is absent."""
        return self.get_result(key, consistency=consistency, timeout=timeout).value

    def get_result(
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
        return _core.get_result(self._call("Get", lambda s: s.kv.Get, request, timeout))

    def delete(self, key: str, *, timeout: float | None = None) -> bool:
        """Removes ``key``; returns whether it existed."""
        request = kv_pb2.DeleteRequest(key=_core.to_key(key))
        return self._write("Delete", lambda s: s.kv.Delete, request, timeout).deleted

    def cas(
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
        response = self._write("CompareAndSwap", lambda s: s.kv.CompareAndSwap, request, timeout)
        return _core.cas_result(response)

    def range(
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
        return _core.range_page(self._call("Range", lambda s: s.kv.Range, request, timeout))

    def scan(
        self,
        prefix: str = "",
        *,
        page_size: int = 0,
        consistency: int = _core.LINEARIZABLE,
        timeout: float | None = None,
    ) -> Iterator[tuple[str, bytes]]:
        """Every (key, value) with ``prefix``, fetched page by page (each page
        is one read with its own deadline; pages may come from different
        points in time)."""
        after = ""
        while True:
            page = self.range(
                prefix,
                start_after=after,
                limit=page_size,
                consistency=consistency,
                timeout=timeout,
            )
            yield from page.items
            if not page.more or not page.items:
                return
            after = page.items[-1][0]

    # -- admin ------------------------------------------------------------------

    def status(
        self, *, endpoint: str | None = None, timeout: float | None = None
    ) -> admin_pb2.StatusResponse:
        """The status of one node (``endpoint``, or whichever answers) and of
        the members as the leader sees them."""
        return self._call(
            "Status", lambda s: s.admin.Status, admin_pb2.StatusRequest(), timeout, endpoint
        )

    def members(self, *, timeout: float | None = None) -> list[admin_pb2.Member]:
        r = self._call("Members", lambda s: s.admin.Members, admin_pb2.MembersRequest(), timeout)
        return list(r.members)

    def transfer_leadership(self, target: str = "", *, timeout: float | None = None) -> str:
        """Hands leadership to ``target`` (default: the most caught-up voter);
        returns the new leader's id."""
        request = admin_pb2.TransferLeadershipRequest(target=target)
        r = self._call("TransferLeadership", lambda s: s.admin.TransferLeadership, request, timeout)
        return r.leader

    def add_member(
        self, node_id: str, address: str, *, timeout: float | None = None
    ) -> list[admin_pb2.Member]:
        """Adds a node (as a learner, promoted to voter once caught up);
        returns the membership after the change."""
        _core.parse_endpoints([address])
        request = admin_pb2.AddMemberRequest(id=node_id, address=address)
        return list(self._call("AddMember", lambda s: s.admin.AddMember, request, timeout).members)

    def remove_member(
        self, node_id: str, *, timeout: float | None = None
    ) -> list[admin_pb2.Member]:
        request = admin_pb2.RemoveMemberRequest(id=node_id)
        r = self._call("RemoveMember", lambda s: s.admin.RemoveMember, request, timeout)
        return list(r.members)

    def snapshot(self, *, endpoint: str | None = None, timeout: float | None = None) -> int:
        """Makes one node (``endpoint``, or whichever answers) snapshot now;
        returns the index the snapshot covers."""
        r = self._call(
            "Snapshot", lambda s: s.admin.Snapshot, admin_pb2.SnapshotRequest(), timeout, endpoint
        )
        return r.index

    def set_upgrade_hold(self, hold: bool, *, timeout: float | None = None) -> int:
        """Holds back (True) or releases (False) automatic application
        version switches; returns the index of the entry that did it."""
        request = admin_pb2.SetUpgradeHoldRequest(hold=hold)
        r = self._call("SetUpgradeHold", lambda s: s.admin.SetUpgradeHold, request, timeout)
        return r.index

    def check_state(self, *, timeout: float | None = None) -> admin_pb2.CheckStateResponse:
        """Runs a state check now (every node digests its state at one log
        index; the leader compares): the digests and the diverged nodes."""
        request = admin_pb2.CheckStateRequest()
        return self._call("CheckState", lambda s: s.admin.CheckState, request, timeout)

    def backup(
        self,
        write: Callable[[bytes], object],
        *,
        endpoint: str | None = None,
        timeout: float | None = None,
        stall_timeout: float | None = None,
        on_info: Callable[[admin_pb2.BackupInfo], None] | None = None,
    ) -> admin_pb2.BackupInfo:
        """Streams a backup file from one node into ``write``; returns what
        the backup is of. A backup takes as long as its size needs, so no
        deadline covers the whole stream: ``timeout`` (default: the
        client's) bounds the wait for it to begin (nodes are tried in turn
        until one starts it, each for at most the client's
        ``attempt_timeout``), and ``stall_timeout`` (default: the larger of
        ``timeout`` and 30 s) any wait for its next piece. A stream that
        breaks or stalls after it began raises (what was written is no
        backup)."""
        total = self.timeout if timeout is None else _core.check_timeout(timeout)
        stall = max(total, 30.0) if stall_timeout is None else _core.check_timeout(stall_timeout)
        deadline = time.monotonic() + total
        targets = [_core.parse_endpoints([endpoint])[0]] if endpoint else list(self.endpoints)
        last: tuple[grpc.RpcError, str] | None = None
        for target in targets:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if self._policy.attempt_timeout is not None:
                left = min(left, self._policy.attempt_timeout)
            stream = self._stubs_for(target).admin.Backup(
                admin_pb2.BackupRequest(), metadata=self._metadata
            )
            info: admin_pb2.BackupInfo | None = None
            with _Watchdog(stream, left) as watchdog:
                try:
                    for message in stream:
                        if info is None:
                            info = message.info
                            if on_info is not None:
                                on_info(info)
                        write(message.data)
                        watchdog.rearm(stall)
                except grpc.RpcError as error:
                    if watchdog.fired and info is None:
                        continue  # no answer in time: try the next node
                    if watchdog.fired:
                        raise DeadlineExceeded(
                            f"Backup: no data from {target} for {stall:g} s: the backup stalled",
                            endpoint=target,
                        ) from None
                    if info is not None:  # broken mid-file: what was written is no backup
                        raise _core.error_from("Backup", error, target) from None
                    if _core.error_code(error) in _FINAL_FOR_EVERY_NODE:
                        raise _core.error_from("Backup", error, target) from None
                    last = (error, target)
                    continue
                except BaseException:
                    stream.cancel()  # e.g. ``write`` failed: the node stops too
                    raise
            if info is None:
                raise Unavailable(f"{target} ended the backup stream before sending anything")
            return info
        if last is None:
            raise DeadlineExceeded(f"Backup: no node started the backup within {total:g} s")
        raise _core.error_from("Backup", *last) from None

    # -- blobs ----------------------------------------------------------------

    def put_blob(
        self,
        data: _blobs.BlobSource,
        *,
        content_type: str | None = None,
        timeout: float | None = None,
    ) -> _blobs.BlobInfo:
        """Uploads a blob: bytes, a path, a binary file or an iterable of
        bytes (streamed, never read whole). Returns it (``str(info)`` is its
        SHA-256) once a majority of the nodes hold it. ``content_type``:
        default guessed from a path's name, else application/octet-stream.
        Default deadline: 10 minutes (``_blobs.BLOB_TIMEOUT``)."""
        upload = _blobs.Upload(data, content_type)
        attempts = _blobs.Attempts(self.endpoints, timeout)
        while True:
            target = attempts.next()
            stub = blobs_pb2_grpc.BlobsServiceStub(self._stubs_for(target).channel)
            try:
                response = stub.PutBlob(
                    upload.requests(),
                    timeout=max(0.001, attempts.remaining()),
                    metadata=self._metadata,
                )
            except grpc.RpcError as error:
                if upload.failure is not None:  # reading the data failed, not the node
                    raise upload.failure from None
                if not attempts.retry(error, upload.replayable):
                    raise _core.error_from("PutBlob", error, target) from None
                time.sleep(attempts.pause())
                continue
            return _blobs.info_from(response.blob, response.index)

    def read_blob(
        self,
        ref: object,
        out: _blobs.Writable | str | os.PathLike[str],
        *,
        offset: int = 0,
        length: int | None = None,
        timeout: float | None = None,
    ) -> _blobs.BlobInfo:
        """Downloads a blob (from ``offset``, ``length`` bytes at most) into
        a binary file (anything with ``write``), or into a path (written
        whole or not at all). A
        broken download goes on where it stopped, on another node."""
        digest = _blobs.blob_ref(ref)
        output = _blobs.Output(out)
        try:
            info = self._download(digest, output.write, offset, length, timeout)
            output.done()
        except BaseException:
            output.abandon()
            raise
        return info

    def get_blob(self, ref: object, *, timeout: float | None = None) -> bytes:
        """A whole blob as bytes (for small ones: ``read_blob`` streams)."""
        buffer = io.BytesIO()
        self.read_blob(ref, buffer, timeout=timeout)
        return buffer.getvalue()

    def blob_info(self, ref: object, *, timeout: float | None = None) -> _blobs.BlobInfo:
        """What a blob is (size, content type); raises NotFound."""
        digest = _blobs.blob_ref(ref)
        return self._download(digest, lambda _: None, _blobs.INFO_ONLY_OFFSET, None, timeout)

    def delete_blob(self, ref: object, *, timeout: float | None = None) -> bool:
        """Deletes a blob from every node; False if there was none (refused
        with FailedPrecondition while the application refers to it)."""
        request = blobs_pb2.DeleteBlobRequest(sha256=_blobs.blob_ref(ref))
        attempts = _blobs.Attempts(self.endpoints, self.timeout if timeout is None else timeout)
        while True:
            target = attempts.next()
            stub = blobs_pb2_grpc.BlobsServiceStub(self._stubs_for(target).channel)
            try:
                response = stub.DeleteBlob(
                    request, timeout=max(0.001, attempts.remaining()), metadata=self._metadata
                )
            except grpc.RpcError as error:
                if not attempts.retry(error):
                    raise _core.error_from("DeleteBlob", error, target) from None
                time.sleep(attempts.pause())
                continue
            return bool(response.deleted)

    def _download(
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
            try:
                for message in stub.GetBlob(
                    _blobs.get_request(digest, offset + received, left),
                    timeout=max(0.001, attempts.remaining()),
                    metadata=self._metadata,
                ):
                    if info is None and message.HasField("blob"):
                        info = _blobs.info_from(message.blob)
                    if message.data:
                        write(message.data)
                        received += len(message.data)
            except grpc.RpcError as error:
                if not attempts.retry(error):
                    raise _core.error_from("GetBlob", error, target) from None
                time.sleep(attempts.pause())
                continue
            if info is None:
                raise Unavailable(f"{target} ended the download before saying what the blob is")
            return info

    # -- machinery ----------------------------------------------------------------

    def _channel(self, endpoint: str) -> grpc.Channel:
        if self._tls is None or self._credentials is None:
            return grpc.insecure_channel(endpoint, options=_core.CHANNEL_OPTIONS)
        return grpc.secure_channel(endpoint, self._credentials, options=self._tls.channel_options())

    def _stubs_for(self, endpoint: str) -> _Stubs:
        stubs = self._stubs.get(endpoint)
        if stubs is None:
            with self._lock:
                if self._closed:
                    raise RuntimeError("the client is closed")
                stubs = self._stubs.get(endpoint)
                if stubs is None:
                    channel = self._channel(endpoint)
                    stubs = self._stubs[endpoint] = _Stubs(channel)
        return stubs

    def _stream_to(self, endpoint: str) -> _Stream:
        stream = self._streams.get(endpoint)
        if stream is None or stream.ended is not None:
            stubs = self._stubs_for(endpoint)
            with self._lock:
                stream = self._streams.get(endpoint)
                if stream is None or stream.ended is not None:
                    if self._closed:
                        raise RuntimeError("the client is closed")
                    stream = self._streams[endpoint] = _Stream(
                        stubs.channel, endpoint, self._metadata, self._unary_only, self._no_batch
                    )
        return stream

    def _attempt(
        self,
        method: str,
        rpc: Callable[[_Stubs], grpc.UnaryUnaryMultiCallable[Req, Resp]],
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
                return self._stream_to(target).call(op, request, timeout)
            except _stream.NotCarried as e:
                timeout = max(0.001, timeout - (time.monotonic() - started))
                if not isinstance(e, _stream.BatchRefused):
                    break  # else again, over KV.Stream (at most once: see _Stream)
        response, call = rpc(self._stubs_for(target)).with_call(
            request, timeout=timeout, metadata=self._metadata
        )
        return response, call.trailing_metadata()

    def _write(
        self,
        method: str,
        rpc: Callable[[_Stubs], grpc.UnaryUnaryMultiCallable[Req, Resp]],
        request: Any,
        timeout: float | None,
    ) -> Resp:
        total = self.timeout if timeout is None else _core.check_timeout(timeout)
        deadline = time.monotonic() + total
        ticket = self._sessions.begin()
        try:
            return self._call(method, rpc, request, total, session=ticket)
        except FailedPrecondition as error:
            ticket, left = _core.renew_after_expiry(self._sessions, ticket, error, method, deadline)
            return self._call(method, rpc, request, left, session=ticket)
        finally:
            self._sessions.end(ticket)

    def _call(
        self,
        method: str,
        rpc: Callable[[_Stubs], grpc.UnaryUnaryMultiCallable[Req, Resp]],
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
                response, trailing = self._attempt(method, rpc, request, target, attempt_timeout)
            except grpc.RpcError as error:
                pause = attempts.failed(target, error)
                if pause > 0:
                    time.sleep(pause)
                continue
            attempts.succeeded(trailing)
            return response


class _Cancellable(Protocol):
    def cancel(self) -> Any: ...


class _Watchdog:
    """Cancels ``call`` when it is not re-armed in time: a deadline that
    moves forward with every piece of a stream (a deadline for the whole
    call would cut a large backup short)."""

    def __init__(self, call: _Cancellable, seconds: float) -> None:
        self._call = call
        self._cond = threading.Condition()
        self._due = time.monotonic() + seconds
        self._stopped = False
        self.fired = False
        self._thread = threading.Thread(target=self._run, name="backup-watchdog", daemon=True)
        self._thread.start()

    def rearm(self, seconds: float) -> None:
        with self._cond:
            self._due = time.monotonic() + seconds

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                left = self._due - time.monotonic()
                if left <= 0:
                    self.fired = True
                    self._call.cancel()
                    return
                self._cond.wait(left)

    def __enter__(self) -> _Watchdog:
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join()

"""A node's blobs: what applications (``ctx.blobs``), the Blobs service, the
web tier and the peers call.

Putting a blob (:meth:`NodeBlobs.put`)
    1. The bytes stream into a temporary file (store.py), hashed as they
       come, then fsynced. Nothing is proposed for a blob that did not arrive
       whole.
    2. The catalog records it: a ``blob put`` entry goes through the log (the
       leader proposes it; a follower forwards it) and is applied HERE before
       anything else happens. From that index on, no deletion decided
       earlier in the log can touch the blob, and a collection decided later
       keeps it for the grace period (machines/blobs.py).
    3. The temporary file is renamed to its digest (the ordered file thread,
       after any deletion asked for by earlier entries).
    4. Every other member is asked to hold it (``Peer.HoldBlob``): each
       applies the log up to the put entry, fetches the bytes from this node
       (``Peer.ReadBlob``) unless it has them, checks them against the
       digest, fsyncs and renames. The put is answered once a majority of the
       voters (this node included) hold it; the other members go on in the
       background. A node of an earlier release answers UNIMPLEMENTED and
       counts as not holding it.

    A put that fails after step 2 leaves the blob recorded; the members that
    lack it fetch it in the background. Putting the same bytes again is the
    same blob: the retry is safe.

Nodes that lack a blob
    A node that was down, or restored from a snapshot, learns from the
    catalog which blobs exist. It fetches each missing one from a peer in the
    background (a few seconds after it noticed, so that it does not race the
    uploader's own replication), and at once when a read needs it.

Deleting
    Only through the log: an explicit delete, or a collect entry that the
    leader proposes every ``gc_interval`` seconds (machines/blobs.py decides
    what goes, the same on every node). The files go when the entry is
    applied. Entries that were already in this node's log when it started
    are being *replayed*: their deletions are skipped (a blob put again
    after such a deletion must not lose its only copies when a whole cluster
    restarts), and the next collect entry that is new to this node removes
    whatever file no catalog entry names.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
import time
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Coroutine, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import grpc
import structlog

from ramraft.consensus import Role
from ramraft.proto import raft_pb2
from ramraft.server.blobs.store import PIECE, BlobFile, BlobStore, Incoming
from ramraft.server.machines.blobs import (
    BLOBS_KV_VERSION,
    DEFAULT_CONTENT_TYPE,
    BlobCatalog,
    BlobEntry,
    BlobRef,
    CatalogListener,
    blobs_not_active,
    check_content_type,
    parse_sha256,
)
from ramraft.server.machines.cluster import (
    encode_blob_collect,
    encode_blob_delete,
    encode_blob_put,
)
from ramraft.server.machines.embed import CommandFailedError
from ramraft.server.machines.statemachine import CommandError, ErrorCode
from ramraft.server.request_errors import (
    BadRequest,
    CommandRefused,
    InsufficientStorage,
    NotFound,
    RequestError,
    Unavailable,
    error_message,
    wire_status,
)
from ramraft.server.runtime.deadline import Deadline

if TYPE_CHECKING:
    from ramraft.server.runtime.loop import RaftRuntime
    from ramraft.server.runtime.node_api import NodeAPI

log = structlog.get_logger("ramraft.blobs")

PEER_SERVICE = "ramraft.peer.v1.Peer"
PUT_TIMEOUT = 600.0  # seconds a put may take when the caller gives no deadline
REPAIR_DELAY = 2.0  # seconds a blob must have been missing before the background fetches it
REPAIR_INTERVAL = 1.0
REPAIR_PARALLEL = 2
RETRY_MAX = 60.0  # seconds between attempts at a blob no member could send
FETCH_BYTES_PER_SECOND = 1 << 20  # the slowest transfer a fetch's deadline allows for


def _identity(data: bytes) -> bytes:
    return data


@dataclass(frozen=True)
class BlobSettings:
    """How a node treats blobs (server/config.py BlobConfig gives them)."""

    gc_interval: float = 600.0
    """Seconds between the leader's collect entries (0: none)."""
    gc_grace: float = 3600.0
    """Seconds a blob stays after its last put or last reference."""
    peer_chunk_bytes: int = PIECE
    """The most blob bytes in one message to a peer (ReadBlob): within the
    peers' message limit (server/config.py peer_message_bytes)."""


class BlobReader:
    """An open blob: ``ref`` says what it is; ``async for piece in reader``
    yields its bytes (from ``offset``, ``length`` of them) in pieces of about
    a MiB, and closes the file at the end (or ``close()``; also an async
    context manager)."""

    def __init__(self, ref: BlobRef, file: BlobFile, offset: int, length: int) -> None:
        self.ref = ref
        self.offset = offset
        self.length = length
        self._file = file

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._file.__aiter__()

    def close(self) -> None:
        self._file.close()

    async def __aenter__(self) -> BlobReader:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


Source = bytes | bytearray | memoryview | AsyncIterable[bytes] | Iterable[bytes] | BinaryIO


class NodeBlobs(CatalogListener):
    """This node's blobs (see the module docstring)."""

    def __init__(
        self,
        runtime: RaftRuntime,
        api: NodeAPI,
        store: BlobStore,
        catalog: BlobCatalog,
        settings: BlobSettings | None = None,
    ) -> None:
        self.runtime = runtime
        self.api = api
        self.store = store
        self.catalog = catalog
        self.settings = settings or BlobSettings()
        self.id = runtime.id
        self.replay_through: int | None = None
        """The last log index this node held when it started: deletions of
        entries up to it are replays (see the module docstring). None until
        the node has loaded its log: everything is a replay then."""
        self.missing: dict[str, float] = {}  # in the catalog, no file here: since when (monotonic)
        self._retry_at: dict[str, float] = {}  # a blob no member could send: when to try again
        self._attempts: Counter[str] = Counter()
        self._incoming: Counter[str] = Counter()  # being uploaded through this node
        self._fetching: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ops_since_collect = 0
        self.fetched = 0  # blobs this node copied from a peer
        self.collected = 0  # files removed by collect entries and deletes
        catalog.listeners.append(self)

    # ---- life cycle ---------------------------------------------------------------------------

    async def prepare(self) -> None:
        """Open the store (before the runtime replays the log)."""
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.store.open)

    def start(self, replay_through: int) -> None:
        """Serve: called once the runtime has loaded its log."""
        self.replay_through = replay_through
        self._rescan()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._repair(), name="blob-repair"),
            loop.create_task(self._collector(), name="blob-collector"),
        ]

    async def close(self) -> None:
        tasks = [*self._tasks, *self._background, *self._fetching.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        await asyncio.to_thread(self.store.close)

    # ---- what applications call -------------------------------------------------------------

    def enabled(self) -> bool:
        return self.runtime.cluster_state().kv_version >= BLOBS_KV_VERSION

    def check_enabled(self) -> None:
        kv_version = self.runtime.cluster_state().kv_version
        if kv_version < BLOBS_KV_VERSION:
            raise CommandRefused(blobs_not_active(kv_version))

    async def put(
        self,
        data: Source,
        *,
        content_type: str = DEFAULT_CONTENT_TYPE,
        size: int | None = None,
        sha256: str | None = None,
        timeout: float | None = None,
    ) -> BlobRef:
        """Store a blob on a majority of the voters and record it; returns
        its reference. ``data``: bytes, an (async) iterable of bytes, or a
        binary file opened for reading. ``size`` and ``sha256``, when given,
        are checked (and a size over the limits is refused before any byte
        is read)."""
        ref, _ = await self.put_with_index(
            data, content_type=content_type, size=size, sha256=sha256, timeout=timeout
        )
        return ref

    async def put_with_index(
        self,
        data: Source,
        *,
        content_type: str = DEFAULT_CONTENT_TYPE,
        size: int | None = None,
        sha256: str | None = None,
        timeout: float | None = None,
    ) -> tuple[BlobRef, int]:
        """:meth:`put`, also returning the index of the catalog entry."""
        deadline = Deadline(timeout if timeout is not None else PUT_TIMEOUT)
        self.check_enabled()
        try:
            kind = check_content_type(content_type)
            expected = parse_sha256(sha256) if sha256 else None
        except ValueError as e:
            raise BadRequest(str(e)) from None
        if size is not None and size < 0:
            raise BadRequest(f"a blob's size cannot be negative ({size})")
        if isinstance(data, bytes | bytearray | memoryview):
            size = len(data) if size is None else size
        incoming: Incoming | None = await self.store.receive(
            _pieces(data), size=size, sha256=expected
        )
        assert incoming is not None
        digest, stored = incoming.sha256, incoming.size
        self._incoming[digest] += 1
        proposed = committed = False
        try:
            proposal = encode_blob_put(digest, stored, kind, _now_ms())
            left = deadline.check()
            proposed = True  # from here the entry may reach the log
            index, result = await self.api.write(
                proposal,
                left,
                retry_unsafe=True,  # a second put only touches it
            )
            _check_result(result)
            await self.runtime.wait_applied(index, deadline.check())
            if digest not in self.catalog:
                raise Unavailable(f"blob {digest} was deleted while it was stored; put it again")
            await self.store.commit(incoming)
            committed = True
            self.missing.pop(digest, None)
            entry = self.catalog.get(digest)
            kept = entry.content_type if entry is not None else kind
            await self._replicate(digest, stored, index, deadline)
        except (Unavailable, TimeoutError) as e:
            refused = isinstance(e, RequestError) and e.before_proposal
            if proposed and not committed and not refused:
                # The entry may be in the log (or get there): the bytes must
                # not be lost with this call. Store them once it is applied.
                self._spawn(self._store_later(incoming), f"store-{digest[:12]}")
                incoming = None
            raise
        finally:
            if incoming is not None:
                incoming.discard()
                self._done_incoming(digest)
        log.info("blob_put", sha256=digest, size=stored, index=index)
        return BlobRef(digest, stored, kept), index

    def _done_incoming(self, digest: str) -> None:
        self._incoming[digest] -= 1
        if self._incoming[digest] <= 0:
            del self._incoming[digest]

    def _spawn(self, coroutine: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _store_later(self, incoming: Incoming) -> None:
        """A put that ran out of time before its entry was applied here:
        wait (up to PUT_TIMEOUT) until the catalog names the blob, then
        keep the bytes and have the other members fetch them, so that an
        entry the client never saw acknowledged is not left without a copy."""
        digest = incoming.sha256
        deadline = Deadline(PUT_TIMEOUT)
        try:
            while digest not in self.catalog:
                applied = self.runtime.machine.applied_index
                await self.runtime.wait_applied(applied + 1, deadline.check())
            await self.store.commit(incoming)
            self.missing.pop(digest, None)
            log.info("blob_stored_after_its_put_failed", sha256=digest)
            await self._replicate(
                digest, incoming.size, self.runtime.machine.applied_index, deadline
            )
        except (RequestError, TimeoutError) as e:
            log.info("blob_not_stored", sha256=digest, reason=error_message(e))
        finally:
            incoming.discard()
            self._done_incoming(digest)

    def stat(self, ref: object) -> BlobRef | None:
        """What this node's catalog says of a blob (its applied state: a
        blob put a moment ago elsewhere may not be here yet)."""
        digest = _digest(ref)
        entry = self.catalog.get(digest)
        return None if entry is None else BlobRef(digest, entry.size, entry.content_type)

    async def find(self, ref: object, timeout: float | None = None) -> BlobRef:
        """The blob's reference, read linearizably (after a read point, so
        a blob put or deleted anywhere before the call is seen as such);
        raises NotFound."""
        digest = _digest(ref)
        await self.api.linearizable(timeout)
        found = self.stat(digest)
        if found is None:
            raise NotFound(f"no blob {digest}")
        return found

    async def open(
        self,
        ref: object,
        *,
        offset: int = 0,
        length: int | None = None,
        timeout: float | None = None,
    ) -> BlobReader:
        """The blob's bytes (from ``offset``, at most ``length``), streamed
        from this node's file; a blob this node lacks is fetched from a peer
        first. Raises NotFound for an unknown blob."""
        deadline = Deadline(timeout if timeout is not None else PUT_TIMEOUT)
        found = await self.find(ref, deadline.check())
        if offset < 0 or (length is not None and length < 0):
            raise BadRequest("offset and length cannot be negative")
        for _ in range(2):
            if not self.store.has(found.sha256):
                await self.ensure(found.sha256, timeout=deadline.check())
            try:
                file = await self.store.open_file(found.sha256, offset, length)
            except FileNotFoundError:
                continue  # deleted from under us, or the disk lost it: fetch again
            return BlobReader(found, file, file.offset, file.length)
        raise NotFound(f"no blob {found.sha256} (it was deleted)")

    async def read(self, ref: object, *, timeout: float | None = None) -> bytes:
        """The whole blob as bytes (for small blobs: ``open`` streams)."""
        reader = await self.open(ref, timeout=timeout)
        return b"".join([piece async for piece in reader])

    async def delete(self, ref: object, *, timeout: float | None = None) -> tuple[bool, int]:
        """Delete a blob from every node: (whether it existed, the index).
        Refused (CommandFailedError) while the application refers to it."""
        self.check_enabled()
        digest = _digest(ref)
        index, result = await self.api.write(encode_blob_delete(digest), timeout, retry_unsafe=True)
        _check_result(result)
        return bool(result), index

    # ---- backups ------------------------------------------------------------------------------

    def backup_entries(self) -> list[tuple[str, BlobEntry]]:
        """The catalog, as a backup's view holds it (call in the loop turn
        that takes the view)."""
        return sorted(self.catalog.entries.items())

    async def gather_for_backup(
        self, entries: list[tuple[str, BlobEntry]], timeout: float | None
    ) -> None:
        """Every blob of a backup on this node's disk, fetched from the peers
        where missing; refuses the backup (Unavailable) naming a blob no
        member could send."""
        deadline = Deadline(timeout if timeout is not None else PUT_TIMEOUT)
        for digest, _ in entries:
            if self.store.on_disk(digest):
                continue
            self.store.present.discard(digest)  # lost from the disk: fetch it again
            try:
                await self.ensure(digest, timeout=deadline.check())
            except (RequestError, TimeoutError) as e:
                raise Unavailable(
                    f"the backup is refused: its state names blob {digest}, which this node "
                    f"lacks and could not fetch ({error_message(e)}); try again when every "
                    "node is up (a blob lost on every node: `ramraft blob delete` it)"
                ) from e

    # ---- replication --------------------------------------------------------------------------

    async def _replicate(self, digest: str, size: int, index: int, deadline: Deadline) -> None:
        """Wait until a majority of the voters hold the blob; the other
        members keep fetching in the background."""
        core = self.runtime.core
        assert core is not None
        voters = set(core.conf.voters)
        others = sorted(set(core.conf.members) - {self.id})
        need = len(voters) // 2 + 1
        held = 1 if self.id in voters else 0
        asks = {
            asyncio.get_running_loop().create_task(
                self._hold_at(peer, digest, size, index, deadline.remaining()),
                name=f"hold-{peer}",
            ): peer
            for peer in others
        }
        for task in asks:
            self._background.add(task)  # they go on after a majority answered
            task.add_done_callback(self._background.discard)
        pending = set(asks)
        while held < need and pending:
            done, pending = await asyncio.wait(
                pending, timeout=max(0.0, deadline.remaining()), return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                break
            held += sum(1 for t in done if asks[t] in voters and _succeeded(t))
        if held < need:
            raise Unavailable(
                f"only {held} of {len(voters)} voters hold blob {digest} so far (a majority is "
                f"{need}); it is recorded and the others fetch it in the background: put it "
                "again to wait for them"
            )

    async def _hold_at(self, peer: str, digest: str, size: int, index: int, timeout: float) -> bool:
        method = self.runtime.transport.channel(peer).unary_unary(
            f"/{PEER_SERVICE}/HoldBlob",
            request_serializer=raft_pb2.HoldBlobRequest.SerializeToString,
            response_deserializer=raft_pb2.HoldBlobResponse.FromString,
        )
        request = raft_pb2.HoldBlobRequest(sha256=digest, size=size, index=index, source=self.id)
        try:
            response: raft_pb2.HoldBlobResponse = await method(
                request,
                timeout=max(0.001, timeout),
                metadata=self.runtime.transport.call_metadata(),
            )
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.UNIMPLEMENTED:  # an older node holds no blobs
                log.info("blob_hold_failed", peer=peer, sha256=digest, error=_short(e))
            return False
        return bool(response.held)

    # ---- fetching -----------------------------------------------------------------------------

    async def ensure(self, digest: str, *, prefer: str = "", timeout: float | None = None) -> None:
        """Make sure this node holds the blob (fetched from a peer if not).
        Raises NotFound when the catalog no longer has it, Unavailable when
        no member could send it, InsufficientStorage when it does not fit."""
        if self.store.has(digest):
            return
        task = self._fetching.get(digest)
        if task is None:
            task = asyncio.get_running_loop().create_task(
                self._fetch(digest, prefer), name=f"fetch-{digest[:12]}"
            )
            self._fetching[digest] = task

            def forget(done: asyncio.Task[None], digest: str = digest) -> None:
                if self._fetching.get(digest) is done:
                    del self._fetching[digest]

            task.add_done_callback(forget)
        async with asyncio.timeout(timeout):
            await asyncio.shield(task)
        if not self.store.has(digest):
            raise NotFound(f"no blob {digest} (it was deleted)")

    def _sources(self, prefer: str) -> list[str]:
        core = self.runtime.core
        members = set(core.conf.members) if core is not None else set()
        others = [m for m in members if m != self.id and m != prefer]
        random.shuffle(others)
        return ([prefer] if prefer in members and prefer != self.id else []) + others

    async def _fetch(self, digest: str, prefer: str) -> None:
        entry = self.catalog.get(digest)
        if entry is None:
            raise NotFound(f"no blob {digest}")
        errors: list[str] = []
        for peer in self._sources(prefer):
            call = self._read_call(peer, digest, entry)
            try:
                incoming = await self.store.receive(
                    (r.data async for r in call), size=entry.size, sha256=digest
                )
            except (grpc.aio.AioRpcError, BadRequest, OSError) as e:
                errors.append(f"{peer}: {_short(e)}")
                continue
            finally:
                call.cancel()
            try:
                if digest not in self.catalog:
                    raise NotFound(f"no blob {digest} (it was deleted)")
                await self.store.commit(incoming)
            finally:
                incoming.discard()
            self.missing.pop(digest, None)
            self._retry_at.pop(digest, None)
            self._attempts.pop(digest, None)
            self.fetched += 1
            log.info("blob_fetched", sha256=digest, size=entry.size, source=peer)
            return
        raise Unavailable(
            f"no member could send blob {digest}: " + ("; ".join(errors) or "no other member")
        )

    def _read_call(
        self, peer: str, digest: str, entry: BlobEntry
    ) -> grpc.aio.UnaryStreamCall[raft_pb2.ReadBlobRequest, raft_pb2.ReadBlobResponse]:
        method = self.runtime.transport.channel(peer).unary_stream(
            f"/{PEER_SERVICE}/ReadBlob",
            request_serializer=raft_pb2.ReadBlobRequest.SerializeToString,
            response_deserializer=raft_pb2.ReadBlobResponse.FromString,
        )
        call = method(
            raft_pb2.ReadBlobRequest(sha256=digest),
            timeout=30.0 + entry.size / FETCH_BYTES_PER_SECOND,
            metadata=self.runtime.transport.call_metadata(),
        )
        return cast(
            grpc.aio.UnaryStreamCall[raft_pb2.ReadBlobRequest, raft_pb2.ReadBlobResponse], call
        )

    # ---- what peers call ----------------------------------------------------------------------

    async def serve_hold(
        self, request: raft_pb2.HoldBlobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> raft_pb2.HoldBlobResponse:
        """``Peer.HoldBlob``: apply up to the put entry, then hold the blob."""
        try:
            digest = parse_sha256(request.sha256)
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            raise AssertionError("abort returns only by raising") from None  # pragma: no cover
        remaining = context.time_remaining()
        timeout = remaining if remaining is not None else PUT_TIMEOUT
        try:
            await self.runtime.wait_applied(request.index, timeout)
            if digest not in self.catalog:
                return raft_pb2.HoldBlobResponse(held=False)  # deleted since
            await self.ensure(digest, prefer=request.source, timeout=context.time_remaining())
        except (RequestError, TimeoutError) as e:
            status = wire_status(e)
            assert status is not None
            await context.abort(status.grpc_code, error_message(e))
        return raft_pb2.HoldBlobResponse(held=True)

    async def serve_read(
        self, request: raft_pb2.ReadBlobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[raft_pb2.ReadBlobResponse]:
        """``Peer.ReadBlob``: this node's file, in pieces; NOT_FOUND without one."""
        try:
            digest = parse_sha256(request.sha256)
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        try:
            file = await self.store.open_file(digest)
        except FileNotFoundError:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{self.id} holds no blob {digest}")
        chunk = max(1 << 10, self.settings.peer_chunk_bytes)
        async for piece in file:
            for start in range(0, len(piece), chunk):
                yield raft_pb2.ReadBlobResponse(data=piece[start : start + chunk])

    # ---- the catalog, as entries are applied --------------------------------------------------

    def added(self, index: int, sha256: str, entry: BlobEntry) -> None:
        self._ops_since_collect += 1
        if not self.store.has(sha256):
            self.missing.setdefault(sha256, time.monotonic())
            self._wake.set()

    def removed(self, index: int, digests: list[str], sweep: bool) -> None:
        self._ops_since_collect = 0 if sweep else self._ops_since_collect + 1
        for digest in digests:
            self.missing.pop(digest, None)
            self._retry_at.pop(digest, None)
            self._attempts.pop(digest, None)
        if self.replay_through is None or index <= self.replay_through:
            return  # a replay: see the module docstring
        doomed = {d for d in digests if self.store.has(d)}
        if sweep:
            doomed.update(d for d in self.store.present if d not in self.catalog)
        if doomed:
            self.collected += len(doomed)
            self._watch(self.store.delete(sorted(doomed)), "blob_delete_failed")

    def restored(self, index: int) -> None:
        loop = self._loop
        if loop is None:
            return  # at start, before open(): start() looks at everything
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._after_restore(index)
        else:  # restored in a worker thread (the key-value machine does that)
            loop.call_soon_threadsafe(self._after_restore, index)

    def _after_restore(self, index: int) -> None:
        self._rescan()
        if self.replay_through is not None and index > self.replay_through:
            # A snapshot from the leader, newer than anything this node held:
            # files no entry names are leftovers of deletions it missed.
            orphans = [d for d in self.store.present if d not in self.catalog]
            if orphans:
                self.collected += len(orphans)
                self._watch(self.store.delete(orphans), "blob_delete_failed")

    def _rescan(self) -> None:
        now = time.monotonic()
        self.missing = {
            d: self.missing.get(d, now) for d in self.catalog.entries if not self.store.has(d)
        }
        if self.missing:
            self._wake.set()

    def _watch(self, future: asyncio.Future[Any], event: str) -> None:
        def done(f: asyncio.Future[Any]) -> None:
            if not f.cancelled() and f.exception() is not None:
                log.error(event, error=str(f.exception()))

        future.add_done_callback(done)

    # ---- background ---------------------------------------------------------------------------

    async def _repair(self) -> None:
        """Fetch what the catalog names and this node lacks."""
        limit = asyncio.Semaphore(REPAIR_PARALLEL)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), REPAIR_INTERVAL)
            self._wake.clear()
            runtime = self.runtime
            if runtime.halted is not None or runtime.failed is not None or runtime.stopping:
                continue
            now = time.monotonic()
            due = [
                d
                for d, since in self.missing.items()
                if now - since >= REPAIR_DELAY
                and d not in self._incoming
                and d not in self._fetching
                and now >= self._retry_at.get(d, 0.0)
            ]
            for digest in due:
                await limit.acquire()
                self._spawn(self._repair_one(digest, limit), f"repair-{digest[:12]}")

    async def _repair_one(self, digest: str, limit: asyncio.Semaphore) -> None:
        try:
            await self.ensure(digest)
        except (RequestError, TimeoutError) as e:
            self._attempts[digest] += 1
            pause = min(RETRY_MAX, 2.0 ** self._attempts[digest])
            self._retry_at[digest] = time.monotonic() + pause
            log.info("blob_repair_failed", sha256=digest, error=str(e), retry_in=round(pause, 1))
        finally:
            limit.release()

    async def _collector(self) -> None:
        """The leader proposes a collect entry every gc_interval seconds
        (while there are blobs, or blob entries since the last one)."""
        interval = self.settings.gc_interval
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            await self.collect_now(only_when_needed=True)

    async def collect_now(self, *, only_when_needed: bool = False) -> int | None:
        """Propose a collect entry now (this node must lead); returns how
        many blobs it collected, None when nothing was proposed."""
        runtime = self.runtime
        if runtime.role is not Role.LEADER or runtime.halted is not None or not self.enabled():
            return None
        if only_when_needed and not len(self.catalog) and not self._ops_since_collect:
            return None
        grace_ms = int(self.settings.gc_grace * 1000)
        try:
            _, result = await runtime.propose(encode_blob_collect(_now_ms(), grace_ms))
        except (RequestError, TimeoutError) as e:
            log.debug("blob_collect_skipped", reason=str(e))
            return None
        if isinstance(result, CommandError):
            log.warning("blob_collect_failed", reason=result.message)
            return None
        return int(result) if isinstance(result, int) else None


def _succeeded(task: asyncio.Task[bool]) -> bool:
    return not task.cancelled() and task.exception() is None and task.result()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _digest(ref: object) -> str:
    try:
        return parse_sha256(ref)
    except ValueError as e:
        raise BadRequest(str(e)) from None


def _check_result(result: object) -> None:
    if isinstance(result, CommandError):
        if result.code is ErrorCode.NOT_ACTIVE:
            raise CommandRefused(result.message)
        if result.code is ErrorCode.COMMAND_FAILED:
            raise CommandFailedError(result)
        raise BadRequest(str(result))


def _short(e: BaseException) -> str:
    if isinstance(e, grpc.aio.AioRpcError):
        return f"{e.code().name}: {e.details()}"
    return f"{type(e).__name__}: {e}"


async def _pieces(data: Source) -> AsyncIterator[bytes]:
    """Whatever a put was given, as pieces of bytes (a file is read in a
    worker thread, a piece at a time)."""
    if isinstance(data, bytes | bytearray | memoryview):
        view = memoryview(data)
        for start in range(0, len(view), PIECE):
            yield bytes(view[start : start + PIECE])
        return
    read = getattr(data, "read", None)
    if read is not None and inspect.iscoroutinefunction(read):  # e.g. aiohttp's request.content
        while piece := await read(PIECE):
            yield bytes(piece)
        return
    if read is not None:
        while piece := await asyncio.to_thread(read, PIECE):
            yield bytes(piece)
        return
    if isinstance(data, AsyncIterable):
        async for piece in data:
            yield bytes(piece)
        return
    for piece in data:
        yield bytes(piece)


__all__ = ["BlobReader", "BlobSettings", "InsufficientStorage", "NodeBlobs"]

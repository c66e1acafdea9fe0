"""Hosting an application model in a node, next to the key-value machine.

``ramraft node --app module:factory`` imports ``module``, calls ``factory()``
once, and expects either a :class:`~server.embed.ReplicatedModel` or an
:class:`Application` (the model plus aiohttp routes for its pages). The node
then applies one Raft log to two machines::

    CompositeMachine({TAG_KV: KVMachine(), TAG_MODEL: ModelMachine(model)})

binds the model's commands to the node's write path (``NodeAPI.write``:
proposed here when this node leads, forwarded to the leader otherwise, and
resolved once applied HERE, so a page that awaited a command reads its effect
from memory), mounts the routes on the web tier under ``/app/``, runs the
application's background jobs (server/jobs.py; a leader job's commands are
proposed only here, in its term: ``NodeAPI.write_in_term``) and hands the
events its commands publish to the live-page feed (server/web/sse.py).

Writes this node makes on a caller's behalf -- model commands, and HTTP key-value
writes that bring no session of their own -- get a session from a
:class:`SessionPool`: if the leader changes while such a write is in flight,
the node retries it with the same session, and the state machine applies it at
most once.

Forwarded results (``Peer.Forward``) are encoded by :func:`encode_result` and
decoded by :func:`decode_result`, which carry the results of both machines.
"""

from __future__ import annotations

import importlib
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack
import structlog
from aiohttp import web

from ramraft.server.jobs import Job, JobRunner, job_term
from ramraft.server.logs import code_location
from ramraft.server.machines.cluster import ClusterMachine
from ramraft.server.machines.embed import (
    ModelMachine,
    ReplicatedModel,
    decode_call,
    encode_call,
    pack_plain,
)
from ramraft.server.machines.embed import unpack_plain as _unpack_plain
from ramraft.server.machines.kv import (
    CasResult,
    DeleteResult,
    KVMachine,
    PutResult,
    reply_from_plain,
    reply_to_plain,
)
from ramraft.server.machines.kvops import (
    LeaseGrantResult,
    LeaseRenewResult,
    LeaseRevokeResult,
    TxnResult,
)
from ramraft.server.machines.statemachine import (
    TAG_KV,
    TAG_MODEL,
    CommandError,
    CompositeMachine,
    ErrorCode,
)
from ramraft.server.request_errors import Unavailable
from ramraft.server.web.sse import EventFeed

if TYPE_CHECKING:
    from ramraft.server.blobs.manager import NodeBlobs
    from ramraft.server.runtime.node_api import NodeAPI

log = structlog.get_logger("ramraft.hosting")


class AppLoadError(Exception):
    """``--app`` names nothing usable; the message says what and why."""


@dataclass
class Application:
    """What an ``--app`` factory returns: the replicated model, the routes
    of its pages (mounted under ``/app/``; a route ``/`` is the page at
    ``/app/``) and its background jobs (``@background``, server/jobs.py).
    ``setup`` may further configure the aiohttp sub-application (static
    files, middlewares) before it is mounted."""

    model: ReplicatedModel
    routes: Iterable[web.AbstractRouteDef] = ()
    setup: Callable[[web.Application], None] | None = None
    title: str = ""
    jobs: Iterable[Job] = ()

    def __post_init__(self) -> None:
        """Check what the factory gave here, where its traceback points at
        the factory, rather than when a node mounts the pages or starts the
        jobs (an AttributeError deep in the node, after the factory
        returned)."""
        if not isinstance(self.model, ReplicatedModel):
            raise TypeError(
                f"Application(model=...) takes a ReplicatedModel instance, got "
                f"{_describe(self.model)}"
            )
        if isinstance(self.routes, web.AbstractRouteDef | str) or not isinstance(
            self.routes, Iterable
        ):
            raise TypeError(
                f"Application(routes=...) takes a list of aiohttp route definitions (or a "
                f"web.RouteTableDef), got {_describe(self.routes)}"
            )
        self.routes = tuple(self.routes)
        for route in self.routes:
            if not isinstance(route, web.AbstractRouteDef):
                raise TypeError(
                    f"Application(routes=...): {_describe(route)} is not an aiohttp route "
                    "definition (web.get(...), or @routes.get(...) of a web.RouteTableDef)"
                )
        if self.setup is not None and not callable(self.setup):
            raise TypeError(
                f"Application(setup=...) takes a function of the aiohttp sub-application, "
                f"got {_describe(self.setup)}"
            )
        if isinstance(self.jobs, Job | str) or not isinstance(self.jobs, Iterable):
            raise TypeError(
                f"Application(jobs=...) takes a list of @background jobs, got "
                f"{_describe(self.jobs)}"
            )
        self.jobs = tuple(self.jobs)
        names: set[str] = set()
        given: tuple[object, ...] = self.jobs  # what the factory really passed
        for job in given:
            if not isinstance(job, Job):
                hint = (
                    ": mark it with @background(every=...) (server/jobs.py)"
                    if callable(job)
                    else ""
                )
                raise TypeError(
                    f"Application(jobs=...): {_describe(job)} is not a background job{hint}"
                )
            if job.name in names:
                raise ValueError(
                    f"Application(jobs=...): two background jobs are named {job.name!r}; "
                    "give one another name (@background(name=...))"
                )
            names.add(job.name)


def _describe(value: object) -> str:
    name = getattr(value, "__qualname__", None)
    if callable(value) and isinstance(name, str):
        kind = "the class" if isinstance(value, type) else "the function"
        return f"{kind} {getattr(value, '__module__', '?')}.{name}"
    return f"{type(value).__qualname__} {value!r:.60}"


class AppContext:
    """What page handlers can reach besides the model: ``request.app[CONTEXT]``
    (the node's id and role, the key-value machine, the request path, and the
    node's blobs as ``ctx.blobs``).

    Reads of the model are plain memory reads of this node's copy: they see
    every command this node has applied. ``await ctx.linearizable()`` first
    makes such a read linearizable (it sees every write acknowledged anywhere
    before the call). ``ctx.jobs`` runs one-off background jobs
    (``ctx.jobs.run_once(fn)``); ``await ctx.events.stream(request, topics)``
    answers a request with the live feed of the events the model's commands
    publish (Server-Sent Events, server/web/sse.py).
    """

    def __init__(
        self,
        node_id: str,
        model: ReplicatedModel,
        kv: KVMachine,
        api: NodeAPI,
        jobs: JobRunner | None = None,
        events: EventFeed | None = None,
        blobs: NodeBlobs | None = None,
    ) -> None:
        self.node_id = node_id
        self.model = model
        self.kv = kv
        self.api = api
        self._jobs = jobs
        self._events = events
        self._blobs = blobs

    @property
    def jobs(self) -> JobRunner:
        if self._jobs is None:
            raise RuntimeError("this node runs no background jobs")
        return self._jobs

    @property
    def events(self) -> EventFeed:
        if self._events is None:
            raise RuntimeError("this node has no event feed")
        return self._events

    @property
    def blobs(self) -> NodeBlobs:
        """The node's blobs (server/blobs/manager.py): ``await
        ctx.blobs.put(data, content_type=...)`` stores one on a majority of
        the nodes and returns its ``BlobRef``; ``await ctx.blobs.open(ref)``
        streams it back."""
        if self._blobs is None:
            raise RuntimeError("this node keeps no blobs (it runs without the cluster record)")
        return self._blobs

    async def linearizable(self, timeout: float | None = None) -> int:
        return await self.api.linearizable(timeout)

    @property
    def role(self) -> str:
        return self.api.runtime.role.value

    @property
    def leader(self) -> str:
        return self.api.runtime.leader


CONTEXT = web.AppKey("ramraft", AppContext)


def load_app(spec: str) -> Application:
    """Import ``module:factory`` and call the factory."""
    module_name, sep, attr = spec.strip().partition(":")
    if not sep or not module_name or not attr:
        raise AppLoadError(f"--app {spec!r}: expected MODULE:FACTORY, e.g. examples.notes:app")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise AppLoadError(
            f"--app {spec!r}: cannot import {module_name}: {e} "
            "(is its directory on the path? see --app-path / RAMRAFT_APP_PATH)"
        ) from e
    except Exception as e:
        # The application's own code failed while being imported (a
        # SyntaxError, a NameError at module level...): its error, and where.
        raise AppLoadError(
            f"--app {spec!r}: importing {module_name} raised {type(e).__name__}: {e}{_where(e)}"
        ) from e
    factory = module
    for part in attr.split("."):
        try:
            factory = getattr(factory, part)
        except AttributeError:
            raise AppLoadError(f"--app {spec!r}: {module_name} has no attribute {attr}") from None
    try:
        made: object = factory() if callable(factory) else factory
    except Exception as e:
        raise AppLoadError(
            f"--app {spec!r}: {attr}() raised {type(e).__name__}: {e}{_where(e)}"
        ) from e
    if isinstance(made, ReplicatedModel):
        made = Application(made)
    if not isinstance(made, Application):
        raise AppLoadError(
            f"--app {spec!r}: the factory returned {type(made).__qualname__}; "
            "it must return a ReplicatedModel or a server.hosting.Application"
        )
    if not isinstance(made.model, ReplicatedModel):
        raise AppLoadError(f"--app {spec!r}: Application.model is not a ReplicatedModel")
    return made


def _where(exc: BaseException) -> str:
    """`` (at FILE, line N, in FUNCTION)``: where the application's code
    raised ``exc``, so the one line a node prints on a bad --app points at
    the developer's code (a SyntaxError's message names its own place)."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return ""
    where = code_location(exc)
    return f" (at {where})" if where else ""


# ---- sessions for writes the node makes on a caller's behalf ---------------------------------


class SessionPool:
    """Client ids for one state machine's session table, one write at a time
    each (the table keeps one outstanding write per client id).

    A write takes an id and its next sequence number, and gives the id back
    when it is answered, so the pool grows to the number of writes in flight
    at once and no further. The ids are random 64-bit numbers, so the pools of
    different nodes (and restarts) never collide.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._free: list[tuple[int, int]] = []  # (client id, next sequence)
        # A seeded Random for reproducible runs (server/inprocess/); ids from
        # the OS's randomness otherwise.
        self._rng = rng

    def __len__(self) -> int:
        return len(self._free)

    def take(self) -> tuple[int, int]:
        if self._free:
            return self._free.pop()
        bits = self._rng.getrandbits(63) if self._rng is not None else secrets.randbits(63)
        return bits + 1, 1

    def give_back(self, client_id: int, sequence: int) -> None:
        self._free.append((client_id, sequence + 1))


async def write_with_session(
    api: NodeAPI,
    pool: SessionPool,
    encode: Callable[[tuple[int, int]], bytes],
    timeout: float | None = None,
) -> tuple[int, object]:
    """``api.write`` of ``encode(session)`` with a session from ``pool``:
    safe to retry across leader changes until the deadline; returns once
    the write is applied on THIS node (read-your-writes; if this node lags
    past the deadline, the committed write is answered anyway). A session the
    cluster has expired (SESSION_EXPIRED: the write was NOT applied) is
    dropped and the write sent again under a fresh one."""
    deadline = time.monotonic() + (timeout if timeout is not None else 5.0)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:  # never proposed: a passed deadline is not stretched
            raise TimeoutError("the request's deadline passed")
        client_id, sequence = pool.take()
        try:
            index, result = await api.write(encode((client_id, sequence)), left, retry_unsafe=True)
        except BaseException:
            pool.give_back(client_id, sequence)  # the next sequence is still fresh
            raise
        if isinstance(result, CommandError) and result.code == ErrorCode.SESSION_EXPIRED:
            if time.monotonic() < deadline:
                continue  # not applied; the id is dropped from the pool
            raise TimeoutError("the request's deadline passed")
        pool.give_back(client_id, sequence)
        # A forwarded write is answered once the LEADER applied it; wait for
        # it here too, so the caller reads its own write from this node. The
        # write is committed either way: if this node lags past the deadline,
        # answer anyway (a read here may then not see it yet).
        try:
            await api.runtime.wait_applied(index, max(0.001, deadline - time.monotonic()))
        except Unavailable:
            log.warning("write_applied_at_leader_not_here_yet", index=index)
        return index, result


def model_proposer(
    api: NodeAPI, pool: SessionPool, timeout: float | None = None
) -> Callable[[bytes], Awaitable[object]]:
    """The proposer a ModelMachine is bound to: the call, with a session
    added, through the node's write path; returns the command's result.
    Inside a leader's background job, the call is proposed here, in the
    job's term, and nowhere else (``NodeAPI.write_in_term``)."""

    async def propose(data: bytes) -> object:
        term = job_term()
        if term:
            _, result = await api.write_in_term(data, term, timeout)
            return result
        call = decode_call(data)

        def encode(session: tuple[int, int]) -> bytes:
            return encode_call(call.name, call.args, call.kwargs, session)

        _, result = await write_with_session(api, pool, encode, timeout)
        return result

    return propose


@dataclass
class HostedApp:
    """An application attached to a node (built by the node from --app)."""

    app: Application
    machine: ModelMachine
    sessions: SessionPool = field(default_factory=SessionPool)
    jobs: JobRunner | None = None  # made by attach() with the runtime
    events: EventFeed | None = None  # what the model's commands publish

    @classmethod
    def build(cls, app: Application, kv: KVMachine) -> tuple[HostedApp, ClusterMachine]:
        """The application's machines: the model beside the key-value
        machine, under the cluster record; what the runtime applies."""
        model_machine = ModelMachine(app.model)
        machine = ClusterMachine(
            CompositeMachine({TAG_KV: kv, TAG_MODEL: model_machine}),
            model=model_machine,
            kv=kv,
            blob_refs=model_machine.blob_refs,
        )
        return cls(app, model_machine), machine

    def attach(self, api: NodeAPI, node_id: str) -> None:
        """Bind the model's commands to the node's write path, its published
        events to a feed and its jobs to the runtime (``jobs.start()`` once
        the node serves)."""
        runtime = api.runtime
        self.machine.bind(model_proposer(api, self.sessions))
        self.events = feed = EventFeed(
            applied=lambda: runtime.machine.applied_index,
            committed=lambda: runtime.status().commit_index,
        )
        self.machine.on_published = feed.publish
        runtime.listeners.append(feed.runtime_listener)
        self.jobs = JobRunner(node_id, self.app.model, runtime, self.app.jobs)


# ---- forwarded results ---------------------------------------------------------------------

_RESULT_NONE = 0
_RESULT_KV = 1
_RESULT_ERROR = 2
_RESULT_PLAIN = 3
_KV_RESULTS = (
    PutResult,
    DeleteResult,
    CasResult,
    TxnResult,
    LeaseGrantResult,
    LeaseRevokeResult,
    LeaseRenewResult,
)


def encode_result(result: object) -> bytes:
    """A result of either machine, for ``Peer.Forward``: the key-value
    machine's result tuples and errors, or a model command's plain data."""
    if result is None:
        return msgpack.packb((_RESULT_NONE,))
    kind = type(result)
    if kind in _KV_RESULTS:
        return msgpack.packb((_RESULT_KV, reply_to_plain(result)), use_bin_type=True)
    if kind is CommandError:
        assert isinstance(result, CommandError)
        return msgpack.packb((_RESULT_ERROR, int(result.code), result.message))
    return msgpack.packb((_RESULT_PLAIN, pack_plain(result)), use_bin_type=True)


def decode_result(data: bytes) -> object:
    items: Any = msgpack.unpackb(data, raw=False, use_list=True)
    if not isinstance(items, list) or not items:
        raise ValueError("a forwarded result is a tagged array")
    kind = items[0]
    if kind == _RESULT_NONE:
        return None
    if kind == _RESULT_KV:
        return reply_from_plain(items[1])
    if kind == _RESULT_ERROR:
        return CommandError(ErrorCode(items[1]), str(items[2]))
    if kind == _RESULT_PLAIN:
        return _unpack_plain(items[1])
    raise ValueError(f"unknown forwarded result kind {kind!r}")

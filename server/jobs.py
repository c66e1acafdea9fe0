"""Background jobs: application code that runs beside the model, on the
leader (the default) or on every node.

    @background(every=3600)
    async def archive_old_notes(board: Board) -> None:
        cutoff = time.time() - 30 * 86400
        for note_id in board.older_than(cutoff):    # a plain memory read
            await board.archive(note_id, cutoff)    # a command: through the log

    Application(board, routes=..., jobs=[archive_old_notes])

A job is an ``async def`` that takes the model (and, if it has a second
parameter, a :class:`JobContext`). It reads the model directly and changes
it only by calling commands.

Leader jobs (``on=LEADER``, the default):

- run only on the node that leads, and start only once that leader has
  applied the first entry of its term (the no-op every leader appends), so
  they see every committed entry;
- are cancelled at once (inside the runtime's turn, by a listener) when the
  node steps down, is removed from the cluster, halts, fails or stops;
- propose their commands HERE, as the leader of the term they were started
  in, and nowhere else: such a command is never forwarded and never retried
  under a session, and it fails (``Unavailable``) once this node no longer
  leads in that term (``RaftRuntime.propose(term=...)``). Its entry can
  therefore only sit in the log at that term, before every entry of any
  later leader: a deposed leader's job never lands a write after its
  successor's. The term travels in a context variable, so tasks a job
  spawns propose under the same rule.

Jobs on every node (``on=EVERY_NODE``) start once the node is ready (knows a
leader and has applied what it knows to be committed), for local caches and
the like; their commands, if any, take the ordinary write path.

``every=None`` runs a job once: once per leadership term for a leader job,
once per start for a job on every node. ``JobRunner.run_once(fn)`` starts a
one-off run now (a leader job needs this node to lead).

A job that raises is logged (rate-limited) and run again after a back-off
that doubles from ``min(every, 1 s)`` up to a minute; it never stops the
node. A job that catches its cancellation and goes on is named
(``job_ignores_cancellation``) once it outlives it by CANCEL_GRACE; a
stopping node waits that long for it, then leaves it behind
(``end_leftover_tasks``). ``JobRunner.report()`` says what each job did;
the status page and ``/metrics`` show it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import time
from collections.abc import Awaitable, Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, overload

import structlog

from ramraft.consensus import Role
from ramraft.server.logs import RateLimitedLog, code_location
from ramraft.server.request_errors import NotLeader, Unavailable

if TYPE_CHECKING:
    from ramraft.server.runtime.loop import RaftRuntime

log = structlog.get_logger("ramraft.jobs")

LEADER: Literal["leader"] = "leader"
EVERY_NODE: Literal["every-node"] = "every-node"
Where = Literal["leader", "every-node"]

MAX_BACKOFF = 60.0  # seconds between retries of a job that keeps failing
READY_POLL = 0.05  # seconds between looks at whether the node is ready (every-node jobs)
KEEP_ONE_OFFS = 20  # finished one-off runs kept for the report
# How long a cancelled job may take to end (its cleanup) before the node says
# that it ignores its cancellation, and a stopping node goes on without it.
CANCEL_GRACE = 2.0

JobFunction = Callable[..., Awaitable[Any]]

# The term a leader job runs in; 0 outside leader jobs. Read by the model's
# proposer (hosting.py) to propose a job's commands in that term only.
_JOB_TERM: contextvars.ContextVar[int] = contextvars.ContextVar("ramraft_job_term", default=0)


def job_term() -> int:
    """The leadership term the calling code runs in as a leader job; 0 when
    it is not a leader job (its commands then take the ordinary path)."""
    return _JOB_TERM.get()


class JobStopped(Unavailable):
    """A one-off run ended before it succeeded: this node stopped leading
    (or halted, or is shutting down)."""


@dataclass(frozen=True)
class JobContext:
    """What a job may want to know besides the model."""

    name: str
    node_id: str
    term: int  # the leadership term of a leader job; 0 on every node
    run: int  # 1 for the first run on this node, then 2, ...


@dataclass(frozen=True)
class Job:
    """A declared job: ``fn`` runs every ``every`` seconds (None: once) on
    ``on`` (LEADER or EVERY_NODE)."""

    fn: JobFunction
    every: float | None = None
    on: Where = LEADER
    name: str = ""

    def __post_init__(self) -> None:
        if not inspect.iscoroutinefunction(self.fn):
            raise TypeError(
                f"background job {getattr(self.fn, '__qualname__', self.fn)!r} must be an "
                "async def taking the model (and optionally a JobContext)"
            )
        if self.every is not None and not (isinstance(self.every, int | float) and self.every > 0):
            raise ValueError(f"every={self.every!r}: give a number of seconds > 0, or None")
        if self.on not in (LEADER, EVERY_NODE):
            raise ValueError(f"on={self.on!r}: use {LEADER!r} or {EVERY_NODE!r}")
        if not self.name:
            object.__setattr__(self, "name", getattr(self.fn, "__name__", "job"))
        parameters = list(inspect.signature(self.fn).parameters.values())
        positional = [
            p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if not 1 <= len(positional) <= 2:
            raise TypeError(
                f"background job {self.name} takes the model and optionally a JobContext; "
                f"it has {len(positional)} positional parameters"
            )

    @property
    def wants_context(self) -> bool:
        parameters = inspect.signature(self.fn).parameters.values()
        return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters) == 2

    async def __call__(self, model: object, context: JobContext) -> Any:
        if self.wants_context:
            return await self.fn(model, context)
        return await self.fn(model)


@overload
def background(fn: JobFunction, /) -> Job: ...
@overload
def background(
    *, every: float | None = None, on: Where = LEADER, name: str = ""
) -> Callable[[JobFunction], Job]: ...
def background(
    fn: JobFunction | None = None,
    /,
    *,
    every: float | None = None,
    on: Where = LEADER,
    name: str = "",
) -> Job | Callable[[JobFunction], Job]:
    """Declare a background job (see the module docstring); pass the result
    to ``Application(jobs=[...])``."""
    if fn is None:
        return lambda f: Job(f, every, on, name)
    return Job(fn, every, on, name)


@dataclass(frozen=True)
class JobReport:
    """One job as this node sees it (the status page and /metrics)."""

    name: str
    on: str  # "leader" or "every-node"
    every: float | None
    node: str  # this node's id
    state: str  # running, scheduled, retrying, waiting (for leadership / readiness), done, stopped
    running_here: bool  # its loop runs on this node now
    runs: int
    failures: int
    last_started: float  # unix time; 0: never
    last_finished: float
    last_seconds: float
    last_error: str
    next_run: float  # unix time of the next run when scheduled; 0 otherwise

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(eq=False)
class _JobState:
    job: Job
    one_off: bool = False
    runs: int = 0
    failures: int = 0
    last_started: float = 0.0
    last_finished: float = 0.0
    last_seconds: float = 0.0
    last_error: str = ""
    next_run: float = 0.0
    running: bool = False
    retrying: bool = False
    done: bool = False
    task: asyncio.Task[None] | None = None
    result: asyncio.Future[Any] | None = None  # a one-off run's outcome
    errors: RateLimitedLog = field(default_factory=lambda: RateLimitedLog(burst=3, seconds=60.0))


class JobRun:
    """A one-off run started by :meth:`JobRunner.run_once`: await it for the
    job's result (it raises :class:`JobStopped` if the run was stopped
    before it succeeded)."""

    def __init__(self, name: str, result: asyncio.Future[Any]) -> None:
        self.name = name
        self._result = result

    def done(self) -> bool:
        return self._result.done()

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.shield(self._result).__await__()


class JobRunner:
    """The jobs of one node. ``start()`` once the runtime runs; ``close()``
    first thing when the node stops. Its ``listener`` is one of the
    runtime's listeners: it cancels leader jobs inside the turn in which the
    node steps down."""

    def __init__(
        self,
        node_id: str,
        model: object,
        runtime: RaftRuntime,
        jobs: Iterable[Job] = (),
    ) -> None:
        self.node_id = node_id
        self.model = model
        self.runtime = runtime
        self._states: dict[str, _JobState] = {}
        for job in jobs:
            self._register(job)
        self._term = 0  # the term leader jobs run (or wait to run) in; 0: none
        self._lead_task: asyncio.Task[None] | None = None
        self._node_task: asyncio.Task[None] | None = None
        self._node_started = False
        self._started = False
        self._closed = False

    # ---- declaring -------------------------------------------------------------------------

    def add(
        self,
        fn: JobFunction | Job,
        *,
        every: float | None = None,
        on: Where = LEADER,
        name: str = "",
    ) -> Job:
        """Add a job while the node runs (or before ``start()``); it starts
        at once where it may run. Names are unique."""
        job = fn if isinstance(fn, Job) else Job(fn, every, on, name)
        state = self._register(job)
        if self._started and not self._closed:
            self._start_if_due(state)
        return job

    def _register(self, job: Job, *, one_off: bool = False) -> _JobState:
        if job.name in self._states and not self._states[job.name].one_off:
            raise ValueError(f"a background job named {job.name!r} exists already")
        state = _JobState(job, one_off=one_off)
        self._states[job.name] = state
        return state

    def run_once(self, fn: JobFunction | Job, *, on: Where = LEADER, name: str = "") -> JobRun:
        """Start one run of ``fn`` now on this node: as a leader job (this
        node must lead and have applied an entry of its term, else NotLeader
        naming the leader), or on this node whatever its role. A run that
        raises is retried with back-off until it succeeds or is stopped."""
        if self._closed:
            raise Unavailable("this node is shutting down")
        job = fn if isinstance(fn, Job) else Job(fn, None, on, name)
        final = name or job.name
        declared = self._states.get(final)
        if declared is not None and not declared.one_off:
            final += " (once)"  # a declared job, run once more now
        job = Job(job.fn, None, job.on, final)
        if job.on == LEADER:
            term = self.runtime.serving_term()
            if not term or term != self._term:
                raise NotLeader(self.runtime.leader, self.runtime.leader_client_address())
        running = self._states.get(job.name)
        if running is not None and running.result is not None and not running.result.done():
            return JobRun(job.name, running.result)  # already running: the same run
        state = self._register(job, one_off=True)
        state.result = asyncio.get_running_loop().create_future()
        self._prune_one_offs()
        self._spawn(state, self._term if job.on == LEADER else 0)
        return JobRun(job.name, state.result)

    def _prune_one_offs(self) -> None:
        finished = [n for n, s in self._states.items() if s.one_off and s.done]
        for name in finished[: max(0, len(finished) - KEEP_ONE_OFFS)]:
            del self._states[name]

    # ---- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Begin: leader jobs follow leadership, every-node jobs wait for
        the node to be ready."""
        if self._started:
            return
        self._started = True
        self.runtime.listeners.append(self.listener)
        self._node_task = asyncio.get_running_loop().create_task(
            self._start_on_every_node(), name="jobs-every-node"
        )
        self._follow_leadership()

    async def close(self) -> None:
        """Cancel every job and wait for them to end (node shutdown)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(ValueError):
            self.runtime.listeners.remove(self.listener)
        reason = "this node is shutting down"
        tasks = self._stop(leader_only=False, reason=reason, watch=False)
        if self._node_task is not None:
            self._node_task.cancel()
            tasks.append(self._node_task)
        if not tasks:
            return
        # Bounded: a job that catches its cancellation and goes on would
        # otherwise keep the node from ever stopping.
        ended, running = await asyncio.wait(tasks, timeout=CANCEL_GRACE)
        _retrieve(ended)
        _warn_still_running(running, reason)

    def listener(self, event: str, fields: dict[str, Any]) -> None:
        """A runtime listener: called inside the loop's turn."""
        if event == "role":
            self._follow_leadership()
        elif event in ("halted", "failed"):
            self._stop(leader_only=False, reason=f"this node {event}")
            if self._node_task is not None:
                self._node_task.cancel()

    def _follow_leadership(self) -> None:
        runtime = self.runtime
        core = runtime.core
        leading = (
            core is not None
            and core.role is Role.LEADER
            and runtime.halted is None
            and runtime.failed is None
            and not self._closed
        )
        term = core.term if leading and core is not None else 0
        if term == self._term:
            return
        if self._term:
            # Stepped down (or a new term): every leader job of the old term
            # ends now, in the runtime's turn that changed the role.
            self._stop(leader_only=True, reason="this node no longer leads")
        self._term = term
        if term and core is not None:
            self._lead_task = asyncio.get_running_loop().create_task(
                self._lead(term, core.last_index), name=f"jobs-lead-{term}"
            )

    async def _lead(self, term: int, first_index: int) -> None:
        """Start the leader jobs of ``term`` once the leader has applied the
        entries of its term up to ``first_index`` (its no-op at least)."""
        runtime = self.runtime
        while runtime.machine.applied_index < first_index:
            with contextlib.suppress(Unavailable):
                await runtime.wait_applied(first_index, 3600.0)
        if runtime.serving_term() != term:
            return  # deposed (or halted) meanwhile: the runtime's event stops the rest
        log.info("background_jobs_started", term=term, node=self.node_id)
        for state in list(self._states.values()):
            if state.job.on == LEADER and not state.one_off:
                self._spawn(state, term)

    async def _start_on_every_node(self) -> None:
        while not self.runtime.ready():
            await asyncio.sleep(READY_POLL)
        self._node_started = True
        for state in list(self._states.values()):
            if state.job.on == EVERY_NODE and not state.one_off:
                self._spawn(state, 0)

    def _start_if_due(self, state: _JobState) -> None:
        if state.job.on == EVERY_NODE:
            if self._node_started:
                self._spawn(state, 0)
        elif self._term and self.runtime.serving_term() == self._term:
            self._spawn(state, self._term)

    def _stop(
        self, *, leader_only: bool, reason: str, watch: bool = True
    ) -> list[asyncio.Task[Any]]:
        """Cancel the leader jobs (or all jobs) synchronously: no await
        between the decision and the cancel. Returns their tasks; with
        ``watch``, those still running CANCEL_GRACE later are logged."""
        tasks: list[asyncio.Task[Any]] = []
        if self._lead_task is not None:
            self._lead_task.cancel()
            tasks.append(self._lead_task)
            self._lead_task = None
        for state in self._states.values():
            if leader_only and state.job.on != LEADER:
                continue
            if state.task is not None and not state.task.done():
                state.task.cancel()
                tasks.append(state.task)
            state.task = None
            state.running = False
            state.next_run = 0.0
            if state.result is not None and not state.result.done():
                state.result.set_exception(JobStopped(f"{state.job.name} stopped: {reason}"))
                state.done = True
        if watch and tasks:
            asyncio.get_running_loop().call_later(
                CANCEL_GRACE,
                lambda: _warn_still_running([t for t in tasks if not t.done()], reason),
            )
        return tasks

    def _spawn(self, state: _JobState, term: int) -> None:
        if state.task is not None and not state.task.done():
            return
        state.task = asyncio.get_running_loop().create_task(
            self._run_loop(state, term), name=f"job-{state.job.name}"
        )

    # ---- running ---------------------------------------------------------------------------

    async def _run_loop(self, state: _JobState, term: int) -> None:
        # Set inside the task: only this task (and tasks it spawns) propose
        # their commands as the leader of ``term``.
        _JOB_TERM.set(term)
        job = state.job
        first_backoff = min(job.every or 1.0, 1.0)
        backoff = first_backoff
        while True:
            ok, value = await self._run_one(state, term)
            if ok:
                backoff = first_backoff
                state.retrying = False
                if job.every is None:
                    state.done = True
                    if state.result is not None and not state.result.done():
                        state.result.set_result(value)
                    return
                delay = job.every
            else:
                delay = backoff
                backoff = min(backoff * 2, MAX_BACKOFF)
                state.retrying = True
            state.next_run = time.time() + delay
            await asyncio.sleep(delay)
            state.next_run = 0.0

    async def _run_one(self, state: _JobState, term: int) -> tuple[bool, Any]:
        state.runs += 1
        state.running = True
        state.last_started = time.time()
        started = time.monotonic()
        context = JobContext(state.job.name, self.node_id, term, state.runs)
        try:
            value = await state.job(self.model, context)
        except Exception as e:
            state.failures += 1
            state.last_error = f"{type(e).__name__}: {e}"
            state.errors.warning(
                "background_job_failed",
                job=state.job.name,
                node=self.node_id,
                term=term or None,
                failures=state.failures,
                error=state.last_error,
                where=code_location(e),
            )
            return False, None
        finally:
            state.running = False
            state.last_finished = time.time()
            state.last_seconds = time.monotonic() - started
        state.last_error = ""
        return True, value

    # ---- reports ---------------------------------------------------------------------------

    def report(self) -> list[JobReport]:
        out = []
        for state in self._states.values():
            here = state.task is not None and not state.task.done()
            if state.running:
                what = "running"
            elif here and state.retrying:
                what = "retrying"
            elif here:
                what = "scheduled"
            elif state.done:
                what = "done"
            elif self._closed or self.runtime.halted is not None or self.runtime.failed:
                what = "stopped"
            else:
                what = "waiting"
            out.append(
                JobReport(
                    name=state.job.name,
                    on=state.job.on,
                    every=state.job.every,
                    node=self.node_id,
                    state=what,
                    running_here=here,
                    runs=state.runs,
                    failures=state.failures,
                    last_started=state.last_started,
                    last_finished=state.last_finished,
                    last_seconds=state.last_seconds,
                    last_error=state.last_error,
                    next_run=state.next_run,
                )
            )
        return out


def _warn_still_running(tasks: Iterable[asyncio.Task[Any]], reason: str) -> None:
    """Name the cancelled jobs that did not end (they catch
    asyncio.CancelledError and go on): on a deposed leader such a job runs
    on (its commands are refused: they belong to its old term), and at a
    node's stop it is left behind."""
    for task in tasks:
        log.warning(
            "job_ignores_cancellation",
            task=task.get_name(),
            reason=reason,
            cancelled_seconds_ago=CANCEL_GRACE,
            fix="a job must let asyncio.CancelledError propagate (re-raise it after cleaning up)",
        )


def end_leftover_tasks(loop: asyncio.AbstractEventLoop, grace: float = CANCEL_GRACE) -> None:
    """Cancel the tasks still pending on ``loop`` (whose work is done: a
    stopped node's, a closed test cluster's) and let them end within
    ``grace`` seconds, not for ever as ``asyncio.run`` would: a job that
    ignores its cancellation (named by ``job_ignores_cancellation``) is
    left behind, so that the process or the test goes on."""
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in pending:
        task.cancel()
    if not pending:
        return
    ended, stuck = loop.run_until_complete(asyncio.wait(pending, timeout=grace))
    _retrieve(ended)
    for task in stuck:
        # Named already; asyncio would add "Task was destroyed but it is pending!".
        task._log_destroy_pending = False  # type: ignore[attr-defined]


def _retrieve(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Take each ended task's outcome, so that asyncio does not report an
    exception as never retrieved (the jobs log their own errors)."""
    for task in tasks:
        if not task.cancelled():
            task.exception()

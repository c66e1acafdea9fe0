"""The embedding API: an application's own replicated objects.

In the spirit of Prevayler and bknr.datastore: the application's data is an
ordinary Python object in RAM, changed only by *commands* that go through the
Raft log and run, in log order, on every node::

    class Board(ReplicatedModel):
        def __init__(self) -> None:
            self.notes: dict[int, str] = {}
            self.next_id = 1

        @command
        def add(self, text: str) -> int:
            if not text:
                raise ValueError("empty note")    # before any change: nothing applied
            note_id = self.next_id
            self.notes[note_id] = text
            self.next_id += 1
            return note_id

    board = Board()
    machine = ModelMachine(board)          # what the runtime applies entries to
    machine.bind(node.propose)             # async (data: bytes) -> object
    note_id = await board.add("hello")     # proposes, waits for local apply
    board.notes[note_id]                   # a plain memory read

Calling ``board.add(...)`` from application code does not run ``add``: it
checks the arguments against the signature, serialises the call (the name and
plain-data arguments, with msgpack; never pickle), and returns an awaitable
that proposes it through the injected proposer and resolves to the method's
result once the entry has been applied on this node. The runtime applies the
entry by calling :meth:`ModelMachine.apply`, which runs the real method on the
node's one instance (the object the application holds), so reads on the node
see committed state. Every node does the same with its own instance.

Rules for commands (deterministic replay)
-----------------------------------------
A command must compute the same changes and result on every node, now and when
the log is replayed after a restart:

- no clocks (``time``, ``datetime.now``), randomness (``random``, ``uuid4``),
  I/O, network, environment variables or other outside state: compute such
  values BEFORE the call and pass them as arguments;
- no result or effect that depends on the iteration order of a ``set`` or
  ``frozenset`` (for ``str``/``bytes`` it depends on each process's hash seed,
  and a set rebuilt from a snapshot may iterate in another order than the one
  that grew on a live node; iterate ``sorted(s)``); ``dict`` order is fine (it
  is insertion order, and snapshots keep it); no ``id()``/``hash()``;
- change only the model's own state, and only through commands: application
  code that mutates the model directly changes one node only;
- a command cannot call another command (that would propose from inside apply);
  share code through plain helper methods instead;
- keep state to plain data: ``dict``, ``list``, ``tuple``, ``set``,
  ``frozenset``, ``str``, ``bytes``, ``int`` (64-bit), ``float``, ``bool``,
  ``None`` (``dict`` keys: any of these that are hashable). Subclasses (an
  ``IntEnum``, a ``defaultdict``) are rejected; convert them first.

Errors, and what a failing command leaves behind
-------------------------------------------------
- Arguments that are not plain data, or do not fit the signature: raised at
  call time (``NotPlainDataError``/``TypeError``); nothing is proposed.
- A command that is ``async``, a generator, or a static/class method: rejected
  with ``TypeError`` when the class is defined.
- Calling a command on a model that is not attached to a ``ModelMachine`` with
  a proposer: ``NotBoundError`` at call time.
- A command that raises an ``Exception`` during apply: the entry counts as
  applied and the caller gets :class:`CommandFailedError` (code
  ``COMMAND_FAILED``, with the exception's type and message). **Changes the
  command made before raising are kept** -- there is no rollback -- but they are
  the same on every node, because the command is deterministic. Write commands
  as "check everything, then mutate". ``MemoryError`` (and non-``Exception``
  errors such as ``KeyboardInterrupt``) are not deterministic: they propagate
  and stop the node instead. ``RecursionError`` is treated as a command failure;
  keep recursion shallow, as the stack depth at apply time may differ between
  nodes.
- A command whose result is not plain data: its changes are kept, the caller
  gets ``CommandFailedError`` with code ``BAD_RESULT``. Results reach the caller
  as a copy (a round trip through the same encoding), so application code can
  never hold a reference into the replicated state through a result.
- An entry naming a command the class does not have (written by another
  version of the application): the node stops applying at that entry
  (``ApplyHalted``; it reports not ready and says why) until it is restarted
  with code that has the command. Skipping it would let this node's state
  drift from its peers' for ever.

Versions
--------
``app_version = N`` on the model class says the code supports version N;
``@command(since=N)`` marks a command new in N. The cluster runs one *active*
version, replicated state switched through the log once every node supports
the new one (machines/cluster.py). A command newer than the active version is
refused before it is proposed (``CommandNotActiveError``) and, should it reach
the log anyway, applies as a ``NOT_ACTIVE`` error everywhere. The switch calls
``upgrade(from_version)`` on every node at the same index.

Snapshots
---------
By default a model's state is its instance ``__dict__``; override
:meth:`ReplicatedModel.snapshot_state` / :meth:`ReplicatedModel.restore_state`
to choose (e.g. to skip a cache and rebuild it after restore). ``snapshot()``
encodes the state on the event loop (the objects are mutable, so the encoded
bytes ARE the consistent copy; the pause grows with the state, see
bench/bench_statemachine.py); ``write_to`` then writes it from a worker thread.
Top-level ``dict`` and ``list`` attributes are split into chunks, so restore
reads the stream incrementally and never holds the whole encoded state. Restore
replaces the contents of the SAME instance (references to the model stay
valid; references to its inner containers do not). A model with a very large
state and values that are never mutated in place can override ``snapshot`` on
a ``ModelMachine`` subclass with a copy-on-write view as server/machines/kv.py does.

Change events for live pages
----------------------------
Inside a command, ``self.publish(topic, data)`` records an event (``data``:
JSON-able plain data) that is handed to the node's event feed once the
entry is applied, with the entry's index (``ModelMachine.on_published``;
server/web/sse.py streams them to browsers). Every node publishes the same
events at the same index, also when it replays its log. Data that is not
JSON fails the command, the same way on every node. Events of a command that
raises after publishing are delivered too: its changes are kept as well.

Exactly-once: a call can carry a session (see server/machines/sessions.py); the default
bound call does not (the runtime proposes in-process calls once). Calls with a
session are deduplicated by a session table that is part of the snapshot.
"""

from __future__ import annotations

import inspect
import json
import re
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from itertools import islice
from typing import (
    Any,
    ClassVar,
    Concatenate,
    Generic,
    NamedTuple,
    ParamSpec,
    Protocol,
    TypeVar,
    cast,
    overload,
)

import msgpack
import structlog

from ramraft.server.machines.blobs import blob_ref_set
from ramraft.server.machines.sessions import (
    DEFAULT_IDLE_ENTRIES,
    DEFAULT_MAX_REPLIES,
    DEFAULT_MAX_SESSIONS,
    SessionRecord,
    SessionTable,
    chunk_records,
    records_from_plain,
    records_to_plain,
    session_error,
    valid_session,
)
from ramraft.server.machines.statemachine import (
    TAG_MODEL,
    ApplyHalted,
    CommandError,
    ErrorCode,
    FrameReader,
    FrameWriter,
    ReadableStream,
    SnapshotAbortedError,
    SnapshotError,
    SnapshotFormatError,
    StateMachine,
    WritableStream,
)

log = structlog.get_logger(__name__)

__all__ = [
    "BadCallError",
    "BoundCommand",
    "Call",
    "Command",
    "CommandFailedError",
    "CommandNestingError",
    "CommandNotActiveError",
    "LocalProposer",
    "ModelMachine",
    "NotBoundError",
    "NotPlainDataError",
    "Proposer",
    "ReplicatedModel",
    "command",
    "decode_call",
    "encode_call",
    "pack_plain",
    "unpack_plain",
]

M = TypeVar("M", bound="ReplicatedModel")
P = ParamSpec("P")
R = TypeVar("R")


# -- errors -------------------------------------------------------------------


class NotPlainDataError(TypeError):
    """A value cannot be replicated: it is not plain data."""


class NotBoundError(RuntimeError):
    """A command was called on a model no node applies, or before the runtime
    gave its ModelMachine a proposer."""


class CommandNotActiveError(RuntimeError):
    """The command is new in an application version the cluster has not
    switched to yet (it switches once every node's code supports it).
    Nothing was proposed."""


class CommandNestingError(RuntimeError):
    """A command called another command while being applied."""


class BadCallError(ValueError):
    """Entry bytes that are not a model call."""


class CommandFailedError(Exception):
    """The call was committed but produced an error result (the same on every
    node). ``code`` says which kind; ``message`` what happened."""

    def __init__(self, error: CommandError) -> None:
        super().__init__(str(error))
        self.code = error.code
        self.message = error.message
        self.error = error


# -- plain-data encoding --------------------------------------------------------

_EXT_TUPLE = 1
_EXT_SET = 2
_EXT_FROZENSET = 3
_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 64) - 1
_PLAIN = "dict, list, tuple, set, frozenset, str, bytes, int, float, bool, None"


def _packb(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True, strict_types=True, default=_default)


def _sorted_canonically(items: list[Any]) -> list[Any]:
    """A set's items in an order that depends only on the items: their own
    order where they compare (the common case, and the encoding earlier
    releases wrote), otherwise the order of their encodings. Iteration order
    of a set depends on the process's hash seed, so without this two nodes
    holding equal sets of mixed types would encode (and digest) differently."""
    try:
        items.sort()
    except TypeError:
        items.sort(key=_packb)
    return items


def _default(obj: object) -> msgpack.ExtType:
    kind = type(obj)
    if kind is tuple:
        return msgpack.ExtType(_EXT_TUPLE, _packb(list(cast(tuple[Any, ...], obj))))
    if kind is set or kind is frozenset:
        items = _sorted_canonically(list(cast(set[Any], obj)))
        return msgpack.ExtType(_EXT_SET if kind is set else _EXT_FROZENSET, _packb(items))
    if kind is int:
        raise NotPlainDataError(f"int {obj} is outside the 64-bit range [{_INT_MIN}, {_INT_MAX}]")
    hint = ""
    for base in (int, float, str, bytes, dict, list, tuple, set, frozenset):
        if isinstance(obj, base):
            hint = f" (a subclass of {base.__name__}: convert it to a plain {base.__name__})"
            break
    raise NotPlainDataError(
        f"{kind.__module__}.{kind.__qualname__} is not plain data{hint}; allowed: {_PLAIN}"
    )


def pack_plain(obj: object) -> bytes:
    """Encode plain data (see the module docstring); raises NotPlainDataError."""
    try:
        return _packb(obj)
    except NotPlainDataError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        # UnicodeEncodeError (lone surrogates), nesting too deep, cycles...
        raise NotPlainDataError(f"cannot encode as plain data: {exc}") from None


def _ext_hook(code: int, data: bytes) -> object:
    items = unpack_plain(data)
    if type(items) is not list:
        raise ValueError("bad container payload")
    if code == _EXT_TUPLE:
        return tuple(items)
    if code == _EXT_SET:
        return set(items)
    if code == _EXT_FROZENSET:
        return frozenset(items)
    raise ValueError(f"unknown extension type {code}")


def unpack_plain(data: bytes | memoryview) -> Any:
    """Decode what pack_plain() made. Raises ValueError/TypeError on bad bytes."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True, ext_hook=_ext_hook)


# -- calls on the wire --------------------------------------------------------


class Call(NamedTuple):
    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    session: tuple[int, int, int] | None = None
    """``(client_id, sequence, first_unacked)``; see server/machines/sessions.py."""


_TAG = bytes([TAG_MODEL])


def encode_call(
    name: str,
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: dict[str, Any] | None = None,
    session: tuple[int, int] | tuple[int, int, int] | None = None,
) -> bytes:
    """Entry data for calling command ``name``. ``session`` is ``(client_id,
    sequence, first_unacked)`` (a pair means first_unacked 0). Raises
    NotPlainDataError if an argument is not plain data, ValueError for bad
    session ids."""
    items: list[Any] = [name, list(args), dict(kwargs or {})]
    if session is not None:
        if len(session) not in (2, 3) or not valid_session(*session):
            raise ValueError(session_error(session))
        items.extend(session)
        if len(session) == 2:
            items.append(0)
    try:
        return _TAG + pack_plain(items)
    except NotPlainDataError as exc:
        raise NotPlainDataError(f"arguments of {name}() are not plain data: {exc}") from None


def decode_call(data: bytes) -> Call:
    """Decode entry data made by encode_call(); raises BadCallError."""
    if not data or data[0] != TAG_MODEL:
        raise BadCallError("not a model call (wrong tag)")
    try:
        items = unpack_plain(memoryview(data)[1:])
    except Exception as exc:  # msgpack raises several types for bad input
        raise BadCallError(f"undecodable model call: {exc}") from None
    if type(items) is not list or len(items) not in (3, 6):
        raise BadCallError("a model call is an array of 3 or 6 items")
    name, args, kwargs = items[0], items[1], items[2]
    if type(name) is not str or type(args) is not list or type(kwargs) is not dict:
        raise BadCallError("a model call is [name: str, args: list, kwargs: map, ...]")
    if not all(type(k) is str for k in kwargs):
        raise BadCallError("keyword argument names must be strings")
    session: tuple[int, int, int] | None = None
    if len(items) == 6:
        if not valid_session(items[3], items[4], items[5]):
            raise BadCallError(f"bad session {items[3:]!r}")
        session = (items[3], items[4], items[5])
    return Call(name, args, kwargs, session)


# -- the model side -----------------------------------------------------------


class Proposer(Protocol):
    """Provided by the runtime: replicate ``data`` through Raft, wait until the
    entry is applied on this node, return what apply() returned for it."""

    def __call__(self, data: bytes, /) -> Awaitable[object]: ...


class BoundCommand(Generic[P, R]):
    """``model.some_command``: calling it proposes the call."""

    __slots__ = ("_command", "_model")

    def __init__(self, command: Command[Any, P, R], model: ReplicatedModel) -> None:
        self._command = command
        self._model = model

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        return self._command._propose(self._model, args, kwargs)

    def __repr__(self) -> str:
        return f"<command {type(self._model).__qualname__}.{self._command.name}>"


class Command(Generic[M, P, R]):
    """A method marked with ``@command`` (a descriptor)."""

    def __init__(self, fn: Callable[Concatenate[M, P], R], since: int = 1) -> None:
        if type(since) is not int or since < 1:
            raise TypeError(f"@command(since=...) takes a version >= 1, got {since!r}")
        if isinstance(fn, staticmethod | classmethod):
            raise TypeError("@command goes on plain methods, not static or class methods")
        if not callable(fn):
            raise TypeError(f"@command needs a function, got {fn!r}")
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(
                f"command {fn.__qualname__} is async: commands run synchronously inside apply; "
                "make it a plain def and do any awaiting before proposing"
            )
        if inspect.isgeneratorfunction(fn):
            raise TypeError(
                f"command {fn.__qualname__} is a generator: its body would run lazily, "
                "outside apply; return a list instead"
            )
        self.fn = fn
        self.since = since
        self.name: str = fn.__name__
        self.signature = inspect.signature(fn)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __set_name__(self, owner: type, name: str) -> None:
        if not (isinstance(owner, type) and issubclass(owner, ReplicatedModel)):
            raise TypeError(
                f"@command {name} is defined on {owner.__qualname__}, "
                "which is not a ReplicatedModel subclass"
            )
        if name in _RESERVED:
            raise TypeError(f"{name} is a ReplicatedModel method and cannot be a command")
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type[Any] | None = None) -> Command[M, P, R]: ...
    @overload
    def __get__(self, obj: M, owner: type[Any] | None = None) -> BoundCommand[P, R]: ...
    def __get__(
        self, obj: M | None, owner: type[Any] | None = None
    ) -> Command[M, P, R] | BoundCommand[P, R]:
        if obj is None:
            return self
        return BoundCommand(self, obj)

    def _propose(
        self, model: ReplicatedModel, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Coroutine[Any, Any, R]:
        machine: ModelMachine | None = getattr(model, "_ramraft_machine", None)
        qualname = f"{type(model).__qualname__}.{self.name}"
        if machine is not None and machine.applying:
            raise CommandNestingError(
                f"{qualname}() called while a command is being applied: commands cannot call "
                "commands; move the shared code into a plain method"
            )
        if machine is None or machine.proposer is None:
            raise NotBoundError(
                f"{qualname}() called on a model that no node applies: wrap it in "
                "ModelMachine(model) and bind() the runtime's proposer (or a LocalProposer)"
            )
        machine.check_active(self)
        try:
            self.signature.bind(model, *args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{qualname}(): {exc}") from None
        data = encode_call(self.name, args, kwargs)
        return machine.propose(data)


@overload
def command(fn: Callable[Concatenate[M, P], R], /) -> Command[M, P, R]: ...
@overload
def command(*, since: int = 1) -> Callable[[Callable[Concatenate[M, P], R]], Command[M, P, R]]: ...
def command(
    fn: Callable[Concatenate[M, P], R] | None = None, /, *, since: int = 1
) -> Command[M, P, R] | Callable[[Callable[Concatenate[M, P], R]], Command[M, P, R]]:
    """Mark a method of a :class:`ReplicatedModel` as a replicated command.

    ``@command(since=2)``: the command is new in application version 2. It is
    refused (``CommandNotActiveError``, nothing proposed) until the cluster
    has switched to version 2, which it does once every node's code supports
    it (machines/cluster.py); nodes still running version 1 code therefore
    never meet it in the log."""
    if fn is None:
        return lambda f: Command(f, since)
    return Command(fn, since)


class ReplicatedModel:
    """Base class of application models. Subclasses define state in
    ``__init__`` and change it only in ``@command`` methods.

    Versions: ``app_version`` (a class attribute, default 1) is the newest
    version this code supports. When every node of the cluster supports a
    newer version than the cluster runs, the leader switches the cluster to
    it through the log, and every node calls :meth:`upgrade` at that index,
    once per step. ``active_app_version`` is the version the cluster runs at
    the entry being applied (read it in a command to keep the old behaviour
    for entries written before a switch)."""

    __slots__ = ("__dict__", "__weakref__", "_ramraft_machine")
    _ramraft_commands: dict[str, Command[Any, Any, Any]] = {}
    app_version: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        version = cls.__dict__.get("app_version", cls.app_version)
        if type(version) is not int or version < 1:
            raise TypeError(f"{cls.__qualname__}.app_version must be an int >= 1, got {version!r}")
        commands: dict[str, Command[Any, Any, Any]] = {}
        for klass in reversed(cls.__mro__):
            for name, attr in vars(klass).items():
                if isinstance(attr, Command):
                    commands[name] = attr
                elif name in commands:
                    del commands[name]  # overridden by a plain attribute
        for name, cmd in commands.items():
            if cmd.since > version:
                raise TypeError(
                    f"command {cls.__qualname__}.{name} is new in version {cmd.since}, "
                    f"but {cls.__qualname__}.app_version is {version}"
                )
        cls._ramraft_commands = commands

    @property
    def active_app_version(self) -> int:
        """The application version the cluster runs (at the entry being
        applied, inside a command). Not part of the model's own state."""
        machine: ModelMachine | None = getattr(self, "_ramraft_machine", None)
        return machine.active_version if machine is not None else 1

    def publish(self, topic: str, data: object = None) -> None:
        """Inside a command: publish a change event on ``topic`` with JSON-able
        ``data``, for live pages. It reaches the node's event feed once the
        command's entry is applied (on every node, with the entry's index as
        its id); outside a command it raises RuntimeError."""
        machine: ModelMachine | None = getattr(self, "_ramraft_machine", None)
        if machine is None:
            raise RuntimeError(f"{type(self).__qualname__}.publish(): no node applies this model")
        machine.publish(topic, data)

    def upgrade(self, from_version: int) -> None:
        """Change the state's shape from ``from_version`` to the next version.

        Called on every node while applying the log entry that switches the
        cluster's version, once per step (1 -> 3 calls it with 1, then 2), so
        it must be deterministic, like a command. If it raises, the state is
        put back as it was before the switch and the cluster stays at its
        version (the same on every node; the leader tries it on a copy first
        and does not propose a switch that fails). Default: no change."""

    def blob_refs(self) -> Iterable[object] | None:
        """The blobs this state refers to (server/blobs/): hex SHA-256
        strings, ``BlobRef`` objects or their ``to_plain()`` mappings. Blobs in
        none of them, and neither put nor referenced within the grace period,
        are collected (machines/blobs.py). Runs while a log entry is applied,
        on every node: it must be deterministic, like a command. Default
        None: the model does not say, and blobs are removed only by an
        explicit delete."""
        return None

    def snapshot_state(self) -> dict[str, Any]:
        """The state to snapshot, as plain data: by default every instance
        attribute. Called on the event loop; the result is encoded at once."""
        return dict(vars(self))

    def restore_state(self, state: dict[str, Any]) -> None:
        """Replace the state with what snapshot_state() returned on some node.
        By default the instance attributes become exactly ``state``."""
        attributes = vars(self)
        attributes.clear()
        attributes.update(state)


_RESERVED = frozenset(
    {
        "blob_refs",
        "publish",
        "snapshot_state",
        "restore_state",
        "upgrade",
        "app_version",
        "active_app_version",
        "_ramraft_commands",
        "_ramraft_machine",
    }
)


def _reply_to_plain(reply: object) -> tuple[Any, ...]:
    if type(reply) is bytes:
        return (1, reply)
    if type(reply) is CommandError:
        return (0, int(reply.code), reply.message)
    raise TypeError(f"unexpected session reply {reply!r}")


def _reply_from_plain(plain: Any) -> bytes | CommandError:
    if plain[0] == 1 and type(plain[1]) is bytes:
        return bytes(plain[1])
    if plain[0] == 0:
        return CommandError(ErrorCode(plain[1]), str(plain[2]))
    raise ValueError(f"bad session reply {plain!r}")


_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")
MAX_TOPIC = 200
MAX_EVENTS_PER_COMMAND = 1000
_TOPIC = re.compile(rf"[A-Za-z0-9._:/-]{{1,{MAX_TOPIC}}}")
_MODEL_MAGIC = b"RRMD"
_MODEL_VERSION = 2  # 2: sessions keep a floor and many replies per client
_CHUNK_ITEMS = 4096
_REC_HEADER, _REC_SESSIONS, _REC_VALUE, _REC_DICT, _REC_LIST, _REC_END = range(6)


def _error_message(exc: Exception) -> str:
    # Object reprs carry memory addresses, which differ between nodes.
    return _ADDRESS.sub("0x?", f"{type(exc).__name__}: {exc}")


class _ModelSnapshotJob:
    def __init__(self, index: int, records: list[bytes]) -> None:
        self._index = index
        self._records: list[bytes] | None = records

    @property
    def index(self) -> int:
        return self._index

    def write_to(self, stream: WritableStream) -> int:
        records = self._records
        if records is None:
            raise SnapshotAbortedError("snapshot job already written or closed")
        try:
            frames = FrameWriter(stream, _MODEL_MAGIC, _MODEL_VERSION)
            for i, record in enumerate(records):
                frames.frame(record)
                records[i] = b""  # free what has been written
            return frames.bytes_written
        finally:
            self.close()

    def close(self) -> None:
        self._records = None


class ModelMachine:
    """The state machine that applies model calls to one model instance.

    ``session limits`` as in server/machines/sessions.py; they must be the same on every
    node.
    """

    def __init__(
        self,
        model: ReplicatedModel,
        *,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        session_idle_entries: int | None = DEFAULT_IDLE_ENTRIES,
        session_max_replies: int = DEFAULT_MAX_REPLIES,
    ) -> None:
        if not isinstance(model, ReplicatedModel):
            raise TypeError(f"ModelMachine needs a ReplicatedModel, got {type(model).__qualname__}")
        if getattr(model, "_ramraft_machine", None) is not None:
            raise ValueError("this model instance is already attached to a ModelMachine")
        self.model = model
        self.sessions = SessionTable(max_sessions, session_idle_entries, session_max_replies)
        self.proposer: Proposer | None = None
        self.applying = False
        # Called with (index, [(topic, JSON text)]) once an entry whose
        # command published events is applied (the node's event feed).
        self.on_published: Callable[[int, list[tuple[str, str]]], None] | None = None
        self._events: list[tuple[str, str]] | None = None  # while a command runs
        self.active_version = 1
        """The application version the cluster runs; machines/cluster.py
        keeps it current (a machine on its own runs version 1)."""
        self._commands = type(model)._ramraft_commands
        self._applied_index = 0
        # What the code's own __init__ sets, to name what a snapshot lacks
        # (restore): only for models whose state is their attributes.
        cls = type(model)
        default_state = (
            cls.snapshot_state is ReplicatedModel.snapshot_state
            and cls.restore_state is ReplicatedModel.restore_state
        )
        self._initial_attributes = frozenset(vars(model)) if default_state else None
        object.__setattr__(model, "_ramraft_machine", self)

    @property
    def applied_index(self) -> int:
        return self._applied_index

    @property
    def supported_version(self) -> int:
        """The newest application version this node's code supports."""
        return type(self.model).app_version

    # -- versions -------------------------------------------------------------

    def _not_active(self, cmd: Command[Any, Any, Any]) -> str | None:
        if cmd.since <= self.active_version:
            return None
        return (
            f"command {self.model_name}.{cmd.name} needs app version {cmd.since}; the cluster "
            f"runs version {self.active_version} until every node supports it"
        )

    def check_active(self, cmd: Command[Any, Any, Any]) -> None:
        """Raise CommandNotActiveError if ``cmd`` may not be proposed yet."""
        refusal = self._not_active(cmd)
        if refusal is not None:
            raise CommandNotActiveError(refusal)

    def check_proposal(self, data: bytes) -> str | None:
        """Why the entry ``data`` must not be proposed by this node, or None.

        A leader checks what it is asked to propose (also what a follower
        forwards): a command its own code does not have would stop every node
        that lacks it, and one of a version the cluster does not run yet
        could only fail."""
        try:
            call = decode_call(data)
        except BadCallError:
            return None  # applies as a BAD_COMMAND result, the same everywhere
        cmd = self._commands.get(call.name)
        if cmd is None:
            return (
                f"{self.model_name} has no command {call.name!r} in this node's code "
                f"(app version {self.supported_version})"
            )
        return self._not_active(cmd)

    def upgrade(self, from_version: int, to_version: int) -> CommandError | None:
        """Run the model's ``upgrade`` for every step from ``from_version`` to
        ``to_version``; if a step raises, put the state back as it was and
        return an UPGRADE_FAILED error (the same on every node)."""
        saved = _copy_state(self.model)
        self.applying = True
        try:
            for version in range(from_version, to_version):
                self.model.upgrade(version)
        except MemoryError:
            raise
        except Exception as exc:
            self.model.restore_state(saved)
            return CommandError(
                ErrorCode.UPGRADE_FAILED,
                f"{self.model_name}.upgrade({version}) failed: {_error_message(exc)}; "
                f"the state is as it was and the cluster stays at version {from_version}",
            )
        finally:
            self.applying = False
        return None

    def try_upgrade(self, from_version: int, to_version: int) -> str | None:
        """Run the upgrade on a copy of the state: why it fails, or None. The
        leader asks this before it proposes a switch."""
        cls = type(self.model)
        clone = cls.__new__(cls)
        try:
            clone.restore_state(_copy_state(self.model))
            for version in range(from_version, to_version):
                clone.upgrade(version)
        except MemoryError:
            raise
        except Exception as exc:
            return f"{self.model_name}.upgrade() on a copy of the state: {_error_message(exc)}"
        return None

    @property
    def model_name(self) -> str:
        return type(self.model).__qualname__

    def blob_refs(self) -> set[str] | None:
        """The hex digests the model's ``blob_refs()`` names, or None when
        the model does not declare them (machines/blobs.py)."""
        self.applying = True  # a command called from blob_refs() is refused
        try:
            refs = self.model.blob_refs()
        finally:
            self.applying = False
        return None if refs is None else blob_ref_set(refs)

    def bind(self, proposer: Proposer | None) -> None:
        """Route the model's command calls to ``proposer`` (None: unbind)."""
        self.proposer = proposer

    async def propose(self, data: bytes) -> Any:
        """Propose encoded call data; return the command's result or raise
        CommandFailedError. (Command calls on the model end up here.)"""
        proposer = self.proposer
        if proposer is None:
            raise NotBoundError("no proposer bound to this ModelMachine")
        result = await proposer(data)
        if isinstance(result, CommandError):
            if result.code is ErrorCode.NOT_ACTIVE:
                raise CommandNotActiveError(result.message)
            raise CommandFailedError(result)
        return result

    # -- apply ----------------------------------------------------------------

    def apply(self, index: int, command: bytes) -> object:
        if index <= self._applied_index:
            raise ValueError(f"apply({index}) after applied index {self._applied_index}")
        if not command:
            self._applied_index = index
            return None
        try:
            call = decode_call(command)
        except BadCallError as exc:
            self._applied_index = index
            return CommandError(ErrorCode.BAD_COMMAND, str(exc))
        if call.name not in self._commands:
            # Written by other code (a newer version, or code that lost this
            # command). Skipping it would leave this node's state different
            # from its peers' for ever: stop here instead, changing nothing.
            raise ApplyHalted(
                index,
                f"{self.model_name} has no command {call.name!r} in this node's code (app "
                f"version {self.supported_version}); restart this node with code that has it",
            )
        self._applied_index = index
        try:
            reply = self._reply(self.sessions.run_once(call.session, index, self._run, call))
        finally:
            events, self._events = self._events, None
        if events and self.on_published is not None:
            self.on_published(index, events)
        return reply

    def publish(self, topic: str, data: object) -> None:
        """Record an event of the command being applied (ReplicatedModel.publish)."""
        events = self._events
        if events is None:
            raise RuntimeError(
                f"{self.model_name}.publish() is for commands: it runs on every node as the "
                "command is applied; outside one it would happen on one node only"
            )
        if type(topic) is not str or not _TOPIC.fullmatch(topic):
            raise ValueError(
                f"publish(): topic {topic!r} must be 1-{MAX_TOPIC} letters, digits or ._:/-"
            )
        if len(events) >= MAX_EVENTS_PER_COMMAND:
            raise ValueError(f"publish(): at most {MAX_EVENTS_PER_COMMAND} events per command")
        try:
            text = json.dumps(data, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"publish(): the data is not JSON: {exc}") from None
        events.append((topic, text))

    @staticmethod
    def _reply(outcome: object) -> object:
        if type(outcome) is bytes:
            return unpack_plain(outcome)  # a fresh copy for every caller
        return outcome

    def _run(self, call: Call) -> bytes | CommandError:
        """Run the command; its packed result or an error."""
        cmd = self._commands[call.name]
        refusal = self._not_active(cmd)
        if refusal is not None:
            return CommandError(ErrorCode.NOT_ACTIVE, refusal)
        self.applying = True
        self._events = []
        try:
            value = cmd.fn(self.model, *call.args, **call.kwargs)
        except MemoryError:
            raise
        except Exception as exc:
            return CommandError(
                ErrorCode.COMMAND_FAILED,
                f"{self.model_name}.{call.name}: {_error_message(exc)}; "
                "changes made before the exception were kept",
            )
        finally:
            self.applying = False
        try:
            return pack_plain(value)
        except NotPlainDataError as exc:
            return CommandError(
                ErrorCode.BAD_RESULT,
                f"{self.model_name}.{call.name} was applied but its result is not plain "
                f"data: {exc}",
            )

    # -- snapshots ------------------------------------------------------------

    def snapshot(self) -> _ModelSnapshotJob:
        """Encode the model's state now (on the loop); write it later."""
        state = self.model.snapshot_state()
        if type(state) is not dict:
            raise SnapshotError(f"{self.model_name}.snapshot_state() must return a dict")
        sessions = self.sessions.copy_entries()
        records = [
            pack_plain(
                (_REC_HEADER, self._applied_index, self.model_name, len(state), len(sessions))
            )
        ]
        for chunk in chunk_records(sessions, _CHUNK_ITEMS):
            records.append(pack_plain((_REC_SESSIONS, records_to_plain(chunk, _reply_to_plain))))
        for name, value in state.items():
            if type(name) is not str:
                raise SnapshotError(f"{self.model_name} state key {name!r} is not a str")
            try:
                records.extend(_encode_attribute(name, value))
            except NotPlainDataError as exc:
                raise SnapshotError(
                    f"{self.model_name}.{name} is not plain data, cannot snapshot: {exc}"
                ) from None
        records.append(pack_plain((_REC_END, len(records) - 1)))
        return _ModelSnapshotJob(self._applied_index, records)

    def restore(self, stream: ReadableStream) -> None:
        """Replace the model's state from a snapshot stream; on a bad stream
        raise SnapshotFormatError and leave the model as it was. Run it on the
        event loop (or with the loop's readers stopped): the last step
        replaces the model's attributes in place."""
        started = time.perf_counter()
        index, name, state, sessions = read_model_snapshot(stream)
        if name != self.model_name:
            raise SnapshotFormatError(
                f"snapshot is of model {name!r}, this node's model is {self.model_name!r}"
            )
        table = self.sessions.empty_like()
        try:
            table.load(sessions)
        except ValueError as exc:
            raise SnapshotFormatError(f"bad session record in model snapshot: {exc}") from None
        try:
            self.model.restore_state(state)
        except Exception as exc:
            raise SnapshotError(
                f"{self.model_name}.restore_state() failed: {_error_message(exc)}"
            ) from exc
        self.sessions.adopt(table)
        self._applied_index = index
        self._check_attributes(state, index)
        log.info(
            "model snapshot restored",
            model=self.model_name,
            index=index,
            seconds=round(time.perf_counter() - started, 3),
        )

    def _check_attributes(self, state: dict[str, Any], index: int) -> None:
        """Warn when the snapshot lacks attributes this code's ``__init__``
        sets, at the version the code supports: the model's state changed
        without a new ``app_version``. This node now differs from one that
        rebuilds the state by replaying the log from its start (whose
        ``__init__`` set them), and a command using them fails on this
        node only. Below the supported version an ``upgrade`` is still to
        run, which may set them."""
        if self._initial_attributes is None or self.active_version != self.supported_version:
            return
        missing = sorted(self._initial_attributes - state.keys())
        if not missing:
            return
        version = self.active_version
        log.warning(
            "model_attributes_missing",
            model=self.model_name,
            index=index,
            app_version=version,
            missing=missing,
            action=(
                f"this code's {self.model_name}.__init__ sets {', '.join(missing)}, which "
                f"the snapshot (taken at app version {version}) has not: nodes that restore "
                "it differ from nodes that replay the log, and commands that use them fail "
                "on the first only. If the model's state changed, give the class "
                f"app_version = {version + 1} and an upgrade() that sets them (README: "
                "Deploying new code); if the change is not deployed everywhere yet, roll "
                "it back"
            ),
        )


def read_model_snapshot(
    stream: ReadableStream,
) -> tuple[int, str, dict[str, Any], list[SessionRecord]]:
    """Decode and check a whole model snapshot stream, without a model:
    ``(applied index, model name, state, session records)``. Raises
    SnapshotFormatError naming what is wrong."""
    frames = FrameReader(stream, _MODEL_MAGIC, _MODEL_VERSION)
    header = _model_record(frames)
    if len(header) != 5 or header[0] != _REC_HEADER:
        raise SnapshotFormatError("model snapshot does not start with its header")
    _, index, name, n_attributes, n_sessions = header
    if type(name) is not str:
        raise SnapshotFormatError(f"bad model name {name!r} in model snapshot")
    if type(index) is not int or index < 0:
        raise SnapshotFormatError(f"bad applied index {index!r} in model snapshot")
    state: dict[str, Any] = {}
    sessions: list[SessionRecord] = []
    count = 0
    while True:
        record = _model_record(frames)
        kind = record[0]
        if kind == _REC_END:
            if len(record) != 2 or record[1] != count:
                raise SnapshotFormatError("model snapshot trailer does not match its records")
            break
        count += 1
        try:
            _restore_record(record, state, sessions)
        except (TypeError, ValueError, IndexError, KeyError) as exc:
            raise SnapshotFormatError(f"bad record in model snapshot: {exc}") from None
    if len(state) != n_attributes or len(sessions) != n_sessions:
        raise SnapshotFormatError("model snapshot is missing attributes or sessions")
    return index, name, state, sessions


def _model_record(frames: FrameReader) -> list[Any]:
    try:
        record = unpack_plain(frames.frame())
    except SnapshotFormatError:
        raise
    except Exception as exc:
        raise SnapshotFormatError(f"undecodable model snapshot record: {exc}") from None
    if type(record) is not tuple or not record:
        raise SnapshotFormatError("model snapshot record is not a tagged tuple")
    return list(record)


def _copy_state(model: ReplicatedModel) -> dict[str, Any]:
    """A deep copy of the model's state, through the plain-data encoding."""
    state = model.snapshot_state()
    try:
        copied = unpack_plain(pack_plain(state))
    except NotPlainDataError as exc:
        raise SnapshotError(f"{type(model).__qualname__} state is not plain data: {exc}") from None
    return cast(dict[str, Any], copied)


def _encode_attribute(name: str, value: object) -> Iterator[bytes]:
    if type(value) is dict and len(value) > _CHUNK_ITEMS:
        items = iter(value.items())
        while chunk := list(islice(items, _CHUNK_ITEMS)):
            yield pack_plain((_REC_DICT, name, [x for pair in chunk for x in pair]))
    elif type(value) is list and len(value) > _CHUNK_ITEMS:
        for start in range(0, len(value), _CHUNK_ITEMS):
            yield pack_plain((_REC_LIST, name, value[start : start + _CHUNK_ITEMS]))
    else:
        yield pack_plain((_REC_VALUE, name, value))


def _restore_record(
    record: list[Any], state: dict[str, Any], sessions: list[SessionRecord]
) -> None:
    kind = record[0]
    if kind == _REC_SESSIONS:
        sessions.extend(records_from_plain(record[1], _reply_from_plain))
        return
    name = record[1]
    if type(name) is not str or len(record) != 3:
        raise ValueError("attribute record is (kind, name, data)")
    data = record[2]
    if kind == _REC_VALUE:
        if name in state:
            raise ValueError(f"attribute {name!r} appears twice")
        state[name] = data
    elif kind == _REC_DICT:
        target = state.setdefault(name, {})
        if type(target) is not dict or type(data) is not list or len(data) % 2:
            raise ValueError(f"bad dict chunk for {name!r}")
        it = iter(data)
        target.update(zip(it, it, strict=False))
    elif kind == _REC_LIST:
        target = state.setdefault(name, [])
        if type(target) is not list or type(data) is not list:
            raise ValueError(f"bad list chunk for {name!r}")
        target.extend(data)
    else:
        raise ValueError(f"unknown record kind {kind!r}")


class LocalProposer:
    """A one-node "log" for tests and for running an application alone: each
    proposal gets the next index and is applied at once to every machine given
    (e.g. the same model class on three "nodes", to show determinism). Returns
    the first machine's result; ``last_results`` holds all of them."""

    def __init__(self, *machines: StateMachine) -> None:
        if not machines:
            raise ValueError("LocalProposer needs at least one machine")
        self.machines = machines
        self.index = 0
        self.log: list[bytes] = []
        self.last_results: list[object] = []

    async def __call__(self, data: bytes, /) -> object:
        self.index += 1
        self.log.append(data)
        self.last_results = [m.apply(self.index, data) for m in self.machines]
        return self.last_results[0]

"""The cluster's own replicated record: versions, the upgrade hold, the
cluster id and the divergence alarm.

An application's code is part of its database: its commands are replayed from
the log on every node, now and after every restart. So the version of the
code that may run is replicated state, changed only through the log, and every
node switches at the same index:

- ``app_version``: the newest version of the application model
  (``ReplicatedModel.app_version``) whose commands may run. A command new in
  version N (``@command(since=N)``) is refused before it is proposed while the
  cluster runs below N, and gets a ``NOT_ACTIVE`` result (the same on every
  node) if it reaches the log anyway.
- ``kv_version``: the same for the key-value machine's own commands.
- ``hold``: an operator's "do not switch yet" (a rollout is under way).
- ``cluster_id``: set once when a cluster is first formed (or by a restore,
  which makes a new cluster); peers of another cluster are refused.
- the divergence alarm: the nodes whose state digest differed from the
  majority's at a state check (see runtime/checks.py), until a later check
  finds every node equal.

:class:`ClusterMachine` wraps the node's state machine: it applies the
commands tagged :data:`TAG_CLUSTER` itself and passes every other entry on.
Its state travels in the snapshot header (a JSON mapping that nodes of an
earlier release read past), not in the machines' own sections, so the
snapshot format they exchange stays as it was.

Cluster commands (``TAG_CLUSTER`` then a msgpack array):

============ ================================== =================================
op           array                              effect
============ ================================== =================================
versions     ``[1, app_version, kv_version]``   switch forward (runs ``upgrade``)
hold         ``[2, hold]``                      hold or release version switches
cluster id   ``[3, id]``                        name the cluster (first one wins)
check        ``[4]``                            every node digests its state here
alarm        ``[5, index, [node, ...], minor]``  raise (nodes) or clear ([]) it
blob ops     ``[6..8, ...]``                    the blob catalog (machines/blobs.py)
============ ================================== =================================

The blob ops are allowed from key-value version 2 on (``BLOBS_KV_VERSION``):
a leader refuses to propose them before the switch, and one that reaches the
log anyway applies as ``NOT_ACTIVE`` everywhere. The catalog's snapshot is a
trailer after the machines' data (``snapshot``/``restore`` below), present
only when the catalog is not empty.

An op this code does not know was written by newer code: applying it raises
:class:`ApplyHalted` (the node stops applying) rather than skipping it.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import msgpack
import structlog

from ramraft.server.machines.blobs import (
    BLOBS_KV_VERSION,
    BlobCatalog,
    CatalogSnapshotJob,
    blobs_not_active,
    encode_delete_args,
    encode_put_args,
)
from ramraft.server.machines.statemachine import (
    TAG_CLUSTER,
    TAG_KV,
    TAG_MODEL,
    ApplyHalted,
    CommandError,
    ErrorCode,
    ReadableStream,
    SnapshotJob,
    StateMachine,
    WritableStream,
)

log = structlog.get_logger(__name__)

__all__ = [
    "KV_SUPPORTED_VERSION",
    "ClusterMachine",
    "ClusterOp",
    "ClusterState",
    "KVUpgradable",
    "Upgradable",
    "Versioned",
    "encode_alarm",
    "encode_blob_collect",
    "encode_blob_delete",
    "encode_blob_put",
    "encode_check",
    "encode_cluster_id",
    "encode_hold",
    "encode_versions",
    "valid_cluster_id",
]

KV_SUPPORTED_VERSION = 2
"""The newest key-value version this code applies. Version 2 is one switch
for everything new in this release: revisions, transactions, delete-range
and leases (machines/kv.py ``SINCE``, machines/kvops.py) and the blob
catalog's commands (machines/blobs.py ``BLOBS_KV_VERSION``)."""

_TAG = bytes([TAG_CLUSTER])
_CLUSTER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ClusterOp(enum.IntEnum):
    VERSIONS = 1
    HOLD = 2
    CLUSTER_ID = 3
    CHECK = 4
    ALARM = 5
    BLOB_PUT = 6
    BLOB_DELETE = 7
    BLOB_COLLECT = 8


_BLOB_OPS = frozenset({ClusterOp.BLOB_PUT, ClusterOp.BLOB_DELETE, ClusterOp.BLOB_COLLECT})


def valid_cluster_id(value: object) -> bool:
    return isinstance(value, str) and bool(_CLUSTER_ID.match(value))


@dataclass(frozen=True)
class ClusterState:
    """The replicated record (see the module docstring). Immutable: each
    applied cluster command replaces it."""

    cluster_id: str = ""
    app_version: int = 1
    kv_version: int = 1
    hold: bool = False
    alarm_index: int = 0
    """The state check at which divergence was found; 0: no alarm."""
    alarm_nodes: tuple[str, ...] = field(default=())
    """The nodes whose state differed from the majority's (all of them when
    there was no majority)."""
    alarm_minority: bool = False
    """True when a majority agreed and alarm_nodes are its minority: those
    may not lead. False when no state had a majority: nobody knows which is
    right, so nobody is barred from leading (the cluster stays repairable)."""

    def to_plain(self) -> dict[str, Any]:
        return {
            "cluster_id": self.cluster_id,
            "app_version": self.app_version,
            "kv_version": self.kv_version,
            "hold": self.hold,
            "alarm_index": self.alarm_index,
            "alarm_nodes": list(self.alarm_nodes),
            "alarm_minority": self.alarm_minority,
        }

    @classmethod
    def from_plain(cls, plain: object) -> ClusterState:
        """What a snapshot header holds. A header of an earlier release has
        none: the defaults are what that release ran."""
        if plain is None:
            return cls()
        if not isinstance(plain, dict):
            raise ValueError("cluster state is not a mapping")
        state = cls(
            cluster_id=plain.get("cluster_id", ""),
            app_version=plain.get("app_version", 1),
            kv_version=plain.get("kv_version", 1),
            hold=plain.get("hold", False),
            alarm_index=plain.get("alarm_index", 0),
            alarm_nodes=tuple(plain.get("alarm_nodes", ())),
            alarm_minority=plain.get("alarm_minority", False),
        )
        if state.cluster_id and not valid_cluster_id(state.cluster_id):
            raise ValueError(f"bad cluster id {state.cluster_id!r}")
        for name in ("app_version", "kv_version"):
            value = getattr(state, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"bad {name} {value!r}")
        if (
            type(state.hold) is not bool
            or type(state.alarm_index) is not int
            or type(state.alarm_minority) is not bool
        ):
            raise ValueError("bad hold or alarm in cluster state")
        if not all(isinstance(n, str) for n in state.alarm_nodes):
            raise ValueError("bad alarm nodes in cluster state")
        return state

    def digest_fields(self) -> dict[str, Any]:
        """What of this record is part of the state the nodes compare (the
        alarm is about that comparison, so it is left out)."""
        return {
            "cluster_id": self.cluster_id,
            "app_version": self.app_version,
            "kv_version": self.kv_version,
            "hold": self.hold,
        }


# -- encoding -------------------------------------------------------------------


def _encode(items: list[Any]) -> bytes:
    return _TAG + msgpack.packb(items, use_bin_type=True)


def encode_versions(app_version: int, kv_version: int) -> bytes:
    if app_version < 1 or kv_version < 1:
        raise ValueError("versions start at 1")
    return _encode([ClusterOp.VERSIONS.value, app_version, kv_version])


def encode_hold(hold: bool) -> bytes:
    return _encode([ClusterOp.HOLD.value, bool(hold)])


def encode_cluster_id(cluster_id: str) -> bytes:
    if not valid_cluster_id(cluster_id):
        raise ValueError(
            f"cluster id {cluster_id!r}: 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return _encode([ClusterOp.CLUSTER_ID.value, cluster_id])


def encode_check() -> bytes:
    return _encode([ClusterOp.CHECK.value])


def encode_alarm(check_index: int, nodes: list[str], minority: bool = False) -> bytes:
    """Raise the alarm for ``nodes`` (a majority's ``minority``, or all when
    no state had a majority), or clear it (no nodes)."""
    return _encode([ClusterOp.ALARM.value, check_index, sorted(nodes), bool(minority)])


def encode_blob_put(sha256: str, size: int, content_type: str, time_ms: int) -> bytes:
    """Record (or touch) a blob that a majority of nodes hold."""
    args = encode_put_args(sha256, size, content_type, time_ms)
    return _encode([ClusterOp.BLOB_PUT.value, *args])


def encode_blob_delete(sha256: str) -> bytes:
    return _encode([ClusterOp.BLOB_DELETE.value, *encode_delete_args(sha256)])


def encode_blob_collect(time_ms: int, grace_ms: int) -> bytes:
    """Collect blobs unreferenced and untouched for ``grace_ms``."""
    return _encode([ClusterOp.BLOB_COLLECT.value, int(time_ms), int(grace_ms)])


class _BadClusterCommand(ValueError):
    pass


def _decode(index: int, data: bytes) -> tuple[ClusterOp, list[Any]]:
    try:
        items = msgpack.unpackb(data[1:], use_list=True, raw=False)
    except Exception as exc:  # msgpack raises several types for bad input
        raise _BadClusterCommand(f"undecodable cluster command: {exc}") from None
    if type(items) is not list or not items or type(items[0]) is not int:
        raise _BadClusterCommand("a cluster command is an array starting with its op")
    try:
        op = ClusterOp(items[0])
    except ValueError:
        raise ApplyHalted(
            index,
            f"cluster command {items[0]} is unknown to this node's code (written by a newer "
            "release of ramraft); restart this node with that release",
        ) from None
    return op, items[1:]


# -- the wrapper machine ----------------------------------------------------------


class Versioned(Protocol):
    """A machine whose commands may be new in a version: it refuses those
    above ``active_version`` (which ClusterMachine keeps current)."""

    active_version: int

    def check_proposal(self, command: bytes) -> str | None:
        """Why this node must not propose ``command`` (a command its code
        lacks, or one newer than the active version), or None."""
        ...


class KVUpgradable(Versioned, Protocol):
    """The key-value machine: its switch to a newer version may change the
    state's shape (version 2 starts revisions), at the switch's index."""

    def upgrade(self, from_version: int, to_version: int) -> None: ...


class Upgradable(Versioned, Protocol):
    """What a version switch needs from the application's machine
    (``ModelMachine`` in machines/embed.py)."""

    @property
    def supported_version(self) -> int: ...

    def upgrade(self, from_version: int, to_version: int) -> CommandError | None: ...

    def try_upgrade(self, from_version: int, to_version: int) -> str | None: ...


class ClusterMachine:
    """Applies cluster commands and passes every other entry to ``inner``.

    ``model`` is the application's machine when the node hosts one; without
    it the node supports application version 1 only. ``kv`` is the key-value
    machine. Both are told the active version whenever it changes. ``on_check(index)`` is
    called, on the loop, right after a state check entry is applied (the
    state is then exactly that of the check's index): the runtime takes its
    digest there. ``on_change(state)`` after every change of the record.
    """

    def __init__(
        self,
        inner: StateMachine,
        *,
        model: Upgradable | None = None,
        kv: KVUpgradable | None = None,
        kv_supported: int = KV_SUPPORTED_VERSION,
        blob_refs: Callable[[], set[str] | None] | None = None,
    ) -> None:
        self.inner = inner
        self.model = model
        self.kv = kv
        self.kv_supported = kv_supported
        self.blobs = BlobCatalog()
        """The blob catalog (machines/blobs.py); ``blob_refs`` is how it
        learns what the application's state refers to."""
        self.blobs.refs = blob_refs
        self.on_check: Callable[[int], None] | None = None
        self.on_change: Callable[[ClusterState], None] | None = None
        self.state = ClusterState()
        self._set(self.state)

    @property
    def app_supported(self) -> int:
        return self.model.supported_version if self.model is not None else 1

    @property
    def applied_index(self) -> int:
        return self.inner.applied_index

    @property
    def restore_in_thread(self) -> bool:
        return bool(getattr(self.inner, "restore_in_thread", False))

    def check_proposal(self, command: bytes) -> str | None:
        """Why this node (leading) must not propose ``command``, or None: a
        leader never writes an entry that its own code could not apply, nor
        one that the cluster's active version does not allow yet."""
        if not command:
            return None
        if command[0] == TAG_KV and self.kv is not None:
            return self.kv.check_proposal(command)
        if command[0] == TAG_MODEL and self.model is not None:
            return self.model.check_proposal(command)
        if command[0] == TAG_CLUSTER:
            return self._check_cluster_proposal(command)
        return None

    def _check_cluster_proposal(self, command: bytes) -> str | None:
        try:
            op, _ = _decode(0, command)
        except (_BadClusterCommand, ApplyHalted):
            return None  # applies as BAD_COMMAND; an unknown op cannot be encoded here
        if op in _BLOB_OPS and self.state.kv_version < BLOBS_KV_VERSION:
            return blobs_not_active(self.state.kv_version)
        return None

    # -- apply ------------------------------------------------------------------

    def apply(self, index: int, command: bytes) -> object:
        if not command or command[0] != TAG_CLUSTER:
            return self.inner.apply(index, command)
        op: ClusterOp | None = None
        try:
            op, args = _decode(index, command)
            result = self._run(index, op, args)  # may raise ApplyHalted: nothing changed
        except _BadClusterCommand as exc:
            result = CommandError(ErrorCode.BAD_COMMAND, str(exc))
        self.inner.apply(index, b"")  # the inner machines' applied index moves too
        if (
            op is ClusterOp.CHECK
            and self.on_check is not None
            and not isinstance(result, CommandError)
        ):
            self.on_check(index)
        return result

    def _run(self, index: int, op: ClusterOp, args: list[Any]) -> object:
        state = self.state
        if op is ClusterOp.VERSIONS:
            if len(args) != 2 or not all(type(v) is int and v >= 1 for v in args):
                raise _BadClusterCommand("versions takes two versions >= 1")
            return self._switch(index, args[0], args[1])
        if op is ClusterOp.HOLD:
            if len(args) != 1 or type(args[0]) is not bool:
                raise _BadClusterCommand("hold takes one bool")
            self._set(replace(state, hold=args[0]))
            return None
        if op is ClusterOp.CLUSTER_ID:
            if len(args) != 1 or not valid_cluster_id(args[0]):
                raise _BadClusterCommand("cluster id takes one valid id")
            if state.cluster_id:
                # First one wins: two leaders of the first terms may both have
                # proposed one; every node keeps the first it applied.
                return CommandError(
                    ErrorCode.BAD_COMMAND, f"the cluster is already named {state.cluster_id!r}"
                )
            self._set(replace(state, cluster_id=args[0]))
            return None
        if op is ClusterOp.CHECK:
            if args:
                raise _BadClusterCommand("check takes no arguments")
            return index
        if op in _BLOB_OPS:
            if state.kv_version < BLOBS_KV_VERSION:
                return CommandError(ErrorCode.NOT_ACTIVE, blobs_not_active(state.kv_version))
            if op is ClusterOp.BLOB_PUT:
                return self.blobs.put(index, args)
            if op is ClusterOp.BLOB_DELETE:
                return self.blobs.delete(index, args)
            return self.blobs.collect(index, args)
        # ALARM
        if (
            len(args) != 3
            or type(args[0]) is not int
            or type(args[1]) is not list
            or not all(isinstance(n, str) for n in args[1])
            or type(args[2]) is not bool
        ):
            raise _BadClusterCommand("alarm takes a check index, node ids and a minority flag")
        nodes = tuple(args[1])
        self._set(
            replace(
                state,
                alarm_index=args[0] if nodes else 0,
                alarm_nodes=nodes,
                alarm_minority=args[2] and bool(nodes),
            )
        )
        return None

    def _switch(self, index: int, app_version: int, kv_version: int) -> object:
        state = self.state
        if app_version > self.app_supported:
            raise ApplyHalted(
                index,
                f"the log switches the application to version {app_version}; this node's "
                f"code supports up to version {self.app_supported}: restart it with newer code",
            )
        if kv_version > self.kv_supported:
            raise ApplyHalted(
                index,
                f"the log switches the key-value commands to version {kv_version}; this "
                f"node's code supports up to version {self.kv_supported}: restart it with "
                "a newer release",
            )
        if app_version < state.app_version or kv_version < state.kv_version:
            return CommandError(
                ErrorCode.BAD_COMMAND,
                f"versions only move forward (the cluster runs app {state.app_version}, "
                f"kv {state.kv_version})",
            )
        if app_version > state.app_version and self.model is not None:
            failed = self.model.upgrade(state.app_version, app_version)
            if failed is not None:
                log.error(
                    "upgrade failed; the cluster stays at its version",
                    index=index,
                    app_version=state.app_version,
                    wanted=app_version,
                    error=failed.message,
                )
                return failed
        if kv_version > state.kv_version and self.kv is not None:
            self.kv.upgrade(state.kv_version, kv_version)  # cannot fail: no user code
        self._set(replace(state, app_version=app_version, kv_version=kv_version))
        log.info("versions_switched", index=index, app_version=app_version, kv_version=kv_version)
        return None

    def _set(self, state: ClusterState) -> None:
        self.state = state
        if self.model is not None:
            self.model.active_version = state.app_version
        if self.kv is not None:
            self.kv.active_version = state.kv_version
        if self.on_change is not None:
            self.on_change(state)

    # -- snapshots ----------------------------------------------------------------

    def snapshot(self) -> SnapshotJob:
        """The machines' snapshot, then the blob catalog as a trailer when
        it has entries (a cluster that never stored a blob writes what
        earlier releases read)."""
        job = self.inner.snapshot()
        if not len(self.blobs):
            return job
        return _WithCatalog(job, self.blobs.snapshot())

    def restore(self, stream: ReadableStream) -> None:
        """Restore the machines, then the catalog from the trailer (none:
        an empty catalog)."""
        self.inner.restore(stream)
        self.blobs.restore(stream, self.inner.applied_index)

    def load_state(self, state: ClusterState) -> None:
        """Adopt the record a snapshot header held (before restoring the
        machines from the same snapshot). Refuses a record this code cannot
        run, as it would refuse the entries that made it."""
        if state.app_version > self.app_supported:
            raise ApplyHalted(
                0,
                f"the snapshot was taken at application version {state.app_version}; this "
                f"node's code supports up to version {self.app_supported}",
            )
        if state.kv_version > self.kv_supported:
            raise ApplyHalted(
                0,
                f"the snapshot was taken at key-value version {state.kv_version}; this "
                f"node's code supports up to version {self.kv_supported}",
            )
        self._set(state)


class _WithCatalog:
    """A machine's snapshot job followed by the blob catalog's."""

    def __init__(self, inner: SnapshotJob, catalog: CatalogSnapshotJob) -> None:
        self._inner = inner
        self._catalog = catalog

    @property
    def index(self) -> int:
        return self._inner.index

    def write_to(self, stream: WritableStream) -> int:
        try:
            return self._inner.write_to(stream) + self._catalog.write_to(stream)
        finally:
            self.close()

    def close(self) -> None:
        self._inner.close()
        self._catalog.close()

"""What the runtime reports about itself: typed, frozen values.

``RaftRuntime.status()``, ``members()`` and ``leader_changes()`` return
these (:class:`RuntimeReports` is that much of the runtime); the gRPC Admin
service, the web tier (``/v1/status``, the status page) and the metrics read
them, and none of them reaches into the runtime or the Raft core for more.
Values here are snapshots taken on the event loop: they never change after
they are made.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from ramraft._version import __version__
from ramraft.consensus import Role


@dataclass(frozen=True, slots=True)
class RuntimeStatus:
    """One node's state, as ``Admin.Status`` and ``/v1/status`` report it."""

    id: str
    # None until start() has loaded the log ("starting" in JSON).
    role: Role | None
    address: str = ""  # this node's peer address
    term: int = 0
    leader: str = ""  # the leader's id; empty when unknown
    leader_address: str = ""  # the leader's client (gRPC) address
    commit_index: int = 0
    applied_index: int = 0
    last_index: int = 0
    snapshot_index: int = 0
    first_index: int = 0
    failed: str = ""  # why the node stopped serving (a storage failure), or empty
    # Knows a leader and has applied what it knows to be committed (the
    # gRPC health service's "" status, /readyz).
    ready: bool = False
    # The node's process, so that an operator can find it (ps, kill).
    pid: int = field(default_factory=os.getpid)
    version: str = __version__
    # The cluster record (machines/cluster.py) as this node has applied it,
    # and what this node's code supports.
    cluster_id: str = ""
    app_version: int = 1
    app_version_supported: int = 1
    kv_version: int = 1
    kv_version_supported: int = 1
    upgrade_hold: bool = False
    # Why this node stopped applying the log (an entry its code cannot
    # apply); empty when it did not. A halted node is not ready.
    halted: str = ""
    # The divergence alarm: the nodes whose state differed from the
    # majority's at the state check at diverged_at (empty, 0: no alarm).
    diverged: tuple[str, ...] = ()
    diverged_at: int = 0

    @property
    def leading(self) -> bool:
        return self.role is Role.LEADER

    def to_json(self) -> dict[str, Any]:
        """The fields under ``node`` in ``/v1/status``; ``role`` as its name
        (``"leader"``, ``"pre-candidate"``...)."""
        out = asdict(self)
        out["role"] = self.role.value if self.role is not None else "starting"
        out["diverged"] = list(self.diverged)
        return out


@dataclass(frozen=True, slots=True)
class MemberProgress:
    """One member of the configuration; the replication fields are the
    leader's view, and are only meaningful when this node leads."""

    id: str
    address: str  # the member's client (gRPC) address; empty when unknown
    voter: bool
    match_index: int
    lag: int  # the leader's last index minus match_index
    active: bool  # heard from within an election timeout (this node: always)
    # What the member's code supports, as it last told the leader (0: not
    # known; a node of release 0.1.0 never tells).
    app_version_supported: int = 0
    kv_version_supported: int = 0


@dataclass(frozen=True, slots=True)
class LeaderChange:
    """A change of role or leader this node saw."""

    time: float  # unix time
    term: int
    leader: str  # empty: no leader known (an election)


class RuntimeReports(Protocol):
    """The runtime's reports: all the web tier and the metrics read of it
    (RaftRuntime provides them)."""

    def status(self) -> RuntimeStatus: ...

    def members(self) -> list[MemberProgress]: ...

    def leader_changes(self) -> list[LeaderChange]: ...

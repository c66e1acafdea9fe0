"""ramraft's Raft core: a pure, synchronous state machine (no I/O, no clock).

See ``consensus.types`` for the values it takes and gives, and
``consensus.node.RaftNode`` for the Ready/advance contract.
"""

from consensus.types import (
    NO_NODE,
    CompactionError,
    ConfChange,
    ConfChangeError,
    ConfChangeType,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Message,
    MsgType,
    NodeId,
    NotLeaderError,
    ProposalDroppedError,
    RaftError,
    ReadState,
    Ready,
    Role,
    SnapshotMeta,
    SnapshotToInstall,
    SoftState,
)

__all__ = [
    "NO_NODE",
    "CompactionError",
    "ConfChange",
    "ConfChangeError",
    "ConfChangeType",
    "ConfState",
    "Entry",
    "EntryKind",
    "HardState",
    "Message",
    "MsgType",
    "NodeId",
    "NotLeaderError",
    "ProposalDroppedError",
    "RaftError",
    "ReadState",
    "Ready",
    "Role",
    "SnapshotMeta",
    "SnapshotToInstall",
    "SoftState",
]

"""ramraft's Raft core: a pure, synchronous state machine (no I/O, no clock).

See ``consensus.types`` for the values it takes and gives, and
``consensus.raft.RaftNode`` for the Ready/advance contract.
"""

from ramraft.consensus.config import Config
from ramraft.consensus.election import CAMPAIGN_TRANSFER
from ramraft.consensus.raft import LeadershipTransferError, RaftNode
from ramraft.consensus.types import (
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
    "CAMPAIGN_TRANSFER",
    "NO_NODE",
    "CompactionError",
    "ConfChange",
    "ConfChangeError",
    "ConfChangeType",
    "ConfState",
    "Config",
    "Entry",
    "EntryKind",
    "HardState",
    "LeadershipTransferError",
    "Message",
    "MsgType",
    "NodeId",
    "NotLeaderError",
    "ProposalDroppedError",
    "RaftError",
    "RaftNode",
    "ReadState",
    "Ready",
    "Role",
    "SnapshotMeta",
    "SnapshotToInstall",
    "SoftState",
]

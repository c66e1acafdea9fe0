"""The values the Raft core takes in and gives out.

Everything here is immutable plain data: no protobuf, no I/O. The server
translates these to and from the wire at its edge (server/runtime/wire.py); the
simulator passes them around as they are.

Node ids are non-empty strings (``"ramraft-0"``); ``NO_NODE`` (the empty
string) stands for "nobody" in votes and leader hints.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

NodeId = str
NO_NODE: NodeId = ""


class EntryKind(enum.IntEnum):
    NORMAL = 0  # application command; empty data is the leader's no-op
    CONF_CHANGE = 1  # data is an encoded ConfChange (see ConfChange.encode)


@dataclass(slots=True)
class Entry:
    """One log entry. Treat it as immutable: logs of several nodes in the
    simulator share the same objects.

    Not ``frozen``: the leader creates one per proposed command on the hot
    path, and a frozen dataclass's ``__init__`` costs four times as much
    (0.23 vs 1.03 us here).
    """

    term: int
    index: int
    data: bytes = b""
    kind: EntryKind = EntryKind.NORMAL


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be on stable storage before any message that depends on it
    leaves the node (Raft paper, Figure 2, "persistent state").

    ``commit`` is persisted too (it is safe to lose, but keeping it lets a
    restarted node re-apply its log without waiting for a leader).
    """

    term: int = 0
    vote: NodeId = NO_NODE
    commit: int = 0


@dataclass(frozen=True, slots=True)
class ConfState:
    """A cluster membership: the voters, and the learners that receive the log
    but neither vote nor count towards a commit quorum.

    Invariant: voters and learners are disjoint.
    """

    voters: frozenset[NodeId] = frozenset()
    learners: frozenset[NodeId] = frozenset()

    def __post_init__(self) -> None:
        if self.voters & self.learners:
            raise ValueError(
                f"a node is both voter and learner: {sorted(self.voters & self.learners)}"
            )

    @property
    def members(self) -> frozenset[NodeId]:
        return self.voters | self.learners


class ConfChangeType(enum.IntEnum):
    ADD_LEARNER = 0
    PROMOTE = 1  # learner -> voter
    REMOVE = 2  # voter or learner -> gone
    # The first entry of a new cluster's log: the initial voters. Every
    # initial member writes the identical entry (term 1, index 1), so a server
    # that joins later learns the starting membership from the log itself.
    BOOTSTRAP = 3


def check_node_id(node_id: NodeId) -> None:
    """Node ids are short printable names without separators: at most 255
    bytes in UTF-8, the most a membership change's entry can name
    (ConfChange.encode gives the id one length byte)."""
    if (
        not node_id
        or len(node_id.encode("utf-8", errors="surrogatepass")) > 255
        or not node_id.isprintable()
        or any(c in node_id for c in " ,=\n")
    ):
        raise ValueError(
            f"invalid node id {node_id!r}: use 1-255 bytes of printable characters, "
            "no spaces, commas or '='"
        )


@dataclass(frozen=True, slots=True)
class ConfChange:
    """A single-server membership change (Raft thesis 4.1 / 4.2.1), or the
    bootstrap configuration (``voters``). ``context`` is opaque to the core:
    the server carries the new member's address in it."""

    type: ConfChangeType
    node_id: NodeId = NO_NODE
    voters: tuple[NodeId, ...] = ()
    context: bytes = b""

    @staticmethod
    def bootstrap(voters: frozenset[NodeId]) -> ConfChange:
        return ConfChange(ConfChangeType.BOOTSTRAP, voters=tuple(sorted(voters)))

    def encode(self) -> bytes:
        if self.type == ConfChangeType.BOOTSTRAP:
            return bytes([int(self.type)]) + ",".join(self.voters).encode()
        node = self.node_id.encode()
        return bytes([int(self.type), len(node)]) + node + self.context

    @staticmethod
    def decode(data: bytes) -> ConfChange:
        """Raises ValueError on anything malformed."""
        if not data:
            raise ValueError("empty conf change")
        kind = ConfChangeType(data[0])
        if kind == ConfChangeType.BOOTSTRAP:
            text = data[1:].decode()
            return ConfChange(kind, voters=tuple(text.split(",")) if text else ())
        if len(data) < 2 or len(data) < 2 + data[1]:
            raise ValueError("truncated conf change")
        end = 2 + data[1]
        return ConfChange(kind, data[2:end].decode(), context=bytes(data[end:]))


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Describes a state-machine snapshot: it holds the effect of every entry up
    to and including ``index`` (whose term is ``term``), and the membership in
    force at that index."""

    index: int = 0
    term: int = 0
    conf: ConfState = ConfState()


class MsgType(enum.IntEnum):
    VOTE = 0
    VOTE_RESP = 1
    PRE_VOTE = 2
    PRE_VOTE_RESP = 3
    APPEND = 4
    APPEND_RESP = 5
    HEARTBEAT = 6
    HEARTBEAT_RESP = 7
    SNAPSHOT = 8  # InstallSnapshot; snapshot data travels beside the message
    TIMEOUT_NOW = 9  # leadership transfer: "start an election now"
    READ_INDEX = 10  # follower -> leader: "give me a read index for context"
    READ_INDEX_RESP = 11


@dataclass(frozen=True, slots=True)
class Message:
    """One Raft message. A single shape for every type (as etcd's raftpb):
    each type uses the fields below that its comment names.

    - VOTE / PRE_VOTE: ``index``/``log_term`` = candidate's last log index and
      term; ``context`` = b"transfer" when the election was started by
      TIMEOUT_NOW (lets it bypass the leader-lease check).
    - VOTE_RESP / PRE_VOTE_RESP: ``reject``.
    - APPEND: ``index``/``log_term`` = index and term of the entry before
      ``entries``; ``commit`` = leader's commit index.
    - APPEND_RESP: ``index`` = on success the follower's match index, on reject
      the ``index`` of the APPEND it rejects; ``reject_hint``/``log_term`` = a
      guess at where the logs agree (fast back-off, thesis 5.3 / etcd).
    - HEARTBEAT: ``commit``; ``context`` = read-index round id (may be empty),
      or that id followed by the ids of the recipient's own read requests
      the round holds, with ``index`` = the round's read index (reads.py).
    - HEARTBEAT_RESP: ``context`` = the round id; ``index`` = the round's
      read index when the follower served its own requests the heartbeat
      named (the leader then sends it no READ_INDEX_RESP for them), else 0.
    - SNAPSHOT: ``snapshot`` = metadata; ``snapshot_data`` = opaque reference
      to the snapshot contents, never looked at by the core (the transport
      streams the real bytes in chunks and hands the receiving core a handle).
    - READ_INDEX: ``context`` = the caller's read id.
    - READ_INDEX_RESP: ``context``, ``index`` = the read index; ``reject``
      when the leader could not serve it (e.g. not yet committed in its term).
    """

    type: MsgType
    src: NodeId
    dst: NodeId
    term: int
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    context: bytes = b""
    snapshot: SnapshotMeta | None = None
    snapshot_data: object = field(default=None, compare=False)


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state the application may want to show or act on."""

    leader: NodeId
    role: Role


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read is safe once the local state machine has applied
    up to ``index``. ``context`` identifies the read_index() call."""

    context: bytes
    index: int


@dataclass(frozen=True, slots=True)
class SnapshotToInstall:
    """A snapshot received from the leader that the application must install
    (persist, then restore its state machine from) before applying anything
    after it."""

    meta: SnapshotMeta
    data: object


@dataclass(slots=True)
class Ready:
    """What the core needs done. The caller must, in this order:

    1. persist ``snapshot`` (if any), then ``entries`` (which replace any
       stored entries at the same or higher indexes), then ``hard_state``
       (if any), as one durable batch (one fsync);
    2. only then send ``messages`` (a vote or an append acknowledgement
       promises that state is on disk);
    3. install ``snapshot`` in the state machine, then apply
       ``committed_entries`` in order; release ``read_states`` once applied
       has reached their index;
    4. call ``advance(ready)``.

    Nothing in a Ready may be acted on out of this order, and a Ready must be
    fully handled before the next ``ready()`` call. One exception is safe and
    worth taking (Raft thesis 10.2.1): messages that promise nothing about
    the sender's disk -- APPEND, HEARTBEAT, SNAPSHOT and TIMEOUT_NOW, all
    sent by a leader -- may leave before step 1 completes, provided nothing
    is stepped into the core until it does (a leader counts its own log
    towards a commit only when it steps the followers' acknowledgements).
    """

    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: SnapshotToInstall | None = None
    messages: list[Message] = field(default_factory=list)
    committed_entries: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    soft_state: SoftState | None = None
    # Reads the core gave up on (leader lost, term changed): fail them so
    # the caller can retry elsewhere.
    dropped_reads: list[bytes] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.hard_state is not None
            or self.entries
            or self.snapshot is not None
            or self.messages
            or self.committed_entries
            or self.read_states
            or self.soft_state is not None
            or self.dropped_reads
        )


class RaftError(Exception):
    """Base for errors the core raises to its caller."""


class NotLeaderError(RaftError):
    """The request needs the leader; ``leader`` is the best guess at who that
    is (NO_NODE when unknown)."""

    def __init__(self, leader: NodeId, message: str = "not the leader") -> None:
        super().__init__(f"{message} (leader: {leader or 'unknown'})")
        self.leader = leader


class ProposalDroppedError(RaftError):
    """The leader cannot take a proposal right now (a leadership transfer is
    in progress, or a membership change is still uncommitted)."""


class ConfChangeError(RaftError):
    """A membership change that is not allowed (unknown node, not caught up,
    would leave no voters...)."""


class CompactionError(RaftError):
    """compact() was asked for an index it cannot compact to."""

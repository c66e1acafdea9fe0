"""Who the peers are: their addresses, and which node ids may talk to us as one.

The :class:`PeerDirectory` learns addresses from ``--peers``, from the
AddMember entries in the log (a learner's address travels in its
ConfChange's context) and from snapshot headers (storage/snapshot_header.py),
and it is the peer identity policy the TLS checks ask (``is_member``:
runtime/transport.py, security/auth.py). Proposing membership changes is
not here (membership.py); running the Raft core is not here (loop.py).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

from ramraft.consensus import ConfChange, ConfChangeType, Entry
from ramraft.server.config import NodeConfig


class PeerDirectory:
    def __init__(self, config: NodeConfig, members: Callable[[], frozenset[str]]) -> None:
        """``members``: the members of the newest configuration in this
        node's log (empty while it knows none)."""
        self.config = config
        self._members = members
        # id -> peer address. The transport holds this very dict: it is kept
        # current in place, never replaced.
        self.addresses: dict[str, str] = dict(config.peers)
        # Members removed by a REMOVE entry this node has seen (the identity
        # check refuses them even if --peer-id-pattern matches).
        self.removed: set[str] = set()
        # id -> monotonic time of its last message; dropped when the transport
        # finds it unreachable. A stopped peer keeps its match index in the
        # leader's progress: only its silence tells it apart (handover).
        self._heard_at: dict[str, float] = {}

    def heard_from(self, node_id: str, at: float) -> None:
        self._heard_at[node_id] = at

    def unreachable(self, node_id: str) -> None:
        self._heard_at.pop(node_id, None)

    def answered_within(self, node_id: str, seconds: float, now: float) -> bool:
        """Heard from in the last ``seconds`` and not found unreachable since."""
        heard = self._heard_at.get(node_id)
        return heard is not None and now - heard <= seconds

    def client_address(self, node_id: str) -> str:
        """The address clients should use for ``node_id``; empty if unknown."""
        address = self.addresses.get(node_id, "")
        return self.config.client_address_of(address) if address else ""

    def is_member(self, node_id: str) -> bool:
        """Whether ``node_id`` may talk to this node as a peer (TLS identity
        check, runtime/transport.py): a member of the newest configuration in
        our log; one of the initial --peers while we know no configuration
        yet (a joining node); or, unless we saw it removed, an id matching
        --peer-id-pattern (so a member that missed the addition of a new
        member still accepts it as leader)."""
        members = self._members()
        if node_id in members:
            return True
        if not members and node_id in self.config.peers:
            return True
        if node_id in self.removed or node_id == self.config.node_id:
            return False
        patterns = [p for p in self.config.peer_id_pattern.split(",") if p.strip()]
        return any(fnmatch.fnmatchcase(node_id, p.strip()) for p in patterns)

    def note_conf_entry(self, entry: Entry) -> None:
        """Learn from a membership change in the log (as soon as it is
        appended, so a new member is reachable before it commits)."""
        try:
            change = ConfChange.decode(entry.data)
        except ValueError:
            return
        if change.type == ConfChangeType.ADD_LEARNER:
            self.removed.discard(change.node_id)
            if change.context:
                self.addresses[change.node_id] = change.context.decode(errors="replace")
        elif change.type == ConfChangeType.REMOVE:
            self.removed.add(change.node_id)

    def learn_from_snapshot(self, addresses: dict[str, str]) -> None:
        """Addresses from a snapshot's header: what the log told us since wins."""
        for node_id, address in addresses.items():
            self.addresses.setdefault(node_id, address)

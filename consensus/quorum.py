"""Majority arithmetic over a set of voters (Raft paper 5.2, 5.3)."""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping

from ramraft.consensus.types import NodeId


def majority(voter_count: int) -> int:
    return voter_count // 2 + 1


def committed_index(voters: Collection[NodeId], match: Mapping[NodeId, int]) -> int:
    """The largest index that a majority of voters hold: the quorum-th
    largest match index. A voter with no progress counts as holding 0."""
    if not voters:
        return 0
    matched = sorted((match.get(v, 0) for v in voters), reverse=True)
    return matched[majority(len(voters)) - 1]


class VoteResult(enum.Enum):
    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def tally(voters: Collection[NodeId], votes: Mapping[NodeId, bool]) -> VoteResult:
    """Granted and rejected votes counted among ``voters`` only."""
    need = majority(len(voters))
    granted = sum(1 for v in voters if votes.get(v) is True)
    rejected = sum(1 for v in voters if votes.get(v) is False)
    if granted >= need:
        return VoteResult.WON
    if rejected > len(voters) - need:
        return VoteResult.LOST
    return VoteResult.PENDING


def has_quorum(voters: Collection[NodeId], active: Collection[NodeId]) -> bool:
    return sum(1 for v in voters if v in active) >= majority(len(voters))

"""Single-server membership changes (Raft thesis 4.1-4.3).

One server is added or removed at a time, so any majority of the old
configuration overlaps any majority of the new one and no joint consensus is
needed. A new server first joins as a learner (it receives the log but does
not vote or count towards commit) and is promoted to voter once caught up
(thesis 4.2.1), so that adding it does not stall commits while it catches up.

A configuration takes effect as soon as its entry is in a server's log,
committed or not (thesis 4.1); the log keeps the history to fall back on when
an uncommitted configuration entry is truncated.
"""

from __future__ import annotations

from ramraft.consensus.types import ConfChange, ConfChangeError, ConfChangeType, ConfState


def apply_conf_change(conf: ConfState, change: ConfChange) -> ConfState:
    """The configuration after ``change``. Changes in the log were validated
    by the leader that proposed them, so this never refuses: a change that no
    longer makes sense (say, promoting a node already a voter) leaves the
    configuration as it is, identically on every node."""
    node = change.node_id
    if change.type == ConfChangeType.BOOTSTRAP:
        return ConfState(frozenset(change.voters)) if not conf.members else conf
    if change.type == ConfChangeType.ADD_LEARNER:
        if node in conf.members:
            return conf
        return ConfState(conf.voters, conf.learners | {node})
    if change.type == ConfChangeType.PROMOTE:
        if node not in conf.learners:
            return conf
        return ConfState(conf.voters | {node}, conf.learners - {node})
    if change.type == ConfChangeType.REMOVE:
        if node not in conf.members or conf.voters == {node}:
            return conf
        return ConfState(conf.voters - {node}, conf.learners - {node})
    raise ConfChangeError(f"unknown conf change type {change.type!r}")


def validate_conf_change(conf: ConfState, change: ConfChange) -> None:
    """Refuse, with a reason, a change the leader should not propose."""
    node = change.node_id
    if change.type == ConfChangeType.BOOTSTRAP:
        raise ConfChangeError("the bootstrap configuration is written only when a cluster starts")
    if not node:
        raise ConfChangeError("a membership change needs a node id")
    if change.type == ConfChangeType.ADD_LEARNER:
        if node in conf.members:
            role = "voter" if node in conf.voters else "learner"
            raise ConfChangeError(f"{node} is already a {role}")
    elif change.type == ConfChangeType.PROMOTE:
        if node in conf.voters:
            raise ConfChangeError(f"{node} is already a voter")
        if node not in conf.learners:
            raise ConfChangeError(f"{node} is not a learner: add it as a learner first")
    elif change.type == ConfChangeType.REMOVE:
        if node not in conf.members:
            raise ConfChangeError(f"{node} is not a member")
        if conf.voters == {node}:
            raise ConfChangeError(f"{node} is the last voter and cannot be removed")
    else:
        raise ConfChangeError(f"unknown conf change type {change.type!r}")

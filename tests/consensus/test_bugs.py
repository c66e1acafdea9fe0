"""The checkers bite: with a safety rule of the core deliberately broken
(tests/consensus/bugs.py), a simulation seed that passes with the real core
fails, and says which property broke. The seeds were found by running the
simulator with each bug in (see the issue note for how many steps each took).
"""

from __future__ import annotations

import pytest

from ramraft.consensus import Role
from tests.consensus.bugs import BUGS
from tests.consensus.harness import Cluster
from tests.consensus.sim import Simulation, SimulationFailure
from tests.consensus.test_replication import (
    A_TERM_2_ENTRY,
    applied_by_index,
    assert_a_did_not_commit_by_counting,
    figure_8_a_to_c,
)

# bug -> (seed, nodes, what the checker must report)
CAUGHT_BY = {
    "commit_previous_term_by_counting": (352, 3, "is not safe"),
    "vote_without_log_check": (15, 5, "leader completeness"),
    "read_without_leadership_check": (289, 5, "stale read"),
}


@pytest.mark.parametrize("bug", sorted(CAUGHT_BY))
def test_simulator_catches_the_bug(bug: str) -> None:
    seed, nodes, symptom = CAUGHT_BY[bug]
    Simulation(seed, nodes=nodes).run()  # the real core passes this seed
    with BUGS[bug](), pytest.raises(SimulationFailure, match=symptom) as caught:
        Simulation(seed, nodes=nodes).run()
    assert f"seed {seed}" in str(caught.value)


def test_figure_8_scenario_fails_with_the_bug() -> None:
    """test_figure_8_scenario's safety check fails with the Figure 8 bug in,
    and for that reason: a commits (and applies) its term-2 entry at step (c).
    (Running on to step (d) would end in the harness's "did not quiesce",
    as c then refuses to give up the entry it was told is committed; that is
    a symptom, not the rule, so the check runs before it.)"""
    c = Cluster(check_quorum=False, pre_vote=False, max_msg_bytes=1)
    with BUGS["commit_previous_term_by_counting"]():
        figure_8_a_to_c(c)
    assert c.node("a").role == Role.LEADER and c.node("c").log.term(3) == 2, "step (c) set up"
    with pytest.raises(AssertionError, match="committed its term-2 entry by counting replicas"):
        assert_a_did_not_commit_by_counting(c)
    assert applied_by_index(c, "a")[3] == (2, A_TERM_2_ENTRY)


def test_the_bugs_are_removed_again() -> None:
    """The patches must not leak into other tests."""
    from ramraft.consensus.raft import RaftNode

    for name in ("_may_commit_by_counting", "_log_ok_for_vote", "_start_read_round"):
        assert name not in vars(RaftNode), f"{name} is still patched on RaftNode"
        assert getattr(RaftNode, name).__module__ in (
            "ramraft.consensus.leader",
            "ramraft.consensus.election",
            "ramraft.consensus.reads",
        )

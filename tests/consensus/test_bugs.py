"""The checkers bite: with a safety rule of the core deliberately broken
(tests/consensus/bugs.py), a simulation seed that passes with the real core
fails, and says which property broke. The seeds were found by running the
simulator with each bug in (see the issue note for how many steps each took).
"""

from __future__ import annotations

import pytest

from tests.consensus.bugs import BUGS
from tests.consensus.harness import Cluster
from tests.consensus.sim import Simulation, SimulationFailure
from tests.consensus.test_replication import figure_8

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
    with BUGS["commit_previous_term_by_counting"](), pytest.raises(AssertionError):
        c = Cluster(check_quorum=False, pre_vote=False, max_msg_bytes=1)
        figure_8(c)
        assert c.node("a").commit_index < 3


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

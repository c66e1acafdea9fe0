"""Deliberate bugs, to show the simulator catches what it claims to.

Each is a context manager that patches one rule of the core out; the tests
in test_bugs.py run a seed with the bug in and expect a checker to fail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ramraft.consensus import Message
from ramraft.consensus.raft import RaftNode


@contextmanager
def _patched(name: str, replacement: Callable[..., object]) -> Iterator[None]:
    """Shadow a rule (inherited from a role mixin) on RaftNode itself."""
    assert name not in vars(RaftNode), f"{name} is already patched"
    setattr(RaftNode, name, replacement)
    try:
        yield
    finally:
        delattr(RaftNode, name)


def commit_previous_term_by_counting() -> contextmanager[None]:  # type: ignore[type-arg]
    """Paper 5.4.2 broken: a leader commits any entry a majority holds,
    whatever its term (the Figure 8 bug)."""

    def buggy(self: RaftNode, index: int) -> bool:
        return True

    return _patched("_may_commit_by_counting", buggy)


def vote_without_log_check() -> contextmanager[None]:  # type: ignore[type-arg]
    """Paper 5.4.1 broken: votes are granted without the up-to-date check."""

    def buggy(self: RaftNode, m: Message) -> bool:
        return True

    return _patched("_log_ok_for_vote", buggy)


def read_without_leadership_check() -> contextmanager[None]:  # type: ignore[type-arg]
    """Thesis 6.4 broken: the leader serves a read at its commit index at
    once, without a heartbeat round confirming it still leads."""

    def buggy(self: RaftNode) -> None:
        if not self._read_only.queued or not self._committed_in_term():
            return
        context = self._read_only.start_round(self.log.committed, self.id)
        assert context is not None
        self._release_reads(context)

    return _patched("_start_read_round", buggy)


BUGS = {
    "commit_previous_term_by_counting": commit_previous_term_by_counting,
    "vote_without_log_check": vote_without_log_check,
    "read_without_leadership_check": read_without_leadership_check,
}

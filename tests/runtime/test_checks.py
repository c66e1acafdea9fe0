"""compare(): which nodes diverged at a state check (runtime/checks.py);
and what a digest records."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from ramraft.server.machines.cluster import ClusterState
from ramraft.server.machines.digest import digest_job
from ramraft.server.machines.kv import KVMachine, encode_put
from ramraft.server.runtime.checks import StateDigests, compare


def test_all_equal_is_no_divergence() -> None:
    verdict = compare(9, {"a": "x", "b": "x", "c": "x"}, members=3)
    assert verdict.equal and verdict.diverged == () and not verdict.minority


def test_the_minority_of_a_majority_is_named() -> None:
    verdict = compare(9, {"a": "x", "b": "y", "c": "x"}, members=3)
    assert verdict.diverged == ("b",) and verdict.minority


def test_without_a_majority_every_node_is_named_and_none_is_a_minority() -> None:
    verdict = compare(9, {"a": "x", "b": "y", "c": "z"}, members=3)
    assert verdict.diverged == ("a", "b", "c") and not verdict.minority
    # Two of five agreeing is no majority either.
    verdict = compare(9, {"a": "x", "b": "x", "c": "y", "d": "z"}, members=5)
    assert verdict.diverged == ("a", "b", "c", "d") and not verdict.minority


def test_missing_answers_neither_raise_nor_hide_a_difference() -> None:
    assert compare(9, {"a": "x"}, members=3).equal  # too few to say, nothing differs
    assert compare(9, {"a": "x", "b": "x"}, members=3).equal
    verdict = compare(9, {"a": "x", "b": "y"}, members=3)
    assert verdict.diverged == ("a", "b") and not verdict.minority


def test_a_digest_records_how_long_it_took() -> None:
    """The leader paces periodic checks by it (runtime/steward.py)."""

    async def main() -> StateDigests:
        kv = KVMachine()
        for n in range(20_000):
            kv.apply(n + 1, encode_put(f"k{n}", b"v" * 50))
        digests = StateDigests(kv, ClusterState)
        digests.take(kv.applied_index)
        while digests.get(kv.applied_index) is None:
            await asyncio.sleep(0.01)
        return digests

    digests = asyncio.run(main())
    assert digests.get(20_000)
    assert digests.last_seconds > 0


def test_of_several_checks_applied_in_one_turn_the_newest_is_digested() -> None:
    """A node replaying its log after a restart applies the checks it holds
    one after the other, before any digest can begin: the newest gets the
    digest (a leader may still be waiting for it), the older ones are
    recorded as not comparable, no view is left open, and nothing warns (two
    views at most may be open: the third check used to be skipped with a
    warning on every restart while the two oldest were hashed)."""

    async def main() -> tuple[StateDigests, KVMachine]:
        kv = KVMachine()
        digests = StateDigests(kv, ClusterState)
        for n in range(1, 10):  # checks at 3, 6 and 9, all in one turn
            kv.apply(n, encode_put(f"k{n}", b"v"))
            if n % 3 == 0:
                digests.take(n)
        while digests.get(9) is None:
            await asyncio.sleep(0.01)
        return digests, kv

    with capture_logs() as logs:
        digests, kv = asyncio.run(main())
    assert digests.get(9) == _digest_of_state_at(9)
    assert (digests.get(3), digests.get(6)) == ("", "")
    assert not kv._views
    assert [e for e in logs if e["log_level"] in ("warning", "error")] == []


def _digest_of_state_at(index: int) -> str:
    kv = KVMachine()
    for n in range(1, index + 1):
        kv.apply(n, encode_put(f"k{n}", b"v"))
    return digest_job(kv.snapshot(), ClusterState())

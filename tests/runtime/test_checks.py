"""compare(): which nodes diverged at a state check (runtime/checks.py);
and what a digest records."""

from __future__ import annotations

import asyncio

from ramraft.server.machines.cluster import ClusterState
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

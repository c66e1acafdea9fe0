"""The linearizability checker: hand-made histories, a brute-force cross-check,
and randomized histories built from a sequential model."""

from __future__ import annotations

import itertools
import math
import random
import time

import pytest

from ramraft.tools import linearizability
from ramraft.tools.linearizability import (
    CheckTimeoutError,
    Operation,
    _end_states,
    _linearizable,
    _optional,
    _possible_values_after,
    cas,
    check,
    delete,
    get,
    put,
    step,
)

# -- hand-made histories ------------------------------------------------------------


def test_empty_and_sequential() -> None:
    assert check([]).ok
    h = [
        put(1, 0, 1, "k", b"a"),
        get(1, 2, 3, "k", b"a"),
        delete(1, 4, 5, "k", True),
        get(1, 6, 7, "k", None),
        delete(1, 8, 9, "k", False),
        cas(1, 10, 11, "k", None, b"b", True, False, b"b"),
        cas(1, 12, 13, "k", b"x", b"c", False, True, b"b"),
        cas(1, 14, 15, "k", b"b", b"c", True, True, b"c"),
        get(1, 16, 17, "k", b"c"),
    ]
    assert check(h).ok


def test_concurrent_read_may_see_either_value() -> None:
    for seen in (b"a", b"b"):
        h = [
            put(1, 0, 1, "k", b"a"),
            put(2, 2, 10, "k", b"b"),
            get(3, 3, 4, "k", seen),
        ]
        assert check(h).ok


def test_stale_read_is_rejected() -> None:
    h = [
        put(1, 0, 1, "k", b"a"),
        put(1, 2, 3, "k", b"b"),
        get(2, 4, 5, "k", b"a"),  # b was acknowledged before this read began
    ]
    result = check(h)
    assert not result.ok
    assert result.key == "k"
    assert [op.kind for op in result.ops or []] == ["get"]
    assert "can only be b'b'" in result.explanation
    assert "put('k', b'b')" in result.explanation  # the write that made it so
    assert result.context and result.context[-1].value == b"b"


def test_read_going_back_in_time_is_rejected() -> None:
    # Two reads concurrent with a write: once one read saw the new value, a
    # later read (invoked after the first returned) may not see the old one.
    h = [
        put(1, 0, 1, "k", b"old"),
        put(1, 2, 20, "k", b"new"),
        get(2, 3, 4, "k", b"new"),
        get(3, 5, 6, "k", b"old"),
    ]
    assert not check(h).ok


def test_lost_write_is_rejected() -> None:
    h = [
        put(1, 0, 1, "k", b"a"),
        put(2, 2, 3, "k", b"b"),  # acknowledged
        get(3, 4, 5, "k", b"a"),  # ... but the old value is back
        get(3, 6, 7, "k", b"a"),
    ]
    result = check(h)
    assert not result.ok
    # the explanation names the write that was lost
    assert any(op.kind == "put" and op.value == b"b" for op in result.context or [])


def test_lost_write_of_an_absent_key() -> None:
    assert not check([put(1, 0, 1, "k", b"a"), get(2, 2, 3, "k", None)]).ok


def test_read_of_a_value_never_written_is_rejected() -> None:
    h = [put(1, 0, 5, "k", b"a"), get(2, 1, 2, "k", b"zzz")]
    assert not check(h).ok


def test_initial_state() -> None:
    assert check([get(1, 0, 1, "k", b"v")], initial={"k": b"v"}).ok
    assert not check([get(1, 0, 1, "k", b"v")]).ok


def test_cas_violations_are_rejected() -> None:
    # two CAS from the same expected value cannot both swap
    both_swap = [
        put(1, 0, 1, "k", b"0"),
        cas(2, 2, 5, "k", b"0", b"A", True, True, b"A"),
        cas(3, 2, 5, "k", b"0", b"B", True, True, b"B"),
    ]
    assert not check(both_swap).ok
    # one of them may swap, the other then fails, seeing the winner
    fine = [
        put(1, 0, 1, "k", b"0"),
        cas(2, 2, 5, "k", b"0", b"A", True, True, b"A"),
        cas(3, 2, 5, "k", b"0", b"B", False, True, b"A"),
    ]
    assert check(fine).ok
    # a CAS that failed although the expected value was certainly there
    wrongly_failed = [
        put(1, 0, 1, "k", b"0"),
        cas(2, 2, 3, "k", b"0", b"A", False, True, b"0"),
    ]
    assert not check(wrongly_failed).ok
    # "only if absent" must fail on a present key
    absent_violated = [
        put(1, 0, 1, "k", b"0"),
        cas(2, 2, 3, "k", None, b"A", True, False, b"A"),
    ]
    assert not check(absent_violated).ok
    # wrong "found"
    assert not check([cas(1, 0, 1, "k", b"x", b"y", False, True, b"")]).ok
    # unrecorded fields are not checked
    assert check([cas(1, 0, 1, "k", None, b"y", True, None, None)]).ok


def test_delete_results_are_checked() -> None:
    assert not check([delete(1, 0, 1, "k", True)]).ok
    assert not check([put(1, 0, 1, "k", b"a"), delete(1, 2, 3, "k", False)]).ok
    concurrent = [put(1, 0, 1, "k", b"a"), delete(2, 2, 5, "k", True), delete(3, 2, 5, "k", False)]
    assert check(concurrent).ok
    both = [put(1, 0, 1, "k", b"a"), delete(2, 2, 5, "k", True), delete(3, 2, 5, "k", True)]
    assert not check(both).ok


def test_unknown_write_that_happened() -> None:
    h = [
        put(1, 0, None, "k", b"maybe"),  # timed out
        get(2, 10, 11, "k", b"maybe"),
    ]
    assert check(h).ok


def test_unknown_write_that_did_not_happen() -> None:
    h = [
        put(1, 0, 1, "k", b"a"),
        put(2, 2, None, "k", b"maybe"),
        get(3, 10, 11, "k", b"a"),
        get(3, 12, 13, "k", b"a"),
    ]
    assert check(h).ok


def test_unknown_write_cannot_take_effect_before_its_invocation() -> None:
    h = [
        get(1, 0, 1, "k", b"maybe"),
        put(2, 2, None, "k", b"maybe"),
    ]
    assert not check(h).ok


def test_unknown_write_takes_effect_once() -> None:
    # seen, then overwritten, then seen again: would need two effects
    h = [
        put(2, 0, None, "k", b"maybe"),
        get(1, 1, 2, "k", b"maybe"),
        put(1, 3, 4, "k", b"other"),
        get(1, 5, 6, "k", b"maybe"),
    ]
    assert not check(h).ok


def test_unknown_cas_and_delete() -> None:
    h = [
        put(1, 0, 1, "k", b"0"),
        cas(2, 2, None, "k", b"0", b"1"),
        delete(3, 3, None, "k", None),
        get(1, 10, 11, "k", b"1"),
    ]
    assert check(h).ok  # cas took effect, the delete never did (or came before)
    h2 = [*h[:3], get(1, 10, 11, "k", None)]
    assert check(h2).ok  # the delete took effect after the cas


def test_unknown_read_is_ignored() -> None:
    weird = Operation(1, 0, None, "get", "k", output=None)
    assert check([weird]).ok


def test_keys_are_independent_and_failure_names_the_key() -> None:
    h = [
        put(1, 0, 1, "a", b"1"),
        put(1, 0, 1, "b", b"1"),
        get(2, 2, 3, "a", b"1"),
        get(2, 2, 3, "b", b"2"),
    ]
    result = check(h)
    assert not result.ok and result.key == "b"
    assert all(op.key == "b" for op in result.ops or [])


def test_malformed_operations_are_reported() -> None:
    with pytest.raises(ValueError, match="returns before"):
        check([put(1, 5, 4, "k", b"v")])
    with pytest.raises(ValueError, match="unknown operation kind 'range'"):
        check([Operation(1, 0, 1, "range", "k")])
    with pytest.raises(ValueError, match="put without a value"):
        check([Operation(1, 0, 1, "put", "k")])
    with pytest.raises(ValueError, match="get output"):
        check([Operation(1, 0, 1, "get", "k", output=b"v")])


def test_explanation_is_minimal_for_a_buried_violation() -> None:
    rng = random.Random(1)
    h = []
    t = 0.0
    for i in range(300):
        v = str(i).encode()
        h.append(put(1, t, t + 1, "k", v))
        h.append(get(2, t + 1.5, t + 2, "k", v))
        t += 3
    # one stale read in the middle
    h.append(get(3, 450.5, 450.6, "k", b"148"))
    rng.shuffle(h)
    result = check(h)
    assert not result.ok
    assert result.ops is not None and len(result.ops) <= 4, result.explanation


# -- an independent reference model --------------------------------------------------
#
# The checker's own sequential model is step(); the oracles below (brute force,
# model histories) use this one instead, written separately from the API's
# documented semantics on a plain dict, so that a mistake in step() shows up
# as a disagreement rather than being built into the expected answers.


def _recorded_agrees(recorded: object, actual: object) -> bool:
    """None anywhere in a recorded output means "not recorded"."""
    if recorded is None:
        return True
    if isinstance(recorded, tuple):
        assert isinstance(actual, tuple) and len(actual) == len(recorded)
        return all(r is None or r == a for r, a in zip(recorded, actual, strict=True))
    return recorded == actual


def reference_apply(store: dict[str, bytes], op: Operation) -> bool:
    """Apply ``op`` to ``store`` (absent keys are missing from it); return
    whether its recorded output is what the store answers."""
    key = op.key
    if op.kind == "put":
        assert op.value is not None
        store[key] = op.value
        return True
    if op.kind == "get":
        actual: object = (key in store, store.get(key, b""))
        if key not in store:  # a miss has no value to compare
            return op.ret is None or op.output is None or op.output[0] in (None, False)
    elif op.kind == "delete":
        actual = store.pop(key, None) is not None
    else:  # cas: expected None means "only if absent"; current is the value after
        found = key in store
        swapped = not found if op.expected is None else store.get(key) == op.expected
        if swapped:
            assert op.value is not None
            store[key] = op.value
        actual = (swapped, found, store.get(key, b""))
    return op.ret is None or _recorded_agrees(op.output, actual)


def test_step_agrees_with_the_reference_model() -> None:
    """Every operation the checker knows, on every small state, with every
    recorded output: step() and the reference model give the same verdict
    and the same next state."""
    values: list[bytes | None] = [None, b"a", b"b"]
    bools: list[bool | None] = [None, False, True]
    ops: list[Operation] = []
    for ret in (1.0, None):
        for value in (b"a", b"b"):
            ops.append(put(1, 0, ret, "k", value))
            for expected in values:
                for swapped, found, current in itertools.product(bools, bools, [*values, b""]):
                    ops.append(cas(1, 0, ret, "k", expected, value, swapped, found, current))
        for seen in values:
            ops.append(get(1, 0, ret, "k", seen))
        ops.append(Operation(1, 0, ret, "get", "k", output=(None, None)))
        for deleted in bools:
            ops.append(delete(1, 0, ret, "k", deleted))
    verdicts = {True: 0, False: 0}
    for state, op in itertools.product(values, ops):
        store = {} if state is None else {"k": state}
        ok = reference_apply(store, op)
        assert step(state, op) == (ok, store.get("k")), (state, op.describe())
        verdicts[ok] += 1
    assert verdicts[True] > 100 and verdicts[False] > 100, verdicts


# -- cross-check against brute force ------------------------------------------------


def brute_force(ops: list[Operation]) -> bool:
    """Try every order that respects real time (an operation that returned
    strictly before another was called goes first)."""
    ops = [op for op in ops if not (op.kind == "get" and op.ret is None)]
    n = len(ops)
    rets = [math.inf if op.ret is None else op.ret for op in ops]
    for order in itertools.permutations(range(n)):
        pos = {i: p for p, i in enumerate(order)}
        if any(rets[a] < ops[b].call and pos[a] > pos[b] for a in range(n) for b in range(n)):
            continue
        store: dict[str, bytes] = {}
        if all(reference_apply(store, ops[i]) for i in order):
            return True
    return False


def random_small_history(rng: random.Random, n: int) -> list[Operation]:
    values = [b"a", b"b"]
    ops = []
    for _ in range(n):
        call = rng.randrange(10)
        ret: float | None = call + rng.randrange(4)
        if rng.random() < 0.15:
            ret = None
        r = rng.random()
        client = rng.randrange(3)
        if r < 0.3:
            ops.append(put(client, call, ret, "k", rng.choice(values)))
        elif r < 0.6:
            ops.append(get(client, call, ret, "k", rng.choice([*values, None])))
        elif r < 0.75:
            ops.append(delete(client, call, ret, "k", rng.random() < 0.5))
        else:
            exp = rng.choice([*values, None])
            swapped = rng.random() < 0.5
            ops.append(
                cas(
                    client,
                    call,
                    ret,
                    "k",
                    exp,
                    rng.choice(values),
                    swapped,
                    rng.random() < 0.5,
                    rng.choice([*values, b""]),
                )
            )
    return ops


def random_small_unique_history(rng: random.Random, n: int) -> list[Operation]:
    """Distinct written values and many outcome-unknown writes: exercises the
    pinning of observed unknown writes and the anonymous/symmetric ones."""
    ops: list[Operation] = []
    written: list[bytes] = []
    for j in range(n):
        call = rng.randrange(8)
        ret: float | None = call + rng.randrange(4)
        if rng.random() < 0.35:
            ret = None
        r = rng.random()
        client = rng.randrange(4)
        value = f"v{j}".encode()
        if r < 0.35:
            ops.append(put(client, call, ret, "k", value))
            written.append(value)
        elif r < 0.65:
            ops.append(get(client, call, ret, "k", rng.choice([*written, None, b"v0"])))
        elif r < 0.8:
            ops.append(delete(client, call, ret, "k", rng.random() < 0.6))
        else:
            exp = rng.choice([*written, None])
            swapped = rng.random() < 0.5
            current = value if swapped else rng.choice([*written, b""])
            ops.append(
                cas(client, call, ret, "k", exp, value, swapped, rng.random() < 0.6, current)
            )
            written.append(value)
    return ops


def test_agrees_with_brute_force_with_distinct_values_and_unknown_writes() -> None:
    rng = random.Random(77)
    verdicts = {True: 0, False: 0}
    for _ in range(2000):
        h = random_small_unique_history(rng, rng.randint(1, 6))
        expect = brute_force(h)
        assert check(h).ok == expect, "\n".join(op.describe() for op in h)
        verdicts[expect] += 1
    assert verdicts[True] > 200 and verdicts[False] > 200, verdicts


def test_agrees_with_brute_force_on_small_random_histories() -> None:
    rng = random.Random(2024)
    verdicts = {True: 0, False: 0}
    for _ in range(1500):
        h = random_small_history(rng, rng.randint(1, 6))
        expect = brute_force(h)
        assert check(h).ok == expect, "\n".join(op.describe() for op in h)
        verdicts[expect] += 1
    assert verdicts[True] > 100 and verdicts[False] > 100  # both outcomes exercised


def brute_force_end_states(ops: list[Operation]) -> set[bytes | None]:
    """Every value the key can be left with: any subset of the optional ops
    takes effect, in any real-time respecting order with valid outputs."""
    out: set[bytes | None] = set()
    optional = [op for op in ops if _optional(op)]
    required = [op for op in ops if not _optional(op)]
    for mask in range(1 << len(optional)):
        chosen = required + [op for j, op in enumerate(optional) if mask >> j & 1]
        rets = [math.inf if op.ret is None else op.ret for op in chosen]
        for order in itertools.permutations(range(len(chosen))):
            pos = {i: p for p, i in enumerate(order)}
            if any(
                rets[a] < chosen[b].call and pos[a] > pos[b]
                for a in range(len(chosen))
                for b in range(len(chosen))
            ):
                continue
            store: dict[str, bytes] = {}
            if all(reference_apply(store, chosen[i]) for i in order):
                out.add(store.get("k"))  # these histories are all on key "k"
    return out


def test_summaries_of_the_past_cover_every_reachable_value() -> None:
    # The explanation replaces a prefix by the values it can leave; that is
    # sound only if no reachable value is missing.
    rng = random.Random(11)
    checked = 0
    for _ in range(800):
        h = [op for op in random_small_unique_history(rng, rng.randint(1, 4)) if op.kind != "get"]
        h += [op for op in random_small_unique_history(rng, 2) if op.kind == "get" and op.ret]
        truth = brute_force_end_states(h)
        if not truth:
            continue
        checked += 1
        assert truth <= _possible_values_after(h, None), "\n".join(o.describe() for o in h)
        exact = _end_states(h, None, time.monotonic() + 5)
        assert exact <= truth
        anonymous = {op.value for op in h if _optional(op)}
        assert truth <= exact | anonymous
    assert checked > 300


# -- randomized histories from a sequential model -----------------------------------


def model_history(
    rng: random.Random, clients: int, ops_per_client: int, keys: int, unknown_rate: float = 0.05
) -> list[Operation]:
    """Concurrent clients; each operation takes effect at a random point inside
    its interval (or, if its outcome is unknown, at a point after its call or
    never), and its output is computed from the sequential model in the order
    of those points. Such a history is linearizable by construction."""
    planned: list[tuple[float, int, float, float | None]] = []
    for client in range(clients):
        t = rng.random()
        for _ in range(ops_per_client):
            call = t
            ret = call + rng.expovariate(1.0)
            unknown = rng.random() < unknown_rate
            if unknown:
                point = call + rng.expovariate(0.5) if rng.random() < 0.6 else math.inf
            else:
                point = rng.uniform(call, ret)
            recorded: float | None = None if unknown else ret
            planned.append((point, client, call, recorded))
            t = ret + rng.expovariate(2.0)
            if unknown:
                t += 5  # a client that timed out moves on later
    planned.sort()
    store: dict[str, bytes] = {}  # the reference model's store, in effect order
    history = []
    for counter, (point, client, call, returned) in enumerate(planned, 1):
        key = f"k{rng.randrange(keys)}"
        current = store.get(key)
        r = rng.random()
        fresh = f"v{counter}".encode()
        if r < 0.35:
            op = put(client, call, returned, key, fresh)
        elif r < 0.7:
            op = get(client, call, returned, key, current)
        elif r < 0.8:
            op = delete(client, call, returned, key, current is not None)
        else:
            expected = current if rng.random() < 0.6 else rng.choice([None, b"v1"])
            found = key in store
            swapped = not found if expected is None else store.get(key) == expected
            after = fresh if swapped else store.get(key, b"")
            op = cas(client, call, returned, key, expected, fresh, swapped, found, after)
        if op.kind == "get" and returned is None:
            op = Operation(client, call, None, "get", key, output=None)
        if point != math.inf:
            assert reference_apply(store, op), op.describe()
        history.append(op)
    return history


@pytest.mark.parametrize("seed", range(12))
def test_model_histories_are_accepted_and_a_wrong_read_is_rejected(seed: int) -> None:
    rng = random.Random(seed)
    history = model_history(rng, clients=6, ops_per_client=60, keys=4)
    result = check(history)
    assert result.ok, result.explanation

    reads = [i for i, op in enumerate(history) if op.kind == "get" and op.ret is not None]
    victim = rng.choice(reads)
    bad = list(history)
    bad[victim] = get(
        bad[victim].client, bad[victim].call, bad[victim].ret, bad[victim].key, b"never written"
    )
    result = check(bad)
    assert not result.ok
    assert result.key == history[victim].key
    assert any(op.output == (True, b"never written") for op in result.ops or [])


def test_a_few_thousand_operations_take_a_near_linear_search(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No exponential blow-up on a realistic history: the search runs the
    sequential model a near-linear number of times. A count, so load cannot
    fail it; the seconds are measured by ``python -m tests.test_linearizability``."""
    rng = random.Random(99)
    history = model_history(rng, clients=10, ops_per_client=300, keys=20)
    assert len(history) == 3000
    steps = 0
    real_step = linearizability.step

    def counting_step(state: bytes | None, op: Operation) -> tuple[bool, bytes | None]:
        nonlocal steps
        steps += 1
        return real_step(state, op)

    monkeypatch.setattr(linearizability, "step", counting_step)
    assert check(history).ok  # check()'s own 60 s timeout is the hang guard
    assert len(history) <= steps <= 5 * len(history), steps


def test_timeout_is_reported() -> None:
    # Many concurrent writes of distinct values with no reads: exponential
    # without the memo; with a deadline of zero the search must stop at once.
    h = [put(i, 0, 100, "k", str(i).encode()) for i in range(22)]
    h.append(get(99, 101, 102, "k", b"nope"))
    with pytest.raises(CheckTimeoutError):
        check(h, timeout=0.0)


def test_internal_search_on_sorted_input_directly() -> None:
    ops = [put(1, 0, 1, "k", b"a"), get(2, 0.5, 2, "k", b"a")]
    assert _linearizable(ops, None, time.monotonic() + 5)
    assert not _linearizable([get(2, 0, 1, "k", b"a")], None, time.monotonic() + 5)


def _timing_report() -> None:
    """``python -m tests.test_linearizability``: checker timings on model
    histories, valid and with one read changed to a value never written."""
    rows = [
        (10, 4, 300, 0.05),
        (10, 20, 300, 0.05),  # test_a_few_thousand_operations_take_a_near_linear_search
        (16, 8, 200, 0.05),
        (5, 1, 300, 0.05),
        (3, 1, 1000, 0.05),
    ]
    print("clients keys ops unknown%  valid_s  broken_s  core_ops")
    for clients, keys, per_client, unknown in rows:
        for seed in range(3):
            rng = random.Random(seed)
            history = model_history(rng, clients, per_client, keys, unknown)
            started = time.perf_counter()
            ok = check(history).ok
            valid_s = time.perf_counter() - started
            reads = [i for i, op in enumerate(history) if op.kind == "get" and op.ret is not None]
            victim = rng.choice(reads)
            broken = list(history)
            o = broken[victim]
            broken[victim] = get(o.client, o.call, o.ret, o.key, b"never written")
            started = time.perf_counter()
            result = check(broken)
            broken_s = time.perf_counter() - started
            assert ok and not result.ok
            print(
                f"{clients:7} {keys:4} {len(history):4} {unknown * 100:7.0f}"
                f"  {valid_s:7.3f}  {broken_s:8.3f}  {len(result.ops or []):8}"
            )


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(
        prog="python -m tests.test_linearizability",
        description=(
            "The linearizability checker's time on model histories (five shapes, three "
            "seeds each), valid and with one read changed to a value never written; no options."
        ),
    ).parse_args()
    _timing_report()

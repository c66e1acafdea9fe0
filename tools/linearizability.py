"""A linearizability checker for key-value histories (Wing & Gong, with Lowe's
memoization and P-compositionality, as in Porcupine; written from the papers).

Input: the operations clients ran, each with its client id, invocation time,
completion time and output. An operation whose outcome is unknown (a write that
timed out or failed with UNAVAILABLE) has ``ret=None``: it may have taken effect
at any moment after its invocation, or never. A read with unknown outcome tells
nothing and is dropped.

Key-value operations touch one key each, so the history is checked key by key
(a history is linearizable iff each key's sub-history is): small searches
instead of one huge one.

The search (per key): put every call and return event on a doubly linked list
in time order (calls before returns at equal times, i.e. such operations count
as concurrent). Walk the list; at a call, try to linearize that operation now:
run it on the sequential model; if its recorded output matches and the pair
(set of linearized operations, model state) was not seen before, remove the
operation's two events from the list, push, and restart from the head. Reaching
a return event means its operation should have been linearized by then:
backtrack (pop, put the events back, try the next call). An empty list is a
linearization; an empty stack when backtracking proves there is none.

On failure the checker explains with a small sub-history of the failing key
that is still not linearizable, found by transformations that can only turn a
linearizable history into a linearizable one (so the small history is a proof
about the big one): cut at a time T (drop operations invoked after T; drop
reads that completed after T, and make writes that completed after T
outcome-unknown), then drop read-like operations (gets, CAS that did not swap,
deletes that found nothing) one at a time while the rest still fails.

Usage::

    from ramraft.tools.linearizability import Operation, check
    result = check(history)
    assert result.ok, result.explanation
"""

from __future__ import annotations

import itertools
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

KINDS = ("put", "get", "delete", "cas")


@dataclass(frozen=True)
class Operation:
    """One client operation on one key.

    - ``put``: ``value``; output ignored.
    - ``get``: output ``(found, value)``.
    - ``delete``: output ``deleted`` (bool).
    - ``cas``: ``expected`` (None: only if absent) and ``value``; output
      ``(swapped, found, current)`` where ``found`` says whether the key
      existed before and ``current`` is its value after (b"" when absent).

    Any element of a tuple output may be None: "not recorded, don't check".
    ``ret=None`` means the outcome is unknown (``output`` is then ignored).
    """

    client: int
    call: float
    ret: float | None
    kind: str
    key: str
    value: bytes | None = None
    expected: bytes | None = None
    output: Any = None
    effect_by: float | None = None
    """For an outcome-unknown write: a time by which it certainly took effect
    (set by the checker when a later output shows its unique value)."""

    def describe(self) -> str:
        if self.kind == "put":
            what = f"put({self.key!r}, {self.value!r})"
        elif self.kind == "get":
            what = f"get({self.key!r})"
        elif self.kind == "delete":
            what = f"delete({self.key!r})"
        else:
            what = f"cas({self.key!r}, expected={self.expected!r}, value={self.value!r})"
        if self.ret is None:
            out, end = "outcome unknown", "?"
            if self.effect_by is not None:
                out += f" (its value was seen by {self.effect_by:g})"
        else:
            out, end = ("ok" if self.kind == "put" else repr(self.output)), f"{self.ret:g}"
        return f"client {self.client}: {what} -> {out}  [{self.call:g}, {end}]"


# -- convenience constructors --------------------------------------------------


def put(client: int, call: float, ret: float | None, key: str, value: bytes) -> Operation:
    return Operation(client, call, ret, "put", key, value=value)


def get(client: int, call: float, ret: float | None, key: str, value: bytes | None) -> Operation:
    """A get that returned ``value`` (None: not found)."""
    out = (False, b"") if value is None else (True, value)
    return Operation(client, call, ret, "get", key, output=out)


def delete(
    client: int, call: float, ret: float | None, key: str, deleted: bool | None
) -> Operation:
    return Operation(client, call, ret, "delete", key, output=deleted)


def cas(
    client: int,
    call: float,
    ret: float | None,
    key: str,
    expected: bytes | None,
    value: bytes,
    swapped: bool | None = None,
    found: bool | None = None,
    current: bytes | None = None,
) -> Operation:
    return Operation(
        client,
        call,
        ret,
        "cas",
        key,
        value=value,
        expected=expected,
        output=(swapped, found, current),
    )


# -- the sequential model --------------------------------------------------------


def _agrees(recorded: Any, actual: Any) -> bool:
    return recorded is None or recorded == actual


def step(state: bytes | None, op: Operation) -> tuple[bool, bytes | None]:
    """Run ``op`` on a key whose value is ``state`` (None: absent). Returns
    (whether the recorded output is possible, the new state)."""
    kind = op.kind
    unknown = op.ret is None
    if kind == "put":
        return True, op.value
    if kind == "get":
        if unknown:
            return True, state
        found, value = op.output
        if state is None:
            return _agrees(found, False), state
        return _agrees(found, True) and _agrees(value, state), state
    if kind == "delete":
        return unknown or _agrees(op.output, state is not None), None
    # cas
    match = state is None if op.expected is None else state == op.expected
    new = op.value if match else state
    if unknown:
        return True, new
    swapped, found, current = op.output
    ok = (
        _agrees(swapped, match)
        and _agrees(found, state is not None)
        and _agrees(current, b"" if new is None else new)
    )
    return ok, new


def _read_like(op: Operation) -> bool:
    """Operations that change nothing in any linearization where their
    recorded output holds: dropping them keeps a linearizable history
    linearizable."""
    if op.ret is None:
        return False
    if op.kind == "get":
        return True
    if op.kind == "delete":
        return op.output is False
    if op.kind == "cas":
        return op.output[0] is False
    return False


# -- the search --------------------------------------------------------------------


class CheckTimeoutError(Exception):
    """The search took longer than the deadline (the history is too
    concurrent to decide in time; record fewer clients or shorter runs)."""


def _deadline_of(op: Operation) -> float:
    """The time by which op must have taken effect (its return event)."""
    if op.ret is not None:
        return op.ret
    return math.inf if op.effect_by is None else op.effect_by


def _pin_observed_unknowns(ops: list[Operation], initial: bytes | None) -> list[Operation]:
    """An outcome-unknown write whose value is written by no other operation
    (and is not the initial value) certainly took effect if some output shows
    that value, and before that output's operation returned. Saying so
    (``effect_by``) changes no verdict: any valid order already puts the write
    before its observer, hence before everything invoked after the observer
    returned. It saves the search from trying every subset of unknown writes.
    Tests get the most from it by writing a distinct value each time."""
    writers: dict[bytes, int] = defaultdict(int)
    for op in ops:
        if op.kind in ("put", "cas") and op.value is not None:
            writers[op.value] += 1
    seen_by: dict[bytes, float] = {}
    for op in ops:
        if op.ret is None:
            continue
        value: bytes | None = None
        if op.kind == "get" and op.output[0] and op.output[1] is not None:
            value = op.output[1]
        elif op.kind == "cas" and op.output[0] is False and op.output[2]:
            value = op.output[2]
        elif op.kind == "cas" and op.output[0] is True and op.expected is not None:
            value = op.expected
        if value is not None:
            seen_by[value] = min(seen_by.get(value, math.inf), op.ret)
    out = []
    for op in ops:
        v = op.value
        if (
            op.ret is None
            and v is not None
            and writers[v] == 1
            and v != initial
            and seen_by.get(v, -math.inf) >= op.call
        ):
            op = replace(op, effect_by=seen_by[v])
        out.append(op)
    return out


def _observed_values(ops: list[Operation]) -> set[bytes] | None:
    """Every value some completed output shows; None if some output left a
    value unrecorded (then any value may have been seen)."""
    seen: set[bytes] = set()
    for op in ops:
        if op.ret is None:
            continue
        if op.kind == "get":
            found, value = op.output
            if found is None or (found and value is None):
                return None
            if found:
                seen.add(value)
        elif op.kind == "cas":
            swapped, _, current = op.output
            if swapped is None or current is None:
                return None
            if swapped and op.expected is not None:
                seen.add(op.expected)
            if not swapped:
                seen.add(current)
    return seen


def _symmetry_classes(ops: list[Operation], unknown: list[bool]) -> list[object]:
    """For each outcome-unknown op, a class such that two pending ops of one
    class can be swapped without changing any output: deletes, and writes
    whose value no output ever shows. Other ops get a class of their own."""
    observed = _observed_values(ops)
    classes: list[object] = []
    for i, op in enumerate(ops):
        if not unknown[i] or observed is None:
            classes.append(i)
        elif op.kind == "delete":
            classes.append("delete")
        elif op.value is not None and op.value not in observed:
            # An anonymous write: nothing ever shows its value, so its only
            # possible use is to make an absent key present.
            classes.append("anonymous" if op.kind == "put" or op.expected is None else None)
        else:
            classes.append(i)
    return classes


def _linearizable(
    ops: list[Operation], initial: bytes | None, deadline: float, blocker: list[int] | None = None
) -> bool:
    return _search(ops, initial, deadline, None, blocker)


def _end_states(ops: list[Operation], initial: bytes | None, deadline: float) -> set[bytes | None]:
    """Every value the key can have after some linearization of ``ops``."""
    found: set[bytes | None] = set()
    _search(ops, initial, deadline, found)
    return found


def _search(
    ops: list[Operation],
    initial: bytes | None,
    deadline: float,
    end_states: set[bytes | None] | None,
    blocker: list[int] | None = None,
) -> bool:
    """True if ``ops`` (one key's) has a linearization from ``initial``.

    Outcome-unknown operations never have to be placed: once every completed
    operation is linearized the rest "never happened". With ``end_states``,
    explore everything and collect the values the key can be left with.

    Two prunings keep the search small. The memo (Lowe): a configuration
    (completed ops linearized, unknown ops applied, value) is explored once.
    Dominance: a configuration is skipped if one with the same completed ops
    and value but a SUBSET of its unknown ops applied was seen; whatever the
    bigger one can still do, the smaller one can too, leaving the extra unknown
    ops for "never". Candidates are tried completed ops first, unknown last,
    so the smaller configurations tend to come first.
    """
    n = len(ops)
    # "unknown": may be left out ("never happened"); others must be placed.
    unknown = [op.ret is None and op.effect_by is None for op in ops]
    completed_left = n - sum(unknown)
    if completed_left == 0 and end_states is None:
        return True
    # Events: id 2i is the call of op i, 2i+1 its return; list slot 0 is the head.
    events: list[tuple[float, int, int]] = []
    for i, op in enumerate(ops):
        events.append((op.call, 0, 2 * i))
        events.append((_deadline_of(op), 1, 2 * i + 1))
    events.sort()
    size = 2 * n + 1
    nxt = [0] * size
    prv = [0] * size
    order = [0] + [e[2] + 1 for e in events]  # slot of event id e is e+1
    for a, b in itertools.pairwise(order):
        nxt[a] = b
        prv[b] = a
    nxt[order[-1]] = -1
    prv[0] = -1

    def unlink(slot: int) -> None:
        p, q = prv[slot], nxt[slot]
        nxt[p] = q
        if q != -1:
            prv[q] = p

    def relink(slot: int) -> None:
        p, q = prv[slot], nxt[slot]
        nxt[p] = slot
        if q != -1:
            prv[q] = slot

    classes = _symmetry_classes(ops, unknown)
    seen_classes: set[object] = set()

    def candidates() -> list[int]:
        # Operations whose call precedes the first pending return: only they
        # may come next without breaking real-time order.
        known: list[int] = []
        maybe: list[int] = []
        slot = nxt[0]
        while slot != -1:
            event = slot - 1
            if event & 1:
                break
            i = event >> 1
            kind = classes[i]
            if not unknown[i]:
                known.append(i)
            elif kind is None or (kind == "anonymous" and state is not None):
                pass  # never useful now (see _symmetry_classes)
            elif kind not in seen_classes:
                # Of several pending interchangeable unknown ops, trying the
                # first is enough (the others are the same choice renamed).
                seen_classes.add(kind)
                maybe.append(i)
            slot = nxt[slot]
        seen_classes.clear()
        return known + maybe

    state = initial
    done_known = 0  # bitset of completed ops linearized
    done_unknown = 0  # bitset of unknown ops applied
    seen: dict[tuple[int, bytes | None], list[int]] = {}
    stack: list[tuple[int, bytes | None, list[int], int]] = []
    if end_states is not None and completed_left == 0:
        end_states.add(state)
    cands = candidates()
    pos = 0
    steps = 0
    while True:
        steps += 1
        if steps & 0xFFF == 0 and time.monotonic() > deadline:
            raise CheckTimeoutError(f"linearizability search over {n} operations timed out")
        advanced = False
        while pos < len(cands):
            i = cands[pos]
            pos += 1
            ok, new_state = step(state, ops[i])
            if not ok:
                continue
            bit = 1 << i
            if unknown[i]:
                known_bits, unknown_bits = done_known, done_unknown | bit
            else:
                known_bits, unknown_bits = done_known | bit, done_unknown
            key = (known_bits, new_state)
            tried = seen.get(key)
            if tried is None:
                seen[key] = [unknown_bits]
            elif any(t & ~unknown_bits == 0 for t in tried):
                continue  # dominated (or equal) configuration already explored
            else:
                tried.append(unknown_bits)
            stack.append((i, state, cands, pos))
            state, done_known, done_unknown = new_state, known_bits, unknown_bits
            slot = 2 * i + 1
            unlink(slot)
            unlink(slot + 1)
            if not unknown[i]:
                completed_left -= 1
                if completed_left == 0:
                    if end_states is None:
                        return True
                    end_states.add(state)
            elif completed_left == 0 and end_states is not None:
                end_states.add(state)
            cands = candidates()
            pos = 0
            advanced = True
            break
        if advanced:
            continue
        # every candidate tried: backtrack
        if blocker is not None and len(stack) >= blocker[0]:
            # Remember the op whose return ended the deepest dead end: the
            # likeliest culprit, used to explain a failure.
            slot = nxt[0]
            while slot != -1 and (slot - 1) % 2 == 0:
                slot = nxt[slot]
            if slot != -1:
                blocker[:] = [len(stack), (slot - 1) // 2]
        if not stack:
            return bool(end_states)
        i, state, cands, pos = stack.pop()
        if unknown[i]:
            done_unknown &= ~(1 << i)
        else:
            done_known &= ~(1 << i)
            completed_left += 1
        slot = 2 * i + 1
        relink(slot + 1)
        relink(slot)


# -- results and minimisation -----------------------------------------------------


@dataclass
class CheckResult:
    ok: bool
    key: str | None = None
    ops: list[Operation] | None = None
    """The failing core: no order of these explains their outputs."""
    context: list[Operation] | None = None
    """The last writes before the core (they fix the values it starts from)."""
    explanation: str = "linearizable"

    def __bool__(self) -> bool:
        return self.ok


def _cut(ops: list[Operation], t: float) -> list[Operation]:
    """The history as it looked at time t (see the module docstring)."""
    out = []
    for op in ops:
        if op.call > t:
            continue
        if _deadline_of(op) > t:
            if op.kind == "get":
                continue
            op = replace(op, ret=None, effect_by=None)
        out.append(op)
    return out


def _fails_from_all(ops: list[Operation], starts: set[bytes | None], deadline: float) -> bool:
    return not any(_linearizable(ops, start, deadline) for start in starts)


def _optional(op: Operation) -> bool:
    """An outcome-unknown op that may never have taken effect."""
    return op.ret is None and op.effect_by is None


def _quiescent_splits(ops: list[Operation]) -> list[int]:
    """Indexes i (ops sorted by call) such that every op before i, except
    optional ones, returned strictly before op i was called."""
    splits = []
    latest = -math.inf
    for i, op in enumerate(ops):
        if i and latest < op.call:
            splits.append(i)
        if not _optional(op):
            latest = max(latest, _deadline_of(op))
    return splits


def _possible_values_after(ops: list[Operation], initial: bytes | None) -> set[bytes | None]:
    """A cheap superset of the values the key can have once every completed
    op of ``ops`` is done (``ops`` end at a quiescent point): the effect of
    any write that no completed write must follow, of any optional write, and
    the initial value if no completed write surely took effect."""

    def writes(op: Operation) -> bool:
        if op.kind == "put":
            return True
        if op.kind == "delete":
            return op.ret is None or op.output is not False
        if op.kind == "cas":
            return op.ret is None or op.output[0] is not False
        return False

    effective = [op for op in ops if writes(op)]
    sure = [op for op in effective if not _optional(op)]
    values: set[bytes | None] = set()
    if not sure:
        values.add(initial)
    for op in effective:
        if _optional(op) or not any(_deadline_of(op) < w.call for w in sure):
            values.add(None if op.kind == "delete" else op.value)
    return values


def _minimise(
    ops: list[Operation],
    initial: bytes | None,
    deadline: float,
    culprit: Operation | None,
    budget: float = 3.0,
) -> tuple[list[Operation], set[bytes | None], list[Operation]]:
    """A small failing core: (ops, the values the key may have when they
    start, the earlier operations those values summarise)."""
    stop = min(deadline, time.monotonic() + budget)
    starts: set[bytes | None] = {initial}

    def fails(candidate: list[Operation], from_: set[bytes | None]) -> bool:
        return _fails_from_all(candidate, from_, deadline)

    def summarise(
        history: list[Operation],
    ) -> tuple[list[Operation], set[bytes | None], list[Operation]] | None:
        # At a quiescent point, replace the operations before it by the values
        # they can leave (a cheap superset first, the exact set if that is not
        # enough). Optional operations invoked before it stay in the core too
        # (they may take effect on either side, even twice: more permissive,
        # so a core that still fails proves the history fails). Latest first.
        for split in reversed(_quiescent_splits(history)):
            if time.monotonic() > stop:
                return None
            before, after = history[:split], history[split:]
            core = [op for op in before if _optional(op)] + after
            possible = _possible_values_after(before, initial)
            if not fails(core, possible):
                possible = _end_states(before, initial, deadline)
                if not possible or not fails(core, possible):
                    continue
            return core, possible, before
        return None

    # 1. Cut the future off just after the likeliest culprit (the op at which
    # the search got stuck deepest) and summarise the past; this only checks
    # small cores. 2. Failing that, find the earliest cut that still fails by
    # binary search, and summarise that.
    current = sorted(ops, key=lambda o: o.call)
    summarised: list[Operation] = []
    found = None
    if culprit is not None:
        found = summarise(sorted(_cut(ops, _deadline_of(culprit)), key=lambda o: o.call))
    if found is None:
        times = sorted({op.call for op in ops} | {op.ret for op in ops if op.ret is not None})
        lo, hi = 0, len(times) - 1
        while lo <= hi and time.monotonic() < stop:
            mid = (lo + hi) // 2
            candidate = _cut(ops, times[mid])
            if fails(candidate, starts):
                current, hi = sorted(candidate, key=lambda o: o.call), mid - 1
            else:
                lo = mid + 1
        found = summarise(current)
    if found is not None:
        current, starts, summarised = found

    # 3. Drop read-like operations while it still fails.
    for op in reversed(list(current)):
        if time.monotonic() > stop:
            break
        if _read_like(op):
            candidate = [o for o in current if o is not op]
            if fails(candidate, starts):
                current = candidate
    return current, starts, summarised


def check(
    history: Iterable[Operation],
    initial: Mapping[str, bytes] | None = None,
    timeout: float = 60.0,
) -> CheckResult:
    """Check a key-value history; ``initial`` maps keys present at the start to
    their values (default: every key absent). Raises ValueError for malformed
    operations and CheckTimeoutError if the search exceeds ``timeout`` s."""
    deadline = time.monotonic() + timeout
    by_key: dict[str, list[Operation]] = defaultdict(list)
    for op in history:
        if op.kind not in KINDS:
            raise ValueError(f"unknown operation kind {op.kind!r}")
        if op.ret is not None and op.ret < op.call:
            raise ValueError(f"operation returns before it is called: {op.describe()}")
        if op.kind in ("put", "cas") and op.value is None:
            raise ValueError(f"{op.kind} without a value: {op.describe()}")
        if op.kind == "get":
            if op.ret is None:
                continue  # an unanswered read constrains nothing
            if not (isinstance(op.output, tuple) and len(op.output) == 2):
                raise ValueError(f"get output must be (found, value): {op.describe()}")
        if (
            op.kind == "cas"
            and op.ret is not None
            and not (isinstance(op.output, tuple) and len(op.output) == 3)
        ):
            raise ValueError(f"cas output must be (swapped, found, current): {op.describe()}")
        by_key[op.key].append(op)
    initial = initial or {}
    for key in sorted(by_key):
        start = initial.get(key)
        ops = sorted(by_key[key], key=lambda o: (o.call, _deadline_of(o)))
        ops = _pin_observed_unknowns(ops, start)
        blocker = [-1, -1]
        if _linearizable(ops, start, deadline, blocker):
            continue
        culprit = ops[blocker[1]] if blocker[1] >= 0 else None
        small, starts, earlier = _minimise(ops, start, deadline, culprit)
        lines = "\n".join("  " + op.describe() for op in small)
        context_ops = [op for op in earlier if not _read_like(op)][-3:]
        if context_ops:
            lines = (
                "  (last writes before them:)\n"
                + "\n".join("  " + op.describe() for op in context_ops)
                + "\n  (the operations:)\n"
                + lines
            )
        values = " or ".join(sorted("absent" if v is None else repr(v) for v in starts))
        context = (
            f"after its first {len(earlier)} operations the key can only be {values}"
            if earlier
            else f"the key starts {values}"
        )
        return CheckResult(
            ok=False,
            key=key,
            ops=small,
            context=context_ops,
            explanation=(
                f"not linearizable: key {key!r} ({len(ops)} operations): {context}, and "
                f"no order of these {len(small)} operations explains their outputs:\n{lines}"
            ),
        )
    return CheckResult(ok=True)

"""What the node runtime relies on from any state machine, checked through
the StateMachine protocol alone (server/machines/statemachine.py): a
runtime_checkable isinstance() only sees that the methods exist."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import TypeVar

from ramraft.server.machines.statemachine import SnapshotJob, StateMachine

M = TypeVar("M", bound=StateMachine)


def check_state_machine_contract(
    make: Callable[[], M], commands: Sequence[bytes], state: Callable[[M], object]
) -> None:
    """``make`` builds an empty replica; ``state`` reads what a replica holds."""
    first = make()
    assert isinstance(first, StateMachine)
    assert first.applied_index == 0, first.applied_index
    results = [first.apply(index, command) for index, command in enumerate(commands, 1)]
    assert first.applied_index == len(commands), first.applied_index
    # Deterministic: another replica applying the same log answers the same
    # and ends in the same state.
    second = make()
    again = [second.apply(i, command) for i, command in enumerate(commands, 1)]
    assert again == results, f"replicas answered differently: {again} != {results}"
    assert state(second) == state(first), "replicas ended in different states"
    # A snapshot carries the state and the applied index to a fresh replica.
    job = first.snapshot()
    assert isinstance(job, SnapshotJob) and job.index == len(commands), job.index
    buffer = io.BytesIO()
    written = job.write_to(buffer)
    assert written == len(buffer.getvalue()) > 0, f"write_to said {written} bytes"
    restored = make()
    restored.restore(io.BytesIO(buffer.getvalue()))
    assert restored.applied_index == len(commands), (
        f"restored at index {restored.applied_index}, not {len(commands)}"
    )
    assert state(restored) == state(first), "the snapshot did not carry the state"

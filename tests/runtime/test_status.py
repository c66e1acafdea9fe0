"""The runtime reports its state as typed, frozen values (runtime/status.py)
whose role is the core's enum: no part of the node tells roles apart by
comparing strings."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import os
import pathlib

import pytest

import ramraft
from ramraft.consensus import Role
from ramraft.server.storage import MemoryDisk
from tests.runtime.test_runtime_single import make_runtime, started

SERVER = pathlib.Path(ramraft.__file__).resolve().parent.parent / "server"
ROLE_NAMES = {role.value for role in Role}


def test_status_is_a_frozen_value_with_the_cores_role() -> None:
    async def scenario() -> None:
        runtime, _ = make_runtime(MemoryDisk())
        before = runtime.status()
        assert before.role is None and before.to_json()["role"] == "starting"
        assert not before.ready
        await started(runtime)
        await runtime.read_index()
        status = runtime.status()
        assert status.role is Role.LEADER and status.leading and status.ready
        assert status.leader == "solo" and status.applied_index == status.commit_index > 0
        assert (status.pid, status.version) == (os.getpid(), ramraft.__version__)
        with pytest.raises(dataclasses.FrozenInstanceError):
            status.term = 99  # type: ignore[misc]
        document = status.to_json()
        assert document["role"] == "leader" and document["pid"] == os.getpid()
        (member,) = runtime.members()
        assert (member.id, member.voter, member.active) == ("solo", True, True)
        assert [change.leader for change in runtime.leader_changes()][-1] == "solo"
        await runtime.close()

    asyncio.run(scenario())


def _string_role_comparisons(path: pathlib.Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for operand in list(operands):
                if isinstance(operand, ast.Tuple | ast.List | ast.Set):
                    operands += operand.elts  # role in ("candidate", ...)
            if any(isinstance(o, ast.Constant) and o.value in ROLE_NAMES for o in operands):
                found.append(f"{path.relative_to(SERVER)}:{node.lineno}")
    return found


def test_no_module_of_the_node_compares_a_role_with_a_string() -> None:
    files = sorted(SERVER.rglob("*.py"))
    assert files
    offences = [hit for path in files for hit in _string_role_comparisons(path)]
    assert not offences, "compare with ramraft.consensus.Role instead:\n" + "\n".join(offences)

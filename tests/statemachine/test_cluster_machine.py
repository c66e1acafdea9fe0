"""The cluster record and its commands (machines/cluster.py): versions switch
forward only, at one index, running the model's upgrade; an upgrade that
raises changes nothing; entries this code cannot apply halt instead of being
skipped."""

from __future__ import annotations

import io
from typing import Any

import msgpack
import pytest

from ramraft.server.machines.cluster import (
    KV_SUPPORTED_VERSION,
    ClusterMachine,
    ClusterState,
    encode_alarm,
    encode_check,
    encode_cluster_id,
    encode_hold,
    encode_versions,
)
from ramraft.server.machines.digest import digest_job
from ramraft.server.machines.embed import (
    CommandNotActiveError,
    LocalProposer,
    ModelMachine,
    ReplicatedModel,
    command,
    encode_call,
)
from ramraft.server.machines.kv import KVMachine, encode_put
from ramraft.server.machines.statemachine import (
    TAG_CLUSTER,
    TAG_KV,
    TAG_MODEL,
    ApplyHalted,
    CommandError,
    CompositeMachine,
    ErrorCode,
)


class BoardV1(ReplicatedModel):
    def __init__(self) -> None:
        self.notes: list[str] = []

    @command
    def add(self, text: str) -> int:
        self.notes.append(text)
        return len(self.notes)


class BoardV2(ReplicatedModel):
    """Version 2: notes become dicts with an author; ``add_by`` is new."""

    app_version = 2

    def __init__(self) -> None:
        self.notes: list[Any] = []

    @command
    def add(self, text: str) -> int:
        # Entries written before the switch keep their version-1 meaning.
        if self.active_app_version < 2:
            self.notes.append(text)
        else:
            self.notes.append({"text": text, "author": ""})
        return len(self.notes)

    @command(since=2)
    def add_by(self, text: str, author: str) -> int:
        self.notes.append({"text": text, "author": author})
        return len(self.notes)

    def upgrade(self, from_version: int) -> None:
        if from_version == 1:
            self.notes = [{"text": n, "author": ""} for n in self.notes]


class FailingUpgrade(BoardV2):
    def upgrade(self, from_version: int) -> None:
        self.notes.append("half-done")  # a change, then a failure
        raise RuntimeError("cannot convert")


def node(model_cls: type[ReplicatedModel]) -> tuple[ClusterMachine, ReplicatedModel, KVMachine]:
    model = model_cls()
    kv = KVMachine()
    models = ModelMachine(model)
    machine = ClusterMachine(CompositeMachine({TAG_KV: kv, TAG_MODEL: models}), model=models, kv=kv)
    return machine, model, kv


def test_a_command_new_in_a_version_waits_for_the_switch() -> None:
    machine, board, _ = node(BoardV2)
    proposer = LocalProposer(machine)
    models = board._ramraft_machine  # type: ignore[attr-defined]
    models.bind(proposer)
    assert board.active_app_version == 1
    with pytest.raises(CommandNotActiveError, match="needs app version 2; the cluster runs"):
        board.add_by("x", "ann")  # refused before proposing: nothing in the log
    assert proposer.log == []
    # If it reaches the log anyway, it applies as NOT_ACTIVE everywhere.
    result = machine.apply(1, encode_call("add_by", ["x", "ann"]))
    assert isinstance(result, CommandError) and result.code is ErrorCode.NOT_ACTIVE
    assert board.notes == []  # type: ignore[attr-defined]
    machine.apply(2, encode_call("add", ["old"]))
    assert machine.apply(3, encode_versions(2, 1)) is None
    assert board.active_app_version == 2 and machine.state.app_version == 2
    assert board.notes == [{"text": "old", "author": ""}]  # type: ignore[attr-defined]
    assert machine.apply(4, encode_call("add_by", ["new", "bob"])) == 2


def test_upgrade_runs_once_per_step_at_the_switch_index() -> None:
    calls: list[int] = []

    class Three(BoardV1):
        app_version = 3

        def upgrade(self, from_version: int) -> None:
            calls.append(from_version)

    machine, _, _ = node(Three)
    machine.apply(1, encode_versions(3, 1))
    assert calls == [1, 2]
    result = machine.apply(2, encode_versions(2, 1))  # never backwards
    assert isinstance(result, CommandError) and "only move forward" in result.message
    assert machine.state.app_version == 3 and calls == [1, 2]


def test_a_failing_upgrade_leaves_the_state_and_the_version() -> None:
    machine, board, _ = node(FailingUpgrade)
    machine.apply(1, encode_call("add", ["a"]))
    models = board._ramraft_machine  # type: ignore[attr-defined]
    assert "cannot convert" in (models.try_upgrade(1, 2) or "")
    assert board.notes == ["a"]  # type: ignore[attr-defined]  (the dry run used a copy)
    result = machine.apply(2, encode_versions(2, 1))
    assert isinstance(result, CommandError) and result.code is ErrorCode.UPGRADE_FAILED
    assert board.notes == ["a"]  # type: ignore[attr-defined]
    assert machine.state.app_version == 1 and board.active_app_version == 1


def test_a_switch_beyond_this_code_halts_before_any_change() -> None:
    machine, _, _ = node(BoardV1)
    machine.apply(1, encode_call("add", ["a"]))
    with pytest.raises(ApplyHalted, match="supports up to version 1"):
        machine.apply(2, encode_versions(2, 1))
    beyond = KV_SUPPORTED_VERSION + 1
    with pytest.raises(ApplyHalted, match=f"key-value commands to version {beyond}"):
        machine.apply(2, encode_versions(1, beyond))
    assert machine.applied_index == 1 and machine.state == ClusterState()
    # A version-2 command in the log (an old node meeting new code's entry):
    with pytest.raises(ApplyHalted, match="no command 'add_by'"):
        machine.apply(2, encode_call("add_by", ["x", "y"]))
    # ... and a cluster command of a later release.
    with pytest.raises(ApplyHalted, match="unknown to this node's code"):
        machine.apply(2, bytes([TAG_CLUSTER]) + msgpack.packb([99]))
    assert machine.applied_index == 1
    assert machine.apply(2, encode_call("add", ["b"])) == 2  # resumes where it stopped


def test_hold_cluster_id_and_alarm() -> None:
    machine, _, _ = node(BoardV1)
    changes: list[ClusterState] = []
    machine.on_change = changes.append
    machine.apply(1, encode_hold(True))
    machine.apply(2, encode_cluster_id("blue-1"))
    second = machine.apply(3, encode_cluster_id("green-2"))
    assert isinstance(second, CommandError)  # the first id wins everywhere
    machine.apply(4, encode_alarm(7, ["n2"], minority=True))
    assert machine.state == ClusterState(
        cluster_id="blue-1", hold=True, alarm_index=7, alarm_nodes=("n2",), alarm_minority=True
    )
    machine.apply(5, encode_alarm(9, []))
    assert machine.state.alarm_index == 0 and machine.state.alarm_nodes == ()
    assert not machine.state.alarm_minority
    assert len(changes) == 4
    assert ClusterState.from_plain(machine.state.to_plain()) == machine.state
    assert ClusterState.from_plain(None) == ClusterState()  # an earlier release's header
    bad = machine.apply(6, bytes([TAG_CLUSTER]) + b"\xc1")
    assert isinstance(bad, CommandError) and bad.code is ErrorCode.BAD_COMMAND
    assert machine.applied_index == 6


def test_a_check_entry_calls_back_with_the_state_at_its_index() -> None:
    machine, _, kv = node(BoardV1)
    seen: list[tuple[int, int, bool]] = []
    machine.on_check = lambda index: seen.append(
        (index, machine.applied_index, "k" in dict(kv.items()))
    )
    machine.apply(1, encode_put("k", b"v"))
    assert machine.apply(2, encode_check()) == 2
    assert seen == [(2, 2, True)]


def test_equal_states_have_equal_digests_and_any_difference_shows() -> None:
    def build(values: list[bytes]) -> ClusterMachine:
        machine, _, _ = node(BoardV1)
        for i, value in enumerate(values, 1):
            machine.apply(i, encode_put(f"k{i}", value))
        machine.apply(len(values) + 1, encode_call("add", ["note"]))
        return machine

    a, b = build([b"1", b"2", b"3"]), build([b"1", b"2", b"3"])
    c = build([b"1", b"2", b"4"])
    da = digest_job(a.snapshot(), a.state)
    assert da == digest_job(b.snapshot(), b.state)
    assert da != digest_job(c.snapshot(), c.state)
    # The cluster record is part of it too.
    b.apply(10, encode_hold(True))
    a.apply(10, b"")
    assert digest_job(a.snapshot(), a.state) != digest_job(b.snapshot(), b.state)


def test_a_model_with_a_set_of_mixed_types_digests_the_same_whatever_the_hash_seed() -> None:
    import subprocess
    import sys

    code = (
        "from ramraft.server.machines.embed import ModelMachine, ReplicatedModel\n"
        "from ramraft.server.machines.cluster import ClusterState\n"
        "from ramraft.server.machines.digest import digest_job\n"
        "class M(ReplicatedModel):\n"
        "    def __init__(self):\n"
        "        self.tags = {1, 'a', b'b', (2, 'c'), 3.5, 'z', None}\n"
        "m = ModelMachine(M())\n"
        "print(digest_job(m.snapshot(), ClusterState()))\n"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={"PYTHONHASHSEED": str(seed), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in (1, 2, 3, 4)
    }
    assert len(digests) == 1


def test_snapshot_and_restore_keep_versions_through_the_header() -> None:
    machine, _, _ = node(BoardV2)
    machine.apply(1, encode_call("add", ["a"]))
    machine.apply(2, encode_versions(2, 1))
    header = machine.state.to_plain()
    data = io.BytesIO()
    machine.snapshot().write_to(data)
    other, board, _ = node(BoardV2)
    other.load_state(ClusterState.from_plain(header))
    other.restore(io.BytesIO(data.getvalue()))
    assert board.active_app_version == 2
    assert board.notes == [{"text": "a", "author": ""}]  # type: ignore[attr-defined]
    old, _, _ = node(BoardV1)
    with pytest.raises(ApplyHalted, match="snapshot was taken at application version 2"):
        old.load_state(ClusterState.from_plain(header))


def test_a_command_above_the_models_own_version_is_a_definition_error() -> None:
    with pytest.raises(TypeError, match="new in version 3"):

        class Bad(ReplicatedModel):
            app_version = 2

            @command(since=3)
            def later(self) -> None:
                pass

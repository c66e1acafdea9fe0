"""The embedding API: @command models applied through a (fake) log."""

from __future__ import annotations

import asyncio
import enum
import io
import random
import re
from collections import defaultdict
from collections.abc import MutableMapping
from typing import Any

import msgpack
import pytest
import structlog

from ramraft.server.machines.embed import (
    CommandFailedError,
    LocalProposer,
    ModelMachine,
    NotBoundError,
    NotPlainDataError,
    ReplicatedModel,
    command,
    decode_call,
    encode_call,
    pack_plain,
    unpack_plain,
)
from ramraft.server.machines.statemachine import (
    TAG_MODEL,
    ApplyHalted,
    CommandError,
    ErrorCode,
    SnapshotError,
    SnapshotFormatError,
)
from tests.statemachine.contract import check_state_machine_contract


class Board(ReplicatedModel):
    def __init__(self) -> None:
        self.notes: dict[int, str] = {}
        self.tags: dict[str, set[int]] = {}
        self.next_id = 1
        self.history: list[tuple[int, str]] = []

    @command
    def add(self, text: str, *, tags: tuple[str, ...] = ()) -> int:
        if not text:
            raise ValueError("empty note")
        note_id = self.next_id
        self.next_id += 1
        self.notes[note_id] = text
        for tag in tags:
            self.tags.setdefault(tag, set()).add(note_id)
        self.history.append((note_id, text))
        return note_id

    @command
    def remove(self, note_id: int) -> bool:
        return self.notes.pop(note_id, None) is not None

    @command
    def half_then_fail(self, text: str) -> None:
        self.notes[0] = text  # changed before the exception: kept
        raise RuntimeError(f"failed after writing {object()!r}")

    @command
    def leak(self) -> dict[int, str]:
        return self.notes  # a reference into the state

    @command
    def bad_result(self) -> object:
        self.next_id += 100
        return object()

    @command
    def nested(self) -> int:
        return self.remove(1)  # type: ignore[return-value]

    def count(self) -> int:  # a plain read
        return len(self.notes)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def make(n: int = 1) -> tuple[list[Board], list[ModelMachine], LocalProposer]:
    boards = [Board() for _ in range(n)]
    machines = [ModelMachine(b) for b in boards]
    proposer = LocalProposer(*machines)
    machines[0].bind(proposer)
    return boards, machines, proposer


def test_model_machine_is_a_state_machine() -> None:
    commands = [
        encode_call("add", ["one"], {"tags": ("a",)}),
        encode_call("add", ["two"], session=(3, 1)),
        encode_call("remove", [1]),
        encode_call("add", [""]),  # fails: an error result, the same on every replica
    ]
    check_state_machine_contract(
        lambda: ModelMachine(Board()),
        commands,
        lambda m: (m.model.notes, m.model.tags, m.model.next_id),  # type: ignore[attr-defined]
    )


def test_call_proposes_and_returns_the_applied_result() -> None:
    (board,), (machine,), proposer = make()
    assert run(board.add("hello", tags=("a", "b"))) == 1
    assert run(board.add("world")) == 2
    assert board.notes == {1: "hello", 2: "world"}  # plain reads of the same instance
    assert board.tags == {"a": {1}, "b": {1}}
    assert board.count() == 2
    assert machine.applied_index == 2
    assert len(proposer.log) == 2
    assert run(board.remove(1)) is True
    assert run(board.remove(1)) is False


def test_calling_a_command_does_not_mutate_directly() -> None:
    (board,), (machine,), _ = make()
    machine.bind(None)
    with pytest.raises(NotBoundError, match="bind"):
        board.add("x")  # type: ignore[unused-coroutine]
    assert board.notes == {}

    proposed: list[bytes] = []

    async def hold(data: bytes) -> object:
        proposed.append(data)
        return 7  # never applied

    machine.bind(hold)
    assert run(board.add("x")) == 7
    assert board.notes == {}  # only apply() changes the model
    assert decode_call(proposed[0]).name == "add"


def test_unattached_model_refuses_commands() -> None:
    with pytest.raises(NotBoundError, match="ModelMachine"):
        Board().add("x")  # type: ignore[unused-coroutine]


def test_replicas_apply_deterministically() -> None:
    boards, machines, proposer = make(3)
    rng = random.Random(1)
    home = boards[0]
    for _ in range(200):
        r = rng.random()
        try:
            if r < 0.6:
                run(home.add(rng.choice(["", "a", "b"]), tags=(rng.choice("xyz"),)))
            elif r < 0.8:
                run(home.remove(rng.randrange(1, 50)))
            else:
                run(home.half_then_fail(str(rng.random())))
        except CommandFailedError:
            pass
        results = proposer.last_results
        assert all(x == results[0] for x in results)
    for other in boards[1:]:
        assert vars(other) == vars(home)
    snaps = []
    for m in machines:
        buf = io.BytesIO()
        m.snapshot().write_to(buf)
        snaps.append(buf.getvalue())
    assert snaps[0] == snaps[1] == snaps[2]


def test_exception_becomes_an_error_result_and_earlier_changes_stay() -> None:
    boards, _, proposer = make(2)
    with pytest.raises(CommandFailedError) as info:
        run(boards[0].half_then_fail("partial"))
    assert info.value.code is ErrorCode.COMMAND_FAILED
    assert "RuntimeError" in info.value.message and "kept" in info.value.message
    # no memory address leaks into the (replicated) reply
    assert "0x?" in info.value.message
    assert proposer.last_results[0] == proposer.last_results[1]
    assert boards[0].notes == boards[1].notes == {0: "partial"}
    # validation before mutation leaves nothing behind
    with pytest.raises(CommandFailedError, match="empty note"):
        run(boards[0].add(""))
    assert boards[0].next_id == 1


def test_results_are_copies_not_references() -> None:
    (board,), _, _ = make()
    run(board.add("x"))
    got = run(board.leak())
    assert got == {1: "x"}
    got[1] = "mutated by the caller"
    assert board.notes == {1: "x"}


def test_non_plain_result_is_an_error_but_the_command_ran() -> None:
    (board,), _, _ = make()
    with pytest.raises(CommandFailedError) as info:
        run(board.bad_result())
    assert info.value.code is ErrorCode.BAD_RESULT
    assert board.next_id == 101


def test_command_calling_a_command_fails_clearly() -> None:
    (board,), _, _ = make()
    run(board.add("x"))
    with pytest.raises(CommandFailedError, match="CommandNestingError"):
        run(board.nested())
    assert board.notes == {1: "x"}


def test_non_plain_arguments_are_refused_at_call_time() -> None:
    (board,), _, proposer = make()

    class Color(enum.IntEnum):
        RED = 1

    for bad in (object(), Color.RED, 2**64, {1, object()}, defaultdict(int), "\ud800"):
        with pytest.raises(NotPlainDataError):
            board.add(bad)  # type: ignore[arg-type, unused-coroutine]
    with pytest.raises(NotPlainDataError, match="subclass of int"):
        board.remove(Color.RED)  # type: ignore[unused-coroutine]
    assert proposer.log == []


def test_wrong_signature_is_refused_at_call_time() -> None:
    (board,), _, proposer = make()
    with pytest.raises(TypeError, match=r"Board\.add"):
        board.add()  # type: ignore[call-arg, unused-coroutine]
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        board.add("x", colour="red")  # type: ignore[call-arg, unused-coroutine]
    with pytest.raises(TypeError, match=r"Board\.remove\(\): too many positional arguments"):
        board.remove(1, 2)  # type: ignore[call-arg, unused-coroutine]
    assert proposer.log == []


def test_an_unknown_command_halts_apply_and_changes_nothing() -> None:
    """An entry written by code that has a command this code lacks: applying
    it stops (ApplyHalted) before any change, so the node neither skips it
    (and drifts from its peers) nor records it as applied."""
    board = Board()
    machine = ModelMachine(board)
    machine.apply(1, encode_call("add", ["x"]))
    before = dict(vars(board))
    for name in ("drop_tables", "count"):  # count: a method, but not a command
        with pytest.raises(ApplyHalted, match=f"no command '{name}'") as caught:
            machine.apply(2, encode_call(name))
        assert caught.value.index == 2
    assert machine.applied_index == 1 and vars(board) == before
    assert machine.check_proposal(encode_call("drop_tables")) is not None
    assert machine.check_proposal(encode_call("add", ["y"])) is None


def test_bad_bytes_are_error_results() -> None:
    machine = ModelMachine(Board())
    bad_inputs = [
        bytes([TAG_MODEL]) + b"\xc1",
        bytes([TAG_MODEL]) + msgpack.packb(["add"]),
        bytes([TAG_MODEL]) + msgpack.packb([1, [], {}]),
        bytes([TAG_MODEL]) + msgpack.packb(["add", [], {1: 2}]),
        bytes([TAG_MODEL]) + msgpack.packb(["add", [], {}, 0, 1]),
        bytes([TAG_MODEL]) + msgpack.packb(["add", [msgpack.ExtType(99, b"")], {}]),
        bytes([TAG_MODEL]) + b"\x93\xa3add\x91\x81\x91\x01\x02\x80",  # map key [1]
        bytes([TAG_MODEL]) + msgpack.packb(["add", ["x"], {}])[:-1],
        bytes([0x01]) + msgpack.packb(["add", ["x"], {}]),
    ]
    for i, data in enumerate(bad_inputs, 3):
        result = machine.apply(i, data)
        assert isinstance(result, CommandError) and result.code is ErrorCode.BAD_COMMAND, data
    # wrong argument types in a well-formed entry: the command fails, deterministically
    result = machine.apply(20, encode_call("add", [1, 2, 3]))
    assert isinstance(result, CommandError) and result.code is ErrorCode.COMMAND_FAILED
    assert machine.apply(21, b"") is None
    assert machine.applied_index == 21


def test_class_definition_mistakes_are_caught() -> None:
    with pytest.raises(TypeError, match="async"):

        class A(ReplicatedModel):
            @command
            async def go(self) -> None: ...

    with pytest.raises(TypeError, match="generator"):

        class B(ReplicatedModel):
            @command
            def go(self):
                yield 1

    with pytest.raises(TypeError, match="static"):

        class C(ReplicatedModel):
            @command  # type: ignore[arg-type]
            @staticmethod
            def go() -> None: ...

    with pytest.raises(RuntimeError) as info:  # __set_name__ errors are wrapped on 3.11

        class D:
            @command  # type: ignore[type-var]
            def go(self) -> None: ...

    assert "ReplicatedModel" in str(info.value.__cause__ or info.value)

    with pytest.raises((TypeError, RuntimeError)) as info:  # wrapped on 3.11, as above

        class E(ReplicatedModel):
            @command
            def snapshot_state(self) -> dict[str, Any]:  # type: ignore[override]
                return {}

    reason = str(info.value.__cause__ or info.value)
    assert "snapshot_state is a ReplicatedModel method and cannot be a command" in reason

    with pytest.raises(TypeError, match="ModelMachine needs a ReplicatedModel, got object"):
        ModelMachine(object())  # type: ignore[arg-type]
    board = Board()
    ModelMachine(board)
    with pytest.raises(ValueError, match="already"):
        ModelMachine(board)


def test_overriding_a_command_with_a_plain_method_unregisters_it() -> None:
    class Child(Board):
        def remove(self, note_id: int) -> bool:  # type: ignore[override]
            return False

    assert "remove" not in Child._ramraft_commands
    assert "add" in Child._ramraft_commands


def test_sessions_deduplicate_calls() -> None:
    machine = ModelMachine(Board())
    call = encode_call("add", ["x"], session=(5, 1))
    assert machine.apply(1, call) == 1
    assert machine.apply(2, call) == 1  # retry: first reply, not applied again
    assert machine.model.notes == {1: "x"}  # type: ignore[attr-defined]
    failing = encode_call("add", [""], session=(5, 2))
    first = machine.apply(3, failing)
    assert isinstance(first, CommandError)
    assert machine.apply(4, failing) == first
    stale = machine.apply(5, call)
    assert isinstance(stale, CommandError) and stale.code is ErrorCode.STALE_SEQUENCE
    # replies come back as fresh copies
    leak = encode_call("leak", session=(6, 1))
    got = machine.apply(6, leak)
    assert isinstance(got, dict)
    got.clear()
    assert machine.apply(7, leak) == {1: "x"}


# -- plain data ------------------------------------------------------------------


PLAIN_VALUES: list[Any] = [
    None,
    True,
    0,
    -(2**63),
    2**64 - 1,
    1.5,
    float("inf"),
    "é\U0001f600",
    b"\x00\xff",
    [1, [2, (3, 4)]],
    (1, "a", (b"x",)),
    (),
    {1: "int key", "s": 2, (1, 2): "tuple key", b"b": None, 2.5: [], None: 0},
    {1, 2, 3},
    frozenset({"a", "b"}),
    {frozenset({1}), (1, 2)},
    {"nested": {"deep": [{"x": {1, 2}}]}},
]


@pytest.mark.parametrize("value", PLAIN_VALUES)
def test_plain_data_round_trips_with_types(value: Any) -> None:
    back = unpack_plain(pack_plain(value))
    assert back == value

    def types(x: Any) -> Any:
        if isinstance(x, dict):
            return ("dict", sorted((repr(types(k)), repr(types(v))) for k, v in x.items()))
        if isinstance(x, list | tuple):
            return (type(x).__name__, [types(i) for i in x])
        if isinstance(x, set | frozenset):
            return (type(x).__name__, sorted(repr(types(i)) for i in x))
        return type(x).__name__

    assert types(back) == types(value)


def test_set_encoding_is_canonical() -> None:
    assert pack_plain({"b", "a", "c"}) == pack_plain({"c", "a", "b"})


def test_cyclic_and_too_deep_data_is_refused() -> None:
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(NotPlainDataError):
        pack_plain(cyclic)


def test_encode_call_round_trip() -> None:
    data = encode_call("add", ("x",), {"tags": ("a",)}, session=(1, 2))
    call = decode_call(data)
    assert call.name == "add" and call.args == ["x"] and call.kwargs == {"tags": ("a",)}
    assert call.session == (1, 2, 0)
    assert decode_call(encode_call("add", session=(1, 9, 4))).session == (1, 9, 4)
    with pytest.raises(ValueError, match=re.escape("0 <= first_unacked <= sequence; got (0, 1)")):
        encode_call("add", session=(0, 1))


# -- snapshots -------------------------------------------------------------------


def snapshot_of(machine: ModelMachine) -> bytes:
    buf = io.BytesIO()
    job = machine.snapshot()
    job.write_to(buf)
    return buf.getvalue()


def test_snapshot_round_trip_keeps_instance_and_types(monkeypatch: pytest.MonkeyPatch) -> None:
    from ramraft.server.machines import embed

    monkeypatch.setattr(embed, "_CHUNK_ITEMS", 3)  # exercise chunked dicts/lists
    (board,), (machine,), _ = make()
    for i in range(10):
        run(board.add(f"n{i}", tags=("even" if i % 2 else "odd",)))
    machine.apply(11, encode_call("add", ["s"], session=(9, 1)))
    data = snapshot_of(machine)

    replica = Board()
    replica_machine = ModelMachine(replica)
    replica_machine.restore(io.BytesIO(data))
    assert vars(replica) == vars(board)
    assert isinstance(replica.history[0], tuple)
    assert isinstance(replica.tags["odd"], set)
    assert replica_machine.applied_index == 11
    # sessions travelled: the retry is not applied again
    assert replica_machine.apply(12, encode_call("add", ["s"], session=(9, 1))) == 11
    assert len(replica.notes) == 11
    # restore replaces the contents of the same instance
    home = Board()
    home_machine = ModelMachine(home)
    home.stale = "gone after restore"  # type: ignore[attr-defined]
    home_machine.restore(io.BytesIO(data))
    assert not hasattr(home, "stale") and home.notes == board.notes


def test_snapshot_is_a_view_at_snapshot_time() -> None:
    (board,), (machine,), _ = make()
    run(board.add("before"))
    job = machine.snapshot()
    run(board.add("after"))
    buf = io.BytesIO()
    job.write_to(buf)
    replica = Board()
    ModelMachine(replica).restore(io.BytesIO(buf.getvalue()))
    assert replica.notes == {1: "before"}


def test_non_plain_state_fails_snapshot_clearly() -> None:
    (board,), (machine,), _ = make()
    board.cache = object()  # type: ignore[attr-defined]
    with pytest.raises(SnapshotError, match=r"Board\.cache"):
        machine.snapshot()


def test_overridden_snapshot_state() -> None:
    class Cached(Board):
        def snapshot_state(self) -> dict[str, Any]:
            state = dict(vars(self))
            state.pop("cache")
            return state

        def restore_state(self, state: dict[str, Any]) -> None:
            super().restore_state(state)
            self.cache = {len(self.notes)}

    model = Cached()
    model.cache = object()  # type: ignore[assignment]
    machine = ModelMachine(model)
    machine.apply(1, encode_call("add", ["x"]))
    replica = Cached()
    ModelMachine(replica).restore(io.BytesIO(snapshot_of(machine)))
    assert replica.notes == {1: "x"} and replica.cache == {1}


def test_a_snapshot_without_what_init_sets_is_named_at_restore() -> None:
    """The model's __init__ gained an attribute without a new app_version:
    a node restoring an older snapshot lacks it while one replaying the log
    has it. The restore says so (a warning: the state is still restored);
    not when an upgrade is still to run, nor for a model that snapshots its
    own way."""
    (board,), (machine,), _ = make()
    run(board.add("x"))
    data = snapshot_of(machine)

    def warnings(model: ReplicatedModel) -> list[MutableMapping[str, Any]]:
        with structlog.testing.capture_logs() as logs:
            ModelMachine(model).restore(io.BytesIO(data))
        return [e for e in logs if e["event"] == "model_attributes_missing"]

    class Grown(Board):
        __qualname__ = "Board"  # the same model, as a redeploy sees it

        def __init__(self) -> None:
            super().__init__()
            self.archive: list[int] = []
            self.pinned: set[int] = set()

    [warning] = warnings(Grown())
    assert (warning["missing"], warning["app_version"]) == (["archive", "pinned"], 1)
    assert "Board.__init__ sets archive, pinned" in warning["action"]
    assert "app_version = 2 and an upgrade()" in warning["action"]

    class Upgraded(Grown):
        __qualname__ = "Board"
        app_version = 2  # the snapshot is of version 1: upgrade() runs at the switch

        def upgrade(self, from_version: int) -> None:
            self.archive, self.pinned = [], set()

    class OwnState(Grown):
        __qualname__ = "Board"

        def restore_state(self, state: dict[str, Any]) -> None:
            super().restore_state({"archive": [], "pinned": set(), **state})

    assert warnings(Upgraded()) == warnings(OwnState()) == warnings(Board()) == []


def test_bad_model_snapshots_are_rejected_and_change_nothing() -> None:
    (board,), (machine,), _ = make()
    run(board.add("x"))
    data = snapshot_of(machine)
    target = Board()
    target_machine = ModelMachine(target)
    target.notes[5] = "mine"
    for pos in range(0, len(data)):
        bad = bytearray(data)
        bad[pos] ^= 0x20
        with pytest.raises(SnapshotFormatError):
            target_machine.restore(io.BytesIO(bytes(bad)))
    for cut in range(len(data)):
        with pytest.raises(SnapshotFormatError):
            target_machine.restore(io.BytesIO(data[:cut]))
    assert target.notes == {5: "mine"}

    class Other(ReplicatedModel):
        pass

    with pytest.raises(SnapshotFormatError, match="Board"):
        ModelMachine(Other()).restore(io.BytesIO(data))

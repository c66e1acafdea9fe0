"""In-process pieces of the web tier: result codec, session pool, app loading,
rate window, page rendering."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from examples.notes import Board
from ramraft.server.hosting import (
    Application,
    AppLoadError,
    SessionPool,
    decode_result,
    encode_result,
    load_app,
    model_proposer,
    write_with_session,
)
from ramraft.server.machines.embed import LocalProposer, ModelMachine, decode_call, encode_call
from ramraft.server.machines.kv import CasResult, DeleteResult, KVMachine, PutResult, encode_put
from ramraft.server.machines.statemachine import (
    TAG_KV,
    TAG_MODEL,
    CommandError,
    CompositeMachine,
    ErrorCode,
)
from ramraft.server.web.metrics import RateWindow
from ramraft.server.web.status_page import render_status_page


@pytest.mark.parametrize(
    "result",
    [
        None,
        PutResult(7),
        DeleteResult(True, 9),
        CasResult(False, True, b"\x00cur", 11),
        CommandError(ErrorCode.COMMAND_FAILED, "Board.add: ValueError: no"),
        3,
        "text",
        b"bytes",
        (1, "a", (2, 3)),
        {1: {"x": [1.5, None, True]}, "k": {1, 2}},
        frozenset({"a"}),
    ],
)
def test_forwarded_results_of_both_machines_round_trip(result: object) -> None:
    back = decode_result(encode_result(result))
    assert back == result and type(back) is type(result)


def test_a_plain_tuple_is_not_mistaken_for_a_kv_result() -> None:
    assert type(decode_result(encode_result((5,)))) is tuple


def test_bad_forwarded_results_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown forwarded result kind 9"):
        decode_result(b"\x93\x09\x00\x00")  # [9, 0, 0]: unknown kind


def test_session_pool_reuses_ids_with_growing_sequences() -> None:
    pool = SessionPool()
    a = pool.take()
    b = pool.take()
    assert a[0] != b[0] and a[1] == b[1] == 1
    pool.give_back(*a)
    assert pool.take() == (a[0], 2)
    assert len(pool) == 0


class FakeAPI:
    """NodeAPI.write stand-in: applies to a machine at once (as a leader that
    never changes) and records what it was asked."""

    def __init__(self, machine: Any) -> None:
        self.machine = machine
        self.index = 0
        self.commands: list[bytes] = []
        self.runtime = self

    async def write(
        self, command: bytes, timeout: float | None = None, *, retry_unsafe: bool = False
    ) -> tuple[int, object]:
        assert retry_unsafe, "node-made sessions make retries safe"
        self.index += 1
        self.commands.append(command)
        return self.index, self.machine.apply(self.index, command)

    async def wait_applied(self, index: int, timeout: float) -> None:
        assert self.machine.applied_index >= index


def test_write_with_session_replaces_an_expired_session() -> None:
    kv = KVMachine(max_sessions=1)
    api = FakeAPI(kv)
    pool = SessionPool()
    pool.give_back(12345, 41)  # an id the cluster never saw, at sequence 42: expired

    async def run() -> tuple[int, object]:
        return await write_with_session(api, pool, lambda s: encode_put("k", b"v", s))  # type: ignore[arg-type]

    index, result = asyncio.run(run())
    assert result == PutResult(index)
    assert kv.get("k") == (True, b"v")
    assert len(api.commands) == 2  # refused (not applied), then sent under a fresh id
    assert len(pool) == 1 and pool.take()[0] != 12345


def test_model_commands_go_through_the_proposer_with_a_session() -> None:
    board = Board()
    machine = CompositeMachine({TAG_KV: KVMachine(), TAG_MODEL: ModelMachine(board)})
    api = FakeAPI(machine)
    model_machine = machine.machine(TAG_MODEL)
    assert isinstance(model_machine, ModelMachine)
    model_machine.bind(model_proposer(api, SessionPool()))  # type: ignore[arg-type]

    async def run() -> int:
        first = await board.add("hello", "body", "me", 1.0)
        second = await board.add("again", "", "", 2.0)
        assert await board.pin(first, True) is True
        return second

    second = asyncio.run(run())
    assert second == 2 and board.notes[1]["pinned"] and board.notes[2]["author"] == "anonymous"
    calls = [decode_call(c) for c in api.commands]
    assert all(call.session is not None for call in calls)
    assert len({call.session[0] for call in calls if call.session}) == 1  # one id, reused
    assert [call.session[1] for call in calls if call.session] == [1, 2, 3]


def test_the_board_is_deterministic_on_replay() -> None:
    """Three boards fed the same log end up equal (LocalProposer applies every
    call to all of them)."""
    boards = [Board() for _ in range(3)]
    machines = [ModelMachine(b) for b in boards]
    proposer = LocalProposer(*machines)
    machines[0].bind(proposer)

    async def run() -> None:
        for i in range(5):
            await boards[0].add(f"note {i}", "x" * i, "", float(i))
        await boards[0].delete(2)
        await boards[0].pin(4, True)

    asyncio.run(run())
    assert boards[0].notes == boards[1].notes == boards[2].notes
    assert [n["id"] for n in boards[0].listing()] == [4, 5, 3, 1]
    bad = encode_call("add", ["", "", "", 0.0])
    assert isinstance(machines[0].apply(99, bad), CommandError)


def test_load_app() -> None:
    loaded = load_app("examples.notes:app")
    assert isinstance(loaded, Application) and isinstance(loaded.model, Board)
    assert load_app("examples.notes:app").model is not loaded.model  # a new board per call
    assert isinstance(load_app("examples.notes:Board").model, Board)  # a bare model factory
    for spec, words in [
        ("examples.notes", "MODULE:FACTORY"),
        ("no_such_module_here:app", "cannot import"),
        ("examples.notes:nothing", "no attribute"),
        ("examples.notes.model:check_note", "check_note() raised TypeError"),
        ("examples.notes.model:MAX_BODY", "returned int"),
    ]:
        with pytest.raises(AppLoadError, match=re.escape(words)):
            load_app(spec)


def test_load_app_names_the_apps_own_error_at_import(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module that fails while being imported (its own bug, not a missing
    module) is an AppLoadError naming the error and where, which the node
    prints as one line and exits 2; not "ramraft: internal error"."""
    (tmp_path / "broken_at_import.py").write_text("x = 1\ny = undefined_name\n")
    (tmp_path / "broken_syntax.py").write_text("def app(:\n    pass\n")
    (tmp_path / "broken_factory.py").write_text("def app():\n    return {}['model']\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(AppLoadError) as caught:
        load_app("broken_at_import:app")
    message = str(caught.value)
    assert "importing broken_at_import raised NameError" in message
    assert "broken_at_import.py, line 2" in message
    with pytest.raises(AppLoadError, match="importing broken_syntax raised SyntaxError"):
        load_app("broken_syntax:app")
    with pytest.raises(AppLoadError, match=r"app\(\) raised KeyError: .*broken_factory.py, line 2"):
        load_app("broken_factory:app")


def test_application_checks_what_the_factory_gives_it() -> None:
    """Routes, jobs and the model are checked when the factory builds the
    Application (its traceback, and --app's one line, point there), not
    when a node mounts the pages or starts the jobs: those failed with an
    AttributeError ('int' object has no attribute 'register') and
    "ramraft: internal error"."""
    from aiohttp import web

    from examples.notes import archive_old_notes
    from ramraft import background

    async def plain_async(board: Board) -> None:
        pass

    async def page(request: web.Request) -> web.Response:
        return web.Response()

    @background(name="archive_old_notes")
    async def same_name(board: Board) -> None:
        pass

    cases: list[tuple[dict[str, Any], str]] = [
        ({"routes": [1, 2]}, "int 1 is not an aiohttp route definition"),
        ({"routes": web.get("/", page)}, "takes a list of aiohttp route definitions"),
        ({"jobs": [plain_async]}, "plain_async is not a background job: mark it with @background"),
        ({"jobs": ["archive"]}, "str 'archive' is not a background job"),
        ({"jobs": [archive_old_notes, same_name]}, "named 'archive_old_notes'"),
        ({"setup": "static"}, "Application(setup=...) takes a function"),
    ]
    for kwargs, words in cases:
        with pytest.raises((TypeError, ValueError), match=re.escape(words)):
            Application(Board(), **kwargs)
    with pytest.raises(TypeError, match=r"instance, got the class examples\.notes\.model\.Board"):
        Application(Board)  # type: ignore[arg-type]  # the class, not an instance

    table = web.RouteTableDef()
    table.get("/")(page)
    made = Application(Board(), routes=table, jobs=iter([archive_old_notes]))
    assert len(list(made.routes)) == 1 and list(made.jobs) == [archive_old_notes]


def test_rate_window_counts_complete_seconds() -> None:
    now = [100.2]
    window = RateWindow(seconds=4, clock=lambda: now[0])
    for _ in range(8):
        window.add("x")
    assert window.rates() == {}  # the current second is not complete
    now[0] = 101.0
    window.add("y", 4)
    assert window.rates() == {"x": 2.0}
    now[0] = 106.0
    assert window.rates() == {}  # all out of the window


def test_status_page_embeds_the_status_safely() -> None:
    status = {"node": {"id": "n1", "role": "leader"}, "evil": "</script><script>alert(1)"}
    page = render_status_page(status)
    assert "</script><script>alert(1)" not in page
    embedded = page.split('type="application/json">')[1].split("</script>")[0]
    assert json.loads(embedded) == status
    assert "<title>ramraft n1 \u2014 leader</title>" in page

"""One table (server/request_errors.py) says what each error of the node
becomes in an answer; the gRPC services and the web tier both answer from
it, so the same failure gets the same meaning on both APIs."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from ramraft.consensus import ConfChangeError, LeadershipTransferError, Role
from ramraft.server import request_errors
from ramraft.server.machines.embed import CommandFailedError, NotPlainDataError
from ramraft.server.machines.statemachine import CommandError, ErrorCode
from ramraft.server.request_errors import (
    BadRequest,
    CannotSnapshot,
    InsufficientStorage,
    NotFound,
    NotLeader,
    Overloaded,
    PayloadTooLarge,
    RequestError,
    SessionRefused,
    Unavailable,
    check_command_result,
    wire_status,
)
from ramraft.server.rpc.services import LEADER_METADATA_KEY, rpc
from ramraft.server.runtime.status import RuntimeStatus
from ramraft.server.web.tier import LEADER_HEADER, http_error_for

S = grpc.StatusCode
REFUSED = "failed_precondition"
CASES: list[tuple[BaseException, grpc.StatusCode, int, str]] = [
    (BadRequest("key must not be empty"), S.INVALID_ARGUMENT, 400, "invalid_argument"),
    (NotPlainDataError("a set is not plain data"), S.INVALID_ARGUMENT, 400, "invalid_argument"),
    (NotLeader("n2", "10.0.0.2:7001"), S.UNAVAILABLE, 503, "unavailable"),
    (Unavailable("no leader is known"), S.UNAVAILABLE, 503, "unavailable"),
    (Overloaded("20000 requests are waiting"), S.RESOURCE_EXHAUSTED, 429, "overloaded"),
    (TimeoutError(), S.DEADLINE_EXCEEDED, 504, "deadline_exceeded"),
    (NotFound("no blob 00ab"), S.NOT_FOUND, 404, "not_found"),
    (InsufficientStorage("the disk is full"), S.RESOURCE_EXHAUSTED, 507, "insufficient_storage"),
    (PayloadTooLarge("over 1 GiB"), S.INVALID_ARGUMENT, 413, "payload_too_large"),
    (SessionRefused("SESSION_EXPIRED: start anew"), S.FAILED_PRECONDITION, 409, REFUSED),
    (ConfChangeError("n4 is not caught up"), S.FAILED_PRECONDITION, 409, REFUSED),
    (LeadershipTransferError("n4 is a learner"), S.FAILED_PRECONDITION, 409, REFUSED),
    (CannotSnapshot("Board.notes is not plain data"), S.FAILED_PRECONDITION, 409, REFUSED),
    (
        CommandFailedError(CommandError(ErrorCode.BAD_COMMAND, "boom")),
        S.FAILED_PRECONDITION,
        409,
        "command_failed",
    ),
]  # fmt: skip


def _subclasses(cls: type) -> list[type]:
    return [cls, *(s for sub in cls.__subclasses__() for s in _subclasses(sub))]


def test_every_error_a_request_can_end_with_has_a_row() -> None:
    for kind in _subclasses(RequestError):
        if kind.__module__ == request_errors.__name__ and kind is not RequestError:
            assert any(issubclass(kind, row) for row, _ in request_errors.ERROR_STATUSES), kind


def test_a_bug_is_not_in_the_table() -> None:
    assert wire_status(KeyError("x")) is None


def test_state_machine_refusals_become_errors() -> None:
    with pytest.raises(SessionRefused, match=r"^SESSION_EXPIRED"):
        check_command_result(CommandError(ErrorCode.SESSION_EXPIRED, "gone"))
    with pytest.raises(SessionRefused, match=r"^STALE_SEQUENCE"):
        check_command_result(CommandError(ErrorCode.STALE_SEQUENCE, "old"))
    with pytest.raises(BadRequest, match=r"^BAD_COMMAND"):
        check_command_result(CommandError(ErrorCode.BAD_COMMAND, "bad"))
    check_command_result(None)  # a result, not a refusal


class Reports:
    """The runtime's reports: this node follows n2."""

    def status(self) -> RuntimeStatus:
        return RuntimeStatus(
            id="n1", role=Role.FOLLOWER, leader="n2", leader_address="10.0.0.2:7001"
        )

    def members(self) -> list[Any]:
        return []

    def leader_changes(self) -> list[Any]:
        return []


class Aborted(Exception):
    pass


class Context:
    """What the rpc wrapper uses of a grpc.aio.ServicerContext."""

    def __init__(self) -> None:
        self.trailing: tuple[tuple[str, str], ...] = ()
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.trailing = metadata

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise Aborted


class Runtime:
    def leader_client_address(self) -> str:
        return "10.0.0.2:7001"


class Servicer:
    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.runtime = Runtime()
        self.observed: list[str] = []
        self.observers = [lambda rpc_name, code, seconds: self.observed.append(code)]

    @rpc("Put")
    async def Put(self, request: object, context: Any) -> None:
        raise self.error


@pytest.mark.parametrize(("error", "code", "http_status", "http_error"), CASES)
def test_grpc_and_http_answer_from_the_table(
    error: BaseException, code: grpc.StatusCode, http_status: int, http_error: str
) -> None:
    servicer = Servicer(error)
    context = Context()
    with pytest.raises(Aborted):
        asyncio.run(servicer.Put(object(), context))
    assert context.aborted is not None and context.aborted[0] == code
    assert context.aborted[1], "an answer says why"
    assert servicer.observed == [code.name]
    answer = http_error_for(error, Reports())
    assert answer is not None
    assert (answer.status, answer.error) == (http_status, http_error)
    assert answer.detail == context.aborted[1]
    if code == S.UNAVAILABLE:  # both name the leader
        assert dict(context.trailing) == {LEADER_METADATA_KEY: "10.0.0.2:7001"}
        assert answer.headers[LEADER_HEADER] == "10.0.0.2:7001"
        assert answer.extra == {"leader": "n2", "leader_address": "10.0.0.2:7001"}
    else:
        assert context.trailing == () and LEADER_HEADER not in answer.headers


def test_a_bug_reaches_grpc_as_itself() -> None:
    bug = KeyError("x")
    servicer = Servicer(bug)
    with pytest.raises(KeyError) as raised:
        asyncio.run(servicer.Put(object(), Context()))
    assert raised.value is bug, "the servicer's own exception, not another KeyError"
    assert servicer.observed == ["UNKNOWN"]
    assert http_error_for(KeyError("x"), Reports()) is None

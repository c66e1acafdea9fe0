"""Change events a model's commands publish (ReplicatedModel.publish,
machines/embed.py): delivered with the entry's index once it is applied,
the same on every node, never from outside a command."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ramraft import ReplicatedModel, command
from ramraft.server.machines.embed import (
    CommandFailedError,
    LocalProposer,
    ModelMachine,
    encode_call,
)


class Feed(ReplicatedModel):
    def __init__(self) -> None:
        self.count = 0

    @command
    def bump(self, topic: str, data: Any) -> int:
        self.count += 1
        self.publish(topic, data)
        return self.count

    @command
    def two_then_fail(self) -> None:
        self.publish("a", 1)
        self.publish("b", 2)
        raise ValueError("after publishing")

    @command
    def flood(self, n: int) -> None:
        for i in range(n):
            self.publish("t", i)


def machines(n: int = 3) -> tuple[list[Feed], list[list[Any]]]:
    models = [Feed() for _ in range(n)]
    wired = [ModelMachine(m) for m in models]
    delivered: list[list[Any]] = [[] for _ in range(n)]
    for machine, out in zip(wired, delivered, strict=True):
        machine.on_published = lambda index, events, out=out: out.append((index, events))
    proposer = LocalProposer(*wired)
    for machine in wired:
        machine.bind(proposer)
    return models, delivered


def test_every_node_delivers_the_same_events_at_the_same_index() -> None:
    models, delivered = machines()
    asyncio.run(models[0].bump("notes", {"id": 1, "tags": ["x"]}))
    asyncio.run(models[0].bump("notes", None))
    expected = [(1, [("notes", '{"id":1,"tags":["x"]}')]), (2, [("notes", "null")])]
    assert delivered == [expected] * 3


def test_what_is_not_json_fails_the_command_the_same_everywhere() -> None:
    models, delivered = machines()
    for data in (b"bytes", {1, 2}, float("nan")):
        with pytest.raises(CommandFailedError, match="not JSON"):
            asyncio.run(models[0].bump("notes", data))
    for topic in ("", "has space", "x" * 201, "new\nline"):
        with pytest.raises(CommandFailedError, match="topic"):
            asyncio.run(models[0].bump(topic, 1))
    # Each failed after changing the count: kept, like any command's changes.
    assert [m.count for m in models] == [7, 7, 7]
    assert delivered == [[], [], []]
    with pytest.raises(CommandFailedError, match="at most 1000 events"):
        asyncio.run(models[0].flood(1001))
    assert [len(events) for _, events in delivered[0]] == [1000]  # those before the error


def test_events_of_a_command_that_raised_afterwards_are_delivered() -> None:
    models, delivered = machines(1)
    with pytest.raises(CommandFailedError, match="after publishing"):
        asyncio.run(models[0].two_then_fail())
    assert delivered == [[(1, [("a", "1"), ("b", "2")])]]


def test_a_retried_call_publishes_nothing_again() -> None:
    (model,), (delivered,) = machines(1)
    machine = model._ramraft_machine  # type: ignore[attr-defined]
    call = encode_call("bump", ["t", 1], {}, (7, 1))
    machine.apply(1, call)
    machine.apply(2, call)  # the same session and sequence: answered from the table
    assert model.count == 1 and delivered == [(1, [("t", "1")])]


def test_publish_outside_a_command_is_refused() -> None:
    model = Feed()
    with pytest.raises(RuntimeError, match="no node applies"):
        model.publish("t", 1)
    ModelMachine(model)
    with pytest.raises(RuntimeError, match="is for commands"):
        model.publish("t", 1)


def test_publish_is_a_reserved_name() -> None:
    with pytest.raises((TypeError, RuntimeError)) as refused:

        class Bad(ReplicatedModel):
            @command
            def publish(self) -> None:  # type: ignore[override]
                pass

    error = refused.value.__cause__ or refused.value  # 3.11 wraps __set_name__'s error
    assert "publish is a ReplicatedModel method" in str(error)

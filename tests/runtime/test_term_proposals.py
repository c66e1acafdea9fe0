"""``RaftRuntime.propose(term=...)``: a command proposed only by this node as
the leader of the given term (what a leader's background jobs use). It is
refused when the node does not lead in that term when asked, AND when the
term has moved by the turn in which the loop would propose it; it is never
forwarded (``NodeAPI.write_in_term``)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ramraft import ReplicatedModel, command
from ramraft.consensus import Message, MsgType
from ramraft.server.inprocess import ClusterHarness
from ramraft.server.machines.embed import encode_call
from ramraft.server.request_errors import NotLeader, Unavailable


class Box(ReplicatedModel):
    def __init__(self) -> None:
        self.items: list[int] = []

    @command
    def put(self, item: int) -> None:
        self.items.append(item)


def setup(ramraft_cluster: Any) -> tuple[ClusterHarness, str, int]:
    cluster: ClusterHarness = ramraft_cluster(Box)
    leader = cluster.leader()
    term = cluster.node(leader).runtime.serving_term()
    assert term > 0
    return cluster, leader, term


def test_the_leader_proposes_in_its_own_term(ramraft_cluster: Any) -> None:
    cluster, leader, term = setup(ramraft_cluster)
    api = cluster.node(leader).api
    index, _ = cluster.run(api.write_in_term(encode_call("put", [1]), term))
    assert index > 0 and cluster.model(leader).items == [1]


def test_another_term_or_another_node_is_refused_before_proposing(ramraft_cluster: Any) -> None:
    cluster, leader, term = setup(ramraft_cluster)
    with pytest.raises(Unavailable, match=f"no longer leads in term {term - 1}") as refused:
        cluster.run(cluster.node(leader).api.write_in_term(encode_call("put", [1]), term - 1))
    assert refused.value.before_proposal
    follower = next(i for i in cluster.ids if i != leader)
    forwarded_before = cluster.node(follower).api.forwarded
    with pytest.raises(NotLeader):  # never forwarded to the leader
        cluster.run(cluster.node(follower).api.write_in_term(encode_call("put", [2]), term))
    assert cluster.node(follower).api.forwarded == forwarded_before
    cluster.wait_converged()
    assert [m.items for m in cluster.models()] == [[], [], []]


def test_a_term_that_moves_before_the_loop_proposes_is_refused(ramraft_cluster: Any) -> None:
    cluster, leader, term = setup(ramraft_cluster)
    runtime = cluster.node(leader).runtime
    other = next(i for i in cluster.ids if i != leader)

    async def scenario() -> None:
        queued = asyncio.get_running_loop().create_task(
            runtime.propose(encode_call("put", [3]), term=term)
        )
        await asyncio.sleep(0)  # its checks passed: it waits for the loop's turn
        # Before that turn, news of a newer term arrives (stepped first).
        runtime.receive([Message(MsgType.HEARTBEAT, other, leader, term + 1)])
        with pytest.raises(Unavailable, match=f"no longer leads in term {term}"):
            await queued

    cluster.run(scenario())
    cluster.wait_converged()
    assert all(3 not in m.items for m in cluster.models())

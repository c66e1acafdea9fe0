"""Well-formed but wrong peer messages (issue 7): dropped, never trusted,
never crashing the node. Hypothesis throws arbitrary messages at live nodes
of a working cluster; afterwards the cluster must still be correct."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ramraft.consensus import ConfState, Entry, EntryKind, Message, MsgType, SnapshotMeta
from tests.consensus.harness import Cluster

ids = st.sampled_from(["a", "b", "c", "x", ""])
small = st.integers(min_value=-2, max_value=1 << 40)
entries = st.lists(
    st.builds(
        Entry,
        term=small,
        index=small,
        data=st.binary(max_size=8),
        kind=st.sampled_from(list(EntryKind)),
    ),
    max_size=4,
).map(tuple)
snapshots = st.none() | st.builds(
    SnapshotMeta,
    index=small,
    term=small,
    conf=st.builds(ConfState, voters=st.frozensets(st.sampled_from(["a", "b", "c"]))),
)
messages = st.builds(
    Message,
    type=st.sampled_from(list(MsgType)),
    src=ids,
    dst=st.sampled_from(["a", "b", "c"]),
    term=small,
    log_term=small,
    index=small,
    entries=entries,
    commit=small,
    reject=st.booleans(),
    reject_hint=small,
    context=st.binary(max_size=9),
    snapshot=snapshots,
)


def test_an_append_with_entries_that_do_not_follow_is_dropped() -> None:
    c = Cluster()
    c.elect("a")
    b = c.node("b")
    last, term = b.last_index, b.term
    b.step(
        Message(
            MsgType.APPEND,
            "a",
            "b",
            term,
            index=last,
            log_term=b.log.last_term,
            entries=(Entry(term, last + 5, b"gap"),),
        )
    )
    assert b.last_index == last and b.rejected_messages == 1
    assert "do not follow" in b.last_rejection


def test_an_append_far_past_the_log_is_refused_by_the_protocol() -> None:
    c = Cluster()
    c.elect("a")
    b = c.node("b")
    b.step(
        Message(
            MsgType.APPEND,
            "a",
            "b",
            b.term,
            index=10**9,
            log_term=b.term,
            entries=(Entry(b.term, 10**9 + 1, b"far"),),
        )
    )
    rd = b.ready()
    (resp,) = [m for m in rd.messages if m.type == MsgType.APPEND_RESP]
    assert resp.reject and b.last_index < 10


@settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.lists(messages, min_size=1, max_size=20))
def test_arbitrary_messages_never_crash_the_node(junk: list[Message]) -> None:
    """Whatever arrives, step() returns and every invariant still holds
    (checked after each Ready by the harness). Note what this cannot
    promise: a peer that lies about who it is can feed the node false
    entries; that is what the peer port's mutual TLS is for (the transport
    checks that a message's sender is the authenticated peer)."""
    c = Cluster(seed=1)
    c.hostile = True
    c.elect("a")
    c.propose("a", b"before")
    for m in junk:
        c.peers[m.dst].node.step(m)
        c.handle_ready(m.dst)
    c.queue.clear()
    for _ in range(5):
        c.tick_all(1)  # the cluster keeps running over whatever state the junk left

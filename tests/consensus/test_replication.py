"""Log replication: paper 5.3 (consistency check, repair), 5.4.2 (the
Figure 8 commit rule), pipelining, batching and message-size caps."""

from __future__ import annotations

from ramraft.consensus import Entry, HardState, Message, MsgType, RaftNode, Role
from ramraft.consensus.progress import ProgressState
from tests.consensus.harness import Cluster, Disk, Peer, bootstrap_entry, make_config


def test_committed_entries_reach_every_node_in_order() -> None:
    """Paper 5.3: a committed entry is applied by every server, in log order."""
    c = Cluster()
    c.elect("a")
    for n in range(5):
        c.propose("a", f"cmd{n}".encode())
    c.tick_all(2)
    for node_id in "abc":
        assert c.applied_data(node_id) == [f"cmd{n}".encode() for n in range(5)]


def test_follower_rejects_an_append_that_fails_the_consistency_check() -> None:
    """Paper 5.3 / Figure 2 receiver step 2."""
    b = RaftNode(make_config("b"), bootstrap=None)
    b.step(Message(MsgType.APPEND, "a", "b", 1, index=5, log_term=1, entries=(Entry(1, 6),)))
    rd = b.ready()
    (resp,) = rd.messages
    assert resp.type == MsgType.APPEND_RESP and resp.reject and resp.index == 5
    assert resp.reject_hint == 0, "b's log is empty: the logs can only agree at 0"
    assert b.last_index == 0


def test_conflicting_suffix_is_replaced() -> None:
    """Paper 5.3 / Figure 2 receiver step 3: delete the conflicting entry and
    all that follow it."""
    b = RaftNode(
        make_config("b"),
        hard_state=HardState(term=2),
        entries=[bootstrap_entry("ab"), Entry(2, 2, b"old"), Entry(2, 3, b"old2")],
        bootstrap=None,
    )
    b.step(
        Message(MsgType.APPEND, "a", "b", 3, index=1, log_term=1, entries=(Entry(3, 2, b"new"),))
    )
    rd = b.ready()
    assert [(e.term, e.index, e.data) for e in rd.entries] == [(3, 2, b"new")]
    assert b.last_index == 2
    b.advance(rd)
    b.check_invariants()


def test_fast_backoff_skips_a_whole_divergent_term() -> None:
    """Paper 5.3 (the optimisation at the end): the follower's rejection names
    where the logs can agree, so the leader skips a whole divergent term in
    one round trip instead of one entry per round trip."""
    common = [bootstrap_entry("abc"), Entry(1, 2, b"y")]
    old_term = common + [Entry(2, i, b"stale") for i in range(3, 53)]
    new_term = common + [Entry(3, i, b"good") for i in range(3, 53)]
    c = Cluster(check_quorum=False, pre_vote=False)
    logs = {"a": (new_term, 3), "b": (new_term, 3), "c": (old_term, 2)}
    for node_id, (entries, term) in logs.items():
        disk = Disk(HardState(term=term, commit=2), None, None, list(entries))
        node = RaftNode(
            make_config(node_id, check_quorum=False, pre_vote=False),
            hard_state=disk.hard_state,
            entries=disk.entries,
            bootstrap=c.bootstrap,
        )
        c.peers[node_id] = Peer(node, disk)
    c.sent.clear()
    c.elect("a")
    c.tick_all(3)
    rejects = [m for m in c.sent if m.type == MsgType.APPEND_RESP and m.reject and m.src == "c"]
    assert len(rejects) == 1, f"{len(rejects)} round trips to repair 50 entries"
    assert c.node("c").log.term(52) == 3
    assert c.node("c").commit_index == c.node("a").last_index


def test_leader_commits_previous_term_entries_only_through_its_own() -> None:
    """Paper 5.4.2, as a direct unit check of the rule: a leader whose log
    holds an old-term entry replicated on a majority does not advance its
    commit index to it until an entry of its own term is replicated too."""
    a = RaftNode(
        make_config("a", check_quorum=False, pre_vote=False),
        hard_state=HardState(term=2, vote=""),
        entries=[bootstrap_entry("abc"), Entry(2, 2, b"old-term")],
    )
    for _ in range(a.randomized_election_timeout):
        a.tick()
    assert a.role == Role.CANDIDATE and a.term == 3
    a.step(Message(MsgType.VOTE_RESP, "b", "a", 3))
    assert a.role == Role.LEADER
    rd = a.ready()
    a.advance(rd)
    # b acknowledges index 2 (the term-2 entry) but not the term-3 no-op at 3.
    a.step(Message(MsgType.APPEND_RESP, "b", "a", 3, index=2))
    assert a.commit_index == 0, "entry 2 is on a majority but from term 2: not committed"
    a.step(Message(MsgType.APPEND_RESP, "b", "a", 3, index=3))
    assert a.commit_index == 3, "the term-3 entry commits, and everything before it"


def test_pipelining_keeps_many_appends_in_flight_up_to_the_window() -> None:
    c = Cluster(max_inflight_msgs=4, max_msg_bytes=10)
    a = c.elect("a")
    c.tick_all(1)
    assert a.progress["b"].state == ProgressState.REPLICATE
    for n in range(20):
        a.propose(bytes(10) + bytes([n]))
    rd = a.ready()
    to_b = [m for m in rd.messages if m.dst == "b" and m.type == MsgType.APPEND]
    assert len(to_b) == 4, "one entry per message (size cap), four messages (window)"
    assert all(len(m.entries) == 1 for m in to_b)
    assert a.progress["b"].is_paused()
    a.advance(rd)
    c.queue.extend(rd.messages)
    c.deliver_all()
    c.tick_all(2)
    assert c.applied_data("b")[-1] == bytes(10) + bytes([19])


def test_proposals_of_one_turn_travel_in_one_message() -> None:
    """Batching: everything proposed between two Readys goes to each follower
    in one AppendEntries."""
    c = Cluster()
    a = c.elect("a")
    c.tick_all(1)
    for n in range(100):
        a.propose(b"x%d" % n)
    rd = a.ready()
    appends = [m for m in rd.messages if m.type == MsgType.APPEND]
    assert sorted(m.dst for m in appends) == ["b", "c"]
    assert all(len(m.entries) == 100 for m in appends)
    assert len(rd.entries) == 100


def test_a_commit_rides_on_the_next_append_or_one_tick_later() -> None:
    """A commit is not broadcast on its own: followers hear of it on the
    next append, or from an empty append one tick later. So a write costs
    one append and one acknowledgement per follower, not two of each."""
    c = Cluster(heartbeat_tick=5)  # so the tick below sends no heartbeat
    a = c.elect("a")
    c.tick_all(1)
    c.sent.clear()
    first = a.propose(b"first")
    c.deliver_all()
    assert a.commit_index == first
    appends = [m for m in c.sent if m.type == MsgType.APPEND]
    assert sorted(m.dst for m in appends) == ["b", "c"], "one append per follower per write"
    assert c.node("b").commit_index < first, "not told yet"
    c.sent.clear()
    second = a.propose(b"second")
    c.deliver_all()
    assert all(m.commit == first for m in c.sent if m.type == MsgType.APPEND), "it rides along"
    assert c.node("b").commit_index == first
    c.tick("a")
    c.deliver_all()
    for node_id in "bc":
        assert c.node(node_id).commit_index == second, "told one tick later"
        assert c.applied_data(node_id) == [b"first", b"second"]


def test_a_restarted_follower_keeps_its_log_and_catches_up() -> None:
    c = Cluster()
    c.elect("a")
    c.propose("a", b"1")
    c.crash_restart("b")
    c.propose("a", b"2")
    c.tick_all(3)
    assert c.applied_data("b")[-1] == b"2"
    assert c.node("b").last_index == c.node("a").last_index


def test_single_node_cluster_commits_alone() -> None:
    c = Cluster(ids="a")
    a = c.elect("a")
    c.propose("a", b"solo")
    assert c.applied_data("a") == [b"solo"]
    assert a.commit_index == a.last_index


A_TERM_2_ENTRY = b"a's term-2 entry"


def figure_8(c: Cluster) -> None:
    """Paper 5.4.2, Figure 8, played out with three servers (a, b, c):

    (a) a leads term 2 and writes entry 3 to itself only;
    (b) b leads term 3 (c's vote) and writes its own entry 3, to itself only;
    (c) a leads term 4 (c's vote) and replicates its old entry 3 to c, so a
        majority holds it -- but a's term-4 entry does not reach c yet;
    (d) a dies; b leads term 5 (c's vote: b's last term 3 beats c's 2) and
        overwrites entry 3 everywhere.
    Safe only if a did not count (c) as a commit of entry 3.
    """
    figure_8_a_to_c(c)
    figure_8_d(c)


def figure_8_a_to_c(c: Cluster) -> None:
    """Steps (a) to (c) of ``figure_8``, up to the moment a dies: the point
    at which a commit of entry 3 by counting would already have happened."""
    c.elect("a")
    c.tick_all(2)
    a = c.node("a")
    c.isolate("a")
    a.propose(A_TERM_2_ENTRY)
    c.deliver_all()
    c.filter = lambda m: not (m.src == "b" and m.type == MsgType.APPEND)
    c.elect("b")
    c.isolate("b")
    c.filter = None
    a = c.crash_restart("a")  # a restarts from its disk, a follower again
    c.cut.discard(("a", "c"))
    c.cut.discard(("c", "a"))
    # Once c holds a's entry 3, a's term-4 no-op (index 4) must not reach it.
    c.filter = lambda m: (
        not (
            m.src == "a"
            and m.type == MsgType.APPEND
            and any(e.index >= 4 for e in m.entries)
            and c.node("c").log.term(3) == 2
        )
    )
    while a.role != Role.LEADER:
        c.tick("a")
        c.deliver_all()
    c.tick_all(2)


def figure_8_d(c: Cluster) -> None:
    """Step (d) of ``figure_8``: a dies, b leads term 5 and overwrites entry 3."""
    c.isolate("a")  # a dies before its no-op reaches c
    c.filter = None
    c.crash_restart("b")  # b comes back from its disk, holding its term-3 entry
    c.cut.discard(("b", "c"))
    c.cut.discard(("c", "b"))
    c.elect("b")
    c.tick_all(2)


def applied_by_index(c: Cluster, node_id: str) -> dict[int, tuple[int, bytes]]:
    return {e.index: (e.term, e.data) for e in c.peers[node_id].applied}


def assert_a_did_not_commit_by_counting(c: Cluster) -> None:
    """The rule of paper 5.4.2: a leader counts replicas only for entries of
    its own term, so a (leading term 4) must not commit its term-2 entry 3
    although c now holds a copy of it too."""
    a = c.node("a")
    assert a.commit_index < 3 and 3 not in applied_by_index(c, "a"), (
        f"a committed its term-2 entry by counting replicas (commit index {a.commit_index})"
    )


def test_figure_8_scenario() -> None:
    """Paper 5.4.2, Figure 8: no server applies an entry that another server
    later replaces at the same index."""
    c = Cluster(check_quorum=False, pre_vote=False, max_msg_bytes=1)
    figure_8_a_to_c(c)
    assert c.node("a").role == Role.LEADER and c.node("c").log.term(3) == 2, "step (c) set up"
    assert_a_did_not_commit_by_counting(c)
    figure_8_d(c)
    assert c.node("b").role == Role.LEADER
    assert c.node("c").log.term(3) == 3, "b overwrote entry 3 on c, as Raft allows"
    a_applied, c_applied = applied_by_index(c, "a"), applied_by_index(c, "c")
    for index in a_applied.keys() & c_applied.keys():
        assert a_applied[index] == c_applied[index], f"a and c applied different entries at {index}"
    assert 3 not in a_applied, "a must not have committed its term-2 entry by counting"
    assert c.node("a").commit_index < 3

"""The notes board's own tests: the real board on a three-node cluster inside
the test process (the ``ramraft_cluster`` fixture of ``ramraft.testing``), on
virtual time. No database, no mocks, no ports: a test takes milliseconds.

Run them alone with ``python -m pytest examples/notes``.
"""

from __future__ import annotations

from examples.notes import app
from examples.notes.model import (
    ARCHIVE_AFTER_DAYS,
    ARCHIVE_EVERY_SECONDS,
    Board,
    archive_old_notes,
)

DAY = 86400.0


def test_a_note_written_on_a_follower_is_on_every_node(ramraft_cluster):
    cluster = ramraft_cluster(app)
    follower = next(i for i in cluster.ids if i != cluster.leader())
    note_id = cluster.run(cluster.model(follower).add("Lunch", "noodles?", "ana", cluster.now()))
    # The command returned once applied on the follower: it reads its own write.
    assert cluster.model(follower).notes[note_id]["title"] == "Lunch"
    cluster.wait_converged()
    assert [board.notes[note_id]["author"] for board in cluster.models()] == ["ana"] * 3


def test_the_board_survives_losing_its_leader(ramraft_cluster):
    cluster = ramraft_cluster(app)
    first = cluster.run(cluster.model().add("before", "", "", cluster.now()))
    old_leader = cluster.leader()
    cluster.kill(old_leader)
    second = cluster.run(cluster.model().add("after", "", "", cluster.now()))
    cluster.restart(old_leader)  # a new Board, rebuilt from its log
    cluster.wait_converged()
    for board in cluster.models():
        assert [n["title"] for n in board.listing()] == ["after", "before"]
        assert {first, second} == set(board.notes)


def test_a_partitioned_node_catches_up_when_healed(ramraft_cluster):
    cluster = ramraft_cluster(app)
    cut_off = next(i for i in cluster.ids if i != cluster.leader())
    cluster.partition(cut_off)
    note_id = cluster.run(cluster.model().add("while cut off", "", "", cluster.now()))
    cluster.sleep(1.0)
    assert note_id not in cluster.model(cut_off).notes
    cluster.heal()
    cluster.wait_converged()
    assert note_id in cluster.model(cut_off).notes


def test_the_leaders_job_archives_old_unpinned_notes_on_every_node(ramraft_cluster):
    cluster = ramraft_cluster(app)
    board: Board = cluster.model()
    old = cluster.run(board.add("old", "", "", cluster.now()))
    kept = cluster.run(board.add("old but pinned", "", "", cluster.now()))
    cluster.run(board.pin(kept, True))
    cluster.travel(ARCHIVE_AFTER_DAYS * DAY + 60)  # the wall clock jumps a month ahead
    fresh = cluster.run(board.add("fresh", "", "", cluster.now()))
    cluster.run_job(archive_old_notes)  # what the leader runs every ARCHIVE_EVERY_SECONDS
    cluster.wait_converged()
    for copy in cluster.models():
        assert [n["id"] for n in copy.archived()] == [old]
        assert [n["id"] for n in copy.listing()] == [kept, fresh]


def test_the_job_runs_on_the_leader_only_and_moves_with_it(ramraft_cluster):
    cluster = ramraft_cluster(app)
    first = cluster.leader()
    cluster.sleep(ARCHIVE_EVERY_SECONDS / 60)  # runs at once, then every 10 minutes

    def runs(node_id: str) -> int:
        (report,) = cluster.node(node_id).jobs.report()
        return report.runs

    assert [runs(i) for i in cluster.ids] == [1 if i == first else 0 for i in cluster.ids]
    second = cluster.transfer_leadership(next(i for i in cluster.ids if i != first))
    cluster.sleep(1)
    assert runs(second) == 1 and not cluster.node(first).jobs.report()[0].running_here


def test_every_node_publishes_the_change_for_its_open_pages(ramraft_cluster):
    cluster = ramraft_cluster(app)
    follower = next(i for i in cluster.ids if i != cluster.leader())
    page = cluster.node(follower).events.subscribe(["notes"])  # what /app/events streams
    note_id = cluster.run(cluster.model().add("live", "", "", cluster.now()))
    cluster.wait_converged()
    (frame,) = cluster.run(page.take(1.0))
    event_id, event, data = frame.decode().strip().splitlines()
    assert event == "event: notes" and data == f'data: {{"change":"added","id":{note_id}}}'
    # The id is the entry's index: a browser resumes after it (Last-Event-ID).
    assert 0 < int(event_id.removeprefix("id: ")) <= cluster.wait_converged()

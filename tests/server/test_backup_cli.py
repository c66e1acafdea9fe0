"""``ramraft backup`` against a running cluster: what a backup holds (every
write acknowledged before it began, and a consistent view: one index while
writes go on), the --json summary, progress on a terminal only, a directory
of backups with --keep, and failures that leave no file behind."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ramraft.server.storage.backup import BackupReader
from ramraft.tools.backup import verify_backup
from ramraft.tools.bench import free_ports
from ramraft.tools.cli import main
from tests.backups import RestoredCluster, write_state_backup
from tests.server.procs import REPO

EXIT_ERROR = 3
HEARTBEAT = 0.5  # seconds, at the ProcessCluster's 10 ms ticks


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestoredCluster]:
    """Board nodes holding 150k keys (a state of 5 MiB: several pieces),
    with heartbeats HEARTBEAT apart (writes do not wait for them)."""
    root = tmp_path_factory.mktemp("backup-cli")
    origin = root / "origin.backup"
    write_state_backup(origin, keys=150_000, notes=100)
    ticks = round(HEARTBEAT * 100)
    with RestoredCluster(
        root / "nodes", origin, heartbeat_ticks=ticks, election_ticks=3 * ticks
    ) as c:
        c.wait_for_leader()
        yield c


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def follower_of(cluster: RestoredCluster) -> str:
    leader = cluster.wait_for_leader()
    return next(n for n in cluster.ids if n != leader)


def test_a_backup_holds_every_write_acknowledged_before_it_began(
    cluster: RestoredCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Taken by a follower that was paused while puts were acknowledged, as
    soon as it runs again: it has not even received them (the leader sends
    them with its next heartbeat, HEARTBEAT later), so only the
    linearizable read point makes the backup hold them."""
    follower = follower_of(cluster)
    out = tmp_path / "after.backup"
    cluster.procs[follower].send_signal(signal.SIGSTOP)
    try:
        with cluster.client(ids=[n for n in cluster.ids if n != follower]) as client:
            for i in range(20):
                client.put(f"acked/{i:03d}", b"%d" % i)
    finally:
        cluster.procs[follower].send_signal(signal.SIGCONT)
    code, _, err = run_cli(
        capsys, "backup", "--endpoints", cluster.grpc[follower], "--out", str(out)
    )
    assert code == 0, err
    _, summary = verify_backup(out)
    assert summary.kv is not None
    assert [summary.kv.get(f"acked/{i:03d}") for i in range(20)] == [
        (True, b"%d" % i) for i in range(20)
    ]


def test_a_backup_is_one_view_while_writes_go_on(
    cluster: RestoredCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A writer puts w/0, w/1, ... one after the other while the backup is
    written: it holds a prefix of them (the state at one index: no later
    put without the earlier ones)."""
    acked = 0
    stop = threading.Event()

    def writer() -> None:
        nonlocal acked
        with cluster.client() as client:
            while not stop.is_set():
                client.put(f"w/{acked:06d}", b"x" * 512)
                acked += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while acked < 30:
            time.sleep(0.01)
        out = tmp_path / "during.backup"
        code, stdout, err = run_cli(
            capsys, "backup", "--endpoints", cluster.endpoints(), "--out", str(out), "--json"
        )
        during = acked
        while acked < during + 30:
            time.sleep(0.01)  # writes went on after it, too
    finally:
        stop.set()
        thread.join()
    assert code == 0, err
    _, summary = verify_backup(out)
    assert summary.kv is not None
    written = sorted(k for k, _ in summary.kv.items() if k.startswith("w/"))
    assert written == [f"w/{i:06d}" for i in range(len(written))]  # a prefix
    assert 30 <= len(written) <= during
    assert json.loads(stdout)["keys"] == summary.keys


def test_json_summary(
    cluster: RestoredCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "b" / "cluster.backup"  # a directory that does not exist yet
    code, stdout, err = run_cli(
        capsys, "backup", "--endpoints", cluster.endpoints(), "--out", str(out), "--json"
    )
    assert code == 0, err
    assert err == ""  # no progress: stderr is no terminal
    report = json.loads(stdout)
    with BackupReader(out) as reader:
        reader.verify()
        header = reader.header
    assert report == {
        "file": str(out),
        "bytes": out.stat().st_size,
        "seconds": report["seconds"],
        "index": header.index,
        "term": header.term,
        "cluster_id": header.cluster_id,
        "keys": report["keys"],
        "node": header.node,
        "removed": [],
    }
    assert header.cluster_id == cluster.cluster_id() and header.model == "Board"
    assert [p.name for p in out.parent.iterdir()] == ["cluster.backup"]  # no temporary file


def test_progress_on_a_terminal_only(cluster: RestoredCluster, tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "ramraft", "backup", "--endpoints", cluster.endpoints()]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    master, slave = pty.openpty()
    try:
        proc = subprocess.run(
            [*argv, "--out", str(tmp_path / "tty.backup")],
            stdout=subprocess.PIPE,
            stderr=slave,
            env=env,
            timeout=60,
            check=False,
        )
        os.close(slave)
        shown = b""
        while True:
            try:
                piece = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not piece:
                break
            shown += piece
    finally:
        os.close(master)
    assert proc.returncode == 0
    assert b"\rbackup of index " in shown and b" MiB (" in shown, shown
    assert b"tty.backup: index " in proc.stdout  # the summary, on stdout
    piped = subprocess.run(
        [*argv, "--out", str(tmp_path / "pipe.backup")],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert piped.returncode == 0 and piped.stderr == b""


def test_a_directory_of_backups_keeps_the_newest(
    cluster: RestoredCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "backups"
    directory.mkdir()
    (directory / "notes.txt").write_text("not a backup: never touched")
    stale = directory / ".ramraft-died.partial"
    stale.write_bytes(b"half a backup")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    fresh = directory / ".ramraft-running.partial"
    fresh.write_bytes(b"a backup being written")
    made = []
    for _ in range(3):
        code, stdout, err = run_cli(
            capsys, "backup", "--endpoints", cluster.endpoints(), "--out", f"{directory}/",
            "--keep", "2", "--json",
        )  # fmt: skip
        assert code == 0, err
        made.append(Path(json.loads(stdout)["file"]))
        time.sleep(1.1)  # names have a resolution of a second
    assert all(p.parent == directory and p.name.startswith("ramraft-") for p in made)
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [made[1].name, made[2].name, "notes.txt", fresh.name]
    )
    assert json.loads(stdout)["removed"] == [str(made[0])]
    for path in made[1:]:
        verify_backup(path)


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["--out", "x", "--verify", "y"], "--verify takes no --out"),
        (["--out", "file.backup", "--keep", "3"], "--keep N (N >= 1) needs --out DIR/"),
        (["--out", "dir/", "--keep", "0"], "--keep N (N >= 1)"),
        ([], "give --out FILE or DIR/"),
        (["--out", "x", "--app", "m:f"], "--app goes with --verify"),
    ],
    ids=["out-and-verify", "keep-without-dir", "keep-zero", "nothing", "app-without-verify"],
)
def test_bad_usage_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], expect: str
) -> None:
    os.chdir(tmp_path)
    code, out, err = run_cli(capsys, "backup", *argv)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and expect in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_cluster_that_does_not_answer_leaves_no_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (port,) = free_ports(1)
    out = tmp_path / "x.backup"
    code, stdout, err = run_cli(
        capsys, "backup", "--endpoints", f"127.0.0.1:{port}", "--timeout", "1", "--out", str(out)
    )
    assert code == EXIT_ERROR and stdout == ""
    assert err.count("\n") == 1 and err.startswith("ramraft: error: "), err
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_destination_is_one_line(
    cluster: RestoredCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _, err = run_cli(
        capsys, "backup", "--endpoints", cluster.endpoints(), "--out", str(blocker / "x.backup")
    )
    assert code == EXIT_ERROR
    assert err.count("\n") == 1 and f"{blocker}: File exists" in err, err


def test_a_directory_that_takes_no_file_is_named_not_the_temporary_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """/proc takes no new file (even from root): the error names the
    directory, not the hidden .partial file written first."""
    (port,) = free_ports(1)
    code, _, err = run_cli(
        capsys, "backup", "--endpoints", f"127.0.0.1:{port}", "--out", "/proc/x.backup"
    )
    assert code == EXIT_ERROR
    assert err == (
        "ramraft: error: --out /proc/x.backup: cannot write a file in /proc: "
        "No such file or directory\n"
    ), err


def test_backups_the_client_abandons_leave_the_node_able_to_serve_more(
    cluster: RestoredCluster, tmp_path: Path
) -> None:
    """A client that goes away mid-backup (its disk is full, Ctrl-C) ends
    the node's work on it: the threads the node reads and writes the backup
    with are freed (a thread left waiting for a piece that never comes, once
    per abandoned backup, would soon take every worker thread the node
    has). Afterwards backups and snapshots work as before."""

    class Abandon(Exception):
        pass

    def write(data: bytes) -> None:
        raise Abandon

    endpoint = cluster.grpc[cluster.wait_for_leader()]
    with cluster.client(ids=[n for n in cluster.ids if cluster.grpc[n] == endpoint]) as client:
        for _ in range(20):
            with pytest.raises(Abandon):
                client.backup(write, endpoint=endpoint)
        out = tmp_path / "after.backup"
        with open(out, "wb") as f:
            client.backup(f.write, endpoint=endpoint, stall_timeout=10)
        assert out.stat().st_size > 4 << 20  # several pieces, as each abandoned one had
        verify_backup(out)
        client.snapshot(endpoint=endpoint, timeout=30)

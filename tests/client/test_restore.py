"""``ramraft restore`` and its data directory rules (tools/restore.py): it
never overwrites a directory that holds anything without --force, nor one a
running node holds; a restore that fails (a damaged file, a disk error)
leaves the directory as it was and no staging directory; one that fails
after removing old contents leaves a directory no node starts from, which
running the restore again finishes."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ramraft.server.storage import open_storage
from ramraft.server.storage.backup import BackupReader
from ramraft.server.storage.datadir import RESTORE_MARKER, DataDirLock
from ramraft.server.storage.errors import StorageError
from ramraft.tools import restore as restore_module
from ramraft.tools.cli import main
from ramraft.tools.restore import STAGING_PREFIX, restored_cluster_id
from tests.backups import node_view, write_state_backup
from tests.server.procs import REPO

PEERS = "a=127.0.0.1:7101,b=127.0.0.1:7102,c=127.0.0.1:7103"
EXIT_USAGE = 2
EXIT_ERROR = 3


@pytest.fixture(scope="module")
def backup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("backup") / "cluster.backup"
    write_state_backup(path, keys=300, notes=10)
    return path


def restore(
    capsys: pytest.CaptureFixture[str], *argv: str, peers: str = PEERS
) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["restore", *argv, *(("--peers", peers) if peers else ())])
    out, err = capsys.readouterr()
    if code != 0:
        assert err.count("\n") == 1 and err.startswith("ramraft: error: "), err
    return code, out, err


def listing(directory: Path) -> dict[str, bytes | None]:
    """Every path under ``directory`` with its content (None: a directory)."""
    return {
        str(p.relative_to(directory)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(directory.rglob("*"))
    }


def old_node_dir(path: Path) -> Path:
    """A data directory as a node leaves it, with a file to recognise."""
    (path / "wal").mkdir(parents=True)
    (path / "snap").mkdir()
    (path / "wal" / "wal-00000000000000000001.log").write_bytes(b"old log")
    (path / "ports.json").write_text("{}")
    return path


def test_restore_writes_what_a_node_starts_from(
    tmp_path: Path, backup: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "nodes" / "a"
    code, out, err = restore(capsys, str(backup), "--data-dir", str(data), "--id", "a")
    assert code == 0, err
    with BackupReader(backup) as reader:
        header, checksum = reader.header, reader.checksum()
    peers = dict(p.split("=", 1) for p in PEERS.split(","))
    cluster_id = restored_cluster_id(checksum, peers)
    assert f"node a of the new cluster {cluster_id}" in out
    assert "--app" in out  # the backup holds a model: the nodes need the application
    recovered, cluster, addresses = node_view(data)
    assert recovered.snapshot.index == header.index
    assert recovered.snapshot.term == header.term
    assert recovered.snapshot.conf.voters == frozenset(peers)
    assert recovered.hard_state.term == header.term
    assert addresses == peers
    assert cluster is not None and cluster["cluster_id"] == cluster_id
    assert not list(data.glob(f"{STAGING_PREFIX}*"))
    assert not (data / RESTORE_MARKER).exists()
    assert sorted(p.name for p in tmp_path.joinpath("nodes").iterdir()) == ["a"]


def test_every_node_gets_the_same_cluster_id_whatever_the_peer_order(
    tmp_path: Path, backup: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reordered = ",".join(reversed(PEERS.split(",")))
    ids = set()
    for node, peers in (("a", PEERS), ("b", reordered), ("c", PEERS)):
        assert restore(capsys, str(backup), "--data-dir", str(tmp_path / node), "--id", node,
                       peers=peers)[0] == 0  # fmt: skip
        ids.add(node_view(tmp_path / node)[1]["cluster_id"])  # type: ignore[index]
    assert len(ids) == 1
    # Other members make another cluster; --cluster-id names it.
    other = PEERS.replace("7103", "7203")
    restore(capsys, str(backup), "--data-dir", str(tmp_path / "x"), "--id", "a", peers=other)
    assert node_view(tmp_path / "x")[1]["cluster_id"] not in ids  # type: ignore[index]
    restore(capsys, str(backup), "--data-dir", str(tmp_path / "y"), "--id", "a", "--cluster-id",
            "prod-2")  # fmt: skip
    assert node_view(tmp_path / "y")[1]["cluster_id"] == "prod-2"  # type: ignore[index]


def test_a_non_empty_directory_needs_force(
    tmp_path: Path, backup: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = old_node_dir(tmp_path / "a")
    before = listing(data)
    code, out, err = restore(capsys, str(backup), "--data-dir", str(data), "--id", "a")
    assert code == EXIT_ERROR and out == ""
    assert "is not empty" in err and "--force" in err
    assert listing(data) == before
    code, _, err = restore(capsys, str(backup), "--data-dir", str(data), "--id", "a", "--force")
    assert code == 0, err
    assert not (data / "ports.json").exists()
    assert (data / "wal" / "wal-00000000000000000001.log").read_bytes() != b"old log"
    assert node_view(data)[0].snapshot is not None


def test_a_lock_file_alone_is_an_empty_directory(
    tmp_path: Path, backup: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "a"
    data.mkdir()
    (data / "LOCK").write_text("123\n")
    assert restore(capsys, str(backup), "--data-dir", str(data), "--id", "a")[0] == 0


def test_a_directory_a_running_node_holds_is_never_replaced(
    tmp_path: Path, backup: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = old_node_dir(tmp_path / "a")
    lock = DataDirLock(str(data))  # as a running node holds it
    lock.acquire()
    try:
        before = listing(data)
        code, _, err = restore(capsys, str(backup), "--data-dir", str(data), "--id", "a", "--force")
        assert code == EXIT_ERROR
        assert "in use by another ramraft process" in err
        assert listing(data) == before
    finally:
        lock.release()


@pytest.mark.parametrize("existing", [False, True], ids=["new-dir", "old-dir"])
def test_a_damaged_backup_leaves_the_directory_as_it_was(
    tmp_path: Path, backup: Path, capsys: pytest.CaptureFixture[str], existing: bool
) -> None:
    damaged = tmp_path / "damaged.backup"
    data = bytearray(backup.read_bytes())
    data[len(data) // 2] ^= 0x40
    damaged.write_bytes(data)
    target = old_node_dir(tmp_path / "a") if existing else tmp_path / "a"
    before = listing(target) if existing else None
    code, _, err = restore(capsys, str(damaged), "--data-dir", str(target), "--id", "a", "--force")
    assert code == EXIT_ERROR and "checksum mismatch" in err
    if existing:
        assert listing(target) == before
    else:
        assert not target.exists()


class DiskFull:
    """Fails the restore's snapshot writes after ``after`` bytes with ENOSPC."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, after: int) -> None:
        from ramraft.server.storage.snapshots import FileSnapshotWriter

        self.left = after
        original = FileSnapshotWriter.write

        def write(writer: Any, data: Any) -> int:
            self.left -= len(data)
            if self.left < 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return original(writer, data)

        monkeypatch.setattr(FileSnapshotWriter, "write", write)


@pytest.mark.parametrize("existing", [False, True], ids=["new-dir", "old-dir"])
def test_a_disk_error_half_way_leaves_the_directory_as_it_was(
    tmp_path: Path,
    backup: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    existing: bool,
) -> None:
    target = old_node_dir(tmp_path / "a") if existing else tmp_path / "a"
    before = listing(target) if existing else None
    DiskFull(monkeypatch, after=backup.stat().st_size // 2)
    code, _, err = restore(capsys, str(backup), "--data-dir", str(target), "--id", "a", "--force")
    assert code == EXIT_ERROR
    assert "No space left on device" in err
    if existing:
        assert listing(target) == before  # no staging directory either
    else:
        assert not target.exists()


@pytest.mark.parametrize("failing", ["snap", "wal"], ids=["moving-old-aside", "moving-new-in"])
def test_a_failure_while_swapping_puts_the_old_contents_back(
    tmp_path: Path,
    backup: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    failing: str,
) -> None:
    data = old_node_dir(tmp_path / "a")
    before = listing(data)
    real_replace = os.replace

    def failing_replace(src: Any, dst: Any) -> None:
        source = Path(src)
        from_staging = source.parent.name.startswith(STAGING_PREFIX) and not (
            source.parent.name.startswith(f"{STAGING_PREFIX}old-")
        )
        # "snap": the second old entry moved aside; "wal": the second new one moved in.
        if source.name == failing and from_staging == (failing == "wal"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_replace(src, dst)

    monkeypatch.setattr(restore_module.os, "replace", failing_replace)
    code, _, err = restore(capsys, str(backup), "--data-dir", str(data), "--id", "a", "--force")
    assert code == EXIT_ERROR
    assert "Input/output error" in err and "the directory is as it was" in err
    assert listing(data) == before  # the old contents, no marker, no staging


KILLED_RESTORE = """
import os, signal, sys
from pathlib import Path
from ramraft.tools import restore
from ramraft.tools.cli import main
real = os.replace
def replace(src, dst):
    # Killed (SIGKILL: no clean-up) when the second new entry moves in.
    if Path(dst).name == "wal" and Path(src).parent.name.startswith(".restore-"):
        os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst)
restore.os.replace = replace
sys.exit(main(sys.argv[1:]))
"""


def test_a_restore_killed_while_swapping_is_refused_by_nodes_and_finished_by_a_rerun(
    tmp_path: Path, backup: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = old_node_dir(tmp_path / "a")
    argv = ["restore", str(backup), "--data-dir", str(data), "--id", "a", "--peers", PEERS]
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_RESTORE, *argv, "--force"],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (data / RESTORE_MARKER).exists()
    (aside,) = data.glob(f"{STAGING_PREFIX}old-*")  # the old contents, kept
    assert (aside / "wal" / "wal-00000000000000000001.log").read_bytes() == b"old log"
    # No node starts from it ...
    with pytest.raises(StorageError, match="unfinished `ramraft restore`"):
        open_storage(str(data))
    # ... and the restore, run again (no --force needed), finishes.
    code, _, err = restore(capsys, str(backup), "--data-dir", str(data), "--id", "a")
    assert code == 0, err
    assert node_view(data)[0].snapshot is not None
    assert sorted(p.name for p in data.iterdir()) == ["LOCK", "snap", "wal"]


def test_lost_and_found_is_not_content_and_stays(
    tmp_path: Path, backup: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fresh ext4 volume holds lost+found (root's): the directory is empty,
    and lost+found is never moved."""
    data = tmp_path / "volume"
    (data / "lost+found").mkdir(parents=True)
    assert restore(capsys, str(backup), "--data-dir", str(data), "--id", "a")[0] == 0
    assert restore(capsys, str(backup), "--data-dir", str(data), "--id", "b", "--force")[0] == 0
    assert sorted(p.name for p in data.iterdir()) == ["LOCK", "lost+found", "snap", "wal"]


def test_the_staging_directory_of_a_killed_restore_is_removed(
    tmp_path: Path, backup: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "a"
    leftover = data / f"{STAGING_PREFIX}x1y2"
    (leftover / "snap").mkdir(parents=True)
    (leftover / "snap" / "junk").write_bytes(b"x" * 1000)
    # The leftover is not content: no --force needed.
    code, _, err = restore(capsys, str(backup), "--data-dir", str(data), "--id", "a")
    assert code == 0, err
    assert not leftover.exists()


def test_settings_come_from_the_nodes_environment_variables(
    tmp_path: Path,
    backup: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = tmp_path / "pod"
    monkeypatch.setenv("RAMRAFT_DATA_DIR", str(data))
    monkeypatch.setenv("RAMRAFT_ID", "b")
    monkeypatch.setenv("RAMRAFT_PEERS", PEERS)
    monkeypatch.setenv("RAMRAFT_CLUSTER_ID", "from-env")
    code, out, err = restore(capsys, str(backup), peers="")
    assert code == 0, err
    assert "as node b of the new cluster from-env" in out
    assert node_view(data)[1]["cluster_id"] == "from-env"  # type: ignore[index]


@pytest.mark.parametrize(
    ("argv", "code", "expect"),
    [
        (["--id", "a"], EXIT_USAGE, "give --data-dir (or RAMRAFT_DATA_DIR)"),
        (["--data-dir", "{d}"], EXIT_USAGE, "give --id (or RAMRAFT_ID)"),
        (["--data-dir", "{d}", "--id", "z"], EXIT_USAGE, "--id z is not one of the --peers"),
        (["--data-dir", "{d}", "--id", "a", "--cluster-id", "no spaces"], EXIT_USAGE, "1-64"),
    ],
    ids=["no-data-dir", "no-id", "id-not-a-peer", "bad-cluster-id"],
)
def test_bad_settings_are_one_line_each(
    tmp_path: Path,
    backup: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    code: int,
    expect: str,
) -> None:
    for variable in ("RAMRAFT_DATA_DIR", "RAMRAFT_ID", "RAMRAFT_PEERS", "RAMRAFT_CLUSTER_ID"):
        monkeypatch.delenv(variable, raising=False)
    args = [a.replace("{d}", str(tmp_path / "d")) for a in argv]
    got, _, err = restore(capsys, str(backup), *args)
    assert (got, expect in err) == (code, True), err
    assert not (tmp_path / "d").exists()


def test_bad_peers_are_refused(
    tmp_path: Path, backup: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = restore(
        capsys, str(backup), "--data-dir", str(tmp_path / "d"), "--id", "a", peers="a=nowhere"
    )
    assert code == EXIT_USAGE and "--peers" in err


def test_peers_errors_name_the_flag_once(
    tmp_path: Path, backup: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = restore(
        capsys,
        str(backup),
        "--data-dir",
        str(tmp_path / "d"),
        "--id",
        "a",
        peers="a=127.0.0.1:7001,b=127.0.0.1:7001",
    )
    assert code == EXIT_USAGE
    assert err == (
        "ramraft: error: --peers: a and b have the same address 127.0.0.1:7001: "
        "give each node its own\n"
    )
    assert not (tmp_path / "d").exists()


def test_a_data_dir_that_is_a_file_is_named_so(
    tmp_path: Path, backup: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "a-file"
    path.write_text("not a directory")
    code, _, err = restore(capsys, str(backup), "--data-dir", str(path), "--id", "a")
    assert code == EXIT_USAGE
    assert err == f"ramraft: error: --data-dir {path}: is a file, not a directory\n"
    assert path.read_text() == "not a directory"

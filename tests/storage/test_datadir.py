"""The data-directory lock and open_storage()'s errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ramraft.server.storage import DataDirLockedError, StorageError, open_storage


def test_second_open_of_the_same_directory_is_refused(tmp_path: Path) -> None:
    log, _ = open_storage(tmp_path / "d")
    with pytest.raises(
        DataDirLockedError, match=f"in use by another ramraft process \\(pid {os.getpid()}"
    ):
        open_storage(tmp_path / "d")
    log.close()
    log, _ = open_storage(tmp_path / "d")  # closing released it
    log.close()


def test_lock_held_by_another_process_and_released_when_it_dies(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from ramraft.server.storage import open_storage
                log, _ = open_storage({str(tmp_path / "d")!r})
                print("locked", flush=True)
                time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
        text=True,
    )
    try:
        assert holder.stdout is not None
        while (line := holder.stdout.readline()) and line.strip() != "locked":
            pass  # structlog's own lines come first
        assert line.strip() == "locked"
        with pytest.raises(DataDirLockedError, match=f"pid {holder.pid}"):
            open_storage(tmp_path / "d")
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, the kernel drops the flock
        holder.wait()
    log, _ = open_storage(tmp_path / "d")
    log.load()
    log.close()


def test_directory_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StorageError, match=r"cannot create the data directory .*file/d"):
        open_storage(tmp_path / "file" / "d")


def test_layout(tmp_path: Path) -> None:
    log, _ = open_storage(tmp_path / "d")
    log.load()
    log.close()
    assert sorted(os.listdir(tmp_path / "d")) == ["LOCK", "snap", "wal"]
    assert os.listdir(tmp_path / "d" / "wal") == ["wal-00000000000000000001.log"]

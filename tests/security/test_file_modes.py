"""Files that hold data or secrets are private from their first byte (issue
17): a node's data directory and its subdirectories are 0700, its WAL
segments, snapshots and lock file 0600; the private keys ``ramraft certs``
writes and the token file ``ramraft tokens`` writes are created 0600 (not
written first and chmod-ed after). Everything runs with umask 0, so that
only the modes the code asks for protect the files."""

from __future__ import annotations

import builtins
import io
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ramraft.client import Client
from ramraft.tools.certs import make_cluster_certs
from ramraft.tools.cli import main as cli_main
from tests.server.procs import REPO, free_ports


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _walk(root: Path) -> Iterator[Path]:
    yield root
    yield from sorted(root.rglob("*"))


def test_a_node_creates_only_private_files(tmp_path: Path) -> None:
    data = tmp_path / "data" / "n1"  # created by the node, parents too
    (port,) = free_ports(1)
    log_path = tmp_path / "node.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "ramraft", "node", "--id", "n1"),
                *("--peers", f"n1=127.0.0.1:{port}", "--data-dir", str(data)),
                *("--tick-ms", "10", "--election-ticks", "20", "--snapshot-entries", "50"),
            ],
            stdout=log,
            stderr=log,
            cwd=str(REPO),
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            preexec_fn=lambda: os.umask(0),
        )
    try:
        with Client(f"127.0.0.1:{port}", timeout=20) as client:
            for n in range(120):  # past --snapshot-entries: a snapshot is taken
                client.put(f"secret/{n}", b"plaintext value")
            client.snapshot()
            deadline = time.monotonic() + 20
            while client.status().node.kv_version < 2:  # blobs are enabled
                assert time.monotonic() < deadline, "blobs were not enabled"
                time.sleep(0.05)
            client.put_blob(b"a private file")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log_path.read_text()
    seen = {p.relative_to(data).as_posix(): _mode(p) for p in _walk(data)}
    assert any(name.startswith("wal/") for name in seen), seen
    assert any(name.startswith("snap/") for name in seen), seen
    assert any(name.startswith("blobs/sha256/") and name.count("/") == 3 for name in seen), seen
    for name, mode in seen.items():
        path = data / name
        if path.is_dir():
            assert mode == 0o700, f"{name or 'the data directory'} is {mode:o}"
        else:
            assert mode == 0o600, f"{name} is {mode:o}"


def test_an_existing_data_directory_is_made_private(tmp_path: Path) -> None:
    """A data directory made 0755 by an older release (or by hand) becomes
    0700 when a node opens it (this process owns it)."""
    from ramraft.server.storage import open_storage

    data = tmp_path / "old"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    log_store, _ = open_storage(data)
    try:
        assert _mode(data) == 0o700
    finally:
        log_store.close()


class CreationModes:
    """Records the mode every file has right after it is created, before a
    byte is written to it: os.open and open() are wrapped."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.modes: dict[str, int] = {}
        real_os_open, real_open = os.open, builtins.open

        def os_open(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
            existed = os.path.exists(path)
            fd = real_os_open(path, flags, mode, **kw)
            if not existed and flags & os.O_CREAT:
                self.modes[os.fspath(path)] = stat.S_IMODE(os.fstat(fd).st_mode)
            return fd

        def py_open(file: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
            existed = isinstance(file, (str, os.PathLike)) and os.path.exists(file)
            f = real_open(file, mode, *args, **kw)
            if isinstance(file, (str, os.PathLike)) and not existed and set(mode) & set("wxa"):
                self.modes[os.fspath(file)] = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
            return f

        monkeypatch.setattr(os, "open", os_open)
        monkeypatch.setattr(builtins, "open", py_open)
        monkeypatch.setattr(io, "open", py_open)

    def secret(self, suffix: str) -> dict[str, int]:
        return {p: m for p, m in self.modes.items() if p.endswith(suffix)}


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("umask_zero")
def test_certs_creates_private_keys_0600_from_the_first_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = CreationModes(monkeypatch)
    out = tmp_path / "certs"
    make_cluster_certs(out, {"n1": ["127.0.0.1"], "n2": ["127.0.0.1"]}, days=2)
    keys = created.secret("-key.pem.tmp")
    assert len(keys) == 4, created.modes  # ca, n1, n2, client
    assert set(keys.values()) == {0o600}, keys
    for key in out.glob("*-key.pem"):
        assert _mode(key) == 0o600, key
    for cert in (out / "ca.pem", out / "n1.pem", out / "client.pem"):
        assert _mode(cert) == 0o644, cert  # certificates are public


@pytest.mark.usefixtures("umask_zero")
def test_tokens_creates_the_token_file_0600_from_the_first_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    created = CreationModes(monkeypatch)
    out = tmp_path / "tokens.txt"
    assert cli_main(["tokens", "--out", str(out)]) == 0
    assert created.secret("tokens.txt") == {str(out): 0o600}
    assert _mode(out) == 0o600

"""The backup file (server/storage/backup.py) and ``ramraft backup --verify``:
a flipped byte anywhere, a truncated, foreign or empty file is refused with
one line naming what is wrong, and a non-zero exit status."""

from __future__ import annotations

import io
import struct
import sys
from pathlib import Path

import pytest
import structlog

from ramraft.server.machines.kv import KVMachine, encode_put
from ramraft.server.storage.backup import (
    BACKUP_MAGIC,
    CHECKSUM_BYTES,
    BackupError,
    BackupHeader,
    BackupReader,
    BackupWriter,
    encode_prefix,
)
from ramraft.tools.backup import verify_backup, write_backup_file
from ramraft.tools.cli import main
from tests.backups import write_state_backup

EXIT_ERROR = 3


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a small backup: 20 keys and a model of 5 notes, with
    sessions in both (every part of the format, in about 1.3 KB)."""
    path = tmp_path_factory.mktemp("small") / "small.backup"
    write_state_backup(path, keys=20, notes=5)
    return path.read_bytes()


def refusal(path: Path) -> str:
    """verify_backup's message for ``path``, which must be refused."""
    with pytest.raises(BackupError) as e:
        verify_backup(path)
    message = str(e.value)
    assert "\n" not in message, message
    return message


def part_of(position: int, data: bytes) -> str:
    (header_length,) = struct.unpack_from("<I", data, len(BACKUP_MAGIC) + 1)
    if position < len(BACKUP_MAGIC):
        return "magic"
    if position == len(BACKUP_MAGIC):
        return "version"
    if position < len(BACKUP_MAGIC) + 5:
        return "header length"
    if position < len(BACKUP_MAGIC) + 5 + header_length:
        return "header"
    if position < len(data) - CHECKSUM_BYTES:
        return "state"
    return "checksum"


# What each part's damage is called (a damaged header length may still fit
# the file: then only the checksum tells).
NAMED = {
    "magic": ("magic",),
    "version": ("checksum mismatch",),
    "header length": ("header length", "checksum mismatch"),
    "header": ("checksum mismatch",),
    "state": ("checksum mismatch",),
    "checksum": ("checksum mismatch",),
}


def test_the_small_backup_verifies(tmp_path: Path, small: bytes) -> None:
    path = tmp_path / "ok.backup"
    path.write_bytes(small)
    header, summary = verify_backup(path)
    assert (summary.keys, [m.name for m in summary.models]) == (20, ["Board"])
    assert header.index == 25


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_a_flipped_byte_anywhere_is_refused(tmp_path: Path, small: bytes, mask: int) -> None:
    path = tmp_path / "flipped.backup"
    parts_seen = set()
    for position in range(len(small)):
        damaged = bytearray(small)
        damaged[position] ^= mask
        path.write_bytes(damaged)
        message = refusal(path)
        part = part_of(position, small)
        parts_seen.add(part)
        assert any(name in message for name in NAMED[part]), (position, part, message)
        assert str(path) in message
    assert parts_seen == set(NAMED)


def test_flipped_bytes_across_a_larger_backup(tmp_path: Path) -> None:
    """A dense sample over a backup of 5,000 keys (many frames of the state):
    every byte of the first and last 256, and 400 spread between."""
    original = tmp_path / "large.backup"
    write_state_backup(original, keys=5_000, notes=50)
    data = original.read_bytes()
    size = len(data)
    positions = {*range(256), *range(size - 256, size), *range(0, size, size // 400)}
    path = tmp_path / "flipped.backup"
    for position in sorted(positions):
        damaged = bytearray(data)
        damaged[position] ^= 0x10
        path.write_bytes(damaged)
        refusal(path)


def test_a_truncated_backup_is_refused_at_every_length(tmp_path: Path, small: bytes) -> None:
    path = tmp_path / "cut.backup"
    for length in range(len(small)):
        path.write_bytes(small[:length])
        message = refusal(path)
        assert any(what in message for what in ("empty", "truncated", "checksum mismatch")), (
            length,
            message,
        )


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        (b"", "is empty"),
        (b"\x89PNG\r\n\x1a\n" + bytes(200), "not a ramraft backup"),
        (b"key,value\nalpha,1\n" * 20, "not a ramraft backup"),
        (b"RRAFTSNP" + bytes(100), "not a ramraft backup"),  # a node's snapshot file
        (b"RRB", "truncated"),
        (b"RRX", "not a ramraft backup"),
        (BACKUP_MAGIC, "truncated"),
    ],
    ids=["empty", "png", "csv", "snapshot-file", "cut-in-magic", "short-foreign", "magic-only"],
)
def test_foreign_and_empty_files_are_refused(tmp_path: Path, content: bytes, expect: str) -> None:
    path = tmp_path / "file"
    path.write_bytes(content)
    assert expect in refusal(path)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    assert "cannot read" in refusal(tmp_path / "nothing-here.backup")


def header(index: int = 3, model: str | None = None) -> BackupHeader:
    return BackupHeader(
        cluster_id="c-test",
        index=index,
        term=1,
        app_version=1,
        kv_version=1,
        created="2026-12-05T00:00:00+00:00",
        node="n1",
        ramraft_version="0",
        model=model,
    )


def write_raw(path: Path, head: BackupHeader, state: bytes) -> None:
    with open(path, "wb") as f:
        writer = BackupWriter(f, head)
        writer.write(state)
        writer.finish()


def kv_state(keys: int) -> tuple[bytes, int]:
    kv = KVMachine()
    for i in range(keys):
        kv.apply(i + 1, encode_put(f"k{i}", b"v"))

    class Sink:
        data = bytearray()

        def write(self, b: bytes, /) -> int:
            self.data += b
            return len(b)

    sink = Sink()
    kv.snapshot().write_to(sink)
    return bytes(sink.data), keys


def test_a_key_value_only_backup_verifies(tmp_path: Path) -> None:
    kv = KVMachine()
    for i in range(10):
        kv.apply(i + 1, encode_put(f"k{i}", b"v"))
    path = tmp_path / "kv.backup"
    write_backup_file(path, header(index=10), kv.snapshot())
    _, summary = verify_backup(path)
    assert (summary.keys, summary.models) == (10, [])


@pytest.mark.parametrize(
    ("make", "expect"),
    [
        (lambda: (header(), b"not a state at all"), "the state does not decode"),
        (
            lambda: (header(index=3), kv_state(3)[0] + b"extra"),
            # Read as a blob catalog trailer's place (machines/blobs.py).
            "unexpected bytes b'extr' after the state machines' snapshot data",
        ),
        (lambda: (header(index=2), kv_state(3)[0]), "the state is at index 3, the header says 2"),
        (lambda: (header(index=3, model="Board"), kv_state(3)[0]), "names model Board"),
    ],
    ids=["garbage", "trailing-bytes", "index-ahead", "model-missing"],
)
def test_a_well_checksummed_but_wrong_state_is_refused(
    tmp_path: Path, make: object, expect: str
) -> None:
    head, state = make()  # type: ignore[operator]
    path = tmp_path / "wrong.backup"
    write_raw(path, head, state)
    BackupReader(path).verify()  # the checksum is right: only decoding tells
    assert expect in refusal(path)


def test_a_newer_format_is_named_as_such(tmp_path: Path, small: bytes) -> None:
    """Version byte 2 with a checksum that matches: written by a newer release."""
    import hashlib

    body = bytearray(small[:-CHECKSUM_BYTES])
    body[len(BACKUP_MAGIC)] = 2
    path = tmp_path / "v2.backup"
    path.write_bytes(bytes(body) + hashlib.sha256(body).digest())
    assert "backup format 2; this release reads format 1" in refusal(path)


def test_the_prefix_is_what_the_reader_reads(tmp_path: Path) -> None:
    head = header(index=7)
    prefix = encode_prefix(head)
    assert prefix.startswith(BACKUP_MAGIC + b"\x01")
    path = tmp_path / "x.backup"
    write_raw(path, head, b"state")
    with BackupReader(path) as reader:
        assert reader.header == head
        assert reader.state().read(100) == b"state"


# -- the command line ------------------------------------------------------------------------


def verify_cli(capsys: pytest.CaptureFixture[str], path: Path, *extra: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["backup", "--verify", str(path), *extra])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("damage", "expect"),
    [
        (lambda d: d[:100] + bytes([d[100] ^ 1]) + d[101:], "checksum mismatch"),
        (lambda d: d[: len(d) // 2], "checksum mismatch"),
        (lambda d: b"", "is empty"),
        (lambda d: b"hello, world\n" * 10, "not a ramraft backup"),
        (lambda d: d[:5], "truncated"),
    ],
    ids=["flipped", "truncated", "empty", "foreign", "cut-in-magic"],
)
def test_verify_cli_says_what_is_wrong_in_one_line(
    tmp_path: Path,
    small: bytes,
    capsys: pytest.CaptureFixture[str],
    damage: object,
    expect: str,
) -> None:
    path = tmp_path / "bad.backup"
    path.write_bytes(damage(small))  # type: ignore[operator]
    for extra in ((), ("--json",)):
        code, out, err = verify_cli(capsys, path, *extra)
        assert code == EXIT_ERROR
        assert out == ""
        assert err.count("\n") == 1 and err.startswith("ramraft: error: "), err
        assert expect in err, err


def test_verify_cli_reports_a_good_file(
    tmp_path: Path, small: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "good.backup"
    path.write_bytes(small)
    code, out, err = verify_cli(capsys, path)
    assert code == 0, err
    assert "OK (checksum matches, every byte decoded)" in out
    assert "keys: 20" in out and "model Board: notes: 5" in out
    code, out, _ = verify_cli(capsys, path, "--app", "tests.server.apps.board_v1:app", "--json")
    assert code == 0
    assert '"keys": 20' in out and '"name": "Board"' in out


def test_verify_cli_imports_the_app_from_the_current_directory_or_app_path(
    tmp_path: Path,
    small: bytes,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As `ramraft node` and `ramraft cluster` do: the application's
    package beside the operator, not installed, is found (the console
    script's sys.path does not hold the current directory)."""
    path = tmp_path / "good.backup"
    path.write_bytes(small)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("verify_here_app", "verify_there_app"):
        package = tmp_path / name / name
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("from tests.server.apps.board_v1 import app\n")
    monkeypatch.chdir(tmp_path / "verify_here_app")
    code, out, err = verify_cli(capsys, path, "--app", "verify_here_app:app")
    assert code == 0 and "OK" in out, err
    monkeypatch.chdir(tmp_path)
    there = str(tmp_path / "verify_there_app")
    code, out, err = verify_cli(capsys, path, "--app", "verify_there_app:app", "--app-path", there)
    assert code == 0 and "OK" in out, err


def test_verify_cli_names_an_app_it_cannot_load_once(
    tmp_path: Path, small: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "good.backup"
    path.write_bytes(small)
    code, out, err = verify_cli(capsys, path, "--app", "no_such_module_here:app")
    assert (code, out) == (2, "")
    assert err.startswith("ramraft: error: --app 'no_such_module_here:app': cannot import"), err
    assert err.count("--app") == 2 and err.count("\n") == 1, err  # and "see --app-path"


def test_verify_cli_refuses_code_older_than_the_backups_app_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A node with that code would halt on this state: verify says so
    rather than OK."""
    path = tmp_path / "v2.backup"
    write_state_backup(path, keys=3, notes=2, app_version=2)
    code, out, err = verify_cli(capsys, path, "--app", "tests.server.apps.board_v1:app")
    assert code == EXIT_ERROR and out == ""
    assert "runs app version 2" in err and "supports up to version 1" in err, err
    assert err.count("\n") == 1
    code, out, err = verify_cli(capsys, path, "--app", "tests.server.apps.board_v2:app")
    assert code == 0 and "app version 2" in out, err


def test_verify_cli_with_another_applications_model(
    tmp_path: Path, small: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "board.backup"
    path.write_bytes(small)
    code, out, err = verify_cli(capsys, path, "--app", "tests.server.apps.dice:app")
    assert code == EXIT_ERROR and out == ""
    assert "snapshot is of model 'Board'" in err and err.count("\n") == 1


def test_the_cli_leaves_no_logger_bound_to_its_stderr(
    tmp_path: Path, small: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ramraft backup --verify` in-process (as tests run it) configures the
    log for its own stderr. A module's logger must not keep that stream once
    the command is done: here it is closed, as pytest closes a test's
    captured stderr, and the machines log again afterwards."""
    path = tmp_path / "good.backup"
    path.write_bytes(small)
    stderr = io.StringIO()
    monkeypatch.setattr("sys.stderr", stderr)
    monkeypatch.setenv("RAMRAFT_LOG_LEVEL", "info")  # so that the machines log, and cache
    assert main(["backup", "--verify", str(path)]) == 0
    assert "kv snapshot restored" in stderr.getvalue()
    stderr.close()
    structlog.reset_defaults()  # what tests/conftest.py does between tests
    verify_backup(path)  # KVMachine.restore logs again: to the default stream, not the closed one

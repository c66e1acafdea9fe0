"""Damaged snapshot files are refused, naming the file and the offset."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from crc32c import crc32c

from ramraft.server.storage import (
    CorruptionError,
    FileSnapshotStore,
    StorageIOError,
    UnsupportedVersionError,
    open_storage,
)

from .helpers import ents, meta, rewrite

BLOCK = 1024
DATA = bytes(range(256)) * 50  # 12,800 bytes: 13 blocks


def make(tmp_path: Path) -> tuple[FileSnapshotStore, Path]:
    store = FileSnapshotStore(str(tmp_path / "snap"), block_size=BLOCK)
    with store.create(meta(77, 4)) as writer:
        writer.write(DATA)
        writer.commit()
    (name,) = os.listdir(tmp_path / "snap")
    return store, tmp_path / "snap" / name


def read_all(tmp_path: Path) -> bytes:
    store = FileSnapshotStore(str(tmp_path / "snap"), block_size=BLOCK)
    store.latest()
    got = bytearray()
    with store.open() as reader:
        for chunk in reader:
            got += chunk
    return bytes(got)


def flip(path: Path, offset: int, bit: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    rewrite(path, bytes(data))


def test_every_flipped_bit_is_caught(tmp_path: Path) -> None:
    _, path = make(tmp_path)
    original = path.read_bytes()
    assert read_all(tmp_path) == DATA
    for offset in range(0, len(original), 3):
        flip(path, offset, offset % 8)
        with pytest.raises(CorruptionError) as info:
            read_all(tmp_path)
        message = str(info.value)
        assert path.name in message and "members remove" in message, message
        rewrite(path, original)


def test_a_damaged_block_is_never_handed_out(tmp_path: Path) -> None:
    store, path = make(tmp_path)
    header_len = len(path.read_bytes()) - len(DATA) - 13 * 8 - 24
    block5 = header_len + 5 * (BLOCK + 8)
    flip(path, block5 + 8 + 100, 2)
    got = bytearray()
    damaged = f"byte offset {block5}: block 5 fails its checksum"
    with pytest.raises(CorruptionError, match=damaged), store.open() as reader:
        for chunk in reader:
            got += chunk
    assert bytes(got) == DATA[: 5 * BLOCK]


def test_damaged_header_stops_recovery(tmp_path: Path) -> None:
    log, snaps = open_storage(tmp_path / "d")
    log.load()
    log.save(entries=ents(1, 5, 1))
    with snaps.create(meta(3, 1)) as writer:
        writer.write(b"state")
        writer.commit()
    log.close()
    (path,) = (tmp_path / "d" / "snap").iterdir()
    flip(path, 30, 1)
    log, _ = open_storage(tmp_path / "d")
    with pytest.raises(CorruptionError, match=f"{path.name}.*header fails its checksum"):
        log.load()
    log.close()


@pytest.mark.parametrize("cut", [1, 24, 300])
def test_truncated_snapshot_is_refused(tmp_path: Path, cut: int) -> None:
    _store, path = make(tmp_path)
    data = path.read_bytes()
    rewrite(path, data[:-cut])
    with pytest.raises(CorruptionError, match=r"trailer|length"):
        FileSnapshotStore(str(tmp_path / "snap")).latest()


def test_blocks_swapped_are_caught(tmp_path: Path) -> None:
    _, path = make(tmp_path)
    data = bytearray(path.read_bytes())
    header_len = len(data) - len(DATA) - 13 * 8 - 24
    size = BLOCK + 8
    one = data[header_len : header_len + size]
    two = data[header_len + size : header_len + 2 * size]
    data[header_len : header_len + 2 * size] = two + one
    rewrite(path, bytes(data))
    with pytest.raises(CorruptionError, match="block 0 fails its checksum"):
        read_all(tmp_path)


def test_unknown_version_is_refused(tmp_path: Path) -> None:
    _, path = make(tmp_path)
    data = bytearray(path.read_bytes())
    (header_len,) = struct.unpack_from("<I", data, 12)
    struct.pack_into("<H", data, 8, 3)
    struct.pack_into("<I", data, header_len - 4, crc32c(bytes(data[: header_len - 4])))
    rewrite(path, bytes(data))
    with pytest.raises(UnsupportedVersionError, match="format version 3"):
        FileSnapshotStore(str(tmp_path / "snap")).latest()


def test_header_must_match_the_file_name(tmp_path: Path) -> None:
    _, path = make(tmp_path)
    path.rename(path.with_name("snap-00000000000000000078-00000000000000000004.snap"))
    with pytest.raises(CorruptionError, match="unlike the file name"):
        FileSnapshotStore(str(tmp_path / "snap")).latest()


def test_leftover_temporary_file_is_removed(tmp_path: Path) -> None:
    store = FileSnapshotStore(str(tmp_path / "snap"))
    writer = store.create(meta(5, 1))
    writer.write(b"half")  # the process dies here: the .tmp file stays
    assert [p.suffix for p in (tmp_path / "snap").iterdir()] == [".tmp"]
    store = FileSnapshotStore(str(tmp_path / "snap"))
    assert store.latest() is None
    assert list((tmp_path / "snap").iterdir()) == []
    writer.abort()


def test_write_error_removes_the_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    store, _ = make(tmp_path)
    writer = store.create(meta(90, 4))

    def full(*args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "writev", full)
    with pytest.raises(StorageIOError, match=r"No space left.*previous snapshots are intact"):
        writer.write(b"x" * (BLOCK * 2))
    monkeypatch.undo()
    assert store.latest() == meta(77, 4)
    assert [p.name for p in (tmp_path / "snap").iterdir() if p.suffix == ".tmp"] == []

"""One node's blob files (server/blobs/store.py): written to tmp/, fsynced,
renamed to their digest; limits refused before bytes are read when the size
is known, and as soon as they are crossed otherwise, leaving nothing behind;
renames and deletions in the order they were asked for."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from ramraft.server.blobs.store import PIECE, BlobStore
from ramraft.server.request_errors import BadRequest, InsufficientStorage, PayloadTooLarge


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BlobStore]:
    s = BlobStore(tmp_path / "blobs", max_blob_bytes=8 << 20, reserve_bytes=0)
    s.open()
    yield s
    s.close()


async def chunks(data: bytes, size: int = 100_000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]
        await asyncio.sleep(0)


async def never() -> AsyncIterator[bytes]:
    raise AssertionError("a refused blob must not be read")
    yield b""  # pragma: no cover


def leftovers(store: BlobStore) -> list[str]:
    return sorted(p.name for p in store.tmp.iterdir())


def test_a_blob_is_written_whole_then_renamed_to_its_digest(store: BlobStore) -> None:
    data = os.urandom(3 * PIECE + 17)
    digest = hashlib.sha256(data).hexdigest()

    async def run() -> bytes:
        incoming = await store.receive(chunks(data), size=len(data), sha256=digest)
        assert (incoming.sha256, incoming.size) == (digest, len(data))
        assert not store.has(digest) and incoming.path.parent == store.tmp
        await store.commit(incoming)
        assert store.has(digest) and leftovers(store) == []
        assert store.path(digest) == store.root / "sha256" / digest[:2] / digest
        file = await store.open_file(digest, offset=PIECE - 1, length=PIECE + 2)
        return b"".join([piece async for piece in file])

    assert asyncio.run(run()) == data[PIECE - 1 : 2 * PIECE + 1]
    assert store.path(digest).read_bytes() == data


def test_bytes_that_do_not_match_what_was_announced_are_refused(store: BlobStore) -> None:
    data = b"x" * 1000

    async def run(size: int | None, sha256: str | None) -> None:
        await store.receive(chunks(data), size=size, sha256=sha256)

    with pytest.raises(BadRequest, match="announced as 999 bytes but 1000 came"):
        asyncio.run(run(999, None))
    with pytest.raises(BadRequest, match="not the 00"):
        asyncio.run(run(None, "00" * 32))
    assert leftovers(store) == []


def test_the_size_limit_is_checked_before_reading_and_while_reading(store: BlobStore) -> None:
    with pytest.raises(PayloadTooLarge, match="--max-blob-bytes"):
        asyncio.run(store.receive(never(), size=(8 << 20) + 1))
    data = b"y" * ((8 << 20) + 1)  # no size announced: refused once the limit is crossed
    with pytest.raises(PayloadTooLarge, match="limit is 8388608 bytes"):
        asyncio.run(store.receive(chunks(data, PIECE)))
    assert leftovers(store) == []


def test_the_disk_guard_refuses_before_the_disk_fills(
    store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    free = store.free_bytes()
    store.reserve_bytes = free + 1  # already below the reserve: nothing is taken
    with pytest.raises(InsufficientStorage, match="--blob-reserve-bytes"):
        asyncio.run(store.receive(never(), size=1))
    # The disk fills while a blob arrives: refused mid-way, nothing kept.
    store.reserve_bytes = 1 << 20
    space = iter([free, free, 0])
    monkeypatch.setattr(store, "free_bytes", lambda: next(space, 0))
    with pytest.raises(InsufficientStorage):
        asyncio.run(store.receive(chunks(b"z" * (7 << 20), PIECE)))
    assert leftovers(store) == []


def test_opening_empties_tmp_and_lists_only_whole_blobs(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    digest = hashlib.sha256(b"kept").hexdigest()
    (root / "sha256" / digest[:2]).mkdir(parents=True)
    (root / "sha256" / digest[:2] / digest).write_bytes(b"kept")
    (root / "sha256" / digest[:2] / "not-a-digest").write_bytes(b"?")
    (root / "sha256" / "zz").mkdir()
    (root / "sha256" / "zz" / digest).write_bytes(b"misplaced")
    (root / "tmp").mkdir()
    (root / "tmp" / "abc.part").write_bytes(b"half an upload a crash left")
    store = BlobStore(root, max_blob_bytes=1 << 20, reserve_bytes=0)
    store.open()
    try:
        assert store.present == {digest}
        assert leftovers(store) == []
    finally:
        store.close()


def test_a_deletion_and_a_later_rename_of_the_same_blob_keep_their_order(
    store: BlobStore,
) -> None:
    """The log deletes a blob and a later entry records it again: the file
    from the new upload must survive the deletion asked for first."""
    data = b"again"
    digest = hashlib.sha256(data).hexdigest()

    async def run() -> None:
        first = await store.receive(chunks(data))
        await store.commit(first)
        second = await store.receive(chunks(data))
        deleting = store.delete([digest])  # asked first...
        committing = asyncio.ensure_future(store.commit(second))  # ... renamed after
        await asyncio.gather(deleting, committing)

    asyncio.run(run())
    assert store.has(digest) and store.path(digest).read_bytes() == data

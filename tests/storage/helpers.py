"""Shared helpers for the storage tests."""

from __future__ import annotations

from ramraft.consensus.types import ConfState, Entry, EntryKind, SnapshotMeta

CONF = ConfState(voters=frozenset({"n1", "n2", "n3"}))


def payload(index: int, term: int) -> bytes:
    """Deterministic, index-dependent entry data (so a wrong entry shows)."""
    return f"cmd-{index}-{term}-".encode() * (1 + index % 3)


def ents(first: int, last: int, term: int) -> list[Entry]:
    return [Entry(term, i, payload(i, term), EntryKind.NORMAL) for i in range(first, last + 1)]


def meta(index: int, term: int, conf: ConfState = CONF) -> SnapshotMeta:
    return SnapshotMeta(index=index, term=term, conf=conf)


def snapshot_bytes(index: int, size: int = 3000) -> bytes:
    unit = f"state@{index};".encode()
    return (unit * (size // len(unit) + 1))[:size]


def rewrite(path: object, data: bytes) -> None:
    """Replace a file's content in place (no O_TRUNC: truncating to zero
    frees every block, which is slow on a file system mounted with discard)."""
    with open(str(path), "r+b") as f:
        f.write(data)
        f.truncate(len(data))

"""Decode a whole state-machine snapshot stream without running a node:
what ``ramraft backup --verify`` reports (keys, models, sessions, blobs in
the catalog, index).

Every byte is decoded and checked as a restore would (frame checksums, counts
in trailers, record shapes); the key-value data is restored into a scratch
machine, and a model's state is decoded as plain data, or restored into the
application's own model class when one is given (which also runs its
``restore_state``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ramraft.server.machines.blobs import read_catalog_trailer
from ramraft.server.machines.embed import ModelMachine, ReplicatedModel, read_model_snapshot
from ramraft.server.machines.kv import KVMachine
from ramraft.server.machines.statemachine import (
    TAG_KV,
    TAG_MODEL,
    ReadableStream,
    SnapshotFormatError,
    read_composite,
)

__all__ = ["ModelSummary", "StateSummary", "inspect_state"]


@dataclass
class ModelSummary:
    name: str
    attributes: dict[str, int]
    """Each attribute's size: items of a container, 1 for a plain value."""
    sessions: int


@dataclass
class StateSummary:
    index: int
    keys: int = 0
    kv_sessions: int = 0
    models: list[ModelSummary] = field(default_factory=list)
    kv: KVMachine | None = None
    """The decoded key-value state (to compare, or to count)."""
    model: ReplicatedModel | None = None
    """The restored model, when a model instance was given."""
    blobs: int = 0
    """Blobs in the catalog that follows the machines' data (machines/blobs.py)."""


class _Peeked:
    """A stream with its first bytes read already (to tell formats apart)."""

    def __init__(self, head: bytes, rest: ReadableStream) -> None:
        self._head = head
        self._rest = rest

    def read(self, n: int, /) -> bytes:
        if self._head:
            out, self._head = self._head[:n], self._head[n:]
            return out
        return self._rest.read(n)


def _size(value: object) -> int:
    return len(value) if isinstance(value, dict | list | set | frozenset | tuple) else 1


def inspect_state(stream: ReadableStream, *, model: ReplicatedModel | None = None) -> StateSummary:
    """Decode a key-value or composite snapshot stream (see module docstring).
    Raises SnapshotFormatError (or SnapshotError from a model's own
    ``restore_state``)."""
    head = stream.read(4)
    source = _Peeked(head, stream)
    summary = StateSummary(index=0)

    def read_kv(section: ReadableStream) -> None:
        kv = KVMachine()
        kv.restore(section)
        summary.kv = kv
        summary.keys = len(kv)
        summary.kv_sessions = len(kv.sessions)
        summary.index = max(summary.index, kv.applied_index)

    def read_model(section: ReadableStream) -> None:
        if model is not None:
            machine = ModelMachine(model)
            machine.restore(section)
            summary.model = model
            state = model.snapshot_state()
            name, sessions = machine.model_name, len(machine.sessions)
        else:
            _, name, state, records = read_model_snapshot(section)
            sessions = len(records)
        attributes = {key: _size(value) for key, value in state.items()}
        summary.models.append(ModelSummary(name, attributes, sessions))

    if head == b"RRKV":
        read_kv(source)
        _read_catalog(source, summary)
        return summary

    def read_section(tag: int, section: ReadableStream) -> None:
        if tag == TAG_KV:
            read_kv(section)
        elif tag == TAG_MODEL:
            read_model(section)
        else:
            raise SnapshotFormatError(f"unknown machine section tag 0x{tag:02x}")

    summary.index = read_composite(source, read_section)
    _read_catalog(source, summary)
    return summary


def _read_catalog(stream: ReadableStream, summary: StateSummary) -> None:
    trailer = read_catalog_trailer(stream)
    summary.blobs = len(trailer[1]) if trailer is not None else 0

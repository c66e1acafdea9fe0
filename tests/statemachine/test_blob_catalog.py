"""The blob catalog (machines/blobs.py), applied through the cluster record:
blob commands wait for key-value version 2; a put records (or touches) a
blob; a collect removes exactly the blobs that are unreferenced and
untouched for the grace period, decided by the log's own clock; an explicit
delete is refused while the model refers to the blob; the catalog rides in
snapshots as a trailer that a cluster without blobs never writes."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import pytest

from ramraft.server.machines.blobs import (
    BlobEntry,
    BlobRef,
    CatalogListener,
    blob_ref_set,
    parse_sha256,
)
from ramraft.server.machines.cluster import (
    ClusterMachine,
    encode_blob_collect,
    encode_blob_delete,
    encode_blob_put,
    encode_check,
    encode_versions,
)
from ramraft.server.machines.digest import digest_job
from ramraft.server.machines.embed import ModelMachine, ReplicatedModel, command
from ramraft.server.machines.kv import KVMachine, encode_put
from ramraft.server.machines.statemachine import (
    TAG_KV,
    TAG_MODEL,
    CommandError,
    CompositeMachine,
    ErrorCode,
    SnapshotFormatError,
)

A = hashlib.sha256(b"a").hexdigest()
B = hashlib.sha256(b"b").hexdigest()
C = hashlib.sha256(b"c").hexdigest()
MINUTE = 60_000


class Album(ReplicatedModel):
    """Keeps references to blobs, as an application would."""

    def __init__(self) -> None:
        self.photos: dict[str, dict[str, Any]] = {}

    @command
    def add(self, name: str, ref: dict[str, Any]) -> None:
        self.photos[name] = ref

    @command
    def remove(self, name: str) -> None:
        self.photos.pop(name, None)

    def blob_refs(self) -> list[object]:
        return list(self.photos.values())


class Silent(ReplicatedModel):
    """A model that does not say which blobs it refers to."""

    def __init__(self) -> None:
        self.x = 0


class Broken(Album):
    def blob_refs(self) -> list[object]:
        raise KeyError("oops")


class Recorder(CatalogListener):
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def added(self, index: int, sha256: str, entry: BlobEntry) -> None:
        self.events.append(("added", index, sha256))

    def removed(self, index: int, digests: list[str], sweep: bool) -> None:
        self.events.append(("removed", index, sorted(digests), sweep))

    def restored(self, index: int) -> None:
        self.events.append(("restored", index))


class Node:
    """A cluster machine with a model, applying entries at growing indexes."""

    def __init__(self, model: ReplicatedModel | None = None, *, switch: bool = True) -> None:
        self.kv = KVMachine()
        self.model = model if model is not None else Album()
        self.models = ModelMachine(self.model)
        self.machine = ClusterMachine(
            CompositeMachine({TAG_KV: self.kv, TAG_MODEL: self.models}),
            model=self.models,
            kv=self.kv,
            blob_refs=self.models.blob_refs,
        )
        self.index = 0
        if switch:
            self.apply(encode_versions(1, 2))

    def apply(self, command: bytes) -> object:
        self.index += 1
        return self.machine.apply(self.index, command)

    def call(self, name: str, *args: Any) -> object:
        from ramraft.server.machines.embed import encode_call

        return self.apply(encode_call(name, list(args)))

    @property
    def catalog(self) -> dict[str, BlobEntry]:
        return self.machine.blobs.entries


def put(digest: str, time_ms: int, size: int = 1, kind: str = "image/png") -> bytes:
    return encode_blob_put(digest, size, kind, time_ms)


# ---- references as text -----------------------------------------------------------------------


def test_a_reference_is_64_lower_case_hex_and_sha256_prefix_is_accepted() -> None:
    assert parse_sha256(A) == A
    assert parse_sha256(A.upper()) == A
    assert parse_sha256(f"sha256:{A}") == A
    assert parse_sha256(f"  SHA256:{A.upper()} ") == A
    ref = BlobRef(A, 1, "text/plain")
    assert parse_sha256(ref) == A and str(ref) == A
    assert parse_sha256(ref.to_plain()) == A
    assert BlobRef.from_plain(ref.to_plain()) == ref
    for bad in ["", "abc", A[:-1], A + "0", f"md5:{A}", "z" * 64, 7, None]:
        with pytest.raises(ValueError, match="blob reference"):
            parse_sha256(bad)
    # What blob_refs() returns may hold anything: only references count.
    assert blob_ref_set([A, ref, {"sha256": B}, "junk", 3, {"x": 1}]) == {A, B}


# ---- the version switch -----------------------------------------------------------------------


def test_blob_commands_wait_for_key_value_version_2() -> None:
    node = Node(switch=False)
    command = put(A, 1000)
    refusal = node.machine.check_proposal(command)
    assert refusal is not None and "key-value version 2" in refusal
    result = node.apply(command)  # one that reached the log anyway
    assert isinstance(result, CommandError) and result.code is ErrorCode.NOT_ACTIVE
    assert node.catalog == {}
    node.apply(encode_versions(1, 2))
    assert node.machine.check_proposal(command) is None
    assert node.apply(command) == (1, "image/png")
    assert set(node.catalog) == {A}


# ---- puts ------------------------------------------------------------------------------------


def test_a_put_records_then_touches_and_keeps_the_first_content_type() -> None:
    node = Node()
    recorder = Recorder()
    node.machine.blobs.listeners.append(recorder)
    assert node.apply(put(A, 1000, size=5, kind="image/png")) == (5, "image/png")
    first = node.index
    # The same bytes again (content-addressed): a touch, never a new type.
    assert node.apply(put(A, 2000, size=5, kind="text/html")) == (5, "image/png")
    assert node.catalog[A] == BlobEntry(5, "image/png", 2000)
    assert recorder.events == [("added", first, A)]  # the second put added nothing
    result = node.apply(put(A, 3000, size=6))
    assert isinstance(result, CommandError) and "5 bytes, not 6" in result.message
    bad = node.apply(encode_blob_put(A, 1, "bad\ntype", 1))
    assert isinstance(bad, CommandError) and bad.code is ErrorCode.BAD_COMMAND


def test_the_catalog_clock_never_goes_back() -> None:
    """A leader whose clock lags must not make old blobs look new, nor new
    ones look old: the catalog keeps the largest time any entry carried."""
    node = Node()
    node.apply(put(A, 10 * MINUTE))
    node.apply(put(B, 5 * MINUTE))  # from a node whose clock is behind
    assert node.catalog[B].touched_ms == 10 * MINUTE
    assert node.machine.blobs.clock_ms == 10 * MINUTE


# ---- collection ------------------------------------------------------------------------------


def test_collect_removes_exactly_the_unreferenced_blobs_older_than_the_grace() -> None:
    node = Node()
    recorder = Recorder()
    node.machine.blobs.listeners.append(recorder)
    node.apply(put(A, 0))
    node.apply(put(B, 0))
    node.apply(put(C, 50 * MINUTE))  # put recently: kept though nobody refers to it yet
    node.call("add", "cat", BlobRef(A, 1, "image/png").to_plain())
    assert node.apply(encode_blob_collect(60 * MINUTE, 30 * MINUTE)) == 1
    assert set(node.catalog) == {A, C}
    assert recorder.events[-1] == ("removed", node.index, [B], True)
    # A referenced blob is touched by every collection that finds it referenced.
    assert node.catalog[A].touched_ms == 60 * MINUTE


def test_a_blob_referenced_again_within_the_grace_is_kept() -> None:
    node = Node()
    node.apply(put(A, 0))
    node.call("add", "cat", {"sha256": A})
    node.apply(encode_blob_collect(10 * MINUTE, 30 * MINUTE))  # referenced: touched at 10
    node.call("remove", "cat")  # unreferenced from here...
    assert node.apply(encode_blob_collect(30 * MINUTE, 30 * MINUTE)) == 0
    node.call("add", "cat again", {"sha256": A})  # ... and referenced again in time
    assert node.apply(encode_blob_collect(45 * MINUTE, 30 * MINUTE)) == 0
    node.call("remove", "cat again")
    assert node.apply(encode_blob_collect(70 * MINUTE, 30 * MINUTE)) == 0  # touched at 45
    assert node.apply(encode_blob_collect(76 * MINUTE, 30 * MINUTE)) == 1
    assert node.catalog == {}


def test_a_model_that_does_not_declare_its_references_collects_nothing() -> None:
    node = Node(Silent())
    recorder = Recorder()
    node.machine.blobs.listeners.append(recorder)
    node.apply(put(A, 0))
    assert node.apply(encode_blob_collect(1000 * MINUTE, 1)) == 0
    assert set(node.catalog) == {A}
    assert recorder.events[-1] == ("removed", node.index, [], True)  # a sweep all the same


def test_blob_refs_that_raise_collect_nothing_the_same_everywhere() -> None:
    node = Node(Broken())
    node.apply(put(A, 0))
    result = node.apply(encode_blob_collect(1000 * MINUTE, 1))
    assert isinstance(result, CommandError) and result.code is ErrorCode.COMMAND_FAILED
    assert "KeyError" in result.message and set(node.catalog) == {A}


# ---- explicit deletes ------------------------------------------------------------------------


def test_a_delete_is_refused_while_the_model_refers_to_the_blob() -> None:
    node = Node()
    node.apply(put(A, 0))
    node.call("add", "cat", {"sha256": A})
    refused = node.apply(encode_blob_delete(A))
    assert isinstance(refused, CommandError) and "still referenced" in refused.message
    node.call("remove", "cat")
    assert node.apply(encode_blob_delete(A)) is True
    assert node.apply(encode_blob_delete(A)) is False
    assert node.catalog == {}


# ---- snapshots and digests -------------------------------------------------------------------


def _snapshot(machine: ClusterMachine) -> bytes:
    out = io.BytesIO()
    machine.snapshot().write_to(out)
    return out.getvalue()


def test_the_catalog_survives_a_snapshot_and_a_cluster_without_blobs_writes_no_trailer() -> None:
    node = Node()
    node.apply(encode_put("k", b"v"))
    without = _snapshot(node.machine)
    assert without == _inner_snapshot(node.machine)  # what earlier releases write and read
    node.apply(put(A, 1000, size=3, kind="text/plain"))
    node.apply(put(B, 2000))
    data = _snapshot(node.machine)
    assert data.startswith(without[:4]) and len(data) > len(without)

    other = Node(switch=False)
    recorder = Recorder()
    other.machine.blobs.listeners.append(recorder)
    other.machine.restore(io.BytesIO(data))
    assert other.catalog == node.catalog
    assert other.machine.blobs.clock_ms == 2000
    assert recorder.events == [("restored", node.index)]
    # A snapshot without the trailer empties the catalog.
    other.machine.restore(io.BytesIO(without))
    assert other.catalog == {}
    # Damage after the machines' data is an error, not silence.
    with pytest.raises(SnapshotFormatError, match="unexpected bytes"):
        other.machine.restore(io.BytesIO(without + b"junk"))
    with pytest.raises(SnapshotFormatError):
        other.machine.restore(io.BytesIO(data[:-3]))


def _inner_snapshot(machine: ClusterMachine) -> bytes:
    out = io.BytesIO()
    machine.inner.snapshot().write_to(out)
    return out.getvalue()


def test_nodes_that_applied_the_same_log_hold_the_same_catalog_bytes_and_digest() -> None:
    first, second = Node(), Node()
    log = [put(B, 10), put(A, 20), put(C, 30), encode_blob_delete(C)]
    for entry in log:
        first.apply(entry)
    for entry in log:
        second.apply(entry)
    assert _snapshot(first.machine) == _snapshot(second.machine)
    first.apply(encode_check())
    second.apply(put(A, 40))  # the same state but for one touch
    assert digest_job(first.machine.snapshot(), first.machine.state) != digest_job(
        second.machine.snapshot(), second.machine.state
    )

"""Key-value version 2 is ONE switch for everything new in this release:
revisions, transactions, delete-range and leases (machines/kv.py ``SINCE``)
and the blob catalog (machines/blobs.py ``BLOBS_KV_VERSION``). Before it,
both kinds of command are refused alike; after it, a snapshot carries both
the revisions (key-value snapshot format 3) and the blob catalog (the
cluster machine's trailer), and what reads snapshots and backups (restore,
``backup --verify``) reads both; the snapshots of a cluster before the
switch (format 2, no trailer) stay what the previous release reads."""

from __future__ import annotations

import hashlib
import io

from ramraft.server.machines.blobs import BLOBS_KV_VERSION
from ramraft.server.machines.cluster import (
    KV_SUPPORTED_VERSION,
    ClusterMachine,
    encode_blob_put,
    encode_versions,
)
from ramraft.server.machines.embed import ModelMachine
from ramraft.server.machines.inspect import inspect_state
from ramraft.server.machines.kv import (
    SINCE,
    KVMachine,
    encode_lease_grant,
    encode_put,
    encode_txn,
)
from ramraft.server.machines.kvops import Txn, TxnOp, TxnOpKind
from ramraft.server.machines.statemachine import TAG_KV, TAG_MODEL, CompositeMachine
from tests.statemachine.test_blob_catalog import Album

A = hashlib.sha256(b"a").hexdigest()


class Node:
    """A node's machines: key-value, an application model, the cluster
    record with its blob catalog."""

    def __init__(self) -> None:
        self.kv = KVMachine()
        self.models = ModelMachine(Album())
        self.machine = ClusterMachine(
            CompositeMachine({TAG_KV: self.kv, TAG_MODEL: self.models}),
            model=self.models,
            kv=self.kv,
            blob_refs=self.models.blob_refs,
        )
        self.index = 0

    def apply(self, command: bytes) -> object:
        self.index += 1
        return self.machine.apply(self.index, command)

    def snapshot(self) -> bytes:
        out = io.BytesIO()
        self.machine.snapshot().write_to(out)
        return out.getvalue()


def _txn() -> bytes:
    return encode_txn(Txn((), (TxnOp(TxnOpKind.PUT, "t", b"1"),), ()))


def test_one_version_gates_the_new_key_value_ops_and_the_blob_catalog() -> None:
    assert max(SINCE.values()) == BLOBS_KV_VERSION == KV_SUPPORTED_VERSION == 2
    node = Node()
    new_commands = [_txn(), encode_lease_grant(0, 10), encode_blob_put(A, 1, "text/plain", 1)]
    for command in new_commands:
        reason = node.machine.check_proposal(command)
        assert reason is not None and "version 2" in reason, command
    assert node.apply(encode_versions(1, 2)) is None
    for command in new_commands:
        assert node.machine.check_proposal(command) is None, command


def test_a_snapshot_after_the_switch_carries_revisions_and_the_catalog() -> None:
    node = Node()
    node.apply(encode_put("old", b"v"))
    before = node.snapshot()
    out = io.BytesIO()
    node.machine.inner.snapshot().write_to(out)
    assert before == out.getvalue(), "no catalog trailer before the switch"
    node.apply(encode_versions(1, 2))
    node.apply(encode_put("k", b"1"))
    node.apply(encode_put("k", b"2"))
    node.apply(_txn())
    node.apply(encode_blob_put(A, 1, "text/plain", 1000))
    assert node.kv.revision == 4 and node.kv.key_meta("k").version == 2
    data = node.snapshot()

    # A node restores both (as from InstallSnapshot, or a restored backup).
    other = Node()
    other.machine.load_state(node.machine.state)
    other.machine.restore(io.BytesIO(data))
    assert other.kv.revision == node.kv.revision
    for key in ("old", "k", "t"):
        assert other.kv.key_meta(key) == node.kv.key_meta(key), key
    assert other.machine.blobs.entries == node.machine.blobs.entries
    assert other.snapshot() == data, "restore then snapshot gives the same bytes"
    # And applies the same next change as the node it came from.
    node.apply(encode_put("k", b"3"))
    other.index = node.index - 1
    other.apply(encode_put("k", b"3"))
    assert other.kv.key_meta("k") == node.kv.key_meta("k")

    # backup --verify decodes both.
    summary = inspect_state(io.BytesIO(data))
    assert summary.blobs == 1 and summary.keys == 3
    assert summary.kv is not None and summary.kv.revision == 4

    # Before the switch: format 2 (no revisions), what the previous release reads.
    summary = inspect_state(io.BytesIO(before))
    assert summary.blobs == 0 and summary.keys == 1
    assert summary.kv is not None and summary.kv.revision == 0

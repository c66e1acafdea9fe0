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
    encode_blob_put,
    encode_versions,
)
from ramraft.server.machines.inspect import inspect_state
from ramraft.server.machines.kv import (
    SINCE,
    encode_lease_grant,
    encode_put,
    encode_txn,
)
from ramraft.server.machines.kvops import Txn, TxnOp, TxnOpKind
from tests.statemachine.test_blob_catalog import Node, _snapshot

A = hashlib.sha256(b"a").hexdigest()


def _txn() -> bytes:
    return encode_txn(Txn((), (TxnOp(TxnOpKind.PUT, "t", b"1"),), ()))


def test_one_version_gates_the_new_key_value_ops_and_the_blob_catalog() -> None:
    assert max(SINCE.values()) == BLOBS_KV_VERSION == KV_SUPPORTED_VERSION == 2
    node = Node(switch=False)
    new_commands = [_txn(), encode_lease_grant(0, 10), encode_blob_put(A, 1, "text/plain", 1)]
    for command in new_commands:
        reason = node.machine.check_proposal(command)
        assert reason is not None and "version 2" in reason, command
    assert node.apply(encode_versions(1, 2)) is None
    for command in new_commands:
        assert node.machine.check_proposal(command) is None, command


def test_a_snapshot_after_the_switch_carries_revisions_and_the_catalog() -> None:
    node = Node(switch=False)
    node.apply(encode_put("old", b"v"))
    before = _snapshot(node.machine)
    out = io.BytesIO()
    node.machine.inner.snapshot().write_to(out)
    assert before == out.getvalue(), "no catalog trailer before the switch"
    node.apply(encode_versions(1, 2))
    node.apply(encode_put("k", b"1"))
    node.apply(encode_put("k", b"2"))
    node.apply(_txn())
    node.apply(encode_blob_put(A, 1, "text/plain", 1000))
    assert node.kv.revision == 4 and node.kv.key_meta("k").version == 2
    data = _snapshot(node.machine)

    # A node restores both (as from InstallSnapshot, or a restored backup).
    other = Node(switch=False)
    other.machine.load_state(node.machine.state)
    other.machine.restore(io.BytesIO(data))
    assert other.kv.revision == node.kv.revision
    for key in ("old", "k", "t"):
        assert other.kv.key_meta(key) == node.kv.key_meta(key), key
    assert other.machine.blobs.entries == node.machine.blobs.entries
    assert _snapshot(other.machine) == data, "restore then snapshot gives the same bytes"
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

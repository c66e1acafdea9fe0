"""Backup files built without a cluster, with the format's own code: a state
of many keys is made in a second this way, where writing it through gRPC
takes minutes.

    header = write_state_backup(path, keys=100_000, notes=50)

``RestoredCluster`` is a ProcessCluster of board nodes restored from such a
file (``ramraft restore``) before they start.

The state is what a node running ``tests/server/apps/board_v1.py`` holds: the
key-value machine and the Board model, with session tables in both, built
by applying commands to the machines as a node would.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from ramraft._version import __version__
from ramraft.server.machines.cluster import ClusterState
from ramraft.server.machines.embed import ModelMachine, encode_call
from ramraft.server.machines.kv import KVMachine, encode_put
from ramraft.server.machines.statemachine import TAG_KV, TAG_MODEL, CompositeMachine
from ramraft.server.storage import RecoveredState, open_storage
from ramraft.server.storage.backup import BackupHeader
from ramraft.server.storage.snapshot_header import read_snapshot_header
from ramraft.tools.backup import write_backup_file
from ramraft.tools.cli import main
from tests.httpcalls import http
from tests.server.apps.board_v1 import Board
from tests.server.procs import ProcessCluster

BOARD = "tests.server.apps.board_v1:app"
SESSION_CLIENTS = 8  # clients whose sessions the state remembers


def node_view(data_dir: Path) -> tuple[RecoveredState, dict[str, Any] | None, dict[str, str]]:
    """What a node starting from ``data_dir`` recovers: (recovered state,
    cluster record of its snapshot, peer addresses of its snapshot)."""
    log_store, snapshots = open_storage(str(data_dir))
    try:
        recovered = log_store.load()
        with snapshots.open() as reader:
            header = read_snapshot_header(reader)
    finally:
        log_store.close()
    return recovered, header.cluster, header.addresses


def key_name(i: int) -> str:
    return f"k/{i:07d}"


def value_of(i: int) -> bytes:
    # Values of a few sizes, some empty, some binary.
    return bytes([i % 251]) * (i % 37) + b"v%d" % i


def board_state(keys: int, notes: int) -> tuple[CompositeMachine, int]:
    """The machines of a board node after ``keys`` puts and ``notes`` adds;
    returns (machine, index of the last entry)."""
    kv = KVMachine()
    model = ModelMachine(Board())
    machine = CompositeMachine({TAG_KV: kv, TAG_MODEL: model})
    index = 0
    for i in range(keys):
        index += 1
        client = i % SESSION_CLIENTS + 1
        session = (client, i // SESSION_CLIENTS + 1) if i < 4 * SESSION_CLIENTS else None
        machine.apply(index, encode_put(key_name(i), value_of(i), session))
    for n in range(notes):
        index += 1
        client = 100 + n % SESSION_CLIENTS
        result = machine.apply(
            index, encode_call("add", [f"note {n}"], session=(client, n // SESSION_CLIENTS + 1))
        )
        assert result == n + 1, result  # the count of notes
    return machine, index


def write_state_backup(
    path: Path, *, keys: int, notes: int = 0, cluster_id: str = "c-origin0", app_version: int = 1
) -> BackupHeader:
    """A backup file of board_state(keys, notes), as node "offline" of
    cluster ``cluster_id`` would have taken it."""
    machine, index = board_state(keys, notes)
    header = BackupHeader(
        cluster_id=cluster_id,
        index=index,
        term=1,
        app_version=app_version,
        kv_version=1,
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        node="offline",
        ramraft_version=__version__,
        model="Board",
        cluster=ClusterState(cluster_id=cluster_id).to_plain(),
    )
    write_backup_file(path, header, machine.snapshot())
    return header


class RestoredCluster(ProcessCluster):
    """Board nodes whose data directories are restored from ``backup`` with
    the cluster's --peers whenever its ports are picked (``ramraft
    restore``), so a start retried on new ports restores again."""

    def __init__(self, root: Path, backup: Path, **kwargs: object) -> None:
        self.backup = backup
        super().__init__(root, http=True, **kwargs)  # type: ignore[arg-type]

    def pick_ports(self) -> None:
        super().pick_ports()
        for node_id in self.ids:
            code = main(
                [
                    "restore", str(self.backup), "--data-dir", str(self.data_dir(node_id)),
                    "--id", node_id, "--peers", self.peers, "--force",
                ]
            )  # fmt: skip
            assert code == 0, f"ramraft restore of {node_id} failed"

    def argv(self, node_id: str) -> list[str]:
        return [*super().argv(node_id), "--app", BOARD]

    def cluster_id(self) -> str:
        status = self.status(self.wait_for_leader())
        assert status is not None
        return status.cluster_id

    def notes(self, node_id: str) -> list[str]:
        reply = http(self.http[node_id], "GET", "/app/notes")
        assert reply.status == 200, reply.body
        return list(reply.json()["notes"])

"""``ramraft restore``: a data directory of a NEW cluster, from a backup file.

    ramraft restore cluster.backup --data-dir /var/lib/ramraft/a --id a \\
        --peers a=10.0.0.1:7001,b=10.0.0.2:7001,c=10.0.0.3:7001

Every node of the new cluster is restored from the same file with the same
--peers. Each gets the backup's state as a snapshot at the backup's index,
with the --peers as voters, and a cluster record whose id is derived from the
file's checksum and the --peers list (or given with --cluster-id): the
restored nodes accept each other, and refuse nodes of the old cluster (whose
id differs), as those refuse them.

What a restore never does:

- overwrite a directory that holds anything without --force (a ``LOCK``
  file and ``lost+found`` are nothing), nor one a running node holds (its
  ``LOCK``);
- leave a half-written directory. The new contents are written into a
  staging directory INSIDE the data directory (the data directory may be a
  volume's mount point, where nothing can be renamed over it, and its parent
  may be read-only, as in a pod), fsynced, and then swapped in by renames:
  the old contents moved aside, the new ones moved in, the old ones deleted.
  A failure before the end (a damaged file, a full disk, an I/O error) puts
  the directory back as it was and removes the staging directory (and the
  data directory, if the restore created it). The swap is several renames,
  not one, so it happens under a ``RESTORING`` marker file: if the process is
  killed during it, no node starts from the directory (storage/datadir.py),
  and running the restore again (no --force needed) finishes the job. What a
  killed restore leaves (``.restore-*`` directories, the old contents among
  them) is removed by the next restore into the same directory.

The backup's blobs are written into the new data directory's ``blobs/`` (so
they move in with the rest), or into --blob-dir when the node keeps its
blobs elsewhere: there each file is written whole (temporary file, fsync,
rename) before the swap, and one already present is kept (a file named by
its digest holds those bytes); a blob the restored catalog does not name is
collected by the new cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from ramraft.server.blobs.backup import restore_blobs
from ramraft.server.machines.cluster import ClusterState, valid_cluster_id
from ramraft.server.storage.backup import BackupError, BackupHeader, BackupReader
from ramraft.tools.backup import fsync_dir, quiet_logs, wrap_description

__all__ = ["RestoreError", "prepare_data_dir", "restored_cluster_id"]

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_ERROR = 3

STAGING_PREFIX = ".restore-"
# Never a node's data: the lock file, the restore's own marker, and the
# directory ext4 puts at the root of a fresh volume (root's, not ours to move).
_NOT_CONTENT = frozenset({"LOCK", "RESTORING", "lost+found"})


class RestoreError(Exception):
    """The restore could not be done; one line naming why."""


def restored_cluster_id(checksum: bytes, peers: dict[str, str]) -> str:
    """The id of the cluster restored from the backup whose checksum is
    ``checksum`` with ``peers``: the same on every node restored from the
    same file with the same --peers (in any order)."""
    members = ",".join(f"{k}={v}" for k, v in sorted(peers.items()))
    return "r-" + hashlib.sha256(checksum + members.encode()).hexdigest()[:16]


def _cluster_record(header: BackupHeader, cluster_id: str) -> ClusterState:
    """The new cluster's record: the backup's versions and hold, a new id,
    and no divergence alarm (that was about the old cluster's nodes)."""
    state = ClusterState.from_plain(header.cluster or None)
    return ClusterState(
        cluster_id=cluster_id,
        app_version=state.app_version,
        kv_version=state.kv_version,
        hold=state.hold,
    )


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _write_storage(
    staging: Path,
    reader: BackupReader,
    header: BackupHeader,
    peers: dict[str, str],
    record: ClusterState,
) -> None:
    """A node's storage in ``staging``: the state as a snapshot at the
    backup's index, the log empty after it, the hard state at its term."""
    from ramraft.consensus import NO_NODE, ConfState, HardState, SnapshotMeta
    from ramraft.server.storage import open_storage, write_snapshot_header

    meta = SnapshotMeta(header.index, header.term, ConfState(frozenset(peers)))
    log_store, snapshots = open_storage(str(staging))
    try:
        log_store.load()
        with snapshots.create(meta) as writer:
            write_snapshot_header(writer, dict(peers), cluster=record.to_plain())
            for piece in reader.chunks():
                writer.write(piece)
            writer.commit()
        log_store.save(snapshot=meta, hard_state=HardState(header.term, NO_NODE, header.index))
    finally:
        log_store.close()


def check_member(node_id: str, peers: dict[str, str]) -> None:
    """RestoreError unless ``node_id`` is one of the new cluster's ``peers``."""
    if node_id not in peers:
        raise RestoreError(f"--id {node_id} is not one of the --peers ({', '.join(peers)})")


def prepare_data_dir(
    path: str | os.PathLike[str],
    data_dir: Path,
    node_id: str,
    peers: dict[str, str],
    cluster_id: str = "",
    force: bool = False,
    blob_dir: Path | None = None,
) -> tuple[BackupHeader, str]:
    """Make ``data_dir`` hold the backup's state for node ``node_id`` of the
    new cluster ``peers`` (see the module docstring for what it never does),
    and its blobs ``blob_dir`` (default: the data directory's ``blobs/``).
    Returns (the backup's header, the new cluster's id). Raises BackupError
    (the file), RestoreError (the directory) or OSError."""
    from ramraft.server.storage.datadir import LOCK_FILE, RESTORE_MARKER, DataDirLock
    from ramraft.server.storage.errors import StorageError

    check_member(node_id, peers)
    with BackupReader(path) as reader:
        reader.verify()
        header = reader.header
        cluster_id = cluster_id or restored_cluster_id(reader.checksum(), peers)
        record = _cluster_record(header, cluster_id)

        created = not data_dir.exists()
        data_dir.mkdir(parents=True, exist_ok=True)
        had_lock_file = (data_dir / LOCK_FILE).exists()
        lock = DataDirLock(str(data_dir))
        try:
            lock.acquire()
        except StorageError as exc:
            raise RestoreError(str(exc)) from None
        try:
            for leftover in data_dir.glob(f"{STAGING_PREFIX}*"):
                shutil.rmtree(leftover, ignore_errors=True)  # of a restore that was killed
            unfinished = (data_dir / RESTORE_MARKER).exists()
            old = sorted(e for e in data_dir.iterdir() if e.name not in _NOT_CONTENT)
            if old and not force and not unfinished:
                raise RestoreError(
                    f"--data-dir {data_dir} is not empty (it holds "
                    f"{', '.join(e.name for e in old[:4])}{', ...' if len(old) > 4 else ''}); "
                    "restore never overwrites a data directory unless asked (--force)"
                )
            staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=data_dir))
            try:
                _write_storage(staging, reader, header, peers, record)
                if header.blobs:
                    restore_blobs(
                        reader.blob_section(), header.blobs["count"], blob_dir or staging / "blobs"
                    )
                fsync_dir(staging)
                _swap_in(data_dir, staging, old)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        except BaseException:
            if created:
                shutil.rmtree(data_dir, ignore_errors=True)
            elif not had_lock_file and not (data_dir / RESTORE_MARKER).exists():
                with contextlib.suppress(FileNotFoundError):
                    (data_dir / LOCK_FILE).unlink()
            raise
        finally:
            lock.release()
    return header, cluster_id


def _swap_in(data_dir: Path, staging: Path, old: list[Path]) -> None:
    """Replace ``old`` (entries of ``data_dir``) with ``staging``'s
    contents: the old ones are moved aside into a directory of their own,
    the new ones moved in, and only then the old ones deleted. A failure on
    the way moves everything back. A process killed on the way leaves the
    RESTORING marker (no node starts from the directory) and the old
    contents in ``.restore-old-*``, which a new restore removes."""
    from ramraft.server.storage.datadir import RESTORE_MARKER

    marker = data_dir / RESTORE_MARKER
    aside = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}old-", dir=data_dir))
    new = sorted(e for e in staging.iterdir() if e.name not in _NOT_CONTENT)
    moved_aside: list[Path] = []
    moved_in: list[Path] = []
    with open(marker, "wb") as f:
        f.write(b"ramraft restore in progress; if no restore runs, run it again to finish\n")
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(data_dir)
    try:
        for entry in old:
            os.replace(entry, aside / entry.name)
            moved_aside.append(entry)
        for entry in new:
            os.replace(entry, data_dir / entry.name)
            moved_in.append(data_dir / entry.name)
        fsync_dir(data_dir)
    except BaseException as exc:
        try:
            for entry in moved_in:
                _remove(entry)
            for entry in moved_aside:
                os.replace(aside / entry.name, entry)
            aside.rmdir()
            marker.unlink()
            fsync_dir(data_dir)
        except OSError as undo:
            raise RestoreError(
                f"the restore failed ({_reason(exc)}) and so did putting {data_dir} back "
                f"({_reason(undo)}): it is marked unfinished ({RESTORE_MARKER}) and no node "
                f"starts from it; its old contents are in {aside.name}; run the restore again"
            ) from exc
        if isinstance(exc, OSError):
            raise RestoreError(
                f"the restore into {data_dir} failed ({_reason(exc)}); the directory is as it was"
            ) from exc
        raise
    marker.unlink()
    fsync_dir(data_dir)
    shutil.rmtree(aside, ignore_errors=True)  # what is left goes with the next restore


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__


def _from_env(value: str | None, variable: str) -> str | None:
    return value if value is not None else (os.environ.get(variable) or None)


def run_restore(args: argparse.Namespace) -> int:
    from ramraft.server.config import ConfigError, parse_peers

    quiet_logs()
    given = {
        "--data-dir": _from_env(args.data_dir, "RAMRAFT_DATA_DIR"),
        "--id": _from_env(args.id, "RAMRAFT_ID"),
        "--peers": _from_env(args.peers, "RAMRAFT_PEERS"),
    }
    missing = [flag for flag, value in given.items() if value is None]
    if missing:
        names = ", ".join(f"{m} (or RAMRAFT_{m[2:].upper().replace('-', '_')})" for m in missing)
        print(f"ramraft: error: give {names}", file=sys.stderr)
        return EXIT_BAD_INPUT
    data_dir, node_id, peer_list = (str(v) for v in given.values())
    cluster_id = _from_env(args.cluster_id, "RAMRAFT_CLUSTER_ID") or ""
    blob_dir = _from_env(args.blob_dir, "RAMRAFT_BLOB_DIR")
    try:
        peers = parse_peers(peer_list)
    except ConfigError as exc:
        print(f"ramraft: error: {exc}", file=sys.stderr)  # it names --peers
        return EXIT_BAD_INPUT
    try:
        check_member(node_id, peers)  # bad usage: before the file is opened
    except RestoreError as exc:
        print(f"ramraft: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if Path(data_dir).exists() and not Path(data_dir).is_dir():
        print(f"ramraft: error: --data-dir {data_dir}: is a file, not a directory", file=sys.stderr)
        return EXIT_BAD_INPUT
    if cluster_id and not valid_cluster_id(cluster_id):
        print(
            f"ramraft: error: --cluster-id {cluster_id!r}: 1-64 letters, digits, '.', '_' or '-'",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    try:
        header, cluster_id = prepare_data_dir(
            args.file,
            Path(data_dir),
            node_id,
            peers,
            cluster_id,
            args.force,
            Path(blob_dir) if blob_dir else None,
        )
    except (BackupError, RestoreError) as exc:
        print(f"ramraft: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        print(f"ramraft: error: --data-dir {data_dir}:{where} {exc.strerror}", file=sys.stderr)
        return EXIT_ERROR
    blobs = f" with {header.blobs['count']} blobs" if header.blobs else ""
    print(
        f"restored index {header.index} (term {header.term}){blobs} into {data_dir} as node "
        f"{node_id} of the new cluster {cluster_id}"
    )
    app = " --app MODULE:FACTORY" if header.model else ""
    print(
        f"start it with: ramraft node --id {node_id} --peers {peer_list} --data-dir {data_dir}{app}"
    )
    if header.model:
        print(
            f"(the backup holds the application model {header.model}: start every node with "
            "the application's --app)"
        )
    return EXIT_OK


def register(sub: Any) -> None:
    r = sub.add_parser(
        "restore",
        help="prepare a data directory of a NEW cluster from a backup file",
        description=wrap_description(
            "Write a data directory from which `ramraft node` starts with exactly the backup's "
            "state, as a member of a new cluster. Restore every node of the new cluster from "
            "the same file with the same --peers: they get the same cluster id (derived from the "
            "file and --peers, or --cluster-id), accept each other, and refuse nodes of the old "
            "cluster. A non-empty --data-dir is never overwritten without --force, nor one a "
            "running node holds; the new contents are written aside inside --data-dir and moved "
            "into place, never left half-written. The backup holds the state machine (keys, "
            "values, the application model, sessions) and the blobs its catalog names, "
            "written into --data-dir/blobs or --blob-dir."
        ),
        epilog=(
            "example:\n"
            "  ramraft restore cluster.backup --data-dir /var/lib/ramraft/a --id a \\\n"
            "      --peers a=10.0.0.1:7001,b=10.0.0.2:7001,c=10.0.0.3:7001\n"
            "--data-dir, --id, --peers, --cluster-id and --blob-dir default to the node's\n"
            "variables RAMRAFT_DATA_DIR, RAMRAFT_ID, RAMRAFT_PEERS, RAMRAFT_CLUSTER_ID and\n"
            "RAMRAFT_BLOB_DIR (so a restore Job can share a pod's environment).\n"
            "exit status: 0 done; 2 bad usage; 3 the file is damaged or the directory unusable"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("file", help="the backup file")
    r.add_argument("--data-dir", help="the new node's data directory (env RAMRAFT_DATA_DIR)")
    r.add_argument("--id", help="the new node's id, one of --peers (env RAMRAFT_ID)")
    r.add_argument(
        "--peers",
        help="the new cluster's members: ID=HOST:PORT,... (all nodes; env RAMRAFT_PEERS)",
    )
    r.add_argument(
        "--cluster-id",
        help="name the new cluster (env RAMRAFT_CLUSTER_ID; default: derived from the file "
        "and --peers)",
    )
    r.add_argument("--force", action="store_true", help="replace a non-empty --data-dir")
    r.add_argument(
        "--blob-dir",
        help="where the node keeps blobs, if not in --data-dir/blobs: its --blob-dir "
        "(env RAMRAFT_BLOB_DIR)",
    )
    r.set_defaults(func=run_restore)

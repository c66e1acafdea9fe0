"""``ramraft backup`` and ``ramraft restore``: a consistent copy of a cluster's
state off the cluster, checked, and a NEW cluster built from it.

    ramraft backup --out cluster.backup                # from any node (TLS/token options apply)
    ramraft backup --verify cluster.backup             # checksum + decode, no node needed
    ramraft restore cluster.backup --data-dir /var/lib/ramraft/a \\
        --id a --peers a=10.0.0.1:7001,b=10.0.0.2:7001,c=10.0.0.3:7001

A backup is the state machine at one committed index, taken by a node after a
linearizable read point (so it holds every write acknowledged before the
backup began), streamed over Admin.Backup and written atomically (a temporary
file, fsynced, renamed). Its format is storage/backup.py; a SHA-256 over the
whole file catches a flipped byte anywhere.

A restore prepares a data directory from which a node starts with exactly
that state; every node of the new cluster is restored from the same file with
the same --peers. The new cluster's id is derived from the file and the
--peers list (or given with --cluster-id), so its nodes accept each other and
refuse nodes of the old cluster, and the old cluster refuses them.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from ramraft.server.blobs.backup import restore_blobs, verify_blob_section
from ramraft.server.machines.cluster import ClusterState, valid_cluster_id
from ramraft.server.machines.inspect import StateSummary, inspect_state
from ramraft.server.machines.statemachine import SnapshotError
from ramraft.server.storage.backup import BackupError, BackupReader

__all__ = ["restored_cluster_id", "verify_backup"]

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_ERROR = 3


def verify_backup(path: str | os.PathLike[str], *, model: Any = None) -> tuple[Any, StateSummary]:
    """Check the checksum and decode the whole state. Returns (header,
    summary); raises BackupError with a one-line reason."""
    with BackupReader(path) as reader:
        reader.verify()
        header = reader.header
        try:
            summary = inspect_state(reader.state(), model=model)
        except SnapshotError as exc:
            raise BackupError(f"{reader.path}: the state does not decode: {exc}") from None
        if summary.index not in (0, header.index) and summary.index > header.index:
            raise BackupError(
                f"{reader.path}: the state is at index {summary.index}, the header says "
                f"{header.index}"
            )
        held = header.blobs["count"] if header.blobs else 0
        if held != summary.blobs:
            raise BackupError(
                f"{reader.path}: the state's catalog names {summary.blobs} blobs, the file "
                f"holds {held}"
            )
        if header.blobs:
            # Every blob hashes to its name (server/blobs/backup.py).
            verify_blob_section(reader.blob_section(), header.blobs["count"], header.blobs["bytes"])
    return header, summary


def restored_cluster_id(path: str | os.PathLike[str], peers: dict[str, str]) -> str:
    """The id of the cluster restored from ``path`` with ``peers``: the same
    on every node restored with the same file and the same --peers list."""
    with BackupReader(path) as reader:
        checksum = reader.checksum()
    members = ",".join(f"{k}={v}" for k, v in sorted(peers.items()))
    return "r-" + hashlib.sha256(checksum + members.encode()).hexdigest()[:16]


def _summary_json(header: Any, summary: StateSummary) -> dict[str, Any]:
    return {
        "index": header.index,
        "term": header.term,
        "cluster_id": header.cluster_id,
        "app_version": header.app_version,
        "kv_version": header.kv_version,
        "created": header.created,
        "node": header.node,
        "keys": summary.keys,
        "kv_sessions": summary.kv_sessions,
        "blobs": summary.blobs,
        "models": [
            {"name": m.name, "attributes": m.attributes, "sessions": m.sessions}
            for m in summary.models
        ],
    }


def run_verify(path: str, as_json: bool, app: str | None) -> int:
    model = None
    if app:
        from ramraft.server.hosting import AppLoadError, load_app

        try:
            model = load_app(app).model
        except AppLoadError as exc:
            print(f"ramraft: error: --app: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
    try:
        header, summary = verify_backup(path, model=model)
    except BackupError as exc:
        print(f"ramraft: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    report = _summary_json(header, summary)
    if as_json:
        print(json.dumps(report, sort_keys=True))
        return EXIT_OK
    print(f"{path}: OK (checksum matches, every byte decoded)")
    print(f"  cluster {header.cluster_id or '(unnamed)'}, index {header.index}, term {header.term}")
    print(f"  taken by {header.node} at {header.created}")
    print(f"  app version {header.app_version}, key-value version {header.kv_version}")
    print(f"  keys: {summary.keys} (sessions: {summary.kv_sessions})")
    if header.blobs:
        print(f"  blobs: {header.blobs['count']} ({header.blobs['bytes']:,} bytes, each checked)")
    for m in summary.models:
        attrs = ", ".join(f"{k}: {v}" for k, v in m.attributes.items())
        print(f"  model {m.name}: {attrs or 'no attributes'} (sessions: {m.sessions})")
    return EXIT_OK


def _cluster_record(header: Any, cluster_id: str) -> ClusterState:
    state = ClusterState.from_plain(header.cluster or None)
    return ClusterState(
        cluster_id=cluster_id,
        app_version=state.app_version,
        kv_version=state.kv_version,
        hold=state.hold,
    )


def _empty(directory: Path) -> bool:
    return not directory.exists() or not any(directory.iterdir())


def prepare_data_dir(
    path: str,
    data_dir: Path,
    node_id: str,
    peers: dict[str, str],
    cluster_id: str,
    force: bool,
    blob_dir: Path | None = None,
) -> tuple[Any, str]:
    """Write a data directory holding the backup's state as a snapshot, in a
    temporary directory next to ``data_dir``, renamed into place at the end
    (never half-written). The backup's blobs go to ``blob_dir`` (each file
    whole or not at all), by default the data directory's ``blobs/``.
    Returns (header, cluster id)."""
    from ramraft.consensus import NO_NODE, ConfState, HardState, SnapshotMeta
    from ramraft.server.storage import open_storage, write_snapshot_header

    if node_id not in peers:
        raise BackupError(f"--id {node_id} is not one of the --peers ({', '.join(peers)})")
    if not _empty(data_dir) and not force:
        raise BackupError(
            f"--data-dir {data_dir} is not empty; restore never overwrites a data directory "
            "unless asked (--force)"
        )
    with BackupReader(path) as reader:
        reader.verify()
        header = reader.header
        cluster_id = cluster_id or restored_cluster_id(path, peers)
        record = _cluster_record(header, cluster_id)
        meta = SnapshotMeta(header.index, header.term, ConfState(frozenset(peers)))
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.restore-", dir=data_dir.parent))
        try:
            log_store, snapshots = open_storage(str(staging))
            try:
                log_store.load()
                with snapshots.create(meta) as writer:
                    write_snapshot_header(writer, dict(peers), cluster=record.to_plain())
                    for piece in reader.chunks():
                        writer.write(piece)
                    writer.commit()
                log_store.save(
                    snapshot=meta, hard_state=HardState(header.term, NO_NODE, header.index)
                )
            finally:
                log_store.close()
            if header.blobs:
                restore_blobs(
                    reader.blob_section(), header.blobs["count"], blob_dir or staging / "blobs"
                )
            if data_dir.exists():
                shutil.rmtree(data_dir)
            os.replace(staging, data_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return header, cluster_id


def run_restore(args: argparse.Namespace) -> int:
    from ramraft.server.config import ConfigError, parse_peers

    try:
        peers = parse_peers(args.peers)
    except ConfigError as exc:
        print(f"ramraft: error: --peers: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.cluster_id and not valid_cluster_id(args.cluster_id):
        print(
            f"ramraft: error: --cluster-id {args.cluster_id!r}: 1-64 letters, digits, '.', "
            "'_' or '-'",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    try:
        header, cluster_id = prepare_data_dir(
            args.file,
            Path(args.data_dir),
            args.id,
            peers,
            args.cluster_id or "",
            args.force,
            Path(args.blob_dir) if args.blob_dir else None,
        )
    except BackupError as exc:
        print(f"ramraft: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"ramraft: error: --data-dir {args.data_dir}: {exc.strerror}", file=sys.stderr)
        return EXIT_ERROR
    blobs = f" with {header.blobs['count']} blobs" if header.blobs else ""
    print(
        f"restored index {header.index} (term {header.term}){blobs} into {args.data_dir} as "
        f"node {args.id} of the new cluster {cluster_id}"
    )
    print(
        f"start it with: ramraft node --id {args.id} --peers {args.peers} --data-dir "
        f"{args.data_dir}"
    )
    return EXIT_OK


# ---- taking a backup ----------------------------------------------------------------------


class _Progress:
    """A one-line progress report on a terminal (stderr), silent otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.bytes = 0
        self._shown = 0.0

    def add(self, n: int) -> None:
        import time

        self.bytes += n
        now = time.monotonic()
        if self.enabled and now - self._shown >= 0.2:
            self._shown = now
            sys.stderr.write(f"\rbackup: {self.bytes / (1 << 20):,.1f} MiB")
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 40 + "\r")
            sys.stderr.flush()


def take_backup(client: Any, out: Path, *, progress: bool = False) -> tuple[Any, int]:
    """Stream a backup from the cluster into ``out``, atomically: a
    temporary file next to it, fsynced, checked, renamed, the directory
    fsynced. Returns (info, bytes)."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    shown = _Progress(progress)
    try:
        with os.fdopen(fd, "wb") as f:

            def write(data: bytes) -> None:
                f.write(data)
                shown.add(len(data))

            info = client.backup(write)
            f.flush()
            os.fsync(f.fileno())
        shown.done()
        with BackupReader(temporary) as reader:
            reader.verify()  # what arrived is what the node checksummed
            size = reader.size
        os.replace(temporary, out)
        dir_fd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        shown.done()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return info, size


def run_backup(args: argparse.Namespace) -> int:
    from ramraft.tools.cli import json_from_args

    as_json = json_from_args(args)
    if args.verify:
        return run_verify(args.verify, as_json, args.app)
    if not args.out:
        print("ramraft: error: backup needs --out FILE (or --verify FILE)", file=sys.stderr)
        return EXIT_BAD_INPUT
    from ramraft.client.errors import RamraftError
    from ramraft.tools.cli import UsageError, client_from_args

    try:
        with client_from_args(args) as client:
            info, size = take_backup(client, Path(args.out), progress=not as_json)
    except UsageError as e:
        print(f"ramraft: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (RamraftError, BackupError) as e:
        print(f"ramraft: error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as e:
        print(f"ramraft: error: --out {args.out}: {e.strerror}", file=sys.stderr)
        return EXIT_ERROR
    report = {
        "file": str(args.out),
        "bytes": size,
        "index": info.index,
        "term": info.term,
        "cluster_id": info.cluster_id,
        "keys": info.keys,
        "node": info.node,
    }
    if as_json:
        print(json.dumps(report, sort_keys=True))
    else:
        print(
            f"{args.out}: index {info.index} (term {info.term}) of cluster "
            f"{info.cluster_id or '(unnamed)'}, {info.keys} keys, {size:,} bytes, from {info.node}"
        )
    return EXIT_OK


def register(sub: Any) -> None:
    from ramraft.tools.cli import add_client_options

    p = sub.add_parser(
        "backup",
        help="copy the cluster's state to a file (or --verify one)",
        description=(
            "Stream a consistent copy of the state machine (every key, value, application "
            "model and session, at one committed index taken after a linearizable read point) "
            "from a node into --out, atomically, with a checksum over the whole file. "
            "With --verify FILE: check the checksum and decode the whole state without a node."
        ),
        epilog=(
            "examples:\n"
            "  ramraft backup --out cluster-2026-12-05.backup\n"
            "  ramraft backup --verify cluster-2026-12-05.backup\n"
            "  ramraft backup --verify notes.backup --app examples.notes:app   # the model too\n"
            "exit status: 0 done; 2 bad usage; 3 the cluster could not answer, or the file "
            "is damaged"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_client_options(p)
    p.add_argument("--out", metavar="FILE", help="where to write the backup (atomically)")
    p.add_argument("--verify", metavar="FILE", help="check a backup file instead of taking one")
    p.add_argument(
        "--app",
        metavar="MODULE:FACTORY",
        help="with --verify: restore the model into the application's own class too",
    )
    p.set_defaults(func=run_backup)

    r = sub.add_parser(
        "restore",
        help="prepare a data directory of a NEW cluster from a backup file",
        description=(
            "Write a data directory from which `ramraft node` starts with exactly the backup's "
            "state, as a member of a new cluster. Restore every node of the new cluster from "
            "the same file with the same --peers: they get the same cluster id (derived from the "
            "file and --peers, or --cluster-id), accept each other, and refuse nodes of the old "
            "cluster. A non-empty --data-dir is never overwritten without --force; the directory "
            "is written aside and renamed into place, never left half-written."
        ),
        epilog=(
            "example:\n"
            "  ramraft restore cluster.backup --data-dir /var/lib/ramraft/a --id a \\\n"
            "      --peers a=10.0.0.1:7001,b=10.0.0.2:7001,c=10.0.0.3:7001\n"
            "exit status: 0 done; 2 bad usage; 3 the file is damaged or the directory unusable"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("file", help="the backup file")
    r.add_argument("--data-dir", required=True, help="the new node's data directory")
    r.add_argument("--id", required=True, help="the new node's id (one of --peers)")
    r.add_argument(
        "--peers", required=True, help="the new cluster's members: ID=HOST:PORT,... (all nodes)"
    )
    r.add_argument("--cluster-id", default="", help="name the new cluster (default: derived)")
    r.add_argument("--force", action="store_true", help="replace a non-empty --data-dir")
    r.add_argument(
        "--blob-dir",
        default="",
        help="where the node keeps blobs, if not in --data-dir/blobs (its --blob-dir)",
    )
    r.set_defaults(func=run_restore)

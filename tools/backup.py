"""``ramraft backup``: a consistent copy of a cluster's state off the cluster,
written atomically and checked; ``ramraft backup --verify`` checks a file.

    ramraft backup --out cluster.backup                # from any node (TLS/token options apply)
    ramraft backup --out /backups/ --keep 7            # a new file in /backups/, keep the last 7
    ramraft backup --verify cluster.backup             # checksum + decode, no node needed

A backup is the state machine at one committed index, taken by a node after a
linearizable read point (so it holds every write acknowledged before the
backup began), streamed over Admin.Backup and written atomically (a temporary
file, fsynced, checked, renamed, the directory fsynced). Its format is
storage/backup.py; a SHA-256 over the whole file catches a flipped byte
anywhere. ``ramraft restore`` (tools/restore.py) builds a new cluster from it.

A backup holds the state machine: every key and value, the application
model, the exactly-once session tables, the cluster record's versions, and
after the state the blobs its catalog names (each hashed by --verify); a
backup whose blob no node can send is refused by name.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from ramraft.server.blobs.backup import verify_blob_section
from ramraft.server.machines.inspect import StateSummary, inspect_state
from ramraft.server.machines.statemachine import SnapshotError
from ramraft.server.storage.backup import BackupError, BackupHeader, BackupReader, BackupWriter

__all__ = [
    "backup_name",
    "fsync_dir",
    "prune_backups",
    "quiet_logs",
    "take_backup",
    "verify_backup",
    "wrap_description",
    "write_backup_file",
]

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_ERROR = 3

# The names `--out DIR/` gives: UTC time first, so that names sort by age.
_NAME = re.compile(r"^ramraft-\d{8}T\d{6}Z-[A-Za-z0-9._-]+-\d+\.backup$")
_PARTIAL_MAX_AGE = 3600.0  # a temporary file this old belongs to a backup that died


def quiet_logs() -> None:
    """The machines log what they restore and write (useful in a node's
    log); a command line tool shows warnings only, on stderr, so that
    --json's stdout is the one document."""
    from ramraft.server.logs import configure_logging

    configure_logging(os.environ.get("RAMRAFT_LOG_LEVEL") or "warning", cache=False)


# ---- checking a file --------------------------------------------------------------------


def verify_backup(
    path: str | os.PathLike[str], *, model: Any = None
) -> tuple[BackupHeader, StateSummary]:
    """Check the checksum and decode the whole state. Returns (header,
    summary); raises BackupError with a one-line reason."""
    with BackupReader(path) as reader:
        reader.verify()
        header = reader.header
        state = reader.state()
        try:
            summary = inspect_state(state, model=model)
        except SnapshotError as exc:
            raise BackupError(f"{reader.path}: the state does not decode: {exc}") from None
        if state.read(1):
            raise BackupError(f"{reader.path}: bytes after the end of the state")
        # Membership entries move the log's index but not the machines':
        # the state may be older than the header's index, never newer.
        if summary.index > header.index:
            raise BackupError(
                f"{reader.path}: the state is at index {summary.index}, the header says "
                f"{header.index}"
            )
        names = [m.name for m in summary.models]
        if names != ([header.model] if header.model else []):
            raise BackupError(
                f"{reader.path}: the header names model {header.model or '(none)'}, the state "
                f"holds {', '.join(names) or 'none'}"
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


def _summary_json(header: BackupHeader, summary: StateSummary) -> dict[str, Any]:
    return {
        "index": header.index,
        "term": header.term,
        "cluster_id": header.cluster_id,
        "app_version": header.app_version,
        "kv_version": header.kv_version,
        "created": header.created,
        "node": header.node,
        "ramraft_version": header.ramraft_version,
        "keys": summary.keys,
        "kv_sessions": summary.kv_sessions,
        "blobs": summary.blobs,
        "models": [
            {"name": m.name, "attributes": m.attributes, "sessions": m.sessions}
            for m in summary.models
        ],
    }


def run_verify(path: str, as_json: bool, app: str | None, app_path: str = ".") -> int:
    model = None
    if app:
        from ramraft.server.hosting import AppLoadError
        from ramraft.tools.node_cli import load_app_from_args

        try:
            application = load_app_from_args(argparse.Namespace(app=app, app_path=app_path))
            assert application is not None
            model = application.model
        except AppLoadError as exc:
            print(f"ramraft: error: {' '.join(str(exc).split())}", file=sys.stderr)  # names --app
            return EXIT_BAD_INPUT
    try:
        header, summary = verify_backup(path, model=model)
    except BackupError as exc:
        print(f"ramraft: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_ERROR
    supported = type(model).app_version if model is not None else None
    if supported is not None and header.app_version > supported:
        # A node with this code would halt on this state (as one does at an
        # entry of a newer version): the model's class may not even read it.
        print(
            f"ramraft: error: the backup's cluster runs app version {header.app_version}; "
            f"the code of --app {app} supports up to version {supported}: verify and restore "
            "it with the code that runs the cluster",
            file=sys.stderr,
        )
        return EXIT_ERROR
    report = _summary_json(header, summary)
    if as_json:
        print(json.dumps(report, sort_keys=True))
        return EXIT_OK
    print(f"{path}: OK (checksum matches, every byte decoded)")
    print(f"  cluster {header.cluster_id or '(unnamed)'}, index {header.index}, term {header.term}")
    print(f"  taken by {header.node} at {header.created} (ramraft {header.ramraft_version})")
    print(f"  app version {header.app_version}, key-value version {header.kv_version}")
    print(f"  keys: {summary.keys} (sessions: {summary.kv_sessions})")
    if header.blobs:
        print(f"  blobs: {header.blobs['count']} ({header.blobs['bytes']:,} bytes, each checked)")
    for m in summary.models:
        attrs = ", ".join(f"{k}: {v}" for k, v in m.attributes.items())
        sizes = f"{attrs} (items in each; 1 for a single value)" if attrs else "no attributes"
        print(f"  model {m.name}: {sizes} (sessions: {m.sessions})")
    return EXIT_OK


# ---- taking a backup ----------------------------------------------------------------------


def write_backup_file(path: str | os.PathLike[str], header: BackupHeader, job: Any) -> int:
    """Write a backup file of a machine's snapshot ``job`` without a node
    (tests and benchmarks build states this way); returns its size. Not
    atomic: for files no cluster depends on yet."""
    with open(path, "wb") as f:
        writer = BackupWriter(f, header)
        job.write_to(writer)
        size = writer.finish()
        f.flush()
        os.fsync(f.fileno())
    return size


class _Progress:
    """A one-line progress report on a terminal (stderr), silent otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.bytes = 0
        self.what = "backup"
        self._started = time.monotonic()
        self._shown = 0.0

    def begin(self, info: Any) -> None:
        self.what = f"backup of index {info.index} ({info.keys:,} keys) from {info.node}"

    def add(self, n: int) -> None:
        self.bytes += n
        now = time.monotonic()
        if self.enabled and now - self._shown >= 0.2:
            self._shown = now
            rate = self.bytes / max(now - self._started, 1e-3) / (1 << 20)
            sys.stderr.write(
                f"\r{self.what}: {self.bytes / (1 << 20):,.1f} MiB ({rate:,.1f} MiB/s)"
            )
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self._shown:
            sys.stderr.write("\r\x1b[K")  # clear the line: the summary follows on stdout
            sys.stderr.flush()


def backup_name(info: Any, when: datetime.datetime) -> str:
    """The file name ``--out DIR/`` gives a backup: it sorts by time."""
    cluster = info.cluster_id or "cluster"
    return f"ramraft-{when.strftime('%Y%m%dT%H%M%SZ')}-{cluster}-{info.index}.backup"


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def take_backup(
    client: Any,
    out: Path,
    *,
    into_dir: bool = False,
    progress: bool = False,
    stall_timeout: float | None = None,
) -> tuple[Any, Path, int]:
    """Stream a backup from the cluster into ``out`` (a file, or with
    ``into_dir`` a new file named by backup_name() in the directory
    ``out``), atomically: a temporary file next to it, fsynced, checked,
    renamed, the directory fsynced. Returns (info, path, bytes)."""
    out = out.resolve()
    directory = out if into_dir else out.parent
    directory.mkdir(parents=True, exist_ok=True)
    prefix = ".ramraft-" if into_dir else f".{out.name}."
    fd, temporary = tempfile.mkstemp(prefix=prefix, suffix=".partial", dir=directory)
    shown = _Progress(progress)
    try:
        with os.fdopen(fd, "wb") as f:

            def write(data: bytes) -> None:
                f.write(data)
                shown.add(len(data))

            info = client.backup(write, on_info=shown.begin, stall_timeout=stall_timeout)
            f.flush()
            os.fsync(f.fileno())
        shown.done()
        with BackupReader(temporary) as reader:
            reader.verify()  # what arrived is what the node checksummed
            size = reader.size
        if into_dir:
            out = directory / backup_name(info, datetime.datetime.now(datetime.UTC))
        os.replace(temporary, out)
        fsync_dir(directory)
    except BaseException:
        shown.done()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return info, out, size


def prune_backups(directory: Path, keep: int, *, now: float | None = None) -> list[Path]:
    """Delete all but the ``keep`` newest backups named by backup_name() in
    ``directory`` (other files are never touched), and temporary files of
    backups that died over an hour ago. Returns what was deleted."""
    names = sorted(p.name for p in directory.iterdir() if _NAME.match(p.name))
    doomed = [directory / n for n in names[: max(0, len(names) - keep)]]
    cutoff = (time.time() if now is None else now) - _PARTIAL_MAX_AGE
    for partial in directory.glob(".ramraft-*.partial"):
        with contextlib.suppress(FileNotFoundError):
            if partial.stat().st_mtime < cutoff:
                doomed.append(partial)
    for path in doomed:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    if doomed:
        fsync_dir(directory)
    return doomed


def run_backup(args: argparse.Namespace) -> int:
    from ramraft.tools.cli import json_from_args

    quiet_logs()
    as_json = json_from_args(args)
    if args.verify:
        if args.out or args.keep is not None:
            print("ramraft: error: --verify takes no --out or --keep", file=sys.stderr)
            return EXIT_BAD_INPUT
        return run_verify(args.verify, as_json, args.app, args.app_path)
    if not args.out:
        print("ramraft: error: give --out FILE or DIR/ (or --verify FILE)", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.app:
        print("ramraft: error: --app goes with --verify", file=sys.stderr)
        return EXIT_BAD_INPUT
    into_dir = args.out.endswith(os.sep) or Path(args.out).is_dir()
    if args.keep is not None and (not into_dir or args.keep < 1):
        print(
            "ramraft: error: --keep N (N >= 1) needs --out DIR/ (a directory of backups)",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    from ramraft.client.errors import RamraftError
    from ramraft.tools.cli import UsageError, client_error_text, client_from_args

    started = time.monotonic()
    try:
        with client_from_args(args) as client:
            info, path, size = take_backup(
                client, Path(args.out), into_dir=into_dir, progress=not as_json
            )
        removed = prune_backups(path.parent, args.keep) if args.keep is not None else []
    except UsageError as e:
        print(f"ramraft: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RamraftError as e:
        print(f"ramraft: error: {client_error_text(args, e)}", file=sys.stderr)
        return EXIT_ERROR
    except BackupError as e:
        print(f"ramraft: error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as e:
        where = f" {e.filename}:" if e.filename and str(e.filename) != args.out else ""
        if str(e.filename).endswith(".partial"):  # the temporary file beside it
            where = f" cannot write a file in {Path(e.filename).parent}:"
        print(f"ramraft: error: --out {args.out}:{where} {e.strerror}", file=sys.stderr)
        return EXIT_ERROR
    seconds = time.monotonic() - started
    report = {
        "file": str(path),
        "bytes": size,
        "seconds": round(seconds, 3),
        "index": info.index,
        "term": info.term,
        "cluster_id": info.cluster_id,
        "keys": info.keys,
        "node": info.node,
        "removed": [str(p) for p in removed],
    }
    if as_json:
        print(json.dumps(report, sort_keys=True))
    else:
        print(
            f"{path}: index {info.index} (term {info.term}) of cluster "
            f"{info.cluster_id or '(unnamed)'}, {info.keys} keys, {size:,} bytes, from "
            f"{info.node}, in {seconds:.1f} s"
        )
        for p in removed:
            print(f"removed {p} (--keep {args.keep})")
    return EXIT_OK


def wrap_description(text: str) -> str:
    """A --help description, wrapped (RawDescriptionHelpFormatter keeps the
    epilog's lines as written, and would the description's too)."""
    return textwrap.fill(text, 78, break_on_hyphens=False)


def help_from_doc(doc: str | None) -> str:
    """A module docstring as --help text: its reStructuredText literals
    (``ramraft bench``) as a terminal shows code (`ramraft bench`)."""
    return (doc or "").replace("``", "`")


def register(sub: Any) -> None:
    from ramraft.tools.cli import add_client_options

    p = sub.add_parser(
        "backup",
        help="copy the cluster's state to a file (or --verify one)",
        description=wrap_description(
            "Stream a consistent copy of the state machine (every key, value, application "
            "model and session, at one committed index taken after a linearizable read point) "
            "from a node into --out, atomically, with a checksum over the whole file. "
            "With --verify FILE: check the checksum and decode the whole state without a node. "
            "After the state it carries every blob the state's catalog names (--verify hashes "
            "each one). Needs a token with the admin role on clusters with tokens."
        ),
        epilog=(
            "examples:\n"
            "  ramraft backup --out cluster-2026-12-05.backup\n"
            "  ramraft backup --out /backups/ --keep 7       # ramraft-<UTC time>-<cluster>-"
            "<index>.backup\n"
            "  ramraft backup --verify cluster-2026-12-05.backup\n"
            "  ramraft backup --verify notes.backup --app examples.notes:app   # the model too\n"
            "--timeout bounds the wait for the backup to begin; a large backup then takes as\n"
            "long as it needs (it fails if no data comes for 30 s, or --timeout if longer).\n"
            "Progress goes to stderr when it is a terminal; --json prints one summary.\n"
            "exit status: 0 done; 2 bad usage; 3 the cluster could not answer, or the file "
            "is damaged"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_client_options(p)
    p.add_argument(
        "--out",
        metavar="FILE|DIR/",
        help="where to write the backup (atomically); a directory gets a new file named by "
        "the time, cluster and index",
    )
    p.add_argument(
        "--keep",
        type=int,
        metavar="N",
        help="with --out DIR/: then delete all but the N newest backups there",
    )
    p.add_argument("--verify", metavar="FILE", help="check a backup file instead of taking one")
    p.add_argument(
        "--app",
        metavar="MODULE:FACTORY",
        help="with --verify: restore the model into the application's own class too",
    )
    p.add_argument(
        "--app-path",
        metavar="DIRS",
        default=os.environ.get("RAMRAFT_APP_PATH") or ".",
        help="directories to import the --app module from, ':'-separated (default: the "
        "current one; env RAMRAFT_APP_PATH)",
    )
    p.set_defaults(func=run_backup)

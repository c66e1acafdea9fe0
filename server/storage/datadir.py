"""The data directory: its lock, and open_storage() that opens everything.

Layout::

    <data_dir>/LOCK        flock()ed by the process using the directory
    <data_dir>/wal/        wal-<sequence>.log segments
    <data_dir>/snap/       snap-<index>-<term>.snap snapshots
    <data_dir>/RESTORING   present only while ``ramraft restore`` replaces the
                           directory's contents (tools/restore.py); a node
                           refuses to start from a directory that has it

The files hold the data in plaintext: directories are created 0700 and
files 0600 (the data directory itself is made 0700 when this process owns
it, also when it existed before), so only the node's user can read them.
"""

from __future__ import annotations

import errno
import fcntl
import os

import structlog

from .errors import DataDirLockedError, StorageError
from .snapshots import DEFAULT_BLOCK_SIZE, DEFAULT_KEEP, FileSnapshotStore
from .wal import DEFAULT_SEGMENT_SIZE, FileLogStore

log = structlog.get_logger(__name__)

LOCK_FILE = "LOCK"
WAL_DIR = "wal"
SNAPSHOT_DIR = "snap"
RESTORE_MARKER = "RESTORING"


class DataDirLock:
    """An exclusive flock() on ``<data_dir>/LOCK``.

    flock locks belong to the open file, so a second open in the same process
    is refused too, and the kernel drops the lock when the process dies (even
    by SIGKILL): there is no stale lock to clean up after a crash.
    """

    def __init__(self, data_dir: str) -> None:
        self.path = os.path.join(data_dir, LOCK_FILE)
        self._fd = -1

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot create the lock file {self.path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise DataDirLockedError(
                    f"data directory {os.path.dirname(self.path)} is in use by another ramraft "
                    f"process (pid {holder}, lock file {self.path}); two nodes must never share "
                    "a data directory. Stop the other process or give this one its own directory."
                ) from None
            raise StorageError(f"cannot lock {self.path}: {exc}") from exc
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"cannot write the lock file {self.path}: {exc}") from exc
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing drops the flock
            self._fd = -1

    @property
    def held(self) -> bool:
        return self._fd >= 0


def private_directory(path: str) -> None:
    """Make ``path`` 0700 if this process owns it (a data directory made
    before modes were tightened, or by a tool with a wider umask); one it
    does not own (a volume root in Kubernetes belongs to root) is left as it
    is: keep the data in a subdirectory the node creates."""
    st = os.stat(path)
    if st.st_uid == os.getuid() and st.st_mode & 0o077:
        os.chmod(path, st.st_mode & 0o700)


def open_storage(
    data_dir: str | os.PathLike[str],
    *,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    preallocate: bool = True,
    snapshot_keep: int = DEFAULT_KEEP,
    snapshot_block_size: int = DEFAULT_BLOCK_SIZE,
) -> tuple[FileLogStore, FileSnapshotStore]:
    """Lock ``data_dir`` and open its log and snapshot stores.

    Call ``log_store.load()`` next. ``log_store.close()`` releases the lock.
    Raises DataDirLockedError if another process holds the directory, and
    StorageError if it cannot be created or written.
    """
    root = os.fspath(data_dir)
    try:
        os.makedirs(root, mode=0o700, exist_ok=True)
        private_directory(root)
    except OSError as exc:
        raise StorageError(
            f"cannot create the data directory {root}: {exc.strerror or exc}. Check that the "
            "volume is mounted and writable by this process."
        ) from exc
    if not os.access(root, os.W_OK | os.X_OK):
        raise StorageError(
            f"the data directory {root} is not writable by this process (uid {os.getuid()})"
        )
    lock = DataDirLock(root)
    lock.acquire()
    if os.path.exists(os.path.join(root, RESTORE_MARKER)):
        lock.release()
        # Half old data, half restored: neither is a state any node had.
        raise StorageError(
            f"the data directory {root} holds an unfinished `ramraft restore` (it has a "
            f"{RESTORE_MARKER} file): run the restore again, or empty the directory"
        )
    try:
        snapshots = FileSnapshotStore(
            os.path.join(root, SNAPSHOT_DIR), keep=snapshot_keep, block_size=snapshot_block_size
        )
        wal_dir = os.path.join(root, WAL_DIR)
        os.makedirs(wal_dir, mode=0o700, exist_ok=True)
        log_store = FileLogStore(
            wal_dir,
            snapshots,
            segment_size=segment_size,
            preallocate=preallocate,
            on_close=lock.release,
        )
    except OSError as exc:
        lock.release()
        raise StorageError(f"cannot prepare the data directory {root}: {exc}") from exc
    except BaseException:
        lock.release()
        raise
    log.info("storage_opened", data_dir=root)
    return log_store, snapshots

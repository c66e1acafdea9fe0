"""State checks: do all nodes hold the same state? (the divergence alarm)

A state check is a log entry (machines/cluster.py, ``check``). Every node
applying it takes a view of its whole state at exactly that index and digests
it in a worker thread (machines/digest.py); :class:`StateDigests` keeps the
newest digests. The leader proposes checks (every ``check_entries`` applied
entries, and on demand: ``ramraft check``), gathers every member's digest for
the check's index (runtime/steward.py asks them over Peer.Info) and compares:

- all equal: nothing to do (an alarm that is on is cleared through the log);
- otherwise the nodes whose digest differs from the digest a strict majority
  holds are *diverged* (all of them when no digest has a majority). The leader
  raises the alarm through the log, so every node knows it: its
  ``ramraft_state_divergence`` gauge is 1, diverged nodes report not ready,
  the status page and ``ramraft status`` name them, and when a majority
  agreed, a diverged node may not lead (a diverged leader steps down). With
  no majority nobody knows which state is right: every node is named and
  not ready, but none is barred from leading, so an operator can still
  repair the cluster through it.

The comparison is :func:`compare`, a pure function.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from ramraft.server.machines.cluster import ClusterState
from ramraft.server.machines.digest import digest_job
from ramraft.server.machines.statemachine import SnapshotError, SnapshotJob, StateMachine

log = structlog.get_logger("ramraft.checks")

KEEP_DIGESTS = 16


@dataclass(frozen=True)
class Verdict:
    """What a comparison of digests at one check index found."""

    index: int
    digests: dict[str, str]
    diverged: tuple[str, ...]
    """Nodes whose digest is not the majority's (every node when no digest
    has a strict majority of the members)."""
    minority: bool = False
    """True when a majority agreed: ``diverged`` is its minority."""

    @property
    def equal(self) -> bool:
        return not self.diverged


def compare(index: int, digests: Mapping[str, str], members: int) -> Verdict:
    """Compare the digests members reported for the check at ``index``.
    ``members``: how many members the cluster has (a digest held by more than
    half of them is the state the cluster agrees on)."""
    counts = Counter(digests.values())
    majority = next((d for d, n in counts.items() if n > members // 2), None)
    if majority is None and len(counts) <= 1:
        return Verdict(index, dict(digests), ())  # equal so far, just not enough answers
    if majority is None:
        return Verdict(index, dict(digests), tuple(sorted(digests)))
    diverged = tuple(sorted(node for node, d in digests.items() if d != majority))
    return Verdict(index, dict(digests), diverged, minority=bool(diverged))


class StateDigests:
    """This node's digests of its state at state-check indexes.

    ``take(index)`` runs on the loop while the check entry is applied (the
    machine is then exactly at ``index``): it takes the view at once and
    hashes it in a worker thread. The newest KEEP_DIGESTS are kept; a digest
    that failed is recorded as an empty string (not comparable).

    A node that applies several checks in one turn (it replays its log after
    a restart, or catches up after a pause) digests only the newest of them:
    a check whose hashing has not begun when a newer one is applied is
    *superseded* (recorded as not comparable, its view closed). The leader
    compares digests only while a check is new, so the older ones are asked
    for by no one; hashing each would cost a pass over the whole state, and
    their views (at most two may be open) used to crowd out the newest, the
    one a leader may still be waiting for, with a warning on every restart."""

    def __init__(self, machine: StateMachine, cluster: Callable[[], ClusterState]) -> None:
        self.machine = machine
        self.cluster = cluster
        self.digests: dict[int, str] = {}
        self._pending: dict[int, asyncio.Task[None]] = {}
        self._unstarted: dict[int, SnapshotJob] = {}  # views whose hashing has not begun
        self.last_seconds = 0.0  # how long the newest digest took (a view, then the hashing)

    def take(self, index: int) -> None:
        started = time.monotonic()
        self._supersede(index)
        try:
            job = self.machine.snapshot()
        except SnapshotError as exc:
            log.warning("state_check_skipped", index=index, reason=str(exc))
            self._keep(index, "")
            return
        state = self.cluster()
        self._unstarted[index] = job

        async def run() -> None:
            try:
                if self._unstarted.pop(index, None) is None:
                    return  # superseded before it began
                digest = await asyncio.to_thread(digest_job, job, state)
            except Exception as exc:  # a digest is an opinion; never kill the node for it
                log.warning("state_check_failed", index=index, error=str(exc))
                digest = ""
            finally:
                self._pending.pop(index, None)
            self.last_seconds = time.monotonic() - started
            self._keep(index, digest)

        self._pending[index] = asyncio.get_running_loop().create_task(run(), name="digest")

    def _supersede(self, newer: int) -> None:
        for index, job in self._unstarted.items():
            job.close()
            self._keep(index, "")
            log.debug("state_check_superseded", index=index, newer=newer)
        self._unstarted.clear()

    def _keep(self, index: int, digest: str) -> None:
        self.digests[index] = digest
        for old in sorted(self.digests)[:-KEEP_DIGESTS]:
            del self.digests[old]

    def get(self, index: int) -> str | None:
        """The digest at ``index``; None if not (yet) known here."""
        return self.digests.get(index)

    async def close(self) -> None:
        for task in list(self._pending.values()):
            task.cancel()
        self._pending.clear()
        for job in self._unstarted.values():
            job.close()
        self._unstarted.clear()

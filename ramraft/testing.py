"""Testing an application without a database: a pytest plugin.

Installed with ramraft (entry point ``pytest11``), so every project that has
ramraft installed gets the ``ramraft_cluster`` fixture::

    def test_every_node_counts(ramraft_cluster):
        cluster = ramraft_cluster(Counter)        # three nodes, in this process
        assert cluster.run(cluster.model().add(2)) == 2
        cluster.kill(cluster.leader())
        assert cluster.run(cluster.model().add(3)) == 5

``ramraft_cluster(factory, nodes=3, seed=None, virtual=True, faults=None,
timing=None, options=None)`` starts ``factory`` (what ``--app`` names: a function or class
returning an ``Application`` or a ``ReplicatedModel``) on a cluster inside the
test process (``ramraft.server.inprocess.ClusterHarness``): the real Raft
runtime, state machines, background jobs and event feed of every node, over
an in-memory network and storage (``from ramraft.testing import
ClusterHarness, Faults, Timing`` for type hints and faults). Helpers: ``run``
(await a command),
``model``/``models`` (a node's copy, every node's), ``kill``/``restart``,
``partition``/``heal``, ``transfer_leadership``, ``wait_converged``,
``sleep``/``now`` (the cluster's clock).

By default the cluster runs on virtual time: no threads, no real waiting
(an election timeout, a day of a background job's schedule, take what their
code takes to run), the same run for the same seed. A failing test's report
names its seed; ``--ramraft-seed N`` runs it again. ``virtual=False`` runs on
a normal event loop and real time instead.

This module is loaded by pytest in every project with ramraft installed, so
it imports nothing of ramraft until the fixture is used.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ramraft.server.inprocess import ClusterHarness, Faults, Timing

__all__ = ["ClusterHarness", "Faults", "Timing", "ramraft_cluster"]

SEEDS = pytest.StashKey[list[int]]()
_LAZY = ("ClusterHarness", "Faults", "Timing")


def __getattr__(name: str) -> Any:
    """``from ramraft.testing import Faults``: loaded when first asked for."""
    if name not in _LAZY:
        raise AttributeError(f"module 'ramraft.testing' has no attribute {name!r}")
    from ramraft.server import inprocess

    return getattr(inprocess, name)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ramraft", "ramraft in-process clusters")
    group.addoption(
        "--ramraft-seed",
        type=int,
        default=None,
        help="seed of the ramraft_cluster fixture's clusters (a failing test's report names "
        "the seed it ran with)",
    )


@pytest.fixture
def ramraft_cluster(request: pytest.FixtureRequest) -> Iterator[Callable[..., ClusterHarness]]:
    """A function that starts an application on an in-process cluster and
    returns its ``ClusterHarness``; every cluster is closed after the test."""
    chosen = request.config.getoption("--ramraft-seed", None)
    base = int(chosen) if chosen is not None else random.getrandbits(32)
    made: list[ClusterHarness] = []
    seeds = request.node.stash.setdefault(SEEDS, [])

    def make(
        factory: Callable[[], Any],
        *,
        nodes: int = 3,
        seed: int | None = None,
        virtual: bool = True,
        faults: Any = None,
        timing: Any = None,
        options: dict[str, Any] | None = None,
    ) -> ClusterHarness:
        from ramraft.server.inprocess import ClusterHarness, Timing

        run_seed = seed if seed is not None else base + len(made)
        if seed is None:
            seeds.append(base)
        cluster = ClusterHarness(
            factory,
            nodes=nodes,
            seed=run_seed,
            virtual=virtual,
            faults=faults,
            timing=timing if timing is not None else Timing(),
            options=options,
        )
        made.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            cluster.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failing test's report names its clusters' seed."""
    report = yield
    seeds = item.stash.get(SEEDS, [])
    if report.failed and seeds:
        report.sections.append(
            (
                "ramraft",
                f"in-process cluster seed {seeds[0]}: replay with --ramraft-seed {seeds[0]}",
            )
        )
    return report

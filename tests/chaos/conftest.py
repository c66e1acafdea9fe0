"""Fixtures for tests that need the network-namespace lab (root, iproute2, nftables)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from tests.chaos.netns import ChaosNet, sweep, unsupported_reason
from tests.needs import NOT_INSTALLED

_support: list[str | None] = []


def chaos_unsupported() -> str | None:
    """Why the lab cannot run here (cached for the session), or None."""
    if not _support:
        _support.append(unsupported_reason())
    return _support[0]


@pytest.fixture(scope="session")
def chaos_support() -> None:
    """Skip unless the lab can be built; then remove leftovers of crashed runs."""
    reason = chaos_unsupported()
    if reason is not None:
        # An install's reason keeps its prefix (tests/needs.py: a failure in CI).
        pytest.skip(
            reason if reason.startswith(NOT_INSTALLED) else f"chaos lab unavailable: {reason}"
        )
    sweep()


@pytest.fixture
def chaos_net(chaos_support: None, request: pytest.FixtureRequest) -> Iterator[ChaosNet]:
    """Three nodes (ramraft-0..2) and a client, in namespace "default".

    Logs and data dirs are in a temp dir the lab removes; when the test fails
    the processes' logs are written to stderr first.
    """
    with ChaosNet() as net:
        yield net
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            for name, text in net.logs():
                sys.stderr.write(f"----- {name} log -----\n{text[-4000:]}\n")


@pytest.fixture
def lab_net(chaos_support: None, request: pytest.FixtureRequest) -> Iterator[ChaosNet]:
    """Like chaos_net, with the test process on the bridge (host_access), so
    it can watch the nodes (status, health) at their addresses."""
    with ChaosNet(host_access=True) as net:
        yield net
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            for name, text in net.logs():
                sys.stderr.write(f"----- {name} log -----\n{text[-6000:]}\n")

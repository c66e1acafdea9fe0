"""Suite-wide fixtures and options.

- ``@pytest.mark.slow`` marks the long variant (a soak) of a test that also
  runs in a bounded form; it is skipped unless ``--run-slow`` is given or
  ``RAMRAFT_SLOW=1`` is set, so CI runs every bounded test and no soak.
- In CI (``CI=true``) a skip for something an install fixes is a failure
  (tests/needs.py): .ci/run installs everything the tests need.
- The tests run in a random order (pytest-randomly, a dev dependency), so a
  test that needs another one to run first fails at once. The seed is printed
  at the end of every run; ``--randomly-seed=N`` replays that order (it also
  seeds ``random`` the same way before each test), ``-p no:randomly`` turns
  it off.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator

import pluggy
import pytest
import structlog

from tests.needs import NOT_INSTALLED, in_ci

SLOW_ENV = "RAMRAFT_SLOW"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow",
        action="store_true",
        default=False,
        help=f"also run the tests marked slow (soaks); or set {SLOW_ENV}=1",
    )


def _run_slow(config: pytest.Config) -> bool:
    return bool(config.getoption("--run-slow")) or os.environ.get(SLOW_ENV, "") not in ("", "0")


# A soak runs for as long as it is told (minutes, by default 30 for the
# chaos soak): pyproject's per-test timeout (600 s) would end it midway.
# A soak without a timeout of its own gets this one instead.
SOAK_TIMEOUT_SECONDS = 3 * 3600


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _run_slow(config):
        for item in items:
            if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
                item.add_marker(pytest.mark.timeout(SOAK_TIMEOUT_SECONDS))
        return
    skip = pytest.mark.skip(
        reason=f"slow (a soak; its bounded form runs by default): run with --run-slow "
        f"or {SLOW_ENV}=1"
    )
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """Print the order seed at the end, after the durations and the short
    summary (just before pytest's count line), where it is seen even with
    -q and after a failure (pytest-randomly puts it only in the header,
    which -q hides)."""
    seed = getattr(config.option, "randomly_seed", None)
    if isinstance(seed, int):
        terminalreporter.write_line(f"random test order: replay it with --randomly-seed={seed}")


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """Tests that run the CLI in-process configure structlog with the stream
    pytest captured for that test; once that stream is closed, a later
    test's log line would fail. Start every test from structlog's defaults."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pluggy.Result[pytest.TestReport]]:
    """Keeps each phase's report on the item (``item.rep_call``: fixtures that
    print logs when the test failed), and in CI makes a skip for something an
    install fixes a failure (tests/needs.py)."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
    if report.skipped and in_ci() and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2]).removeprefix("Skipped: ")
        if reason.startswith(NOT_INSTALLED):
            report.outcome = "failed"
            report.longrepr = f"skipped in CI, but .ci/run must install what it needs: {reason}"

"""The client library logs as Python libraries do: through the standard
``logging`` module, under ``ramraft.client``, with a NullHandler. An
application that configured no logging sees nothing on stdout or stderr, even
while the client retries; one that did gets the retries at DEBUG.

The application runs in a subprocess (a fresh interpreter: nothing configured
by pytest or an earlier test) against fake nodes in this process."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import grpc

import ramraft.client  # noqa: F401  (attaches the handler)
from tests.client.fake_server import FakeServer, dead_address

APP = """
import asyncio
import logging
import sys

if sys.argv[3] == "configured":
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)

from ramraft import AsyncClient, Client

endpoints = sys.argv[1] + "," + sys.argv[2]  # a stopped node, then a live one

with Client(endpoints, timeout=20) as c:
    c.put("sync", b"1")
    assert c.get("sync") == b"1"


async def main() -> None:
    async with AsyncClient(endpoints, timeout=20) as c:
        await c.put("async", b"2")
        assert await c.get("async") == b"2"


asyncio.run(main())
# The library must not pull in the node's logging stack.
sys.exit(3 if "structlog" in sys.modules else 0)
"""


def _run_app(tmp_path: Path, server: FakeServer, mode: str) -> subprocess.CompletedProcess[str]:
    # The live node also refuses its first calls, so the clients retry
    # whatever endpoint they start from.
    server.node.fail_next(4, grpc.StatusCode.UNAVAILABLE)
    app = tmp_path / "app.py"
    app.write_text(APP)
    return subprocess.run(
        [sys.executable, str(app), dead_address(), server.address, mode],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_an_application_without_logging_config_sees_no_output(
    tmp_path: Path, server: FakeServer
) -> None:
    done = _run_app(tmp_path, server, "unconfigured")
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert done.stdout == ""
    assert done.stderr == ""
    # The calls did retry: four refused attempts before the successful ones.
    assert len(server.node.calls) >= 4 + 4


def test_an_application_that_configures_logging_gets_the_retries(
    tmp_path: Path, server: FakeServer
) -> None:
    """The control: the same program, with logging.basicConfig(DEBUG), shows
    the retries on stderr under the ramraft.client logger (and still nothing
    on stdout), so the silence above is the NullHandler's doing."""
    done = _run_app(tmp_path, server, "configured")
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert done.stdout == ""
    retries = [line for line in done.stderr.splitlines() if "retrying" in line]
    assert retries, done.stderr
    assert all(line.startswith("DEBUG:ramraft.client:retrying ") for line in retries), retries
    assert any("UNAVAILABLE" in line for line in retries)


def test_the_library_logger_has_a_null_handler() -> None:
    """Without it, a WARNING the library logs would reach logging's
    last-resort handler (stderr) in an application that configured nothing."""
    handlers = logging.getLogger("ramraft.client").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers), handlers

"""Suite-wide fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """Tests that run the CLI in-process configure structlog with the stream
    pytest captured for that test; once that stream is closed, a later
    test's log line would fail. Start every test from structlog's defaults."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()

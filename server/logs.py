"""Structured logging: JSON lines when stderr is not a terminal (containers,
CI, log shippers), coloured key=value lines when a person is watching."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import structlog

log = structlog.get_logger("ramraft")


def configure_logging(
    level: str | None = None, *, json: bool | None = None, cache: bool = True
) -> None:
    """``cache=False`` for short-lived commands run in-process too (tests):
    a module's logger cached on first use keeps the stream of that moment
    (a test's captured stderr, closed after it) for the rest of the process."""
    level_name = (level or os.environ.get("RAMRAFT_LOG_LEVEL") or "info").upper()
    numeric = logging.getLevelNamesMapping().get(level_name, logging.INFO)
    if json is None:
        json = not sys.stderr.isatty()
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=cache,
    )


class RateLimitedLog:
    """Warnings that a flood cannot turn into a log flood: at most ``burst``
    per ``seconds`` per event; the next one that gets through says how many
    were suppressed."""

    def __init__(self, burst: int = 20, seconds: float = 10.0) -> None:
        self.burst = burst
        self.seconds = seconds
        self._windows: dict[str, tuple[float, int, int]] = {}  # event -> (start, logged, dropped)

    def warning(self, event: str, **fields: Any) -> None:
        now = time.monotonic()
        start, logged, dropped = self._windows.get(event, (now, 0, 0))
        if now - start >= self.seconds:
            start, logged = now, 0
        if logged >= self.burst:
            self._windows[event] = (start, logged, dropped + 1)
            return
        if dropped:
            fields["suppressed"] = dropped
        self._windows[event] = (start, logged + 1, 0)
        log.warning(event, **fields)

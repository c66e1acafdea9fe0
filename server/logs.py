"""Structured logging: JSON lines when stderr is not a terminal (containers,
CI, log shippers), coloured key=value lines when a person is watching.

Every line is structured, the libraries' too: records of the standard
``logging`` module (aiohttp's "Error handling request", asyncio's) go
through the same renderer, with their logger's name. They are rate-limited
per logger and message (``StdlibRateLimit``: a flood of bad requests must
not become a flood of tracebacks; the next line that gets through carries a
``suppressed`` count). The node's own refusals are rate-limited where they
are logged (``RateLimitedLog``); lines that report a halt, a divergence or
damaged data are logged by the node directly and never rate-limited.

No request data reaches a log line: an HTTP parsing error (a header too
long, a bad request line) carries the bytes it choked on, an Authorization
header's token among them, so such records keep only the error's type and
status (``scrub_request_data``). The node never logs a header's value.

grpc's C core writes its own lines to stderr, outside Python: the command
line keeps them to errors (``GRPC_VERBOSITY=ERROR`` unless set, in
tools/__init__.py: the core reads it when grpc is imported) so that a flood
of failed handshakes is not a flood of log lines.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
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
    # The standard library's records (aiohttp, asyncio): the same lines.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    handler.addFilter(drop_unreadable_bodies)
    handler.addFilter(scrub_request_data)
    handler.addFilter(StdlibRateLimit())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Libraries' info lines are noise beside the node's own.
    root.setLevel(max(numeric, logging.WARNING))
    # aiohttp's access log is off (the node counts requests in /metrics).
    logging.getLogger("aiohttp.access").setLevel(logging.ERROR)


def drop_unreadable_bodies(record: logging.LogRecord) -> bool:
    """No line for aiohttp's "Unhandled exception" about a request body
    that could not be read (bytes that are not the gzip or deflate their
    Content-Encoding names, a broken chunked encoding): the client's error,
    answered 400 by the route that read the body. aiohttp meets it again
    when it reads the rest of the body after the answer, and would log a
    traceback at error level for every such request."""
    if record.name == "aiohttp.server" and record.exc_info and record.exc_info[1] is not None:
        try:
            from aiohttp.web_protocol import RequestPayloadError
        except ImportError:  # pragma: no cover - aiohttp is a dependency of the node
            return True
        return not isinstance(record.exc_info[1], RequestPayloadError)
    return True


def scrub_request_data(record: logging.LogRecord) -> bool:
    """Drop the request bytes an HTTP parsing error carries (a header too
    long holds the header, a token perhaps): keep the error's type and the
    status it answers with, never its message or traceback."""
    if record.exc_info and record.exc_info[1] is not None:
        error = record.exc_info[1]
        if _carries_request_data(error):
            record.msg = (
                f"{record.msg} ({type(error).__name__}, HTTP {getattr(error, 'code', 400)})"
            )
            record.exc_info = None
            record.exc_text = None
    return True


def _carries_request_data(error: BaseException) -> bool:
    try:
        from aiohttp.http_exceptions import HttpProcessingError
    except ImportError:  # pragma: no cover - aiohttp is a dependency of the node
        return False
    return isinstance(error, HttpProcessingError)


class StdlibRateLimit(logging.Filter):
    """At most ``burst`` records per logger and message per ``seconds``;
    the next one that gets through says how many were suppressed."""

    def __init__(self, burst: int = 20, seconds: float = 10.0) -> None:
        super().__init__()
        self.burst = burst
        self.seconds = seconds
        self._windows: dict[tuple[str, str], tuple[float, int, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        start, logged, dropped = self._windows.get(key, (now, 0, 0))
        if now - start >= self.seconds:
            start, logged = now, 0
        if logged >= self.burst:
            self._windows[key] = (start, logged, dropped + 1)
            return False
        if dropped:
            record.msg = f"{record.msg} [{dropped} like this suppressed]"
        self._windows[key] = (start, logged + 1, 0)
        if len(self._windows) > 10_000:  # many distinct messages: forget the oldest
            self._windows.pop(next(iter(self._windows)))
        return True


class RateLimitedLog:
    """Warnings that a flood cannot turn into a log flood: at most ``burst``
    per ``seconds`` per event, code and caller (the ``code`` and ``who``
    fields: one caller's flood of refusals does not hide another's); the
    next one that gets through says how many were suppressed."""

    def __init__(self, burst: int = 20, seconds: float = 10.0) -> None:
        self.burst = burst
        self.seconds = seconds
        # (event, code, who) -> (start, logged, dropped); who is a token's
        # name or a node's: as many as the token file and the members have.
        self._windows: dict[str, tuple[float, int, int]] = {}

    def warning(self, event: str, **fields: Any) -> None:
        now = time.monotonic()
        key = f"{event}\x00{fields.get('code')}\x00{fields.get('who')}"
        start, logged, dropped = self._windows.get(key, (now, 0, 0))
        if now - start >= self.seconds:
            start, logged = now, 0
        if logged >= self.burst:
            self._windows[key] = (start, logged, dropped + 1)
            return
        if dropped:
            fields["suppressed"] = dropped
        self._windows[key] = (start, logged + 1, 0)
        log.warning(event, **fields)


_SERVER_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def code_location(exc: BaseException) -> str:
    """``FILE, line N, in FUNCTION``: where the application's code raised
    ``exc`` (its innermost frame outside ramraft's own server code and
    generated code), so a one-line error names the developer's code; ""
    when no such frame is left (ramraft raised it)."""
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if not f.filename.startswith(("<", _SERVER_DIR))
    ]
    if not frames:
        return ""
    return f"{frames[-1].filename}, line {frames[-1].lineno}, in {frames[-1].name}"

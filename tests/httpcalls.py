"""Plain HTTP(S) calls for tests of the web tier (no client library:
what any HTTP client would send), and a polling wait (blocking or asyncio)
for a condition a test can read but not be told of."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def http(
    address: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 15.0,
    *,
    context: ssl.SSLContext | None = None,
) -> Reply:
    """One request to ``address``, over TLS when ``context`` is given;
    redirects are returned, not followed; error statuses are replies too."""
    scheme = "https" if context is not None else "http"
    request = urllib.request.Request(
        f"{scheme}://{address}{path}", data=body, method=method, headers=headers or {}
    )
    handlers: list[Any] = [_NoRedirect]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(request, timeout=timeout) as response:
            return Reply(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as e:
        return Reply(e.code, dict(e.headers), e.read())


def wait_until(predicate: Any, timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something true (returned)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(0.05)


async def wait_until_async(
    predicate: Any, timeout: float = 15.0, what: str = "condition", interval: float = 0.001
) -> Any:
    """``wait_until`` inside an event loop: polls without blocking the loop
    (whose own tasks usually make the condition true). ``timeout`` is a hang
    guard, not a claim about speed."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(interval)

"""The web-tier clients of ``ramraft chaos`` (``--web``).

A client of the JSON API (server/web/tier.py) stays on the one node it was
given, as a browser behind a load balancer does: it cannot follow the leader
as the gRPC clients do, so two of three such clients write through a
follower, which forwards each write to the leader (Peer.ForwardStream,
server/runtime/forwarding.py). Their operations go into the same history and
the same checks as the gRPC clients'; the workload also counts, from each
node's /metrics, how many writes the nodes forwarded while it ran, so a run
shows that the forwarding path was exercised under its faults.

Outcomes, as for the gRPC clients (tools/chaos.py): ``ok`` for a 2xx answer
(and a 404 ``not_found`` to a read); ``failed`` for any read that got no
answer, and for a write that certainly was not applied: refused before the
node proposed it (400, 401, 403, 413, 415, 429), or never sent; ``unknown``
for any other write that got no answer (503 and 504 may come after the
proposal; a dropped connection or a timeout says nothing).

"Never sent" is judged by whether the request's headers went out, on any
attempt (``on_request_headers_sent``), not by the error: aiohttp sends a PUT
or DELETE again on a new connection when a reused one drops, so a node
killed after it received a write (and forwarded it) shows as a refused
connection on the second attempt. The first version of these clients took
that error for "nothing was sent"; the chaos test's watchers caught a
write recorded as failed that the cluster had applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from types import SimpleNamespace
from typing import Any, Final
from urllib.parse import quote, urlsplit

import aiohttp

from ramraft.client import TLSOptions
from ramraft.tools.history import Record

# Answers that mean the node refused the write before proposing it.
_REFUSED_BEFORE_PROPOSAL: Final = frozenset({400, 401, 403, 413, 415, 429})
FORWARDED_METRIC: Final = "ramraft_forwarded_writes"
METRICS_EVERY: Final = 1.0  # seconds between two reads of a node's /metrics
RECONNECT_PAUSE: Final = 0.1  # seconds after a refused connection


def parse_web_urls(text: str) -> list[str]:
    """``https://host:8080,http://host2:8080`` -> the base URLs, checked."""
    urls = [u.strip().rstrip("/") for u in text.split(",") if u.strip()]
    if not urls:
        raise ValueError("give at least one web tier URL")
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{url!r} is not an http:// or https:// URL of a node's web tier")
        if parts.path or parts.query:
            raise ValueError(f"{url!r}: give the web tier's root (scheme://host:port), no path")
    return urls


def ssl_context(tls: TLSOptions | None) -> ssl.SSLContext | None:
    """The context for https:// URLs: the gRPC clients' CA (their server
    name, if any, goes with each request: WebClient). None: the system's
    trusted roots."""
    if tls is None:
        return None
    if tls.cert is not None:
        raise ValueError("the web clients cannot present a client certificate (--tls-cert)")
    return ssl.create_default_context(cadata=tls.ca.decode() if tls.ca else None)


class _Sent:
    """Whether a request's headers went out, on any attempt."""

    headers = False


async def _headers_sent(_: Any, context: SimpleNamespace, __: Any) -> None:
    if isinstance(context.trace_request_ctx, _Sent):
        context.trace_request_ctx.headers = True


def client_session(
    tls: TLSOptions | None = None, token: str | None = None
) -> aiohttp.ClientSession:
    """The HTTP session WebClients need: it notes which requests were sent
    (see the module docstring), trusts the gRPC clients' CA and sends their
    token."""
    context = ssl_context(tls)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    connector = aiohttp.TCPConnector(ssl=context) if context is not None else None
    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(_headers_sent)
    return aiohttp.ClientSession(headers=headers, connector=connector, trace_configs=[trace])


class WebClient:
    """One node's web tier, for one client of the workload. ``http`` must
    come from client_session()."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        base: str,
        timeout: float,
        *,
        server_name: str | None = None,
        serializable: bool = False,
    ) -> None:
        self.http = http
        self.base = base
        self.timeout = timeout
        self.server_name = server_name
        self.reads = "&consistency=serializable" if serializable else ""

    def _url(self, route: str, key: str) -> str:
        return f"{self.base}{route}{quote(key, safe='')}?timeout={self.timeout:g}"

    async def _call(
        self, sent: _Sent, method: str, url: str, **kwargs: Any
    ) -> tuple[int, dict[str, Any]]:
        # A second more than the node's own deadline: its 504 comes first.
        limit = aiohttp.ClientTimeout(total=self.timeout + 1)
        if self.server_name:
            kwargs["server_hostname"] = self.server_name
        async with self.http.request(
            method, url, timeout=limit, trace_request_ctx=sent, **kwargs
        ) as answer:
            body = await answer.json(content_type=None)
            return answer.status, body if isinstance(body, dict) else {}

    async def run(self, rec: Record) -> None:
        """Runs one operation and fills in the record's outcome."""
        sent = _Sent()
        down = False
        try:
            status, body = await self._operation(sent, rec)
        except (TimeoutError, aiohttp.ClientError, ValueError) as e:
            # Sent (on any attempt): the node may have applied the write.
            rec.outcome = "unknown" if rec.is_write and sent.headers else "failed"
            rec.error = f"{type(e).__name__}: {str(e)[:300]}"
            down = isinstance(e, aiohttp.ClientConnectorError)
        else:
            if rec.result is not None:
                rec.outcome = "ok"
            else:
                refused = status in _REFUSED_BEFORE_PROPOSAL
                rec.outcome = "failed" if refused or not rec.is_write else "unknown"
                detail = " ".join(str(body.get("detail", "")).split())[:300]
                rec.error = f"HTTP {status} {body.get('error', '')}: {detail}"
        finally:
            rec.complete = time.monotonic()
        if down:
            # The node is down: try again a little later, as a browser
            # would, rather than record a failure a millisecond.
            await asyncio.sleep(RECONNECT_PAUSE)

    async def _operation(self, sent: _Sent, rec: Record) -> tuple[int, dict[str, Any]]:
        """The request; sets rec.result (and index) when it succeeded."""
        if rec.kind == "get":
            status, body = await self._call(sent, "GET", self._url("/v1/kv/", rec.key) + self.reads)
            if status == 200:
                rec.result = {"found": True, "value": _text(body)}
            elif status == 404 and body.get("error") == "not_found":
                rec.result = {"found": False, "value": None}
        elif rec.kind == "put":
            status, body = await self._call(
                sent,
                "PUT",
                self._url("/v1/kv/", rec.key),
                data=(rec.value or "").encode(),
                headers={"Content-Type": "application/octet-stream"},
            )
            if status == 200:
                rec.result = {}
        elif rec.kind == "delete":
            status, body = await self._call(sent, "DELETE", self._url("/v1/kv/", rec.key))
            if status == 200:
                rec.result = {"deleted": bool(body["deleted"])}
        elif rec.kind == "cas":
            status, body = await self._call(
                sent,
                "POST",
                self._url("/v1/cas/", rec.key),
                json={"value": rec.value or "", "expected": rec.expected},
            )
            if status == 200:
                found = bool(body["found"])
                rec.result = {
                    "swapped": bool(body["swapped"]),
                    "found": found,
                    "current": _text(body, "current") if found else None,
                }
        else:
            raise ValueError(f"the web clients do not run {rec.kind!r} operations")
        if rec.result is not None:
            # The write's revision, which the watchers' events are checked
            # against (reads answer none over HTTP).
            rec.index, rec.revision = body.get("index"), body.get("revision") or None
        return status, body


def _text(body: dict[str, Any], field: str = "value") -> str:
    if body.get("encoding", "utf-8") != "utf-8":
        raise ValueError(f"the workload writes text; the node answered {body.get('encoding')}")
    return str(body[field])


class ForwardCounter:
    """Adds up ``ramraft_forwarded_writes`` of each node's /metrics while the
    workload runs. The counter starts again at 0 when a node restarts, so a
    smaller reading than the last counts in full."""

    def __init__(self, http: aiohttp.ClientSession, urls: Sequence[str]) -> None:
        self.http = http
        self.last: dict[str, float] = {}
        self.total: dict[str, float] = dict.fromkeys(urls, 0.0)
        self.readings = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Reads every node's counter each METRICS_EVERY, and once more
        after `stop`."""
        while True:
            await asyncio.gather(*(self.read(url) for url in self.total))
            if stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), METRICS_EVERY)

    async def read(self, url: str) -> None:
        try:
            limit = aiohttp.ClientTimeout(total=METRICS_EVERY)
            async with self.http.get(url + "/metrics", timeout=limit) as answer:
                if answer.status != 200:
                    return
                text = await answer.text()
        except (TimeoutError, aiohttp.ClientError):
            return  # the node is down or paused: its count waits
        value = forwarded(text)
        if value is None:
            return
        last = self.last.get(url)
        self.total[url] += value if last is None or value < last else value - last
        self.last[url] = value
        self.readings += 1

    def summary(self) -> dict[str, Any]:
        return {"forwarded_writes": int(sum(self.total.values())), "metric_readings": self.readings}


def forwarded(metrics: str) -> float | None:
    """The forwarded-writes counter in a Prometheus text page."""
    for line in metrics.splitlines():
        if line.startswith(FORWARDED_METRIC) and not line.startswith(FORWARDED_METRIC + "_created"):
            try:
                return float(line.rsplit(None, 1)[1])
            except (IndexError, ValueError):
                return None
    return None


OperationsLoop = Callable[[int, Callable[[Record], Awaitable[None]]], Awaitable[None]]


async def run_web_clients(
    urls: Sequence[str],
    count: int,
    first_id: int,
    operations: OperationsLoop,
    *,
    timeout: float,
    tls: TLSOptions | None,
    token: str | None,
    serializable: bool = False,
) -> dict[str, Any]:
    """`count` clients, client i on urls[i % len(urls)] with id first_id + i,
    each running `operations(id, run)` (tools/chaos.py draws and records the
    operations; `run` carries one out over HTTP). Returns what the nodes'
    /metrics counted meanwhile."""
    async with client_session(tls, token) as http:
        counter = ForwardCounter(http, urls)
        done = asyncio.Event()
        counting = asyncio.create_task(counter.run(done))
        clients = [
            WebClient(
                http,
                urls[i % len(urls)],
                timeout,
                server_name=tls.server_name if tls else None,
                serializable=serializable,
            )
            for i in range(count)
        ]
        try:
            await asyncio.gather(*(operations(first_id + i, c.run) for i, c in enumerate(clients)))
        finally:
            done.set()
            await counting
    return {"urls": list(urls), "clients": count, **counter.summary()}

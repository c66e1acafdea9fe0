"""A bug in a request's handler (ramraft's, or an application's page under
/app/): a 500 in the route's own form, JSON under /v1/ as every other /v1/
error, with its traceback in the node's log (event request_failed), never
aiohttp's bare text."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from ramraft.server.web.tier import WebTier


def serve(path: str, api_route: bool, sent: int = 0) -> web.StreamResponse:
    tier = object.__new__(WebTier)  # _serve needs none of a running tier's parts
    tier.view = SimpleNamespace(reports=None)  # type: ignore[assignment]

    async def page(request: web.Request) -> web.StreamResponse:
        return {"a": 1}["b"]  # type: ignore[return-value]  # a bug: KeyError

    request = make_mocked_request("GET", path, writer=SimpleNamespace(output_size=sent))
    return asyncio.run(tier._serve(request, page, api_route))


def test_a_bug_under_v1_is_a_json_500() -> None:
    with structlog.testing.capture_logs() as logs:
        response = serve("/v1/kv/x", api_route=True)
    assert isinstance(response, web.Response) and response.status == 500
    assert response.content_type == "application/json"
    assert response.text is not None
    body = json.loads(response.text)
    assert body["error"] == "internal"
    assert "KeyError" in body["detail"] and "request_failed" in body["detail"]
    assert "'b'" not in body["detail"]  # what failed stays in the log
    [logged] = logs
    assert (logged["event"], logged["log_level"], logged["path"]) == (
        "request_failed",
        "error",
        "/v1/kv/x",
    )
    assert "test_internal_errors.py" in logged["where"]  # where it raised
    assert isinstance(logged["exc_info"], KeyError)  # the traceback, when rendered


def test_a_bug_in_an_apps_page_is_a_text_500() -> None:
    with structlog.testing.capture_logs() as logs:
        response = serve("/app/notes", api_route=False)
    assert isinstance(response, web.Response) and response.status == 500
    assert response.content_type == "text/plain"
    assert response.text is not None and response.text.startswith("500 internal: ")
    assert [(e["event"], e["path"]) for e in logs] == [("request_failed", "/app/notes")]


def test_a_bug_after_part_of_the_answer_was_sent_closes_the_connection() -> None:
    """No second answer can follow: the error goes on to aiohttp, which
    closes the connection."""
    with pytest.raises(KeyError):
        serve("/v1/watch", api_route=True, sent=120)

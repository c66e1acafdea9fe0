"""Blobs over HTTP (server/blobs/):

``GET /v1/blobs/{sha256}`` (and ``HEAD``)
    The bytes, streamed from this node's file (fetched from a peer first if
    this node lacks it), with ``Content-Type`` as uploaded, ``ETag`` (the
    quoted SHA-256: ``If-None-Match`` answers 304), ``Accept-Ranges: bytes``
    and one ``Range`` (``bytes=a-b``, ``bytes=a-``, ``bytes=-n``: 206 with
    ``Content-Range``; unsatisfiable: 416). A blob never changes, so it may
    be cached for ever (``Cache-Control: immutable``). Served with
    ``X-Content-Type-Options: nosniff`` and ``Content-Security-Policy:
    sandbox``: an uploaded page cannot run as this origin.
``POST /v1/blobs``, ``PUT /v1/blobs/{sha256}``
    Upload the request body (streamed to disk, never held in memory) with
    the request's ``Content-Type``; ``PUT`` also checks the bytes against
    the SHA-256 in the path. 201 with ``{"sha256", "size", "content_type",
    "index"}`` and a ``Location`` header, once a majority of the voters hold
    it. Over ``--max-blob-bytes``: 413; a disk too full for it: 507.
``DELETE /v1/blobs/{sha256}``
    Remove it from every node (409 ``command_failed`` while the
    application's state refers to it).

Reads need the read role and writes the write role, as every route
(security/auth.py). Errors are the JSON errors of every /v1/ route.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from aiohttp import web

from ramraft.server.blobs.manager import NodeBlobs
from ramraft.server.blobs.store import PIECE
from ramraft.server.machines.blobs import DEFAULT_CONTENT_TYPE, BlobRef, parse_sha256
from ramraft.server.request_errors import BadRequest

BLOBS_PATH = "/v1/blobs"
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_SAFETY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "sandbox",
}


class RangeNotSatisfiable(Exception):
    pass


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one byte range asked for, as (first, length); None: the whole
    blob (no header, or one this parser does not serve, e.g. several ranges:
    RFC 9110 lets a server ignore Range). Raises RangeNotSatisfiable."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first_text, last_text = match.groups()
    if not first_text:
        if not last_text:
            return None
        suffix = _position(last_text)
        if suffix == 0 or size == 0:  # RFC 9110 14.1.1: nothing to give of an empty blob
            raise RangeNotSatisfiable()
        first = max(0, size - suffix)
        return first, size - first
    first = _position(first_text)
    if first >= size:
        raise RangeNotSatisfiable()
    last = min(_position(last_text), size - 1) if last_text else size - 1
    if last < first:
        return None
    return first, last - first + 1


def _position(digits: str) -> int:
    """A byte position of a Range header; one of more digits than int()
    converts (sys.get_int_max_str_digits()) is past any blob anyway."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 20 else 10**20


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


class BlobRoutes:
    def __init__(self, blobs: NodeBlobs, piece_timeout: float | None = None) -> None:
        self.blobs = blobs
        self.piece_timeout = piece_timeout  # --request-timeout-ms: each piece of an upload

    def add_to(self, router: web.UrlDispatcher) -> None:
        router.add_post(BLOBS_PATH, self.post)
        resource = router.add_resource(BLOBS_PATH + "/{sha256}")
        resource.add_route("GET", self.get)
        resource.add_route("HEAD", self.get)
        resource.add_route("PUT", self.put)
        resource.add_route("DELETE", self.delete)

    @staticmethod
    def _digest(request: web.Request) -> str:
        try:
            return parse_sha256(request.match_info["sha256"])
        except ValueError as e:
            raise BadRequest(str(e)) from None

    async def get(self, request: web.Request) -> web.StreamResponse:
        ref = await self.blobs.find(self._digest(request))
        etag = f'"{ref.sha256}"'
        headers = {
            "ETag": etag,
            "Accept-Ranges": "bytes",
            "Cache-Control": "public, max-age=31536000, immutable",
            **_SAFETY_HEADERS,
        }
        if _etag_matches(request.headers.get("If-None-Match"), etag):
            return web.Response(status=304, headers=headers)
        try:
            wanted = parse_range(request.headers.get("Range"), ref.size)
        except RangeNotSatisfiable:
            from ramraft.server.web.tier import HttpError  # tier.py mounts these routes

            raise HttpError(
                416,
                "range_not_satisfiable",
                f"the range {request.headers.get('Range')!r} asks for no byte of the "
                f"blob's {ref.size}",
                headers={**headers, "Content-Range": f"bytes */{ref.size}"},
            ) from None
        offset, length = wanted if wanted is not None else (0, ref.size)
        reader = await self.blobs.open(ref, offset=offset, length=length)
        async with reader:
            response = web.StreamResponse(status=206 if wanted is not None else 200)
            response.headers.update(headers)
            response.content_type = ref.content_type
            response.content_length = length
            if wanted is not None:
                response.headers["Content-Range"] = (
                    f"bytes {offset}-{offset + length - 1}/{ref.size}"
                )
            await response.prepare(request)
            if request.method != "HEAD":
                async for piece in reader:
                    await response.write(piece)
            await response.write_eof()
        return response

    async def _upload(self, request: web.Request, expected: str | None) -> web.StreamResponse:
        content_type = request.headers.get("Content-Type", "") or DEFAULT_CONTENT_TYPE
        ref, index = await self.blobs.put_with_index(
            _body(request, self.piece_timeout),
            content_type=content_type,
            size=request.content_length,
            sha256=expected,
        )
        return _created(ref, index)

    async def post(self, request: web.Request) -> web.StreamResponse:
        return await self._upload(request, None)

    async def put(self, request: web.Request) -> web.StreamResponse:
        return await self._upload(request, self._digest(request))

    async def delete(self, request: web.Request) -> web.StreamResponse:
        deleted, index = await self.blobs.delete(self._digest(request))
        return web.json_response({"deleted": deleted, "index": index})


async def _body(request: web.Request, timeout: float | None) -> AsyncIterator[bytes]:
    """The request body in pieces, each of which must arrive within
    ``timeout`` (a client that trickles an upload gives its slot back: 408)."""
    from ramraft.server.web.tier import HttpError, broken_body  # tier.py mounts these routes

    while True:
        try:
            async with asyncio.timeout(timeout):
                piece = await request.content.read(PIECE)
        except TimeoutError:
            raise HttpError(
                408, "request_timeout", f"the upload stalled for more than {timeout:g} s"
            ) from None
        except web.RequestPayloadError as e:
            raise broken_body(e) from None
        if not piece:
            return
        yield piece


def _created(ref: BlobRef, index: int) -> web.Response:
    return web.json_response(
        {**ref.to_plain(), "index": index},
        status=201,
        headers={"Location": f"{BLOBS_PATH}/{ref.sha256}"},
    )

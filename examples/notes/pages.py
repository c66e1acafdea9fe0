"""The notes board's pages: aiohttp handlers that read the Board from memory.

A page is rendered from the node's own copy of the board: no database, no
network round trip. A form post calls a command (``await board.add(...)``),
which goes through Raft from whichever node served the form and returns once
the note is applied on that node, so the redirect that follows finds it.

Live: the board page listens to ``/app/events`` (Server-Sent Events: the
events the board's commands publish, as this node applies them) and, on
each, fetches its list again from ``/app/fragments/board``. A note written
through another node appears without a reload; a browser that was away
resumes where it stopped (``Last-Event-ID``).

Attachments: the upload is streamed from the form into ``ctx.blobs.put``
(a file on a majority of the nodes, outside the log; never whole in memory),
then ``board.attach`` records its reference. Any node serves the file
(``ctx.blobs.open``), fetching it from a peer first if it lacks it.
"""

from __future__ import annotations

import datetime
import html
import mimetypes
import os
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import MultiDictProxy

from ramraft.server.hosting import CONTEXT
from ramraft.server.machines.embed import CommandFailedError

from .model import (
    ARCHIVE_AFTER_DAYS,
    MAX_AUTHOR,
    MAX_BODY,
    MAX_FILE_NAME,
    MAX_TITLE,
    Board,
    check_attachment,
    check_note,
)

MAX_FILE_BYTES = 20 << 20  # per attachment (the node's --max-blob-bytes is the hard limit)


def routes(board: Board) -> web.RouteTableDef:
    r = web.RouteTableDef()

    @r.get("/", name="index")
    async def index(request: web.Request) -> web.Response:
        return page(request, "Notes", render_index(request, board))

    @r.get("/fragments/board", name="board")
    async def board_fragment(request: web.Request) -> web.Response:
        return web.Response(text=render_board(request, board), content_type="text/html")

    @r.get("/events", name="events")
    async def events(request: web.Request) -> web.StreamResponse:
        # The board's change events, streamed until the browser leaves.
        return await request.app[CONTEXT].events.stream(request, ["notes"])

    @r.post("/notes", name="add")
    async def add(request: web.Request) -> web.Response:
        form = await _form(request)
        title, body, author = (str(form.get(k, "")) for k in ("title", "body", "author"))
        try:
            check_note(title.strip(), body, author.strip() or "anonymous")
            note_id = await board.add(title, body, author, time.time())
        except ValueError as e:
            content = render_index(request, board, error=str(e), form=dict(form))
            return page(request, "Notes", content, status=400)
        except CommandFailedError as e:
            message = e.message
            content = render_index(request, board, error=message, form=dict(form))
            return page(request, "Notes", content, status=400)
        raise web.HTTPSeeOther(url(request, "note", id=note_id))

    async def find(request: web.Request) -> dict[str, Any]:
        note_id = _number(request, "id")
        found = board.notes.get(note_id)
        if found is None:
            # Perhaps written through another node a moment ago: make the
            # read linearizable, then look again.
            await request.app[CONTEXT].linearizable()
            found = board.notes.get(note_id)
        if found is None:
            raise web.HTTPNotFound(
                text=page(request, "Not found", "<p>There is no such note.</p>").text,
                content_type="text/html",
            )
        return found

    @r.get(r"/notes/{id:\d+}", name="note")
    async def note(request: web.Request) -> web.Response:
        found = await find(request)
        return page(request, found["title"], render_note(request, found))

    @r.post(r"/notes/{id:\d+}/files", name="attach")
    async def attach(request: web.Request) -> web.Response:
        found = await find(request)
        field = await _file_field(request)
        name = os.path.basename((field.filename if field else "") or "").strip()[:MAX_FILE_NAME]
        try:
            if field is None or not name:
                raise ValueError("choose a file to attach")
            check_attachment(name, len(found.get("attachments", ())))
            kind = field.headers.get("Content-Type") or mimetypes.guess_type(name)[0]
            ref = await request.app[CONTEXT].blobs.put(
                _limited(field), content_type=kind or "application/octet-stream"
            )
            await board.attach(found["id"], name, ref.to_plain())
        except (ValueError, CommandFailedError) as e:
            error = e.message if isinstance(e, CommandFailedError) else str(e)
            return page(request, found["title"], render_note(request, found, error), status=400)
        raise web.HTTPSeeOther(url(request, "note", id=found["id"]))

    @r.get(r"/notes/{id:\d+}/files/{n:\d+}", name="file")
    async def file(request: web.Request) -> web.StreamResponse:
        found = await find(request)
        attachments = found.get("attachments", [])
        n = _number(request, "n")
        if n >= len(attachments):
            raise web.HTTPNotFound(text="no such file")
        attachment = attachments[n]
        reader = await request.app[CONTEXT].blobs.open(attachment["sha256"])
        async with reader:
            response = web.StreamResponse(
                headers={
                    "Content-Disposition": "inline; filename*=UTF-8''" + quote(attachment["name"]),
                    "ETag": f'"{reader.ref.sha256}"',
                    # An uploaded page must not run as this site.
                    "X-Content-Type-Options": "nosniff",
                    "Content-Security-Policy": "sandbox",
                }
            )
            response.content_type = reader.ref.content_type
            response.content_length = reader.ref.size
            await response.prepare(request)
            async for piece in reader:
                await response.write(piece)
            await response.write_eof()
        return response

    @r.post(r"/notes/{id:\d+}/pin", name="pin")
    async def pin(request: web.Request) -> web.Response:
        note_id = _number(request, "id")
        form = await _form(request)
        await board.pin(note_id, form.get("pinned") == "1")
        raise web.HTTPSeeOther(url(request, "note", id=note_id))

    @r.post(r"/notes/{id:\d+}/delete", name="delete")
    async def delete(request: web.Request) -> web.Response:
        await board.delete(_number(request, "id"))
        raise web.HTTPSeeOther(url(request, "index"))

    @r.get("/api/notes", name="api")
    async def api(request: web.Request) -> web.Response:
        if request.query.get("consistency") == "linearizable":
            await request.app[CONTEXT].linearizable()
        ctx = request.app[CONTEXT]
        return web.json_response(
            {"node": ctx.node_id, "notes": board.listing(), "next_id": board.next_id}
        )

    return r


# ---- rendering ------------------------------------------------------------------------------


async def _file_field(request: web.Request) -> BodyPartReader | None:
    """The form's "file" part, read as a stream (the rest is skipped)."""
    if not request.content_type.startswith("multipart/"):
        return None
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if isinstance(part, BodyPartReader) and part.name == "file":
                return part
    except (ValueError, HttpProcessingError) as e:
        # No boundary, or none found, or a part's headers that do not parse.
        raise web.HTTPBadRequest(text=f"the upload is not a form this page reads: {e}") from None
    return None


async def _form(request: web.Request) -> MultiDictProxy[Any]:
    """The posted form. One that is no form -- bytes that are not text in
    its charset, a charset Python does not know, a broken multipart body --
    is a 400 (aiohttp raises ValueError or LookupError, a 500 otherwise)."""
    try:
        return await request.post()
    except (ValueError, LookupError, HttpProcessingError) as e:
        raise web.HTTPBadRequest(text=f"the body is not a form this page reads: {e}") from None


def _number(request: web.Request, name: str) -> int:
    """A number of the path (``\\d+``): one of more digits than int()
    converts names no note."""
    try:
        return int(request.match_info[name])
    except ValueError:
        raise web.HTTPNotFound(text="no such note or file") from None


async def _limited(field: BodyPartReader) -> AsyncIterator[bytes]:
    total = 0
    while piece := await field.read_chunk(1 << 20):
        total += len(piece)
        if total > MAX_FILE_BYTES:
            raise ValueError(f"a file may be at most {MAX_FILE_BYTES >> 20} MiB")
        yield piece


def url(request: web.Request, name: str, **parts: Any) -> str:
    resource = request.app.router[name]
    return str(resource.url_for(**{k: str(v) for k, v in parts.items()}))


def when(created: float) -> str:
    moment = datetime.datetime.fromtimestamp(created, datetime.UTC)
    return moment.strftime("%d %b %Y, %H:%M UTC")


def files(note: dict[str, Any]) -> str:
    count = len(note.get("attachments", ()))
    return f" &middot; {count} file{'' if count == 1 else 's'}" if count else ""


def render_board(request: web.Request, board: Board) -> str:
    """The list of notes (what a live update replaces)."""
    started = time.perf_counter()
    notes = board.listing()  # a memory read of this node's copy
    archived = board.archived()
    items = []
    for n in notes:
        excerpt = n["body"][:160] + ("\u2026" if len(n["body"]) > 160 else "")
        items.append(
            f'<li class="note{" pinned" if n["pinned"] else ""}">'
            f'<a href="{url(request, "note", id=n["id"])}">{html.escape(n["title"])}</a>'
            f"{' <span class=pin>pinned</span>' if n['pinned'] else ''}"
            f"<p>{html.escape(excerpt)}</p>"
            f'<div class="meta">{html.escape(n["author"])} &middot; {when(n["created"])}'
            f"{files(n)}</div>"
            "</li>"
        )
    listing = (
        f'<ul class="notes">{"".join(items)}</ul>'
        if items
        else '<p class="empty">No notes yet. Write the first one.</p>'
    )
    old = "".join(
        f'<li><a href="{url(request, "note", id=n["id"])}">{html.escape(n["title"])}</a></li>'
        for n in archived
    )
    shelf = (
        f'<details class="archived"><summary>{len(archived)} archived (older than '
        f"{ARCHIVE_AFTER_DAYS} days, not pinned)</summary><ul>{old}</ul></details>"
        if archived
        else ""
    )
    took = (time.perf_counter() - started) * 1e6
    return (
        f"<h2>{len(notes)} note{'' if len(notes) == 1 else 's'}</h2>{listing}{shelf}"
        f'<p class="took">read {len(notes) + len(archived)} notes from memory in '
        f"{took:.0f} &micro;s</p>"
    )


def render_index(
    request: web.Request, board: Board, *, error: str = "", form: dict[str, Any] | None = None
) -> str:
    form = form or {}
    value = {k: html.escape(str(form.get(k, "")), quote=True) for k in ("title", "body", "author")}
    return f"""
<div class="columns">
  <section id="board" data-events="{url(request, "events")}"
    data-fragment="{url(request, "board")}">{render_board(request, board)}</section>
  <section>
    <h2>Write a note</h2>
    {f'<p class="error">{html.escape(error)}</p>' if error else ""}
    <form method="post" action="{url(request, "add")}">
      <label>Title <input name="title" maxlength="{MAX_TITLE}" required
        value="{value["title"]}"></label>
      <label>Text <textarea name="body" rows="6" maxlength="{MAX_BODY}">{value["body"]}</textarea>
      </label>
      <label>Your name <input name="author" maxlength="{MAX_AUTHOR}"
        placeholder="anonymous" value="{value["author"]}"></label>
      <button type="submit">Post note</button>
    </form>
  </section>
</div>
<script>{_LIVE}</script>"""


# Live updates: on each change event (or a "reset": events were missed), fetch
# the list again; events that arrive while a fetch runs cause one more fetch.
_LIVE = """
"use strict";
const board = document.getElementById("board");
let fetching = null, again = false;
async function refresh() {
  if (fetching) { again = true; return; }
  fetching = fetch(board.dataset.fragment, {cache: "no-store"});
  try {
    const reply = await fetching;
    if (reply.ok) board.innerHTML = await reply.text();
  } finally {
    fetching = null;
    if (again) { again = false; refresh(); }
  }
}
const events = new EventSource(board.dataset.events);
events.addEventListener("notes", refresh);
events.addEventListener("reset", refresh);
"""


def render_files(request: web.Request, note: dict[str, Any], error: str) -> str:
    note_id = note["id"]
    items = []
    for n, a in enumerate(note.get("attachments", [])):
        link = url(request, "file", id=note_id, n=n)
        preview = (
            f'<img src="{link}" alt="{html.escape(a["name"], quote=True)}">'
            if a["content_type"].startswith("image/")
            else ""
        )
        items.append(
            f'<li><a href="{link}">{html.escape(a["name"])}</a> '
            f'<span class="meta">{a["size"]:,} bytes, {html.escape(a["content_type"])}</span>'
            f"{preview}</li>"
        )
    listing = f'<ul class="files">{"".join(items)}</ul>' if items else ""
    return f"""
  <div class="attachments">
    <h3>Files</h3>
    {listing}
    {f'<p class="error">{html.escape(error)}</p>' if error else ""}
    <form method="post" enctype="multipart/form-data"
      action="{url(request, "attach", id=note_id)}">
      <input type="file" name="file" required>
      <button type="submit">Attach</button>
    </form>
  </div>"""


def render_note(request: web.Request, note: dict[str, Any], error: str = "") -> str:
    note_id = note["id"]
    pinned = note["pinned"]
    return f"""
<p><a href="{url(request, "index")}">&larr; all notes</a></p>
<article class="full">
  <h2>{html.escape(note["title"])}{" <span class=pin>pinned</span>" if pinned else ""}</h2>
  <div class="meta">note {note_id} &middot; {html.escape(note["author"])} &middot;
    {when(note["created"])}</div>
  <div class="body">{html.escape(note["body"]) or '<span class="empty">(no text)</span>'}</div>
  {render_files(request, note, error)}
  <div class="actions">
    <form method="post" action="{url(request, "pin", id=note_id)}">
      <input type="hidden" name="pinned" value="{"0" if pinned else "1"}">
      <button type="submit">{"Unpin" if pinned else "Pin to the top"}</button>
    </form>
    <form method="post" action="{url(request, "delete", id=note_id)}">
      <button type="submit" class="danger">Delete</button>
    </form>
  </div>
</article>"""


def page(request: web.Request, title: str, content: str, *, status: int = 200) -> web.Response:
    ctx = request.app[CONTEXT]
    footer = (
        f"served by node <b>{html.escape(ctx.node_id)}</b> ({html.escape(ctx.role)}) "
        f"&middot; leader {html.escape(ctx.leader or 'unknown')} "
        '&middot; <a href="/">cluster status</a>'
    )
    return web.Response(
        text=_LAYOUT.format(
            title=html.escape(title),
            home=url(request, "index"),
            content=content,
            footer=footer,
        ),
        content_type="text/html",
        status=status,
    )


_LAYOUT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} &middot; Notes board</title>
<link rel="icon" href="data:,">
<style>
  body {{ margin: 0; background: #faf7f2; color: #2b2a28;
    font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; }}
  header {{ background: #2f3e46; color: #fff; }}
  header div {{ max-width: 1100px; margin: 0 auto; padding: 14px 32px; }}
  header a {{ color: #fff; text-decoration: none; font-weight: 600; font-size: 20px; }}
  header span {{ color: #cad2c5; margin-left: 10px; font-size: 14px; }}
  main {{ max-width: 1100px; margin: 0 auto; padding: 24px 32px; }}
  .columns {{ display: grid; grid-template-columns: 3fr 2fr; gap: 32px; }}
  h2 {{ font-size: 19px; margin: 0 0 14px; }}
  ul.notes {{ list-style: none; margin: 0; padding: 0; }}
  li.note {{ background: #fff; border: 1px solid #e6dfd3; border-radius: 10px;
    padding: 12px 16px; margin-bottom: 12px; }}
  li.note.pinned {{ border-color: #e9c46a; box-shadow: inset 4px 0 0 #e9c46a; }}
  li.note a {{ font-weight: 600; color: #1d3557; text-decoration: none; font-size: 17px; }}
  li.note a:hover {{ text-decoration: underline; }}
  li.note p {{ margin: 4px 0; color: #4a4740; white-space: pre-line; }}
  .meta {{ color: #8a847a; font-size: 13.5px; }}
  .pin {{ background: #e9c46a; color: #2b2a28; font-size: 11.5px; border-radius: 999px;
    padding: 1px 8px; margin-left: 6px; font-weight: 600; vertical-align: 2px; }}
  form label {{ display: block; font-size: 14px; color: #4a4740; margin-bottom: 12px; }}
  input, textarea {{ display: block; width: 100%; box-sizing: border-box; margin-top: 4px;
    font: inherit; padding: 8px 10px; border: 1px solid #d6cfc2; border-radius: 8px;
    background: #fff; }}
  button {{ font: inherit; font-weight: 600; background: #2f3e46; color: #fff; border: 0;
    border-radius: 8px; padding: 8px 16px; cursor: pointer; }}
  button.danger {{ background: #b23a48; }}
  .error {{ color: #b23a48; background: #fbe9eb; padding: 8px 12px; border-radius: 8px; }}
  .empty {{ color: #8a847a; }}
  .took {{ color: #8a847a; font-size: 13px; }}
  details.archived {{ color: #8a847a; font-size: 14px; margin: 4px 0 10px; }}
  details.archived a {{ color: #8a847a; }}
  article.full {{ background: #fff; border: 1px solid #e6dfd3; border-radius: 12px;
    padding: 20px 24px; max-width: 760px; }}
  article.full .body {{ white-space: pre-wrap; margin: 16px 0 20px; font-size: 17px; }}
  .actions {{ display: flex; gap: 10px; }}
  .attachments {{ border-top: 1px solid #e6dfd3; margin: 0 0 20px; padding-top: 12px; }}
  .attachments h3 {{ font-size: 15px; margin: 0 0 8px; }}
  ul.files {{ list-style: none; padding: 0; margin: 0 0 12px; }}
  ul.files li {{ margin-bottom: 8px; }}
  ul.files img {{ display: block; max-width: 100%; max-height: 240px; margin-top: 6px;
    border-radius: 8px; }}
  .attachments form {{ display: flex; gap: 10px; align-items: center; }}
  .attachments input[type=file] {{ width: auto; display: inline-block; margin: 0; }}
  a {{ color: #1d3557; }}
  footer {{ max-width: 1100px; margin: 0 auto; padding: 8px 32px 32px; color: #8a847a;
    font-size: 13.5px; }}
  @media (max-width: 800px) {{ .columns {{ grid-template-columns: 1fr; }} }}
</style></head>
<body>
<header><div><a href="{home}">Notes board</a><span>replicated by ramraft</span></div></header>
<main>{content}</main>
<footer>{footer}</footer>
</body></html>
"""

"""The notes board's replicated state: plain Python objects in every node's RAM.

Every change is a ``@command``: calling ``board.add(...)`` on any node proposes
the call through Raft, and every node runs the method on its own copy, in log
order. So a command must be deterministic: the time a note was written is an
argument, taken by the page handler before the call, never ``time.time()``
inside the command. Commands check everything before changing anything (a
command that raises keeps what it changed before raising).

Each command publishes a change event (``self.publish``): every node hands
it to its open pages once the command is applied there, so a board open on
any node updates live (pages.py). A background job on the leader archives
notes nobody has pinned once they are older than ARCHIVE_AFTER_DAYS: it
reads the board, takes the time, and calls a command.
Attachments are blobs (ramraft's files beside the log): the page handler
uploads the file with ``ctx.blobs.put`` (stored on a majority of nodes, never
in the log) and then records its reference with ``attach``. ``blob_refs``
tells ramraft which blobs the board still refers to: the attachments of a
deleted note are collected once the grace period has passed.
"""

from __future__ import annotations

import time
from typing import Any

from ramraft import BlobRef, ReplicatedModel, background, command

MAX_TITLE = 120
MAX_BODY = 4000
MAX_AUTHOR = 40
MAX_ATTACHMENTS = 10
MAX_FILE_NAME = 120
ARCHIVE_AFTER_DAYS = 30
ARCHIVE_EVERY_SECONDS = 600


class Board(ReplicatedModel):
    def __init__(self) -> None:
        self.notes: dict[int, dict[str, Any]] = {}
        self.next_id = 1

    # ---- commands: replicated through Raft --------------------------------------------------

    @command
    def add(self, title: str, body: str, author: str, created: float) -> int:
        title, author = title.strip(), author.strip() or "anonymous"
        check_note(title, body, author)
        note_id = self.next_id
        self.next_id += 1
        self.notes[note_id] = {
            "id": note_id,
            "title": title,
            "body": body,
            "author": author,
            "created": created,
            "pinned": False,
            "archived": False,
        }
        self.publish("notes", {"change": "added", "id": note_id})
        return note_id

    @command
    def pin(self, note_id: int, pinned: bool) -> bool:
        note = self.notes.get(note_id)
        if note is None:
            return False
        note["pinned"] = bool(pinned)
        if pinned:
            note["archived"] = False  # a pinned note is wanted: back on the board
        self.publish("notes", {"change": "pinned" if pinned else "unpinned", "id": note_id})
        return True

    @command
    def delete(self, note_id: int) -> bool:
        if self.notes.pop(note_id, None) is None:
            return False
        self.publish("notes", {"change": "deleted", "id": note_id})
        return True

    @command
    def archive(self, note_ids: list[int]) -> list[int]:
        """Move these notes off the board (pinned ones stay); returns those moved."""
        moved = []
        for note_id in note_ids:
            note = self.notes.get(note_id)
            if note is not None and not note["pinned"] and not note.get("archived"):
                note["archived"] = True
                moved.append(note_id)
        if moved:
            self.publish("notes", {"change": "archived", "ids": moved})
        return moved

    @command
    def attach(self, note_id: int, name: str, blob: dict[str, Any]) -> int:
        """Record an uploaded file (its BlobRef as plain data) on a note;
        returns its number on the note."""
        note = self.notes.get(note_id)
        if note is None:
            raise ValueError(f"there is no note {note_id}")
        attachments = note.get("attachments", [])
        check_attachment(name, len(attachments))
        ref = BlobRef.from_plain(blob)  # raises on anything but a blob reference
        note["attachments"] = [*attachments, {"name": name, **ref.to_plain()}]
        self.publish("notes", {"change": "attached", "id": note_id})
        return len(attachments)

    # ---- what ramraft asks of the model -----------------------------------------------------

    def blob_refs(self) -> list[str]:
        """Every blob a note refers to: the others are collected."""
        return [a["sha256"] for n in self.notes.values() for a in n.get("attachments", ())]

    # ---- reads: plain memory, no Raft -------------------------------------------------------

    def listing(self) -> list[dict[str, Any]]:
        """The notes on the board: pinned first, then newest first."""
        board = [n for n in self.notes.values() if not n.get("archived")]
        return sorted(board, key=lambda n: (not n["pinned"], -n["id"]))

    def archived(self) -> list[dict[str, Any]]:
        """Archived notes, newest first."""
        return sorted((n for n in self.notes.values() if n.get("archived")), key=lambda n: -n["id"])

    def stale(self, cutoff: float) -> list[int]:
        """Notes on the board, not pinned, written before ``cutoff``."""
        return [
            n["id"]
            for n in self.notes.values()
            if n["created"] < cutoff and not n["pinned"] and not n.get("archived")
        ]


# ---- a background job: on the leader only, every ARCHIVE_EVERY_SECONDS ----------------------


@background(every=ARCHIVE_EVERY_SECONDS)
async def archive_old_notes(board: Board) -> None:
    """Archive the notes nobody pinned within ARCHIVE_AFTER_DAYS. The time
    is taken here, outside the command, so every node applies the same ids."""
    stale = board.stale(time.time() - ARCHIVE_AFTER_DAYS * 86400)
    if stale:
        await board.archive(stale)


def check_attachment(name: str, count: int) -> None:
    if not name or len(name) > MAX_FILE_NAME or "/" in name or "\\" in name:
        raise ValueError(f"a file name is 1-{MAX_FILE_NAME} characters, without slashes")
    if count >= MAX_ATTACHMENTS:
        raise ValueError(f"a note has at most {MAX_ATTACHMENTS} files")


def check_note(title: str, body: str, author: str) -> None:
    """Raise ValueError for a note the board does not take (used by the page
    handler to answer the form before proposing, and by the command itself)."""
    if not title:
        raise ValueError("a note needs a title")
    if len(title) > MAX_TITLE:
        raise ValueError(f"the title is longer than {MAX_TITLE} characters")
    if len(body) > MAX_BODY:
        raise ValueError(f"the text is longer than {MAX_BODY} characters")
    if len(author) > MAX_AUTHOR:
        raise ValueError(f"the name is longer than {MAX_AUTHOR} characters")

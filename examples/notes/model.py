"""The notes board's replicated state: plain Python objects in every node's RAM.

Every change is a ``@command``: calling ``board.add(...)`` on any node proposes
the call through Raft, and every node runs the method on its own copy, in log
order. So a command must be deterministic: the time a note was written is an
argument, taken by the page handler before the call, never ``time.time()``
inside the command. Commands check everything before changing anything (a
command that raises keeps what it changed before raising).

Attachments are blobs (ramraft's files beside the log): the page handler
uploads the file with ``ctx.blobs.put`` (stored on a majority of nodes, never
in the log) and then records its reference with ``attach``. ``blob_refs``
tells ramraft which blobs the board still refers to: the attachments of a
deleted note are collected once the grace period has passed.
"""

from __future__ import annotations

from typing import Any

from ramraft import BlobRef, ReplicatedModel, command

MAX_TITLE = 120
MAX_BODY = 4000
MAX_AUTHOR = 40
MAX_ATTACHMENTS = 10
MAX_FILE_NAME = 120


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
        }
        return note_id

    @command
    def pin(self, note_id: int, pinned: bool) -> bool:
        note = self.notes.get(note_id)
        if note is None:
            return False
        note["pinned"] = bool(pinned)
        return True

    @command
    def delete(self, note_id: int) -> bool:
        return self.notes.pop(note_id, None) is not None

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
        return len(attachments)

    # ---- what ramraft asks of the model -----------------------------------------------------

    def blob_refs(self) -> list[str]:
        """Every blob a note refers to: the others are collected."""
        return [a["sha256"] for n in self.notes.values() for a in n.get("attachments", ())]

    # ---- reads: plain memory, no Raft -------------------------------------------------------

    def listing(self) -> list[dict[str, Any]]:
        """Pinned notes first, then newest first."""
        return sorted(self.notes.values(), key=lambda n: (not n["pinned"], -n["id"]))


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

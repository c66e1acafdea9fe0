"""A notes board: a small application on ramraft's embedding API.

Run it on a local three-node cluster::

    ramraft cluster --app examples.notes:app

and open http://127.0.0.1:8001/app/ (or 8002, 8003: every node serves it).
See README.md next to this file.
"""

from __future__ import annotations

from ramraft import Application

from .model import Board, archive_old_notes
from .pages import routes


def app() -> Application:
    """The ``--app`` factory: one Board per node, its pages and its job."""
    board = Board()
    return Application(board, routes=routes(board), title="Notes board", jobs=[archive_old_notes])


__all__ = ["Board", "app", "archive_old_notes"]

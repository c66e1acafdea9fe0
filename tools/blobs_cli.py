"""``ramraft blob``: upload, download, describe and delete blobs (files kept
beside the replicated state, outside the log; README: Blobs).

    ramraft blob put photo.jpg                 # prints its reference: the SHA-256 in hex
    ramraft blob get REF -o copy.jpg           # or to standard output without -o
    ramraft blob info REF                      # size and content type
    ramraft blob delete REF

The output rule of every client command holds (tools/cli.py): standard
output carries the answer only; a blob that does not exist is a negative
answer (exit status 1, one line on standard error). Blob commands wait up to
10 minutes unless --timeout (or RAMRAFT_TIMEOUT) says otherwise: they move
a lot of data.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ramraft.client import InvalidArgument, NotFound
from ramraft.client._blobs import BlobInfo, blob_ref

__all__ = ["register"]

EPILOG = """\
examples:
  ramraft blob put photo.jpg                  # prints the reference (SHA-256, hex)
  ramraft blob put - --content-type text/csv < report.csv
  ramraft blob get 3f0a...c2 -o copy.jpg
  ramraft blob get sha256:3f0a...c2 > copy.jpg
  ramraft blob info 3f0a...c2 --json
  ramraft blob delete 3f0a...c2

Blob commands wait up to 10 minutes unless --timeout (or RAMRAFT_TIMEOUT) says
otherwise: they move a lot of data.

exit status: 0 ok; 1 no such blob; 2 bad usage; 3 the cluster could not answer or refused."""


def _timeout(args: argparse.Namespace) -> float | None:
    """Only an explicit --timeout or RAMRAFT_TIMEOUT: the default is the
    client's blob default, not the 5 s of key-value calls."""
    from ramraft.tools.cli import timeout_from_args

    if getattr(args, "timeout", None) is None and not os.environ.get("RAMRAFT_TIMEOUT"):
        return None
    return timeout_from_args(args)


def _info_json(info: BlobInfo) -> dict[str, Any]:
    document: dict[str, Any] = {
        "sha256": info.sha256,
        "size": info.size,
        "content_type": info.content_type,
    }
    if info.index:
        document["index"] = info.index
    return document


def _missing(args: argparse.Namespace, ref: str) -> int:
    from ramraft.tools.cli import EXIT_NEGATIVE, _print_json, json_from_args

    if json_from_args(args):
        _print_json({"ref": ref, "found": False})
    else:
        sys.stderr.write(f"ramraft: blob not found: {ref}\n")
    return EXIT_NEGATIVE


def _cmd_blob(client: Any, args: argparse.Namespace) -> int:
    from ramraft.tools.cli import (
        EXIT_NEGATIVE,
        EXIT_OK,
        UsageError,
        _print_json,
        json_from_args,
        open_stdin,
    )

    timeout = _timeout(args)
    as_json = json_from_args(args)
    if args.action == "put":
        if args.file == "-":
            source: Any = open_stdin("blob put -", "give a FILE").buffer
        elif not os.path.isfile(args.file):
            why = "not a regular file" if os.path.exists(args.file) else "no such file"
            raise UsageError(f"blob put: {args.file}: {why}")
        else:
            try:
                open(args.file, "rb").close()  # unreadable: say so before any upload
            except OSError as e:
                raise UsageError(f"blob put: {args.file}: {e.strerror}") from None
            source = args.file
        info = client.put_blob(source, content_type=args.content_type, timeout=timeout)
        if as_json:
            _print_json(_info_json(info))
        else:
            sys.stdout.write(f"{info.sha256}\n")
        return EXIT_OK
    ref = args.ref
    try:
        blob_ref(ref)
    except InvalidArgument as e:
        raise UsageError(f"blob {args.action}: {e}") from None
    try:
        if args.action == "get":
            out = args.output
            if out in (None, "-"):
                if as_json:
                    raise UsageError("blob get --json needs -o FILE (the bytes go there)")
                info = client.read_blob(ref, sys.stdout.buffer, timeout=timeout)
                sys.stdout.buffer.flush()
            else:
                if os.path.isdir(out):
                    raise UsageError(f"blob get -o {out}: is a directory; give a file name")
                try:
                    info = client.read_blob(ref, out, timeout=timeout)
                except OSError as e:
                    # The file (written beside it first) could not be written.
                    raise UsageError(f"blob get -o {out}: {e.strerror}") from None
                if as_json:
                    _print_json(_info_json(info) | {"file": out})
                else:
                    sys.stdout.write(f"{info.size} bytes written to {out}\n")
            return EXIT_OK
        if args.action == "info":
            info = client.blob_info(ref, timeout=timeout)
            if as_json:
                _print_json(_info_json(info))
            else:
                sys.stdout.write(f"{info.sha256}  {info.size} bytes  {info.content_type}\n")
            return EXIT_OK
    except NotFound:
        return _missing(args, ref)
    deleted = client.delete_blob(ref, timeout=timeout)
    if as_json:
        _print_json({"ref": ref, "deleted": deleted})
    elif deleted:
        sys.stdout.write("deleted\n")
    else:
        sys.stderr.write(f"ramraft: blob not found: {ref}\n")
    return EXIT_OK if deleted else EXIT_NEGATIVE


def register(sub: Any) -> None:
    from ramraft.tools.cli import add_client_options, client_command

    p = sub.add_parser(
        "blob",
        help="upload, download, describe or delete a blob",
        description=(
            "Blobs are files kept beside the replicated state, outside the Raft log: an upload "
            "is answered once a majority of the nodes hold it, and any node serves it. A "
            "reference is the blob's SHA-256 in hex ('sha256:<hex>' is accepted too)."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_client_options(p)
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    put = actions.add_parser("put", help="upload FILE; prints its reference")
    put.add_argument("file", metavar="FILE", help="the file ('-': standard input)")
    put.add_argument(
        "--content-type",
        metavar="TYPE",
        help="its content type (default: guessed from the name, else application/octet-stream)",
    )
    get = actions.add_parser("get", help="download a blob")
    get.add_argument("ref", metavar="REF")
    get.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write it to FILE, whole or not at all (default: standard output)",
    )
    info = actions.add_parser("info", help="a blob's size and content type")
    info.add_argument("ref", metavar="REF")
    delete = actions.add_parser("delete", help="delete a blob from every node")
    delete.add_argument("ref", metavar="REF")
    for action in (put, get, info, delete):
        add_client_options(action)
    p.set_defaults(func=client_command(_cmd_blob))

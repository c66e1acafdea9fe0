"""``ramraft watch``, ``ramraft txn`` and ``ramraft lease``: the key-value
version 2 commands, registered into tools/cli.py (the output rule is
cli.py's: standard output carries the answer, one line "ramraft: ..." on
standard error for anything else).

Keys and values print as ``ramraft range`` prints them, with anything not
printable escaped (``\\n``, ``\\x00``, ``\\xff``...), so that one event, or
one result, is one line.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from typing import Any

from ramraft.client import Compare, TxnOp, TxnResult, WatchEvent, WatchProgress
from ramraft.client._sync import Client
from ramraft.client.errors import NotFound
from ramraft.tools.cli import (
    EXIT_NEGATIVE,
    EXIT_OK,
    UsageError,
    add_client_options,
    client_command,
    json_from_args,
    open_stdin,
    whole_number,
)

__all__ = ["parse_compare", "parse_op", "printable", "register"]


def printable(data: bytes | str) -> str:
    """Text for one line: UTF-8 as it is, anything else escaped."""
    text = data.decode("utf-8", errors="backslashreplace") if isinstance(data, bytes) else data
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _value_json(value: bytes) -> dict[str, Any]:
    import base64

    try:
        text: str | None = value.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {"value": text, "value_base64": base64.b64encode(value).decode("ascii")}


# -- watch ------------------------------------------------------------------------------


def _cmd_watch(client: Client, args: argparse.Namespace) -> int:
    as_json = json_from_args(args)
    seen = 0
    with client.watch(
        args.prefix, prefix=not args.key, start_revision=args.rev, timeout=client.timeout
    ) as watch:
        for event in watch:
            if isinstance(event, WatchProgress):
                continue
            assert isinstance(event, WatchEvent)
            if as_json:
                doc: dict[str, Any] = {
                    "type": event.type,
                    "key": event.key,
                    "revision": event.revision,
                }
                if event.type == "PUT":
                    doc |= _value_json(event.value) | {
                        "create_revision": event.create_revision,
                        "version": event.version,
                        "lease": event.lease,
                    }
                line = json.dumps(doc, ensure_ascii=False)
            elif event.type == "PUT":
                line = f"PUT {printable(event.key)} {printable(event.value)}"
            else:
                line = f"DELETE {printable(event.key)}"
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
            seen += 1
            if args.count and seen >= args.count:
                break
    return EXIT_OK


# -- txn ----------------------------------------------------------------------------------

_COMPARE = re.compile(
    r"^\s*(value|version|create|mod|lease)\s*\(\s*(.+?)\s*\)\s*(==|=|!=|<|>)\s*(.+?)\s*$"
)
_TARGETS = {
    "value": Compare.value,
    "version": Compare.version,
    "create": Compare.create_revision,
    "mod": Compare.mod_revision,
    "lease": Compare.lease,
}


def _word(text: str, what: str) -> str:
    try:
        words = shlex.split(text)
    except ValueError as e:
        raise UsageError(f"{what} {text!r}: {e}") from None
    if len(words) != 1:
        raise UsageError(f"{what} {text!r}: one word, or quote it")
    return words[0]


def parse_compare(text: str) -> Compare:
    """``value("k") = "v"``, ``version(k) > 0``, ``mod(k) < 42``,
    ``create(k) = 0``, ``lease(k) = 7`` (``=`` and ``==`` are the same)."""
    match = _COMPARE.match(text)
    if match is None:
        raise UsageError(
            f"compare {text!r}: write TARGET(KEY) OP OPERAND, TARGET one of value, version, "
            "create, mod, lease and OP one of =, !=, <, >"
        )
    target, raw_key, op, raw_operand = match.groups()
    key = _word(raw_key, "compare key")
    operand = _word(raw_operand, "compare operand")
    op = "==" if op == "=" else op
    if target == "value":
        return Compare.value(key, op, operand.encode())  # type: ignore[arg-type]
    try:
        number = int(operand)
    except ValueError:
        raise UsageError(f"compare {text!r}: {target} compares with a whole number") from None
    made: Compare = _TARGETS[target](key, op, number)  # type: ignore[operator]
    try:
        made.message()  # a number the request cannot hold
    except ValueError:
        raise UsageError(f"compare {text!r}: {number} is out of range") from None
    return made


def parse_op(text: str) -> TxnOp:
    """``put KEY VALUE [--lease ID]``, ``get KEY``, ``del KEY``, ``del
    --prefix PREFIX``, ``range PREFIX [--limit N]``."""
    try:
        words = shlex.split(text)
    except ValueError as e:
        raise UsageError(f"op {text!r}: {e}") from None
    if not words:
        raise UsageError("an empty op")
    verb, rest = words[0].lower(), words[1:]
    try:
        if verb == "put":
            lease = 0
            if len(rest) == 4 and rest[2] == "--lease":
                lease = int(rest[3])
                rest = rest[:2]
            if len(rest) == 2:
                return TxnOp.put(rest[0], rest[1].encode(), lease=lease)
        elif verb == "get" and len(rest) == 1:
            return TxnOp.get(rest[0])
        elif verb in ("del", "delete"):
            if len(rest) == 1:
                return TxnOp.delete(rest[0])
            if len(rest) == 2 and rest[0] == "--prefix":
                return TxnOp.delete_prefix(rest[1])
        elif verb == "range":
            if len(rest) == 1:
                return TxnOp.range(rest[0])
            if len(rest) == 3 and rest[1] == "--limit":
                return TxnOp.range(rest[0], limit=int(rest[2]))
    except ValueError:
        pass
    raise UsageError(
        f"op {text!r}: use put KEY VALUE [--lease ID], get KEY, del KEY, del --prefix PREFIX, "
        "range PREFIX [--limit N]"
    )


def _txn_from_stdin() -> tuple[list[Compare], list[TxnOp], list[TxnOp]]:
    """Three sections separated by an empty line: compares, the ops run when
    they all hold, the ops run otherwise (as etcdctl reads them)."""
    sections: list[list[str]] = [[]]
    for line in sys.stdin.read().splitlines():
        if not line.strip():
            if len(sections) < 3:
                sections.append([])
            continue
        if line.lstrip().startswith("#"):
            continue
        sections[-1].append(line)
    sections += [[] for _ in range(3 - len(sections))]
    return (
        [parse_compare(c) for c in sections[0]],
        [parse_op(o) for o in sections[1]],
        [parse_op(o) for o in sections[2]],
    )


def _result_lines(result: TxnResult, as_json: bool) -> str:
    if as_json:
        responses: list[dict[str, Any]] = []
        for r in result.responses:
            if r.kind == "get":
                doc: dict[str, Any] = {"found": r.found}
                if r.kv is not None:
                    doc |= {"key": r.kv.key} | _value_json(r.kv.value)
                    doc |= {"mod_revision": r.kv.mod_revision, "version": r.kv.version}
                responses.append({"get": doc})
            elif r.kind == "range":
                items = [{"key": kv.key} | _value_json(kv.value) for kv in r.kvs]
                responses.append({"range": {"items": items, "more": r.more}})
            elif r.kind in ("delete", "delete_range"):
                responses.append({r.kind: {"deleted": r.deleted}})
            else:
                responses.append({r.kind: {}})
        document = {
            "succeeded": result.succeeded,
            "revision": result.revision,
            "index": result.index,
            "responses": responses,
        }
        return json.dumps(document, ensure_ascii=False) + "\n"
    lines = ["SUCCESS" if result.succeeded else "FAILURE"]
    for r in result.responses:
        if r.kind == "put":
            lines.append("OK")
        elif r.kind == "get":
            if r.kv is None:
                lines.append("(absent)")
            else:
                lines.append(f"{printable(r.kv.key)}\t{printable(r.kv.value)}")
        elif r.kind == "range":
            lines += [f"{printable(kv.key)}\t{printable(kv.value)}" for kv in r.kvs]
        else:
            lines.append(f"deleted {r.deleted}")
    return "\n".join(lines) + "\n"


def _cmd_txn(client: Client, args: argparse.Namespace) -> int:
    if args.compare or args.then or args.otherwise:
        compares = [parse_compare(c) for c in args.compare]
        success = [parse_op(o) for o in args.then]
        failure = [parse_op(o) for o in args.otherwise]
    elif open_stdin("txn", "give --compare/--then/--else").isatty():
        raise UsageError("txn: give --compare/--then/--else, or the transaction on standard input")
    else:
        compares, success, failure = _txn_from_stdin()
    result = client.txn(compares, success, failure)
    sys.stdout.write(_result_lines(result, json_from_args(args)))
    return EXIT_OK


# -- lease --------------------------------------------------------------------------------


def _cmd_lease(client: Client, args: argparse.Namespace) -> int:
    as_json = json_from_args(args)
    action = args.action
    if action == "grant":
        grant = client.lease_grant(args.ttl, lease_id=args.id)
        out = (
            json.dumps({"id": grant.id, "ttl": grant.ttl})
            if as_json
            else f"lease {grant.id} granted with ttl {grant.ttl}s"
        )
        sys.stdout.write(out + "\n")
        return EXIT_OK
    if action == "revoke":
        try:
            deleted = client.lease_revoke(args.id)
        except NotFound:
            # A negative answer, as deleting a key that is not there is.
            if as_json:
                sys.stdout.write(json.dumps({"id": args.id, "revoked": False}) + "\n")
            else:
                sys.stderr.write(f"ramraft: lease {args.id} not found (expired or revoked)\n")
            return EXIT_NEGATIVE
        out = (
            json.dumps({"id": args.id, "revoked": True, "deleted": deleted})
            if as_json
            else f"lease {args.id} revoked ({deleted} keys deleted)"
        )
        sys.stdout.write(out + "\n")
        return EXIT_OK
    # keep-alive: every ttl/3 seconds until interrupted (or once)
    import time

    while True:
        ttl = client.lease_keep_alive(args.id)
        if ttl <= 0:
            if as_json:
                sys.stdout.write(json.dumps({"id": args.id, "ttl": 0}) + "\n")
                return EXIT_NEGATIVE
            sys.stderr.write(f"ramraft: lease {args.id} is gone (expired or revoked)\n")
            return EXIT_NEGATIVE
        out = json.dumps({"id": args.id, "ttl": ttl}) if as_json else f"lease {args.id} ttl {ttl}"
        sys.stdout.write(out + "\n")
        sys.stdout.flush()
        if args.once:
            return EXIT_OK
        time.sleep(max(0.5, ttl / 3))


# -- registration ---------------------------------------------------------------------------


def _positive(text: str) -> int:
    return whole_number(text, minimum=1)


def register(sub: Any) -> None:
    def command(name: str, help: str, epilog: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(
            name,
            help=help,
            description=help,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_client_options(p)
        return p

    p = command(
        "watch",
        "print every change of the keys with a prefix as it happens, one line each",
        "examples:\n  ramraft watch users/                 # PUT key value / DELETE key\n"
        "  ramraft watch config --key --json     # one key, JSON lines\n"
        "  ramraft watch users/ --rev 120        # from revision 120 (replayed)\n"
        "  ramraft watch jobs/ --count 1         # wait for the next change\n\n"
        "The watch moves to another node when its node goes away, without losing\n"
        "or repeating a change. A revision older than the history the nodes keep\n"
        "is an error (read the keys, then watch from their revision + 1).",
    )
    p.add_argument("prefix", nargs="?", default="", help="default: all keys")
    p.add_argument("--key", action="store_true", help="watch exactly this key, not a prefix")
    p.add_argument(
        "--rev", type=whole_number, default=0, help="first revision to print (default: from now)"
    )
    p.add_argument("--count", type=whole_number, default=0, help="stop after N events")
    p.set_defaults(func=client_command(_cmd_watch))

    p = command(
        "txn",
        "if (compares) then (ops) else (ops), atomically; the first line says SUCCESS or "
        "FAILURE, then one line per op",
        "examples:\n"
        "  ramraft txn --compare 'value(lock) = me' --then 'del lock' --else 'get lock'\n"
        "  ramraft txn --compare 'mod(counter) = 42' --then 'put counter 8'\n"
        "  ramraft txn <<'EOF'\n"
        "  version(lock) = 0\n\n"
        "  put lock me --lease 7\n\n"
        "  get lock\n"
        "  EOF\n\n"
        "compares: value(KEY) OP VALUE, version(KEY) OP N, create(KEY) OP N,\n"
        "  mod(KEY) OP N, lease(KEY) OP N; OP is =, !=, < or >. An absent key has\n"
        "  version 0; its value compares false whatever the test.\n"
        "ops: put KEY VALUE [--lease ID], get KEY, del KEY, del --prefix PREFIX,\n"
        "  range PREFIX [--limit N]. Quote words with spaces as in a shell.\n"
        "On standard input: the compares, an empty line, the ops if they hold, an\n"
        "empty line, the ops otherwise.",
    )
    p.add_argument("--compare", action="append", default=[], metavar="EXPR")
    p.add_argument("--then", action="append", default=[], metavar="OP")
    p.add_argument("--else", dest="otherwise", action="append", default=[], metavar="OP")
    p.set_defaults(func=client_command(_cmd_txn))

    p = command(
        "lease",
        "grant, revoke or keep alive a lease (keys put with --lease go when it ends)",
        "examples:\n  ramraft lease grant 10              # prints the lease id\n"
        "  ramraft put service/a addr --lease ID\n"
        "  ramraft lease keep-alive ID          # every ttl/3 s until Ctrl-C\n"
        "  ramraft lease revoke ID              # deletes its keys now",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    grant = actions.add_parser("grant", help="grant a lease of TTL seconds")
    add_client_options(grant)
    grant.add_argument("ttl", type=_positive, metavar="TTL")
    grant.add_argument("--id", type=whole_number, default=0, help="the id (default: picked)")
    revoke = actions.add_parser("revoke", help="revoke a lease, deleting its keys")
    add_client_options(revoke)
    revoke.add_argument("id", type=_positive, metavar="ID")
    keep = actions.add_parser("keep-alive", help="renew a lease every ttl/3 seconds")
    add_client_options(keep)
    keep.add_argument("id", type=_positive, metavar="ID")
    keep.add_argument("--once", action="store_true", help="renew once and exit")
    p.set_defaults(func=client_command(_cmd_lease))

"""The ``ramraft`` command line.

Client subcommands live here; the node's (``node``, ``cluster``) and the
tools' (``bench``, ``chaos``, ``certs``, ``tokens``) are registered by
``node_cli.register(subparsers)``. A registered subcommand sets ``func`` with
``parser.set_defaults(func=handler)``; ``handler(args) -> int`` returns the
exit status. ``add_client_options`` and ``client_from_args`` give other
subcommands the same --endpoints/--timeout/--json handling.

Exit status: 0 success; 1 a negative answer (get: key not found; delete: key
did not exist; cas: not swapped); 2 bad usage; 3 the cluster could not
answer or refused the request; 130 interrupted.

Output rule, for every command: standard output carries the answer and
nothing else (a value, a table, "OK", "deleted"), so that it can be piped;
everything that is not the answer goes to standard error, one line starting
"ramraft: ": a negative answer (exit status 1), an error (2, 3) and a note
(range's "more keys"). With --json the answer is one JSON document on
standard output, negative answers included; an error (2, 3) leaves standard
output empty and is the one line on standard error.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message as ProtoMessage

from ramraft._version import __version__
from ramraft.client import _core
from ramraft.client._sync import Client
from ramraft.client.errors import RamraftError
from ramraft.proto import admin_pb2

__all__ = [
    "DEFAULT_ENDPOINTS",
    "EXIT_ERROR",
    "EXIT_NEGATIVE",
    "EXIT_OK",
    "EXIT_USAGE",
    "INT64_MAX",
    "UsageError",
    "add_client_options",
    "build_parser",
    "client_command",
    "client_from_args",
    "main",
    "open_stdin",
]

DEFAULT_ENDPOINTS = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
EXIT_OK = 0
EXIT_NEGATIVE = 1
EXIT_USAGE = 2
EXIT_ERROR = 3
EXIT_INTERRUPTED = 130  # Ctrl-C: the entry, ramraft/__main__.py, answers it

Handler = Callable[[argparse.Namespace], int]

EPILOG = f"""\
examples:
  ramraft put greeting hello
  ramraft get greeting
  ramraft get greeting --serializable        # from the contacted node's memory
  echo -n hello | ramraft put greeting        # value from standard input
  ramraft cas greeting --expected hello bye   # set only if the value is "hello"
  ramraft cas lock --absent me                # set only if the key is absent
  ramraft range users/ --json
  ramraft watch users/                        # PUT key value / DELETE key, as they happen
  ramraft txn --compare 'value(lock) = me' --then 'del lock'
  ramraft lease grant 10                      # then: ramraft put k v --lease ID
  ramraft status
  ramraft members add ramraft-3 10.0.0.4:7001
  ramraft --endpoints 10.0.0.1:7001,10.0.0.2:7001 transfer-leader ramraft-2

  ramraft --tls-ca certs/ca.pem --token-file admin.token status   # TLS and a token

environment:
  RAMRAFT_ENDPOINTS  default for --endpoints (otherwise {DEFAULT_ENDPOINTS})
  RAMRAFT_TIMEOUT    default for --timeout in seconds (otherwise 5)
  RAMRAFT_TOKEN, RAMRAFT_TOKEN_FILE    default for --token, --token-file
  RAMRAFT_TLS_CA, RAMRAFT_TLS_CERT, RAMRAFT_TLS_KEY    default for --tls-ca,
                     --tls-cert, --tls-key (the names a node's pod has: inside
                     a pod the CLI talks TLS with the node's certificate)

exit status: 0 ok; 1 negative answer (key not found, not deleted, not
swapped); 2 bad usage; 3 the cluster could not answer or refused.
Standard output carries only the answer; a negative answer, an error or a
note goes to standard error (with --json, a negative answer is a document on
standard output too; an error leaves standard output empty).
A write that fails with "unavailable" or "deadline exceeded" may or may not
have been applied."""


class UsageError(Exception):
    """Bad command-line input found after parsing (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """Reports a usage error as one line on stderr (argparse prints the whole
    usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# -- options shared by client subcommands ----------------------------------------


def _options_parent() -> _Parser:
    # default=SUPPRESS: the options may be given before or after the
    # subcommand without one place overwriting the other with its default.
    parent = _Parser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument(
        "--endpoints",
        metavar="HOST:PORT,...",
        default=argparse.SUPPRESS,
        help="nodes to contact, any of them will do (env RAMRAFT_ENDPOINTS; "
        f"default {DEFAULT_ENDPOINTS})",
    )
    group.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=float,
        default=argparse.SUPPRESS,
        help="overall deadline of each request, retries included (env RAMRAFT_TIMEOUT; default 5)",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print one JSON document on stdout, for scripts",
    )
    sec = parent.add_argument_group("security")
    sec.add_argument(
        "--token",
        default=argparse.SUPPRESS,
        help="bearer token for clusters that require one (env RAMRAFT_TOKEN; prefer "
        "--token-file: a command line is visible to other users)",
    )
    sec.add_argument(
        "--token-file",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="read the token from FILE (env RAMRAFT_TOKEN_FILE)",
    )
    sec.add_argument(
        "--tls",
        action="store_true",
        default=argparse.SUPPRESS,
        help="use TLS, trusting the system's roots (implied by --tls-ca)",
    )
    sec.add_argument(
        "--tls-ca",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="CA certificate(s) that sign the nodes' certificates (env RAMRAFT_TLS_CA)",
    )
    sec.add_argument(
        "--tls-cert",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="client certificate, for nodes that require one (env RAMRAFT_TLS_CERT)",
    )
    sec.add_argument(
        "--tls-key",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="the client certificate's key (env RAMRAFT_TLS_KEY)",
    )
    sec.add_argument(
        "--tls-server-name",
        metavar="NAME",
        default=argparse.SUPPRESS,
        help="check the nodes' certificates against NAME instead of the endpoint's host",
    )
    return parent


def add_client_options(parser: argparse.ArgumentParser) -> None:
    """Adds --endpoints, --timeout and --json to a (sub)parser."""
    for action in _options_parent()._actions:
        if action.dest != "help":
            parser._add_action(action)


def endpoints_from_args(args: argparse.Namespace) -> list[str]:
    raw = getattr(args, "endpoints", None)
    source = "--endpoints"
    if raw is None:
        raw = os.environ.get("RAMRAFT_ENDPOINTS") or None
        source = "RAMRAFT_ENDPOINTS"
    if raw is None:
        raw = DEFAULT_ENDPOINTS
    try:
        return _core.parse_endpoints(raw)
    except ValueError as e:
        raise UsageError(f"{source}: {e}") from None


def timeout_from_args(args: argparse.Namespace) -> float:
    value: Any = getattr(args, "timeout", None)
    source = "--timeout"
    if value is None:
        env = os.environ.get("RAMRAFT_TIMEOUT")
        source = "RAMRAFT_TIMEOUT"
        try:
            value = float(env) if env else _core.DEFAULT_TIMEOUT
        except ValueError:
            raise UsageError(f"{source}: not a number: {env!r}") from None
    try:
        return _core.check_timeout(value)
    except ValueError as e:
        raise UsageError(f"{source}: {e}") from None


def json_from_args(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def _option(args: argparse.Namespace, name: str) -> str | None:
    """--NAME, else RAMRAFT_NAME, else None (empty counts as unset)."""
    value = getattr(args, name, None)
    if value is None:
        value = os.environ.get(f"RAMRAFT_{name.upper()}")
    return value or None


def token_from_args(args: argparse.Namespace) -> str | None:
    token = _option(args, "token")
    path = _option(args, "token_file")
    if token is not None and path is not None:
        raise UsageError("give --token or --token-file, not both")
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                token = f.read(_TOKEN_FILE_MAX + 1).strip()
        except OSError as e:
            raise UsageError(f"--token-file {path}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise UsageError(f"--token-file {path}: not a text file; {_ONE_TOKEN}") from None
        if not token:
            raise UsageError(f"--token-file {path} is empty")
        if len(token) > _TOKEN_FILE_MAX or len(token.split()) > 1:
            # e.g. the node's --auth-tokens file (lines ROLE NAME TOKEN)
            raise UsageError(f"--token-file {path} holds more than one word; {_ONE_TOKEN}")
    try:
        _core.token_metadata(token)
    except ValueError as e:
        raise UsageError(f"{'--token-file ' + path if path else '--token'}: {e}") from None
    return token


# A token file holds one token (`ramraft tokens` makes 43 characters).
_TOKEN_FILE_MAX = 4096
_ONE_TOKEN = (
    "it must hold one token alone (one TOKEN from a line of the nodes' --auth-tokens file, "
    "not that file)"
)


def _tls_requested(args: argparse.Namespace) -> bool:
    """--tls, --tls-ca or --tls-server-name (or their variables) is given."""
    return bool(
        getattr(args, "tls", False) or _option(args, "tls_ca") or _option(args, "tls_server_name")
    )


def tls_from_args(args: argparse.Namespace) -> _core.TLSOptions | None:
    ca, cert, key = (_option(args, n) for n in ("tls_ca", "tls_cert", "tls_key"))
    name = _option(args, "tls_server_name")
    if not _tls_requested(args):
        if cert or key:
            raise UsageError("--tls-cert/--tls-key need TLS: give --tls-ca (or --tls)")
        return None
    try:
        tls = _core.TLSOptions.from_files(ca, cert, key, name)
    except OSError as e:
        raise UsageError(f"TLS file {e.filename}: {e.strerror}") from None
    except ValueError as e:
        raise UsageError(f"--tls-cert/--tls-key: {e}") from None
    # grpc takes any bytes, logs its complaint at the first connection and
    # then fails it as if the node were unreachable: say which file is wrong.
    for flag, path, data, marker in (
        ("--tls-ca", ca, tls.ca, b"-----BEGIN CERTIFICATE-----"),
        ("--tls-cert", cert, tls.cert, b"-----BEGIN CERTIFICATE-----"),
        ("--tls-key", key, tls.key, b"PRIVATE KEY-----"),
    ):
        if data is not None and marker not in data:
            what = "private key" if flag == "--tls-key" else "certificate"
            raise UsageError(
                f"{flag} {path}: not a PEM {what} (no '{marker.decode()}' line; "
                "`ramraft certs` writes them)"
            )
    return tls


def client_from_args(args: argparse.Namespace) -> Client:
    return Client(
        endpoints_from_args(args),
        timeout_from_args(args),
        token=token_from_args(args),
        tls=tls_from_args(args),
    )


def open_stdin(command: str, advice: str) -> TextIO:
    """Standard input, for ``command`` about to read it; a UsageError
    ending in ``advice`` when the command was started with it closed
    (``<&-``): Python then has no sys.stdin."""
    if sys.stdin is None:
        raise UsageError(f"{command}: standard input is closed: {advice}")
    return sys.stdin


# -- output helpers ---------------------------------------------------------------


def _print_json(document: object) -> None:
    sys.stdout.write(json.dumps(document, ensure_ascii=False) + "\n")


def _write_bytes(data: bytes) -> None:
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    if sys.stdout.isatty() and not data.endswith(b"\n"):
        sys.stdout.buffer.write(b"\n")
    sys.stdout.buffer.flush()


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="backslashreplace")


def _value_fields(name: str, data: bytes | None) -> dict[str, Any]:
    """A value as JSON: the UTF-8 text (null when not valid UTF-8 or absent)
    and, always, base64."""
    if data is None:
        return {name: None, f"{name}_base64": None}
    try:
        text: str | None = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {name: text, f"{name}_base64": base64.b64encode(data).decode("ascii")}


def _message_dict(message: ProtoMessage) -> dict[str, Any]:
    """A protobuf message as plain JSON types (ints stay ints, enums become
    their names, every field present)."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.is_repeated:
            out[field.name] = [_json_value(field, v) for v in value]
        else:
            out[field.name] = _json_value(field, value)
    return out


def _json_value(field: Any, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_ENUM:
        # ROLE_PRE_CANDIDATE -> "pre-candidate", VOTER -> "voter"
        enum = field.enum_type
        if enum is None or value not in enum.values_by_number:
            return value
        name: str = enum.values_by_number[value].name
        return name.removeprefix(enum.name.upper() + "_").lower().replace("_", "-")
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return _message_dict(value)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return _text(value)
    return value


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _suffrage(value: int) -> str:
    return admin_pb2.Suffrage.Name(value).lower()  # type: ignore[arg-type]


def _consistency(args: argparse.Namespace) -> int:
    return _core.SERIALIZABLE if args.serializable else _core.LINEARIZABLE


# -- subcommands -------------------------------------------------------------------


def _cmd_put(client: Client, args: argparse.Namespace) -> int:
    if args.value in (None, "-"):
        stdin = open_stdin("put", "give the VALUE as an argument")
        if args.value is None and stdin.isatty():
            raise UsageError("put: give a VALUE, or '-' to type it, or pipe it on standard input")
        value = stdin.buffer.read()
    else:
        value = args.value.encode()
    index = client.put(args.key, value, lease=args.lease)
    if json_from_args(args):
        _print_json({"key": args.key, "index": index})
    else:
        sys.stdout.write(f"OK (index {index})\n")
    return EXIT_OK


def _cmd_get(client: Client, args: argparse.Namespace) -> int:
    result = client.get_result(args.key, consistency=_consistency(args))
    if json_from_args(args):
        _print_json(
            {"key": args.key, "found": result.found}
            | _value_fields("value", result.value)
            | {"index": result.index}
        )
    elif result.value is not None:
        _write_bytes(result.value)
    else:
        sys.stderr.write(f"ramraft: key not found: {args.key}\n")
    return EXIT_OK if result.found else EXIT_NEGATIVE


def _cmd_delete(client: Client, args: argparse.Namespace) -> int:
    if args.prefix:
        count = client.delete_prefix(args.key)
        if json_from_args(args):
            _print_json({"prefix": args.key, "deleted": count})
        elif count:
            sys.stdout.write(f"deleted {count}\n")
        else:
            sys.stderr.write(f"ramraft: no key starts with {args.key!r}\n")
        return EXIT_OK if count else EXIT_NEGATIVE
    deleted = client.delete(args.key)
    if json_from_args(args):
        _print_json({"key": args.key, "deleted": deleted})
    elif deleted:
        sys.stdout.write("deleted\n")
    else:
        sys.stderr.write(f"ramraft: key not found: {args.key}\n")
    return EXIT_OK if deleted else EXIT_NEGATIVE


def _cmd_cas(client: Client, args: argparse.Namespace) -> int:
    expected = None if args.absent else args.expected.encode()
    result = client.cas(args.key, expected, args.value.encode())
    if json_from_args(args):
        _print_json(
            {"key": args.key, "swapped": result.swapped, "found": result.found}
            | _value_fields("current", result.current)
            | {"index": result.index}
        )
    elif result.swapped:
        sys.stdout.write(f"swapped (index {result.index})\n")
    elif result.current is None:
        sys.stderr.write("ramraft: not swapped: the key is absent\n")
    else:
        sys.stderr.write(f"ramraft: not swapped: the current value is {_text(result.current)!r}\n")
    return EXIT_OK if result.swapped else EXIT_NEGATIVE


def _cmd_range(client: Client, args: argparse.Namespace) -> int:
    consistency = _consistency(args)
    if args.limit:
        page = client.range(
            args.prefix, start_after=args.start_after, limit=args.limit, consistency=consistency
        )
        items, more = page.items, page.more
    else:
        items, more = [], False
        after = args.start_after
        while True:
            page = client.range(args.prefix, start_after=after, consistency=consistency)
            items.extend(page.items)
            if not page.more or not page.items:
                break
            after = page.items[-1][0]
    if json_from_args(args):
        _print_json(
            {"items": [{"key": k} | _value_fields("value", v) for k, v in items], "more": more}
        )
    else:
        for key, value in items:
            sys.stdout.write(f"{key}\t{_text(value)}\n")
        if more:
            sys.stderr.write(f"ramraft: more keys after {items[-1][0]!r}: use --start-after\n")
    return EXIT_OK


def _cmd_status(client: Client, args: argparse.Namespace) -> int:
    nodes: list[dict[str, Any]] = []
    members: list[dict[str, Any]] | None = None
    for endpoint in client.endpoints:
        try:
            status = client.status(endpoint=endpoint)
        except RamraftError as e:
            nodes.append({"endpoint": endpoint, "error": str(e)})
            continue
        nodes.append({"endpoint": endpoint} | _message_dict(status.node))
        if members is None and status.members_from_leader:
            members = [_message_dict(m) for m in status.members]
    if all("error" in n for n in nodes):
        # No answer at all is an error, not a table of "unreachable" rows.
        hint = NOT_RUNNING_HINT if all(_nothing_listens(n["error"]) for n in nodes) else ""
        sys.stderr.write(
            f"ramraft: error: no node answered at {', '.join(client.endpoints)}{hint}\n"
        )
        return EXIT_ERROR
    if json_from_args(args):
        _print_json({"nodes": nodes, "members": members or []})
    else:
        header = "ENDPOINT ID ROLE TERM LEADER COMMIT APPLIED LAST PID VERSION"
        rows = [header.split()]
        for n in nodes:
            if "error" in n:
                rows.append([n["endpoint"], "-", "unreachable"] + [""] * 7)
                continue
            rows.append(
                [
                    n["endpoint"],
                    n["id"],
                    n["role"],
                    str(n["term"]),
                    n["leader"] or "-",
                    str(n["commit_index"]),
                    str(n["applied_index"]),
                    str(n["last_index"]),
                    # A node of release 0.1.0 reports neither (0 and "").
                    str(n["pid"] or "-"),
                    n["version"] or "-",
                ]
            )
        sys.stdout.write(_table(rows) + "\n")
        _write_cluster_lines(nodes)
        if members:
            sys.stdout.write("\nmembers, as the leader sees them:\n")
            rows = [["ID", "ADDRESS", "SUFFRAGE", "MATCH", "LAG", "ACTIVE", "SUPPORTS"]]
            rows += [
                [
                    m["id"],
                    m["address"],
                    m["suffrage"],
                    str(m["match_index"]),
                    str(m["lag"]),
                    "yes" if m["active"] else "no",
                    # app/key-value versions its code supports ("-": not known)
                    f"app {m['app_version_supported']}, kv {m['kv_version_supported']}"
                    if m.get("app_version_supported")
                    else "-",
                ]
                for m in members
            ]
            sys.stdout.write(_table(rows) + "\n")
    return EXIT_OK


def _write_cluster_lines(nodes: list[dict[str, Any]]) -> None:
    """The cluster record under the table: its id and versions, and what no
    operator may miss: a node that halted, the divergence alarm."""
    answered = [n for n in nodes if "error" not in n]
    # The record as the node that applied the most holds it: a halted or
    # lagging node's is older (it may still say the previous app version).
    named = max(
        (n for n in answered if n.get("cluster_id")),
        key=lambda n: (not n.get("halted"), n.get("applied_index", 0)),
        default=None,
    )
    if named is not None:
        hold = ", version switches held" if named.get("upgrade_hold") else ""
        sys.stdout.write(
            f"\ncluster {named['cluster_id']}: app version {named.get('app_version', 1)}, "
            f"key-value version {named.get('kv_version', 1)}{hold}\n"
        )
    for n in answered:
        if n.get("halted"):
            sys.stdout.write(f"HALTED {n['id']}: {n['halted']}\n")
    alarm = next((n for n in answered if n.get("diverged")), None)
    if alarm is not None:
        named = alarm["diverged"]
        # Every node named: no state had a majority (each holds its own).
        what = (
            "each hold their own state, none had a majority"
            if len(named) >= len(nodes)
            else "hold other state than the majority"
        )
        sys.stdout.write(
            f"DIVERGED: {', '.join(named)} {what} "
            f"(state check at index {alarm.get('diverged_at', 0)}); see the README's runbook\n"
        )


def _cmd_transfer_leader(client: Client, args: argparse.Namespace) -> int:
    leader = client.transfer_leadership(args.target or "")
    if json_from_args(args):
        _print_json({"leader": leader})
    else:
        sys.stdout.write(f"leader is now {leader}\n")
    return EXIT_OK


def _print_members(members: list[admin_pb2.Member], args: argparse.Namespace) -> None:
    if json_from_args(args):
        _print_json({"members": [_message_dict(m) for m in members]})
        return
    rows = [["ID", "ADDRESS", "SUFFRAGE"]]
    rows += [[m.id, m.address, _suffrage(m.suffrage)] for m in members]
    sys.stdout.write(_table(rows) + "\n")


def _cmd_members(client: Client, args: argparse.Namespace) -> int:
    action = getattr(args, "action", None) or "list"
    if action == "add":
        try:
            _core.parse_endpoints([args.address])
        except ValueError as e:
            raise UsageError(str(e)) from None
        members = client.add_member(args.id, args.address)
    elif action == "remove":
        members = client.remove_member(args.id)
    else:
        members = client.members()
    _print_members(members, args)
    return EXIT_OK


def _cmd_snapshot(client: Client, args: argparse.Namespace) -> int:
    endpoint = args.endpoint
    if endpoint is not None:
        try:
            (endpoint,) = _core.parse_endpoints([endpoint])
        except ValueError as e:
            raise UsageError(f"--endpoint: {e}") from None
    index = client.snapshot(endpoint=endpoint)
    if json_from_args(args):
        _print_json({"index": index})
    else:
        sys.stdout.write(f"snapshot taken at index {index}\n")
    return EXIT_OK


def client_command(command: Callable[[Client, argparse.Namespace], int]) -> Handler:
    """A subcommand's handler that gets a Client made from the common options
    (--endpoints, --timeout, TLS, token) and closes it afterwards."""
    return _client_command(command)


def _client_command(command: Callable[[Client, argparse.Namespace], int]) -> Handler:
    def run(args: argparse.Namespace) -> int:
        with client_from_args(args) as client:
            return command(client, args)

    return run


# -- the parser -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parent = _options_parent()
    parser = _Parser(
        prog="ramraft",
        description="ramraft: a replicated in-memory key-value store. "
        "Client commands talk to any node of the cluster.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[parent],
    )
    parser.add_argument("--version", action="version", version=f"ramraft {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(
        name: str, help: str, handler: Handler, epilog: str = ""
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(
            name,
            help=help,
            description=help,
            parents=[parent],
            epilog=epilog or None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=handler)
        return p

    def serializable(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--serializable",
            action="store_true",
            help="read from the contacted node's memory at once (may be stale); "
            "default: linearizable",
        )

    p = command(
        "put",
        "set a key to a value",
        _client_command(_cmd_put),
        "examples:\n  ramraft put greeting hello\n  ramraft put photo < photo.jpg",
    )
    p.add_argument("key")
    p.add_argument("value", nargs="?", help="the value; omitted or '-': read standard input")
    p.add_argument(
        "--lease",
        type=whole_number,
        default=0,
        metavar="ID",
        help="attach the key to a lease (ramraft lease grant): it goes when the lease ends",
    )

    p = command(
        "get",
        "print the value of a key (exit status 1 when absent)",
        _client_command(_cmd_get),
        "examples:\n  ramraft get greeting\n  ramraft get greeting --serializable --json",
    )
    p.add_argument("key")
    serializable(p)

    p = command(
        "delete",
        "remove a key (exit status 1 when it did not exist)",
        _client_command(_cmd_delete),
        "examples:\n  ramraft delete greeting\n  ramraft delete --prefix sessions/   "
        "# every key with the prefix, at once",
    )
    p.add_argument("key")
    p.add_argument(
        "--prefix",
        action="store_true",
        help="delete every key that starts with KEY, in one revision (refused when more "
        "than the nodes' --max-delete-range-keys match)",
    )

    p = command(
        "cas",
        "compare and swap: set a key only if its value is as expected "
        "(exit status 1 when not swapped)",
        _client_command(_cmd_cas),
        "examples:\n  ramraft cas counter --expected 1 2\n  ramraft cas lock --absent owner-1",
    )
    p.add_argument("key")
    p.add_argument("value", help="the new value")
    expect = p.add_mutually_exclusive_group(required=True)
    expect.add_argument("--expected", metavar="VALUE", help="swap only if the value is VALUE")
    expect.add_argument("--absent", action="store_true", help="swap only if the key is absent")

    p = command(
        "range",
        "list keys with a prefix, in order",
        _client_command(_cmd_range),
        "examples:\n  ramraft range users/\n"
        "  ramraft range users/ --limit 10 --start-after users/bob",
    )
    p.add_argument("prefix", nargs="?", default="", help="default: all keys")
    p.add_argument("--start-after", default="", metavar="KEY", help="only keys after KEY")
    p.add_argument(
        "--limit", type=_limit, default=0, help="one page of at most N keys (default: all)"
    )
    serializable(p)

    command("status", "show every node's state and the members", _client_command(_cmd_status))

    p = command(
        "transfer-leader",
        "hand leadership to another voter",
        _client_command(_cmd_transfer_leader),
    )
    p.add_argument("target", nargs="?", help="the node id (default: the most caught-up voter)")

    p = command(
        "members",
        "list, add or remove members",
        _client_command(_cmd_members),
        "examples:\n  ramraft members\n  ramraft members add ramraft-3 10.0.0.4:7001\n"
        "  ramraft members remove ramraft-3",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    actions.add_parser("list", help="list the members (the default)", parents=[parent])
    add = actions.add_parser(
        "add", help="add a node: first as learner, then as voter", parents=[parent]
    )
    add.add_argument("id")
    add.add_argument("address", metavar="HOST:PORT")
    remove = actions.add_parser("remove", help="remove a node", parents=[parent])
    remove.add_argument("id")

    p = command("snapshot", "make a node take a snapshot now", _client_command(_cmd_snapshot))
    p.add_argument(
        "--endpoint", metavar="HOST:PORT", help="the node to snapshot (default: any node)"
    )

    _register_server_commands(sub)
    return parser


def _register_server_commands(sub: Any) -> None:
    from ramraft.tools import kv_cli, node_cli

    kv_cli.register(sub)
    node_cli.register(sub)


# The largest number a request's field holds (int64; range's limit is a uint32).
INT64_MAX = _core.INT64[1]
UINT32_MAX = _core.UINT32[1]


def whole_number(text: str, minimum: int = 0, maximum: int = INT64_MAX) -> int:
    """An option's whole number from ``minimum`` to ``maximum`` (the commands'
    argparse types), or a usage error naming the bound it broke."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < minimum:
        bound = "must not be negative" if minimum == 0 else f"must be at least {minimum}"
        raise argparse.ArgumentTypeError(f"{bound}: {value}")
    if value > maximum:
        raise argparse.ArgumentTypeError(f"too large: {value} (at most {maximum})")
    return value


def _limit(text: str) -> int:
    return whole_number(text, maximum=UINT32_MAX)


def main(argv: Sequence[str] | None = None) -> int:
    # Started with standard output or error closed (`>&-`, `2>&-`): Python
    # has no sys.stdout/sys.stderr, and the first line written (an answer, a
    # log line of `ramraft node`) would raise. What would go there goes
    # nowhere, as Python's print() does then; the exit status still tells.
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the process's life
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the process's life
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse reports them from the top parser, whose --help does not
        # list the subcommand's options: point at the subcommand's.
        command = getattr(args, "command", None)
        where = f"{parser.prog} {command}" if command else parser.prog
        parser.exit(
            EXIT_USAGE,
            f"{parser.prog}: error: unrecognized arguments: {' '.join(extra)} "
            f"(see '{where} --help')\n",
        )
    func: Handler | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return func(args)
    except UsageError as e:
        sys.stderr.write(f"ramraft: error: {e}\n")
        return EXIT_USAGE
    except RamraftError as e:
        sys.stderr.write(f"ramraft: error: {client_error_text(args, e)}\n")
        return EXIT_ERROR
    except BrokenPipeError:
        # The reader went away (e.g. `ramraft range | head`): not an error.
        _silence_stdout()
        return EXIT_OK
    except Exception as e:
        if os.environ.get("RAMRAFT_DEBUG"):
            raise
        sys.stderr.write(
            f"ramraft: internal error: {type(e).__name__}: {_one_line(str(e))} "
            "(set RAMRAFT_DEBUG=1 for a traceback)\n"
        )
        return EXIT_ERROR


# grpc's words for a server certificate that the CA given did not sign (ECDSA
# keys, as `ramraft certs` makes, give the second).
_NOT_OUR_CA = ("CERTIFICATE_VERIFY_FAILED", "certificate signature failure", "BAD_SIGNATURE")


def _tls_hint(args: argparse.Namespace, error: RamraftError) -> str:
    """A hint for a connection that failed in the TLS handshake, when the
    TLS options are the likely cause. grpc's words: a node with TLS closes a
    plaintext client's connection ('Socket closed'), as one that requires
    client certificates closes a client's without one; a TLS client that
    reaches a plaintext node reads 'WRONG_VERSION_NUMBER'; a node whose
    certificate the CA given did not sign, one of _NOT_OUR_CA."""
    if error.code not in (None, grpc.StatusCode.UNAVAILABLE):
        return ""
    text = str(error)
    tls = _tls_requested(args)
    if "WRONG_VERSION_NUMBER" in text and tls:
        return " (the node does not serve TLS: leave out --tls-ca and --tls, or turn TLS on there)"
    if tls and any(words in text for words in _NOT_OUR_CA):
        return " (the node's certificate is not signed by the CA of --tls-ca)"
    if "Socket closed" not in text:
        return ""
    if not tls:
        return " (if the nodes serve TLS, give --tls-ca, or RAMRAFT_TLS_CA)"
    if not _option(args, "tls_cert"):
        return (
            " (if the nodes require client certificates, give --tls-cert and --tls-key, "
            "or RAMRAFT_TLS_CERT and RAMRAFT_TLS_KEY)"
        )
    return ""


# grpc's words for an address where nothing listens.
_NOTHING_LISTENS = ("Connection refused", "Failed to connect to remote host")

NOT_RUNNING_HINT = (
    " (is the cluster running? `ramraft cluster` starts one here; "
    "--endpoints or RAMRAFT_ENDPOINTS say where it runs)"
)


def client_error_text(args: argparse.Namespace, error: RamraftError) -> str:
    """A client error on one line, with the hint its words call for (TLS
    options, or no cluster where the command looked)."""
    return f"{_one_line(str(error))}{_tls_hint(args, error) or _not_running_hint(error)}"


def _not_running_hint(error: RamraftError) -> str:
    """For a call that gave up while the last node it tried refused the
    connection: what a newcomer who has not started a cluster (or points
    at the wrong one) needs to hear."""
    if error.code not in (None, grpc.StatusCode.UNAVAILABLE):
        return ""
    return NOT_RUNNING_HINT if _nothing_listens(str(error)) else ""


def _nothing_listens(text: str) -> bool:
    return any(words in text for words in _NOTHING_LISTENS)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main())

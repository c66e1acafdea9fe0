"""``ramraft tokens``: a token file for ``ramraft node --auth-tokens``.

    ramraft tokens --out tokens.txt             # admin, writer and reader tokens
    ramraft tokens --secret | kubectl apply -f - # the same as a Kubernetes Secret (key
                                                 # "tokens"; key "admin": the first admin
                                                 # token alone, for the backup CronJob;
                                                 # key "read": the first read token alone,
                                                 # for Prometheus)

The file format (ROLE NAME TOKEN a line) is read by server/security/auth.py.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from ramraft.server.security.auth import AuthConfigError, parse_tokens


def make_token() -> str:
    """256 random bits, URL-safe, never starting with "-": one that did (1 in
    64) read as an option on a command line (`ramraft chaos --token -nB...`:
    "argument --token: expected one argument")."""
    while True:
        token = secrets.token_urlsafe(32)
        if not token.startswith("-"):
            return token


def run_tokens(args: argparse.Namespace) -> int:
    lines = [
        "# ramraft tokens: ROLE NAME TOKEN (see ramraft node --help). Keep this file secret.",
    ]
    for role in ("admin", "write", "read"):
        for name in filter(None, getattr(args, role).split(",")):
            lines.append(f"{role} {name} {make_token()}")
    text = "\n".join(lines) + "\n"
    try:
        parse_tokens(text, "generated")
    except AuthConfigError as e:
        print(f"ramraft tokens: {e}", file=sys.stderr)
        return 2
    if args.secret:
        encoded = base64.b64encode(text.encode()).decode()
        document = (
            "apiVersion: v1\nkind: Secret\nmetadata:\n"
            f"  name: {args.secret_name}\ntype: Opaque\ndata:\n  tokens: {encoded}\n"
        )
        # The first admin token alone, for tools inside the cluster that need
        # one as a file (k8s/backup-cronjob.yaml: --token-file); the first
        # read token alone, for Prometheus (k8s/monitoring/podmonitor.yaml).
        for role in ("admin", "read"):
            first = next((line.split()[2] for line in lines if line.startswith(f"{role} ")), None)
            if first is not None:
                document += f"  {role}: {base64.b64encode(first.encode()).decode()}\n"
        sys.stdout.write(document)
        return 0
    if args.out == "-":
        sys.stdout.write(text)
        return 0
    path = Path(args.out)
    if path.exists():
        print(f"ramraft tokens: {path} exists; not overwriting it", file=sys.stderr)
        return 1
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        print(f"ramraft tokens: cannot create {path}: {e.strerror}", file=sys.stderr)
        return 1
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
    except OSError as e:
        path.unlink(missing_ok=True)  # never a token file cut short
        print(f"ramraft tokens: cannot write {path}: {e.strerror}", file=sys.stderr)
        return 1
    print(path)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "tokens",
        help="make a token file for --auth-tokens (admin, write and read tokens)",
        description=(
            "Write a token file for `ramraft node --auth-tokens`: one random token per name, "
            "with the role of the option that names it."
        ),
    )
    p.add_argument("--out", default="tokens.txt", help="file to write (new), or - for stdout")
    p.add_argument("--admin", default="admin", help="names of admin tokens, comma-separated")
    p.add_argument("--write", default="writer", help="names of read-write tokens")
    p.add_argument("--read", default="reader", help="names of read-only tokens")
    p.add_argument(
        "--secret",
        action="store_true",
        help="print a Kubernetes Secret instead (key tokens: the file; key admin: the first "
        "admin token alone, for k8s/backup-cronjob.yaml; key read: the first read token "
        "alone, for k8s/monitoring/podmonitor.yaml)",
    )
    p.add_argument("--secret-name", default="ramraft-tokens")
    p.set_defaults(func=run_tokens)

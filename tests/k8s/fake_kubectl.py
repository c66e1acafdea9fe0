"""A stand-in for kubectl, enough to drive k8s/chaos.sh without a cluster.

Each call is appended as a JSON list to $FAKE_KUBECTL_LOG; `apply -f -` saves
its input to $FAKE_KUBECTL_DIR/applied.yaml; the workload's exit code is
$FAKE_RC (default 0).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    with open(os.environ["FAKE_KUBECTL_LOG"], "a") as f:
        f.write(json.dumps(argv) + "\n")
    args = list(argv)
    while args and args[0] in ("--context", "--namespace"):
        args = args[2:]
    joined = " ".join(args)
    out = ""
    if args[:2] == ["get", "statefulset"]:
        out = "3" if "replicas" in joined else "localhost/ramraft:0.1.0"
    elif args[:2] == ["config", "view"]:
        out = ""
    elif args[:2] == ["apply", "-f"]:
        Path(os.environ["FAKE_KUBECTL_DIR"], "applied.yaml").write_text(sys.stdin.read())
    elif args[:1] == ["exec"] and "/tmp/rc" in args:
        out = os.environ.get("FAKE_RC", "0") + "\n"
    elif args[:1] == ["exec"] and "/tmp/history.jsonl" in args:
        out = '{"op": "put", "key": "k", "outcome": "ok"}\n'
    elif args[:2] == ["get", "pod"]:
        out = "Running"
    elif args[:1] == ["logs"]:
        out = "workload output\n"
    sys.stdout.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

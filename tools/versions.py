"""``ramraft app-version`` and ``ramraft check``: the application's versions
across the cluster, the upgrade hold, and on-demand state checks.

    ramraft app-version                 # what the cluster runs, what each node supports
    ramraft app-version hold            # no automatic switch while a rollout is under way
    ramraft app-version release         # switch once every node supports the new version
    ramraft check                       # every node digests its state; the leader compares
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ramraft.proto import admin_pb2

__all__ = ["register"]


def _versions_report(status: admin_pb2.StatusResponse) -> dict[str, Any]:
    node = status.node
    return {
        "cluster_id": node.cluster_id,
        "app_version": node.app_version,
        "kv_version": node.kv_version,
        "upgrade_hold": node.upgrade_hold,
        "members": [
            {
                "id": m.id,
                "app_version_supported": m.app_version_supported,
                "kv_version_supported": m.kv_version_supported,
            }
            for m in status.members
        ],
        "from_leader": status.members_from_leader,
    }


def _cmd_app_version(client: Any, args: argparse.Namespace) -> int:
    from ramraft.tools.cli import json_from_args

    if args.action in ("hold", "release"):
        index = client.set_upgrade_hold(args.action == "hold")
        if json_from_args(args):
            print(json.dumps({"hold": args.action == "hold", "index": index}))
        else:
            what = "held: no automatic switch" if args.action == "hold" else "released"
            print(f"version switches {what} (index {index})")
        return 0
    status = client.status(endpoint=_leader_endpoint(client))
    report = _versions_report(status)
    if json_from_args(args):
        print(json.dumps(report, sort_keys=True))
        return 0
    hold = "  (switches held)" if report["upgrade_hold"] else ""
    print(
        f"cluster {report['cluster_id'] or '(unnamed)'} runs app version "
        f"{report['app_version']}, key-value version {report['kv_version']}{hold}"
    )
    if not report["from_leader"]:
        print("ramraft: no leader answered: members' versions are unknown", file=sys.stderr)
    for m in report["members"]:
        app, kv = m["app_version_supported"], m["kv_version_supported"]
        if app and kv:
            print(f"  {m['id']}: supports app {app}, key-value {kv}")
        elif report["from_leader"]:
            print(f"  {m['id']}: not known yet (it has not answered this leader; try again)")
        else:
            print(f"  {m['id']}: not known")
    return 0


def _leader_endpoint(client: Any) -> str | None:
    status = client.status()
    return status.node.leader_address or None


def _cmd_check(client: Any, args: argparse.Namespace) -> int:
    from ramraft.tools.cli import json_from_args

    result = client.check_state()
    if json_from_args(args):
        print(
            json.dumps(
                {
                    "index": result.index,
                    "digests": {d.node: d.digest for d in result.digests},
                    "diverged": list(result.diverged),
                },
                sort_keys=True,
            )
        )
    else:
        for d in result.digests:
            mark = "  DIVERGED" if d.node in result.diverged else ""
            print(f"{d.node}: {d.digest or '(could not digest)'}{mark}")
        if result.diverged:
            what = (
                "each hold their own state, none had a majority"
                if len(result.diverged) >= len(result.digests)
                else "hold other state than the majority"
            )
            print(
                f"ramraft: state check at index {result.index}: {', '.join(result.diverged)} "
                f"{what} (the divergence alarm is raised; see the README's runbook)",
                file=sys.stderr,
            )
        else:
            print(f"state check at index {result.index}: every node that answered agrees")
    return 1 if result.diverged else 0


def register(sub: Any) -> None:
    from ramraft.tools.cli import add_client_options, client_command

    p = sub.add_parser(
        "app-version",
        help="the application's versions: show, hold or release switches",
        description=(
            "Without an action: the application (and key-value) version the cluster runs and "
            "what each member's code supports. The leader switches the cluster to a newer "
            "version through the log once every member supports it, unless switches are held. "
            "`hold` keeps it from switching (e.g. while a rollout is under way); `release` lets "
            "it. The hold is replicated: it survives a change of leader."
        ),
        epilog="examples:\n  ramraft app-version\n  ramraft app-version hold\n"
        "  ramraft app-version release",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_client_options(p)
    p.add_argument("action", nargs="?", choices=("show", "hold", "release"), default="show")
    p.set_defaults(func=client_command(_cmd_app_version))

    c = sub.add_parser(
        "check",
        help="compare every node's state (a state check, now)",
        description=(
            "Every node digests its whole state at one log index and the leader compares the "
            "digests. Nodes whose state differs from the majority's raise the divergence alarm "
            "(ramraft status, the status page, ramraft_state_divergence on /metrics). "
            "Exit status 1 when a node diverged."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_client_options(c)
    c.set_defaults(func=client_command(_cmd_check))

"""docs/LOGS.md lists every event a node logs at warning or error level,
with what it means and what to do, and nothing the code no longer logs.
The events are found in server/ by their calls (``log.warning("name", ...)``,
``.error``, ``.exception``, and the rate-limited logs' ``.warning``)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.packaging.project import REPO

LEVELS = {"warning", "error", "exception", "critical"}
EVENT = re.compile(r"[a-z][a-z0-9_]+")
ROW = re.compile(r"^\| `([a-z][a-z0-9_]+)` \| (warning|error)", re.MULTILINE)


def logged_events(root: Path) -> dict[str, set[str]]:
    """Each event name logged at warning level or above under ``root``,
    with where (file:line)."""
    found: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LEVELS
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
                and EVENT.fullmatch(node.args[0].value)
            ):
                continue
            where = f"{path.relative_to(root)}:{node.lineno}"
            found.setdefault(node.args[0].value, set()).add(where)
    return found


def documented_events(text: str) -> list[str]:
    return [name for name, _ in ROW.findall(text)]


def test_every_warning_and_error_of_a_node_is_documented_and_nothing_else() -> None:
    logged = logged_events(REPO / "server")
    documented = documented_events((REPO / "docs" / "LOGS.md").read_text())
    assert len(logged) > 40  # the extraction works (a broken one finds nothing)
    assert sorted(set(documented)) == sorted(documented), "an event is listed twice"
    missing = {name: sorted(where) for name, where in logged.items() if name not in documented}
    assert not missing, f"add these to docs/LOGS.md: {missing}"
    stale = sorted(set(documented) - set(logged))
    assert not stale, f"docs/LOGS.md lists events the code no longer logs: {stale}"


def test_the_check_finds_a_new_warning_in_any_form(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text(
        "log.warning('disk_slow', ms=3)\n"
        "self.refusals.warning(\n    'peer_odd',\n    peer=p,\n)\n"
        "log.exception('bug_here')\n"
        "log.info('fine_event')\n"
        "log.warning(f'not_a_name {x}')\n"
    )
    assert logged_events(tmp_path) == {
        "disk_slow": {"a.py:1"},
        "peer_odd": {"a.py:2"},
        "bug_here": {"a.py:6"},
    }
    assert documented_events("| `disk_slow` | warning | x | y |\n| `x` | info |\n") == ["disk_slow"]

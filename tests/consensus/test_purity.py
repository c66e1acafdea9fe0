"""consensus/ must stay sans-I/O: no clock, sockets, files, threads, asyncio,
grpc or global randomness (ARCHITECTURE.md). This walks every module's
imports, so a new file cannot sneak one in."""

from __future__ import annotations

import ast
import pathlib

CONSENSUS = pathlib.Path(__file__).resolve().parents[2] / "consensus"

FORBIDDEN = {
    "asyncio",
    "grpc",
    "socket",
    "selectors",
    "ssl",
    "time",
    "datetime",
    "threading",
    "multiprocessing",
    "concurrent",
    "subprocess",
    "os",
    "io",
    "pathlib",
    "shutil",
    "tempfile",
    "signal",
    "logging",
    "structlog",
    "google",
    "proto",
    "server",
    "client",
    "secrets",
    "uuid",
}


def imported_modules(path: pathlib.Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
    return found


def uses_global_random(path: pathlib.Path) -> list[int]:
    """`import random` is allowed only to name the type random.Random; any call
    of a module-level function (random.random(), random.choice()...) is not."""
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "random"
            and node.attr != "Random"
        ):
            bad.append(node.lineno)
        if isinstance(node, ast.ImportFrom) and node.module == "random":
            bad += [node.lineno for a in node.names if a.name != "Random"]
    return bad


def test_consensus_imports_no_io() -> None:
    files = sorted(CONSENSUS.rglob("*.py"))
    assert files, "no consensus modules found"
    offences = []
    for path in files:
        for module, line in imported_modules(path):
            if module.split(".")[0] in FORBIDDEN:
                offences.append(f"{path.name}:{line} imports {module}")
        offences += [f"{path.name}:{line} uses global random" for line in uses_global_random(path)]
    assert not offences, "consensus/ must be sans-I/O:\n" + "\n".join(offences)


def test_checker_catches_a_forbidden_import(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nimport random\nx = random.random()\n")
    assert [m for m, _ in imported_modules(bad)] == ["time", "random"]
    assert uses_global_random(bad) == [3]

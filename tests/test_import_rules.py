"""The package's dependency arrows (docs: ARCHITECTURE.md, issue 13), checked
by reading every module's imports with ``ast``:

- no module of ramraft.server imports ramraft.client or ramraft.tools;
- ramraft.consensus imports nothing of ramraft but ramraft.consensus;
- ramraft.client imports nothing of ramraft but ramraft.client and
  ramraft.proto;
- no Python file of the repository imports the old top-level packages
  (``server``, ``client``, ``proto``, ``consensus``): everything is ``ramraft.*``;
- the modules of ramraft import each other without a cycle.

The first four rules count every import, also those inside functions (a
late import is still an arrow). The cycle rule counts the imports a module
makes when it is loaded, including those under ``if TYPE_CHECKING:`` (a
cycle hidden that way is still a cycle in the design) but not those inside
functions, which is how a module may legitimately load a plugin late. An
import names one module: ``import ramraft.server.node`` also runs the
``__init__`` of ramraft and ramraft.server, but those are not counted as
arrows, or every module would depend on the package facade.
"""

from __future__ import annotations

import ast
import os
import pathlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ramraft"
OLD_TOP_LEVEL = ("server", "client", "proto", "consensus")
# Folders of the repository that hold no Python of ours.
SKIP_DIRS = {".git", "node_modules", "build", "dist", "__pycache__", "artifacts"}


@dataclass(frozen=True)
class Import:
    module: str  # the module the importing module depends on
    line: int
    top: bool  # run when the module is loaded (module level or TYPE_CHECKING)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(
    tree: ast.Module, name: str, is_package: bool, known: Iterable[str], facade: Mapping[str, str]
) -> list[Import]:
    """Every import in ``tree`` (the source of module ``name``), resolved
    to the modules it names; ``known`` are the modules that exist, so that
    ``from a.b import c`` counts as an import of a.b.c when c is a module."""
    known = set(known)
    package = name if is_package else name.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, top: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend(Import(alias.name, node.lineno, top) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            for alias in node.names:
                target = f"{source}.{alias.name}"
                if target in known:
                    found.append(Import(target, node.lineno, top))
                elif source == "ramraft" and alias.name in facade:
                    # The facade's lazy names: `from ramraft import Client`
                    # loads ramraft.client.
                    found.append(Import(facade[alias.name], node.lineno, top))
                else:
                    found.append(Import(source, node.lineno, top))
        for child in ast.iter_child_nodes(node):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, False)
            else:
                visit(child, top)

    for statement in tree.body:
        if isinstance(statement, ast.If) and _is_type_checking(statement.test):
            for child in statement.body:
                visit(child, True)
            for child in statement.orelse:
                visit(child, True)
        else:
            visit(statement, True)
    return found


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def rule_violations(
    sources: Mapping[str, tuple[str, bool]], facade: Mapping[str, str]
) -> list[str]:
    """The broken rules among the ramraft modules ``sources`` ({module name:
    (source text, is a package)}), one line each."""
    problems: list[str] = []
    graph: dict[str, set[str]] = {}
    for name, (text, is_package) in sorted(sources.items()):
        imports = _imports(ast.parse(text), name, is_package, sources, facade)
        graph[name] = {i.module for i in imports if i.top and i.module in sources}
        for i in imports:
            where = f"{name}:{i.line} imports {i.module}"
            if not i.module.startswith("ramraft"):
                if i.module.split(".")[0] in OLD_TOP_LEVEL:
                    problems.append(f"{where}: the old top-level name (use ramraft.*)")
                continue
            if _within(name, "ramraft.server") and (
                _within(i.module, "ramraft.client") or _within(i.module, "ramraft.tools")
            ):
                problems.append(f"{where}: the server must not depend on the client or tools")
            if _within(name, "ramraft.consensus") and not _within(i.module, "ramraft.consensus"):
                problems.append(f"{where}: consensus depends on nothing of ramraft")
            if _within(name, "ramraft.client") and not (
                _within(i.module, "ramraft.client") or _within(i.module, "ramraft.proto")
            ):
                problems.append(f"{where}: the client depends only on ramraft.proto")
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in _cycles(graph)]
    return problems


def _cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph.get(node, ()):
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_one_cycle(graph, set(group)) for group in groups]


def _one_cycle(graph: Mapping[str, set[str]], group: set[str]) -> list[str]:
    """A readable cycle through the group: a path back to its first module."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        node = frontier.pop(0)
        for nxt in sorted(graph[node] & group):
            if nxt == start:
                return [*paths[node], start]
            if nxt not in paths:
                paths[nxt] = [*paths[node], nxt]
                frontier.append(nxt)
    return sorted(group)


def _python_files(root: pathlib.Path, follow_links: bool) -> list[pathlib.Path]:
    files = []
    for folder, dirs, names in os.walk(root, followlinks=follow_links):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        files += [pathlib.Path(folder) / n for n in sorted(names) if n.endswith(".py")]
    return files


def ramraft_sources() -> dict[str, tuple[str, bool]]:
    """Every module of the package as installed (ramraft/ and, through its
    links, the top-level folders)."""
    sources = {}
    for path in _python_files(PACKAGE, follow_links=True):
        parts = path.relative_to(REPO).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        sources[name] = (path.read_text(encoding="utf-8"), is_package)
    return sources


def facade_names() -> dict[str, str]:
    import ramraft

    return dict(ramraft._LAZY)


def test_the_package_keeps_its_dependency_rules() -> None:
    sources = ramraft_sources()
    assert {"ramraft.server.node", "ramraft.consensus.raft", "ramraft.client._core"} <= set(
        sources
    ), "the walk did not follow the package's links"
    problems = rule_violations(sources, facade_names())
    assert not problems, "\n".join(problems)


def test_no_file_imports_the_old_top_level_packages() -> None:
    """Tests, tools, benchmarks, examples and scripts too."""
    offences = []
    for path in _python_files(REPO, follow_links=False):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for i in _imports(tree, "__main__", False, (), {}):
            if i.module.split(".")[0] in OLD_TOP_LEVEL:
                offences.append(f"{path.relative_to(REPO)}:{i.line} imports {i.module}")
    assert not offences, "import ramraft.* instead:\n" + "\n".join(offences)


# ---- the checker catches what it should: one planted violation per rule ---------------------

CLEAN = {
    "ramraft": ("from ramraft._version import __version__\n", True),
    "ramraft._version": ("__version__ = '1'\n", False),
    "ramraft.consensus": ("from ramraft.consensus.raft import RaftNode\n", True),
    "ramraft.consensus.raft": ("import random\nclass RaftNode: ...\n", False),
    "ramraft.proto": ("", True),
    "ramraft.proto.kv_pb2": ("from google.protobuf import descriptor\n", False),
    "ramraft.client": ("from ramraft.client._core import call\n", True),
    "ramraft.client._core": ("from ramraft.proto import kv_pb2\ndef call(): ...\n", False),
    "ramraft.server": ("", True),
    "ramraft.server.node": (
        "from ramraft.consensus import RaftNode\nfrom ramraft.server import web\n",
        False,
    ),
    "ramraft.server.web": ("from . import metrics\n", True),
    "ramraft.server.web.metrics": ("from ramraft.proto import kv_pb2\n", False),
    "ramraft.tools": ("", True),
    "ramraft.tools.cli": ("from ramraft.client import call\nimport ramraft.server.node\n", False),
}
FACADE = {"Client": "ramraft.client"}


def _plant(module: str, text: str) -> list[str]:
    sources = dict(CLEAN)
    source, is_package = sources[module]
    sources[module] = (source + text, is_package)
    return rule_violations(sources, FACADE)


def test_the_clean_example_passes() -> None:
    assert rule_violations(CLEAN, FACADE) == []


def test_a_late_import_of_the_client_in_the_server_is_caught() -> None:
    (problem,) = _plant("ramraft.server.node", "def f():\n    from ramraft.client import call\n")
    assert "ramraft.server.node:4 imports ramraft.client" in problem
    (problem,) = _plant("ramraft.server.node", "def f():\n    from ramraft import Client\n")
    assert "imports ramraft.client" in problem
    problems = _plant("ramraft.server.web.metrics", "import ramraft.tools.cli\n")
    assert "imports ramraft.tools.cli: the server must not depend on" in problems[0]
    assert problems[1].startswith("import cycle:")  # tools.cli imports the node


def test_consensus_importing_anything_else_of_ramraft_is_caught() -> None:
    (problem,) = _plant("ramraft.consensus.raft", "from ramraft.proto import kv_pb2\n")
    assert "consensus depends on nothing of ramraft" in problem


def test_the_client_importing_the_server_is_caught() -> None:
    (problem,) = _plant("ramraft.client._core", "from ramraft.server import node\n")
    assert "the client depends only on ramraft.proto" in problem


def test_an_old_top_level_name_is_caught() -> None:
    (problem,) = _plant("ramraft.tools.cli", "from server.node import Node\n")
    assert "old top-level name" in problem


def test_a_cycle_hidden_behind_type_checking_is_caught() -> None:
    planted = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from ramraft.server.node import N\n"
    )
    (problem,) = _plant("ramraft.server.web.metrics", planted)
    assert problem == (
        "import cycle: ramraft.server.node -> ramraft.server.web -> "
        "ramraft.server.web.metrics -> ramraft.server.node"
    )
    # Inside a function, the same import is a late one: no cycle.
    assert _plant("ramraft.server.web.metrics", "def f():\n    import ramraft.server.node\n") == []

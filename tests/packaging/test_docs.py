"""The documentation stays inside the repository: every link in a Markdown
file points at a file of the checkout (or at a local address, as the quick
start's http://127.0.0.1:8001/), and none at a place a clone does not have
(as ../shared/ARCHITECTURE.md once was)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.packaging.project import REPO

LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|<(https?://[^>\s]+)>")
LOCAL = re.compile(r"^https?://(127\.0\.0\.1|localhost)([:/]|$)")
SKIP_PARTS = {"node_modules", "build"}


def markdown_files() -> list[Path]:
    """The project's own Markdown: not what tools leave in hidden folders
    (.git, .pytest_cache, .venv) or in installed packages."""
    return sorted(
        p
        for p in REPO.rglob("*.md")
        if not any(part in SKIP_PARTS or part.startswith(".") for part in p.relative_to(REPO).parts)
    )


def bad_links(path: Path, root: Path = REPO) -> list[str]:
    bad = []
    for match in LINK.finditer(path.read_text()):
        target = match.group(1) or match.group(2)
        if "://" in target or target.startswith("mailto:"):
            if not LOCAL.match(target):
                bad.append(f"{target} (outside the repository)")
            continue
        if target.startswith("#"):
            continue
        resolved = (path.parent / target.split("#")[0]).resolve()
        if not resolved.is_relative_to(root):
            bad.append(f"{target} (outside the repository)")
        elif not resolved.exists():
            bad.append(f"{target} (no such file)")
    return bad


def test_markdown_links_stay_inside_the_repository() -> None:
    files = markdown_files()
    assert REPO / "README.md" in files and REPO / "docs" / "ARCHITECTURE.md" in files
    found = {p.relative_to(REPO).as_posix(): bad_links(p) for p in files}
    assert not {k: v for k, v in found.items() if v}


def test_the_check_catches_a_link_out_of_the_repository(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "ARCHITECTURE.md").write_text("# here\n")
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "ARCHITECTURE.md").write_text("# outside\n")
    doc = root / "README.md"
    doc.write_text(
        "[plan](../shared/ARCHITECTURE.md) [web](https://example.org/x) "
        "[gone](missing.md) [ok](docs/ARCHITECTURE.md#layers) <http://127.0.0.1:8001/>\n"
    )
    assert bad_links(doc, root) == [
        "../shared/ARCHITECTURE.md (outside the repository)",
        "https://example.org/x (outside the repository)",
        "missing.md (no such file)",
    ]

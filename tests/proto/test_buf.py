"""The .proto files pass ``buf lint`` (with the exceptions buf.yaml justifies)
and ``buf breaking`` against the previous commit: the wire, the method paths
and the names of the API stay compatible.

buf comes from npm (``@bufbuild/buf``, pinned in tests/proto/buf/package-lock.json)
and is installed with ``npm ci`` into tests/proto/buf/node_modules (ignored by
git) on first use. The tests are skipped, with the reason, only where it
cannot be installed (no node/npm, no registry); under CI (``CI`` set; .ci/run
installs node and npm) that is a failure instead.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.needs import not_installed
from tests.npm import npm_ci

REPO = Path(__file__).resolve().parents[2]
BUF_DIR = REPO / "tests" / "proto" / "buf"
PROTO = REPO / "proto"


def _unavailable(reason: str) -> None:
    # A failure in CI (tests/needs.py).
    pytest.skip(not_installed("buf", f"npm ci in tests/proto/buf failed: {reason}"))


def _installed() -> Path | None:
    # The platform package's native binary: node_modules/.bin/buf is a Node
    # wrapper that costs about two seconds per call to start.
    native = sorted(BUF_DIR.glob("node_modules/@bufbuild/buf-*/bin/buf"))
    if native:
        return native[0]
    wrapper = BUF_DIR / "node_modules" / ".bin" / "buf"
    return wrapper if wrapper.exists() else None


@pytest.fixture(scope="module")
def buf() -> Path:
    exe = _installed()
    if exe is None:
        done = npm_ci(BUF_DIR)
        if done is None:
            _unavailable("node and npm are not on PATH (Debian: apt-get install nodejs npm)")
        assert done is not None
        exe = _installed()
        if done.returncode != 0 or exe is None:
            _unavailable(f"`npm ci` in {BUF_DIR} failed:\n{done.stdout}\n{done.stderr}")
    assert exe is not None
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    if version.returncode != 0:
        _unavailable(f"{exe} --version failed: {version.stderr}")
    return exe


Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_buf(buf: Path) -> Run:
    def run(*args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [buf, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120
        )

    return run


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)


def _tree(root: Path, protos: dict[str, str]) -> Path:
    """A buf workspace at ``root``: today's buf.yaml and the given proto/ files."""
    (root / "proto").mkdir(parents=True)
    shutil.copy(REPO / "buf.yaml", root / "buf.yaml")
    for name, text in protos.items():
        (root / "proto" / name).write_text(text)
    return root


def _current() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(PROTO.glob("*.proto"))}


def _previous_commit(root: Path) -> tuple[str, Path]:
    """The .proto files of the previous commit (HEAD~1), or of HEAD where
    there is no previous commit (a shallow clone), as a buf workspace."""
    if shutil.which("git") is None or _git("rev-parse", "--git-dir").returncode != 0:
        pytest.skip("not a git checkout: there is no previous commit to compare against")
    base = "HEAD~1" if _git("rev-parse", "--verify", "-q", "HEAD~1").returncode == 0 else "HEAD"
    listed = _git("ls-tree", "--name-only", base, "proto/")
    assert listed.returncode == 0, listed.stderr
    protos = {}
    for path in listed.stdout.split():
        if path.endswith(".proto"):
            shown = _git("show", f"{base}:{path}")
            assert shown.returncode == 0, shown.stderr
            protos[Path(path).name] = shown.stdout
    assert protos, f"no proto/*.proto at {base}"
    return base, _tree(root, protos)


def test_buf_lint_accepts_the_proto_files(run_buf: Run) -> None:
    done = run_buf("lint")
    assert done.returncode == 0, f"buf lint:\n{done.stdout}{done.stderr}"


def test_lint_exceptions_cover_only_the_existing_names(run_buf: Run, tmp_path: Path) -> None:
    """buf.yaml's exceptions do not let new mistakes through: an uncommented
    field is refused everywhere, and a new file gets every STANDARD rule."""
    protos = _current()
    protos["kv.proto"] = protos["kv.proto"].replace(
        "  Session session = 3;\n}", "  Session session = 3;\n  uint64 undocumented = 99;\n}", 1
    )
    assert "undocumented" in protos["kv.proto"]
    protos["extra.proto"] = (
        'syntax = "proto3";\n\npackage ramraft.v1;\n\n'
        "// A service added later.\nservice Extra {\n"
        "  // A method.\n  rpc Do(DoRequest) returns (DoResponse);\n}\n\n"
        "// Its request.\nmessage DoRequest {}\n\n// Its response.\nmessage DoResponse {}\n"
    )
    done = run_buf("lint", "--error-format", "json", cwd=_tree(tmp_path, protos))
    assert done.returncode != 0
    assert '"COMMENT_FIELD"' in done.stdout and "undocumented" in done.stdout
    assert '"SERVICE_SUFFIX"' in done.stdout and "extra.proto" in done.stdout
    assert '"PACKAGE_DIRECTORY_MATCH"' in done.stdout


def test_no_breaking_change_since_the_previous_commit(run_buf: Run, tmp_path: Path) -> None:
    base, previous = _previous_commit(tmp_path)
    done = run_buf("breaking", "--against", previous)
    assert done.returncode == 0, f"buf breaking against {base}:\n{done.stdout}{done.stderr}"


# (file, old text, new text (every occurrence), the rule buf names): each a
# change that breaks a client or a node of the previous version.
BREAKS = {
    "renumbered field": ("kv.proto", "bytes value = 2;", "bytes value = 20;", "FIELD_"),
    "retyped field": ("kv.proto", "uint64 sequence = 2;", "uint32 sequence = 2;", "FIELD_"),
    "renamed field": ("admin.proto", "uint64 term = 4;", "uint64 epoch = 4;", "FIELD_SAME"),
    "renamed service": ("kv.proto", "service KV {", "service KVService {", "SERVICE_NO_DELETE"),
    "renamed rpc": ("admin.proto", "rpc Members(", "rpc ListMembers(", "RPC_NO_DELETE"),
    "renamed message": ("raft.proto", "MessageBatch", "RaftMessages", "MESSAGE_NO_DELETE"),
    "renamed enum value": (
        "kv.proto",
        "SERIALIZABLE = 1;",
        "CONSISTENCY_SERIALIZABLE = 1;",
        "ENUM_VALUE",
    ),
}


@pytest.mark.parametrize("change", sorted(BREAKS))
def test_breaking_catches(change: str, run_buf: Run, tmp_path: Path) -> None:
    name, old, new, rule = BREAKS[change]
    protos = _current()
    assert old in protos[name], f"{old!r} is no longer in {name}: update the test"
    protos[name] = protos[name].replace(old, new)
    done = run_buf("breaking", _tree(tmp_path, protos), "--against", REPO, "--error-format", "json")
    assert done.returncode != 0, f"buf breaking let a {change} through"
    assert rule in done.stdout, done.stdout

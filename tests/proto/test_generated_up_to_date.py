"""The CI drift check: the committed generated code is what the .proto files
generate. On failure run `python -m ramraft.proto.generate` and commit the result."""

from __future__ import annotations

import difflib
import re
import shutil
from pathlib import Path

import pytest

from ramraft.proto import generate


def _normalized(path: Path) -> list[str]:
    return generate.normalized(path.read_text())


def differences(committed_dir: Path, fresh_dir: Path) -> list[str]:
    """What differs between two directories of generated code, as messages."""
    committed = {p.name: p for p in generate.generated_files(committed_dir)}
    fresh = {p.name: p for p in generate.generated_files(fresh_dir)}
    problems = [f"{name}: missing" for name in sorted(fresh.keys() - committed.keys())]
    problems += [f"{name}: stale (no .proto)" for name in sorted(committed.keys() - fresh.keys())]
    for name in sorted(committed.keys() & fresh.keys()):
        old, new = _normalized(committed[name]), _normalized(fresh[name])
        if old != new:
            diff = difflib.unified_diff(old, new, name, "regenerated", lineterm="")
            problems.append(f"{name}: differs\n" + "\n".join(list(diff)[:40]))
    return problems


def test_committed_generated_code_matches_the_proto_files(tmp_path: Path) -> None:
    generate.generate(tmp_path)
    problems = differences(generate.PROTO_DIR, tmp_path / generate.PACKAGE_PATH)
    assert not problems, "run `python -m ramraft.proto.generate` and commit:\n" + "\n".join(
        problems
    )


def test_every_proto_file_has_all_four_generated_files() -> None:
    names = {p.name for p in generate.generated_files(generate.PROTO_DIR)}
    assert generate.proto_files()
    for proto in generate.proto_files():
        stem = Path(proto).stem
        for suffix in generate.GENERATED_SUFFIXES:
            assert f"{stem}{suffix}" in names


def test_the_check_catches_an_edit_and_ignores_version_stamps(tmp_path: Path) -> None:
    generate.generate(tmp_path / "a")
    copy = tmp_path / "b"
    shutil.copytree(tmp_path / "a" / generate.PACKAGE_PATH, copy)
    assert differences(copy, tmp_path / "a" / generate.PACKAGE_PATH) == []

    grpc_file = copy / "kv_pb2_grpc.py"
    text = grpc_file.read_text()
    assert "GRPC_GENERATED_VERSION = '" in text
    grpc_file.write_text(
        re.sub(r"GRPC_GENERATED_VERSION = '[^']*'", "GRPC_GENERATED_VERSION = '9.9.9'", text)
    )
    assert differences(copy, tmp_path / "a" / generate.PACKAGE_PATH) == []

    stub = copy / "kv_pb2.pyi"
    stub.write_text(stub.read_text().replace("class PutRequest", "class PutRequestX"))
    (copy / "old_pb2.py").write_text("")
    problems = differences(copy, tmp_path / "a" / generate.PACKAGE_PATH)
    assert [p.split(":")[0] for p in problems] == ["old_pb2.py", "kv_pb2.pyi"]


def test_regenerating_in_place_keeps_the_stamps_of_unchanged_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m ramraft.proto.generate` with another grpcio-tools than the
    committed code's leaves the files whose code is the same untouched (no
    diff, no higher runtime minimum), and rewrites the ones that changed."""
    proto = tmp_path / "proto"
    shutil.copytree(generate.PROTO_DIR, proto, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "ramraft").mkdir()
    (tmp_path / "ramraft" / "proto").symlink_to(proto)
    monkeypatch.setattr(generate, "PROTO_DIR", proto)
    monkeypatch.setattr(generate, "REPO_ROOT", tmp_path)
    grpc_file = proto / "kv_pb2_grpc.py"
    old_stamp = re.sub(
        r"GRPC_GENERATED_VERSION = '[^']*'",
        "GRPC_GENERATED_VERSION = '1.0.0'",
        grpc_file.read_text(),
    )
    grpc_file.write_text(old_stamp)
    stub = proto / "kv_pb2.pyi"
    stub.write_text(stub.read_text().replace("class PutRequest", "class PutRequestX"))

    assert generate.main([]) == 0
    assert grpc_file.read_text() == old_stamp  # the same code: its stamp kept
    assert "class PutRequestX" not in stub.read_text()  # a real change: regenerated
    assert "class PutRequest(" in stub.read_text()

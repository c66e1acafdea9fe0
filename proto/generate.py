"""Regenerate the Python code for every proto/*.proto file.

Run from anywhere:

    python -m ramraft.proto.generate            # rewrite proto/*_pb2*.py[i] in place
    python -m ramraft.proto.generate --out DIR  # write DIR/ramraft/proto/... (CI drift check)

protoc runs with the repository root as its only source root (``-I.``) and
names each file through the package's own folder (``ramraft/proto/kv.proto``,
ramraft/proto being a link to proto/), so the generated modules import each
other as ``from ramraft.proto import x_pb2``: the name they are installed
under. It
emits, per file: ``x_pb2.py`` and ``x_pb2_grpc.py`` (grpcio-tools), and the
typed stubs ``x_pb2.pyi`` and ``x_pb2_grpc.pyi`` (mypy-protobuf). Never edit
the generated files; change the .proto and run this again.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import re
import stat
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTO_DIR.parent
# Where the files are, as protoc sees them from REPO_ROOT: the import path of
# the generated modules follows it.
PACKAGE_PATH = "ramraft/proto"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


class GenerationError(RuntimeError):
    pass


# Lines that only record which generator version ran (and so the oldest
# grpcio and protobuf runtime the code accepts). A newer grpcio-tools on a
# fresh machine changes them without the .proto files changing.
VERSION_STAMP = re.compile(
    r"^(# Protobuf Python Version: .*"
    r"|GRPC_GENERATED_VERSION = .*"
    r"|    \d+,)$"  # the numeric arguments of ValidateProtobufRuntimeVersion
)


def normalized(text: str) -> list[str]:
    """``text``'s lines with the version stamps blanked out."""
    return ["<version stamp>" if VERSION_STAMP.match(line) else line for line in text.splitlines()]


def proto_files() -> list[str]:
    """The .proto files, as protoc names them (relative to the repository root)."""
    return sorted(f"{PACKAGE_PATH}/{p.name}" for p in PROTO_DIR.glob("*.proto"))


def generated_files(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.iterdir() if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)
    )


def _plugin(tmp: Path, name: str, function: str) -> Path:
    """A protoc plugin executable that runs mypy-protobuf with this very
    interpreter, so generation does not depend on what is on PATH."""
    path = tmp / name
    path.write_text(
        f"#!{sys.executable}\nimport sys\nfrom mypy_protobuf.main import {function}\n"
        f"sys.exit({function}())\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def generate(out: Path) -> list[Path]:
    """Generates code for every proto file under ``out`` (which receives a
    ``ramraft/proto/`` directory). Returns the files written."""
    from grpc_tools import protoc  # type: ignore[import-untyped]

    out.mkdir(parents=True, exist_ok=True)
    (out / PACKAGE_PATH).mkdir(parents=True, exist_ok=True)
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    files = proto_files()
    if not files:
        raise GenerationError(f"no .proto files in {PROTO_DIR}")
    with tempfile.TemporaryDirectory(prefix="ramraft-protoc-") as tmp:
        mypy_plugin = _plugin(Path(tmp), "protoc-gen-mypy", "main")
        mypy_grpc_plugin = _plugin(Path(tmp), "protoc-gen-mypy_grpc", "grpc")
        args = [
            "grpc_tools.protoc",
            "-I.",
            f"-I{well_known}",
            f"--plugin=protoc-gen-mypy={mypy_plugin}",
            f"--plugin=protoc-gen-mypy_grpc={mypy_grpc_plugin}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            f"--mypy_out={out}",
            f"--mypy_grpc_out={out}",
            *files,
        ]
        cwd = Path.cwd()
        os.chdir(REPO_ROOT)  # protoc resolves -I. and the file names from here
        try:
            status = protoc.main(args)
        finally:
            os.chdir(cwd)
    if status != 0:
        raise GenerationError(f"protoc failed with status {status}")
    return generated_files(out / PACKAGE_PATH)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ramraft.proto.generate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write DIR/ramraft/proto/... instead of regenerating in place",
    )
    args = parser.parse_args(argv)
    if args.out is None:
        # Remove what an earlier run generated, so a deleted .proto leaves no
        # stale module behind.
        before = {path.name: path.read_text() for path in generated_files(PROTO_DIR)}
        for path in generated_files(PROTO_DIR):
            path.unlink()
        written = generate(REPO_ROOT)
        # A file whose code did not change keeps its version stamps: other
        # generator versions would otherwise leave a diff (and raise the
        # oldest runtime the committed code accepts) for nothing.
        for path in written:
            old = before.get(path.name)
            if old is not None and normalized(old) == normalized(path.read_text()):
                path.write_text(old)
    else:
        written = generate(args.out.resolve())
    for path in written:
        sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

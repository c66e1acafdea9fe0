"""What pip installs: the wheel built from the checkout holds one import
package, ``ramraft`` (with its .proto files and py.typed, without tests,
benchmarks or examples), and installed into a fresh venv next to proto-plus
(whose import name is ``proto``) it runs a cluster, a put and a get from a
directory whose ``client.py`` and ``proto.py`` would shadow generic top-level
names; mypy sees its real types.

Slow (a venv and an install, about half a minute): marked ``install``, which
CI runs like every test (deselect locally with ``-m "not install"``). The
wheel's dependencies come from pip's index and cache as configured.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.needs import not_installed
from tests.packaging.project import REPO, project_version
from tests.ports import free_port_runs

pytestmark = pytest.mark.install

SUBPACKAGES = ("client", "consensus", "proto", "server", "tools")
# Would shadow a generic top-level package if the wheel installed one: each
# leaves a mark and fails if imported or run.
SHADOW = (
    "import pathlib\n"
    "pathlib.Path(__file__).with_suffix('.imported').touch()\n"
    "raise ImportError(f'{__file__} was imported: a generic top-level name leaked')\n"
)


def _hermetic_env(venv: Path) -> dict[str, str]:
    """The environment of a user with only the fresh venv on PATH: nothing of
    the dev venv, and no RAMRAFT_* settings of whoever runs the tests."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("RAMRAFT_") and k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(argv: list[str | Path], **kw: object) -> subprocess.CompletedProcess[str]:
    kw.setdefault("timeout", 300)
    done: subprocess.CompletedProcess[str] = subprocess.run(  # type: ignore[call-overload]
        [str(a) for a in argv], capture_output=True, text=True, **kw
    )
    return done


def _checkout_copy(dest: Path) -> Path:
    """The files a clean clone would have (tracked, plus new files not yet
    ignored), symlinks kept: no build/, egg-info or node_modules of this
    checkout can leak into the wheel."""
    listed = _run(
        ["git", "-C", REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    )
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout, cannot tell a clean clone's files: {listed.stderr}")
    for name in filter(None, listed.stdout.split("\0")):
        src, dst = REPO / name, dest / name
        if not src.is_symlink() and not src.exists():
            continue  # deleted in the work tree, not yet committed
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    source = _checkout_copy(root / "src")
    done = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", root / "dist", source]
    )
    assert done.returncode == 0, f"pip wheel failed:\n{done.stdout}\n{done.stderr}"
    (built,) = (root / "dist").glob("ramraft-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (not --system-site-packages) with the wheel and proto-plus."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    done = _run([sys.executable, "-m", "venv", venv])
    assert done.returncode == 0, done.stderr
    cfg = (venv / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in cfg
    done = _run(
        [venv / "bin" / "python", "-m", "pip", "install", "-q", wheel, "proto-plus"],
        env=_hermetic_env(venv),
    )
    assert done.returncode == 0, f"pip install failed:\n{done.stdout}\n{done.stderr}"
    return venv


@pytest.fixture
def shadowed(tmp_path: Path) -> Path:
    """A working directory with a client.py and a proto.py."""
    for name in ("client.py", "proto.py"):
        (tmp_path / name).write_text(SHADOW)
    return tmp_path


# -- the wheel's contents ---------------------------------------------------------------


def _package_sources() -> set[str]:
    """Every module and stub of the package in the checkout, as wheel paths
    (walking through ramraft/'s links to the top-level folders)."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(REPO / "ramraft", followlinks=True):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        rel = Path(dirpath).relative_to(REPO)
        found |= {(rel / f).as_posix() for f in filenames if f.endswith((".py", ".pyi"))}
    return found


def test_the_wheel_holds_one_import_package(wheel: Path) -> None:
    version = project_version()
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"ramraft", f"ramraft-{version}.dist-info"}
    for sub in SUBPACKAGES:
        assert f"ramraft/{sub}/__init__.py" in names
    missing = _package_sources() - set(names)
    assert not missing, f"modules of the checkout not in the wheel: {sorted(missing)}"
    assert "ramraft/py.typed" in names
    protos = {f"ramraft/proto/{p.name}" for p in (REPO / "proto").glob("*.proto")}
    assert protos and protos <= set(names)
    stray = [n for n in names if {"tests", "bench", "examples"} & set(n.split("/"))]
    assert not stray, stray


def test_the_wheels_metadata(wheel: Path) -> None:
    dist_info = f"ramraft-{project_version()}.dist-info"
    with zipfile.ZipFile(wheel) as zf:
        metadata = zf.read(f"{dist_info}/METADATA").decode()
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
        top_level = (
            zf.read(f"{dist_info}/top_level.txt").decode().split()
            if f"{dist_info}/top_level.txt" in zf.namelist()
            else ["ramraft"]
        )
    assert top_level == ["ramraft"]
    # The entry imports the command line inside its Ctrl-C guard (ramraft/__main__.py).
    assert re.search(r"^ramraft = ramraft\.__main__:main$", entry_points, re.M)
    requires = re.findall(r"^Requires-Dist: (.*)$", metadata, re.M)
    tools = [r for r in requires if r.startswith("grpcio-tools")]
    # Only regenerating code needs grpcio-tools: the dev extra, not the runtime.
    assert tools and all('extra == "dev"' in r for r in tools), tools


# -- installed in a fresh venv ----------------------------------------------------------


def test_installed_files_are_the_package_its_metadata_and_the_script(venv: Path) -> None:
    site = _run(
        [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]
    ).stdout.strip()
    record = (Path(site) / f"ramraft-{project_version()}.dist-info" / "RECORD").read_text()
    tops = {line.split(",")[0].split("/")[0] for line in record.splitlines() if line}
    # "..": the console script, installed outside site-packages (bin/ramraft).
    assert tops == {"ramraft", f"ramraft-{project_version()}.dist-info", ".."}, tops


def test_pip_check_passes(venv: Path) -> None:
    done = _run([venv / "bin" / "python", "-m", "pip", "check"], env=_hermetic_env(venv))
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"


def test_proto_plus_still_works_next_to_ramraft(venv: Path, tmp_path: Path) -> None:
    program = (
        "import proto, ramraft.proto.kv_pb2\n"
        "class Note(proto.Message):\n"
        "    text = proto.Field(proto.STRING, number=1)\n"
        "assert Note(text='hi').text == 'hi'\n"
        "assert 'proto_plus' not in proto.__file__ and 'site-packages/proto/' in proto.__file__\n"
        "print(proto.Message.__module__)\n"
    )
    done = _run([venv / "bin" / "python", "-c", program], cwd=tmp_path, env=_hermetic_env(venv))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("proto.")


@pytest.fixture
def cluster(venv: Path, shadowed: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`ramraft cluster` of three nodes, run from the shadowed directory;
    stopped with SIGINT (Ctrl-C) by the test, killed here if it did not."""
    grpc_base, http_base = free_port_runs(2, 3)
    log = (shadowed / "cluster.log").open("w")
    proc = subprocess.Popen(
        [
            str(venv / "bin" / "ramraft"),
            "cluster",
            "--nodes",
            "3",
            "--data-dir",
            str(shadowed / "data"),
            "--grpc-port",
            str(grpc_base),
            "--http-port",
            str(http_base),
        ],
        cwd=shadowed,
        env=_hermetic_env(venv),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its nodes share the group: killable at once
    )
    endpoints = ",".join(f"127.0.0.1:{grpc_base + n}" for n in range(3))
    try:
        yield proc, endpoints
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()


def test_cluster_put_and_get_from_a_directory_that_shadows_generic_names(
    venv: Path, shadowed: Path, cluster: tuple[subprocess.Popen[str], str]
) -> None:
    proc, endpoints = cluster
    env = _hermetic_env(venv)
    ramraft = venv / "bin" / "ramraft"
    common = ["--endpoints", endpoints, "--timeout", "30"]  # the first election included
    put = _run([ramraft, "put", "greeting", "hello", *common], cwd=shadowed, env=env)
    log = shadowed / "cluster.log"
    assert put.returncode == 0, f"{put.stderr}\ncluster log:\n{log.read_text()}"
    get = _run([ramraft, "get", "greeting", *common], cwd=shadowed, env=env)
    assert (get.returncode, get.stdout.strip()) == (0, "hello"), get.stderr
    version = _run([venv / "bin" / "python", "-m", "ramraft", "--version"], cwd=shadowed, env=env)
    assert version.stdout == f"ramraft {project_version()}\n", version.stderr

    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0, log.read_text()
    assert "ramraft cluster: stopped" in log.read_text()
    # Every node ran until told to stop: none was restarted or failed to start.
    assert "restarting it" not in log.read_text()
    assert "could not start" not in log.read_text()
    assert list(shadowed.glob("*.imported")) == []


# -- types ------------------------------------------------------------------------------

USER_SCRIPT = """
from ramraft import AsyncClient, Client
from ramraft.client import CasResult, RangePage


def use(c: Client) -> None:
    reveal_type(c.get("greeting"))
    reveal_type(c.put("greeting", b"hello"))
    reveal_type(c.delete("greeting"))
    reveal_type(c.cas("greeting", None, b"hi"))
    reveal_type(c.range("g"))
    wrong: int = c.get("greeting")


async def use_async(c: AsyncClient) -> None:
    reveal_type(await c.get("greeting"))
"""

# Each as mypy 2 shows it, or as older versions did.
OPTIONAL_BYTES = {"bytes | None", "builtins.bytes | None", "Union[builtins.bytes, None]"}
EXPECTED_TYPES = [
    OPTIONAL_BYTES,
    {"int", "builtins.int"},
    {"bool", "builtins.bool"},
    {"ramraft.client._core.CasResult"},
    {"ramraft.client._core.RangePage"},
    OPTIONAL_BYTES,
]


def test_mypy_sees_the_installed_packages_types(venv: Path, tmp_path: Path) -> None:
    """mypy --strict on a user's script, resolving ramraft in the fresh venv
    (--python-executable): py.typed makes the real signatures visible."""
    if importlib.util.find_spec("mypy") is None:
        pytest.skip(not_installed("mypy", "pip install -e '.[dev]'"))
    script = tmp_path / "app.py"
    script.write_text(USER_SCRIPT)
    done = _run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--python-executable",
            venv / "bin" / "python",
            "--cache-dir",
            tmp_path / "cache",
            script.name,
        ],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "MYPYPATH"},
    )
    lines = done.stdout.splitlines()
    marker = "Revealed type is "
    revealed = [line.split(marker)[1].strip('"') for line in lines if marker in line]
    assert len(revealed) == len(EXPECTED_TYPES), done.stdout
    for seen, accepted in zip(revealed, EXPECTED_TYPES, strict=True):
        assert seen in accepted, done.stdout
    errors = [line for line in lines if ": error:" in line]
    # The deliberate mistake, and nothing else (no import-untyped: py.typed).
    assert len(errors) == 1 and "[assignment]" in errors[0], done.stdout
    assert "bytes | None" in errors[0] or "Optional[bytes]" in errors[0], errors[0]

"""`ramraft node`'s settings: every flag has an environment twin that its
help names and that has the flag's effect; a bad value in the environment
breaks only `ramraft node`, with a one-line error naming the variable; an
unusable --data-dir is a one-line error that names the flag and says what to
do. (Node processes themselves: tests/server/.)"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from ramraft.server.config import ConfigError, NodeConfig
from ramraft.tools import cli, node_cli
from tests.client.fake_server import FakeServer


def _node_parser() -> argparse.ArgumentParser:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    node: argparse.ArgumentParser = sub.choices["node"]
    return node


def _flags() -> list[argparse.Action]:
    return [a for a in _node_parser()._actions if a.option_strings and a.dest != "help"]


def _long(action: argparse.Action) -> str:
    return next(s for s in action.option_strings if s.startswith("--"))


def _env_name(flag: str) -> str:
    return "RAMRAFT_" + flag.removeprefix("--").upper().replace("-", "_")


def _resolved(argv: list[str], environ: dict[str, str]) -> argparse.Namespace:
    args = cli.build_parser().parse_args(["node", *argv])
    node_cli.resolve_settings(args, environ)
    return args


@pytest.fixture(autouse=True)
def _no_ramraft_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("RAMRAFT_"):
            monkeypatch.delenv(name)


def test_the_parser_has_the_flags_we_expect() -> None:
    # Not a list to keep in sync: a floor, so the checks below cannot pass
    # vacuously on an empty parser.
    names = {_long(a) for a in _flags()}
    assert {"--id", "--tick-ms", "--no-fsync", "--log-level", "--max-inflight"} <= names
    assert len(names) >= 30


@pytest.mark.parametrize("action", _flags(), ids=_long)
def test_every_flag_names_its_environment_variable_in_the_help(action: argparse.Action) -> None:
    env = _env_name(_long(action))
    assert action.help is not None and env in action.help, (_long(action), action.help)
    assert f"env {env}" in " ".join(_node_parser().format_help().split())


def _sample(action: argparse.Action) -> str | None:
    """A value for the flag that differs from its default (None: a switch)."""
    if action.nargs == 0:
        return None
    metavar = action.metavar if isinstance(action.metavar, str) else ""
    candidates = metavar.strip("{}").split(",") if metavar.startswith("{") else []
    candidates += ["7", "sample:1234"]
    default = getattr(_resolved([], {}), action.dest)
    for value in candidates:
        try:
            parsed = getattr(_resolved([_long(action), value], {}), action.dest)
        except SystemExit:
            continue
        if parsed != default:
            return value
    raise AssertionError(f"no sample value for {_long(action)}")


@pytest.mark.parametrize("action", _flags(), ids=_long)
def test_setting_the_variable_has_the_flags_effect(action: argparse.Action) -> None:
    flag, env = _long(action), _env_name(_long(action))
    value = _sample(action)
    by_flag = _resolved([flag] if value is None else [flag, value], {})
    by_env = _resolved([], {env: "1" if value is None else value})
    default = _resolved([], {})
    assert getattr(by_env, action.dest) == getattr(by_flag, action.dest), flag
    assert getattr(by_env, action.dest) != getattr(default, action.dest), flag
    # The flag wins over the variable.
    if value is not None:
        other = _resolved([flag, value], {env: "0"})
        assert getattr(other, action.dest) == getattr(by_flag, action.dest), flag


def _typed_settings() -> list[node_cli.Setting]:
    return [s for s in node_cli.NODE_SETTINGS if s.kind is not str or s.choices]


@pytest.mark.parametrize("setting", _typed_settings(), ids=lambda s: s.env)
def test_a_bad_variable_breaks_only_ramraft_node(
    setting: node_cli.Setting,
    server: FakeServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(setting.env, "abc")
    server.node.data["x"] = b"hello"
    # A client command does not read node settings at all.
    assert cli.main(["get", "x", "--endpoints", server.address]) == 0
    assert capsys.readouterr() == ("hello", "")
    # `ramraft node` refuses, naming the variable, before doing anything else.
    assert cli.main(["node", "--id", "a"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(f"ramraft node: {setting.env}='abc': "), err


def _node(tmp_path: Path, capsys: pytest.CaptureFixture[str], data_dir: str) -> tuple[int, str]:
    status = cli.main(["node", "--id", "a", "--peers", "a=127.0.0.1:1", "--data-dir", data_dir])
    out, err = capsys.readouterr()
    assert out == ""
    return status, err


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda tmp: "/proc/ramraft", "cannot create it (No such file or directory)"),
        (lambda tmp: str(_file(tmp)), "is a file, not a directory"),
        (lambda tmp: str(_file(tmp) / "data"), "a part of the path is a file"),
    ],
    ids=["cannot-create", "a-file", "under-a-file"],
)
def test_data_dir_errors_name_the_flag_and_say_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make, expected: str
) -> None:
    data_dir = make(tmp_path)
    status, err = _node(tmp_path, capsys, data_dir)
    assert status == 2
    assert err.count("\n") == 1, err
    assert err.startswith(f"ramraft node: --data-dir {data_dir}: {expected}"), err
    assert "give a directory this user can create and write" in err
    assert "Errno" not in err


def _file(tmp: Path) -> Path:
    path = tmp / "a-file"
    path.write_text("not a directory")
    return path


def test_two_peers_at_one_address_are_refused() -> None:
    """Messages meant for one would reach the other (restore: tests/client/test_restore.py)."""
    peers = "a=127.0.0.1:7001,b=127.0.0.1:7002,c=127.0.0.1:7001"
    args = _resolved(["--id", "a", "--peers", peers, "--data-dir", "unused"], {})
    with pytest.raises(ConfigError) as refused:
        node_cli.config_from_args(args)
    assert str(refused.value) == (
        "--peers: a and c have the same address 127.0.0.1:7001: give each node its own"
    )


def test_an_ipv6_address_without_brackets_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = str(tmp_path / "a")
    status = cli.main(["node", "--id", "a", "--peers", "a=::1:7001", "--data-dir", data_dir])
    out, err = capsys.readouterr()
    assert (status, out) == (2, "")
    assert err == (
        "ramraft node: --peers entry a: '::1:7001': write an IPv6 address in brackets, [::1]:7001\n"
    )


def test_an_ipv6_members_client_address_keeps_its_brackets() -> None:
    """With peers on a port of their own, the address a member's clients
    use is its host with the client port: an IPv6 host in brackets, which
    the client's endpoint check and grpc both need."""
    config = NodeConfig(
        "a", {"a": "[::1]:7101", "b": "[fd00::2]:7101"}, "unused", listen="[::]:7001",
        peer_listen="[::]:7101",
    )  # fmt: skip
    assert config.client_address_of("[fd00::2]:7101") == "[fd00::2]:7001"
    assert config.client_address_of("10.0.0.2:7101") == "10.0.0.2:7001"


def test_a_blob_dir_that_is_a_file_is_named_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blob_dir = str(_file(tmp_path))
    argv = ["node", "--id", "a", "--peers", "a=127.0.0.1:1", "--data-dir", str(tmp_path / "a")]
    status = cli.main([*argv, "--blob-dir", blob_dir])
    out, err = capsys.readouterr()
    assert (status, out) == (2, "")
    assert err.startswith(f"ramraft node: --blob-dir {blob_dir}: is a file, not a directory"), err
    assert err.count("\n") == 1

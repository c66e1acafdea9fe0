"""The `ramraft` command line against fake nodes: output, --json, exit
statuses and one-line errors."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ramraft.tools import cli
from tests.client.fake_server import Failure, FakeServer, dead_address


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        status = cli.main(list(argv))
    except SystemExit as e:  # argparse errors and --help
        status = int(e.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAMRAFT_ENDPOINTS", raising=False)
    monkeypatch.delenv("RAMRAFT_TIMEOUT", raising=False)
    monkeypatch.delenv("RAMRAFT_DEBUG", raising=False)


def test_put_get_delete_human(server: FakeServer, capsys) -> None:
    ep = ["--endpoints", server.address]
    assert run(capsys, "put", "greeting", "hello", *ep) == (0, "OK (index 1)\n", "")
    assert run(capsys, *ep, "get", "greeting") == (0, "hello", "")  # options before, too
    assert run(capsys, "get", "nope", *ep) == (1, "", "ramraft: key not found: nope\n")
    assert run(capsys, "delete", "greeting", *ep) == (0, "deleted\n", "")
    assert run(capsys, "delete", "greeting", *ep) == (1, "", "ramraft: key not found: greeting\n")


def test_put_reads_stdin(server: FakeServer, capsys, monkeypatch) -> None:
    stdin = types.SimpleNamespace(buffer=io.BytesIO(b"\x00binary\xff"), isatty=lambda: False)
    monkeypatch.setattr(sys, "stdin", stdin)
    assert run(capsys, "put", "k", "--endpoints", server.address)[0] == 0
    assert server.node.data["k"] == b"\x00binary\xff"
    # At a terminal, a missing value is a usage error rather than a silent wait.
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(isatty=lambda: True))
    status, _, err = run(capsys, "put", "k", "--endpoints", server.address)
    assert status == 2 and "give a VALUE" in err


@pytest.mark.parametrize("argv", [["put", "k"], ["put", "k", "-"], ["txn"], ["blob", "put", "-"]])
def test_a_closed_standard_input_is_a_usage_error(
    server: FakeServer, capsys, monkeypatch, argv: list[str]
) -> None:
    """Started with standard input closed (`<&-`), Python has no sys.stdin."""
    monkeypatch.setattr(sys, "stdin", None)
    status, out, err = run(capsys, *argv, "--endpoints", server.address)
    assert (status, out) == (2, "")
    assert "standard input is closed" in err and err.count("\n") == 1, err


def test_a_closed_standard_output_loses_the_answer_not_the_exit_status(
    server: FakeServer, capsys, monkeypatch
) -> None:
    """Started with standard output closed (`>&-`), Python has no sys.stdout."""
    server.node.data["k"] = b"v"
    monkeypatch.setattr(sys, "stdout", None)
    assert cli.main(["get", "k", "--endpoints", server.address]) == 0
    assert cli.main(["get", "absent", "--endpoints", server.address]) == 1
    assert capsys.readouterr().err == "ramraft: key not found: absent\n"


def test_json_output(server: FakeServer, capsys, monkeypatch) -> None:
    monkeypatch.setenv("RAMRAFT_ENDPOINTS", server.address)
    status, out, _ = run(capsys, "put", "k", "v", "--json")
    assert (status, json.loads(out)) == (0, {"key": "k", "index": 1})
    status, out, _ = run(capsys, "get", "k", "--json", "--serializable")
    assert json.loads(out) == {
        "key": "k",
        "found": True,
        "value": "v",
        "value_base64": "dg==",
        "index": 1,
    }
    assert server.node.calls[-1].request.consistency == 1
    server.node.data["bin"] = b"\xff"
    status, out, _ = run(capsys, "get", "bin", "--json")
    assert json.loads(out)["value"] is None and json.loads(out)["value_base64"] == "/w=="
    status, out, _ = run(capsys, "get", "absent", "--json")
    assert status == 1
    assert json.loads(out) == {
        "key": "absent",
        "found": False,
        "value": None,
        "value_base64": None,
        "index": 1,
    }


def test_cas(server: FakeServer, capsys) -> None:
    ep = ["--endpoints", server.address]
    assert run(capsys, "cas", "lock", "me", "--absent", *ep)[:2] == (0, "swapped (index 1)\n")
    status, out, err = run(capsys, "cas", "lock", "you", "--absent", *ep)
    assert (status, out, err) == (1, "", "ramraft: not swapped: the current value is 'me'\n")
    status, out, _ = run(capsys, "cas", "lock", "you", "--expected", "me", "--json", *ep)
    assert status == 0
    assert json.loads(out) | {"index": 0} == {
        "key": "lock",
        "swapped": True,
        "found": True,
        "current": "me",
        "current_base64": "bWU=",
        "index": 0,
    }
    assert run(capsys, "cas", "other", "x", "--expected", "y", *ep) == (
        1,
        "",
        "ramraft: not swapped: the key is absent\n",
    )


def test_range_pages_through_everything_unless_limited(server: FakeServer, capsys) -> None:
    server.node.data.update({f"u/{i:04}": b"v" for i in range(2500)} | {"z": b"1"})
    ep = ["--endpoints", server.address]
    status, out, _ = run(capsys, "range", "u/", *ep)
    assert status == 0 and len(out.splitlines()) == 2500
    assert out.splitlines()[0] == "u/0000\tv"
    status, out, err = run(capsys, "range", "u/", "--limit", "2", "--start-after", "u/0005", *ep)
    assert out == "u/0006\tv\nu/0007\tv\n" and "more keys" in err
    status, out, _ = run(capsys, "range", "--limit", "1", "--json", *ep)
    assert json.loads(out) == {
        "items": [{"key": "u/0000", "value": "v", "value_base64": "dg=="}],
        "more": True,
    }


def test_watch_prints_one_line_per_event_escaped(server: FakeServer, capsys) -> None:
    server.node.changes = [
        ("PUT", "u/a", b"plain"),
        ("PUT", "u/b\n", b"\xff\x00two words"),
        ("DELETE", "u/a", b""),
    ]
    ep = ["--endpoints", server.address]
    status, out, err = run(capsys, "watch", "u/", "--count", "3", *ep)
    assert (status, err) == (0, "")
    assert out.splitlines() == ["PUT u/a plain", "PUT u/b\\n \\xff\\x00two words", "DELETE u/a"]
    status, out, _ = run(capsys, "watch", "u/", "--count", "2", "--rev", "2", "--json", *ep)
    docs = [json.loads(line) for line in out.splitlines()]
    assert [d["type"] for d in docs] == ["PUT", "DELETE"] and docs[0]["value"] is None
    assert docs[0]["value_base64"] == "/wB0d28gd29yZHM=" and docs[1]["revision"] == 3
    assert server.node.calls[-1].request.create.start_revision == 2
    assert server.node.calls[-1].request.create.prefix
    assert run(capsys, "watch", "u/a", "--key", "--count", "1", *ep)[1] == "PUT u/a plain\n"
    assert not server.node.calls[-1].request.create.prefix


def test_txn_from_flags_and_from_stdin(server: FakeServer, capsys, monkeypatch) -> None:
    server.node.data.update({"lock": b"me", "a/1": b"x", "a/2": b"y"})
    ep = ["--endpoints", server.address]
    status, out, _ = run(
        capsys,
        "txn",
        "--compare",
        'value("lock") = me',
        "--then",
        "put lock 'you and me'",
        "--then",
        "range a/",
        "--then",
        "del --prefix a/",
        *ep,
    )
    assert status == 0
    assert out.splitlines() == ["SUCCESS", "OK", "a/1\tx", "a/2\ty", "deleted 2"]
    assert server.node.data["lock"] == b"you and me"
    text = "version(lock) = 0\n\nput lock them\n\nget lock\n"
    stdin = types.SimpleNamespace(read=lambda: text, isatty=lambda: False)
    monkeypatch.setattr(sys, "stdin", stdin)
    status, out, _ = run(capsys, "txn", "--json", *ep)
    doc = json.loads(out)
    assert doc["succeeded"] is False and doc["responses"][0]["get"]["value"] == "you and me"
    request = server.node.calls[-1].request
    assert request.compare[0].WhichOneof("target") == "version"
    assert request.success[0].put.value == b"them"


@pytest.mark.parametrize(
    "expression",
    [
        "value(k) ~ v",
        "mod(k) > soon",
        "size(k) = 1",
        "value(k) = 'a b' c",
        "version(k) = 9223372036854775808",  # more than the request's int64 holds
    ],
)
def test_a_bad_txn_is_a_usage_error(server: FakeServer, capsys, expression: str) -> None:
    status, out, err = run(capsys, "txn", "--compare", expression, "--endpoints", server.address)
    assert (status, out) == (2, "") and err.startswith("ramraft: error: compare")
    status, _, err = run(capsys, "txn", "--then", "frob k", "--endpoints", server.address)
    assert status == 2 and "op 'frob k'" in err


def test_lease_commands(server: FakeServer, capsys) -> None:
    ep = ["--endpoints", server.address]
    assert run(capsys, "lease", "grant", "10", *ep)[1] == "lease 1 granted with ttl 10s\n"
    assert run(capsys, "put", "k", "v", "--lease", "1", *ep)[0] == 0
    assert server.node.calls[-1].request.lease == 1
    assert run(capsys, "lease", "keep-alive", "1", "--once", *ep)[1] == "lease 1 ttl 10\n"
    assert run(capsys, "lease", "revoke", "1", *ep)[1] == "lease 1 revoked (0 keys deleted)\n"
    status, out, err = run(capsys, "lease", "keep-alive", "1", "--once", *ep)
    assert (status, out, err) == (1, "", "ramraft: lease 1 is gone (expired or revoked)\n")
    # A lease that is gone is a negative answer (1), as a key that is not there.
    status, out, err = run(capsys, "lease", "revoke", "1", *ep)
    assert (status, out, err) == (1, "", "ramraft: lease 1 not found (expired or revoked)\n")
    status, out, _ = run(capsys, "lease", "revoke", "1", "--json", *ep)
    assert status == 1 and json.loads(out) == {"id": 1, "revoked": False}
    assert run(capsys, "lease", "grant", "0", *ep)[0] == 2


def test_status_asks_every_endpoint(servers, capsys) -> None:
    a = servers()
    a.node.pid, a.node.version = 4242, "9.9.9"
    old = servers()  # a node of release 0.1.0: no pid, no version
    dead = dead_address()
    endpoints = f"{a.address},{dead},{old.address}"
    status, out, _ = run(capsys, "status", "--endpoints", endpoints, "--timeout", "1")
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "ENDPOINT",
        "ID",
        "ROLE",
        "TERM",
        "LEADER",
        "COMMIT",
        "APPLIED",
        "LAST",
        "PID",
        "VERSION",
    ]
    assert lines[1].split()[:3] == [a.address, "n1", "leader"]
    assert lines[1].split()[-2:] == ["4242", "9.9.9"]  # to find the process to kill
    assert lines[2].split() == [dead, "-", "unreachable"]
    assert lines[3].split()[-2:] == ["-", "-"]
    assert "members, as the leader sees them:" in out
    assert any(line.split()[:3] == ["n2", "127.0.0.1:1", "learner"] for line in lines)

    status, out, _ = run(capsys, "status", "--endpoints", endpoints, "--timeout", "1", "--json")
    doc = json.loads(out)
    assert doc["nodes"][0]["role"] == "leader" and doc["nodes"][0]["term"] == 3
    assert (doc["nodes"][0]["pid"], doc["nodes"][0]["version"]) == (4242, "9.9.9")
    assert doc["nodes"][1]["endpoint"] == dead and "error" in doc["nodes"][1]
    assert [m["suffrage"] for m in doc["members"]] == ["voter", "learner"]


def test_status_with_no_node_answering_fails(capsys) -> None:
    address = dead_address()
    status, out, err = run(capsys, "status", "--endpoints", address, "--timeout", "0.5")
    assert (status, out) == (3, "")
    assert err == f"ramraft: error: no node answered at {address}{cli.NOT_RUNNING_HINT}\n"


@pytest.mark.parametrize(
    "argv", [["put", "k", "v"], ["get", "k"], ["lease", "grant", "5"], ["backup", "--out", "b"]]
)
def test_no_cluster_where_the_command_looks_says_so(
    capsys, argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a newcomer sees who has not started a cluster: one line ending
    in the question to ask, without the transport's retry talk."""
    monkeypatch.chdir(tmp_path)
    status, out, err = run(capsys, *argv, "--endpoints", dead_address(), "--timeout", "0.5")
    assert (status, out) == (3, "")
    assert err.startswith("ramraft: error: ") and err.count("\n") == 1, err
    assert err.endswith(f"{cli.NOT_RUNNING_HINT}\n"), err
    assert "retried" not in err


def test_admin_commands(server: FakeServer, capsys) -> None:
    ep = ["--endpoints", server.address]
    assert run(capsys, "transfer-leader", "n3", *ep)[1] == "leader is now n3\n"
    assert json.loads(run(capsys, "transfer-leader", "--json", *ep)[1]) == {"leader": "n2"}
    status, out, _ = run(capsys, "members", *ep)
    assert out.split() == ["ID", "ADDRESS", "SUFFRAGE", "n1", server.address, "voter"]
    status, out, _ = run(capsys, "members", "add", "n4", "127.0.0.1:7004", "--json", *ep)
    assert [m["id"] for m in json.loads(out)["members"]] == ["n1", "n4"]
    assert run(capsys, "members", "remove", "n2", *ep)[0] == 0
    status, _, err = run(capsys, "members", "remove", "ghost", *ep)
    assert status == 3 and "NOT_FOUND" in err and "ghost" in err
    assert run(capsys, "snapshot", *ep)[1] == "snapshot taken at index 0\n"
    assert run(capsys, "snapshot", "--endpoint", server.address, "--json", *ep)[1] == (
        '{"index": 0}\n'
    )
    assert server.node.methods() == [
        "TransferLeadership",
        "TransferLeadership",
        "Members",
        "AddMember",
        "RemoveMember",
        "RemoveMember",
        "Snapshot",
        "Snapshot",
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ["get"],
        ["cas", "k", "v"],
        ["cas", "k", "v", "--absent", "--expected", "x"],
        ["range", "--limit", "-1"],
        ["range", "--limit", "many"],
        ["get", "k", "--timeout", "soon"],
        ["frobnicate"],
        ["get", "k", "--endpoints", "no-port"],
        ["get", "k", "--timeout", "0"],
        ["get", "k", "--timeout", "inf"],
        ["members", "add", "n4", "not-an-address"],
        ["snapshot", "--endpoint", "x"],
        # More than the request's field holds (int64; range's limit: uint32).
        ["range", "--limit", "4294967296"],
        ["put", "k", "v", "--lease", "9223372036854775808"],
        ["lease", "grant", "9223372036854775808"],
        ["lease", "revoke", "9223372036854775808"],
        ["watch", "--rev", "9223372036854775808"],
        ["watch", "k", "--rev", "-3"],
        ["watch", "k", "--count", "x"],
        ["lease", "grant", "0"],
        ["lease", "grant", "5", "--id", "-1"],
    ],
)
def test_usage_errors_are_one_line_and_exit_2(capsys, argv: list[str]) -> None:
    status, out, err = run(capsys, *argv)
    assert status == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert "error" in err and "Traceback" not in err


def test_bad_environment_is_a_usage_error(capsys, monkeypatch) -> None:
    monkeypatch.setenv("RAMRAFT_TIMEOUT", "later")
    status, _, err = run(capsys, "get", "k")
    assert (status, err) == (2, "ramraft: error: RAMRAFT_TIMEOUT: not a number: 'later'\n")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"\x30\x82\x01\x0a\xff\xfe binary", "not a text file"),
        # The node's --auth-tokens file, as `ramraft tokens` writes it.
        (b"# ramraft tokens\nadmin admin tok-1\nread reader tok-2\n", "more than one word"),
        (b"tok-1\x07\n", "printable"),
    ],
)
def test_a_bad_token_file_is_a_usage_error_naming_the_file(
    capsys, tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "token"
    path.write_bytes(content)
    status, out, err = run(capsys, "get", "k", "--token-file", str(path))
    assert (status, out) == (2, "")
    assert err.startswith(f"ramraft: error: --token-file {path}") and problem in err, err
    assert err.count("\n") == 1 and "tok-" not in err  # never echoes a token


def test_tls_files_that_are_not_pem_are_usage_errors(capsys, tmp_path: Path) -> None:
    from ramraft.tools.certs import make_cluster_certs

    make_cluster_certs(tmp_path, {})
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not pem\n")
    ca, cert = str(tmp_path / "ca.pem"), str(tmp_path / "client.pem")
    for options, problem in [
        (["--tls-ca", str(garbage)], f"--tls-ca {garbage}: not a PEM certificate"),
        (["--tls-ca", ca, "--tls-cert", str(garbage), "--tls-key", str(garbage)], "--tls-cert"),
        (["--tls-ca", ca, "--tls-cert", cert, "--tls-key", cert], "not a PEM private key"),
    ]:
        status, out, err = run(capsys, "get", "k", *options, "--endpoints", dead_address())
        assert (status, out) == (2, ""), err
        assert err.startswith("ramraft: error: ") and problem in err and err.count("\n") == 1


def test_cluster_errors_are_one_line_and_exit_3(servers, capsys) -> None:
    down = servers()
    down.node.always = Failure(grpc.StatusCode.UNAVAILABLE, "no leader\nat all")
    status, out, err = run(capsys, "put", "k", "v", "--endpoints", down.address, "--timeout", "0.4")
    assert status == 3 and out == ""
    assert err.startswith("ramraft: error: Put: no node could serve it within 0.4s")
    assert err.count("\n") == 1 and "no leader at all" in err

    bad = servers()
    bad.node.fail_next(1, grpc.StatusCode.INVALID_ARGUMENT, details="key exceeds 1024 bytes")
    status, _, err = run(capsys, "get", "k", "--endpoints", bad.address)
    assert status == 3 and "INVALID_ARGUMENT" in err and "key exceeds 1024 bytes" in err


def test_help_has_examples(capsys) -> None:
    status, out, _ = run(capsys, "--help")
    assert status == 0 and "examples:" in out and "RAMRAFT_ENDPOINTS" in out
    for command in ["put", "get", "delete", "cas", "range", "status", "transfer-leader"]:
        assert command in out
    status, out, _ = run(capsys, "cas", "--help")
    assert status == 0 and "--absent" in out and "examples:" in out


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_no_help_shows_markup() -> None:
    """Help texts made from docstrings show code as a terminal does
    (`ramraft bench`), not as reStructuredText (``ramraft bench``)."""
    shown = {p.prog: p.format_help() for p in _parsers(cli.build_parser())}
    assert len(shown) > 30
    assert [prog for prog, text in shown.items() if "``" in text] == []


def test_no_command_prints_help_and_exits_2(capsys) -> None:
    status, _, err = run(capsys)
    assert status == 2 and "COMMAND" in err


def test_every_command_is_registered_in_one_parser(capsys) -> None:
    """The client's, the node's and the tools' subcommands share one parser."""
    out = run(capsys, "--help")[1]
    for command in ["node", "cluster", "bench", "chaos", "certs", "tokens"]:
        assert command in out


def test_client_options_helpers_for_other_commands(server: FakeServer) -> None:
    parser = argparse.ArgumentParser()
    cli.add_client_options(parser)
    args = parser.parse_args(["--endpoints", server.address, "--timeout", "2", "--json"])
    assert cli.json_from_args(args) is True
    with cli.client_from_args(args) as client:
        assert client.endpoints == [server.address] and client.timeout == 2.0
        client.put("k", b"v")
    defaults = parser.parse_args([])
    assert cli.endpoints_from_args(defaults) == cli.DEFAULT_ENDPOINTS.split(",")
    assert cli.timeout_from_args(defaults) == 5.0


# -- one output rule for every command ----------------------------------------------
#
# Standard output carries the answer and nothing else; a negative answer (exit
# 1), an error (2, 3) or a note goes to standard error as lines starting
# "ramraft: ". With --json the document is on standard output whatever the
# outcome. Each case: (what it shows, argv after the endpoints, setup).

SERVER_COMMANDS = {"node", "cluster", "bench", "chaos", "certs", "tokens", "restore"}
BACKUP_OUT = str(Path(tempfile.gettempdir()) / "ramraft-cli-test.backup")
BLOB_FILE = str(Path(__file__).resolve())  # any file will do
BLOB_OUT = str(Path(tempfile.gettempdir()) / "ramraft-cli-test.blob")
SEEDED_BLOB = b"a seeded blob"
SEEDED = hashlib.sha256(SEEDED_BLOB).hexdigest()
ABSENT = "0" * 64


def _client_commands() -> set[str]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices) - SERVER_COMMANDS


def _seed(server: FakeServer) -> None:
    server.node.data.update({"k": b"v", "lock": b"me"} | {f"u/{i}": b"x" for i in range(3)})
    server.node.changes = [("PUT", "u/0", b"x"), ("DELETE", "u/0", b"")]
    server.node.leases = {1: 10}
    server.node.blobs[SEEDED] = ("text/plain", SEEDED_BLOB)


OUTPUT_CASES: list[tuple[str, list[str]]] = [
    ("put", ["put", "k", "v"]),
    ("get found", ["get", "k"]),
    ("get missing", ["get", "absent"]),
    ("delete found", ["delete", "k"]),
    ("delete missing", ["delete", "absent"]),
    ("delete prefix", ["delete", "u/", "--prefix"]),
    ("delete prefix missing", ["delete", "none/", "--prefix"]),
    ("cas swapped", ["cas", "lock", "you", "--expected", "me"]),
    ("cas not swapped, present", ["cas", "lock", "you", "--expected", "other"]),
    ("cas not swapped, absent", ["cas", "absent", "you", "--expected", "other"]),
    ("range", ["range", "u/"]),
    ("range with more", ["range", "u/", "--limit", "1"]),
    ("status", ["status"]),
    ("transfer-leader", ["transfer-leader", "n2"]),
    ("members", ["members"]),
    ("members add", ["members", "add", "n4", "127.0.0.1:7004"]),
    ("members remove", ["members", "remove", "n2"]),
    ("snapshot", ["snapshot"]),
    ("app-version", ["app-version"]),
    ("app-version hold", ["app-version", "hold"]),
    ("check", ["check"]),
    ("backup", ["backup", "--out", BACKUP_OUT]),
    ("watch", ["watch", "u/", "--count", "1"]),
    ("txn", ["txn", "--compare", "value(k) = v", "--then", "put k w", "--else", "get k"]),
    ("lease grant", ["lease", "grant", "10"]),
    ("lease revoke", ["lease", "revoke", "1"]),
    ("lease revoke missing", ["lease", "revoke", "99"]),
    ("lease keep-alive", ["lease", "keep-alive", "1", "--once"]),
    ("lease keep-alive missing", ["lease", "keep-alive", "99", "--once"]),
    ("blob put", ["blob", "put", BLOB_FILE]),
    ("blob get to a file", ["blob", "get", SEEDED, "-o", BLOB_OUT]),
    ("blob get missing", ["blob", "get", ABSENT, "-o", BLOB_OUT]),
    ("blob info", ["blob", "info", f"sha256:{SEEDED}"]),
    ("blob info missing", ["blob", "info", ABSENT]),
    ("blob delete", ["blob", "delete", SEEDED]),
    ("blob delete missing", ["blob", "delete", ABSENT]),
]


def test_every_client_command_has_an_output_case() -> None:
    covered = {argv[0] for _, argv in OUTPUT_CASES}
    assert covered == _client_commands(), "add a case to OUTPUT_CASES for each new command"


def _check_output_rule(status: int, out: str, err: str, json_mode: bool) -> None:
    assert status in (0, 1, 2, 3), status
    err_lines = err.splitlines()
    assert all(line.startswith("ramraft: ") for line in err_lines), err
    if json_mode and status in (0, 1):
        json.loads(out)  # one document, the answer, whatever the outcome
        assert err == "", "--json: nothing but the document"
    elif status == 0:
        assert out, "a successful command prints its answer"
    else:
        assert out == "", "a negative answer or an error prints nothing on standard output"
        assert len(err_lines) == 1, err


@pytest.mark.parametrize("json_mode", [False, True], ids=["text", "json"])
@pytest.mark.parametrize(("what", "argv"), OUTPUT_CASES, ids=[c[0] for c in OUTPUT_CASES])
def test_output_rule(
    server: FakeServer, capsys, what: str, argv: list[str], json_mode: bool
) -> None:
    _seed(server)
    ep = ["--endpoints", server.address]
    status, out, err = run(capsys, *argv, *ep, *(["--json"] if json_mode else []))
    _check_output_rule(status, out, err, json_mode)
    expected_status = 1 if ("missing" in what or "not swapped" in what) else 0
    assert status == expected_status, (what, out, err)


@pytest.mark.parametrize("command", sorted(_client_commands()))
def test_output_rule_on_errors(servers, capsys, command: str) -> None:
    """A cluster that refuses: exit 3, nothing on standard output, one line on
    standard error (with --json too)."""
    down = servers()
    down.node.always = Failure(grpc.StatusCode.UNAVAILABLE, "no leader")
    argv = next(argv for _, argv in OUTPUT_CASES if argv[0] == command)
    for extra in ([], ["--json"]):
        status, out, err = run(
            capsys, *argv, "--endpoints", down.address, "--timeout", "0.3", *extra
        )
        assert status == 3, (argv, out, err)
        _check_output_rule(status, out, err, bool(extra))


def test_blob_commands(server: FakeServer, capsys, tmp_path: Path, monkeypatch) -> None:
    ep = ["--endpoints", server.address]
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG pixels")
    digest = hashlib.sha256(b"\x89PNG pixels").hexdigest()
    assert run(capsys, "blob", "put", str(photo), *ep) == (0, f"{digest}\n", "")
    assert server.node.blobs[digest] == ("image/png", b"\x89PNG pixels")  # guessed from the name
    status, out, _ = run(capsys, "blob", "info", digest.upper(), "--json", *ep)
    assert json.loads(out) == {"sha256": digest, "size": 11, "content_type": "image/png"}
    copy = tmp_path / "copy.png"
    assert run(capsys, "blob", "get", f"sha256:{digest}", "-o", str(copy), *ep)[0] == 0
    assert copy.read_bytes() == b"\x89PNG pixels"
    assert sorted(tmp_path.iterdir()) == sorted([photo, copy])  # no temporary file left
    # From standard input, with a type given; to standard output.
    stdin = types.SimpleNamespace(buffer=io.BytesIO(b"a,b\n1,2\n"), isatty=lambda: False)
    monkeypatch.setattr(sys, "stdin", stdin)
    status, out, _ = run(capsys, "blob", "put", "-", "--content-type", "text/csv", *ep)
    csv = out.strip()
    assert server.node.blobs[csv] == ("text/csv", b"a,b\n1,2\n")
    status, out, _ = run(capsys, "blob", "get", csv, *ep)
    assert (status, out) == (0, "a,b\n1,2\n")
    # Usage errors: one line, exit 2.
    for argv in (["blob", "get", "nope"], ["blob", "put", str(tmp_path / "absent")]):
        status, out, err = run(capsys, *argv, *ep)
        assert status == 2 and out == "" and len(err.splitlines()) == 1, (argv, err)
    status, _, err = run(capsys, "blob", "get", csv, "--json", *ep)
    assert status == 2 and "-o FILE" in err


def test_blob_files_that_cannot_be_read_or_written_are_usage_errors(
    server: FakeServer, capsys, tmp_path: Path
) -> None:
    ep = ["--endpoints", server.address]
    server.node.blobs[SEEDED] = ("text/plain", SEEDED_BLOB)
    cases = [
        (["blob", "get", SEEDED, "-o", str(tmp_path / "absent" / "copy")], "No such file"),
        (["blob", "get", SEEDED, "-o", str(tmp_path)], "is a directory"),
        (["blob", "put", str(tmp_path)], "not a regular file"),
    ]
    for argv, problem in cases:
        status, out, err = run(capsys, *argv, *ep)
        assert (status, out) == (2, ""), (argv, err)
        assert err.startswith("ramraft: error: blob ") and problem in err, (argv, err)
        assert err.count("\n") == 1 and "Traceback" not in err
    assert sorted(tmp_path.iterdir()) == [], "nothing half-written"


@pytest.mark.parametrize(
    ("argv", "where"),
    [
        (["get", "--bogus", "k"], "ramraft get --help"),
        (["node", "--bogus"], "ramraft node --help"),
        (["lease", "grant", "5", "--bogus"], "ramraft lease --help"),
        (["--bogus"], "ramraft --help"),
    ],
)
def test_an_unknown_option_points_at_its_subcommands_help(
    capsys: pytest.CaptureFixture[str], argv: list[str], where: str
) -> None:
    status, out, err = run(capsys, *argv)
    assert (status, out) == (2, "")
    assert err == f"ramraft: error: unrecognized arguments: --bogus (see '{where}')\n"


def test_status_names_the_cluster_record_of_the_node_that_applied_most(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A halted node stopped applying before the switch to app version 2:
    its record still says 1. The status line takes the record of the node
    that applied the most, and names the halted one."""
    record = {"cluster_id": "c1", "kv_version": 2, "upgrade_hold": False}
    nodes = [
        {"id": "n1", "applied_index": 45, "app_version": 1, "halted": "needs v2"} | record,
        {"id": "n2", "applied_index": 60, "app_version": 2, "halted": ""} | record,
        {"endpoint": "127.0.0.1:1", "error": "unreachable"},
    ]
    cli._write_cluster_lines(nodes)
    out = capsys.readouterr().out
    assert "cluster c1: app version 2, key-value version 2" in out
    assert "HALTED n1: needs v2" in out


@pytest.mark.parametrize(
    ("from_leader", "unknown"),
    [
        (True, "n3: not known yet (it has not answered this leader; try again)"),
        (False, "n3: not known"),
    ],
)
def test_app_version_says_which_members_versions_are_not_known(
    capsys: pytest.CaptureFixture[str], from_leader: bool, unknown: str
) -> None:
    """A member the leader has not heard from (0: not known) is said to be
    so in words, not shown as version "?"."""
    from ramraft.proto import admin_pb2
    from ramraft.tools import versions

    status = admin_pb2.StatusResponse(
        node=admin_pb2.NodeStatus(cluster_id="c1", app_version=1, kv_version=2),
        members=[
            admin_pb2.MemberStatus(id="n1", app_version_supported=2, kv_version_supported=2),
            admin_pb2.MemberStatus(id="n3"),
        ],
        members_from_leader=from_leader,
    )
    client = types.SimpleNamespace(status=lambda endpoint=None: status)
    args = argparse.Namespace(action="show", json=False)
    assert versions._cmd_app_version(client, args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "cluster c1 runs app version 1, key-value version 2",
        "  n1: supports app 2, key-value 2",
        f"  {unknown}",
    ]


@pytest.mark.parametrize(
    ("options", "words", "hint"),
    [
        ({}, "ipv4:127.0.0.1:7001: Socket closed", "give --tls-ca"),
        ({"tls_ca": "ca.pem"}, "ipv4:127.0.0.1:7001: Socket closed", "give --tls-cert"),
        (
            {"tls_ca": "ca.pem"},
            "Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: WRONG_VERSION_NUMBER",
            "the node does not serve TLS",
        ),
        (
            {"tls_ca": "ca.pem"},
            "Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1a000064:ECDSA "
            "routines:OPENSSL_internal:BAD_SIGNATURE: certificate signature failure: OK",
            "not signed by the CA of --tls-ca",
        ),
        ({"tls_ca": "ca.pem", "tls_cert": "c.pem"}, "Socket closed", ""),
        ({}, "Connection refused", ""),
    ],
)
def test_tls_hints_follow_grpcs_words(
    monkeypatch: pytest.MonkeyPatch, options: dict[str, str], words: str, hint: str
) -> None:
    for name in ("RAMRAFT_TLS_CA", "RAMRAFT_TLS_CERT", "RAMRAFT_TLS_SERVER_NAME"):
        monkeypatch.delenv(name, raising=False)
    args = argparse.Namespace(**options)
    error = cli.RamraftError(f"Get: UNAVAILABLE: {words}", code=grpc.StatusCode.UNAVAILABLE)
    got = cli._tls_hint(args, error)
    assert (hint in got) if hint else got == ""


def test_ctrl_c_while_the_command_line_imports_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C in the first tenths of a second, while grpc and the parsers
    import, ends as it does later: "interrupted", exit 130, no traceback."""
    import importlib.abc

    from ramraft import __main__ as entry

    class Interrupted(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: object, target: object = None) -> None:
            if name == "ramraft.tools.cli":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "ramraft.tools.cli")
    monkeypatch.setattr(sys, "meta_path", [Interrupted(), *sys.meta_path])
    assert entry.main() == cli.EXIT_INTERRUPTED
    assert capsys.readouterr().err == "ramraft: interrupted\n"

"""The Containerfile agrees with the StatefulSet (user, ports, data dir, env).

Building the image is scripts/build-image.sh (about 40 s with a cached base,
2 min from nothing); tests/chaos/test_container.py runs the built image.
"""

from __future__ import annotations

import json
import re
import shlex

import pytest

from tests.chaos.netns import CONTAINER_UID
from tests.k8s.checks import Doc, container_ports, containers, env_of, one, pod_spec
from tests.k8s.render import REPO, render

Instruction = tuple[str, str]


def instructions() -> list[Instruction]:
    """(KEYWORD, arguments) per Containerfile instruction, continuations joined."""
    text = (REPO / "Containerfile").read_text()
    logical = re.sub(r"\\\n", " ", text)
    out = []
    for line in logical.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def final_stage() -> list[Instruction]:
    ins = instructions()
    last_from = max(i for i, (k, _) in enumerate(ins) if k == "FROM")
    return ins[last_from:]


def env_instructions(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in stage:
        if keyword == "ENV":
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                env[key] = value
    return env


@pytest.fixture(scope="module")
def sts() -> Doc:
    return one(render(), "StatefulSet")


def test_base_image_is_a_build_argument() -> None:
    ins = instructions()
    assert ins[0] == ("ARG", "BASE_IMAGE=python:3.11-slim")
    assert all(rest.startswith("${BASE_IMAGE}") for k, rest in ins if k == "FROM")


def test_runs_as_the_non_root_user_the_statefulset_expects(sts: Doc) -> None:
    users = [rest for k, rest in final_stage() if k == "USER"]
    assert users, "no USER in the final stage"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, "USER must be numeric for runAsNonRoot"
    sc = pod_spec(sts)["securityContext"]
    assert (int(uid), int(gid)) == (sc["runAsUser"], sc["runAsGroup"]) == (CONTAINER_UID,) * 2
    assert sc["fsGroup"] == int(gid)


def test_entrypoint_is_ramraft_node() -> None:
    entry = [rest for k, rest in final_stage() if k == "ENTRYPOINT"][-1]
    argv = json.loads(entry)  # exec form: the node is PID 1 and gets SIGTERM itself
    assert argv[0].endswith("/ramraft") and argv[1:] == ["node"]


def test_ports_data_dir_and_env_match_the_statefulset(sts: Doc) -> None:
    stage = final_stage()
    exposed = {int(p) for k, rest in stage if k == "EXPOSE" for p in rest.split()}
    assert exposed == set(container_ports(sts).values())
    volumes = [v for k, rest in stage if k == "VOLUME" for v in json.loads(rest)]
    env = env_instructions(stage)
    pod_env = env_of(containers(sts)[0])
    # In the volume (its root may belong to root: the node makes data/ 0700).
    assert any(env["RAMRAFT_DATA_DIR"].startswith(v.rstrip("/") + "/") for v in volumes)
    for var in ("RAMRAFT_DATA_DIR", "RAMRAFT_LISTEN", "RAMRAFT_PEER_LISTEN", "RAMRAFT_HTTP"):
        assert env[var] == pod_env[var]["value"], var
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"  # read-only root filesystem


def test_build_context_is_the_package_only() -> None:
    ignore = (REPO / ".containerignore").read_text().split()
    for pattern in (".git", "tests", "k8s", "build/*", "!build/wheels"):
        assert pattern in ignore

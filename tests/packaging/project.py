"""Facts about the project read from the checkout itself, for the tests that
check what is built and shipped agrees with them."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def project_version() -> str:
    """pyproject.toml's ``[project] version``: the one version source."""
    with (REPO / "pyproject.toml").open("rb") as f:
        version = tomllib.load(f)["project"]["version"]
    assert isinstance(version, str)
    return version


def image_tag() -> str:
    """The tag scripts/build-image.sh gives the image by default."""
    return f"localhost/ramraft:{project_version()}"

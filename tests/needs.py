"""Skips for what an install fixes, and the rule that CI has none of them.

A test that needs an outside program (podman and the image, shellcheck,
chromium, Node.js, kubectl, the chaos lab's tools) skips with a reason made
by ``not_installed()`` where it is missing, naming the install. In CI
(``.ci/run`` exports ``CI=true``) tests/conftest.py turns such a skip into a
failure: .ci/run installs everything the tests need, so that skip would mean
an install step went missing. A skip for a reason no install can fix (not
root, a sandbox without network namespaces) is a plain skip everywhere.
"""

from __future__ import annotations

import os

NOT_INSTALLED = "not installed: "


def not_installed(what: str, install: str) -> str:
    """The skip reason for ``what``, which ``install`` provides."""
    return f"{NOT_INSTALLED}{what} ({install})"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")

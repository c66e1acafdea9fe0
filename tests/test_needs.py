"""The CI rule of tests/needs.py: with CI=true, a skip for something an
install fixes fails the run; a skip no install can fix stays a skip; outside
CI both are skips."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()

TESTS = """
import pytest
from tests.needs import not_installed

@pytest.mark.skipif(True, reason=not_installed("frobnicator", "apt-get install -y frob"))
def test_marked():
    pass

def test_imperative():
    pytest.skip(not_installed("frobnicator", "apt-get install -y frob"))

def test_not_fixable():
    pytest.skip("needs root to create network namespaces")
"""


# (CI, failed, errors, skipped): a skipif mark is judged at setup (an error).
@pytest.mark.parametrize(
    ("ci", "failed", "errors", "skipped"), [("true", 1, 1, 1), ("", 0, 0, 3)], ids=["ci", "local"]
)
def test_a_skip_an_install_fixes_fails_in_ci(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    ci: str,
    failed: int,
    errors: int,
    skipped: int,
) -> None:
    monkeypatch.setenv("CI", ci)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_skips=TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "-rA")
    result.assert_outcomes(failed=failed, errors=errors, skipped=skipped)
    if failed:
        result.stdout.fnmatch_lines(["*.ci/run must install what it needs: not installed: frob*"])

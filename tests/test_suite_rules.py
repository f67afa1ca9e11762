"""The suite's rules: no silent skip in CI, manual tests only on request."""

from __future__ import annotations

pytest_plugins = ["pytester"]

SUITE = """
import pytest

def test_needs_a_missing_tool():
    pytest.skip("zstd is not installed")

@pytest.mark.manual
def test_reads_ten_gib():
    pass
"""


def _run(pytester, monkeypatch, *, ci: bool, args=()):
    if ci:
        monkeypatch.setenv("CI", "true")
    else:
        monkeypatch.delenv("CI", raising=False)
    pytester.makepyfile(SUITE)
    return pytester.runpytest_inprocess("-p", "tests.suite_rules", "-p", "no:django", *args)


def test_a_skip_fails_the_run_in_ci(pytester, monkeypatch):
    result = _run(pytester, monkeypatch, ci=True)
    result.assert_outcomes(failed=1, deselected=1)
    result.stdout.fnmatch_lines(["*Skipped in CI*zstd is not installed*"])


def test_a_skip_stays_a_skip_outside_ci(pytester, monkeypatch):
    _run(pytester, monkeypatch, ci=False).assert_outcomes(skipped=1, deselected=1)


def test_manual_tests_run_when_asked_for(pytester, monkeypatch):
    result = _run(pytester, monkeypatch, ci=True, args=("-m", "manual"))
    result.assert_outcomes(passed=1, deselected=1)

"""The suite's own rules, as a pytest plugin.

Tests marked `manual` run only when asked for (`-m manual`); in CI a skipped test is a
failure, so a missing tool or service never passes unnoticed.
"""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config, items):
    if "manual" in (config.getoption("markexpr") or ""):
        return
    manual = [item for item in items if item.get_closest_marker("manual")]
    if manual:
        config.hook.pytest_deselected(items=manual)
        items[:] = [item for item in items if not item.get_closest_marker("manual")]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.skipped and os.environ.get("CI") and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"Skipped in CI, where every test must run: {reason}"
    return report

"""End to end in a real Chromium: a broken source's alert fires on the overview, an
operator acknowledges it from the browser, and it resolves once when mended."""

from __future__ import annotations

import shutil

import pytest
from playwright.sync_api import expect

from backups.models import Run
from backups.services.backup import backup_request
from backups.services.execution import run_execute
from backups.services.notify import notifications_deliver
from tests.test_browser_dashboard import browse, chromium  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_operator_acknowledges_a_firing_alert_from_the_browser(
    browse,  # noqa: F811
    operator,
    data_dir,
    watched,
    webhook,
):
    source = watched
    run_execute(backup_request(source=source, trigger=Run.Trigger.CLI).pk)
    shutil.rmtree(data_dir)
    run_execute(backup_request(source=source, trigger=Run.Trigger.CLI).pk)
    notifications_deliver()
    assert webhook.titles() == ["[FIRING] Backup failed: files"]

    page = browse("olivia")
    panel = page.locator("#firing-alerts")
    expect(panel).to_contain_text("[FIRING] Backup failed: files")
    panel.get_by_role("link", name="[FIRING] Backup failed: files").click()
    page.get_by_label("Note").fill("replacing the disk")
    page.get_by_role("button", name="Acknowledge").click()
    expect(page.get_by_text("You acknowledged")).to_be_visible()
    page.get_by_role("link", name="Overview").first.click()
    expect(page.locator("#firing-alerts")).to_contain_text("by olivia")
    expect(page.locator("#firing-alerts")).to_contain_text("replacing the disk")

    data_dir.mkdir()
    (data_dir / "a.txt").write_text("mended\n")
    run_execute(backup_request(source=source, trigger=Run.Trigger.CLI).pk)
    notifications_deliver()
    page.reload()
    expect(page.get_by_text("Nothing is firing.")).to_be_visible()
    assert webhook.titles() == ["[FIRING] Backup failed: files", "[RESOLVED] Backup failed: files"]

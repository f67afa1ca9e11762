"""End to end in a real Chromium: log in, back up with live progress, restore, and a viewer.

The pages are served by pytest-django's live server; queued runs are executed by a real
worker loop in a background thread calling `run_execute`, one run at a time, the way a
django-q worker does (the queue only carries the run id).
"""

from __future__ import annotations

import importlib
import queue
import re
import threading
import time

import pytest
from django.db import connections
from playwright.sync_api import expect, sync_playwright

from backups.models import Run
from backups.services.execution import run_execute

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 30_000


class ThreadWorker:
    """Execute queued runs in order in one background thread, like a one-process worker.

    With SQLite's in-memory test database every thread must use the live server's own
    connection (a second connection would see another, empty, database), so the worker
    borrows it, as the live server thread itself does.
    """

    def __init__(self) -> None:
        self.runs: queue.Queue[int | None] = queue.Queue()
        # Cleared, runs wait in the queue (a test looks at a queued run); set, they run.
        self.gate = threading.Event()
        self.gate.set()
        self.shared = connections["default"]
        self.share = self.shared.vendor == "sqlite" and self.shared.is_in_memory_db()
        self.thread = threading.Thread(target=self._loop, name="test-worker", daemon=True)
        self.thread.start()

    def async_task(self, func, run_id, **options) -> None:
        self.runs.put(run_id)

    def stop(self) -> None:
        self.gate.set()
        self.runs.put(None)
        self.thread.join(timeout=60)

    def _loop(self) -> None:
        if self.share:
            self.shared.inc_thread_sharing()
            connections["default"] = self.shared
        try:
            while (run_id := self.runs.get()) is not None:
                self.gate.wait()
                run_execute(run_id)
        finally:
            if self.share:
                self.shared.dec_thread_sharing()
            else:
                connections.close_all()


@pytest.fixture
def worker(monkeypatch, live_server):
    worker = ThreadWorker()
    monkeypatch.setattr("backups.services.queue.async_task", worker.async_task)
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def chromium():
    # Playwright's sync API keeps an event loop running in this thread for as long as the
    # browser lives; the ORM calls of the tests and of the database teardown are still
    # plain synchronous code.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield browser
            browser.close()


@pytest.fixture
def browse(chromium, live_server):
    """Return a function that opens a logged-in page at a given width."""
    contexts = []

    def open_as(username: str, width: int = 1280):
        context = chromium.new_context(viewport={"width": width, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        page.goto(f"{live_server.url}/login/")
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill("pw")
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("heading", name="Fleet overview")).to_be_visible()
        return page

    yield open_as
    for context in contexts:
        context.close()


def wait_for(predicate, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_an_operator_backs_up_and_watches_the_progress_reach_100_percent(
    browse, worker, operator, source
):
    page = browse("olivia")
    page.get_by_role("link", name="files", exact=True).click()
    worker.gate.clear()
    page.get_by_role("button", name="Back up now").click()
    # The run page, while the run still waits for the worker.
    expect(page.get_by_role("heading", name=re.compile(r"Backup #\d+ of files"))).to_be_visible()
    expect(page.locator("#run-live")).to_have_attribute("data-status", "queued")
    page.evaluate("window.notReloaded = true")
    worker.gate.set()
    # htmx refreshes the live part until the run ends: no reload of the page.
    expect(page.locator("#progress-text")).to_have_text("100 %")
    expect(page.locator("#run-live")).to_have_attribute("data-status", "succeeded")
    expect(page.locator("#run-live")).not_to_have_attribute("hx-trigger", re.compile(".*"))
    assert page.evaluate("window.notReloaded") is True
    run = Run.objects.get(kind="backup")
    assert run.status == "succeeded" and run.archive_path.exists()
    expect(page.locator(f"#sha256-{run.pk}")).to_have_text(run.sha256)
    # The overview now counts the source as backed up.
    page.get_by_role("link", name="Overview").first.click()
    expect(page.locator("#sources")).to_contain_text("files")


def test_the_overview_refreshes_itself_without_a_reload(browse, viewer, source, monkeypatch):
    # The package exports the view under the module's name: patch the module itself.
    monkeypatch.setattr(importlib.import_module("dashboard.views.overview"), "REFRESH_S", 1)
    page = browse("victor")
    expect(page.locator("#sources")).to_contain_text("files")
    page.evaluate("window.notReloaded = true")
    source.name = "files-renamed"
    source.save(update_fields=["name"])
    expect(page.locator("#sources")).to_contain_text("files-renamed", timeout=10_000)
    assert page.evaluate("window.notReloaded") is True


def test_an_expired_session_takes_the_refreshing_overview_to_the_login_page(
    browse, viewer, source, monkeypatch
):
    monkeypatch.setattr(importlib.import_module("dashboard.views.overview"), "REFRESH_S", 1)
    page = browse("victor")
    page.goto(page.url + "?sort=age")
    expect(page.locator("#sources")).to_contain_text("files")
    page.context.clear_cookies()  # the session ends while the page keeps polling
    expect(page.get_by_role("button", name="Log in")).to_be_visible(timeout=10_000)
    assert "/login/" in page.url and "next=" in page.url
    # The whole page is the login page: no table around a login form.
    assert page.locator("#sources").count() == 0
    page.get_by_label("Username").fill("victor")
    page.get_by_label("Password").fill("pw")
    page.get_by_role("button", name="Log in").click()
    # Back where the user was, with the same sort.
    expect(page.locator("#sources")).to_contain_text("files")
    assert page.url.endswith("?sort=age")


def test_an_operator_restores_a_backup_into_a_new_folder(
    browse, worker, operator, source, data_dir, tmp_path, live_server
):
    backup = Run.objects.get(pk=_backed_up(source, worker))
    target = tmp_path / "restored"
    page = browse("olivia")
    page.goto(f"{live_server.url}/sources/files/")
    page.get_by_role("link", name="Restore…").first.click()
    expect(page.get_by_role("heading", name="Restore files")).to_be_visible()
    expect(page.get_by_label("A new location (nothing existing is touched)")).to_be_checked()
    page.get_by_label("New location", exact=True).fill(str(target))
    page.get_by_role("button", name="Review the restore…").click()
    expect(page.get_by_role("heading", name="Nothing existing is overwritten")).to_be_visible()
    expect(page.get_by_text(str(target)).first).to_be_visible()
    page.get_by_label("Type files to confirm").fill("files")
    page.get_by_role("button", name="Restore now").click()
    expect(page.get_by_role("heading", name=re.compile(r"Restore #\d+ of files"))).to_be_visible()
    expect(page.locator("#run-live")).to_have_attribute("data-status", "succeeded")
    restore = Run.objects.get(kind="restore")
    assert restore.backup == backup and restore.requested_by == operator
    assert (target / "a.txt").read_text() == (data_dir / "a.txt").read_text()
    assert (target / "sub" / "b.bin").read_bytes() == (data_dir / "sub" / "b.bin").read_bytes()


def test_a_viewer_sees_no_restore_button_and_gets_403(browse, worker, viewer, source, live_server):
    backup_id = _backed_up(source, worker)
    page = browse("victor")
    page.goto(f"{live_server.url}/sources/files/")
    expect(page.get_by_role("heading", name="Restore points")).to_be_visible()
    expect(page.get_by_role("link", name="Restore…")).to_have_count(0)
    expect(page.get_by_role("button", name="Back up now")).to_have_count(0)
    page.goto(f"{live_server.url}/runs/{backup_id}/")
    expect(page.get_by_role("link", name="Browse files")).to_be_visible()
    expect(page.get_by_role("link", name="Restore…")).to_have_count(0)
    response = page.goto(f"{live_server.url}/restore/?backup={backup_id}")
    assert response.status == 403


def _backed_up(source, worker) -> int:
    """Queue a backup through the worker and wait until it has succeeded."""
    from django.db import transaction

    from backups.services.backup import backup_request

    with transaction.atomic():
        run = backup_request(source=source, trigger=Run.Trigger.MANUAL)
    wait_for(lambda: Run.objects.filter(pk=run.pk, status__in=Run.GOOD).exists())
    wait_for(lambda: not Run.objects.filter(status__in=Run.ACTIVE).exists())
    return run.pk

"""The runbook: its page, and RUNBOOK.md beside the archives after every good backup, which
import and retention leave alone."""

import hashlib
import shutil
import sqlite3
import subprocess
from io import StringIO

import pytest
from django.core.management import call_command
from django.template.loader import render_to_string
from django.urls import reverse

from backups.models import Run
from backups.services.backup import backup_request
from backups.services.catalog import policy_create, source_create
from backups.services.execution import run_execute
from backups.services.runbook import RUNBOOK_NAME, runbook_build, runbook_markdown, runbook_write
from tests.pages_helpers import make_policy, make_run, make_source

# Runs are executed as a worker does, which opens its own database connection.
pytestmark = pytest.mark.django_db(transaction=True)


def backup(source, **options) -> Run:
    return run_execute(backup_request(source=source, trigger=Run.Trigger.CLI).pk, **options)


@pytest.fixture
def drilled(db, data_dir):
    """A directory source with two backups and a timed drill of the newest."""
    policy = policy_create(
        name="nightly", rpo_s=86400, rto_s=1800, keep_last=2, verify_after_backup=False
    )
    source = source_create(name="files", kind="directory", location=str(data_dir), policy=policy)
    backup(source)
    newest = backup(source)
    make_run(source, kind="verify", ago_s=30, took_s=20, backup=newest, drill=True,
             exclusive=False, restore_seconds=754.0)  # fmt: skip
    return source


def test_a_good_backup_leaves_a_runbook_beside_its_archives(drilled, settings):
    folder = settings.ARCHIVE_ROOT / "files"
    newest = Run.objects.filter(kind="backup").order_by("-pk").first()
    backup(drilled)  # written again, now with the drill's measured time
    text = (folder / RUNBOOK_NAME).read_text()
    assert text.startswith("# Runbook: files\n")
    assert "RTO target: 30m; measured RTO: 12m 34s" in text
    assert f"{newest.stem}.tar.zst" in text
    latest = Run.objects.filter(kind="backup").order_by("-pk").first()
    assert f"sha256sum -c {latest.stem}.tar.zst.sha256" in text
    assert not list(folder.glob("*.tmp"))


def test_the_runbook_file_says_what_the_projects_template_engine_would(drilled):
    # RUNBOOK.md is rendered by an engine of its own (quicker after each backup); the text
    # must stay what the dashboard's engine makes of the same template.
    book = runbook_build(drilled)
    text = runbook_markdown(book)
    assert "## Restore points" in text and "measured RTO: 12m 34s" in text
    assert text == render_to_string("backups/RUNBOOK.md", {"book": book})


def test_the_plain_commands_of_the_runbook_restore_the_source(
    drilled, settings, tmp_path, data_dir
):
    runbook_write(drilled)
    text = (settings.ARCHIVE_ROOT / "files" / RUNBOOK_NAME).read_text()
    block = text.split("Unpack it beside the original:\n\n```\n", 1)[1].split("```", 1)[0]
    check = text.split("Check the archive is intact:\n\n```\n", 1)[1].split("```", 1)[0]
    # Run them as a person would, from a shell, with the dashboard gone.
    subprocess.run(["bash", "-euc", check + block], check=True, capture_output=True)
    restored = data_dir.parent / (data_dir.name + ".restored")
    for original in data_dir.rglob("*"):
        if original.is_file():
            copy = restored / original.relative_to(data_dir)
            assert (
                hashlib.sha256(copy.read_bytes()).digest()
                == hashlib.sha256(original.read_bytes()).digest()
            )


def test_a_failed_backup_leaves_the_runbook_as_it_was(drilled, settings, data_dir):
    path = settings.ARCHIVE_ROOT / "files" / RUNBOOK_NAME
    before = path.read_text()
    shutil.rmtree(data_dir)
    assert backup(drilled).status == "failed"
    assert path.read_text() == before


def test_a_runbook_left_half_written_by_a_crash_is_replaced(drilled, settings):
    folder = settings.ARCHIVE_ROOT / "files"
    (folder / (RUNBOOK_NAME + ".tmp")).write_text("half")
    backup(drilled)
    assert (folder / RUNBOOK_NAME).read_text().startswith("# Runbook: files")
    assert not (folder / (RUNBOOK_NAME + ".tmp")).exists()


def test_import_and_prune_leave_the_runbook_alone(drilled, settings):
    folder = settings.ARCHIVE_ROOT / "files"
    out = StringIO()
    call_command("import_archives", stdout=out, stderr=out)
    assert "RUNBOOK" not in out.getvalue()
    backup(drilled)
    call_command("prune", "--source", "files", stdout=StringIO())
    assert Run.objects.filter(kind="backup", status="pruned").exists()
    assert (folder / RUNBOOK_NAME).read_text().startswith("# Runbook: files")
    assert (
        subprocess.run(
            "sha256sum -c --quiet *.sha256", shell=True, cwd=folder, capture_output=True
        ).returncode
        == 0
    )


def test_the_runbook_page_states_points_times_commands_and_checks(client, viewer, tmp_path):
    database = tmp_path / "app.db"
    sqlite3.connect(database).execute("CREATE TABLE t (x)").connection.close()
    policy = policy_create(
        name="db", rpo_s=3600, rto_s=600,
        check_queries=[{"sql": "SELECT COUNT(*) FROM t", "expect": ">= 0"}],
    )  # fmt: skip
    source = source_create(name="app-db", kind="sqlite", location=str(database), policy=policy)
    good = backup(source)
    client.force_login(viewer)
    page = client.get(reverse("source-runbook", args=["app-db"])).text
    assert f"#{good.pk}</a>" in page
    assert "never measured: no drill or restore has been timed" in page
    assert f"python manage.py restore {good.pk} --in-place --yes --wait" in page
    assert f"/restore/?backup={good.pk}" in page
    assert "PRAGMA integrity_check" in page
    assert "SELECT COUNT(*) FROM t" in page and "expect &gt;= 0" in page


def test_every_source_has_a_runbook_page_even_without_backups(client, viewer):
    make_source("pods", kind="kubernetes", location="prod/api-0/app:/data", policy=make_policy())
    client.force_login(viewer)
    response = client.get(reverse("source-runbook", args=["pods"]))
    assert response.status_code == 200
    assert "None yet." in response.text
    assert "there is no good backup yet" in response.text


@pytest.mark.parametrize("count", [2, 20])
def test_the_runbook_page_costs_the_same_however_long_the_history(
    client, viewer, count, django_assert_num_queries
):
    source = make_source("web", policy=make_policy())
    for hours in range(count):
        make_run(source, ago_s=(hours + 1) * 3600)
    client.force_login(viewer)
    # 2 (session, user) + 2 (permissions) + 1 (the source) + 5 (its standing, as on its
    # page) + 1 (the restore points) + 1 (the newest verification's duration).
    with django_assert_num_queries(12):
        client.get(reverse("source-runbook", args=["web"]))

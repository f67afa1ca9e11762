"""Where a restore may write, tried as an operator through the restore pages and the CLI.

An operator may restore but must not be able to write anywhere else with it: new folders
and files only inside RESTORE_ROOTS, never into, over or around the archive storage, the
dashboard's own database or a source's data; the command line (a shell on the host) may
leave the roots but not those places.
"""

from __future__ import annotations

import json
import os
import stat
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from backups.models import Run
from backups.services.catalog import source_create
from backups.tasks import execute_run

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def roots(tmp_path, settings):
    """The one folder the dashboard's restores may write in, narrower than the test's."""
    root = tmp_path / "restores"
    root.mkdir()
    settings.RESTORE_ROOTS = [root]
    return root


def cli(*args) -> tuple[int, str]:
    """Run a command as a script would; return its exit status and what it printed."""
    out = StringIO()
    try:
        call_command(*args, stdout=out, stderr=StringIO())
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    except CommandError as error:
        code = error.returncode
        out.write(str(error))
    return code, out.getvalue()


def backup_of(source) -> Run:
    code, out = cli("backup", source.name, "--inline", "--json")
    assert code == 0, out
    return Run.objects.get(pk=json.loads(out)["id"])


@pytest.fixture
def backup(source):
    return backup_of(source)


def review(client, backup, target, *, mode="new"):
    data = {"source": backup.source.slug, "backup": backup.pk, "mode": mode, "target": target}
    return client.post(reverse("restore-confirm"), data)


def confirm(client, backup, target):
    data = {
        "source": backup.source.slug,
        "backup": backup.pk,
        "mode": "new",
        "target": target,
        "confirm_name": backup.source.name,
    }
    return client.post(reverse("restore-confirm"), data)


def refused(response) -> str:
    """Return the form's error once the restore page turned the target down."""
    assert response.status_code == 200
    assert response.templates[0].name == "dashboard/restore_start.html"
    assert not Run.objects.filter(kind=Run.Kind.RESTORE).exists()
    return " ".join(response.context["form"].non_field_errors())


def cli_restore(backup, target, *, expect=0):
    code, out = cli("restore", str(backup.pk), "--to", str(target), "--inline", "--json")
    assert code == expect, out
    return out


def test_the_suggested_target_is_inside_the_roots_and_accepted(client, operator, backup, roots):
    client.force_login(operator)
    start = client.get(reverse("restore-start"), {"backup": backup.pk})
    suggested = start.context["form"].initial["target"]
    assert suggested == str(roots / f"{backup.source.slug}-restored-{backup.pk}")

    response = review(client, backup, suggested)

    assert response.templates[0].name == "dashboard/restore_confirm.html"


def test_an_operator_cannot_restore_into_a_new_ssh_folder(
    client, operator, backup, roots, tmp_path
):
    home = tmp_path / "home" / "deploy"
    home.mkdir(parents=True)
    client.force_login(operator)

    error = refused(review(client, backup, str(home / ".ssh")))

    assert "outside the folders restores to a new location may write to" in error
    assert str(roots) in error
    assert not (home / ".ssh").exists()


def test_an_operator_cannot_fill_an_existing_empty_system_folder(
    client, operator, backup, roots, tmp_path
):
    crontabs = tmp_path / "var" / "spool" / "cron" / "crontabs"
    crontabs.mkdir(parents=True)
    client.force_login(operator)

    assert "outside the folders" in refused(review(client, backup, str(crontabs)))
    assert list(crontabs.iterdir()) == []


def test_a_symlink_in_the_roots_that_leads_out_is_refused(
    client, operator, backup, roots, tmp_path
):
    outside = tmp_path / "outside"
    outside.mkdir()
    (roots / "link").symlink_to(outside)
    client.force_login(operator)

    for target in (roots / "link", roots / "link" / "restored"):
        error = refused(review(client, backup, str(target)))
        assert f"(really {outside}" in error
    assert list(outside.iterdir()) == []


def test_the_archive_storage_is_refused_even_inside_the_roots(
    client, operator, backup, settings, tmp_path
):
    settings.RESTORE_ROOTS = [tmp_path]  # a root that holds the archive storage
    client.force_login(operator)

    inside = refused(review(client, backup, str(settings.ARCHIVE_ROOT / "files-copy")))
    assert "is inside the archive storage" in inside


def test_a_folder_around_the_archive_storage_is_refused(
    client, operator, source, settings, tmp_path
):
    settings.RESTORE_ROOTS = [tmp_path]
    around = tmp_path / "wrapper"
    settings.ARCHIVE_ROOT = around / "archives"
    settings.ARCHIVE_ROOT.mkdir(parents=True)
    backup = backup_of(source)
    client.force_login(operator)

    assert "contains the archive storage" in refused(review(client, backup, str(around)))


def test_another_sources_data_is_refused_inside_and_around(client, operator, backup, policy, roots):
    live = roots / "apps" / "wiki"
    live.mkdir(parents=True)
    source_create(name="wiki", kind="directory", location=str(live), policy=policy)
    client.force_login(operator)

    inside = refused(review(client, backup, str(live / "uploads")))
    assert "is inside the location of the source 'wiki'" in inside
    around = refused(review(client, backup, str(roots / "apps")))
    assert "contains the location of the source 'wiki'" in around
    assert list(live.iterdir()) == []


def test_the_worker_checks_again_before_it_writes(client, operator, backup, roots, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = roots / "restored"
    client.force_login(operator)
    response = confirm(client, backup, str(target))
    run = Run.objects.get(kind=Run.Kind.RESTORE)
    assert response.status_code == 302 and run.status == Run.Status.QUEUED
    target.symlink_to(outside)  # the target changed between the request and the worker

    assert execute_run(run.pk) == Run.Status.FAILED

    run.refresh_from_db()
    assert "outside the folders" in run.error
    assert list(outside.iterdir()) == []


def test_the_command_line_may_restore_outside_the_roots(backup, roots, tmp_path, data_dir):
    target = tmp_path / "elsewhere"

    run = json.loads(cli_restore(backup, target))

    assert run["status"] == "succeeded"
    assert (target / "a.txt").read_text() == (data_dir / "a.txt").read_text()


def test_the_command_line_may_not_restore_into_the_archive_storage(backup, roots, settings):
    target = settings.ARCHIVE_ROOT / "files-copy"

    message = cli_restore(backup, target, expect=2)

    assert "is inside the archive storage" in message
    assert not target.exists()


def test_the_command_line_may_not_restore_over_the_dashboards_database(policy, settings, tmp_path):
    import sqlite3

    database = tmp_path / "app.db"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE t (x)")
    backup = backup_of(
        source_create(name="app", kind="sqlite", location=str(database), policy=policy)
    )
    settings.DATABASE_FILE = tmp_path / "dashboard" / "db.sqlite3"
    settings.DATABASE_FILE.parent.mkdir()
    settings.DATABASE_FILE.write_bytes(b"")

    for name in ("db.sqlite3-wal", "db.sqlite3-journal"):
        target = settings.DATABASE_FILE.parent / name
        assert "is the dashboard's own database" in cli_restore(backup, target, expect=2)
        assert not target.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files away")
def test_a_restored_setuid_root_file_is_neither_setuid_nor_someone_elses(
    client, operator, policy, roots, tmp_path
):
    data = tmp_path / "pod-data"
    data.mkdir()
    (data / "su").write_text("#!/bin/sh\n")
    os.chmod(data / "su", 0o4755)
    (data / "theirs").write_text("data\n")
    os.chown(data / "theirs", 1234, 1234)
    backup = backup_of(
        source_create(name="pod", kind="directory", location=str(data), policy=policy)
    )
    client.force_login(operator)
    confirm(client, backup, str(roots / "pod"))

    execute_run(Run.objects.get(kind=Run.Kind.RESTORE).pk)

    restored = {name: os.stat(roots / "pod" / name) for name in ("su", "theirs")}
    assert {name: stat.S_IMODE(info.st_mode) for name, info in restored.items()} == {
        "su": 0o755,
        "theirs": 0o644,
    }
    assert {info.st_uid for info in restored.values()} == {os.geteuid()}


def test_a_restore_folder_that_does_not_exist_yet_is_made(
    client, operator, backup, settings, tmp_path, data_dir
):
    settings.RESTORE_ROOTS = [tmp_path / "var" / "restores"]  # a fresh install's default
    target = tmp_path / "var" / "restores" / "files-1"
    client.force_login(operator)
    confirm(client, backup, str(target))

    assert execute_run(Run.objects.get(kind=Run.Kind.RESTORE).pk) == Run.Status.SUCCEEDED

    assert (target / "a.txt").read_text() == (data_dir / "a.txt").read_text()

"""`backup`, `runs` and `import_archives` end to end, with real tar, zstd and sha256sum."""

import json
import logging
import subprocess
import threading
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.core.management.color import no_style
from django.db import connection
from django.urls import reverse

from backups.models import Manifest, ManifestEntry, Run, Source
from backups.services.backup import backup_request
from tests.cli_helpers import call_json
from tests.db_faults import database_refuses

pytestmark = pytest.mark.django_db(transaction=True)


def test_inline_backup_publishes_an_archive_that_plain_tools_verify_and_restore(
    source, data_dir, tmp_path
):
    run = call_json("backup", source.name, "--inline")
    assert run["status"] == "succeeded" and run["kind"] == "backup" and run["trigger"] == "cli"
    archive = run["archive"]
    assert archive.endswith(".tar.zst") and f"-{run['id']}." in archive
    folder = source.archive_dir
    check = subprocess.run(
        "sha256sum -c *.sha256", shell=True, cwd=folder, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    digest = subprocess.run(["sha256sum", archive], capture_output=True, text=True).stdout.split()[
        0
    ]
    assert run["sha256"] == digest
    out = tmp_path / "plain"
    out.mkdir()
    subprocess.run(f"zstd -d < '{archive}' | tar -xf - -C '{out}'", shell=True, check=True)
    assert (out / "a.txt").read_text() == "alpha\n"
    assert (out / "sub" / "b.bin").read_bytes() == (data_dir / "sub" / "b.bin").read_bytes()
    assert run["files"] == 2 and run["bytes"] == 6 + 2560


def test_the_catalog_holds_the_manifest_folder_by_folder(source, data_dir):
    run = call_json("backup", source.name, "--inline")
    manifest = Manifest.objects.get(run_id=run["id"])
    assert manifest.files == 2
    names = set(
        ManifestEntry.objects.filter(
            directory__manifest=manifest, directory__path="sub"
        ).values_list("name", flat=True)
    )
    assert names == {"b.bin"}
    entry = ManifestEntry.objects.get(
        directory__manifest=manifest, directory__path="", name="a.txt"
    )
    expected = subprocess.run(
        ["sha256sum", str(data_dir / "a.txt")], capture_output=True, text=True
    ).stdout.split()[0]
    assert entry.sha256_hex == expected


def test_a_second_backup_of_a_busy_source_exits_3_naming_the_running_run(source):
    active = backup_request(source=source, trigger=Run.Trigger.CLI, enqueue=False)
    with pytest.raises(CommandError) as caught:
        call_command("backup", source.name, "--inline")
    assert caught.value.returncode == 3
    assert f"#{active.pk}" in str(caught.value)
    assert Run.objects.filter(source=source).count() == 1


def test_backup_of_an_unknown_source_exits_2(source):
    with pytest.raises(CommandError) as caught:
        call_command("backup", "nope")
    assert caught.value.returncode == 2
    assert "files" in str(caught.value)


def test_dry_run_prints_the_plan_and_writes_nothing(source):
    source.excludes = ["*.bin"]
    source.save()
    plan = call_json("backup", source.name, "--dry-run")
    assert plan["files"] == 1 and plan["bytes"] == 6
    assert plan["excluded_count"] == 1
    assert not Run.objects.exists()
    assert not source.archive_dir.exists() or not any(source.archive_dir.iterdir())


def test_a_failing_source_fails_the_run_with_exit_1_and_publishes_nothing(source, data_dir):
    import shutil

    shutil.rmtree(data_dir)
    with pytest.raises(SystemExit) as exit_:
        call_command("backup", source.name, "--inline", stdout=StringIO(), stderr=StringIO())
    assert exit_.value.code == 1
    run = Run.objects.get(source=source)
    assert run.status == Run.Status.FAILED and str(data_dir) in run.error
    assert not source.archive_dir.exists() or not list(source.archive_dir.glob("*.tar*"))


def test_runs_lists_newest_first_and_filters(source):
    first = call_json("backup", source.name, "--inline")
    second = call_json("backup", source.name, "--inline")
    listed = call_json("runs", "--kind", "backup")
    assert [run["id"] for run in listed["runs"]] == [second["id"], first["id"]]
    assert call_json("runs", "--status", "failed") == {"runs": []}
    assert call_json("runs", str(first["id"]))["sha256"] == first["sha256"]


def test_import_archives_rebuilds_a_lost_catalog_idempotently(source):
    first = call_json("backup", source.name, "--inline")
    made = call_json("backup", source.name, "--inline")
    Manifest.objects.all().delete()
    Run.objects.filter(kind="verify").delete()
    Run.objects.all().delete()
    Source.objects.all().delete()
    # A new, empty catalog: its id sequence starts again from 1.
    with connection.cursor() as cursor:
        for sql in connection.ops.sequence_reset_sql(no_style(), [Run]):
            cursor.execute(sql)

    report = call_json("import_archives")
    # Each backup comes back under the id its manifest recorded.
    assert sorted(report["imported"]) == [first["id"], made["id"]]
    assert report["sources_created"] == ["files"]
    run = Run.objects.get(pk=made["id"])
    assert (run.sha256, run.archive, run.status) == (made["sha256"], made["archive"], "succeeded")
    assert Manifest.objects.get(run=run).files == 2

    again = call_json("import_archives")
    assert again["imported"] == [] and again["known"] == 2
    assert Run.objects.count() == 2
    # The id sequence moved past the imported run: the next run gets a fresh id instead of
    # colliding with the imported one. (Only PostgreSQL keeps a sequence apart from the
    # rows; on SQLite this holds anyway, so the check has teeth on PostgreSQL.)
    later = backup_request(source=run.source, trigger=Run.Trigger.CLI, enqueue=False)
    assert later.pk > made["id"]


def test_import_refuses_a_manifest_with_a_newer_format(source):
    made = call_json("backup", source.name, "--inline")
    manifest_path = Run.objects.get(pk=made["id"]).manifest_path
    text = manifest_path.read_text().replace('"format": 2', '"format": 99', 1)
    manifest_path.write_text(text)
    Run.objects.filter(kind="verify").delete()
    Run.objects.all().delete()
    with pytest.raises(CommandError) as caught:
        call_command("import_archives", stdout=StringIO(), stderr=StringIO())
    assert caught.value.returncode == 2
    assert not Run.objects.exists()


def test_a_backup_held_by_a_dead_worker_is_reaped_and_the_new_backup_goes_ahead(source):
    from datetime import timedelta

    from django.utils import timezone

    from backups.services.runs import run_claim

    stuck = run_claim(backup_request(source=source, trigger="cli", enqueue=False).pk, "gone:1:x")
    Run.objects.filter(pk=stuck.pk).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    run = call_json("backup", source.name, "--inline")
    assert run["status"] == "succeeded"
    stuck.refresh_from_db()
    assert stuck.status == Run.Status.ABANDONED


REJECT = "the catalog rejects new entries"


@pytest.fixture
def catalog_rejects_entries():
    """Make the database itself refuse every new catalog entry, as a broken catalog would."""
    table = ManifestEntry._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "CREATE FUNCTION reject_entry() RETURNS trigger LANGUAGE plpgsql AS "
                f"$$ BEGIN RAISE EXCEPTION '{REJECT}'; END $$"
            )
            cursor.execute(
                f"CREATE TRIGGER reject_entry BEFORE INSERT ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION reject_entry()"
            )
        else:
            cursor.execute(
                f"CREATE TRIGGER reject_entry BEFORE INSERT ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{REJECT}'); END"
            )

    def accept_again():
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute(f"DROP TRIGGER IF EXISTS reject_entry ON {table}")
                cursor.execute("DROP FUNCTION IF EXISTS reject_entry()")
            else:
                cursor.execute("DROP TRIGGER IF EXISTS reject_entry")

    yield accept_again
    accept_again()


def test_a_backup_whose_catalog_cannot_be_indexed_succeeds_with_a_warning(
    source, catalog_rejects_entries, client, viewer
):
    run = call_json("backup", source.name, "--inline")
    assert run["status"] == "warning"
    [warning] = run["warnings"]
    assert warning.startswith("The file catalog of this backup could not be indexed")
    assert REJECT in warning and "import_archives" in warning
    # The archive, its sidecar and its manifest are published and intact.
    check = subprocess.run(
        "sha256sum -c *.sha256", shell=True, cwd=source.archive_dir, capture_output=True
    )
    assert check.returncode == 0
    backup = Run.objects.get(pk=run["id"])
    assert backup.manifest_path.is_file()
    assert Run.objects.restorable().filter(pk=backup.pk).exists()
    assert not Manifest.objects.filter(run=backup).exists()

    client.force_login(viewer)
    page = client.get(reverse("manifest-browse", args=[backup.pk]))
    assert warning in page.text


def test_import_archives_names_a_manifest_the_database_refuses_and_carries_on(
    source, catalog_rejects_entries
):
    made = call_json("backup", source.name, "--inline")
    out = StringIO()
    with pytest.raises(CommandError) as caught:
        call_command("import_archives", "--json", stdout=out)
    assert caught.value.returncode == 2
    report = json.loads(out.getvalue())
    assert report["reindexed"] == []
    [refused] = report["refused"]
    assert refused.startswith(f"{Run.objects.get(pk=made['id']).manifest_path}: the database")
    assert REJECT in refused and "run import_archives again" in refused


def test_import_archives_indexes_a_known_backup_whose_catalog_indexing_failed(
    source, catalog_rejects_entries
):
    made = call_json("backup", source.name, "--inline")
    assert made["status"] == "warning"
    catalog_rejects_entries()

    report = call_json("import_archives")
    assert (report["imported"], report["reindexed"], report["known"]) == ([], [made["id"]], 0)
    manifest = Manifest.objects.get(run_id=made["id"])
    assert manifest.files == 2 and manifest.entries == 3

    again = call_json("import_archives")
    assert (again["reindexed"], again["known"]) == ([], 1)


def test_a_backup_whose_verification_cannot_be_requested_still_succeeds_and_says_so(source):
    with database_refuses(Run._meta.db_table, "INSERT", "NEW.kind = 'verify'", "no new verify"):
        run = call_json("backup", source.name, "--inline")
    assert run["status"] == "succeeded" and run["error"] is None
    log = Run.objects.get(pk=run["id"]).log
    assert "starting what follows it failed" in log and "no new verify" in log
    assert not Run.objects.filter(kind=Run.Kind.VERIFY).exists()


def test_a_heartbeat_the_database_keeps_refusing_fails_the_run_with_the_reason(
    stalled_pod, settings, monkeypatch
):
    # The reaper would take a run that cannot beat for ABANDON_AFTER_S (10 s here) and
    # say its worker stopped answering; the worker, still there, says why first.
    monkeypatch.setenv("FAKE_KUBECTL_STALL", "12")
    settings.ABANDON_AFTER_S = 10
    settings.HEARTBEAT_INTERVAL_S = 1
    refused = "OLD.status = 'running' AND NEW.heartbeat_at <> OLD.heartbeat_at"
    with (
        database_refuses(Run._meta.db_table, "UPDATE", refused, "no heartbeat"),
        pytest.raises(SystemExit) as exit_,
    ):
        call_command("backup", stalled_pod.name, "--inline", stdout=StringIO())
    assert exit_.value.code == 1
    run = Run.objects.get(source=stalled_pod)
    assert run.status == Run.Status.FAILED
    assert run.error.startswith("The database has refused this run's heartbeat for ")
    assert "no heartbeat" in run.error and "\n" not in run.error
    assert list(stalled_pod.archive_dir.iterdir()) == []


def test_the_end_of_a_run_is_recorded_through_a_database_hiccup(source):
    # The database refuses the first write of the run's end; the worker tries again.
    refused = threading.Event()

    class Watch(logging.Handler):
        def emit(self, record):
            if "recording its end failed" in record.getMessage():
                refused.set()

    watch = Watch()
    logging.getLogger("backups.services.runs").addHandler(watch)
    ended = "NEW.status IN ('succeeded', 'warning') AND OLD.status = 'running'"
    try:
        with database_refuses(Run._meta.db_table, "UPDATE", ended, "hiccup") as lift:

            def lift_after_the_first_refusal():
                if refused.wait(60):
                    lift()
                    connection.close()  # this thread's own

            lifter = threading.Thread(target=lift_after_the_first_refusal, daemon=True)
            lifter.start()
            run = call_json("backup", source.name, "--inline")
            lifter.join()
    finally:
        logging.getLogger("backups.services.runs").removeHandler(watch)
    assert refused.is_set()
    assert run["status"] == "succeeded"
    assert Path(run["archive"]).is_file()

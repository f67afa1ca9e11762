"""Offsite copies: made after each backup, proven, retried, used when the primary fails.

Real storages only: a second local folder and SeaweedFS's S3 (tests/s3server.py).
"""

from __future__ import annotations

import functools
import secrets
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import CommandError
from django.utils import timezone

from backups.models import Copy, Run
from backups.services.copy import copies_retry_due, copy_retry_delay
from backups.services.execution import run_execute
from tests import cli_helpers
from tests.cli_helpers import quiet
from tests.s3server import BUCKET

pytestmark = pytest.mark.django_db(transaction=True)


# Commands here may exit 1 (a refusal, a failed check): their JSON is what is checked.
call_json = functools.partial(cli_helpers.call_json, expect=(0, 1))


@pytest.fixture
def offsite(tmp_path) -> Path:
    """A second local storage `offsite`."""
    folder = tmp_path / "offsite"
    quiet("storage", "add", "offsite", "--kind", "local", "--path", str(folder))
    return folder


@pytest.fixture
def prefix() -> str:
    return f"t-{secrets.token_hex(6)}"


@pytest.fixture
def bucket(s3_server, s3_env, prefix):
    """An S3 storage `bucket` under its own prefix of the test bucket."""
    quiet(
        "storage", "add", "bucket", "--kind", "s3", "--url", f"s3://{BUCKET}/{prefix}",
        "--endpoint", s3_server.endpoint, "--credentials-env", s3_env,
    )  # fmt: skip
    return s3_server


def files_source(data_dir, *policy_args) -> None:
    quiet("policy", "add", "p", "--keep-last", "1", "--no-verify", *policy_args)
    quiet(
        "source", "add", "files", "--kind", "directory", "--location", str(data_dir),
        "--policy", "p",
    )  # fmt: skip


def test_a_backup_is_copied_to_a_second_storage_and_the_copy_is_proven(data_dir, offsite):
    files_source(data_dir, "--copy-to", "offsite")
    backup = call_json("backup", "files", "--inline")
    shown = call_json("runs", str(backup["id"]))
    assert shown["storage"] == "default"
    assert [(c["storage"], c["status"], c["sha256"]) for c in shown["copies"]] == [
        ("offsite", "succeeded", backup["sha256"])
    ]
    assert shown["copies"][0]["at"]
    check = subprocess.run(
        "sha256sum -c *.sha256", shell=True, cwd=offsite / "files", capture_output=True, text=True
    )
    assert check.returncode == 0 and "OK" in check.stdout, check.stdout + check.stderr
    copy_run = Run.objects.get(kind=Run.Kind.COPY)
    assert copy_run.status == Run.Status.SUCCEEDED and copy_run.backup_id == backup["id"]
    assert copy_run.archive == str(offsite / "files" / Path(backup["archive"]).name)


def test_a_backup_on_s3_is_copied_to_a_local_folder(data_dir, bucket, prefix, offsite):
    files_source(data_dir, "--storage", "bucket", "--copy-to", "offsite")
    backup = call_json("backup", "files", "--inline")
    assert backup["archive"].startswith(f"s3://{BUCKET}/{prefix}/files/")
    copies = call_json("runs", str(backup["id"]))["copies"]
    assert [(c["storage"], c["status"]) for c in copies] == [("offsite", "succeeded")]
    check = subprocess.run(
        "sha256sum -c *.sha256", shell=True, cwd=offsite / "files", capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_policy_add_refuses_to_copy_to_the_storage_it_writes_to(offsite):
    with pytest.raises(CommandError) as caught:
        quiet("policy", "add", "p", "--storage", "offsite", "--copy-to", "offsite")
    assert caught.value.returncode == 2 and "cannot be copied to the storage" in str(caught.value)
    with pytest.raises(CommandError) as caught:
        quiet("policy", "add", "q", "--copy-to", "default")
    assert caught.value.returncode == 2 and "--copy-to" in str(caught.value)


def test_a_restore_uses_the_copy_when_the_primary_archive_is_gone(data_dir, offsite, tmp_path):
    files_source(data_dir, "--copy-to", "offsite")
    backup = call_json("backup", "files", "--inline")
    Path(backup["archive"]).unlink()
    target = tmp_path / "restored"
    restored = call_json("restore", str(backup["id"]), "--to", str(target), "--inline")
    assert restored["status"] == "succeeded", restored["error"]
    assert restored["storage"] == "offsite"
    assert restored["archive"] == str(offsite / "files" / Path(backup["archive"]).name)
    assert (target / "a.txt").read_text() == "alpha\n"


def test_a_restore_uses_the_copy_when_the_primary_fails_its_checksum(
    data_dir, bucket, prefix, offsite, tmp_path
):
    files_source(data_dir, "--storage", "bucket", "--copy-to", "offsite")
    backup = call_json("backup", "files", "--inline")
    key = backup["archive"].removeprefix(f"s3://{BUCKET}/")
    client = bucket.client()
    data = bytearray(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0xFF
    client.put_object(Bucket=BUCKET, Key=key, Body=bytes(data))
    target = tmp_path / "restored"
    restored = call_json("restore", str(backup["id"]), "--to", str(target), "--inline")
    assert restored["status"] == "warning", restored["error"]
    assert restored["storage"] == "offsite"
    assert any("restoring the copy in storage offsite" in line for line in restored["warnings"])
    assert (target / "sub" / "b.bin").read_bytes() == (data_dir / "sub" / "b.bin").read_bytes()


def test_restore_from_picks_a_copy_and_refuses_a_storage_without_one(data_dir, offsite, tmp_path):
    files_source(data_dir, "--copy-to", "offsite")
    quiet("storage", "add", "empty", "--kind", "local", "--path", str(tmp_path / "empty"))
    backup = call_json("backup", "files", "--inline")
    restored = call_json(
        "restore", str(backup["id"]), "--to", str(tmp_path / "r1"), "--from", "offsite", "--inline"
    )
    assert restored["status"] == "succeeded" and restored["storage"] == "offsite"
    with pytest.raises(CommandError) as caught:
        quiet("restore", str(backup["id"]), "--to", str(tmp_path / "r2"), "--from", "empty")
    assert caught.value.returncode == 2
    assert "no proven copy in storage 'empty'" in str(caught.value)
    assert "default, offsite" in str(caught.value)


def test_a_failed_copy_is_retried_on_the_same_row_after_its_delay(
    data_dir, bucket, prefix, monkeypatch
):
    files_source(data_dir, "--copy-to", "bucket")
    monkeypatch.setenv("TEST_S3_SECRET_ACCESS_KEY", "not-the-secret")
    backup = call_json("backup", "files", "--inline")
    assert backup["status"] == "succeeded"  # the backup stands; its copy failed
    copy = Copy.objects.get()
    assert copy.status == Copy.Status.FAILED and "TEST_S3" in copy.error
    assert copy.attempts == 1 and copy.retry_at > timezone.now()
    assert copies_retry_due() == []  # not before its delay
    monkeypatch.setenv("TEST_S3_SECRET_ACCESS_KEY", "test-admin-secret")
    later = timezone.now() + timedelta(seconds=copy_retry_delay(1) + 1)
    [again] = copies_retry_due(now=later)
    assert copies_retry_due(now=later) == []  # queued once, not twice
    assert run_execute(again.pk, inline=True).status == Run.Status.SUCCEEDED
    copy = Copy.objects.get()
    assert (copy.status, copy.attempts, copy.sha256) == (
        Copy.Status.SUCCEEDED,
        2,
        backup["sha256"],
    )
    keys = bucket.client().list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/")["Contents"]
    assert len(keys) == 3
    assert copies_retry_due(now=later + timedelta(days=1)) == []


def test_a_damaged_archive_is_not_copied(data_dir, offsite):
    files_source(data_dir)
    backup = call_json("backup", "files", "--inline")
    archive = Path(backup["archive"])
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    quiet("storage", "list")
    from backups.models import Storage
    from backups.services.copy import copy_request

    run = copy_request(
        backup=Run.objects.get(pk=backup["id"]),
        storage=Storage.objects.get(name="offsite"),
        trigger=Run.Trigger.CLI,
        enqueue=False,
    )
    ended = run_execute(run.pk, inline=True)
    assert ended.status == Run.Status.FAILED
    assert archive.name in ended.error and "checksum" in ended.error
    assert not (offsite / "files").exists() or list((offsite / "files").iterdir()) == []


def test_the_retry_delay_doubles_up_to_six_hours():
    assert [copy_retry_delay(n) for n in (1, 2, 3)] == [300, 600, 1200]
    assert copy_retry_delay(30) == 6 * 3600


def test_prune_removes_the_copies_with_their_backup(data_dir, bucket, prefix, offsite):
    files_source(data_dir, "--copy-to", "offsite", "--copy-to", "bucket")
    first = call_json("backup", "files", "--inline")
    second = call_json("backup", "files", "--inline")
    assert Copy.objects.filter(status=Copy.Status.SUCCEEDED).count() == 4
    result = call_json("prune", "--source", "files")
    assert [item["id"] for item in result["remove"]] == [first["id"]]
    assert (
        sorted(path.name.split(".")[0] for path in (offsite / "files").iterdir())
        == [Path(second["archive"]).name.split(".")[0]] * 3
    )
    listing = bucket.client().list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/")["Contents"]
    assert len(listing) == 3 and all(f"-{second['id']}." in item["Key"] for item in listing)
    assert set(Copy.objects.filter(backup_id=first["id"]).values_list("status", flat=True)) == {
        Copy.Status.REMOVED
    }


def test_status_and_metrics_know_the_offsite_copies(data_dir, offsite, client, settings):
    files_source(data_dir, "--rpo", "2h", "--copy-to", "offsite")
    offsite.write_text("a file where the folder should be")  # the copy fails
    backup = call_json("backup", "files", "--inline")
    assert Copy.objects.get().status == Copy.Status.FAILED
    [standing] = call_json("status")["sources"]
    assert standing["rpo_status"] == "at_risk" and standing["health"] == "at_risk"
    assert "No offsite copy" in standing["rpo_note"]
    assert (standing["offsite_age_s"], standing["copies"]) == (None, 0)

    offsite.unlink()
    later = timezone.now() + timedelta(seconds=copy_retry_delay(1) + 1)
    [again] = copies_retry_due(now=later)
    run_execute(again.pk, inline=True)
    [standing] = call_json("status")["sources"]
    assert standing["rpo_status"] == "ok" and standing["rpo_note"] is None
    assert standing["copies"] == 1 and 0 <= standing["offsite_age_s"] < 600
    assert standing["offsite_status"] == "ok"

    settings.METRICS_PUBLIC = True
    body = client.get("/metrics").content.decode()
    assert 'backup_copies{source="files"} 1.0' in body
    assert 'backup_offsite_age_seconds{source="files"}' in body
    assert backup["status"] == "succeeded"


def test_a_source_without_copy_to_is_not_judged_on_copies(source):
    assert call_json("backup", source.name, "--inline")["status"] == "succeeded"
    [standing] = call_json("status")["sources"]
    assert standing["offsite_status"] is None and standing["copies"] == 0


def test_the_source_page_shows_both_copies_and_the_offsite_age(data_dir, offsite, client, viewer):
    files_source(data_dir, "--rpo", "2h", "--copy-to", "offsite")
    call_json("backup", "files", "--inline")
    client.force_login(viewer)
    page = client.get("/sources/files/").content.decode()
    assert "<h3>Offsite</h3>" in page and "has 1 copy." in page
    assert 'data-label="Stored in">default, <span class="note">copy in</span> offsite<' in page


def test_the_run_page_shows_the_storage_and_each_copy(data_dir, offsite, client, viewer):
    files_source(data_dir, "--copy-to", "offsite")
    backup = call_json("backup", "files", "--inline")
    client.force_login(viewer)
    page = client.get(f"/runs/{backup['id']}/").content.decode()
    assert "Written to storage <strong>default</strong>" in page
    assert '<th scope="row" data-label="Storage">offsite</th>' in page
    assert backup["sha256"] in page


def test_the_admin_shows_a_backups_copies_and_the_storages(data_dir, offsite, client, admin_user):
    files_source(data_dir, "--copy-to", "offsite")
    backup = call_json("backup", "files", "--inline")
    client.force_login(admin_user)
    page = client.get(f"/admin/backups/run/{backup['id']}/change/").content.decode()
    assert "offsite" in page and backup["sha256"] in page
    listing = client.get("/admin/backups/storage/").content.decode()
    assert str(offsite) in listing


def test_deleting_the_primary_object_and_restoring_from_the_browser_uses_the_copy(
    data_dir, bucket, prefix, offsite, client, operator, tmp_path
):
    files_source(data_dir, "--storage", "bucket", "--copy-to", "offsite")
    backup = call_json("backup", "files", "--inline")
    bucket.client().delete_object(
        Bucket=BUCKET, Key=backup["archive"].removeprefix(f"s3://{BUCKET}/")
    )
    client.force_login(operator)
    target = tmp_path / "restored"
    fields = {
        "source": "files",
        "backup": backup["id"],
        "mode": "new",
        "target": str(target),
        "paths": "",
    }
    assert client.post("/restore/confirm", fields).status_code == 200
    response = client.post("/restore/confirm", {**fields, "confirm_name": "files"})
    assert response.status_code == 302
    restore = Run.objects.get(kind=Run.Kind.RESTORE)
    ended = run_execute(restore.pk)
    assert ended.status == Run.Status.SUCCEEDED, ended.error
    assert ended.storage.name == "offsite"
    assert "reading the copy in storage offsite" in ended.log
    assert (target / "a.txt").read_text() == "alpha\n"


def test_a_scheduled_backup_to_s3_queues_its_copy_for_the_workers(
    data_dir, bucket, prefix, offsite
):
    from backups.models import Source
    from backups.services.schedules import backup_scheduled

    quiet(
        "policy", "add", "p", "--schedule", "0 * * * *", "--keep-last", "2", "--no-verify",
        "--storage", "bucket", "--copy-to", "offsite",
    )  # fmt: skip
    quiet("source", "add", "files", "--kind", "directory", "--location", str(data_dir),
          "--policy", "p")  # fmt: skip
    run = backup_scheduled(source_id=Source.objects.get().pk)
    assert run_execute(run.pk).status == Run.Status.SUCCEEDED
    copy_run = Run.objects.get(kind=Run.Kind.COPY)
    assert copy_run.status == Run.Status.QUEUED and copy_run.trigger == Run.Trigger.SCHEDULE
    assert run_execute(copy_run.pk).status == Run.Status.SUCCEEDED
    shown = call_json("runs", str(run.pk))
    assert shown["storage"] == "bucket"
    assert [(c["storage"], c["status"]) for c in shown["copies"]] == [("offsite", "succeeded")]


def test_a_missing_offsite_copy_fires_its_alert_and_a_proven_one_resolves_it(data_dir, offsite):
    files_source(data_dir, "--rpo", "2h", "--copy-to", "offsite")
    offsite.write_text("a file where the folder should be")  # the copy fails
    call_json("backup", "files", "--inline")
    firing = call_json("alerts")["alerts"]
    stale = [alert for alert in firing if alert["condition"] == "offsite_stale"]
    assert [alert["state"] for alert in stale] == ["firing"]
    assert "No backup has a proven copy in another storage" in stale[0]["detail"]

    offsite.unlink()
    later = timezone.now() + timedelta(seconds=copy_retry_delay(1) + 1)
    [again] = copies_retry_due(now=later)
    run_execute(again.pk, inline=True)
    alerts = call_json("alerts")["alerts"]
    assert [a["state"] for a in alerts if a["condition"] == "offsite_stale"] == ["resolved"]

"""`import_archives` trusts nothing on disk, and prune, restore and verify stay in their folder.

Each attack is a file planted in the archive storage, then the commands a user or cron runs.
"""

import json
import os
import shutil
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from backups.models import AuditEvent, Run, Source
from backups.services.catalog import policy_create, source_create
from backups.services.standing import standing_refresh
from tests.cli_helpers import call_json

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def files(data_dir):
    """A source whose policy keeps only the last backup and checks a 2 h RPO."""
    policy = policy_create(name="tight", keep_last=1, rpo_s=7200, verify_after_backup=False)
    return source_create(name="files", kind="directory", location=str(data_dir), policy=policy)


@pytest.fixture
def backup(files):
    made = call_json("backup", files.name, "--inline")
    return Run.objects.get(pk=made["id"])


def plant(folder, stem, template, *, archive_name=None, copy_archive=True, **header):
    """Write a manifest `<stem>.manifest.json` in `folder`, made from `template`'s manifest.

    Its archive is a copy of the template's, unless `archive_name` names something else.
    """
    folder.mkdir(parents=True, exist_ok=True)
    data = json.loads(template.manifest_path.read_text())
    suffix = template.archive_path.name.split(".", 1)[1]
    name = archive_name or f"{stem}.{suffix}"
    if copy_archive and archive_name is None:
        shutil.copy(template.archive_path, folder / name)
    data["archive"]["name"] = name
    data["run"] = int(stem.rsplit("-", 1)[1])
    data.update(header)
    path = folder / f"{stem}.manifest.json"
    path.write_text(json.dumps(data))
    return path


def import_report(expect: int = 2) -> dict:
    return call_json("import_archives", expect=expect)


def test_a_manifest_naming_a_file_outside_the_storage_is_refused_and_prune_spares_it(
    files, backup, tmp_path, settings
):
    victim = tmp_path / "precious.txt"
    victim.write_text("not a backup")
    old = {"started_at": "2020-01-01T00:00:00+00:00", "finished_at": "2020-01-01T00:00:05+00:00"}
    # In the source's own folder, and in a folder of its own, both naming the source.
    planted = [
        plant(files.archive_dir, "20200101T000000Z-500", backup, archive_name=str(victim), **old),
        plant(
            settings.ARCHIVE_ROOT / "elsewhere",
            "20200101T000000Z-501",
            backup,
            archive_name=f"../../{victim.name}",
            **old,
        ),
    ]
    report = import_report()
    assert report["imported"] == [] and report["sources_created"] == []
    assert [line.split(": ", 1)[0] for line in report["refused"]] == sorted(map(str, planted))
    assert all("not a file name of the form" in line for line in report["refused"])

    call_json("prune", expect=0)
    assert victim.read_text() == "not a backup"
    assert backup.archive_path.exists()
    assert not AuditEvent.objects.filter(action="backup.prune").exists()
    assert list(Run.objects.values_list("pk", flat=True)) == [backup.pk]


def test_a_manifest_dated_in_the_future_is_refused_and_a_breached_rpo_stays_breached(files, backup):
    moment = timezone.now() - timedelta(hours=3)
    Run.objects.filter(pk=backup.pk).update(queued_at=moment, started_at=moment, finished_at=moment)
    standing_refresh(files.pk)  # as the end of a run three hours ago would have
    assert call_json("status")["sources"][0]["rpo_status"] == "breached"

    plant(
        files.archive_dir,
        "20990101T000000Z-900",
        backup,
        started_at="2099-01-01T00:00:00+00:00",
        finished_at="2099-01-01T00:00:05+00:00",
    )
    [refused] = import_report()["refused"]
    assert "its started_at 2099-01-01T00:00:00+00:00 is in the future" in refused
    assert call_json("status")["sources"][0]["rpo_status"] == "breached"
    assert not Run.objects.filter(started_at__year=2099).exists()


def test_a_manifest_that_ends_before_it_starts_is_refused(files, backup):
    plant(
        files.archive_dir,
        "20250101T000000Z-901",
        backup,
        started_at="2025-01-01T00:00:05+00:00",
        finished_at="2025-01-01T00:00:00+00:00",
    )
    [refused] = import_report()["refused"]
    assert "finished (2025-01-01T00:00:00+00:00) before it started" in refused


def test_a_manifest_in_another_sources_folder_or_an_unowned_folder_is_refused(
    files, backup, settings, data_dir
):
    other = source_create(name="other", kind="directory", location=str(data_dir))
    plant(other.archive_dir, "20250101T000000Z-902", backup)  # claims "files"
    plant(settings.ARCHIVE_ROOT / "stolen", "20250101T000000Z-903", backup)  # claims "files"
    renamed = dict(source={"name": "Not Stolen", "kind": "directory", "location": "/x"})
    plant(settings.ARCHIVE_ROOT / "stolen", "20250101T000000Z-904", backup, **renamed)
    refused = import_report()["refused"]
    assert len(refused) == 3
    assert (
        "claims the source 'files', whose archives live in the folder files, not in other"
        in (refused[0])
    )
    assert "not in stolen" in refused[1]
    assert "would live in the folder not-stolen" in refused[2]
    assert set(Source.objects.values_list("name", flat=True)) == {"files", "other"}
    assert not Run.objects.filter(source=other).exists()


def test_an_unowned_folder_named_after_its_manifests_source_is_recreated(backup, settings):
    claim = dict(source={"name": "Lost One", "kind": "directory", "location": "/srv/lost"})
    plant(settings.ARCHIVE_ROOT / "lost-one", "20250101T000000Z-905", backup, **claim)
    report = import_report(expect=0)
    assert report["sources_created"] == ["Lost One"]
    run = Run.objects.get(pk=905)
    assert (run.source.slug, run.source.enabled) == ("lost-one", False)


def test_a_run_id_in_use_is_not_taken_and_one_that_would_exhaust_the_ids_is_refused(files, backup):
    taken = plant(files.archive_dir, f"20250101T000000Z-{backup.pk}", backup, copy_archive=False)
    # The stem is taken from the live backup's id but the file is another one.
    shutil.copy(backup.archive_path, taken.with_name(taken.name.replace(".manifest.json", ".tar")))
    data = json.loads(taken.read_text())
    data["archive"]["name"] = taken.name.replace(".manifest.json", ".tar")
    taken.write_text(json.dumps(data))
    plant(files.archive_dir, f"20250101T000000Z-{2**62}", backup)
    report = import_report()
    [refused] = report["refused"]
    assert f"its run id {2**62} is beyond" in refused
    [imported] = report["imported"]
    assert imported != backup.pk
    assert Run.objects.get(pk=imported).archive.endswith(f"-{backup.pk}.tar")


def test_a_malformed_manifest_is_named_and_skipped_and_the_others_are_imported(files, backup):
    good = plant(files.archive_dir, "20250101T000000Z-906", backup)
    bad = plant(files.archive_dir, "20250101T000000Z-907", backup)
    data = json.loads(bad.read_text())
    data["entries"][0]["mtime"] = "2025-01-01T00:00:00+00:00"
    bad.write_text(json.dumps(data))
    stringy = plant(files.archive_dir, "20250101T000000Z-908", backup)
    data = json.loads(stringy.read_text())
    data["entries"][0]["mode"] = "0644"
    stringy.write_text(json.dumps(data))
    report = import_report()
    assert report["imported"] == [906]
    assert report["refused"][0].startswith(f"{bad}: The manifest {bad} is not valid at ")
    assert "entries[0].mtime: expected `int | float`, got `str`" in report["refused"][0]
    assert "entries[0].mode: expected `int`, got `str`" in report["refused"][1]
    assert Run.objects.filter(pk=906, archive__startswith=str(good.parent)).exists()


def test_import_refuses_a_root_other_than_the_archive_storage(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(CommandError) as caught:
        call_command("import_archives", "--root", str(elsewhere), stdout=StringIO())
    assert caught.value.returncode == 2 and "is not ARCHIVE_ROOT" in str(caught.value)


@pytest.fixture
def outside(backup, tmp_path):
    """The catalog entry of `backup` points at a file outside the storage (an old import)."""
    victim = tmp_path / "precious.txt"
    victim.write_text("not a backup")
    Run.objects.filter(pk=backup.pk).update(archive=str(victim))
    return victim


def test_prune_removes_no_file_outside_the_sources_folder(files, backup, outside):
    newer = call_json("backup", files.name, "--inline")
    report = call_json("prune", expect=1)
    assert report["remove"] == []
    assert {"id": backup.pk, "reasons": ["outside its folder"]}.items() <= next(
        entry for entry in report["keep"] if entry["id"] == backup.pk
    ).items()
    assert any("not a file directly in its source's folder" in p for p in report["problems"])
    assert outside.read_text() == "not a backup"
    assert Run.objects.get(pk=newer["id"]).archive_path.exists()


def test_restore_and_verify_refuse_an_archive_outside_the_sources_folder(backup, outside, tmp_path):
    target = tmp_path / "restored"
    with pytest.raises(CommandError) as caught:
        call_command("restore", str(backup.pk), "--to", str(target), "--inline")
    assert caught.value.returncode == 2
    assert "which is not a file directly in its source's folder" in str(caught.value)
    assert not target.exists()
    verify = call_json("verify", str(backup.pk), "--inline", expect=1)
    assert verify["status"] == "failed"
    assert "not a file directly in its source's folder" in verify["error"]


def test_restore_refuses_an_archive_that_is_a_symlink_out_of_the_folder(backup, tmp_path):
    real = tmp_path / "moved.tar.zst"
    os.replace(backup.archive_path, real)
    os.symlink(real, backup.archive_path)
    with pytest.raises(CommandError) as caught:
        call_command("restore", str(backup.pk), "--to", str(tmp_path / "t"), "--inline")
    assert "not a file directly in its source's folder" in str(caught.value)

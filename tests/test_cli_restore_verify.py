"""`restore` and `verify` end to end: verified restores, refusals, audit, drills."""

import json
import subprocess

import pytest
from django.core.management import CommandError, call_command

from backups.models import AuditEvent, Run
from tests.cli_helpers import call_json
from tests.db_faults import database_refuses

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def backup(source):
    made = call_json("backup", source.name, "--inline")
    return Run.objects.get(pk=made["id"])


def tree(root):
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def corrupt(run: Run) -> None:
    data = bytearray(run.archive_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    run.archive_path.write_bytes(bytes(data))


def test_restore_to_a_new_folder_reproduces_the_tree_and_is_audited(backup, data_dir, tmp_path):
    target = tmp_path / "restored"
    run = call_json("restore", str(backup.pk), "--to", str(target), "--inline")
    assert run["status"] == "succeeded" and run["backup"] == backup.pk
    assert run["target"] == str(target)
    assert tree(target) == tree(data_dir)
    restores = AuditEvent.objects.filter(action__startswith="restore.").order_by("pk")
    actions = list(restores.values_list("action", "outcome"))
    assert actions == [("restore.request", "requested"), ("restore.finish", "succeeded")]


def test_restore_refuses_a_non_empty_target_and_leaves_it_untouched(backup, tmp_path):
    target = tmp_path / "busy"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(CommandError) as caught:
        call_command("restore", str(backup.pk), "--to", str(target), "--inline")
    assert caught.value.returncode == 2
    assert tree(target) == {"keep.txt": b"mine"}
    assert not Run.objects.filter(kind="restore").exists()
    assert AuditEvent.objects.get(action__startswith="restore.").outcome == "failed"


def test_in_place_restore_needs_yes(backup):
    with pytest.raises(CommandError) as caught:
        call_command("restore", str(backup.pk), "--in-place")
    assert caught.value.returncode == 2 and "--yes" in str(caught.value)


def test_in_place_restore_puts_the_backed_up_data_back(backup, data_dir):
    before = tree(data_dir)
    (data_dir / "a.txt").write_text("damaged")
    (data_dir / "new.txt").write_text("created after the backup")
    run = call_json("restore", str(backup.pk), "--in-place", "--yes", "--inline")
    assert run["status"] == "succeeded"
    assert tree(data_dir) == before


def test_partial_restore_restores_only_the_given_paths(backup, tmp_path):
    target = tmp_path / "partial"
    call_json("restore", str(backup.pk), "--to", str(target), "--path", "sub", "--inline")
    assert set(tree(target)) == {"sub/b.bin"}


def test_verify_passes_on_a_good_archive_with_named_checks(backup):
    run = call_json("verify", str(backup.pk), "--inline")
    assert run["status"] == "succeeded"
    assert {check["name"]: check["ok"] for check in run["checks"]} == {
        "checksum": True,
        "contents": True,
    }
    backup.refresh_from_db()
    assert backup.verified is True


def test_verify_fails_a_corrupt_archive_naming_the_check(backup):
    corrupt(backup)
    run = call_json("verify", str(backup.pk), "--inline", expect=1)
    assert run["status"] == "failed"
    failed = [check["name"] for check in run["checks"] if not check["ok"]]
    assert "checksum" in failed
    assert "checksum" in run["error"]
    backup.refresh_from_db()
    assert backup.verified is False


def test_restore_refuses_a_corrupt_archive_and_the_target_stays_untouched(backup, data_dir):
    before = tree(data_dir)
    corrupt(backup)
    run = call_json("restore", str(backup.pk), "--in-place", "--yes", "--inline", expect=1)
    assert run["status"] == "failed"
    assert tree(data_dir) == before
    assert AuditEvent.objects.filter(action="restore.finish", outcome="failed").exists()


def test_a_drill_restores_to_scratch_and_records_its_duration(backup, settings):
    run = call_json("verify", str(backup.pk), "--drill", "--inline")
    assert run["status"] == "succeeded"
    drill = next(check for check in run["checks"] if check["name"] == "drill")
    assert drill["ok"] is True
    stored = Run.objects.get(pk=run["id"])
    assert stored.restore_seconds is not None and stored.restore_seconds >= 0
    scratch = settings.ARCHIVE_ROOT / ".drills"
    assert not scratch.exists() or not any(scratch.iterdir())


def swap_in(older: Run, newer: Run) -> None:
    """Copy `newer`'s archive, sidecar and manifest over `older`'s, names made to fit."""
    archive, name = older.archive_path, older.archive_path.name
    archive.write_bytes(newer.archive_path.read_bytes())
    sidecar = newer.archive_path.with_name(newer.archive_path.name + ".sha256").read_text()
    archive.with_name(name + ".sha256").write_text(sidecar.replace(newer.archive_path.name, name))
    manifest = json.loads(newer.manifest_path.read_text())
    manifest["archive"]["name"] = name
    manifest["run"] = older.pk
    manifest["started_at"] = older.started_at.isoformat()
    older.manifest_path.write_text(json.dumps(manifest))


def test_a_backup_whose_three_files_were_swapped_for_anothers_fails_verify_and_restore(
    source, data_dir, tmp_path
):
    first = Run.objects.get(pk=call_json("backup", source.name, "--inline")["id"])
    (data_dir / "a.txt").write_text("changed after the first backup\n")
    second = Run.objects.get(pk=call_json("backup", source.name, "--inline")["id"])
    swap_in(first, second)
    # Beside each other, the files agree: only the catalog knows they are not #1's.
    assert (
        subprocess.run(
            ["sha256sum", "-c", first.archive_path.name + ".sha256"], cwd=first.archive_path.parent
        ).returncode
        == 0
    )
    sentence = (
        f"its checksum file say sha256 {second.sha256}, but the catalog recorded "
        f"{first.sha256} when this backup was written: the files on disk are not the ones "
        "this backup wrote"
    )
    verify = call_json("verify", str(first.pk), "--inline", expect=1)
    assert verify["status"] == "failed"
    checksum = next(check for check in verify["checks"] if check["name"] == "checksum")
    assert not checksum["ok"] and sentence in checksum["detail"]
    target = tmp_path / "restored"
    restore = call_json("restore", str(first.pk), "--to", str(target), "--inline", expect=1)
    assert restore["status"] == "failed" and sentence in restore["error"]
    assert not target.exists()


def test_a_malformed_manifest_is_refused_by_restore_and_verify_with_a_sentence(backup, tmp_path):
    # An ISO date where the mtime is a number: the kind of damage a hand edit leaves.
    path = backup.manifest_path
    text = path.read_text()
    mtime = json.loads(text)["entries"][0]["mtime"]
    path.write_text(text.replace(f'"mtime":{mtime}', '"mtime":"2026-01-01T00:00:00Z"', 1))
    sentence = f"The manifest {path} is not valid at entries[0].mtime: expected `int | float`"
    target = tmp_path / "restored"
    restore = call_json("restore", str(backup.pk), "--to", str(target), "--inline", expect=1)
    assert restore["status"] == "failed" and sentence in restore["error"]
    assert not target.exists()
    with pytest.raises(CommandError) as caught:
        call_command("restore", str(backup.pk), "--to", str(target), "--path", "sub", "--inline")
    assert caught.value.returncode == 2 and sentence in str(caught.value)
    verify = call_json("verify", str(backup.pk), "--inline", expect=1)
    assert verify["status"] == "failed" and sentence in verify["error"]


def test_an_unexpected_failure_is_one_sentence_for_the_user(backup):
    # A real error the services do not expect, with the multi-line message databases give.
    stamped = "NEW.verified_at <> OLD.verified_at"
    message = "the catalog is read-only\nHINT: ask the DBA"
    with database_refuses(Run._meta.db_table, "UPDATE", stamped, message):
        run = call_json("verify", str(backup.pk), "--inline", expect=1)
    assert run["status"] == "failed"
    assert run["error"].startswith("Internal error (")
    assert "the catalog is read-only" in run["error"]
    assert "\n" not in run["error"] and "HINT" not in run["error"]
    assert "Traceback" not in run["error"]


def test_a_restore_whose_audit_record_is_refused_still_ends_and_says_so(backup, tmp_path):
    audit = AuditEvent._meta.db_table
    with database_refuses(audit, "INSERT", "NEW.action = 'restore.finish'", "audit is full"):
        run = call_json("restore", str(backup.pk), "--to", str(tmp_path / "out"), "--inline")
    assert run["status"] == "succeeded"
    assert (tmp_path / "out" / "a.txt").read_text() == "alpha\n"
    log = Run.objects.get(pk=run["id"]).log
    assert "recording its outcome failed" in log and "audit is full" in log

"""`restore` and `verify` end to end: verified restores, refusals, audit, drills."""

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from backups.models import AuditEvent, Run
from tests.db_faults import database_refuses

pytestmark = pytest.mark.django_db(transaction=True)


def call_json(*args, expect: int = 0) -> dict:
    out = StringIO()
    try:
        call_command(*args, "--json", stdout=out, stderr=StringIO())
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    assert code == expect, out.getvalue()
    return json.loads(out.getvalue())


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
    actions = list(AuditEvent.objects.order_by("pk").values_list("action", "outcome"))
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
    assert AuditEvent.objects.get().outcome == "failed"


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

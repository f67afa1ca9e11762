"""Encryption at rest: policies that encrypt to age recipients, end to end through the CLI
and the pages, with the real `age` and `age-keygen` tools.

A host without AGE_IDENTITY_FILE only backs up (and fills the catalog); restores, content
checks, drills and imports need the identity.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from backups.engine.crypto import fingerprint
from backups.models import Manifest, Policy, Run, Source
from backups.services.catalog import source_create

pytestmark = pytest.mark.django_db(transaction=True)


def keygen(path: Path) -> str:
    """Make an age identity file with age-keygen; return its public key."""
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    return subprocess.run(
        ["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def key(tmp_path):
    path = tmp_path / "keys" / "key.txt"
    path.parent.mkdir()
    return path, keygen(path)


@pytest.fixture
def other_key(tmp_path):
    path = tmp_path / "keys" / "other.txt"
    path.parent.mkdir(exist_ok=True)
    return path, keygen(path)


def call(*args) -> tuple[int, str, str]:
    out, err = StringIO(), StringIO()
    try:
        call_command(*args, stdout=out, stderr=err)
        code = 0
    except CommandError as error:
        code, err = error.returncode, StringIO(err.getvalue() + str(error))
    except SystemExit as exit_:
        code = exit_.code
    return code, out.getvalue(), err.getvalue()


def call_json(*args, expect: int = 0) -> dict:
    code, out, err = call(*args, "--json")
    assert code == expect, out + err
    return json.loads(out)


@pytest.fixture
def sealed(key, data_dir):
    """A source whose policy, created on the command line, encrypts to `key`."""
    code, out, err = call("policy", "add", "sealed", "--encrypt-to", key[1], "--keep-last", "5")
    assert code == 0, err
    return source_create(
        name="files", kind="directory", location=str(data_dir), policy=Policy.objects.get()
    )


@pytest.fixture
def backup(sealed, settings):
    settings.AGE_IDENTITY_FILE = []  # a host that only backs up
    made = call_json("backup", sealed.name, "--inline")
    return Run.objects.get(pk=made["id"])


@pytest.fixture
def pg_database():
    """A throw-away PostgreSQL database with one small table."""
    server = ["-h", "127.0.0.1", "-p", "5432", "-U", "postgres"]
    reachable = shutil.which("pg_dump") and (
        subprocess.run(["psql", *server, "-d", "postgres", "-Atc", "SELECT 1"]).returncode == 0
    )
    if not reachable:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not reachable at 127.0.0.1:5432 (required in CI)")
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")
    name = f"bk_sealed_{secrets.token_hex(4)}"
    subprocess.run(["createdb", *server, name], check=True)
    try:
        subprocess.run(
            [
                "psql",
                *server,
                "-d",
                name,
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                "CREATE TABLE items AS SELECT g AS id FROM generate_series(1, 1000) g",
            ],
            check=True,
            capture_output=True,
        )
        yield name
    finally:
        subprocess.run(["dropdb", *server, "--if-exists", name], check=False)


def tree(root: Path) -> dict:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def folder_names(source: Source) -> list[str]:
    """The backup files in the source's folder (its RUNBOOK.md holds commands, no data)."""
    return sorted(path.name for path in source.archive_dir.iterdir() if path.name != "RUNBOOK.md")


def test_policy_add_takes_recipients_and_a_recipients_file(key, other_key, tmp_path):
    listing = tmp_path / "recipients.txt"
    listing.write_text(f"# the offsite key\n{other_key[1]}\n")
    code, _, err = call(
        "policy", "add", "two", "--encrypt-to", key[1], "--encrypt-to", str(listing)
    )
    assert code == 0, err
    assert Policy.objects.get(name="two").recipient_list == [key[1], other_key[1]]


def test_policy_add_refuses_a_private_key_with_one_sentence_and_creates_nothing(key):
    secret = next(line for line in key[0].read_text().splitlines() if line.startswith("AGE-SECRET"))
    code, out, err = call("policy", "add", "leaky", "--encrypt-to", secret)
    assert code == 2
    assert "is a private key" in err and secret not in err + out
    assert "Traceback" not in err
    assert not Policy.objects.exists()


def test_policy_add_refuses_a_malformed_recipient(key):
    code, _, err = call("policy", "add", "typo", "--encrypt-to", key[1], "--encrypt-to", "age1xyz")
    assert code == 2 and "Recipient 2 is not an age X25519 recipient" in err
    assert not Policy.objects.exists()


def test_a_host_without_the_identity_writes_only_encrypted_files_and_fills_the_catalog(
    backup, sealed, key, client, viewer
):
    assert backup.status == "succeeded"
    stem = backup.stem
    assert folder_names(sealed) == sorted(
        [f"{stem}.tar.zst.age", f"{stem}.tar.zst.age.sha256", f"{stem}.manifest.json.age"]
    )
    runbook = (sealed.archive_dir / "RUNBOOK.md").read_text()
    assert f"age -d -i key.txt < {stem}.tar.zst.age | zstd -d" in runbook
    assert backup.recipients == [key[1]]
    assert call_json("runs", str(backup.pk))["recipients"] == [key[1]]
    # The catalog was indexed from the backup's own plaintext: no key on this host.
    assert Manifest.objects.get(run=backup).entries == 3
    client.force_login(viewer)
    page = client.get(reverse("manifest-browse", args=[backup.pk]), {"path": "sub"})
    assert page.status_code == 200 and "b.bin" in page.content.decode()
    run_page = client.get(reverse("run-detail", args=[backup.pk])).content.decode()
    assert fingerprint(key[1]) in run_page


def test_the_sidecar_checks_without_the_key(backup, sealed):
    done = subprocess.run(
        ["sha256sum", "-c", f"{backup.stem}.tar.zst.age.sha256"],
        cwd=sealed.archive_dir,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def test_the_age_tool_decrypts_the_archive_and_the_manifest(backup, key, data_dir, tmp_path):
    out = tmp_path / "plain"
    out.mkdir()
    archive = backup.archive_path
    subprocess.run(
        f"age -d -i {key[0]} < {archive} | zstd -d | tar -xf - -C {out}",
        shell=True,
        check=True,
    )
    assert tree(out) == tree(data_dir)
    manifest = subprocess.run(
        ["age", "-d", "-i", str(key[0]), str(backup.manifest_path)],
        check=True,
        capture_output=True,
    ).stdout
    document = json.loads(manifest)
    assert document["run"] == backup.pk
    assert document["encryption"]["recipients"] == [key[1]]
    assert {entry["path"] for entry in document["entries"]} >= {"a.txt", "sub/b.bin"}


def test_verify_without_the_identity_warns_that_the_content_checks_need_the_key(
    backup, key, capsys
):
    # The backup's own verification (its policy asks for one) ran on this host already.
    after = Run.objects.get(kind="verify", backup=backup)
    assert after.status == "warning"
    run = call_json("verify", str(backup.pk), "--inline")
    assert run["status"] == "warning"
    checks = {check["name"]: check for check in run["checks"]}
    assert checks["checksum"]["ok"] is True
    assert checks["contents"]["ok"] is False and checks["contents"]["skipped"] is True
    assert "need the private key" in run["warnings"][0]
    assert fingerprint(key[1]) in run["warnings"][0]
    backup.refresh_from_db()
    assert backup.verified is None
    capsys.readouterr()
    call_command("status", "--json")
    (standing,) = json.loads(capsys.readouterr().out)["sources"]
    assert standing["integrity"] == "unknown"


def test_verify_with_the_identity_checks_the_contents(backup, key, settings):
    settings.AGE_IDENTITY_FILE = [key[0]]
    run = call_json("verify", str(backup.pk), "--inline")
    assert run["status"] == "succeeded", run
    assert [check["ok"] for check in run["checks"]] == [True, True]
    backup.refresh_from_db()
    assert backup.verified is True


def test_a_restore_without_the_identity_fails_naming_the_key_and_touches_nothing(
    backup, key, data_dir
):
    (data_dir / "a.txt").write_text("live data\n")
    before = tree(data_dir)
    code, out, err = call("restore", str(backup.pk), "--in-place", "--yes", "--inline", "--json")
    assert code == 1
    run = json.loads(out)
    assert run["status"] == "failed"
    assert fingerprint(key[1]) in run["error"] and "AGE_IDENTITY_FILE" in run["error"]
    assert "Traceback" not in run["error"]
    assert tree(data_dir) == before


def test_a_restore_with_the_identity_puts_the_data_back(backup, key, data_dir, settings):
    settings.AGE_IDENTITY_FILE = [key[0]]
    before = tree(data_dir)
    (data_dir / "a.txt").write_text("damaged")
    run = call_json("restore", str(backup.pk), "--in-place", "--yes", "--inline")
    assert run["status"] == "succeeded", run
    assert tree(data_dir) == before


def test_a_restore_of_some_paths_needs_the_identity_and_works_with_it(
    backup, key, settings, tmp_path
):
    target = tmp_path / "some"
    code, _, err = call("restore", str(backup.pk), "--to", str(target), "--path", "sub", "--inline")
    assert code == 2 and fingerprint(key[1]) in err
    assert not target.exists()
    settings.AGE_IDENTITY_FILE = [key[0]]
    run = call_json("restore", str(backup.pk), "--to", str(target), "--path", "sub", "--inline")
    assert run["status"] == "succeeded", run
    assert sorted(tree(target)) == ["sub/b.bin"]


def test_a_wrong_identity_is_named_and_nothing_is_restored(
    backup, key, other_key, data_dir, settings
):
    settings.AGE_IDENTITY_FILE = [other_key[0]]
    (data_dir / "a.txt").write_text("live data\n")
    before = tree(data_dir)
    run = call_json("restore", str(backup.pk), "--in-place", "--yes", "--inline", expect=1)
    assert fingerprint(key[1]) in run["error"] and str(other_key[0]) in run["error"]
    assert tree(data_dir) == before
    check = call_json("verify", str(backup.pk), "--inline")
    assert check["status"] == "warning" and str(other_key[0]) in check["warnings"][0]


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_a_damaged_encrypted_archive_is_refused_with_a_sentence_and_restores_nothing(
    backup, key, data_dir, settings, damage
):
    settings.AGE_IDENTITY_FILE = [key[0]]
    archive = backup.archive_path
    data = bytearray(archive.read_bytes())
    if damage == "truncated":
        data = data[: len(data) - 40]
    else:
        data[len(data) // 2] ^= 0x01
    archive.write_bytes(bytes(data))
    (data_dir / "a.txt").write_text("live data\n")
    before = tree(data_dir)
    run = call_json("restore", str(backup.pk), "--in-place", "--yes", "--inline", expect=1)
    assert run["error"] and "Traceback" not in run["error"]
    assert "\n" not in run["error"].strip()
    assert tree(data_dir) == before
    check = call_json("verify", str(backup.pk), "--inline", expect=1)
    assert check["status"] == "failed"
    assert {c["name"]: c["ok"] for c in check["checks"]}["checksum"] is False


def test_a_drill_without_the_identity_fails_and_leaves_the_rto_unproven(backup, key, capsys):
    run = call_json("verify", str(backup.pk), "--drill", "--inline", expect=1)
    assert run["status"] == "failed"
    assert fingerprint(key[1]) in run["error"]
    capsys.readouterr()
    call_command("status", "--json")
    (standing,) = json.loads(capsys.readouterr().out)["sources"]
    assert standing["rto_status"] == "unproven"
    assert standing["integrity"] == "unknown"


def test_a_drill_with_the_identity_proves_the_newest_backup_opens(backup, key, settings):
    settings.AGE_IDENTITY_FILE = [key[0]]
    run = call_json("verify", str(backup.pk), "--drill", "--inline")
    assert run["status"] == "succeeded", run
    assert run["checks"][-1]["name"] == "drill" and run["checks"][-1]["ok"]


def test_key_rotation_applies_to_new_backups_and_old_ones_keep_their_recipients(
    backup, sealed, key, other_key, settings, client, viewer
):
    policy = sealed.policy
    policy.recipients = other_key[1]
    policy.full_clean()
    policy.save()
    newer = Run.objects.get(pk=call_json("backup", sealed.name, "--inline")["id"])
    assert newer.recipients == [other_key[1]]
    backup.refresh_from_db()
    assert backup.recipients == [key[1]]
    client.force_login(viewer)
    page = client.get(reverse("source-detail", args=[sealed.slug])).content.decode()
    assert fingerprint(key[1]) in page and fingerprint(other_key[1]) in page
    # Both keys on the restoring host: each backup opens with its own.
    settings.AGE_IDENTITY_FILE = [key[0], other_key[0]]
    for run in (backup, newer):
        assert call_json("verify", str(run.pk), "--inline")["status"] == "succeeded"
    # The old key alone no longer opens the newest backup: its drill says so.
    settings.AGE_IDENTITY_FILE = [key[0]]
    drill = call_json("verify", str(newer.pk), "--drill", "--inline", expect=1)
    assert fingerprint(other_key[1]) in drill["error"]


def test_import_archives_needs_the_identity_for_encrypted_manifests(backup, sealed, key, settings):
    plain = source_create(name="plain", kind="directory", location=str(sealed.location))
    call_json("backup", plain.name, "--inline")
    Run.objects.filter(kind="verify").delete()
    Run.objects.all().delete()
    Source.objects.all().delete()
    code, out, err = call("import_archives")
    assert code == 2
    assert "Imported 1 backup(s)" in out
    assert f"{backup.stem}.manifest.json.age" in err and "AGE_IDENTITY_FILE" in err
    settings.AGE_IDENTITY_FILE = [key[0]]
    code, out, err = call("import_archives")
    assert code == 0, err
    imported = Run.objects.get(pk=backup.pk)
    assert imported.recipients == [key[1]]
    assert imported.archive.endswith(".tar.zst.age")
    assert Manifest.objects.get(run=imported).entries == 3
    # Once imported, a host without the key has nothing left to import: no refusal.
    settings.AGE_IDENTITY_FILE = []
    report = call_json("import_archives")
    assert report["refused"] == [] and report["known"] == 2


def test_an_identity_file_open_to_others_is_refused_with_a_sentence(backup, key, settings):
    os.chmod(key[0], 0o644)
    settings.AGE_IDENTITY_FILE = [key[0]]
    run = call_json("restore", str(backup.pk), "--in-place", "--yes", "--inline", expect=1)
    assert "chmod 600" in run["error"]


def test_a_changed_identity_file_is_read_again(backup, key, other_key, settings, data_dir):
    settings.AGE_IDENTITY_FILE = [other_key[0]]
    call_json("restore", str(backup.pk), "--in-place", "--yes", "--inline", expect=1)
    # The operator puts the right key in the same file: no restart needed.
    other_key[0].write_bytes(key[0].read_bytes())
    run = call_json("restore", str(backup.pk), "--in-place", "--yes", "--inline")
    assert run["status"] == "succeeded", run


def test_the_admin_form_refuses_a_bad_recipient_with_one_sentence(client, admin_user):
    client.force_login(admin_user)
    response = client.post(
        reverse("admin:backups_policy_add"),
        {
            "name": "bad",
            "compression": "zstd",
            "run_timeout_s": "1h",
            "check_queries": "[]",
            "recipients": "age1notakey",
            "keep_last": 0,
            "keep_hourly": 0,
            "keep_daily": 0,
            "keep_weekly": 0,
            "keep_monthly": 0,
            "keep_yearly": 0,
        },
    )
    assert response.status_code == 200
    assert "Recipient 1 is not an age X25519 recipient" in response.content.decode()
    assert not Policy.objects.exists()


def test_the_fleet_file_round_trips_recipients(key, other_key, tmp_path):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "version: 1\npolicies:\n"
        f"  sealed: {{schedule: '0 * * * *', encrypt_to: [{key[1]}, {other_key[1]}]}}\n"
    )
    code, _, err = call("apply", str(fleet))
    assert code == 0, err
    assert Policy.objects.get().recipient_list == [key[1], other_key[1]]
    exported = tmp_path / "exported.yaml"
    code, _, err = call("export", str(exported))
    assert code == 0, err
    assert key[1] in exported.read_text()
    code, out, err = call("apply", str(exported))
    assert code == 0 and "No changes" in out, out + err
    fleet.write_text("version: 1\npolicies:\n  sealed: {encrypt_to: [age1nope]}\n")
    code, _, err = call("apply", str(fleet))
    assert code == 2 and "fleet.yaml:3:" in err and "encrypt_to" in err
    assert "is not an age X25519 recipient" in err and ".." not in err


def test_an_encrypted_sqlite_backup_is_checked_as_a_database_only_with_the_identity(
    key, settings, tmp_path
):
    database = tmp_path / "app.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE t(x)")
        connection.executemany("INSERT INTO t VALUES (?)", [(n,) for n in range(100)])
    connection.close()
    call("policy", "add", "sealed", "--encrypt-to", key[1], "--no-verify")
    source = source_create(
        name="app", kind="sqlite", location=str(database), policy=Policy.objects.get()
    )
    settings.AGE_IDENTITY_FILE = []
    made = call_json("backup", source.name, "--inline")
    assert made["archive"].endswith(".age")
    unchecked = call_json("verify", str(made["id"]), "--inline")
    assert unchecked["status"] == "warning"
    assert [c["name"] for c in unchecked["checks"] if c.get("skipped")] == ["contents", "database"]
    settings.AGE_IDENTITY_FILE = [key[0]]
    checked = call_json("verify", str(made["id"]), "--inline")
    assert checked["status"] == "succeeded"
    assert [c["ok"] for c in checked["checks"]] == [True, True, True]
    target = tmp_path / "restored.db"
    restored = call_json("restore", str(made["id"]), "--to", str(target), "--inline")
    assert restored["status"] == "succeeded", restored
    with sqlite3.connect(target) as connection:
        assert connection.execute("SELECT count(*) FROM t").fetchone() == (100,)
    connection.close()


def test_an_encrypted_postgres_dump_is_drilled_only_with_the_identity(key, settings, pg_database):
    call("policy", "add", "sealed", "--encrypt-to", key[1], "--no-verify")
    source = source_create(
        name="db",
        kind="postgres",
        location=f"postgresql://postgres@127.0.0.1:5432/{pg_database}",
        policy=Policy.objects.get(),
    )
    settings.AGE_IDENTITY_FILE = []
    made = call_json("backup", source.name, "--inline")
    assert made["archive"].endswith(".pgdump.zst.age")
    failed = call_json("verify", str(made["id"]), "--drill", "--inline", expect=1)
    assert fingerprint(key[1]) in failed["error"]
    settings.AGE_IDENTITY_FILE = [key[0]]
    drilled = call_json("verify", str(made["id"]), "--drill", "--inline")
    assert drilled["status"] == "succeeded", drilled
    assert drilled["checks"][-1]["name"] == "drill" and drilled["checks"][-1]["ok"]


def test_prune_removes_an_encrypted_backup_with_its_sidecar_and_manifest(backup, sealed):
    Policy.objects.update(keep_last=1)
    newer = Run.objects.get(pk=call_json("backup", sealed.name, "--inline")["id"])
    report = call_json("prune", "--source", sealed.name)
    assert [item["id"] for item in report["remove"]] == [backup.pk]
    assert folder_names(sealed) == sorted(
        [f"{newer.stem}.tar.zst.age", f"{newer.stem}.tar.zst.age.sha256"]
        + [f"{newer.stem}.manifest.json.age"]
    )


def test_the_encrypted_manifest_of_an_archive_that_never_got_its_name_is_cleaned_up(backup, sealed):
    # A crash between the commit's renames: sidecar and manifest, no archive.
    backup.archive_path.unlink()
    Run.objects.filter(pk=backup.pk).update(status="failed")
    newer = Run.objects.get(pk=call_json("backup", sealed.name, "--inline")["id"])
    assert all(name.startswith(newer.stem) for name in folder_names(sealed))


def test_the_dashboard_restores_chosen_files_of_an_encrypted_backup_with_the_identity(
    backup, sealed, key, settings, client, operator, tmp_path
):
    from backups.services.execution import run_execute

    client.force_login(operator)
    target = tmp_path / "chosen"
    form = {
        "source": sealed.name,
        "backup": backup.pk,
        "mode": "new",
        "target": str(target),
        "paths": "sub",
        "confirm_name": sealed.name,
    }
    # The manifest names the paths: a dashboard without the key says which key it needs.
    refused = client.post(reverse("restore-confirm"), form)
    assert refused.status_code == 200 and fingerprint(key[1]) in refused.content.decode()
    assert not Run.objects.filter(kind="restore").exists()
    settings.AGE_IDENTITY_FILE = [key[0]]
    response = client.post(reverse("restore-confirm"), form)
    restore = Run.objects.get(kind="restore")
    assert response.status_code == 302
    assert run_execute(restore.pk, inline=True).status == "succeeded"
    assert sorted(tree(target)) == ["sub/b.bin"]


def _manage(*args, **env):
    root = Path(__file__).resolve().parent.parent
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=root,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )


def test_age_identity_file_takes_absolute_paths_and_reads_no_file_at_start_up():
    code = "from django.conf import settings; print([str(p) for p in settings.AGE_IDENTITY_FILE])"
    # Not mounted yet: the host starts, the file is read when a restore needs it.
    result = _manage("shell", "-c", code, AGE_IDENTITY_FILE="/run/keys/new.txt:/run/keys/old.txt")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == repr(
        ["/run/keys/new.txt", "/run/keys/old.txt"]
    )


def test_a_relative_age_identity_file_is_refused_with_its_name():
    result = _manage("check", AGE_IDENTITY_FILE="keys/age.txt")
    assert result.returncode != 0
    assert "AGE_IDENTITY_FILE" in result.stderr and "keys/age.txt" in result.stderr

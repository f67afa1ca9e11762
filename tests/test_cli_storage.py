"""`storage add|list|check` and backups on a named storage, against a real S3 server.

The S3 server is SeaweedFS (tests/s3server.py); every test writes under its own prefix
of the shared bucket. Nothing here mocks S3.
"""

from __future__ import annotations

import functools
import json
import secrets
import subprocess
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from backups.engine.storage.s3 import part_size
from backups.models import Manifest, Policy, Run, Storage
from backups.services.catalog import policy_create, source_create
from backups.services.runs import reap_abandoned
from tests import cli_helpers
from tests.s3server import BUCKET, READER_KEY, READER_SECRET, credentials_env, free_ports

pytestmark = pytest.mark.django_db(transaction=True)


# Commands here may exit 1 (a refusal, a failed check): their JSON is what is checked.
call_json = functools.partial(cli_helpers.call_json, expect=(0, 1))


def refused(*args) -> CommandError:
    with pytest.raises(CommandError) as caught:
        call_command(*args, stdout=StringIO(), stderr=StringIO())
    return caught.value


@pytest.fixture
def prefix() -> str:
    return f"t-{secrets.token_hex(6)}"


@pytest.fixture
def s3(s3_server, s3_env, prefix) -> Storage:
    """A storage `offsite` on the test bucket, credentials under the TEST_S3 prefix."""
    call_command(
        "storage",
        "add",
        "offsite",
        "--kind",
        "s3",
        "--url",
        f"s3://{BUCKET}/{prefix}",
        "--endpoint",
        s3_server.endpoint,
        "--credentials-env",
        s3_env,
        stdout=StringIO(),
    )
    return Storage.objects.get(name="offsite")


@pytest.fixture
def s3_source(s3, data_dir):
    policy = policy_create(name="to-s3", keep_last=1, storage=s3)
    return source_create(name="files", kind="directory", location=str(data_dir), policy=policy)


def objects(s3_server, prefix: str) -> list[str]:
    listing = s3_server.client().list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/")
    return sorted(item["Key"].removeprefix(f"{prefix}/") for item in listing.get("Contents", []))


def test_storage_add_names_a_bucket_without_keeping_any_secret(s3, s3_server, prefix):
    assert (s3.kind, s3.bucket, s3.prefix, s3.endpoint) == (
        "s3",
        BUCKET,
        prefix,
        s3_server.endpoint,
    )
    stored = json.dumps(
        list(Storage.objects.values()), default=str
    )  # every column of every storage
    assert credentials_env()["TEST_S3_SECRET_ACCESS_KEY"] not in stored
    listing = call_json("storage", "list")["storages"]
    assert [row["name"] for row in listing] == ["default", "offsite"]
    assert listing[1]["location"] == f"s3://{BUCKET}/{prefix} at {s3_server.endpoint}"


@pytest.mark.parametrize(
    "args, says",
    [
        (["--kind", "s3", "--url", "http://bucket/x"], "is not an S3 URL"),
        (["--kind", "s3", "--url", "s3://b"], "bucket name 'b' is not valid"),
        (["--kind", "s3", "--url", "s3://bucket/../x"], "prefix"),
        (["--kind", "s3", "--url", "s3://bucket", "--credentials-env", "9X"], "prefix such as"),
        (["--kind", "s3", "--path", "/srv"], "not --path"),
        (["--kind", "local", "--path", "relative"], "absolute path"),
        (["--kind", "local", "--path", "/srv", "--url", "s3://bucket"], "only --path"),
    ],
)
def test_storage_add_refuses_bad_input_with_a_sentence_and_creates_nothing(args, says):
    error = refused("storage", "add", "elsewhere", *args)
    assert error.returncode == 2 and says in str(error)
    assert not Storage.objects.exists()


def test_a_local_storage_inside_archive_root_is_refused(settings):
    error = refused("storage", "add", "x", "--kind", "local", "--path", str(settings.ARCHIVE_ROOT))
    assert error.returncode == 2 and "ARCHIVE_ROOT" in str(error)
    error = refused("storage", "add", "default", "--kind", "local", "--path", "/srv/x")
    assert "names ARCHIVE_ROOT" in str(error)


def test_policy_add_takes_a_storage_by_name_and_refuses_an_unknown_one(s3):
    call_command(
        "policy", "add", "p", "--keep-last", "1", "--storage", "offsite", stdout=StringIO()
    )
    assert Policy.objects.get(name="p").storage == s3
    error = refused("policy", "add", "q", "--storage", "nowhere")
    assert error.returncode == 2 and "No storage is named 'nowhere'" in str(error)
    assert not Policy.objects.filter(name="q").exists()


def test_storage_check_passes_and_is_recorded(s3, s3_server, prefix):
    out = StringIO()
    call_command("storage", "check", "offsite", stdout=out)
    assert "works" in out.getvalue()
    row = call_json("storage", "list")["storages"][1]
    assert row["checked_at"] and row["check_error"] is None
    assert objects(s3_server, prefix) == []  # the probe is gone


def test_storage_check_says_which_credentials_are_wrong(s3, monkeypatch):
    monkeypatch.setenv("TEST_S3_SECRET_ACCESS_KEY", "not-the-secret")
    error = refused("storage", "check", "offsite")
    assert error.returncode == 1 and "TEST_S3" in str(error)
    assert call_json("storage", "list")["storages"][1]["check_error"] == str(error)


def test_storage_check_says_a_read_only_key_cannot_write(s3, monkeypatch):
    monkeypatch.setenv("TEST_S3_ACCESS_KEY_ID", READER_KEY)
    monkeypatch.setenv("TEST_S3_SECRET_ACCESS_KEY", READER_SECRET)
    error = refused("storage", "check", "offsite")
    assert error.returncode == 1 and "\n" not in str(error)


def test_storage_check_says_the_bucket_is_missing(s3_server, s3_env):
    call_command(
        "storage", "add", "nobucket", "--kind", "s3", "--url", "s3://no-such-bucket",
        "--endpoint", s3_server.endpoint, "--credentials-env", s3_env, stdout=StringIO(),
    )  # fmt: skip
    error = refused("storage", "check", "nobucket")
    assert error.returncode == 1 and "no-such-bucket" in str(error)


def test_storage_check_says_the_endpoint_does_not_answer(s3_env):
    endpoint = f"http://127.0.0.1:{free_ports(1)[0]}"
    call_command(
        "storage", "add", "gone", "--kind", "s3", "--url", f"s3://{BUCKET}",
        "--endpoint", endpoint, "--credentials-env", s3_env, stdout=StringIO(),
    )  # fmt: skip
    error = refused("storage", "check", "gone")
    assert error.returncode == 1 and "127.0.0.1" in str(error)


def test_storage_check_of_a_missing_credentials_variable_names_it(s3, monkeypatch):
    monkeypatch.delenv("TEST_S3_ACCESS_KEY_ID")
    error = refused("storage", "check", "offsite")
    assert error.returncode == 1 and "TEST_S3_ACCESS_KEY_ID" in str(error)


def test_a_backup_to_s3_round_trips_and_plain_tools_check_the_downloaded_objects(
    s3_source, s3_server, prefix, data_dir, tmp_path
):
    run = call_json("backup", "files", "--inline")
    assert run["status"] == "succeeded", run["error"]
    assert run["storage"] == "offsite"
    name = f"{run['archive'].rpartition('/')[2]}"
    assert run["archive"] == f"s3://{BUCKET}/{prefix}/files/{name}"
    stem = name.split(".", 1)[0]
    # The runbook goes beside the archives, where they are when the dashboard is not.
    assert objects(s3_server, prefix) == [
        f"files/{stem}.manifest.json",
        f"files/{name}",
        f"files/{name}.sha256",
        "files/RUNBOOK.md",
    ]
    # Nothing written to ARCHIVE_ROOT; the catalog indexed the manifest from the bucket.
    assert Manifest.objects.get(run_id=run["id"]).files == 2
    download = tmp_path / "download"
    download.mkdir()
    client = s3_server.client()
    for key in objects(s3_server, prefix):
        client.download_file(BUCKET, f"{prefix}/{key}", str(download / key.rpartition("/")[2]))
    check = subprocess.run(
        "sha256sum -c *.sha256", shell=True, cwd=download, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    target = tmp_path / "restored"
    restored = call_json("restore", str(run["id"]), "--to", str(target), "--inline")
    assert restored["status"] == "succeeded", restored["error"]
    assert (target / "a.txt").read_text() == "alpha\n"
    assert (target / "sub" / "b.bin").read_bytes() == (data_dir / "sub" / "b.bin").read_bytes()
    verified = call_json("verify", str(run["id"]), "--drill", "--inline")
    assert verified["status"] == "succeeded", verified["error"]
    listing = call_json("storage", "list")["storages"]
    assert (listing[1]["archives"], listing[1]["bytes"]) == (1, run["size"])
    assert listing[0]["archives"] == 0


def test_a_backup_to_a_second_local_storage_round_trips(data_dir, tmp_path, settings):
    folder = tmp_path / "second"
    call_command(
        "storage", "add", "second", "--kind", "local", "--path", str(folder), stdout=StringIO()
    )
    call_command("policy", "add", "p", "--keep-last", "1", "--storage", "second", stdout=StringIO())
    call_command(
        "source", "add", "files", "--kind", "directory", "--location", str(data_dir),
        "--policy", "p", stdout=StringIO(),
    )  # fmt: skip
    run = call_json("backup", "files", "--inline")
    assert run["status"] == "succeeded", run["error"]
    assert run["storage"] == "second" and run["archive"].startswith(f"{folder}/files/")
    assert not (settings.ARCHIVE_ROOT / "files").exists()
    check = subprocess.run(
        "sha256sum -c *.sha256", shell=True, cwd=folder / "files", capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    target = tmp_path / "restored"
    restored = call_json("restore", str(run["id"]), "--to", str(target), "--inline")
    assert restored["status"] == "succeeded", restored["error"]
    assert (target / "a.txt").read_text() == "alpha\n"


def test_a_restore_into_a_local_storage_is_refused(data_dir, tmp_path):
    folder = tmp_path / "second"
    call_command(
        "storage", "add", "second", "--kind", "local", "--path", str(folder), stdout=StringIO()
    )
    call_command("policy", "add", "p", "--keep-last", "1", "--storage", "second", stdout=StringIO())
    call_command(
        "source", "add", "files", "--kind", "directory", "--location", str(data_dir),
        "--policy", "p", stdout=StringIO(),
    )  # fmt: skip
    run = call_json("backup", "files", "--inline")
    error = refused("restore", str(run["id"]), "--to", str(folder / "x"), "--inline")
    assert error.returncode == 2 and "storage 'second'" in str(error)


def test_an_object_corrupted_in_the_bucket_fails_verify_naming_it(s3_source, s3_server, prefix):
    run = call_json("backup", "files", "--inline")
    key = run["archive"].removeprefix(f"s3://{BUCKET}/")
    client = s3_server.client()
    data = bytearray(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0xFF
    client.put_object(Bucket=BUCKET, Key=key, Body=bytes(data))
    verified = call_json("verify", str(run["id"]), "--inline")
    assert verified["status"] == "failed"
    assert "checksum" in verified["error"] and key.rpartition("/")[2] in verified["error"]


def test_a_backup_with_wrong_credentials_fails_with_a_sentence_and_publishes_nothing(
    s3_source, s3_server, prefix, monkeypatch
):
    monkeypatch.setenv("TEST_S3_SECRET_ACCESS_KEY", "not-the-secret")
    run = call_json("backup", "files", "--inline")
    assert run["status"] == "failed" and "TEST_S3" in run["error"]
    assert "\n" not in run["error"] and "Internal error" not in run["error"]
    assert objects(s3_server, prefix) == []


def test_a_backup_to_a_missing_bucket_fails_naming_it(s3_server, s3_env, data_dir):
    call_command(
        "storage", "add", "nobucket", "--kind", "s3", "--url", "s3://no-such-bucket/p",
        "--endpoint", s3_server.endpoint, "--credentials-env", s3_env, stdout=StringIO(),
    )  # fmt: skip
    call_command(
        "policy", "add", "p", "--keep-last", "1", "--storage", "nobucket", stdout=StringIO()
    )
    call_command(
        "source", "add", "files", "--kind", "directory", "--location", str(data_dir),
        "--policy", "p", stdout=StringIO(),
    )  # fmt: skip
    run = call_json("backup", "files", "--inline")
    assert run["status"] == "failed" and "no-such-bucket" in run["error"]
    assert "Internal error" not in run["error"]


def test_import_archives_rebuilds_the_catalog_from_a_bucket(s3_source, s3, s3_server, prefix):
    first = call_json("backup", "files", "--inline")
    Manifest.objects.all().delete()
    Run.objects.exclude(backup=None).delete()
    Run.objects.all().delete()
    report = call_json("import_archives", "--storage", "offsite")
    assert report["imported"] == [first["id"]] and report["refused"] == []
    run = Run.objects.get(pk=first["id"])
    assert (run.storage, run.archive, run.sha256) == (s3, first["archive"], first["sha256"])
    assert Manifest.objects.get(run=run).files == 2
    again = call_json("import_archives", "--storage", "offsite")
    assert again["imported"] == [] and again["known"] == 1


def test_import_archives_refuses_an_unknown_storage():
    error = refused("import_archives", "--storage", "nowhere")
    assert error.returncode == 2 and "nowhere" in str(error)


def test_prune_removes_old_backups_from_the_bucket(s3_source, s3_server, prefix):
    first = call_json("backup", "files", "--inline")
    second = call_json("backup", "files", "--inline")
    Run.objects.filter(pk=first["id"]).update(verified=False)
    Run.objects.filter(pk=second["id"]).update(verified=False)
    result = call_json("prune", "--source", "files")
    assert [item["id"] for item in result["remove"]] == [first["id"]]
    names = [name for name in objects(s3_server, prefix) if name != "files/RUNBOOK.md"]
    assert names and all(f"-{second['id']}." in name for name in names)


def test_an_upload_a_dead_backup_left_is_aborted_by_the_reaper(s3_source, s3, s3_server, prefix):
    run = Run.objects.create(source=s3_source, kind=Run.Kind.BACKUP, status=Run.Status.RUNNING)
    run.record_storage(s3)
    storage = s3.open()
    upload = storage.open_write(f"files/{run.stem}.tar.zst")
    # A whole first part goes out: the multipart upload exists, then its worker dies.
    upload.write(bytes(part_size(1, storage.part_size)))
    assert [item.key for item in storage.pending("files")] == [f"files/{run.stem}.tar.zst"]
    Run.objects.filter(pk=run.pk).update(heartbeat_at=run.queued_at.replace(year=2000))
    assert reap_abandoned() == [run.pk]
    assert storage.pending("files") == []
    assert objects(s3_server, prefix) == []


def test_the_upload_of_a_copy_in_progress_is_not_aborted(s3_source, s3, s3_server, tmp_path):
    from backups.services.runs import remove_dead_uploads

    backup = Run.objects.create(
        source=s3_source, kind=Run.Kind.BACKUP, status=Run.Status.SUCCEEDED, storage=s3
    )
    Run.objects.create(
        source=s3_source, kind=Run.Kind.COPY, backup=backup, storage=s3,
        status=Run.Status.RUNNING, exclusive=False,
    )  # fmt: skip
    storage = s3.open()
    upload = storage.open_write(f"files/{backup.stem}.tar.zst")
    upload.write(bytes(part_size(1, storage.part_size)))
    assert remove_dead_uploads(storage, "files") == []
    assert len(storage.pending("files")) == 1
    upload.discard()


def test_housekeeping_aborts_the_upload_a_failed_backup_could_not(s3_source, s3, s3_server):
    from backups.services.schedules import housekeeping_run

    run = Run.objects.create(source=s3_source, kind=Run.Kind.BACKUP, status=Run.Status.FAILED)
    storage = s3.open()
    # Its server was down when the run failed: the upload stayed behind.
    upload = storage.open_write(f"files/{run.stem}.tar.zst")
    upload.write(bytes(part_size(1, storage.part_size)))
    live = Run.objects.create(source=s3_source, kind=Run.Kind.BACKUP, status=Run.Status.RUNNING)
    other = storage.open_write(f"files/{live.stem}.tar.zst")
    other.write(bytes(part_size(1, storage.part_size)))
    done = housekeeping_run()
    assert done["uploads_aborted"] == [f"offsite:files/{run.stem}.tar.zst"]
    assert [item.key for item in storage.pending("files")] == [f"files/{live.stem}.tar.zst"]
    other.discard()


def test_the_s3_server_killed_mid_backup_fails_the_run_and_housekeeping_aborts_the_upload(
    s3_env, tmp_path
):
    import os

    from backups.services.backup import backup_request
    from backups.services.execution import run_execute
    from backups.services.schedules import housekeeping_run
    from tests.s3server import SeaweedServer

    big = tmp_path / "big"
    big.mkdir()
    for index in range(3):
        (big / f"part{index}.bin").write_bytes(os.urandom(24 << 20))
    server = SeaweedServer(tmp_path / "weed").start()
    try:
        server.create_bucket(BUCKET)
        call_command(
            "storage", "add", "flaky", "--kind", "s3", "--url", f"s3://{BUCKET}/p",
            "--endpoint", server.endpoint, "--credentials-env", s3_env, stdout=StringIO(),
        )  # fmt: skip
        policy = policy_create(
            name="p", keep_last=1, storage=Storage.objects.get(), verify_after_backup=False
        )
        source = source_create(name="big", kind="directory", location=str(big), policy=policy)
        run = backup_request(source=source, trigger=Run.Trigger.CLI, enqueue=False)

        def kill_past_30_mib(progress) -> None:
            if progress.bytes_done > 30 << 20 and server.process.poll() is None:
                server.kill()

        ended = run_execute(run.pk, on_progress=kill_past_30_mib, inline=True)
        assert ended.status == Run.Status.FAILED
        assert server.endpoint in ended.error and "\n" not in ended.error
        assert "Internal error" not in ended.error

        server.start()
        listing = server.client().list_objects_v2(Bucket=BUCKET, Prefix="p/")
        assert listing.get("Contents", []) == []  # nothing under a final name
        storage = Storage.objects.get().open()
        assert [item.key for item in storage.pending("big")] == [f"big/{ended.stem}.tar.zst"]
        assert housekeeping_run()["uploads_aborted"] == [f"flaky:big/{ended.stem}.tar.zst"]
        assert storage.pending("big") == []
    finally:
        server.stop()

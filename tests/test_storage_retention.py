"""Per-storage retention: a storage's own keep rules decide which of its copies stay.

Real local storages, and SeaweedFS's S3 (tests/s3server.py) for one bucket.
"""

from __future__ import annotations

import functools
import secrets
import shutil
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from backups.models import AuditEvent, Copy, Run, Source, Storage
from backups.services.copy import archive_due
from backups.services.prune import prune_recover
from tests import cli_helpers
from tests.cli_helpers import quiet
from tests.prune_helpers import make_backups, paths_of
from tests.s3server import BUCKET

pytestmark = pytest.mark.django_db(transaction=True)


# Commands here may exit 1 (a refusal, a failed check): their JSON is what is checked.
call_json = functools.partial(cli_helpers.call_json, expect=(0, 1))


def setup(data_dir, tmp_path, *policy_args, offsite_rules=("--keep-monthly", "12")) -> Source:
    quiet(
        "storage", "add", "offsite", "--kind", "local", "--path", str(tmp_path / "offsite"),
        *offsite_rules,
    )  # fmt: skip
    quiet("policy", "add", "p", "--no-verify", "--copy-to", "offsite", *policy_args)
    quiet(
        "source", "add", "files", "--kind", "directory", "--location", str(data_dir),
        "--policy", "p",
    )  # fmt: skip
    return Source.objects.get(name="files")


def copy_to(runs, name: str) -> None:
    """Give each backup a proven copy in storage `name`: its three files, and the row."""
    storage = Storage.objects.get(name=name)
    target = storage.open()
    for run in runs:
        folder = Path(storage.path) / run.source.slug
        folder.mkdir(parents=True, exist_ok=True)
        for path in paths_of(run):
            shutil.copyfile(path, folder / path.name)
        Copy.objects.update_or_create(
            backup=run,
            storage=storage,
            defaults={
                "status": Copy.Status.SUCCEEDED,
                "archive": target.locator(f"{run.source.slug}/{Path(run.archive).name}"),
                "sha256": "0" * 64,
                "size": 3,
            },
        )


def ids_in(folder: Path) -> set[int]:
    """Return the run ids of the archives in `folder` (each with its sidecar and manifest)."""
    names = [path.name for path in folder.iterdir()] if folder.is_dir() else []
    archives = {name.split(".")[0] for name in names if name.endswith((".tar.zst", ".tar.gz"))}
    for stem in archives:
        assert {n for n in names if n.startswith(stem + ".")} >= {
            f"{stem}.manifest.json",
        }, f"{stem} lost its manifest"
        assert any(n.endswith(".sha256") and n.startswith(stem + ".") for n in names)
    return {int(stem.rsplit("-", 1)[1]) for stem in archives}


def test_the_primary_keeps_7_dailies_and_the_offsite_12_monthlies_over_a_year(
    data_dir, tmp_path, settings
):
    settings.RETENTION_TIME_ZONE = "UTC"
    source = setup(data_dir, tmp_path, "--keep-daily", "7")
    # A real backup, copied by the copy run the policy asks for, at the end of a past month.
    real = call_json("backup", "files", "--inline")
    assert Copy.objects.get(backup_id=real["id"]).status == Copy.Status.SUCCEEDED
    now = datetime.now(UTC).replace(hour=3, minute=0, second=0, microsecond=0)
    month_end = (now.replace(day=1) - timedelta(days=5 * 31)).replace(day=1) - timedelta(days=1)
    Run.objects.filter(pk=real["id"]).update(started_at=month_end, queued_at=month_end)
    # A backup a day for a year and a bit, the real one's day left to it.
    times = [now - timedelta(days=day) for day in range(1, 400)]
    times = [moment for moment in times if moment.date() != month_end.date()]
    fakes = make_backups(source, times)
    copy_to(fakes, "offsite")
    every = {run.pk: run.started_at for run in fakes} | {real["id"]: month_end}
    newest_first = sorted(every, key=every.get, reverse=True)
    dailies = set(newest_first[:7])
    months: dict[tuple, int] = {}
    for pk in newest_first:
        months.setdefault((every[pk].year, every[pk].month), pk)
    monthlies = set(list(months.values())[:12])
    assert real["id"] in monthlies

    report = call_json("prune", "--source", "files")

    assert ids_in(source.archive_dir) == dailies
    assert ids_in(tmp_path / "offsite" / source.slug) == monthlies
    restorable = set(Run.objects.restorable().filter(source=source).values_list("pk", flat=True))
    assert restorable == dailies | monthlies
    assert {entry["id"] for entry in report["remove"]} == set(every) - dailies - monthlies
    moved = Run.objects.get(pk=real["id"])
    assert moved.copy_only and moved.storage.name == "offsite"
    event = AuditEvent.objects.get(action="backup.prune", object_id=str(real["id"]))
    assert (event.outcome, event.detail["kept_in"]) == ("moved", "offsite")
    assert event.detail["archive"] == real["archive"]
    # Restorable from the offsite, byte for byte, and it verifies there.
    target = tmp_path / "restored"
    restored = call_json("restore", str(real["id"]), "--to", str(target), "--inline")
    assert restored["status"] == "succeeded", restored["error"]
    assert restored["archive"] == str(
        tmp_path / "offsite" / source.slug / Path(real["archive"]).name
    )
    assert (target / "a.txt").read_bytes() == (data_dir / "a.txt").read_bytes()
    assert (target / "sub" / "b.bin").read_bytes() == (data_dir / "sub" / "b.bin").read_bytes()
    verified = call_json("verify", str(real["id"]), "--inline")
    assert verified["status"] == "succeeded", verified["error"]
    # A second prune has nothing more to do: both storages are at their rules.
    again = call_json("prune", "--source", "files")
    assert again["remove"] == [] and again["problems"] == []
    assert ids_in(tmp_path / "offsite" / source.slug) == monthlies


def test_a_chain_kept_on_the_offsite_keeps_its_base_and_full_there(data_dir, tmp_path, settings):
    settings.RETENTION_TIME_ZONE = "UTC"
    source = setup(data_dir, tmp_path, "--keep-last", "1", offsite_rules=("--keep-monthly", "1"))
    now = datetime.now(UTC)
    full, first, second = make_backups(
        source, [now - timedelta(days=3, hours=h) for h in (2, 1, 0)]
    )
    Run.objects.filter(pk=full.pk).update(level=Run.Level.FULL)
    Run.objects.filter(pk=first.pk).update(level=Run.Level.INCREMENTAL, base=full, full=full)
    Run.objects.filter(pk=second.pk).update(level=Run.Level.INCREMENTAL, base=first, full=full)
    (newest,) = make_backups(source, [now])
    copy_to([full, first, second], "offsite")

    plan = call_json("prune", "--source", "files", "--dry-run")
    (offsite,) = [part for part in plan["storages"] if part["storage"] == "offsite"]
    reasons = {entry["id"]: entry["reasons"] for entry in offsite["keep"]}
    assert reasons == {
        second.pk: ["monthly"],
        first.pk: [f"base of #{second.pk}"],
        full.pk: [f"base of #{first.pk}"],
    }
    call_json("prune", "--source", "files")

    assert ids_in(source.archive_dir) == {newest.pk}
    assert ids_in(tmp_path / "offsite" / source.slug) == {full.pk, first.pk, second.pk}
    chain = Run.objects.get(pk=second.pk).chain()
    assert [run.pk for run in chain] == [full.pk, first.pk, second.pk]
    assert all(run.copy_only and run.status in Run.GOOD for run in chain)


def test_a_storage_without_rules_loses_its_copies_with_the_primary_archive(
    data_dir, tmp_path, settings
):
    settings.RETENTION_TIME_ZONE = "UTC"
    quiet("storage", "add", "nas", "--kind", "local", "--path", str(tmp_path / "nas"))
    source = setup(data_dir, tmp_path, "--keep-last", "2", "--copy-to", "nas")
    now = datetime.now(UTC)
    runs = make_backups(source, [now - timedelta(days=40 * n) for n in (3, 2, 1, 0)])
    copy_to(runs, "offsite")
    copy_to(runs, "nas")

    call_json("prune", "--source", "files")

    kept_by_policy = {runs[2].pk, runs[3].pk}
    assert ids_in(source.archive_dir) == kept_by_policy
    assert ids_in(tmp_path / "nas" / source.slug) == kept_by_policy
    assert ids_in(tmp_path / "offsite" / source.slug) == {run.pk for run in runs}
    nas = dict(Copy.objects.filter(storage__name="nas").values_list("backup_id", "status"))
    assert nas == {
        runs[0].pk: Copy.Status.REMOVED,
        runs[1].pk: Copy.Status.REMOVED,
        runs[2].pk: Copy.Status.SUCCEEDED,
        runs[3].pk: Copy.Status.SUCCEEDED,
    }
    # Clearing the offsite's rules: its copies go with their backups again, and it warns.
    err = StringIO()
    call_command("storage", "retention", "offsite", "--clear", stdout=StringIO(), stderr=err)
    assert "2 backup(s) kept only as copies there leave at the next prune" in err.getvalue()
    report = call_json("prune", "--source", "files")
    assert {entry["id"] for entry in report["remove"]} == {runs[0].pk, runs[1].pk}
    assert ids_in(tmp_path / "offsite" / source.slug) == kept_by_policy


def test_a_copy_its_storage_drops_goes_alone_while_the_primary_keeps_the_backup(data_dir, tmp_path):
    source = setup(data_dir, tmp_path, "--keep-last", "3", offsite_rules=("--keep-last", "1"))
    now = datetime.now(UTC)
    runs = make_backups(source, [now - timedelta(hours=n) for n in (2, 1, 0)])
    copy_to(runs, "offsite")

    report = call_json("prune", "--source", "files")

    assert report["remove"] == []
    assert ids_in(source.archive_dir) == {run.pk for run in runs}
    assert ids_in(tmp_path / "offsite" / source.slug) == {runs[2].pk}
    statuses = dict(Copy.objects.values_list("backup_id", "status"))
    assert statuses[runs[0].pk] == statuses[runs[1].pk] == Copy.Status.REMOVED
    assert not Run.objects.filter(copy_only=True).exists()
    events = AuditEvent.objects.filter(action="copy.prune")
    assert sorted(event.object_id for event in events) == sorted(str(run.pk) for run in runs[:2])


def test_dry_run_says_per_storage_what_goes_and_changes_nothing(data_dir, tmp_path, settings):
    settings.RETENTION_TIME_ZONE = "UTC"
    source = setup(data_dir, tmp_path, "--keep-last", "1", offsite_rules=("--keep-last", "2"))
    now = datetime.now(UTC)
    runs = make_backups(source, [now - timedelta(hours=n) for n in (2, 1, 0)])
    copy_to(runs, "offsite")
    before = sorted(p for p in tmp_path.rglob("*") if p.is_file())

    report = call_json("prune", "--source", "files", "--dry-run")
    text = quiet("prune", "--source", "files", "--dry-run")

    parts = {part["storage"]: part for part in report["storages"]}
    assert parts["default"]["role"] == "primary" and parts["offsite"]["role"] == "copies"
    assert parts["offsite"]["rules"] == {"last": 2}
    assert [entry["id"] for entry in parts["default"]["remove"]] == [runs[1].pk, runs[0].pk]
    assert [entry["id"] for entry in parts["offsite"]["remove"]] == [runs[0].pk]
    assert {entry["id"]: entry["reasons"] for entry in report["keep"]}[runs[1].pk] == [
        "copy in offsite"
    ]
    assert [entry["id"] for entry in report["remove"]] == [runs[0].pk]
    assert "files in offsite (copies, keep last 2): would remove 1, keep 2." in text
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == before
    assert Run.objects.filter(status=Run.Status.SUCCEEDED).count() == 3
    assert not Run.objects.filter(copy_only=True).exists()
    assert set(Copy.objects.values_list("status", flat=True)) == {Copy.Status.SUCCEEDED}


def test_storage_retention_sets_and_clears_the_rules_with_an_audit_record(tmp_path):
    quiet("storage", "add", "offsite", "--kind", "local", "--path", str(tmp_path / "o"))
    quiet("storage", "retention", "offsite", "--keep-monthly", "12", "--keep-daily", "7")
    listed = {row["name"]: row for row in call_json("storage", "list")["storages"]}
    assert listed["offsite"]["keep"] == {
        "last": 0, "hourly": 0, "daily": 7, "weekly": 0, "monthly": 12, "yearly": 0,
    }  # fmt: skip
    assert listed["default"]["keep"] is None
    assert "daily 7, monthly 12" in quiet("storage", "list")
    event = AuditEvent.objects.filter(action="storage.retention").latest("pk")
    assert event.detail["changes"] == {"keep_daily": [0, 7], "keep_monthly": [0, 12]}

    quiet("storage", "retention", "offsite", "--clear")
    assert not Storage.objects.get(name="offsite").has_keep_rules
    event = AuditEvent.objects.filter(action="storage.retention").latest("pk")
    assert event.detail["changes"] == {"keep_daily": [7, 0], "keep_monthly": [12, 0]}
    for args in (("offsite",), ("offsite", "--clear", "--keep-last", "1"), ("default", "--clear")):
        with pytest.raises(CommandError) as caught:
            quiet("storage", "retention", *args)
        assert caught.value.returncode == 2
    quiet("storage", "add", "cold", "--kind", "local", "--path", str(tmp_path / "c"),
          "--keep-yearly", "5")  # fmt: skip
    assert Storage.objects.get(name="cold").keep_rules["yearly"] == 5


def test_a_bucket_keeps_its_monthlies_while_the_primary_keeps_the_last(
    data_dir, tmp_path, s3_server, s3_env, settings
):
    settings.RETENTION_TIME_ZONE = "UTC"
    prefix = f"t-{secrets.token_hex(6)}"
    quiet(
        "storage", "add", "bucket", "--kind", "s3", "--url", f"s3://{BUCKET}/{prefix}",
        "--endpoint", s3_server.endpoint, "--credentials-env", s3_env, "--keep-monthly", "2",
    )  # fmt: skip
    quiet("policy", "add", "p", "--no-verify", "--copy-to", "bucket", "--keep-last", "1")
    quiet(
        "source", "add", "files", "--kind", "directory", "--location", str(data_dir),
        "--policy", "p",
    )  # fmt: skip
    now = datetime.now(UTC)
    backups = [call_json("backup", "files", "--inline") for _ in range(3)]
    for backup, days in zip(backups, (70, 35, 0), strict=True):
        moment = now - timedelta(days=days)
        Run.objects.filter(pk=backup["id"]).update(started_at=moment, queued_at=moment)
    oldest, middle, newest = (backup["id"] for backup in backups)

    call_json("prune", "--source", "files")

    listing = s3_server.client().list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/")
    keys = [item["Key"] for item in listing.get("Contents", [])]
    assert len(keys) == 6
    assert {int(key.rsplit("/", 1)[1].split(".")[0].rsplit("-", 1)[1]) for key in keys} == {
        middle,
        newest,
    }
    assert not Path(backups[1]["archive"]).exists() and Path(backups[2]["archive"]).exists()
    assert Run.objects.get(pk=oldest).status == Run.Status.PRUNED
    target = tmp_path / "restored"
    restored = call_json("restore", str(middle), "--to", str(target), "--inline")
    assert restored["status"] == "succeeded", restored["error"]
    assert restored["archive"].startswith(f"s3://{BUCKET}/{prefix}/")
    assert (target / "sub" / "b.bin").read_bytes() == (data_dir / "sub" / "b.bin").read_bytes()


def test_the_source_page_previews_retention_per_storage(data_dir, tmp_path, client, viewer):
    source = setup(data_dir, tmp_path, "--keep-last", "1", offsite_rules=("--keep-last", "2"))
    now = datetime.now(UTC)
    runs = make_backups(source, [now - timedelta(hours=n) for n in (2, 1, 0)])
    copy_to(runs, "offsite")
    client.force_login(viewer)

    response = client.get(reverse("source-detail", args=["files"]))

    assert response.status_code == 200
    parts = {part.name: (keep, remove) for part, keep, remove in response.context["storage_plans"]}
    assert [run.pk for run, _reasons in parts["offsite"][0]] == [runs[2].pk, runs[1].pk]
    assert [run.pk for run in parts["offsite"][1]] == [runs[0].pk]
    assert [run.pk for run in parts["default"][1]] == [runs[1].pk, runs[0].pk]
    page = response.content.decode()
    assert "offsite: copies, by its own rules (keep last 2): keeps 2, removes 1" in page
    assert "copy in offsite" in page


def test_a_move_interrupted_by_a_dead_pruner_keeps_the_copy_when_finished(
    data_dir, tmp_path, settings
):
    source = setup(data_dir, tmp_path, "--keep-last", "1", offsite_rules=("--keep-last", "5"))
    now = datetime.now(UTC)
    runs = make_backups(source, [now - timedelta(hours=n) for n in (1, 0)])
    copy_to(runs, "offsite")
    silent = now - timedelta(seconds=settings.ABANDON_AFTER_S + 1)
    Run.objects.filter(pk=runs[0].pk).update(
        status=Run.Status.PRUNING, worker="lost-host:77:gone", heartbeat_at=silent
    )

    assert prune_recover() == []

    moved = Run.objects.get(pk=runs[0].pk)
    assert moved.status == Run.Status.SUCCEEDED
    assert moved.copy_only and moved.storage.name == "offsite"
    assert ids_in(source.archive_dir) == {runs[1].pk}
    assert ids_in(tmp_path / "offsite" / source.slug) == {runs[0].pk, runs[1].pk}
    assert Path(moved.archive).is_file()


def test_an_offsite_folder_that_cannot_be_listed_holds_the_whole_source_back(data_dir, tmp_path):
    source = setup(data_dir, tmp_path, "--keep-last", "1", offsite_rules=("--keep-last", "1"))
    now = datetime.now(UTC)
    runs = make_backups(source, [now - timedelta(hours=n) for n in (2, 1, 0)])
    copy_to(runs, "offsite")
    folder = tmp_path / "offsite" / source.slug
    folder.rename(folder.with_name("moved"))

    report = call_json("prune", "--source", "files")

    assert report["remove"] == []
    assert [problem for problem in report["problems"] if "offsite:files/" in problem] == [
        "offsite:files/ holds none of the 3 copies the catalog has there: nothing of this "
        "source is removed."
    ]
    assert ids_in(source.archive_dir) == {run.pk for run in runs}
    assert ids_in(tmp_path / "offsite" / "moved") == {run.pk for run in runs}
    assert not Run.objects.filter(copy_only=True).exists()
    assert set(Copy.objects.values_list("status", flat=True)) == {Copy.Status.SUCCEEDED}


def test_objects_the_catalog_does_not_name_neither_count_nor_go(data_dir, tmp_path):
    source = setup(data_dir, tmp_path, "--keep-last", "3", offsite_rules=("--keep-last", "1"))
    now = datetime.now(UTC)
    runs = make_backups(source, [now - timedelta(hours=n) for n in (2, 1, 0)])
    copy_to(runs, "offsite")
    # A newer-looking archive someone put in the bucket folder: not a copy the catalog has.
    planted = tmp_path / "offsite" / source.slug / "20990101T000000Z-999999.tar.zst"
    planted.write_bytes(b"not ours\n")
    # A restore queued on the oldest backup may read its copy: that copy stays too.
    Run.objects.create(
        source=source, kind=Run.Kind.RESTORE, backup=runs[0], status=Run.Status.QUEUED
    )

    call_json("prune", "--source", "files")

    assert planted.read_bytes() == b"not ours\n"
    left = {
        int(path.name.split(".")[0].rsplit("-", 1)[1])
        for path in (tmp_path / "offsite" / source.slug).glob("*.tar.zst")
    }
    assert left == {runs[0].pk, runs[2].pk, 999999}
    statuses = dict(Copy.objects.values_list("backup_id", "status"))
    assert statuses == {
        runs[0].pk: Copy.Status.SUCCEEDED,
        runs[1].pk: Copy.Status.REMOVED,
        runs[2].pk: Copy.Status.SUCCEEDED,
    }


def test_a_backup_kept_only_as_a_copy_stays_out_of_the_archive_tier(data_dir, tmp_path):
    quiet("storage", "add", "cold", "--kind", "local", "--path", str(tmp_path / "cold"))
    source = setup(
        data_dir, tmp_path, "--keep-last", "1", "--archive-to", "cold", "--archive-after", "1d",
        offsite_rules=("--keep-last", "5"),
    )  # fmt: skip
    now = datetime.now(UTC)
    old, new = make_backups(source, [now - timedelta(days=3), now])
    copy_to([old, new], "offsite")
    call_json("prune", "--source", "files")
    assert Run.objects.get(pk=old.pk).copy_only

    report = archive_due()

    assert report == {"copies": [], "moved": []}
    assert Run.objects.get(pk=old.pk).storage.name == "offsite"
    assert not Copy.objects.filter(storage__name="cold").exists()


def test_the_full_of_a_chain_kept_as_copies_stays_even_when_no_storage_holds_its_copy(
    data_dir, tmp_path
):
    source = setup(data_dir, tmp_path, "--keep-last", "1", offsite_rules=("--keep-last", "1"))
    now = datetime.now(UTC)
    full, first, second = make_backups(source, [now - timedelta(hours=h) for h in (3, 2, 1)])
    Run.objects.filter(pk=first.pk).update(level=Run.Level.INCREMENTAL, base=full, full=full)
    Run.objects.filter(pk=second.pk).update(level=Run.Level.INCREMENTAL, base=first, full=full)
    (newest,) = make_backups(source, [now])
    # The full never reached the offsite; its incrementals did.
    copy_to([first, second], "offsite")

    report = call_json("prune", "--source", "files")

    assert report["remove"] == []
    assert {entry["id"]: entry["reasons"] for entry in report["keep"]}[full.pk] == [
        f"base of #{first.pk}"
    ]
    assert ids_in(source.archive_dir) == {newest.pk, full.pk}
    assert ids_in(tmp_path / "offsite" / source.slug) == {first.pk, second.pk}
    chain = Run.objects.get(pk=second.pk).chain()
    assert [run.pk for run in chain] == [full.pk, first.pk, second.pk]
    assert all(run.status in Run.GOOD for run in chain)
    assert [run.copy_only for run in chain] == [False, True, True]

"""The archive tier: old restore points move to a colder storage and stay restorable."""

from __future__ import annotations

import functools
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import CommandError
from django.utils import timezone

from backups.models import Copy, Run
from backups.services.copy import archive_due
from backups.services.execution import run_execute
from tests import cli_helpers
from tests.cli_helpers import quiet

pytestmark = pytest.mark.django_db(transaction=True)


# Commands here may exit 1 (a refusal, a failed check): their JSON is what is checked.
call_json = functools.partial(cli_helpers.call_json, expect=(0, 1))


@pytest.fixture
def cold(tmp_path, data_dir) -> Path:
    folder = tmp_path / "cold"
    quiet("storage", "add", "cold", "--kind", "local", "--path", str(folder))
    quiet(
        "policy", "add", "p", "--keep-last", "5", "--no-verify",
        "--archive-to", "cold", "--archive-after", "1d",
    )  # fmt: skip
    quiet(
        "source", "add", "files", "--kind", "directory", "--location", str(data_dir),
        "--policy", "p",
    )  # fmt: skip
    return folder


def age(run_id: int, days: float) -> None:
    """Make a backup `days` old, as time would."""
    Run.objects.filter(pk=run_id).update(started_at=timezone.now() - timedelta(days=days))


def test_an_old_restore_point_moves_to_the_archive_storage_and_stays_restorable(
    cold, settings, tmp_path, client, viewer
):
    old = call_json("backup", "files", "--inline")
    new = call_json("backup", "files", "--inline")
    age(old["id"], 2)
    queued = archive_due()
    assert queued["moved"] == [] and len(queued["copies"]) == 1
    run_execute(queued["copies"][0], inline=True)  # copies, proves, then moves it

    moved = call_json("runs", str(old["id"]))
    name = Path(old["archive"]).name
    assert moved["storage"] == "cold" and moved["archive"] == str(cold / "files" / name)
    assert moved["copies"] == []
    assert not Path(old["archive"]).exists()
    assert sorted(p.name for p in (cold / "files").iterdir()) == sorted(
        [name, f"{name}.sha256", name.split(".")[0] + ".manifest.json"]
    )
    assert call_json("runs", str(new["id"]))["storage"] == "default"  # young: stays
    assert not Copy.objects.exists()

    restored = call_json("restore", str(old["id"]), "--to", str(tmp_path / "r"), "--inline")
    assert restored["status"] == "succeeded", restored["error"]
    assert (tmp_path / "r" / "a.txt").read_text() == "alpha\n"
    verified = call_json("verify", str(old["id"]), "--inline")
    assert verified["status"] == "succeeded", verified["error"]
    client.force_login(viewer)
    assert "a.txt" in client.get(f"/runs/{old['id']}/files/").content.decode()
    assert archive_due() == {"copies": [], "moved": []}  # done once


def test_a_restore_point_being_read_is_not_moved(cold):
    old = call_json("backup", "files", "--inline")
    age(old["id"], 2)
    [copy_run] = archive_due()["copies"]
    backup = Run.objects.get(pk=old["id"])
    Run.objects.create(
        source=backup.source, kind=Run.Kind.VERIFY, backup=backup, exclusive=False
    )  # a queued verification reads it
    run_execute(copy_run, inline=True)
    assert Run.objects.get(pk=old["id"]).storage is None
    assert Path(old["archive"]).exists()
    Run.objects.filter(kind=Run.Kind.VERIFY).update(status=Run.Status.CANCELLED)
    assert archive_due()["moved"] == [old["id"]]


def test_policy_add_needs_both_archive_flags(cold):
    with pytest.raises(CommandError) as caught:
        quiet("policy", "add", "q", "--archive-to", "cold")
    assert caught.value.returncode == 2 and "both" in str(caught.value)


def test_the_source_page_filters_restore_points_by_date(cold, client, viewer):
    old = call_json("backup", "files", "--inline")
    call_json("backup", "files", "--inline")
    age(old["id"], 40)
    client.force_login(viewer)
    day = (timezone.now() - timedelta(days=40)).date().isoformat()
    page = client.get(
        "/sources/files/", {"points-taken_from": day, "points-taken_until": day}
    ).content.decode()
    rows = page.split('data-label="Stored in"')  # one cell per restore point shown
    assert len(rows) == 2 and f'<a href="/runs/{old["id"]}/">' in rows[0].rpartition("<tr>")[2]
    unfiltered = client.get("/sources/files/").content.decode()
    assert unfiltered.count('data-label="Stored in"') == 2
    page = client.get(
        "/sources/files/", {"points-taken_from": "2026-02-02", "points-taken_until": "2026-01-01"}
    ).content.decode()
    assert "The range ends before it starts" in page
    page = client.get("/sources/files/", {"points-taken_from": "not a date"}).content.decode()
    assert "Taken from: Enter a valid date." in page

"""Differential and incremental backups through the CLI: levels, fallbacks, restore, verify."""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import subprocess
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from backups.models import ManifestEntry, Policy, Run
from backups.services.catalog import source_create
from tests.cli_helpers import call_json

pytestmark = pytest.mark.django_db(transaction=True)

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "restore-chain.sh"


def tree_of(root: Path) -> dict:
    found = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            found[str(path.relative_to(root))] = path.read_bytes()
    return found


def test_policy_add_takes_how_often_each_level_runs():
    call_command(
        "policy", "add", "chains", "--schedule", "0 * * * *", "--keep-last", "5",
        "--full-every", "7d", "--differential-every", "1d",
    )  # fmt: skip

    policy = Policy.objects.get(name="chains")
    assert (policy.full_every_s, policy.differential_every_s) == (7 * 86400, 86400)


def test_a_differential_without_a_full_every_is_refused_with_a_sentence():
    with pytest.raises(CommandError, match="needs a full to build on: set full every"):
        call_command("policy", "add", "odd", "--keep-last", "5", "--differential-every", "1d")
    assert not Policy.objects.filter(name="odd").exists()


def test_an_incremental_stores_the_change_and_restores_the_whole_tree(source, data_dir, tmp_path):
    full = call_json("backup", source.name, "--inline")
    (data_dir / "new.txt").write_text("new\n")
    (data_dir / "a.txt").unlink()

    delta = call_json("backup", source.name, "--inline", "--level", "incremental")

    assert full["level"] == "full" and delta["level"] == "incremental"
    assert (delta["base"], delta["full"]) == (full["id"], full["id"])
    assert delta["files"] == 1 and delta["bytes"] == 4
    manifest = json.loads(Path(Run.objects.get(pk=delta["id"]).manifest_path).read_text())
    assert manifest["format"] == 2 and manifest["deleted"] == ["a.txt"]
    target = tmp_path / "restored"
    restored = call_json("restore", str(delta["id"]), "--to", str(target), "--inline")
    assert restored["status"] == "succeeded"
    assert tree_of(target) == tree_of(data_dir)
    plain = tmp_path / "plain"
    subprocess.run(
        ["sh", str(SCRIPT), str(source.archive_dir), str(manifest_path(delta)), str(plain)],
        check=True,
    )
    assert tree_of(plain) == tree_of(target)


def manifest_path(run: dict) -> Path:
    return Run.objects.get(pk=run["id"]).manifest_path


def test_a_path_of_an_incremental_comes_from_the_backup_holding_it(source, data_dir, tmp_path):
    call_json("backup", source.name, "--inline")
    (data_dir / "new.txt").write_text("new\n")
    delta = call_json("backup", source.name, "--inline", "--level", "incremental")
    target = tmp_path / "restored"

    call_json("restore", str(delta["id"]), "--to", str(target), "--path", "sub", "--inline")

    assert tree_of(target) == {"sub/b.bin": (data_dir / "sub" / "b.bin").read_bytes()}


def test_a_missing_full_makes_the_next_incremental_a_full_and_says_why(source, data_dir):
    full = call_json("backup", source.name, "--inline")
    Path(full["archive"]).unlink()

    run = call_json("backup", source.name, "--inline", "--level", "incremental")

    assert run["level"] == "full" and run["base"] is None
    assert any(
        "Took a full backup instead of an incremental one" in w and "is missing" in w
        for w in run["warnings"]
    )


def test_changed_excludes_make_the_next_incremental_a_full(source, data_dir):
    call_json("backup", source.name, "--inline")
    source.excludes = ["*.bin"]
    source.save()

    run = call_json("backup", source.name, "--inline", "--level", "incremental")

    assert run["level"] == "full"
    assert any("excludes changed" in w for w in run["warnings"])


def test_a_database_source_always_takes_a_full(policy, tmp_path):
    database = tmp_path / "app.db"
    sqlite3.connect(database).close()
    source = source_create(name="db", kind="sqlite", location=str(database), policy=policy)

    run = call_json("backup", source.name, "--inline", "--level", "incremental")

    assert run["level"] == "full"
    assert any("always takes a full backup" in w for w in run["warnings"])


def test_the_policy_picks_the_lowest_level_that_is_due(source, data_dir, policy):
    policy.full_every_s, policy.differential_every_s = 7 * 86400, 86400
    policy.save()
    first = call_json("backup", source.name, "--inline")
    second = call_json("backup", source.name, "--inline")
    Run.objects.filter(pk=first["id"]).update(
        started_at=Run.objects.get(pk=first["id"]).started_at - dt.timedelta(days=2)
    )
    third = call_json("backup", source.name, "--inline")
    Run.objects.filter(pk__in=[first["id"], second["id"], third["id"]]).update(
        started_at=Run.objects.get(pk=first["id"]).started_at - dt.timedelta(days=8)
    )
    fourth = call_json("backup", source.name, "--inline")

    levels = [run["level"] for run in (first, second, third, fourth)]
    assert levels == ["full", "incremental", "differential", "full"]
    assert third["base"] == first["id"]


def test_verify_of_an_incremental_checks_every_archive_of_its_chain(source, data_dir):
    full = call_json("backup", source.name, "--inline")
    (data_dir / "new.txt").write_text("new\n")
    delta = call_json("backup", source.name, "--inline", "--level", "incremental")
    good = call_json("verify", str(delta["id"]), "--inline", "--drill")
    assert good["status"] == "succeeded"
    assert {check["name"] for check in good["checks"]} >= {"chain", "drill"}

    Path(full["archive"]).write_bytes(b"damaged")
    out = StringIO()
    with pytest.raises(SystemExit):
        call_command("verify", str(delta["id"]), "--inline", "--json", stdout=out)
    checks = {check["name"]: check for check in json.loads(out.getvalue())["checks"]}
    assert not checks["chain"]["ok"] and "damaged" in checks["chain"]["detail"]


def test_import_rebuilds_chains_from_the_manifests_on_disk(source, data_dir, tmp_path):
    full = call_json("backup", source.name, "--inline")
    (data_dir / "new.txt").write_text("new\n")
    first = call_json("backup", source.name, "--inline", "--level", "incremental")
    (data_dir / "newer.txt").write_text("newer\n")
    second = call_json("backup", source.name, "--inline", "--level", "incremental")
    Run.objects.filter(kind="verify").delete()
    Run.objects.all().delete()

    call_command("import_archives", stdout=StringIO())

    runs = {run.pk: run for run in Run.objects.all()}
    assert runs[full["id"]].level == "full"
    assert (runs[second["id"]].base_id, runs[second["id"]].full_id) == (first["id"], full["id"])
    assert [run.pk for run in runs[second["id"]].chain()] == [full["id"], first["id"], second["id"]]
    target = tmp_path / "restored"
    call_json("restore", str(second["id"]), "--to", str(target), "--inline")
    assert tree_of(target) == tree_of(data_dir)


def test_the_source_page_shows_each_backups_level_and_chain(client, admin_user, source, data_dir):
    source.policy.full_every_s = 7 * 86400
    source.policy.save()
    full = call_json("backup", source.name, "--inline")
    (data_dir / "new.txt").write_text("new\n")
    delta = call_json("backup", source.name, "--inline")
    client.force_login(admin_user)

    page = client.get(f"/sources/{source.slug}/").content.decode()

    assert "a full every 7d, incremental otherwise" in page
    assert "incremental" in page and f'href="/runs/{full["id"]}/">#{full["id"]}</a>' in page
    detail = client.get(f"/runs/{delta['id']}/").content.decode()
    assert f'relative to <a href="/runs/{full["id"]}/">#{full["id"]}</a>' in detail


def test_the_catalog_of_an_incremental_holds_its_delta_and_browses_as_of_it(
    client, admin_user, source, data_dir
):
    call_json("backup", source.name, "--inline")
    (data_dir / "new.txt").write_text("new\n")
    (data_dir / "a.txt").unlink()
    delta = call_json("backup", source.name, "--inline", "--level", "incremental")
    stored = ManifestEntry.objects.filter(directory__manifest__run_id=delta["id"])
    # The new file and the marker for the deleted one; the unchanged sub/ is not stored again.
    assert sorted(stored.values_list("name", "type")) == [("a.txt", "x"), ("new.txt", "f")]
    client.force_login(admin_user)

    root = client.get(f"/runs/{delta['id']}/files/").content.decode()
    inside = client.get(f"/runs/{delta['id']}/files/", {"path": "sub"}).content.decode()
    found = client.get(f"/runs/{delta['id']}/files/", {"q": "b.bi"}).content.decode()
    gone = client.get(f"/runs/{delta['id']}/files/", {"q": "a.tx"}).content.decode()

    assert "new.txt" in root and "sub" in root and "a.txt" not in root
    assert "b.bin" in inside
    assert "b.bin" in found and "a.txt" not in gone


def test_changes_since_the_previous_backup_of_an_incremental_are_its_delta(
    client, admin_user, source, data_dir
):
    call_json("backup", source.name, "--inline")
    (data_dir / "new.txt").write_text("new\n")
    (data_dir / "a.txt").unlink()
    (data_dir / "sub" / "b.bin").write_bytes(b"other")
    delta = call_json("backup", source.name, "--inline", "--level", "incremental")
    client.force_login(admin_user)

    page = client.get(f"/runs/{delta['id']}/diff/")

    changes = {(c.kind, c.row.path) for c in page.context["changes"]}
    assert {("added", "new.txt"), ("removed", "a.txt"), ("changed", "sub/b.bin")} <= changes
    assert ("added", "sub/b.bin") not in changes


def test_the_fleet_file_carries_how_often_each_level_runs(tmp_path):
    call_command(
        "policy", "add", "chains", "--keep-last", "5", "--full-every", "7d",
        "--differential-every", "1d", stdout=StringIO(),
    )  # fmt: skip
    exported = tmp_path / "fleet.yaml"
    call_command("export", str(exported), stdout=StringIO())
    text = exported.read_text()
    assert "full_every: 1w" in text and "differential_every: 1d" in text
    Policy.objects.all().delete()

    call_command("apply", str(exported), stdout=StringIO())

    policy = Policy.objects.get(name="chains")
    assert (policy.full_every_s, policy.differential_every_s) == (7 * 86400, 86400)


def test_a_path_of_an_incremental_restores_in_place(source, data_dir):
    call_json("backup", source.name, "--inline")
    (data_dir / "new.txt").write_text("new\n")
    delta = call_json("backup", source.name, "--inline", "--level", "incremental")
    (data_dir / "sub" / "b.bin").write_bytes(b"damaged")
    (data_dir / "new.txt").write_text("edited since\n")

    run = call_json("restore", str(delta["id"]), "--in-place", "--yes", "--path", "sub", "--inline")

    assert run["status"] == "succeeded"
    assert (data_dir / "sub" / "b.bin").read_bytes() == bytes(range(256)) * 10
    assert (data_dir / "new.txt").read_text() == "edited since\n"


def test_the_runbook_of_an_incremental_restores_its_whole_chain(source, data_dir):
    call_json("backup", source.name, "--inline")
    (data_dir / "new.txt").write_text("new\n")
    delta = call_json("backup", source.name, "--inline", "--level", "incremental")

    runbook = (source.archive_dir / "RUNBOOK.md").read_text()
    assert f"restore-chain.sh . {manifest_path(delta).name}" in runbook

"""`status [--json]`: every source's standing, for people on a terminal and for scripts."""

import json
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from backups.models import Run
from backups.services.catalog import source_create
from tests.prune_helpers import CONTRACT_STATUS_FIELDS, make_backups

pytestmark = pytest.mark.django_db


def status_json(capsys) -> dict:
    call_command("status", "--json")
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def three(data_dir, policy):
    """Three sources under a two-hour RPO, backed up 30, 100 and 180 minutes ago."""
    now = timezone.now()
    for name, minutes in (("fresh", 30), ("aging", 100), ("stale", 180)):
        source = source_create(name=name, kind="directory", location=str(data_dir), policy=policy)
        make_backups(source, [now - timedelta(minutes=minutes)], files=False)


def test_status_json_shows_ok_at_risk_and_breached(three, capsys):
    sources = {s["name"]: s for s in status_json(capsys)["sources"]}
    assert {name: s["rpo_status"] for name, s in sources.items()} == {
        "aging": "at_risk",
        "fresh": "ok",
        "stale": "breached",
    }
    assert sources["fresh"]["age_s"] == pytest.approx(1800, abs=5)


def test_status_json_follows_the_contract_and_adds_the_next_run(source, capsys):
    make_backups(source, [timezone.now() - timedelta(minutes=5)], files=False)
    Run.objects.create(source=source, kind="backup")
    (entry,) = status_json(capsys)["sources"]
    assert set(entry) >= CONTRACT_STATUS_FIELDS
    assert entry["running"] is True
    assert entry["rto_status"] == "unproven" and entry["integrity"] == "unknown"
    assert entry["next_run_at"] is not None
    assert entry["next_run_at"] > timezone.now().isoformat()


def test_status_prints_a_table_a_person_reads(three, capsys):
    call_command("status")
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["SOURCE", "KIND", "LAST"]
    stale = next(line for line in lines if line.startswith("stale"))
    assert "breached (2h)" in stale and "3h ago" in stale and "unproven (30m)" in stale
    assert "in " in stale


def test_status_says_so_when_there_is_no_source(capsys):
    call_command("status")
    assert "No sources" in capsys.readouterr().out
    assert status_json(capsys) == {"sources": []}


def test_status_shows_a_source_never_backed_up(source, capsys):
    call_command("status")
    line = capsys.readouterr().out.splitlines()[1]
    assert line.startswith("files") and "never" in line and "unknown" in line


@pytest.mark.django_db(transaction=True)
def test_a_backup_made_by_a_host_whose_clock_is_ahead_leaves_the_rpo_unknown(
    source, capsys, monkeypatch
):
    # The backup runs on a worker whose clock is a day ahead, as a wrong clock would make it.
    real_now = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: real_now() + timedelta(days=1))
    with pytest.raises(SystemExit) as exit_:
        call_command("backup", source.name, "--inline", "--json")
    assert exit_.value.code == 0
    monkeypatch.undo()
    capsys.readouterr()
    (entry,) = status_json(capsys)["sources"]
    assert entry["rpo_status"] == "unknown"
    assert entry["rpo_note"].startswith("The newest good backup (#")
    assert "in the future" in entry["rpo_note"] and "clock" in entry["rpo_note"]
    call_command("status")
    table = capsys.readouterr().out
    assert "in the future" in table and entry["rpo_note"] in table

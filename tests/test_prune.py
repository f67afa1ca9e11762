"""Retention: what prune keeps and removes, the pins that always win, crash safety, CLI."""

import json
import socket
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from backups.models import AuditEvent, Manifest, Run
from backups.services.catalog import policy_create, source_create
from backups.services.prune import (
    PruneFenced,
    PruneRefused,
    _claim,
    _delete_owned,
    prune_execute,
    prune_plan,
    prune_recover,
)
from tests.prune_helpers import make_backups, paths_of

pytestmark = pytest.mark.django_db

END = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)


def hourly(hours, end=END):
    return [end - timedelta(hours=h) for h in range(hours)]


@pytest.fixture
def gfs(data_dir):
    policy = policy_create(name="gfs", keep_hourly=24, keep_daily=7, keep_weekly=4, keep_monthly=6)
    return source_create(name="web", kind="directory", location=str(data_dir), policy=policy)


def expected_gfs(times, tz, rules):
    """Compute restic's selection the slow, obvious way: for each rule, the newest backup
    of each of the N newest periods that hold one, and the oldest backup when a rule has
    fewer periods than N."""
    periods = {
        "hourly": lambda t: t.strftime("%Y-%m-%d %H"),
        "daily": lambda t: t.strftime("%Y-%m-%d"),
        "weekly": lambda t: "{}-W{:02}".format(*t.isocalendar()[:2]),
        "monthly": lambda t: t.strftime("%Y-%m"),
        "yearly": lambda t: t.strftime("%Y"),
    }
    # Local wall-clock times differ from UTC ones; the repeated autumn hour shares a label.
    kept = set()
    for rule, count in rules.items():
        if not count:
            continue
        newest_of = {}
        for moment in times:
            label = periods[rule](moment.astimezone(tz))
            if label not in newest_of or moment > newest_of[label]:
                newest_of[label] = moment
        labels = sorted(newest_of, key=lambda label: newest_of[label], reverse=True)
        kept.update(newest_of[label] for label in labels[:count])
        if len(labels) < count:
            kept.add(min(times))
    return kept


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin"])
def test_prune_on_sixty_days_of_hourly_backups_keeps_exactly_what_the_gfs_rules_say(
    gfs, settings, zone
):
    settings.RETENTION_TIME_ZONE = zone
    times = hourly(60 * 24)
    runs = make_backups(gfs, times)
    rules = {"hourly": 24, "daily": 7, "weekly": 4, "monthly": 6}
    expected = expected_gfs(times, ZoneInfo(zone), rules)
    # 24 hours, 7 days, 4 weeks, 3 months and the oldest, minus the overlaps.
    assert 33 <= len(expected) <= 40

    report = prune_execute(source=gfs)

    kept = {run.started_at for run in Run.objects.filter(source=gfs, status="succeeded")}
    assert kept == expected
    assert len(report["remove"]) == len(runs) - len(expected)
    assert Run.objects.filter(source=gfs, status="pruned").count() == len(runs) - len(expected)
    on_disk = {p.name for p in gfs.archive_dir.iterdir()}
    for run in runs:
        present = {p.name in on_disk for p in paths_of(run)}
        assert present == {run.started_at in expected}, run.started_at
    # History stays, saying what happened; the browsable manifests of removed backups go.
    assert Run.objects.filter(source=gfs).count() == len(runs)
    assert "removed by retention" in Run.objects.filter(status="pruned").first().log
    assert Manifest.objects.filter(run__source=gfs).count() == len(expected)


def test_pruning_twice_removes_nothing_more(gfs):
    make_backups(gfs, hourly(24 * 10))
    prune_execute(source=gfs)
    second = prune_execute(source=gfs)
    assert second["remove"] == []


def test_every_removed_backup_leaves_an_audit_record(gfs):
    runs = {run.pk: run for run in make_backups(gfs, hourly(24 * 3))}
    removed = [entry["id"] for entry in prune_execute(source=gfs)["remove"]]
    assert removed
    events = AuditEvent.objects.filter(action="backup.prune")
    assert sorted(int(event.object_id) for event in events) == sorted(removed)
    for event in events:
        assert (event.outcome, event.source, event.actor_name) == ("removed", gfs, "system")
        assert event.detail["archive"] == runs[int(event.object_id)].archive


def test_a_dry_run_lists_every_backup_with_its_reasons_and_changes_nothing(gfs):
    runs = make_backups(gfs, hourly(24 * 3))
    report = prune_execute(source=gfs, dry_run=True)
    listed = {e["id"] for e in report["keep"]} | {e["id"] for e in report["remove"]}
    assert listed == {run.pk for run in runs}
    newest = next(e for e in report["keep"] if e["id"] == runs[0].pk)
    assert newest["reasons"] == ["hourly", "daily", "weekly", "monthly"]
    assert newest["source"] == "web"
    assert set(report["remove"][0]) >= {"id", "source"}
    assert Run.objects.filter(source=gfs, status="succeeded").count() == len(runs)
    assert all(p.exists() for run in runs for p in paths_of(run))


def test_the_plan_is_the_same_whenever_it_is_made(gfs):
    make_backups(gfs, hourly(24 * 3))
    early = prune_plan(source=gfs, now=END)
    late = prune_plan(source=gfs, now=END + timedelta(days=30))
    assert [r.pk for r in early.remove] == [r.pk for r in late.remove]


def test_the_newest_verified_backup_is_never_removed(source):
    # The fixture's policy keeps the last 3.
    runs = make_backups(source, hourly(6))
    Run.objects.filter(pk=runs[4].pk).update(verified=True)
    Run.objects.filter(pk=runs[5].pk).update(verified=True)
    report = prune_execute(source=source)
    survivors = set(
        Run.objects.filter(source=source, status="succeeded").values_list("pk", flat=True)
    )
    assert survivors == {runs[0].pk, runs[1].pk, runs[2].pk, runs[4].pk}
    assert {"id": runs[4].pk, "source": "files", "reasons": ["verified"]}.items() <= next(
        e for e in report["keep"] if e["id"] == runs[4].pk
    ).items()


def test_a_failed_verification_pins_nothing(source):
    runs = make_backups(source, hourly(5))
    Run.objects.filter(pk=runs[4].pk).update(verified=False)
    prune_execute(source=source)
    assert Run.objects.get(pk=runs[4].pk).status == "pruned"


def test_a_backup_a_queued_restore_or_verify_reads_is_never_removed(source):
    runs = make_backups(source, hourly(6))
    Run.objects.create(source=source, kind="verify", backup=runs[5], exclusive=False)
    Run.objects.create(
        source=source, kind="restore", backup=runs[4], exclusive=False, status="running"
    )
    Run.objects.create(source=source, kind="verify", backup=runs[3], status="succeeded")
    report = prune_execute(source=source)
    assert Run.objects.get(pk=runs[5].pk).status == "succeeded"
    assert Run.objects.get(pk=runs[4].pk).status == "succeeded"
    assert Run.objects.get(pk=runs[3].pk).status == "pruned"
    reasons = {e["id"]: e["reasons"] for e in report["keep"]}
    assert reasons[runs[5].pk] == ["in use"]


def test_a_backup_a_user_pinned_is_never_removed(source):
    runs = make_backups(source, hourly(5))
    Run.objects.filter(pk=runs[4].pk).update(keep=True)
    report = prune_execute(source=source)
    assert Run.objects.get(pk=runs[4].pk).status == "succeeded"
    assert {e["id"]: e["reasons"] for e in report["keep"]}[runs[4].pk] == ["keep"]


def test_a_pin_set_after_the_plan_still_wins(source):
    runs = make_backups(source, hourly(5))
    plan = prune_plan(source=source)
    assert runs[4] in plan.remove
    Run.objects.filter(pk=runs[4].pk).update(keep=True)
    assert _claim([runs[4]], "host:1:a", timezone.now()) == ([], {runs[4].pk: "keep"})
    assert Run.objects.get(pk=runs[4].pk).status == "succeeded"


def test_a_policy_without_keep_rules_is_refused_and_removes_nothing(data_dir):
    policy = policy_create(name="forever")
    source = source_create(name="keepall", kind="directory", location=str(data_dir), policy=policy)
    make_backups(source, hourly(5))
    with pytest.raises(PruneRefused, match="no keep rule"):
        prune_execute(source=source)
    with pytest.raises(CommandError) as error:
        call_command("prune", "--source", "keepall")
    assert error.value.returncode == 2
    report = prune_execute()
    assert report["remove"] == [] and "no keep rule" in report["skipped"][0]["reason"]
    assert Run.objects.filter(source=source, status="succeeded").count() == 5


def test_an_archive_folder_that_cannot_be_listed_removes_nothing(source):
    runs = make_backups(source, hourly(6))
    source.archive_dir.rename(source.archive_dir.with_name("moved"))
    report = prune_execute(source=source)
    assert report["remove"] == []
    assert "Cannot list" in report["problems"][0]
    assert Run.objects.filter(source=source, status="succeeded").count() == len(runs)


def test_an_empty_archive_folder_while_the_catalog_has_archives_removes_nothing(source):
    runs = make_backups(source, hourly(6))
    moved = source.archive_dir.with_name("elsewhere")
    source.archive_dir.rename(moved)
    source.archive_dir.mkdir()
    report = prune_execute(source=source)
    assert report["remove"] == []
    assert "holds none of the 6 archive(s)" in report["problems"][0]
    assert {e["id"] for e in report["keep"]} == {run.pk for run in runs}
    assert all((moved / p.name).exists() for run in runs for p in paths_of(run))


def test_a_missing_archive_is_reported_and_does_not_count_towards_the_rules(source):
    runs = make_backups(source, hourly(6))
    # The newest archive vanished: keeping "the last 3" must mean 3 that exist.
    runs[0].archive_path.unlink()
    report = prune_execute(source=source)
    survivors = set(
        Run.objects.filter(source=source, status="succeeded").values_list("pk", flat=True)
    )
    assert survivors == {runs[0].pk, runs[1].pk, runs[2].pk, runs[3].pk}
    assert any(f"#{runs[0].pk}" in problem for problem in report["problems"])
    assert {e["id"]: e["reasons"] for e in report["keep"]}[runs[0].pk] == ["missing"]


def test_a_prune_interrupted_between_its_two_phases_is_finished_by_the_next(source, settings):
    runs = make_backups(source, hourly(5))
    # A pruner on this host marked the oldest, then died before deleting anything.
    dead = f"{socket.gethostname()}:{2**22 + 12345}:dead"
    Run.objects.filter(pk=runs[4].pk).update(
        status="pruning", worker=dead, heartbeat_at=timezone.now()
    )
    report = prune_execute(source=source)
    assert Run.objects.get(pk=runs[4].pk).status == "pruned"
    assert not any(p.exists() for p in paths_of(runs[4]))
    assert runs[4].pk in {e["id"] for e in report["remove"]}
    assert not Manifest.objects.filter(run=runs[4]).exists()


def test_a_prune_in_progress_elsewhere_is_left_to_its_pruner(source):
    runs = make_backups(source, hourly(5))
    Run.objects.filter(pk=runs[4].pk).update(
        status="pruning", worker="other-host:77:live", heartbeat_at=timezone.now()
    )
    report = prune_execute(source=source)
    assert Run.objects.get(pk=runs[4].pk).status == "pruning"
    assert all(p.exists() for p in paths_of(runs[4]))
    assert "being removed by other-host:77:live" in report["problems"][0]


def test_housekeeping_finishes_a_prune_whose_pruner_went_silent(source, settings):
    runs = make_backups(source, hourly(5))
    silent = timezone.now() - timedelta(seconds=settings.ABANDON_AFTER_S + 1)
    Run.objects.filter(pk=runs[4].pk).update(
        status="pruning", worker="lost-host:77:gone", heartbeat_at=silent
    )
    assert prune_recover() == [runs[4].pk]
    assert Run.objects.get(pk=runs[4].pk).status == "pruned"


def test_a_backup_pinned_while_its_pruner_was_away_is_given_back(source, settings):
    runs = make_backups(source, hourly(5), warnings=["a file changed while read"])
    silent = timezone.now() - timedelta(seconds=settings.ABANDON_AFTER_S + 1)
    Run.objects.filter(pk=runs[4].pk).update(
        status="pruning", worker="lost-host:77:gone", heartbeat_at=silent, keep=True
    )
    assert prune_recover() == []
    assert Run.objects.get(pk=runs[4].pk).status == "warning"
    assert all(p.exists() for p in paths_of(runs[4]))


def test_a_pruner_that_lost_its_run_deletes_nothing(source):
    runs = make_backups(source, hourly(5))
    claimed, _kept = _claim(runs[3:], "host-a:1:a", timezone.now())
    assert claimed == runs[3:]
    # host-a paused; host-b took one of its runs over.
    Run.objects.filter(pk=runs[4].pk).update(worker="host-b:2:b")
    with pytest.raises(PruneFenced):
        _delete_owned(claimed, "host-a:1:a")
    assert all(p.exists() for run in runs[3:] for p in paths_of(run))
    assert set(
        Run.objects.filter(pk__in=[r.pk for r in runs[3:]]).values_list("status", flat=True)
    ) == {"pruning"}


def test_prune_without_a_source_covers_every_source_with_a_policy(source, gfs):
    make_backups(source, hourly(5))
    make_backups(gfs, hourly(30))
    report = prune_execute()
    removed_from = {e["source"] for e in report["remove"]}
    assert removed_from == {"files", "web"}


def test_prune_json_follows_the_contract(source, capsys):
    runs = make_backups(source, hourly(4))
    call_command("prune", "--json")
    report = json.loads(capsys.readouterr().out)
    assert [e["id"] for e in report["remove"]] == [runs[3].pk]
    assert {"id", "source", "reasons"} <= set(report["keep"][0])
    assert report["keep"][0]["reasons"] == ["last"]


def test_prune_dry_run_prints_a_table_a_person_reads(source, capsys):
    make_backups(source, hourly(4))
    call_command("prune", "--dry-run", "--source", "files")
    out = capsys.readouterr().out
    assert "remove" in out and "last" in out
    assert "Would remove 1 backup(s) and keep 3. Nothing was changed." in out


def test_prune_refuses_an_unknown_source_with_exit_2():
    with pytest.raises(CommandError) as error:
        call_command("prune", "--source", "nope")
    assert error.value.returncode == 2


def test_prune_exits_1_when_a_discrepancy_held_removals_back(source, tmp_path):
    make_backups(source, hourly(5))
    source.archive_dir.rename(tmp_path / "gone")
    with pytest.raises(SystemExit) as exited:
        call_command("prune")
    assert exited.value.code == 1


# A real backup runs: its worker closes and reopens connections, as workers do.
@pytest.mark.django_db(transaction=True)
def test_a_successful_scheduled_backup_is_followed_by_a_prune(
    source, monkeypatch, django_capture_on_commit_callbacks
):
    from backups import tasks
    from backups.services import queue
    from backups.services.backup import backup_request

    make_backups(source, hourly(5))
    scheduled = backup_request(source=source, trigger=Run.Trigger.SCHEDULE, enqueue=False)
    queued = []
    monkeypatch.setattr(queue, "async_task", lambda *args, **kwargs: queued.append(args))
    with django_capture_on_commit_callbacks(execute=True):
        assert tasks.execute_run(scheduled.pk) == Run.Status.SUCCEEDED
    assert (queue.PRUNE_TASK, scheduled.pk) in queued
    # Five old backups and the new one, three kept by the policy's keep_last.
    assert tasks.prune_task(scheduled.pk) == "removed 3, kept 3"


# A real backup runs: its worker closes and reopens connections, as workers do.
@pytest.mark.django_db(transaction=True)
def test_a_manual_backup_is_not_followed_by_a_prune(
    source, monkeypatch, django_capture_on_commit_callbacks
):
    from backups import tasks
    from backups.services import queue
    from backups.services.backup import backup_request

    make_backups(source, hourly(1))
    manual = backup_request(source=source, trigger=Run.Trigger.CLI, enqueue=False)
    queued = []
    monkeypatch.setattr(queue, "async_task", lambda *args, **kwargs: queued.append(args))
    with django_capture_on_commit_callbacks(execute=True):
        assert tasks.execute_run(manual.pk) == Run.Status.SUCCEEDED
    assert [args for args in queued if args[0] == queue.PRUNE_TASK] == []
    assert [args[0] for args in queued] == [queue.TASK]  # its verification only


def test_files_outside_the_catalog_are_left_alone(source):
    make_backups(source, hourly(5))
    stray = source.archive_dir / "notes.txt"
    stray.write_text("mine")
    assert prune_execute(source=source)["remove"]  # the prune did remove backups
    assert stray.read_text() == "mine"

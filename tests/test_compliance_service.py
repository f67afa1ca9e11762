"""Compliance: each source's RPO/RTO standing, integrity and last 30 days, as time passes."""

from datetime import UTC, datetime, timedelta

import pytest
from django_q.models import Schedule

from backups.models import Run, Source
from backups.services.catalog import policy_create, source_create
from backups.services.compliance import (
    MISSED_LIMIT,
    fleet_standing,
    source_standing,
    standing_to_dict,
)
from backups.services.standing import standing_recompute, standing_refresh
from backups.services.timetable import BACKUP_TASK
from tests.prune_helpers import CONTRACT_STATUS_FIELDS, make_backups

pytestmark = pytest.mark.django_db

T = datetime(2026, 11, 16, 9, 0, tzinfo=UTC)


def at(**delta):
    return T + timedelta(**delta)


def plan_next_run(source, when):
    Schedule.objects.filter(func=BACKUP_TASK, args=repr(source.pk)).update(next_run=when)


def watched_since(source, when):
    Source.objects.filter(pk=source.pk).update(created_at=when)


def make_run(source, kind, *, started, seconds=60, status="succeeded", **fields):
    run = Run.objects.create(
        source=source,
        kind=kind,
        status=status,
        exclusive=kind == "backup",
        queued_at=started,
        started_at=started,
        finished_at=started + timedelta(seconds=seconds),
        **fields,
    )
    # As the services do when a run ends (history older than the newest backup included).
    standing_refresh(source.pk, since=started)
    return run


@pytest.fixture
def watched(source):
    """The fixture source (hourly schedule, RPO 2h, RTO 30m), watched for 60 days."""
    watched_since(source, T - timedelta(days=60))
    return source


def test_rpo_is_ok_then_at_risk_then_breached_as_time_passes(watched):
    make_backups(watched, [T], files=False)
    plan_next_run(watched, at(hours=1))
    assert source_standing(watched, now=at(minutes=30)).rpo_status == "ok"
    # Past 75% of the two-hour target, with no newer backup.
    plan_next_run(watched, at(hours=3))
    assert source_standing(watched, now=at(minutes=91)).rpo_status == "at_risk"
    assert source_standing(watched, now=at(hours=2)).rpo_status == "at_risk"
    breached = source_standing(watched, now=at(hours=2, seconds=1))
    assert breached.rpo_status == "breached"
    assert breached.age_s == 2 * 3600 + 1
    assert breached.last_success_at == T


def test_rpo_is_at_risk_when_the_next_scheduled_run_lands_after_the_deadline(watched):
    make_backups(watched, [T], files=False)
    plan_next_run(watched, at(hours=2, minutes=5))
    assert source_standing(watched, now=at(minutes=10)).rpo_status == "at_risk"


def test_an_overdue_schedule_counts_as_due_now(watched):
    make_backups(watched, [T], files=False)
    plan_next_run(watched, T - timedelta(hours=5))
    standing = source_standing(watched, now=at(minutes=10))
    assert standing.rpo_status == "ok"
    assert standing.next_run_at == T - timedelta(hours=5)


def test_rpo_is_unknown_without_a_successful_backup_or_a_target(watched, data_dir):
    make_run(watched, "backup", started=T, status="failed")
    assert source_standing(watched, now=at(minutes=1)).rpo_status == "unknown"
    untargeted = source_create(name="free", kind="directory", location=str(data_dir))
    make_backups(untargeted, [T], files=False)
    standing = source_standing(untargeted, now=at(minutes=1))
    assert (standing.rpo_status, standing.rpo_s, standing.within_target_30d) == (
        "unknown",
        None,
        None,
    )


def test_a_failed_newer_backup_does_not_reset_the_age(watched):
    make_backups(watched, [T], files=False)
    failed = make_run(watched, "backup", started=at(hours=1), status="failed")
    standing = source_standing(watched, now=at(hours=1, minutes=5))
    assert standing.last_success_at == T
    assert standing.last_backup == failed


def test_rto_is_ok_within_the_drill_interval_then_unproven(watched, policy):
    policy.drill_every_s = 7 * 86400
    policy.save()
    backup = make_backups(watched, [T], files=False)[0]
    make_run(
        watched, "verify", started=at(hours=1), drill=True, backup=backup, restore_seconds=95.5
    )
    standing = source_standing(watched, now=at(days=1))
    assert (standing.rto_status, standing.last_drill_s, standing.rto_s) == ("ok", 95.5, 1800)
    assert standing.last_drill_at == at(hours=1, seconds=60)
    assert source_standing(watched, now=at(days=8)).rto_status == "unproven"


def test_a_drill_slower_than_the_target_breaches_the_rto(watched):
    backup = make_backups(watched, [T], files=False)[0]
    make_run(
        watched, "verify", started=at(hours=1), drill=True, backup=backup, restore_seconds=1900
    )
    assert source_standing(watched, now=at(hours=2)).rto_status == "breached"


def test_a_real_restore_proves_the_rto_too(watched):
    backup = make_backups(watched, [T], files=False)[0]
    make_run(
        watched, "verify", started=at(hours=1), drill=True, backup=backup, restore_seconds=1900
    )
    make_run(watched, "restore", started=at(hours=2), backup=backup, restore_seconds=300)
    standing = source_standing(watched, now=at(hours=3))
    assert (standing.rto_status, standing.last_drill_s) == ("ok", 300)


def test_rto_is_unproven_without_any_drill(watched):
    make_backups(watched, [T], files=False)
    assert source_standing(watched, now=at(hours=1)).rto_status == "unproven"


def test_integrity_follows_the_newest_verification(watched):
    backup = make_backups(watched, [T], files=False)[0]
    assert source_standing(watched, now=at(hours=1)).integrity == "unknown"
    make_run(watched, "verify", started=at(minutes=5), backup=backup)
    assert source_standing(watched, now=at(hours=1)).integrity == "ok"
    make_run(watched, "verify", started=at(minutes=10), backup=backup, status="failed")
    assert source_standing(watched, now=at(hours=1)).integrity == "failed"
    # A cancelled verification proves nothing either way.
    make_run(watched, "verify", started=at(minutes=15), backup=backup, status="cancelled")
    assert source_standing(watched, now=at(hours=1)).integrity == "failed"


def test_verified_at_is_the_newest_verified_backup(watched):
    runs = make_backups(watched, [T, at(hours=1), at(hours=2)], files=False)
    Run.objects.filter(pk=runs[1].pk).update(verified=True)
    Run.objects.filter(pk=runs[2].pk).update(verified=False)
    standing_refresh(watched.pk)  # as the verification's end does
    standing = source_standing(watched, now=at(hours=3))
    assert standing.verified_at == at(hours=1)
    assert standing_to_dict(standing)["verified_age_s"] == 7200


def test_the_share_of_the_last_30_days_within_target(watched):
    # Hourly backups for the last ten days only: the twenty days before were uncovered.
    now = at(days=40)
    make_backups(watched, [now - timedelta(hours=h) for h in range(10 * 24)], files=False)
    standing = source_standing(watched, now=now)
    # 240 backups an hour apart cover 239 hours of the 720.
    assert standing.within_target_30d == pytest.approx(239 / 720)


def test_a_backup_pruned_since_still_covered_its_time(watched):
    now = at(days=40)
    make_backups(watched, [now - timedelta(hours=h) for h in range(30 * 24 + 1)], files=False)
    Run.objects.filter(source=watched, started_at__lt=now - timedelta(days=2)).update(
        status="pruned"
    )
    standing_refresh(watched.pk)  # as prune does
    assert source_standing(watched, now=now).within_target_30d == pytest.approx(1.0)


def test_time_before_a_source_was_added_is_not_held_against_it(source):
    watched_since(source, at(days=-1))
    make_backups(source, [T - timedelta(hours=h) for h in range(25)], files=False)
    assert source_standing(source, now=T).within_target_30d == pytest.approx(1.0)


def test_the_success_rate_of_the_last_30_days(watched):
    make_backups(watched, [T, at(hours=1), at(hours=2)], files=False)
    make_run(watched, "backup", started=at(hours=3), status="failed")
    make_run(watched, "backup", started=at(hours=4), status="cancelled")
    make_run(watched, "backup", started=at(hours=5), status="pruned")
    make_run(watched, "backup", started=at(days=-31), status="failed")
    assert source_standing(watched, now=at(hours=6)).success_rate_30d == pytest.approx(4 / 5)


def test_the_counts_cover_whole_days_from_the_day_the_window_opens(watched):
    # The window opens on 17 October at 09:00; that whole day counts, the day before not.
    make_run(watched, "backup", started=at(days=-30, hours=-3), status="failed")
    make_run(watched, "backup", started=at(days=-30, hours=-10), status="failed")
    make_backups(watched, [at(hours=1)], files=False)
    assert source_standing(watched, now=at(hours=2)).success_rate_30d == pytest.approx(1 / 2)


def test_missed_slots_are_counted_from_the_cron_slots_and_the_runs_that_happened(source):
    watched_since(source, T - timedelta(hours=10, minutes=30))
    plan_next_run(source, at(hours=1))
    # Slots 23:00 .. 08:00 UTC; the cluster was down from 02:00 to 06:00 and came back at
    # 06:20, when the scheduler ran the overdue schedule once.
    down = {T - timedelta(hours=h) for h in (3, 4, 5, 6, 7)}
    slots = [T - timedelta(hours=h) for h in range(1, 11)]
    times = [slot + timedelta(seconds=20) for slot in slots if slot not in down]
    times.append(T - timedelta(hours=2, minutes=40))
    make_backups(source, times, files=False)
    standing = source_standing(source, now=T)
    # 02:00, 03:00, 04:00, 05:00 were missed; the 06:00 slot was met by the 06:20 run.
    assert standing.missed_30d == 4


def test_a_busy_slot_skipped_counts_as_missed(source):
    watched_since(source, T - timedelta(hours=3, minutes=30))
    plan_next_run(source, at(hours=1))
    make_backups(source, [T - timedelta(hours=3, seconds=-10)], files=False)
    make_backups(source, [T - timedelta(hours=1, seconds=-10)], files=False)
    assert source_standing(source, now=T).missed_30d == 1


def test_a_slot_within_its_tolerance_is_not_yet_missed(source):
    watched_since(source, T - timedelta(hours=1, minutes=30))
    plan_next_run(source, at(hours=1))
    make_backups(source, [T - timedelta(hours=1, seconds=-10)], files=False)
    # The 09:00 slot has had no backup yet, but its hour is not over.
    assert source_standing(source, now=at(minutes=5)).missed_30d == 0
    assert source_standing(source, now=at(hours=1, minutes=1)).missed_30d == 1


def test_an_unscheduled_source_misses_nothing(data_dir):
    source = source_create(name="manual", kind="directory", location=str(data_dir))
    watched_since(source, T - timedelta(days=10))
    assert source_standing(source, now=T).missed_30d == 0


def test_a_minutely_schedule_is_judged_without_walking_every_slot(
    data_dir, django_assert_max_num_queries
):
    policy = policy_create(name="minutely", schedule="* * * * *", rpo_s=300, keep_last=5)
    source = source_create(name="busy", kind="directory", location=str(data_dir), policy=policy)
    watched_since(source, T - timedelta(days=1) + timedelta(minutes=2))
    times = [T - timedelta(minutes=m, seconds=-5) for m in range(1, 24 * 60)]
    make_backups(
        source, [t for t in times if not (100 <= (T - t).total_seconds() // 60 < 110)], files=False
    )
    plan_next_run(source, at(minutes=1))
    with django_assert_max_num_queries(5):
        assert source_standing(source, now=T).missed_30d == 10
    # Watched for 40 days, backed up for one: the count stops at its limit.
    watched_since(source, T - timedelta(days=40))
    # An edit behind the services' back: housekeeping's recompute derives the days again.
    standing_recompute(source_ids=[source.pk])
    assert source_standing(source, now=T).missed_30d == MISSED_LIMIT


def test_the_active_run_and_the_next_run_are_shown(watched):
    make_backups(watched, [T], files=False)
    Run.objects.create(source=watched, kind="verify", exclusive=False)  # queued
    running = Run.objects.create(source=watched, kind="backup", status="running")
    plan_next_run(watched, at(hours=1))
    standing = source_standing(watched, now=at(minutes=1))
    assert standing.running == running  # the running backup, not the queued verify
    assert standing.next_run_at == at(hours=1)
    data = standing_to_dict(standing)
    assert data["running"] is True
    assert data["active_run"] == {"id": running.pk, "kind": "backup", "status": "running"}
    assert data["next_run_at"] == at(hours=1).isoformat()


def test_the_status_object_has_the_contract_fields(watched):
    make_backups(watched, [T], files=False)
    data = standing_to_dict(source_standing(watched, now=at(minutes=30)))
    assert set(data) >= CONTRACT_STATUS_FIELDS
    assert (data["name"], data["kind"], data["age_s"], data["rpo_s"]) == (
        "files",
        "directory",
        1800.0,
        7200,
    )
    assert data["last_success_at"] == T.isoformat()


def _fleet(data_dir, policy, count):
    for index in range(count):
        source = source_create(
            name=f"src{index:02}", kind="directory", location=str(data_dir), policy=policy
        )
        runs = make_backups(source, [T - timedelta(hours=h) for h in range(5)], files=False)
        make_run(
            source, "verify", started=at(minutes=1), backup=runs[0], drill=True, restore_seconds=10
        )
        make_run(source, "backup", started=at(minutes=2), status="failed")
        Run.objects.create(source=source, kind="restore", backup=runs[1], exclusive=False)


@pytest.mark.parametrize("count", [1, 30])
def test_the_fleet_costs_the_same_five_queries_for_1_or_30_sources(
    data_dir, policy, count, django_assert_num_queries
):
    _fleet(data_dir, policy, count)
    # The sources with their stored standing and its two runs (one join), the runs in
    # progress, the 30-day counts and RPO gaps (one sum each), the schedules.
    with django_assert_num_queries(5):
        standings = fleet_standing(now=at(hours=1))
        dicts = [standing_to_dict(s) for s in standings]
    assert len(dicts) == count
    assert all(d["running"] and d["rto_status"] == "ok" for d in dicts)


def test_the_fleet_can_be_narrowed_to_some_sources(data_dir, policy):
    _fleet(data_dir, policy, 3)
    standings = fleet_standing(now=at(hours=1), sources=Source.objects.filter(name="src01"))
    assert [s.source.name for s in standings] == ["src01"]

"""Schedules: one django-q2 cron schedule per source, kept in sync; scheduled work runs once."""

from datetime import UTC, datetime, timedelta

import pytest
from django.urls import reverse
from django.utils import timezone
from django_q.conf import Conf
from django_q.models import OrmQ, Schedule
from django_q.scheduler import scheduler

from backups import tasks
from backups.models import Run, ScheduleMiss, Source
from backups.services.catalog import policy_create, source_create
from backups.services.runs import run_claim
from backups.services.schedules import (
    HOUSEKEEPING_TASK,
    drills_queue_due,
    housekeeping_run,
    schedule_sync,
    schedule_sync_all,
)
from backups.services.timetable import BACKUP_TASK, next_run_at
from tests.prune_helpers import make_backups
from tests.test_admin import POLICY_FORM

pytestmark = pytest.mark.django_db


def backup_schedules():
    return Schedule.objects.filter(func=BACKUP_TASK)


@pytest.fixture
def run_tasks_in_process(monkeypatch):
    """Make async_task execute at once, in this process, as a worker would."""
    monkeypatch.setattr(Conf, "SYNC", True)


def source_form(policy, **changes):
    return {
        "name": "files",
        "slug": "files",
        "kind": "directory",
        "excludes": "[]",
        "policy": policy.pk,
        "owner": "",
        "enabled": "on",
        "notes": "",
        **changes,
    }


def test_creating_a_scheduled_source_creates_its_cron_schedule(source, settings):
    schedule = backup_schedules().get()
    assert schedule.schedule_type == Schedule.CRON
    assert schedule.cron == "0 * * * *"
    assert schedule.args == repr(source.pk)
    assert schedule.repeats == -1
    assert schedule.next_run > timezone.now()
    assert schedule.next_run.minute == 0 and schedule.next_run.second == 0


def test_the_first_run_follows_the_time_zone_of_the_schedules(data_dir, settings):
    settings.TIME_ZONE = "America/New_York"
    policy = policy_create(name="nightly", schedule="0 3 * * *", keep_last=1)
    source = source_create(name="n", kind="directory", location=str(data_dir), policy=policy)
    Schedule.objects.filter(func=BACKUP_TASK).update(next_run=None)
    now = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
    schedule_sync(source, now=now)
    # 03:00 in New York in July is 07:00 UTC.
    assert next_run_at(source) == datetime(2026, 7, 2, 7, 0, tzinfo=UTC)


def test_unscheduled_and_disabled_sources_have_no_schedule(data_dir):
    manual = policy_create(name="manual", keep_last=1)
    hourly = policy_create(name="h", schedule="0 * * * *", keep_last=1)
    source_create(name="a", kind="directory", location=str(data_dir), policy=manual)
    source_create(name="b", kind="directory", location=str(data_dir))
    source_create(name="c", kind="directory", location=str(data_dir), policy=hourly, enabled=False)
    assert not backup_schedules().exists()


def test_changing_a_policy_schedule_in_the_admin_moves_every_source_schedule(
    client, admin_user, source, policy
):
    client.force_login(admin_user)
    form = {**POLICY_FORM, "name": policy.name, "schedule": "*/15 * * * *"}
    response = client.post(reverse("admin:backups_policy_change", args=[policy.pk]), form)
    assert response.status_code == 302, response.content
    schedule = backup_schedules().get()
    assert schedule.cron == "*/15 * * * *"
    assert schedule.next_run.minute % 15 == 0


def test_clearing_a_policy_schedule_in_the_admin_removes_the_schedules(
    client, admin_user, source, policy
):
    client.force_login(admin_user)
    form = {**POLICY_FORM, "name": policy.name, "schedule": ""}
    client.post(reverse("admin:backups_policy_change", args=[policy.pk]), form)
    assert not backup_schedules().exists()


def test_disabling_a_source_in_the_admin_removes_its_schedule(
    client, admin_user, source, policy, data_dir
):
    client.force_login(admin_user)
    form = source_form(policy, location=str(data_dir))
    del form["enabled"]
    response = client.post(reverse("admin:backups_source_change", args=[source.pk]), form)
    assert response.status_code == 302, response.content
    assert not backup_schedules().exists()
    form["enabled"] = "on"
    client.post(reverse("admin:backups_source_change", args=[source.pk]), form)
    assert backup_schedules().get().args == repr(source.pk)


def test_adding_a_source_in_the_admin_schedules_it(client, admin_user, policy, data_dir):
    client.force_login(admin_user)
    form = source_form(policy, name="new", slug="new", location=str(data_dir))
    response = client.post(reverse("admin:backups_source_add"), form)
    assert response.status_code == 302, response.content
    assert backup_schedules().get().args == repr(Source.objects.get(name="new").pk)


def test_deleting_a_source_in_the_admin_removes_its_schedule(client, admin_user, source):
    client.force_login(admin_user)
    response = client.post(
        reverse("admin:backups_source_delete", args=[source.pk]), {"post": "yes"}
    )
    assert response.status_code == 302, response.content
    assert not backup_schedules().exists()


def test_sync_all_repairs_missing_stale_and_orphan_schedules(source, data_dir, policy):
    other = source_create(name="other", kind="directory", location=str(data_dir), policy=policy)
    backup_schedules().filter(args=repr(source.pk)).delete()
    backup_schedules().filter(args=repr(other.pk)).update(cron="5 5 * * *")
    Schedule.objects.create(func=BACKUP_TASK, args="999999", schedule_type="C", cron="* * * * *")
    Schedule.objects.filter(func=HOUSEKEEPING_TASK).delete()
    schedule_sync_all()
    assert sorted(backup_schedules().values_list("args", "cron")) == sorted(
        [(repr(source.pk), "0 * * * *"), (repr(other.pk), "0 * * * *")]
    )
    housekeeping = Schedule.objects.get(func=HOUSEKEEPING_TASK)
    assert housekeeping.cron == "* * * * *"


def test_sync_all_costs_the_same_few_queries_for_any_number_of_sources(
    source, data_dir, policy, django_assert_max_num_queries
):
    for index in range(20):
        source_create(name=f"s{index}", kind="directory", location=str(data_dir), policy=policy)
    with django_assert_max_num_queries(6):
        schedule_sync_all()


def test_migrating_creates_the_housekeeping_schedule():
    schedule = Schedule.objects.get(func=HOUSEKEEPING_TASK)
    assert (schedule.schedule_type, schedule.cron) == (Schedule.CRON, "* * * * *")


def test_catch_up_is_off_in_the_scheduler_configuration():
    assert Conf.CATCH_UP is False


# Real commits: the scheduler's task runs the backup in this process, as a worker would,
# and a worker starts by dropping connections left inside a transaction.
@pytest.mark.django_db(transaction=True)
def test_a_schedule_overdue_after_downtime_runs_one_backup_and_moves_past_now(
    source, run_tasks_in_process
):
    # The cluster was down for five hours of an hourly schedule. (That the missed slots
    # are not each replayed is the scheduler's catch-up setting, checked above and by E005:
    # django-q2 computes a cron schedule's next run from now, so this test alone would not
    # notice catch-up being switched on.)
    backup_schedules().update(next_run=timezone.now() - timedelta(hours=5, minutes=1))
    scheduler()
    backups = Run.objects.filter(source=source, kind="backup")
    assert backups.count() == 1
    backup = backups.get()
    assert (backup.trigger, backup.status) == ("schedule", "succeeded")
    assert backup.archive_path.exists()
    assert backup_schedules().get().next_run > timezone.now()
    # The next pass finds nothing due.
    scheduler()
    assert Run.objects.filter(source=source, kind="backup").count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_scheduler_runs_a_due_backup_and_its_verification(source, run_tasks_in_process):
    backup_schedules().update(next_run=timezone.now() - timedelta(seconds=1))
    scheduler()
    backup = Run.objects.get(source=source, kind="backup")
    assert backup.status == "succeeded"
    verify = Run.objects.get(kind="verify", backup=backup)
    assert verify.status == "succeeded" and verify.trigger == "schedule"


def test_a_scheduled_backup_of_a_busy_source_is_recorded_as_a_miss_with_its_reason(
    source, client, viewer
):
    busy = Run.objects.create(source=source, kind="backup")
    assert tasks.scheduled_backup(source.pk) == "skipped"
    assert Run.objects.filter(source=source).count() == 1
    miss = ScheduleMiss.objects.get(source=source)
    assert miss.blocker_id == busy.pk and f"backup #{busy.pk}" in miss.reason
    client.force_login(viewer)
    page = client.get(reverse("source-detail", args=[source.slug])).content.decode()
    assert "Slots skipped recently" in page and f"backup #{busy.pk} (queued)" in page


def _sent_run_ids() -> list[int]:
    """Return the run ids of the tasks waiting in the ORM broker, oldest first."""
    return [row.task["args"][0] for row in OrmQ.objects.order_by("pk")]


def test_housekeeping_hands_a_run_whose_task_was_lost_to_the_workers_again(
    source, settings, django_capture_on_commit_callbacks
):
    # Queued, but its task died with a worker: nothing in the broker names it.
    now = timezone.now()
    waited = timedelta(seconds=settings.QUEUE_RESEND_AFTER_S + 1)
    lost = Run.objects.create(source=source, kind="backup", queued_at=now - waited)
    fresh = Run.objects.create(
        source=source, kind="verify", exclusive=False, queued_at=now - timedelta(seconds=5)
    )
    assert _sent_run_ids() == []

    with django_capture_on_commit_callbacks(execute=True):
        report = housekeeping_run(now=now)

    assert report["resent"] == [lost.pk] and fresh.pk not in _sent_run_ids()
    assert _sent_run_ids() == [lost.pk]
    # Not again at the next pass: the next re-send waits twice as long.
    with django_capture_on_commit_callbacks(execute=True):
        assert housekeeping_run(now=now + waited)["resent"] == [fresh.pk]
        assert housekeeping_run(now=now + 2 * waited)["resent"] == [lost.pk]
    assert Run.objects.get(pk=lost.pk).resends == 2


@pytest.mark.django_db(transaction=True)  # the worker's connection commits, as in production
def test_a_lost_task_sent_twice_still_runs_once(source, settings, run_tasks_in_process):
    lost = Run.objects.create(
        source=source,
        kind="backup",
        queued_at=timezone.now() - timedelta(seconds=settings.QUEUE_RESEND_AFTER_S + 1),
    )
    assert tasks.execute_run(lost.pk) == "succeeded"
    # A second delivery of the same run (the task was not lost after all) does nothing.
    assert tasks.execute_run(lost.pk) == "succeeded"
    assert len(list(source.archive_dir.glob("*.tar.zst"))) == 1


def test_a_scheduled_backup_goes_ahead_after_a_dead_worker_is_reaped(
    source, settings, django_capture_on_commit_callbacks
):
    dead = run_claim(Run.objects.create(source=source, kind="backup").pk, "gone:1:x")
    Run.objects.filter(pk=dead.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=settings.ABANDON_AFTER_S + 1)
    )
    with django_capture_on_commit_callbacks(execute=False):
        result = tasks.scheduled_backup(source.pk)
    assert result.startswith("queued backup #")
    assert Run.objects.get(pk=dead.pk).status == "abandoned"


def test_a_slot_firing_for_a_source_disabled_since_is_skipped_and_unscheduled(source):
    Source.objects.filter(pk=source.pk).update(enabled=False)
    assert tasks.scheduled_backup(source.pk) == "skipped"
    assert not Run.objects.exists()
    assert not backup_schedules().exists()


def test_a_slot_firing_for_a_deleted_source_removes_its_schedule(source):
    source_id = source.pk
    Source.objects.filter(pk=source_id).delete()
    assert tasks.scheduled_backup(source_id) == "skipped"
    assert not backup_schedules().exists()


@pytest.fixture
def drilled(source, policy):
    policy.drill_every_s = 7 * 86400
    policy.save()
    return source


def test_housekeeping_queues_a_drill_of_the_newest_good_backup_when_due(
    drilled, django_capture_on_commit_callbacks
):
    now = timezone.now()
    runs = make_backups(drilled, [now - timedelta(hours=2), now - timedelta(hours=1)])
    make_backups(drilled, [now - timedelta(minutes=5)], status="failed", files=False)
    with django_capture_on_commit_callbacks(execute=False):
        report = housekeeping_run(now=now)
    drill = Run.objects.get(pk=report["drills"][0])
    assert (drill.kind, drill.drill, drill.trigger, drill.backup_id) == (
        "verify",
        True,
        "schedule",
        runs[1].pk,
    )


def test_no_drill_is_queued_before_the_interval_has_passed(drilled):
    now = timezone.now()
    runs = make_backups(drilled, [now - timedelta(days=3)])
    Run.objects.create(
        source=drilled,
        kind="verify",
        drill=True,
        backup=runs[0],
        status="succeeded",
        exclusive=False,
        queued_at=now - timedelta(days=6),
    )
    assert drills_queue_due(now=now) == []
    later = drills_queue_due(now=now + timedelta(days=1, seconds=1))
    assert len(later) == 1


def test_no_second_drill_is_queued_while_one_is_waiting(drilled):
    now = timezone.now()
    runs = make_backups(drilled, [now - timedelta(days=3)])
    Run.objects.create(
        source=drilled,
        kind="verify",
        drill=True,
        backup=runs[0],
        exclusive=False,
        queued_at=now - timedelta(days=30),
    )
    assert drills_queue_due(now=now) == []


def test_a_source_without_a_good_backup_gets_no_drill(drilled):
    assert drills_queue_due() == []


def test_housekeeping_hands_the_slot_of_an_abandoned_scheduled_backup_to_another_worker(
    source, settings
):
    dead = run_claim(
        Run.objects.create(source=source, kind="backup", trigger="schedule").pk, "gone:1:x"
    )
    later = timezone.now() + timedelta(seconds=settings.ABANDON_AFTER_S + 1)
    report = housekeeping_run(now=later)
    assert report["abandoned"] == [dead.pk]
    again = Run.objects.get(pk=report["handed_over"][0])
    assert (again.status, again.trigger, again.source_id) == ("queued", "schedule", source.pk)
    # Once: the next pass sees a newer backup of the source.
    assert housekeeping_run(now=later)["handed_over"] == []


def test_a_manual_backup_abandoned_is_not_handed_over(source, settings):
    dead = run_claim(Run.objects.create(source=source, kind="backup").pk, "gone:1:x")
    later = timezone.now() + timedelta(seconds=settings.ABANDON_AFTER_S + 1)
    report = housekeeping_run(now=later)
    assert report["abandoned"] == [dead.pk] and report["handed_over"] == []


def test_housekeeping_reaps_runs_whose_heartbeat_stopped(source, settings):
    dead = run_claim(Run.objects.create(source=source, kind="backup").pk, "gone:1:x")
    later = timezone.now() + timedelta(seconds=settings.ABANDON_AFTER_S + 1)
    report = housekeeping_run(now=later)
    assert report["abandoned"] == [dead.pk]
    assert Run.objects.get(pk=dead.pk).status == "abandoned"


def test_the_housekeeping_task_reports_what_it_did(source):
    assert tasks.housekeeping() == {
        "abandoned": [],
        "handed_over": [],
        "resent": [],
        "prunes_finished": [],
        "drills": [],
        "copies": [],
        "archive_tier": {"copies": [], "moved": []},
        "uploads_aborted": [],
        # The fixture's source never had a run ended, so no standing was stored yet.
        "standing": {"stale": 1, "derived": 1},
        # Nothing fires: its RTO target waits for its first backup and a drill interval.
        "alerts": {"transitions": 0, "queued": 0, "firing": 0, "messages_forgotten": 0},
    }

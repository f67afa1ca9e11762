"""Scheduled work through django-q2's scheduler: one cron schedule per source, housekeeping.

Each enabled source whose policy has a schedule owns exactly one django-q2 `Schedule` of
type CRON that calls `backups.tasks.scheduled_backup` with the source id. The catalog's
create paths and the admin call `schedule_sync` after a change, and housekeeping calls
`schedule_sync_all` every minute, so a change made any other way is caught up within a
minute. With `catch_up: False` (enforced by a start-up check) a schedule that was missed
during downtime runs once, not once per missed slot; the missed slots are computed later
by the compliance service from the cron expression and the runs that did happen.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, Subquery
from django.utils import timezone
from django_q.models import Schedule

from backups.engine.durations import next_run
from backups.models import Run, ScheduleMiss, Source, Storage, WorkerBeat
from backups.services.alerts import alerts_housekeeping
from backups.services.backup import backup_hand_over, backup_request
from backups.services.copy import archive_due, copies_retry_due
from backups.services.prune import prune_recover
from backups.services.queue import runs_resend_lost
from backups.services.runs import (
    SourceBusy,
    abort_dead_uploads,
    reap_abandoned,
    worker_identity,
)
from backups.services.standing import standing_housekeeping
from backups.services.timetable import BACKUP_TASK, backup_schedules
from backups.services.verify import verify_request

logger = logging.getLogger(__name__)

HOUSEKEEPING_TASK = "backups.tasks.housekeeping"
HOUSEKEEPING_NAME = "housekeeping"
HOUSEKEEPING_CRON = "* * * * *"


def schedule_zone() -> ZoneInfo:
    """Return the zone in which cron schedules are read (the TIME_ZONE setting)."""
    return ZoneInfo(settings.TIME_ZONE)


def _wanted_cron(source: Source | None) -> str | None:
    if source is None or not source.enabled or source.policy is None:
        return None
    return source.policy.schedule.strip() or None


def _schedule_name(source: Source) -> str:
    return f"backup {source.name}"[:100]


def _first_run(cron: str, now: datetime) -> datetime:
    return next_run(cron, now, schedule_zone())


@dataclass
class _ScheduleWrites:
    """The writes that bring schedules in line, gathered so many sources cost few queries."""

    now: datetime
    create: list[Schedule] = field(default_factory=list)
    delete: list[int] = field(default_factory=list)
    # The same changes (a policy's new cron for all its sources) become one UPDATE.
    update: dict[tuple, list[int]] = field(default_factory=dict)
    first_runs: dict[str, datetime] = field(default_factory=dict)

    def first_run(self, cron: str) -> datetime:
        if cron not in self.first_runs:
            self.first_runs[cron] = _first_run(cron, self.now)
        return self.first_runs[cron]

    def execute(self) -> None:
        for chunk in _chunks(self.delete):
            Schedule.objects.filter(pk__in=chunk).delete()
        # Schedule.save() would compute the first run with the process's own clock and zone;
        # ours comes from the same TIME_ZONE through the engine, testable with any `now`.
        Schedule.objects.bulk_create(self.create)
        for changes, pks in self.update.items():
            for chunk in _chunks(pks):
                Schedule.objects.filter(pk__in=chunk).update(**dict(changes))
        updated = sum(len(pks) for pks in self.update.values())
        if self.create or updated or self.delete:
            # One line per sync, not per source: an apply of a thousand sources is one event.
            logger.info(
                "schedules: %d created, %d updated, %d removed",
                len(self.create),
                updated,
                len(self.delete),
            )


def _chunks(pks: list[int], size: int = 500):
    for start in range(0, len(pks), size):
        yield pks[start : start + size]


def _apply(source: Source, existing: list[Schedule], writes: _ScheduleWrites) -> None:
    """Plan the writes that make the schedules in `existing` (all for `source`) match it."""
    cron = _wanted_cron(source)
    if cron is None:
        if existing:
            writes.delete.extend(s.pk for s in existing)
            logger.debug("removed the schedule of source %s", source.pk)
        return
    keep, *extra = existing or [None]
    writes.delete.extend(s.pk for s in extra)
    if keep is None:
        writes.create.append(
            Schedule(
                name=_schedule_name(source),
                func=BACKUP_TASK,
                args=repr(source.pk),
                schedule_type=Schedule.CRON,
                cron=cron,
                repeats=-1,
                next_run=writes.first_run(cron),
            )
        )
        logger.debug("scheduled source %s: %s", source.pk, cron)
        return
    changes = {}
    if keep.cron != cron or keep.schedule_type != Schedule.CRON:
        changes.update(cron=cron, schedule_type=Schedule.CRON, next_run=writes.first_run(cron))
    if keep.name != _schedule_name(source):
        changes["name"] = _schedule_name(source)
    if keep.repeats != -1:
        changes["repeats"] = -1
    if keep.next_run is None:
        changes["next_run"] = writes.first_run(cron)
    if changes:
        writes.update.setdefault(tuple(sorted(changes.items())), []).append(keep.pk)
        logger.debug("updated the schedule of source %s: %s", source.pk, sorted(changes))


def _source_id(schedule: Schedule) -> int | None:
    try:
        return int(str(schedule.args).strip().strip("(),"))
    except ValueError:
        return None


def schedule_sync(source: Source, *, now: datetime | None = None) -> None:
    """Create, update or remove the django-q2 schedule of `source` to match the catalog.

    Reads the source and its policy again from the database, so a caller holding a stale
    copy (or one just deleted) still ends with the right schedule.
    """
    now = now or timezone.now()
    with transaction.atomic():
        fresh = (
            Source.objects.select_related("policy").filter(pk=source.pk).first()
            if source.pk
            else None
        )
        existing = list(backup_schedules().filter(args=repr(source.pk)))
        if fresh is None:
            if existing:
                Schedule.objects.filter(pk__in=[s.pk for s in existing]).delete()
            return
        writes = _ScheduleWrites(now=now)
        _apply(fresh, existing, writes)
        writes.execute()


def schedule_sync_policy(policy, *, now: datetime | None = None) -> None:
    """Bring the schedules of every source under `policy` in line after it changed."""
    now = now or timezone.now()
    with transaction.atomic():
        sources = list(Source.objects.select_related("policy").filter(policy=policy))
        by_source: dict[int | None, list[Schedule]] = {}
        for schedule in backup_schedules().filter(args__in=[repr(s.pk) for s in sources]):
            by_source.setdefault(_source_id(schedule), []).append(schedule)
        writes = _ScheduleWrites(now=now)
        for source in sources:
            _apply(source, by_source.get(source.pk, []), writes)
        writes.execute()


def schedule_sync_all(*, now: datetime | None = None) -> None:
    """Reconcile every backup schedule with the catalog, and make sure housekeeping runs.

    Costs a constant number of queries when nothing changed: one for the sources, one for
    the schedules. Changes are written in batches (bulk inserts, one UPDATE per distinct
    change), so a thousand new sources cost a handful of queries, not two each.
    """
    now = now or timezone.now()
    with transaction.atomic():
        by_source: dict[int | None, list[Schedule]] = {}
        for schedule in backup_schedules():
            by_source.setdefault(_source_id(schedule), []).append(schedule)
        writes = _ScheduleWrites(now=now)
        for source in Source.objects.select_related("policy"):
            _apply(source, by_source.pop(source.pk, []), writes)
        orphans = [s.pk for schedules in by_source.values() for s in schedules]
        if orphans:
            writes.delete.extend(orphans)
            logger.info("removed %d schedule(s) of deleted sources", len(orphans))
        writes.execute()
        housekeeping_ensure(now=now)


def housekeeping_ensure(*, now: datetime | None = None) -> Schedule:
    """Return the every-minute housekeeping schedule, creating it when it is missing."""
    existing = Schedule.objects.filter(func=HOUSEKEEPING_TASK).order_by("pk")
    schedule = existing.first()
    if schedule is not None:
        existing.exclude(pk=schedule.pk).delete()
        return schedule
    schedule = Schedule(
        name=HOUSEKEEPING_NAME,
        func=HOUSEKEEPING_TASK,
        schedule_type=Schedule.CRON,
        cron=HOUSEKEEPING_CRON,
        repeats=-1,
    )
    schedule.save()
    return schedule


def backup_scheduled(*, source_id: int) -> Run | None:
    """Start the scheduled backup of a source; when it is busy, record the slot as missed.

    A run whose worker died does not block the slot: `backup_request` declares it
    abandoned and goes ahead. A backup still waiting in the queue is handed to the
    workers again by housekeeping (`runs_resend_lost`), not here. Return the new run, or
    None when the slot was skipped.
    """
    source = Source.objects.select_related("policy").filter(pk=source_id).first()
    if _wanted_cron(source) is None:
        # The source was disabled, deleted or lost its schedule since the slot fired.
        logger.info("scheduled backup of source %s skipped: it is not scheduled", source_id)
        if source is None:
            backup_schedules().filter(args=repr(source_id)).delete()
        else:
            schedule_sync(source)
        return None
    try:
        return backup_request(source=source, trigger=Run.Trigger.SCHEDULE)
    except SourceBusy as busy:
        logger.info("scheduled backup of %s skipped: %s", source.name, busy)
        ScheduleMiss.objects.create(source=source, reason=str(busy), blocker=busy.active)
        return None


def backups_hand_over_abandoned(*, now: datetime) -> list[int]:
    """Hand over the scheduled backups abandoned within the hour that nothing replaced.

    Whoever declared them abandoned (housekeeping, a worker starting, a request that
    found the source held), the slot is queued again once; a source that got any backup
    after the abandoned one is left alone. Return the new runs' ids.
    """
    newer = Run.objects.filter(
        source=OuterRef("source"), kind=Run.Kind.BACKUP, queued_at__gt=OuterRef("queued_at")
    )
    lost = (
        Run.objects.filter(
            kind=Run.Kind.BACKUP,
            trigger=Run.Trigger.SCHEDULE,
            status=Run.Status.ABANDONED,
            finished_at__gte=now - timedelta(hours=1),
            source__enabled=True,
        )
        .exclude(Exists(newer))
        .select_related("source")
    )
    return [again.pk for run in lost if (again := backup_hand_over(run)) is not None]


def drills_queue_due(*, now: datetime | None = None) -> list[Run]:
    """Queue a restore drill of the newest good backup of each source whose drill is due.

    A drill is due when the source's policy sets a drill interval and the newest drill
    (whatever its outcome, so a failing drill is retried once per interval, not every
    minute) was queued longer ago than that interval, or never. A source with a drill
    still queued or running gets none. Return the drills queued.
    """
    now = now or timezone.now()
    drills = Run.objects.filter(source=OuterRef("pk"), kind=Run.Kind.VERIFY, drill=True)
    sources = (
        Source.objects.filter(enabled=True, policy__drill_every_s__isnull=False)
        .select_related("policy")
        .annotate(
            last_drill_at=Subquery(drills.order_by("-queued_at").values("queued_at")[:1]),
            drilling=Exists(drills.filter(status__in=Run.ACTIVE)),
            newest_backup_id=Subquery(
                Run.objects.restore_points()
                .filter(source=OuterRef("pk"))
                .exclude(archive="")
                .values("pk")[:1]
            ),
        )
    )
    due = {}
    for source in sources:
        if source.drilling or source.newest_backup_id is None:
            continue
        interval = timedelta(seconds=source.policy.drill_every_s)
        if source.last_drill_at is None or now - source.last_drill_at >= interval:
            due[source.newest_backup_id] = source
    queued = []
    for backup in Run.objects.filter(pk__in=list(due)).select_related("source__policy"):
        check = verify_request(backup=backup, trigger=Run.Trigger.SCHEDULE, drill=True)
        logger.info("queued restore drill #%s of backup #%s", check.pk, backup.pk)
        queued.append(check)
    return queued


def housekeeping_run(*, now: datetime | None = None) -> dict:
    """Do the periodic chores: reap dead runs, finish interrupted prunes, queue due drills,
    reconcile the schedules with the catalog, and heal the stored standings a little.
    Return what was done."""
    # First, so that /healthz sees the workers alive even when a chore below fails.
    WorkerBeat.beat(HOUSEKEEPING_NAME, worker=worker_identity())
    reaped = reap_abandoned(now=now)
    handed_over = backups_hand_over_abandoned(now=now or timezone.now())
    resent = runs_resend_lost(now=now)
    recovered = prune_recover()
    drills = drills_queue_due(now=now)
    copies = copies_retry_due(now=now)
    archived = archive_due(now=now)
    aborted = abort_dead_uploads(Storage.objects.all())
    schedule_sync_all(now=now)
    return {
        "abandoned": reaped,
        "handed_over": handed_over,
        "resent": resent,
        "prunes_finished": recovered,
        "drills": [drill.pk for drill in drills],
        "copies": [copy.pk for copy in copies],
        "archive_tier": archived,
        "uploads_aborted": aborted,
        "standing": standing_housekeeping(),
        "alerts": alerts_housekeeping(now=now),
    }

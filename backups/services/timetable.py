"""When each source's next scheduled backup runs: django-q2's schedules, read.

Apart from `schedules`, which writes them, so that what only reads the timetable (the
compliance service, the pages) does not depend on the workflows housekeeping drives.
"""

from __future__ import annotations

from datetime import datetime

from django_q.models import Schedule

from backups.models import Source

BACKUP_TASK = "backups.tasks.scheduled_backup"


def backup_schedules():
    """Return the django-q2 schedules that start scheduled backups."""
    return Schedule.objects.filter(func=BACKUP_TASK)


def next_run_at(source: Source) -> datetime | None:
    """Return when the scheduler will next start a backup of `source` (None: never).

    The scheduler's own record is the truth; a time in the past means the slot is due and
    the next scheduler pass (every 30 seconds in a running cluster) starts it.
    """
    return next_runs([source.pk]).get(source.pk)


def next_runs(source_ids) -> dict[int, datetime]:
    """Return the next planned backup of each given source that has a schedule; one query."""
    wanted = {repr(pk): pk for pk in source_ids}
    rows = backup_schedules().filter(args__in=list(wanted)).exclude(repeats=0)
    result: dict[int, datetime] = {}
    for args, when in rows.values_list("args", "next_run"):
        if when is not None:
            result[wanted[args]] = when
    return result

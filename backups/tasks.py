"""django-q2 entry points: each loads by id and calls one service.

Only ids travel through the queue; what happened is written to our Run table.
"""

from __future__ import annotations

from django.db import transaction
from django_q.tasks import async_task

from backups.models import Run
from backups.services.execution import run_execute
from backups.workers import SHUTDOWN_REASON, sigterm_interrupts

PRUNE_TASK = "backups.tasks.prune_task"


def execute_run(run_id: int) -> str:
    """Execute one queued run (a duplicate delivery is a no-op) and return its status.

    A successful scheduled backup is followed by a prune of its source. SIGTERM (the
    host shutting down) cancels the run cleanly, then ends the worker.
    """
    with sigterm_interrupts() as interrupt:
        run = run_execute(run_id, interrupt=interrupt, interrupt_reason=SHUTDOWN_REASON)
    if (
        run.kind == Run.Kind.BACKUP
        and run.trigger == Run.Trigger.SCHEDULE
        and run.status in Run.GOOD
    ):
        transaction.on_commit(
            lambda: async_task(PRUNE_TASK, run_id, task_name=f"prune-{run_id}", group="prune")
        )
    return run.status


def scheduled_backup(source_id: int) -> str:
    """Start the scheduled backup of one source; a busy source is skipped, not an error."""
    from backups.services.schedules import backup_scheduled

    run = backup_scheduled(source_id=source_id)
    return f"queued backup #{run.pk}" if run else "skipped"


def prune_task(run_id: int) -> str:
    """Apply retention to the source of backup `run_id` (queued after a scheduled backup)."""
    from backups.services.prune import prune_after_backup

    report = prune_after_backup(run_id=run_id)
    if report is None:
        return "nothing to do"
    return f"removed {len(report['remove'])}, kept {len(report['keep'])}"


def housekeeping() -> dict:
    """Reap dead runs, finish interrupted prunes, queue due drills, reconcile schedules."""
    from backups.services.schedules import housekeeping_run

    return housekeeping_run()


def deliver_notifications() -> dict:
    """Send the alert notifications that are due (each claimed first, so never twice)."""
    from backups.services.notify import notifications_deliver

    return notifications_deliver()

"""django-q2 entry points: each loads by id and calls one service.

Only ids travel through the queue; what happened is written to our Run table.
"""

from __future__ import annotations

from backups.services.execution import run_execute
from backups.services.notify import notifications_deliver
from backups.services.prune import prune_after_backup
from backups.services.schedules import backup_scheduled, housekeeping_run
from backups.workers import SHUTDOWN_REASON, sigterm_interrupts


def execute_run(run_id: int) -> str:
    """Execute one queued run (a duplicate delivery is a no-op) and return its status.

    SIGTERM (the host shutting down) cancels the run cleanly, then ends the worker.
    """
    with sigterm_interrupts() as interrupt:
        run = run_execute(run_id, interrupt=interrupt, interrupt_reason=SHUTDOWN_REASON)
    return run.status


def scheduled_backup(source_id: int) -> str:
    """Start the scheduled backup of one source; a busy source is skipped, not an error."""
    run = backup_scheduled(source_id=source_id)
    return f"queued backup #{run.pk}" if run else "skipped"


def prune_task(run_id: int) -> str:
    """Apply retention to the source of backup `run_id` (queued after a scheduled backup)."""
    report = prune_after_backup(run_id=run_id)
    if report is None:
        return "nothing to do"
    return f"removed {len(report['remove'])}, kept {len(report['keep'])}"


def housekeeping() -> dict:
    """Reap dead runs, finish interrupted prunes, queue due drills, reconcile schedules."""
    return housekeeping_run()


def deliver_notifications() -> dict:
    """Send the alert notifications that are due (each claimed first, so never twice)."""
    return notifications_deliver()

"""Hand work to the django-q2 workers: only the run id travels, after the commit."""

from __future__ import annotations

import logging
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django_q.tasks import async_task

from backups.models import Run

logger = logging.getLogger(__name__)

TASK = "backups.tasks.execute_run"
PRUNE_TASK = "backups.tasks.prune_task"


def run_enqueue(run: Run) -> None:
    """Queue `run` for a worker once the surrounding transaction commits.

    Enqueueing inside the transaction could let a worker look for a row it cannot see
    yet; passing the id, not the instance, keeps the queue free of stale pickles.
    """
    run_id = run.pk
    transaction.on_commit(
        lambda: async_task(TASK, run_id, task_name=f"{run.kind}-{run_id}", group=run.kind)
    )


def runs_resend_lost(*, now: datetime | None = None) -> list[int]:
    """Hand every run that has waited in the queue too long to the workers again.

    A task can be lost without a trace: a worker cluster killed with tasks in its local
    buffer (see `queue_limit` in the settings), a Redis flush. Re-sending is safe: a run
    is claimed once, so a second delivery of a task that was not lost does nothing.
    Return the ids re-sent.
    """
    now = now or timezone.now()
    due = Run.objects.waiting_too_long(now=now, after_s=settings.QUEUE_RESEND_AFTER_S)
    for run in due:
        logger.warning(
            "%s #%s has waited in the queue since %s; handing it to the workers again",
            run.kind,
            run.pk,
            f"{run.queued_at:%Y-%m-%d %H:%M:%S}",
        )
        run_enqueue(run)
    Run.objects.mark_resent([run.pk for run in due], now=now)
    return [run.pk for run in due]


def prune_enqueue(backup: Run) -> None:
    """Queue a prune of the source of `backup` once the surrounding transaction commits."""
    run_id = backup.pk
    transaction.on_commit(
        lambda: async_task(PRUNE_TASK, run_id, task_name=f"prune-{run_id}", group="prune")
    )

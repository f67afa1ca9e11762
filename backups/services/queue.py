"""Hand work to the django-q2 workers: only the run id travels, after the commit."""

from __future__ import annotations

from django.db import transaction
from django_q.tasks import async_task

from backups.models import Run

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


def prune_enqueue(backup: Run) -> None:
    """Queue a prune of the source of `backup` once the surrounding transaction commits."""
    run_id = backup.pk
    transaction.on_commit(
        lambda: async_task(PRUNE_TASK, run_id, task_name=f"prune-{run_id}", group="prune")
    )

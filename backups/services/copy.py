"""Offsite copies: after a backup is published, copy it to each storage its policy names.

A copy is a run like the others (queued, claimed, heartbeat, progress, cancel) whose work
is the engine's `copy_backup`: stream, hash, publish, read back and hash again. Its
outcome is kept per (backup, storage) in a `Copy` row: a failed copy is tried again by
housekeeping after a delay that doubles with each attempt, on the same row, never twice
at once and never once it succeeded.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from backups.engine.copy import copy_backup
from backups.engine.errors import ArchiveError
from backups.models import Copy, Run, Storage
from backups.services.queue import run_enqueue
from backups.services.runs import RunHooks

logger = logging.getLogger(__name__)

# A failed copy is tried again after 5 minutes, then 10, 20, ... up to 6 hours.
RETRY_FIRST_S = 300
RETRY_MOST_S = 6 * 3600


def copy_retry_delay(attempts: int) -> int:
    """Return how long to wait before the next attempt after `attempts` failed ones."""
    return min(RETRY_FIRST_S * 2 ** max(attempts - 1, 0), RETRY_MOST_S)


def copy_request(
    *, backup: Run, storage: Storage, trigger: str, user=None, enqueue: bool = True
) -> Run | None:
    """Queue a copy of `backup` to `storage`; return the copy run.

    Return the run already under way when there is one, and None when the backup is
    already copied there or no longer restorable.
    """
    if backup.kind != Run.Kind.BACKUP or backup.status not in Run.GOOD:
        return None
    for attempt in (1, 2):
        try:
            with transaction.atomic():
                copy, _ = Copy.objects.get_or_create(backup=backup, storage=storage)
                copy = Copy.objects.select_for_update().select_related("run").get(pk=copy.pk)
                if copy.status == Copy.Status.SUCCEEDED:
                    return None
                if copy.run is not None and copy.run.status in Run.ACTIVE:
                    return copy.run
                run = Run.objects.create(
                    source_id=backup.source_id,
                    kind=Run.Kind.COPY,
                    backup=backup,
                    storage=storage,
                    trigger=trigger,
                    requested_by=user,
                    exclusive=False,
                )
                Copy.objects.filter(pk=copy.pk).update(
                    run=run, status=Copy.Status.PENDING, attempts=F("attempts") + 1
                )
            break
        except IntegrityError:
            # Another request created the row at the same moment: read it this time.
            if attempt == 2:
                raise
    if enqueue:
        run_enqueue(run)
    return run


def copy_execute(run: Run, hooks: RunHooks) -> dict:
    """Copy a claimed copy run's backup to its storage and prove it; return the result."""
    backup = run.backup
    copy = Copy.objects.get(backup=backup, storage=run.storage)
    Copy.objects.filter(pk=copy.pk).update(status=Copy.Status.RUNNING)
    if backup.status not in Run.GOOD:
        raise ArchiveError(
            f"Backup #{backup.pk} is {backup.status}, no longer restorable: it is not copied."
        )
    result = copy_backup(
        archive=backup.stored_archive(),
        manifest=backup.stored_manifest(),
        target=run.storage.open(),
        hooks=hooks,
    )
    copy.mark_succeeded(
        archive=result.locator,
        sha256=result.sha256,
        size=result.size,
        duration_s=result.duration_s,
    )
    hooks.log(f"copy proven: {result.locator} has sha256 {result.sha256}")
    return {"archive": result.locator, "sha256": result.sha256, "size": result.size}


def copy_record_outcome(run: Run) -> None:
    """Record a copy run that did not succeed on its row, with the time of the next try."""
    if run.status in Run.GOOD:
        return
    copy = Copy.objects.filter(run=run).first()
    if copy is not None:
        copy.mark_failed(run.error or run.status, retry_after_s=copy_retry_delay(copy.attempts))


def copies_after_backup(run: Run, *, inline: bool) -> list[Run]:
    """Queue (or, `inline`, return to run here) a copy of a fresh backup to each storage
    its policy copies to."""
    policy = run.source.policy
    if policy is None:
        return []
    runs = []
    for storage in policy.copy_to.all():
        copy = copy_request(
            backup=run, storage=storage, trigger=run.trigger, user=run.requested_by,
            enqueue=not inline,
        )  # fmt: skip
        if copy is not None:
            runs.append(copy)
    return runs


def copies_retry_due(*, now: datetime | None = None) -> list[Run]:
    """Queue again the copies that failed (or whose run died) once their delay is over."""
    now = now or timezone.now()
    due = Copy.objects.filter(backup__status__in=Run.GOOD).filter(
        Q(status=Copy.Status.FAILED, retry_at__lte=now)
        | Q(
            status__in=(Copy.Status.PENDING, Copy.Status.RUNNING),
            run__status__in=(*Run.BAD, Run.Status.CANCELLED),
        )
    )
    runs = []
    for copy in due.select_related("backup", "storage"):
        run = copy_request(backup=copy.backup, storage=copy.storage, trigger=Run.Trigger.SCHEDULE)
        if run is not None:
            logger.info(
                "copy of backup #%s to %s: attempt %s", copy.backup_id, copy.storage, run.pk
            )
            runs.append(run)
    return runs

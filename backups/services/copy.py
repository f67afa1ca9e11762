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
from backups.engine.errors import ArchiveError, EngineError
from backups.models import Copy, Manifest, Run, Storage
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
                copy = Copy.objects.select_for_update().get(pk=copy.pk)
                if copy.status == Copy.Status.SUCCEEDED:
                    return None
                if copy.run_id is not None and copy.run.status in Run.ACTIVE:
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


def _old_enough(backup: Run, *, now: datetime) -> bool:
    policy = backup.source.policy
    return (
        policy is not None
        and policy.archive_to_id is not None
        and backup.started_at is not None
        and (now - backup.started_at).total_seconds() > policy.archive_after_s
    )


def archive_move(backup: Run, *, now: datetime | None = None) -> bool:
    """Finish moving `backup` to its policy's archive storage once a proven copy is there.

    The files in its current storage are removed first, then the catalog points at the
    copy: in between, a restore falls back to that proven copy. Nothing moves while a
    restore or verification reads the backup. Return whether the backup moved.
    """
    now = now or timezone.now()
    # A backup kept only as a copy is its storage's rules' to decide, not the tier's.
    if not _old_enough(backup, now=now) or backup.status not in Run.GOOD or backup.copy_only:
        return False
    target = backup.source.policy.archive_to
    if backup.storage_id == target.pk:
        return False
    copy = Copy.objects.filter(backup=backup, storage=target, status=Copy.Status.SUCCEEDED).first()
    if copy is None:
        return False
    readers = Run.objects.filter(backup=backup, status__in=Run.ACTIVE).exclude(kind=Run.Kind.COPY)
    if readers.exists():
        return False
    archive = backup.stored_archive()
    for stored in (
        archive,
        archive.sibling(archive.name + ".sha256"),
        backup.stored_manifest(),
    ):
        stored.storage.delete(stored.key)
    with transaction.atomic():
        backup.move_to(target, copy.archive)
        copy.delete()
        Manifest.objects.filter(run=backup).update(path=str(backup.stored_manifest()))
    backup.append_log(f"moved to the archive storage {target.name}: {copy.archive}")
    return True


def archive_due(*, now: datetime | None = None) -> dict:
    """Move the restore points older than their policy's `archive_after` to its archive
    storage: copy the ones not copied there yet, finish moving the ones that are.

    Return the ids of the copy runs queued and of the backups moved.
    """
    now = now or timezone.now()
    queued, moved = [], []
    candidates = (
        Run.objects.restore_points()
        .filter(source__policy__archive_to__isnull=False)
        .exclude(storage=F("source__policy__archive_to"))
        .exclude(copy_only=True)
        .select_related("source__policy__archive_to", "storage")
        .defer("log")
    )
    for backup in candidates:
        if not _old_enough(backup, now=now):
            continue
        target = backup.source.policy.archive_to
        try:
            if archive_move(backup, now=now):
                moved.append(backup.pk)
                continue
        except EngineError as error:
            logger.warning("moving backup #%s to %s failed: %s", backup.pk, target, error)
            continue
        run = copy_request(backup=backup, storage=target, trigger=Run.Trigger.SCHEDULE)
        if run is not None and run.status == Run.Status.QUEUED:
            queued.append(run.pk)
    return {"copies": queued, "moved": moved}

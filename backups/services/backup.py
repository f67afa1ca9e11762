"""Back up a source: request a run (the database is the per-source lock), execute it."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from backups.audit import audit_record
from backups.engine.backup import BackupRequest, plan_backup, run_backup
from backups.engine.errors import EngineError
from backups.engine.manifest import ManifestReader
from backups.models import AuditEvent, Run, Source
from backups.services.encryption import recipients_shown
from backups.services.levels import level_choose
from backups.services.manifests import index_failed_warning, manifest_store
from backups.services.queue import run_enqueue
from backups.services.runs import (
    RunHooks,
    SourceBusy,
    connection_refresh,
    reap_abandoned,
    remove_dead_temps,
    remove_dead_uploads,
)

logger = logging.getLogger(__name__)


class PlanRefused(Exception):
    """The source cannot be read to plan a backup; the message says why."""


def backup_request(
    *,
    source: Source,
    trigger: str,
    user=None,
    enqueue: bool = True,
    level: str = "",
    rehash: bool = False,
) -> Run:
    """Create a queued backup run for `source`; raise SourceBusy if one is active.

    `level` forces a level ('' lets the policy decide, see levels); `rehash` reads and
    hashes every file, even those whose metadata did not change.

    With `enqueue`, the run is handed to the workers once the transaction commits. A
    person's request (not a scheduled one), granted or refused, is audited.
    """
    for attempt in (1, 2):
        try:
            with transaction.atomic():
                run = Run.objects.create(
                    source=source,
                    kind=Run.Kind.BACKUP,
                    trigger=trigger,
                    requested_by=user,
                    level_asked=level,
                    rehash=rehash,
                )
            break
        except IntegrityError:
            # The run holding the lock may belong to a dead worker: reap, then try once more.
            if attempt == 1 and reap_abandoned():
                continue
            busy = SourceBusy(source, Run.objects.lock_holder(source))
            if trigger != Run.Trigger.SCHEDULE:
                audit_record(
                    actor=user,
                    action="backup.request",
                    outcome=AuditEvent.Outcome.FAILED,
                    obj=source,
                    detail={"error": str(busy)},
                )
            raise busy from None
    if trigger != Run.Trigger.SCHEDULE:
        audit_record(
            actor=user,
            action="backup.request",
            outcome=AuditEvent.Outcome.REQUESTED,
            obj=run,
            source=source,
            detail={"trigger": trigger},
        )
    if enqueue:
        run_enqueue(run)
    return run


def backup_execute(run: Run, hooks: RunHooks) -> dict:
    """Write the archive, sidecar and manifest of a claimed backup run; return its result."""
    source = run.source
    policy = source.policy
    storage_row = policy.storage if policy else None
    run.record_storage(storage_row)
    if storage_row is None:
        folder = source.archive_dir
        folder.mkdir(parents=True, exist_ok=True)
        removed = remove_dead_temps(folder)
        target = {"dest_dir": folder}
        where = str(folder)
    else:
        storage = storage_row.open()
        removed = remove_dead_uploads(storage, source.slug)
        # The manifest's spool and database snapshots stay on this host while they are made.
        target = {
            "storage": storage,
            "folder": source.slug,
            "scratch_dir": settings.STATE_DIR / "scratch",
        }
        where = f"{source.slug}/ in storage {storage_row.name} ({storage.describe()})"
    if removed:
        hooks.log(f"removed {len(removed)} temporary file(s) left by dead runs")
    previous = Run.objects.newest_restorable(source)
    started = run.started_at or timezone.now()
    level = level_choose(run)
    if level.warning:
        hooks.warn(level.warning)
    run.record_level(level.level, base=level.base, full=level.full)
    # Read when the backup starts: a policy's new recipients apply to new backups only.
    recipients = policy.recipient_list if policy else []
    if recipients:
        hooks.log(f"encrypting to {recipients_shown(recipients)}")
    request = BackupRequest(
        kind=source.kind,
        location=source.location,
        stem=run.stem,
        compression=policy.compression if policy else "zstd",
        level=policy.compression_level if policy else None,
        excludes=list(source.excludes),
        manifest_header={
            "run": run.pk,
            "source": {"name": source.name, "kind": source.kind, "location": source.location},
            "started_at": started.isoformat(),
            "trigger": run.trigger,
            "excludes": sorted(source.excludes),
        },
        reserve_bytes=(previous.size or 0) + settings.DISK_RESERVE_BYTES if previous else 0,
        **target,
        recipients=recipients,
        size_hint=previous.size if previous else None,
        catalog=lambda manifest: _catalog(run, manifest, hooks),
        delta=level.delta,
        rehash=run.rehash,
    )
    hooks.log(
        f"backing up {source.kind} {source.location} to {where}"
        + (f" ({level.level}, relative to backup #{level.base.pk})" if level.base else "")
    )
    result = run_backup(request, hooks)
    hooks.log(
        f"published {result.locator.rpartition('/')[2]} ({result.size} bytes, "
        f"sha256 {result.sha256})"
    )
    return {
        "archive": result.locator,
        "size": result.size,
        "sha256": result.sha256,
        "payload_bytes": result.bytes,
        "payload_files": result.files,
        "recipients": list(result.recipients),
    }


def _catalog(run: Run, manifest: ManifestReader, hooks: RunHooks) -> None:
    """Index a published backup's manifest into the catalog, from the backup's own spool.

    The plaintext the backup produced, not the file: an encrypted manifest is indexed on
    a host that holds only the public key. The archive is published and restores read
    the manifest from its storage: a catalog that cannot be indexed costs the file
    browser, not the backup.
    """
    connection_refresh()  # the one opened before the engine ran may be long gone
    try:
        stored = manifest_store(run, manifest)
    except Exception as error:
        logger.exception("run %s: indexing %s into the catalog failed", run.pk, manifest)
        hooks.warn(index_failed_warning(error))
        return
    if stored.duplicates:
        hooks.log(
            f"{stored.duplicates} path(s) appear more than once in the archive; "
            "the catalog lists the first copy of each, as a restore keeps it"
        )


def backup_plan(source: Source) -> dict:
    """Return what a backup of `source` would read, and how long it should take.

    Raise PlanRefused when the source cannot be read.
    """
    try:
        plan = plan_backup(kind=source.kind, location=source.location, excludes=source.excludes)
    except EngineError as error:
        raise PlanRefused(str(error)) from None
    recent = list(
        Run.objects.restorable()
        .filter(source=source, payload_bytes__gt=0)
        .order_by("-started_at")[:5]
    )
    rates = [r.payload_bytes / r.duration_s for r in recent if r.duration_s]
    estimate = plan.bytes / (sum(rates) / len(rates)) if rates and plan.bytes else None
    return {
        "source": source.name,
        "files": plan.files,
        "bytes": plan.bytes,
        "excluded": list(plan.excluded),
        "excluded_count": plan.excluded_count,
        "estimated_duration_s": round(estimate, 1) if estimate is not None else None,
    }


def backup_hand_over(run: Run) -> Run | None:
    """Queue again the slot of a scheduled backup that its worker's end stopped.

    A host shutting down cancels its run cleanly, a lost host leaves it abandoned: either
    way another worker takes the new run, so the slot is not lost with the host. Return
    the new run (None: nothing to hand over, or the source is busy again already).
    """
    if not (
        run.kind == Run.Kind.BACKUP
        and run.trigger == Run.Trigger.SCHEDULE
        and run.status in (Run.Status.CANCELLED, Run.Status.ABANDONED)
    ):
        return None
    try:
        again = backup_request(source=run.source, trigger=Run.Trigger.SCHEDULE)
    except SourceBusy as busy:
        logger.info("backup #%s not handed over: %s", run.pk, busy)
        return None
    logger.warning("backup #%s ended with its worker; handed over as #%s", run.pk, again.pk)
    return again

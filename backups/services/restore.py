"""Restore a backup: validate the request up front, audit it, execute it verified."""

from __future__ import annotations

from django.db import IntegrityError, transaction

from backups.audit import audit_record
from backups.engine.errors import EngineError
from backups.engine.restore import RestoreRequest, check_target, run_restore
from backups.models import AuditEvent, Run
from backups.services.backup import SourceBusy
from backups.services.execution import RunHooks, reap_abandoned
from backups.services.queue import run_enqueue


class RestoreRefused(Exception):
    """The restore cannot start as asked (bad backup, bad target); nothing was changed."""


def _engine_request(
    backup: Run, *, target: str, in_place: bool, paths, timeout_s: float | None = None
) -> RestoreRequest:
    return RestoreRequest(
        archive=backup.archive_path,
        manifest=backup.manifest_path,
        kind=backup.source.kind,
        target=target,
        in_place=in_place,
        paths=list(paths),
        timeout_s=timeout_s,
    )


def restore_target_problem(*, backup: Run, target: str, in_place: bool, paths) -> str | None:
    """Return why `target` (and `paths`) cannot take `backup`, or None.

    The check every restore starts with; the dashboard runs it before anyone types the
    confirmation. A manifest that cannot be read for `paths` is a problem too.
    """
    try:
        check_target(_engine_request(backup, target=target, in_place=in_place, paths=paths))
    except EngineError as error:
        return str(error)
    return None


def restore_request(
    *,
    backup: Run,
    target: str | None,
    in_place: bool,
    paths: list[str] | None = None,
    trigger: str,
    user=None,
    enqueue: bool = True,
) -> Run:
    """Create a queued restore of `backup`, after checking the backup and the target.

    Raise RestoreRefused (bad input) or SourceBusy (an in-place restore while the source
    is being backed up). Every request, refused or not, leaves an audit record.
    """
    source = backup.source
    detail = {
        "backup": backup.pk,
        "target": source.location if in_place else target,
        "in_place": in_place,
        "paths": list(paths or []),
    }

    def refuse(message: str):
        audit_record(
            actor=user,
            action="restore.request",
            outcome=AuditEvent.Outcome.FAILED,
            obj=backup,
            source=source,
            detail={**detail, "error": message},
        )
        return RestoreRefused(message)

    if backup.kind != Run.Kind.BACKUP or backup.status not in Run.GOOD or not backup.archive:
        raise refuse(
            f"Run #{backup.pk} is not a restorable backup (it is a {backup.kind} that "
            f"{backup.status}); pick a succeeded backup."
        )
    if not in_place and not target:
        raise refuse("Give a target (--to) or restore in place (--in-place --yes).")
    run = Run(
        source=source,
        kind=Run.Kind.RESTORE,
        backup=backup,
        trigger=trigger,
        requested_by=user,
        target=source.location if in_place else target,
        in_place=in_place,
        paths=list(paths or []),
        exclusive=in_place,
    )
    problem = restore_target_problem(
        backup=backup, target=run.target, in_place=in_place, paths=run.paths
    )
    if problem:
        raise refuse(problem)
    for attempt in (1, 2):
        try:
            with transaction.atomic():
                run.save()
            break
        except IntegrityError:
            # The run holding the lock may belong to a dead worker: reap, then try once more.
            if attempt == 1 and reap_abandoned():
                continue
            active = Run.objects.filter(
                source=source, exclusive=True, status__in=Run.ACTIVE
            ).first()
            busy = SourceBusy(source, active)
            refuse(str(busy))
            raise busy from None
    audit_record(
        actor=user,
        action="restore.request",
        outcome=AuditEvent.Outcome.REQUESTED,
        obj=run,
        source=source,
        detail=detail,
    )
    if enqueue:
        run_enqueue(run)
    return run


def restore_execute(run: Run, hooks: RunHooks) -> dict:
    """Restore a claimed run's backup, verified as it streams; return the result fields."""
    hooks.log(
        f"restoring backup #{run.backup_id} to {run.target}"
        + (" in place" if run.in_place else "")
        + (f" (paths: {', '.join(run.paths)})" if run.paths else "")
    )
    source = run.backup.source
    request = _engine_request(
        run.backup,
        target=run.target,
        in_place=run.in_place,
        paths=run.paths,
        timeout_s=source.policy.run_timeout_s if source.policy_id else 3600,
    )
    result = run_restore(request, hooks)
    return {
        "payload_bytes": result.bytes,
        "payload_files": result.files,
        "restore_seconds": result.duration_s,
        "checks": list(result.checks),
        "archive": run.backup.archive,
        "sha256": run.backup.sha256,
    }


def restore_audit_outcome(run: Run) -> None:
    """Record how a restore ended: who, which backup, which target, outcome, duration."""
    audit_record(
        actor=run.requested_by,
        action="restore.finish",
        outcome=(
            AuditEvent.Outcome.SUCCEEDED if run.status in Run.GOOD else AuditEvent.Outcome.FAILED
        ),
        obj=run,
        source=run.source,
        detail={
            "backup": run.backup_id,
            "target": run.target,
            "in_place": run.in_place,
            "paths": run.paths,
            "status": run.status,
            "duration_s": run.duration_s,
            "error": run.error or None,
        },
    )

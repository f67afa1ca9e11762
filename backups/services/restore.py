"""Restore a backup: validate the request up front, audit it, execute it verified."""

from __future__ import annotations

from django.conf import settings
from django.db import IntegrityError, transaction

from backups.audit import audit_record
from backups.engine.errors import EngineError
from backups.engine.names import catalog_to_name, name_to_catalog, printable
from backups.engine.restore import (
    RestoreRequest,
    check_target,
    composed_manifest,
    restore_archive,
    restore_chain,
)
from backups.models import AuditEvent, Run, Source
from backups.services.chains import chain_requests
from backups.services.queue import run_enqueue
from backups.services.runs import RunHooks, SourceBusy, reap_abandoned


class RestoreRefused(Exception):
    """The restore cannot start as asked (bad backup, bad target); nothing was changed."""


def catalog_paths(names: list[str]) -> list[str]:
    """Return file names as the catalog writes them (any bytes, as text), for `paths`.

    The shell gives bytes; Python, a str with surrogate escapes for the bytes that are not
    UTF-8: the catalog's text names the same bytes.
    """
    return [name_to_catalog(name) for name in names]


def restore_places(*, source: Source, in_place: bool, trigger: str) -> dict:
    """Return where a restore of `source` may write, as RestoreRequest fields.

    Never into, over or around the archive storage or the dashboard's own database; a
    new location never in or around any source's location, and, unless asked for on
    the command line (by someone with a shell on the host), only inside RESTORE_ROOTS.
    PostgreSQL servers and pod namespaces: the source's own and the allow-lists.
    """
    refused = {str(settings.ARCHIVE_ROOT): "the archive storage"}
    if settings.DATABASE_FILE is not None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            refused[f"{settings.DATABASE_FILE}{suffix}"] = "the dashboard's own database"
    if not in_place:
        local = Source.objects.filter(kind__in=(Source.Kind.DIRECTORY, Source.Kind.SQLITE))
        for name, location in local.values_list("name", "location"):
            refused.setdefault(location, f"the location of the source {name!r}")
    return {
        "roots": None
        if trigger == Run.Trigger.CLI
        else [str(root) for root in settings.RESTORE_ROOTS],
        "refused": refused,
        "postgres_servers": list(settings.RESTORE_POSTGRES_HOSTS),
        "pod_namespaces": list(settings.RESTORE_POD_NAMESPACES),
        "source_location": source.location,
    }


def _engine_request(
    backup: Run,
    *,
    target: str,
    in_place: bool,
    paths,
    trigger: str,
    timeout_s: float | None = None,
    **more,
) -> RestoreRequest:
    """Return the engine's request; `paths` are catalog text, the engine's are file names."""
    source = backup.source
    return RestoreRequest(
        archive=backup.stored_archive(),
        manifest=backup.manifest_path,
        kind=source.kind,
        target=target,
        in_place=in_place,
        paths=[catalog_to_name(path) for path in paths],
        timeout_s=timeout_s,
        # The files beside each other can be swapped together; the catalog's record cannot.
        catalog_sha256=backup.sha256 or None,
        **restore_places(source=source, in_place=in_place, trigger=trigger),
        **more,
    )


def restore_target_problem(
    *, backup: Run, target: str, in_place: bool, paths, trigger: str = Run.Trigger.MANUAL
) -> str | None:
    """Return why `target` (and `paths`) cannot take `backup`, or None.

    The check every restore starts with, with the places `restore_places` allows for
    `trigger`; the dashboard runs it before anyone types the confirmation, and the
    worker's engine runs it again on the same terms just before it writes. A manifest
    that cannot be read for `paths` is a problem too.
    """
    try:
        requests = chain_requests(
            backup,
            lambda member: _engine_request(
                member, target=target, in_place=in_place, paths=paths, trigger=trigger
            ),
        )
        if len(requests) == 1:
            check_target(requests[0])
        else:
            manifest, _ = composed_manifest([request.load_manifest() for request in requests])
            check_target(requests[-1], manifest)
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
        "target": source.location if in_place else target and printable(target),
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
    if target and printable(target) != target:
        raise refuse(
            f"The target {printable(target)} is not valid UTF-8 (the \\xNN are its other "
            "bytes); restore into a folder whose path is UTF-8, then move the files."
        )
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
        backup=backup, target=run.target, in_place=in_place, paths=run.paths, trigger=trigger
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
            busy = SourceBusy(source, Run.objects.lock_holder(source))
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
    requests = chain_requests(
        run.backup,
        lambda member: _engine_request(
            member,
            target=run.target,
            in_place=run.in_place,
            paths=run.paths,
            trigger=run.trigger,
            timeout_s=source.run_timeout_s,
            state_dir=settings.STATE_DIR,
            run_id=str(run.pk),
        ),
    )
    if len(requests) == 1:
        result = restore_archive(requests[0], hooks)
    else:
        hooks.log(f"restoring through a chain of {len(requests)} backups")
        result = restore_chain(requests, hooks)
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

"""Restore a backup: validate the request up front, audit it, execute it verified."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, transaction

from backups.audit import audit_record
from backups.engine.errors import (
    ArchiveError,
    EngineError,
    MissingObjectError,
    UnsafeArchiveError,
)
from backups.engine.names import catalog_to_name, name_to_catalog, printable
from backups.engine.restore import (
    RestoreRequest,
    check_target,
    composed_manifest,
    restore_archive,
    restore_chain,
)
from backups.engine.storage import StoredFile
from backups.models import DEFAULT_STORAGE_NAME, AuditEvent, Copy, Run, Source, Storage
from backups.services.chains import chain_requests
from backups.services.encryption import identities_load
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
    for name, path in Storage.objects.filter(kind=Storage.Kind.LOCAL).values_list("name", "path"):
        refused[path] = f"the storage {name!r}"
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


@dataclass(frozen=True)
class Place:
    """Where a restore reads a backup: its own storage, or the storage of one of its copies."""

    storage: Storage | None
    archive: StoredFile
    manifest: StoredFile
    copy: bool

    @property
    def name(self) -> str:
        """Return the storage's name (`default`: ARCHIVE_ROOT)."""
        return self.storage.name if self.storage is not None else DEFAULT_STORAGE_NAME


def restore_places_to_read(backup: Run) -> list[Place]:
    """Return where `backup` can be read: its own storage first, then each proven copy.

    A storage that cannot be opened (its credentials are not set on this host) is left out.
    """
    places = []
    try:
        archive = backup.stored_archive()
        places.append(Place(backup.storage, archive, backup.stored_manifest(), copy=False))
    except EngineError:
        pass
    manifest_name = backup.manifest_path.name if backup.archive else ""
    for copy in backup.copies.filter(status=Copy.Status.SUCCEEDED).select_related("storage"):
        copy.backup = backup
        try:
            archive = copy.stored_archive()
        except EngineError:
            continue
        places.append(Place(copy.storage, archive, archive.sibling(manifest_name), copy=True))
    return places


def restore_place(backup: Run, *, pick: Storage | None = None, picked: bool = False) -> Place:
    """Return where a restore of `backup` reads: the storage `picked` (`pick`, None for
    ARCHIVE_ROOT), else its own storage when the archive is there, else a proven copy.

    Raise RestoreRefused naming the storages that hold the backup when none fits.
    """
    places = restore_places_to_read(backup)
    if picked:
        wanted = pick.pk if pick is not None else None
        for place in places:
            if (place.storage.pk if place.storage is not None else None) == wanted:
                return place
        holders = ", ".join(place.name for place in places) or "none"
        raise RestoreRefused(
            f"Backup #{backup.pk} has no proven copy in storage "
            f"{pick.name if pick is not None else DEFAULT_STORAGE_NAME!r}; it is held by: "
            f"{holders}."
        )
    for place in places:
        try:
            present = place.archive.size() is not None
        except EngineError:
            present = False
        if present:
            return place
    raise RestoreRefused(
        f"The archive of backup #{backup.pk} ({printable(backup.archive or '(none)')}) is "
        "missing, and no proven copy of it can be read: nothing to restore from."
    )


def _engine_request(
    backup: Run,
    *,
    target: str,
    in_place: bool,
    paths,
    trigger: str,
    timeout_s: float | None = None,
    place: Place | None = None,
    **more,
) -> RestoreRequest:
    """Return the engine's request; `paths` are catalog text, the engine's are file names."""
    source = backup.source
    if place is None:
        try:
            place = restore_place(backup)
        except RestoreRefused:
            # Let the engine name the missing file, as it always did.
            place = Place(backup.storage, backup.stored_archive(), backup.stored_manifest(), False)
    return RestoreRequest(
        archive=place.archive,
        manifest=place.manifest,
        kind=source.kind,
        target=target,
        in_place=in_place,
        paths=[catalog_to_name(path) for path in paths],
        timeout_s=timeout_s,
        # The files beside each other can be swapped together; the catalog's record cannot.
        catalog_sha256=backup.sha256 or None,
        recipients=list(backup.recipients or []),
        **restore_places(source=source, in_place=in_place, trigger=trigger),
        **more,
    )


def restore_target_problem(
    *,
    backup: Run,
    target: str,
    in_place: bool,
    paths,
    trigger: str = Run.Trigger.MANUAL,
    place: Place | None = None,
) -> str | None:
    """Return why `target` (and `paths`) cannot take `backup`, or None.

    The check every restore starts with, with the places `restore_places` allows for
    `trigger`; the dashboard runs it before anyone types the confirmation, and the
    worker's engine runs it again on the same terms just before it writes. A manifest
    that cannot be read for `paths` is a problem too.
    """
    try:
        # The paths are looked up in the manifest: an encrypted one needs this host's key.
        keys = {"identities": identities_load()} if paths and backup.encrypted else {}
        requests = chain_requests(
            backup,
            lambda member: _engine_request(
                member,
                target=target,
                in_place=in_place,
                paths=paths,
                trigger=trigger,
                place=place if member.pk == backup.pk else None,
                **keys,
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
    read_from: Storage | None = None,
    pick: bool = False,
) -> Run:
    """Create a queued restore of `backup`, after checking the backup and the target.

    With `pick`, read the backup from the storage `read_from` (None: ARCHIVE_ROOT), its
    own or one holding a proven copy; else from its own storage, or a proven copy when
    its archive there is missing or damaged. Raise RestoreRefused (bad input) or
    SourceBusy (an in-place restore while the source is being backed up). Every
    request, refused or not, leaves an audit record.
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
    place = None
    if pick:
        try:
            place = restore_place(backup, pick=read_from, picked=True)
        except RestoreRefused as refused:
            raise refuse(str(refused)) from None
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
        # A restore that names no storage may fall back to a copy: it is recorded then.
        storage=place.storage if place is not None else None,
        picked_storage=pick,
    )
    problem = restore_target_problem(
        backup=backup,
        target=run.target,
        in_place=in_place,
        paths=run.paths,
        trigger=trigger,
        place=place,
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
    backup = run.backup
    if run.picked_storage:
        place = restore_place(backup, pick=run.storage, picked=True)
    else:
        place = restore_place(backup)
    tried = set()
    while True:
        if place.copy:
            hooks.log(f"reading the copy in storage {place.name}: {place.archive.locator}")
            run.record_storage(place.storage)
        requests = chain_requests(
            backup,
            lambda member, place=place: _engine_request(
                member,
                target=run.target,
                in_place=run.in_place,
                paths=run.paths,
                trigger=run.trigger,
                timeout_s=backup.source.run_timeout_s,
                state_dir=settings.STATE_DIR,
                run_id=str(run.pk),
                # The point itself may be read from a copy; the backups it builds on from
                # where they are.
                place=place if member.pk == backup.pk else None,
                identities=identities_load() if member.encrypted else (),
            ),
        )
        try:
            if len(requests) == 1:
                result = restore_archive(requests[0], hooks)
            else:
                hooks.log(f"restoring through a chain of {len(requests)} backups")
                result = restore_chain(requests, hooks)
            break
        except (ArchiveError, MissingObjectError) as error:
            # A damaged or vanished archive: a proven copy elsewhere may still be whole.
            tried.add(place.name)
            others = [
                other
                for other in ([] if run.picked_storage else restore_places_to_read(backup))
                if other.copy and other.name not in tried
            ]
            if isinstance(error, UnsafeArchiveError) or not others:
                raise
            hooks.warn(
                f"{place.archive.locator} could not be restored ({error}); restoring the "
                f"copy in storage {others[0].name} instead"
            )
            place = others[0]
    return {
        "payload_bytes": result.bytes,
        "payload_files": result.files,
        "restore_seconds": result.duration_s,
        "checks": list(result.checks),
        "archive": place.archive.locator,
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

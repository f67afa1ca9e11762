"""Verify a backup: checksum, contents, database checks, and restore drills (the RTO)."""

from __future__ import annotations

from django.conf import settings
from django.db import IntegrityError, transaction

from backups.audit import audit_record
from backups.engine.errors import ArchiveError, KeyFileError
from backups.engine.restore import RestoreRequest
from backups.engine.verify import CHAIN, restore_drill, verify_archive, verify_chain
from backups.models import AuditEvent, Run
from backups.services.chains import chain_of
from backups.services.encryption import identities_load
from backups.services.queue import run_enqueue
from backups.services.runs import RunHooks, connection_refresh


def verify_request(
    *, backup: Run, trigger: str, user=None, drill: bool = False, enqueue: bool = True
) -> Run:
    """Create a queued verification (or drill) of `backup`, or return the one under way.

    A backup is verified, and drilled, once at a time (a constraint in the database): while
    a verification of the same sort is queued or running, a second request returns that
    one, with `already_active` set, and queues nothing. A person's request (not a
    scheduled one) is audited.
    """
    for attempt in (1, 2):
        try:
            with transaction.atomic():
                run = Run.objects.create(
                    source=backup.source,
                    kind=Run.Kind.VERIFY,
                    backup=backup,
                    trigger=trigger,
                    requested_by=user,
                    exclusive=False,
                    drill=drill,
                )
            break
        except IntegrityError:
            active = (
                Run.objects.filter(backup=backup, kind=Run.Kind.VERIFY, drill=drill)
                .filter(status__in=Run.ACTIVE)
                .select_related("source")
                .first()
            )
            if active is not None:
                active.already_active = True
                _audit(active, trigger, user, existing=True)
                return active
            # It ended between the insert and the lookup: ask once more.
            if attempt == 2:
                raise
    _audit(run, trigger, user, existing=False)
    if enqueue:
        run_enqueue(run)
    return run


def _audit(run: Run, trigger: str, user, *, existing: bool) -> None:
    if trigger == Run.Trigger.SCHEDULE:
        return
    detail = {"backup": run.backup_id, "drill": run.drill}
    if existing:
        detail["already_active"] = True
    audit_record(
        actor=user,
        action="drill.request" if run.drill else "verify.request",
        outcome=AuditEvent.Outcome.REQUESTED,
        obj=run,
        source=run.source,
        detail=detail,
    )


def verify_execute(run: Run, hooks: RunHooks) -> dict:
    """Run the checks of a claimed verify run; fail it, naming the checks that failed.

    On a host without the private key of an encrypted backup, only the checksum check
    runs: the run ends with a warning saying the content checks need the key, and the
    backup's verdict stays as it was. A drill there fails: it exists to prove that the
    key at hand still opens the backup.
    """
    backup = run.backup
    source = backup.source
    names = ["checksum", "contents"]
    if source.kind == "sqlite":
        names.append("database")
    queries = source.policy.check_queries if source.policy_id else []
    archive = backup.stored_archive()
    identities = _identities(backup, hooks, required=run.drill)
    keys = {"identities": identities, "recipients": list(backup.recipients or [])}
    checks = verify_archive(
        archive=archive,
        manifest=backup.stored_manifest(),
        kind=source.kind,
        checks=names,
        sqlite_queries=queries,
        query_time_s=settings.CHECK_QUERY_TIMEOUT_S,
        hooks=hooks,
        catalog_sha256=backup.sha256 or None,
        **keys,
    )
    chain: list[Run] = []
    if backup.level != Run.Level.FULL:
        try:
            chain = chain_of(backup)[:-1]
        except ArchiveError as error:
            checks.append({"name": CHAIN, "ok": False, "detail": str(error)})
        else:
            checks.append(
                verify_chain(archives=[member.stored_archive() for member in chain], hooks=hooks)
            )
    result: dict = {"archive": backup.archive, "sha256": backup.sha256}
    skipped = [check for check in checks if check.get("skipped")]
    if run.drill and skipped:
        checks.append({"name": "drill", "ok": False, "skipped": True, "detail": _why(skipped)})
    elif run.drill and all(check["ok"] for check in checks):
        scratch = settings.ARCHIVE_ROOT / ".drills"
        scratch.mkdir(parents=True, exist_ok=True)
        outcome = restore_drill(
            archive=archive,
            manifest=backup.stored_manifest(),
            kind=source.kind,
            scratch_dir=scratch,
            hooks=hooks,
            catalog_sha256=backup.sha256 or None,
            **keys,
            chain=[
                RestoreRequest(
                    archive=member.stored_archive(),
                    manifest=member.stored_manifest(),
                    kind=source.kind,
                    target="",
                    catalog_sha256=member.sha256 or None,
                    identities=identities,
                    recipients=list(member.recipients or []),
                )
                for member in chain
            ],
        )
        checks.append(outcome)
        if outcome.get("ok"):
            result["restore_seconds"] = outcome.get("duration_s")
    failed = [check for check in checks if not check["ok"] and not check.get("skipped")]
    connection_refresh()  # the checks may have outlasted the one opened before them
    if failed or not skipped:
        backup.mark_verified(not failed)
    run.record_checks(checks, skipped=bool(skipped) and not failed)
    if failed:
        raise ArchiveError(
            "Verification failed: "
            + "; ".join(f"{check['name']}: {check.get('detail', '')}" for check in failed)
        )
    if skipped:
        if run.drill:
            raise ArchiveError(f"The drill could not restore the backup: {_why(skipped)}")
        hooks.warn(_why(skipped))
    return {**result, "checks": checks}


def _why(skipped: list[dict]) -> str:
    """Return the sentence of the first check that did not run, without its "Not run: "."""
    return skipped[0].get("detail", "").removeprefix("Not run: ")


def _identities(backup: Run, hooks: RunHooks, *, required: bool) -> list:
    """Return this host's identities for an encrypted `backup` (none for a plain one).

    An unusable AGE_IDENTITY_FILE fails a drill; a verification goes on without it (the
    checksum needs no key) and says why its content checks did not run.
    """
    if not backup.encrypted:
        return []
    try:
        return identities_load()
    except KeyFileError as error:
        if required:
            raise
        hooks.warn(str(error))
        return []

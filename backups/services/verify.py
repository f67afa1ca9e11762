"""Verify a backup: checksum, contents, database checks, and restore drills (the RTO)."""

from __future__ import annotations

from django.conf import settings
from django.utils import timezone

from backups.engine.errors import ArchiveError
from backups.engine.verify import drill, verify_archive
from backups.models import Run
from backups.services.execution import RunHooks, connection_refresh
from backups.services.queue import run_enqueue


def verify_request(
    *, backup: Run, trigger: str, user=None, drill: bool = False, enqueue: bool = True
) -> Run:
    """Create a queued verification (or drill) of `backup`."""
    run = Run.objects.create(
        source=backup.source,
        kind=Run.Kind.VERIFY,
        backup=backup,
        trigger=trigger,
        requested_by=user,
        exclusive=False,
        drill=drill,
    )
    if enqueue:
        run_enqueue(run)
    return run


def verify_execute(run: Run, hooks: RunHooks) -> dict:
    """Run the checks of a claimed verify run; fail it, naming the checks that failed."""
    backup = run.backup
    source = backup.source
    names = ["checksum", "contents"]
    if source.kind == "sqlite":
        names.append("database")
    queries = source.policy.check_queries if source.policy_id else []
    checks = verify_archive(
        archive=backup.archive_path,
        manifest=backup.manifest_path,
        kind=source.kind,
        checks=names,
        sqlite_queries=queries,
        hooks=hooks,
    )
    result: dict = {"archive": backup.archive, "sha256": backup.sha256}
    if run.drill and all(check["ok"] for check in checks):
        scratch = settings.ARCHIVE_ROOT / ".drills"
        scratch.mkdir(parents=True, exist_ok=True)
        outcome = drill(
            archive=backup.archive_path,
            manifest=backup.manifest_path,
            kind=source.kind,
            scratch_dir=scratch,
            hooks=hooks,
        )
        checks.append(outcome)
        if outcome.get("ok"):
            result["restore_seconds"] = outcome.get("duration_s")
    ok = all(check["ok"] for check in checks)
    connection_refresh()  # the checks may have outlasted the one opened before them
    Run.objects.filter(pk=backup.pk).update(verified=ok, verified_at=timezone.now())
    Run.objects.filter(pk=run.pk).update(checks=checks)
    run.checks = checks
    if not ok:
        failed = [check for check in checks if not check["ok"]]
        raise ArchiveError(
            "Verification failed: "
            + "; ".join(f"{check['name']}: {check.get('detail', '')}" for check in failed)
        )
    return {**result, "checks": checks}

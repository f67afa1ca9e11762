"""The JSON shapes of the contract, shared by the CLI, the pages and the API."""

from __future__ import annotations

from django.db.models import Prefetch

from backups.models import DEFAULT_STORAGE_NAME, Copy, Run


def run_to_dict(run: Run) -> dict:
    """Return the contract's object for a run."""
    data = {
        "id": run.pk,
        "kind": run.kind,
        "source": run.source.name,
        "status": run.status,
        "trigger": run.trigger,
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "duration_s": round(run.duration_s, 3) if run.duration_s is not None else None,
        "archive": run.archive or None,
        "sha256": run.sha256 or None,
        "size": run.size,
        "bytes": run.payload_bytes,
        "files": run.payload_files,
        "error": run.error or None,
        "warnings": run.warnings,
    }
    if run.kind == Run.Kind.BACKUP:
        data["storage"] = run.storage.name if run.storage_id else DEFAULT_STORAGE_NAME
        data["copies"] = copies_of(run)
        data["verified"] = run.verified
        data["keep"] = run.keep
        # The age recipients (public keys) it was encrypted to; empty: not encrypted.
        data["recipients"] = list(run.recipients or [])
        data["level"] = run.level
        data["base"] = run.base_id
        data["full"] = run.full_id
    if run.kind in (Run.Kind.RESTORE, Run.Kind.VERIFY, Run.Kind.COPY):
        data["backup"] = run.backup_id
    if run.kind in (Run.Kind.RESTORE, Run.Kind.COPY):
        data["storage"] = run.storage.name if run.storage_id else None
    if run.kind == Run.Kind.RESTORE:
        data["target"] = run.target
        data["paths"] = run.paths
        data["in_place"] = run.in_place
    if run.kind == Run.Kind.VERIFY:
        data["checks"] = run.checks
        data["drill"] = run.drill
    return data


def copies_of(backup: Run) -> list[dict]:
    """Return the copies of `backup` in other storages, by storage name."""
    return [
        {
            "storage": copy.storage.name,
            "status": copy.status,
            "sha256": copy.sha256 or None,
            "at": copy.copied_at.isoformat() if copy.copied_at else None,
            "size": copy.size,
            "duration_s": copy.duration_s,
            "error": copy.error or None,
        }
        for copy in backup.copies.select_related("storage").order_by("storage__name")
    ]


def proven_copies() -> Prefetch:
    """Return the prefetch of backups' proven copies with their storages, as `proven_copies`."""
    return Prefetch(
        "copies",
        queryset=Copy.objects.filter(status=Copy.Status.SUCCEEDED)
        .select_related("storage")
        .order_by("storage__name"),
        to_attr="proven_copies",
    )

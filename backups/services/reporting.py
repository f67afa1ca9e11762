"""The JSON shapes of the contract, shared by the CLI, the pages and the API."""

from __future__ import annotations

from backups.models import Run


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
        data["verified"] = run.verified
        data["keep"] = run.keep
        data["level"] = run.level
        data["base"] = run.base_id
        data["full"] = run.full_id
    if run.kind in (Run.Kind.RESTORE, Run.Kind.VERIFY):
        data["backup"] = run.backup_id
    if run.kind == Run.Kind.RESTORE:
        data["target"] = run.target
        data["paths"] = run.paths
        data["in_place"] = run.in_place
    if run.kind == Run.Kind.VERIFY:
        data["checks"] = run.checks
        data["drill"] = run.drill
    return data

"""Backups with past timestamps and real (small) files, for retention and status tests."""

from __future__ import annotations

from datetime import timedelta

from backups.models import Manifest, Run
from backups.services.standing import standing_refresh


def make_backups(source, times, *, status=Run.Status.SUCCEEDED, files=True, **fields):
    """Create one finished backup of `source` per start time, with its three files.

    The archive, sidecar and manifest are tiny stand-ins: retention never reads them, it
    only lists the folder and unlinks them.
    """
    folder = source.archive_dir
    folder.mkdir(parents=True, exist_ok=True)
    runs = Run.objects.bulk_create(
        [
            Run(
                source=source,
                kind=Run.Kind.BACKUP,
                status=status,
                trigger=Run.Trigger.SCHEDULE,
                queued_at=moment,
                started_at=moment,
                finished_at=moment + timedelta(seconds=30),
                size=3,
                **fields,
            )
            for moment in times
        ]
    )
    for run in runs:
        run.archive = str(folder / f"{run.stem}.tar.zst")
        if files:
            for path in paths_of(run):
                path.write_bytes(b"x\n")
    Run.objects.bulk_update(runs, ["archive"])
    Manifest.objects.bulk_create(
        [Manifest(run=run, path=str(run.manifest_path), files=1) for run in runs]
    )
    if runs:
        # As the services do when runs end (history older than the newest backup included).
        standing_refresh(source.pk, since=min(times))
    return runs


def paths_of(run):
    """Return the archive, its sidecar and its manifest."""
    archive = run.archive_path
    return [archive, archive.with_name(archive.name + ".sha256"), run.manifest_path]


# The fields of a source in `status --json`, as the contract lists them.
CONTRACT_STATUS_FIELDS = {
    "name",
    "kind",
    "last_success_at",
    "age_s",
    "rpo_s",
    "rpo_status",
    "rto_s",
    "last_drill_s",
    "rto_status",
    "integrity",
    "running",
}

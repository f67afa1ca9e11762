"""Rebuild the catalog from the archives on disk: a lost database loses no backup."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from django.core.management.color import no_style
from django.db import DatabaseError, connection, transaction
from django.utils.text import slugify

from backups.engine.errors import EngineError
from backups.engine.manifest import iter_manifest
from backups.models import Run, Source
from backups.services.manifests import manifest_store
from backups.services.standing import standing_refresh


@dataclass
class ImportReport:
    """What an import found: new runs, runs already known, and files it refused.

    `reindexed` are known backups whose file list the catalog lacked (its indexing failed
    when the backup ran) and which were indexed again.
    """

    imported: list[int] = field(default_factory=list)
    known: int = 0
    reindexed: list[int] = field(default_factory=list)
    sources_created: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    # The oldest run imported per source id: its standing is derived again from there.
    oldest_by_source: dict[int, datetime] = field(default_factory=dict)


def _archive_for(manifest: Path, name: str | None) -> Path | None:
    if name and (manifest.parent / name).is_file():
        return manifest.parent / name
    stem = manifest.name.removesuffix(".manifest.json")
    for candidate in sorted(manifest.parent.glob(f"{stem}.*")):
        if candidate.suffix not in (".json", ".sha256", ".tmp") and candidate.is_file():
            return candidate
    return None


def _source_for(header: dict, folder: Path, report: ImportReport) -> Source:
    info = header.get("source") or {}
    name = info.get("name") or folder.name
    source = Source.objects.filter(name=name).first()
    if source is None:
        # The location may not exist on this host (a pod, another machine): keep it as
        # recorded, unvalidated, so the catalog says what was backed up and from where.
        source = Source.objects.create(
            name=name,
            slug=folder.name or slugify(name),
            kind=info.get("kind") or Source.Kind.DIRECTORY,
            location=info.get("location") or "",
            enabled=False,
            notes="Recreated by import_archives from the manifests on disk.",
        )
        report.sources_created.append(name)
    return source


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def import_archive(manifest_path: Path, report: ImportReport) -> None:
    """Add the run described by one manifest; for a known run, index a missing file list."""
    header, _ = iter_manifest(manifest_path)
    archive_info = header.get("archive") or {}
    archive = _archive_for(manifest_path, archive_info.get("name"))
    if archive is None:
        report.refused.append(f"{manifest_path}: its archive is missing; skipped.")
        return
    known = Run.objects.filter(archive=str(archive))
    if known.exists():
        # Verifications name the archive too: only the backup itself holds the file list.
        unindexed = known.restorable().filter(manifest__isnull=True).first()
        if unindexed is None:
            report.known += 1
        else:
            manifest_store(unindexed, manifest_path)
            report.reindexed.append(unindexed.pk)
        return
    with transaction.atomic():
        source = _source_for(header, manifest_path.parent, report)
        run_id = header.get("run")
        taken = run_id is None or Run.objects.filter(pk=run_id).exists()
        totals = header.get("totals") or {}
        run = Run.objects.create(
            pk=None if taken else run_id,
            source=source,
            kind=Run.Kind.BACKUP,
            status=Run.Status.SUCCEEDED,
            trigger=header.get("trigger") or Run.Trigger.MANUAL,
            queued_at=_when(header.get("started_at")) or datetime.now().astimezone(),
            started_at=_when(header.get("started_at")),
            finished_at=_when(header.get("finished_at")),
            archive=str(archive),
            size=archive.stat().st_size,
            sha256=archive_info.get("sha256", ""),
            payload_bytes=totals.get("bytes"),
            payload_files=totals.get("files"),
        )
        manifest_store(run, manifest_path)
    report.imported.append(run.pk)
    moment = run.started_at or run.queued_at
    oldest = report.oldest_by_source.get(source.pk)
    report.oldest_by_source[source.pk] = min(moment, oldest) if oldest else moment


def import_archives(root: Path) -> ImportReport:
    """Import every manifest under `root` (one folder per source); safe to run again."""
    report = ImportReport()
    if not root.is_dir():
        raise EngineError(f"The archive folder {root} does not exist.")
    for manifest in sorted(root.glob("*/*.manifest.json")):
        try:
            import_archive(manifest, report)
        except EngineError as error:
            report.refused.append(f"{manifest}: {error}")
        except OSError as error:
            report.refused.append(f"{manifest}: cannot be read: {error.strerror or error}.")
        except DatabaseError as error:
            report.refused.append(
                f"{manifest}: the database refused it ({error}); fix the database, then run "
                "import_archives again."
            )
    for source_id, since in sorted(report.oldest_by_source.items()):
        standing_refresh(source_id, since=since)
    if report.imported:
        # Runs were created with the ids their manifests recorded: move the id sequence
        # past them so the next run does not collide (PostgreSQL keeps a separate one).
        with connection.cursor() as cursor:
            for sql in connection.ops.sequence_reset_sql(no_style(), [Run]):
                cursor.execute(sql)
    return report

"""Rebuild the catalog from the archives on disk: a lost database loses no backup.

Nothing read from disk is trusted. A manifest only describes the files beside it: its
archive is a plain file name in the manifest's own folder, named after the manifest
(`<stamp>-<id>`); the folder is a source's slug, and a manifest belongs to the source that
owns it; its dates are not in the future and end after they start; its run id is taken
only when no other run has it. Anything else is refused with a sentence and skipped.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.core.management.color import no_style
from django.db import DatabaseError, connection, transaction
from django.utils import timezone
from django.utils.text import slugify

from backups.engine.errors import EngineError
from backups.engine.manifest import iter_manifest
from backups.engine.names import printable
from backups.models import Run, Source
from backups.services.manifests import manifest_store
from backups.services.standing import standing_refresh

# Clocks of worker hosts differ a little; a manifest dated later than this is refused.
CLOCK_SKEW = timedelta(minutes=5)
# An id this large would leave the run id sequence (a 64-bit integer) nowhere to go.
MAX_RUN_ID = 2**62
_STEM = re.compile(r"^\d{8}T\d{6}Z-(\d+)$")
_SUFFIX = ".manifest.json"


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
    # Each imported delta's (base, full) run ids as its manifest records them, linked once
    # every manifest is in; and the run id each manifest recorded, to the id it got.
    chains: dict[int, tuple[int | None, int | None]] = field(default_factory=dict)
    run_ids: dict[int, int] = field(default_factory=dict)


class ManifestRefused(EngineError):
    """A manifest on disk describes something this import will not record."""


def _stem_id(manifest: Path) -> tuple[str, int]:
    """Return the manifest's stem `<stamp>-<id>` and the id, or refuse a malformed name."""
    stem = manifest.name.removesuffix(_SUFFIX)
    match = _STEM.match(stem)
    if match is None:
        raise ManifestRefused(
            f"its name is not <YYYYmmddTHHMMSSZ>-<run id>{_SUFFIX}, so it is no manifest "
            "this program wrote; skipped."
        )
    return stem, int(match.group(1))


def _archive_for(manifest: Path, stem: str, name: str) -> Path:
    """Return the archive `name` the manifest records, a regular file beside it."""
    plain = (
        name not in (".", "..")
        and "/" not in name
        and "\x00" not in name
        and name.startswith(f"{stem}.")
        and not name.endswith((_SUFFIX, ".sha256", ".tmp"))
    )
    if not plain:
        raise ManifestRefused(
            f"it names the archive {printable(name)!r}, which is not a file name of the "
            f"form {stem}.<extension> in the manifest's own folder; skipped."
        )
    archive = manifest.parent / name
    try:
        info = os.lstat(archive)
    except FileNotFoundError:
        raise ManifestRefused("its archive is missing; skipped.") from None
    if not stat.S_ISREG(info.st_mode):
        raise ManifestRefused(f"its archive {name} is not a regular file; skipped.")
    return archive


def _check_times(header: dict, now: datetime) -> tuple[datetime, datetime]:
    started, finished = header.get("started_at"), header.get("finished_at")
    if started is None or finished is None:
        raise ManifestRefused("it records no started_at or no finished_at; skipped.")
    latest = now + CLOCK_SKEW
    for name, moment in (("started_at", started), ("finished_at", finished)):
        if moment > latest:
            raise ManifestRefused(
                f"its {name} {moment.isoformat()} is in the future (this host's clock says "
                f"{now.isoformat(timespec='seconds')}); skipped."
            )
    if started > finished:
        raise ManifestRefused(
            f"it finished ({finished.isoformat()}) before it started ({started.isoformat()}); "
            "skipped."
        )
    return started, finished


def _source_for(header: dict, folder: Path, report: ImportReport) -> Source:
    """Return the source that owns `folder`, creating it only from a matching manifest."""
    slug = folder.name
    info = header.get("source")
    if info is None:
        raise ManifestRefused("it records no source; skipped.")
    name = info["name"]
    named = Source.objects.filter(name=name).first()
    if named is not None and named.slug != slug:
        raise ManifestRefused(
            f"it claims the source {name!r}, whose archives live in the folder "
            f"{named.slug}, not in {slug}; skipped."
        )
    owner = Source.objects.filter(slug=slug).first()
    if owner is not None:
        # A source renamed since keeps its folder: the folder decides, not the name.
        return owner
    if slugify(name)[:100] != slug or len(name) > 100:
        raise ManifestRefused(
            f"the folder {slug} belongs to no source, and the source {name!r} that the "
            f"manifest claims would live in the folder {slugify(name) or '(none)'}; skipped."
        )
    location = info.get("location") or ""
    if len(location) > Source._meta.get_field("location").max_length:
        raise ManifestRefused("the source location it records is too long; skipped.")
    # The location may not exist on this host (a pod, another machine): keep it as
    # recorded, unvalidated, so the catalog says what was backed up and from where.
    source = Source.objects.create(
        name=name,
        slug=slug,
        kind=info["kind"],
        location=location,
        enabled=False,
        notes="Recreated by import_archives from the manifests on disk.",
    )
    report.sources_created.append(name)
    return source


def _run_id(stem_id: int, header: dict) -> int | None:
    """Return the id to give the run: its own, unless another run already has it."""
    recorded = header.get("run")
    if recorded is not None and recorded != stem_id:
        raise ManifestRefused(
            f"it records run #{recorded} but its name says run #{stem_id}; skipped."
        )
    if stem_id >= MAX_RUN_ID:
        raise ManifestRefused(
            f"its run id {stem_id} is beyond {MAX_RUN_ID - 1}, where the run id sequence "
            "would run out; skipped."
        )
    return None if Run.objects.filter(pk=stem_id).exists() else stem_id


def import_archive(manifest_path: Path, report: ImportReport) -> None:
    """Add the run described by one manifest; for a known run, index a missing file list."""
    stem, stem_id = _stem_id(manifest_path)
    header, _ = iter_manifest(manifest_path)
    archive_info = header["archive"]
    archive = _archive_for(manifest_path, stem, archive_info["name"])
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
    started, finished = _check_times(header, timezone.now())
    trigger = header.get("trigger")
    totals = header["totals"]
    with transaction.atomic():
        source = _source_for(header, manifest_path.parent, report)
        run = Run.objects.create(
            pk=_run_id(stem_id, header),
            source=source,
            kind=Run.Kind.BACKUP,
            status=Run.Status.SUCCEEDED,
            trigger=trigger if trigger in Run.Trigger.values else Run.Trigger.MANUAL,
            queued_at=started,
            started_at=started,
            finished_at=finished,
            archive=str(archive),
            size=archive.stat().st_size,
            sha256=archive_info["sha256"].lower(),
            payload_bytes=totals["bytes"],
            payload_files=totals["files"],
            level=header.get("level", Run.Level.FULL),
        )
        manifest_store(run, manifest_path)
    report.imported.append(run.pk)
    report.run_ids[header.get("run", stem_id)] = run.pk
    if run.level != Run.Level.FULL:
        report.chains[run.pk] = (header.get("base"), header.get("full"))
    moment = run.started_at or run.queued_at
    oldest = report.oldest_by_source.get(source.pk)
    report.oldest_by_source[source.pk] = min(moment, oldest) if oldest else moment


def _link_chains(report: ImportReport) -> None:
    """Point each imported delta at its base and full, by the run ids its manifest names."""
    for pk, (base, full) in report.chains.items():
        links = {}
        for name, recorded in (("base_id", base), ("full_id", full)):
            target = report.run_ids.get(recorded, recorded)
            if target is not None and Run.objects.filter(pk=target, kind=Run.Kind.BACKUP).exists():
                links[name] = target
        if links:
            Run.objects.filter(pk=pk).update(**links)
        if "base_id" not in links:
            report.refused.append(
                f"Backup #{pk} is a delta of backup #{base}, which is not in the catalog: it "
                "cannot be restored until that backup's files are imported too."
            )


class ImportRefused(Exception):
    """The import cannot start as asked (no such folder, not ARCHIVE_ROOT); nothing changed."""


def import_archives(root: Path | None = None) -> ImportReport:
    """Import every manifest under ARCHIVE_ROOT (one folder per source); safe to run again.

    `root`, when given, must be ARCHIVE_ROOT itself: restores, verifications and prunes
    read archives only there. Raise ImportRefused otherwise.
    """
    archive_root = Path(settings.ARCHIVE_ROOT)
    root = archive_root if root is None else Path(root)
    if not root.is_dir():
        raise ImportRefused(f"The archive folder {root} does not exist.")
    if os.path.realpath(root) != os.path.realpath(archive_root):
        raise ImportRefused(
            f"{root} is not ARCHIVE_ROOT ({archive_root}): restores, verifications and prunes "
            "read archives only there. Run the import with ARCHIVE_ROOT set to that folder."
        )
    report = ImportReport()
    for manifest in sorted(root.glob(f"*/*{_SUFFIX}")):
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
    _link_chains(report)
    for source_id, since in sorted(report.oldest_by_source.items()):
        standing_refresh(source_id, since=since)
    if report.imported:
        # Runs were created with the ids their manifests recorded: move the id sequence
        # past them so the next run does not collide (PostgreSQL keeps a separate one).
        with connection.cursor() as cursor:
            for sql in connection.ops.sequence_reset_sql(no_style(), [Run]):
                cursor.execute(sql)
    return report

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

from backups.engine.errors import EngineError, KeyFileError
from backups.engine.manifest import open_manifest
from backups.engine.names import printable
from backups.engine.storage import StoredFile
from backups.models import Run, Source, Storage
from backups.services.encryption import identities_load
from backups.services.manifests import manifest_store
from backups.services.standing import standing_refresh

# Clocks of worker hosts differ a little; a manifest dated later than this is refused.
CLOCK_SKEW = timedelta(minutes=5)
# An id this large would leave the run id sequence (a 64-bit integer) nowhere to go.
MAX_RUN_ID = 2**62
_STEM = re.compile(r"^\d{8}T\d{6}Z-(\d+)$")
_SUFFIX = ".manifest.json"
_AGE_SUFFIX = ".manifest.json.age"


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


def _stem_id(manifest: Path | StoredFile) -> tuple[str, int]:
    """Return the manifest's stem `<stamp>-<id>` and the id, or refuse a malformed name."""
    stem = manifest.name.removesuffix(_AGE_SUFFIX).removesuffix(_SUFFIX)
    match = _STEM.match(stem)
    if match is None:
        raise ManifestRefused(
            f"its name is not <YYYYmmddTHHMMSSZ>-<run id>{_SUFFIX}, so it is no manifest "
            "this program wrote; skipped."
        )
    return stem, int(match.group(1))


def _archive_for(manifest: Path | StoredFile, stem: str, name: str) -> tuple[object, int]:
    """Return the archive `name` the manifest records, a regular file beside it, and its size."""
    plain = (
        name not in (".", "..")
        and "/" not in name
        and "\x00" not in name
        and name.startswith(f"{stem}.")
        and not name.endswith((_SUFFIX, _AGE_SUFFIX, ".sha256", ".tmp"))
    )
    if not plain:
        raise ManifestRefused(
            f"it names the archive {printable(name)!r}, which is not a file name of the "
            f"form {stem}.<extension> in the manifest's own folder; skipped."
        )
    if isinstance(manifest, StoredFile):
        archive = manifest.sibling(name)
        size = archive.size()
        if size is None:
            raise ManifestRefused("its archive is missing; skipped.")
        return archive, size
    archive = manifest.parent / name
    try:
        info = os.lstat(archive)
    except FileNotFoundError:
        raise ManifestRefused("its archive is missing; skipped.") from None
    if not stat.S_ISREG(info.st_mode):
        raise ManifestRefused(f"its archive {name} is not a regular file; skipped.")
    return archive, info.st_size


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


def _source_for(header: dict, slug: str, report: ImportReport) -> Source:
    """Return the source that owns the folder `slug`, creating it only from a matching
    manifest."""
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


def import_archive(
    manifest_path: Path | StoredFile,
    report: ImportReport,
    storage: Storage | None = None,
    identities=(),
) -> None:
    """Add the run described by one manifest; for a known run, index a missing file list.

    `manifest_path` is a file in ARCHIVE_ROOT, or in `storage` when one is given. An
    encrypted manifest (`….manifest.json.age`) is read with `identities`.
    """
    stem, stem_id = _stem_id(manifest_path)
    manifest = open_manifest(manifest_path, identities=identities)
    header = manifest.header
    archive_info = header["archive"]
    archive, size = _archive_for(manifest_path, stem, archive_info["name"])
    if isinstance(manifest_path, StoredFile):
        slug = manifest_path.key.rpartition("/")[0]
    else:
        slug = manifest_path.parent.name
    recipients = (header.get("encryption") or {}).get("recipients", [])
    known = Run.objects.filter(archive=str(archive))
    if known.exists():
        # Verifications name the archive too: only the backup itself holds the file list.
        unindexed = known.restorable().filter(manifest__isnull=True).first()
        if unindexed is None:
            report.known += 1
        else:
            manifest_store(unindexed, manifest)
            report.reindexed.append(unindexed.pk)
        return
    started, finished = _check_times(header, timezone.now())
    trigger = header.get("trigger")
    totals = header["totals"]
    with transaction.atomic():
        source = _source_for(header, slug, report)
        run = Run.objects.create(
            pk=_run_id(stem_id, header),
            source=source,
            kind=Run.Kind.BACKUP,
            status=Run.Status.SUCCEEDED,
            trigger=trigger if trigger in Run.Trigger.values else Run.Trigger.MANUAL,
            queued_at=started,
            started_at=started,
            finished_at=finished,
            storage=storage,
            archive=str(archive),
            size=size,
            sha256=archive_info["sha256"].lower(),
            payload_bytes=totals["bytes"],
            payload_files=totals["files"],
            recipients=list(recipients),
            level=header.get("level", Run.Level.FULL),
        )
        manifest_store(run, manifest)
    report.imported.append(run.pk)
    report.run_ids[header.get("run", stem_id)] = run.pk
    if run.level != Run.Level.FULL:
        report.chains[run.pk] = (header.get("base"), header.get("full"))
    moment = run.started_at or run.queued_at
    oldest = report.oldest_by_source.get(source.pk)
    report.oldest_by_source[source.pk] = min(moment, oldest) if oldest else moment


def _identities(manifests: list) -> tuple[list, str | None]:
    """Return this host's identities when some manifests are encrypted, or why there are none.

    Without one, each encrypted manifest is refused with the sentence and the plain ones
    are imported all the same.
    """
    if not any(path.name.endswith(_AGE_SUFFIX) for path in manifests):
        return [], None
    try:
        identities = identities_load()
    except KeyFileError as error:
        return [], str(error)
    if not identities:
        return [], (
            "it is encrypted, and reading it needs the identity (private key) of one of its "
            "recipients: set AGE_IDENTITY_FILE on this host to the file that holds it, then "
            "run import_archives again; skipped."
        )
    return identities, None


def _indexed(manifest: Path | StoredFile) -> bool:
    """Return whether the backup of a manifest this host cannot read is in the catalog
    already, file list included: then there is nothing to import, key or no key."""
    if isinstance(manifest, StoredFile):
        return False  # such a backup is looked up by its address, which needs the header
    stem = manifest.name.removesuffix(_AGE_SUFFIX)
    return Run.objects.filter(
        kind=Run.Kind.BACKUP,
        archive__startswith=f"{manifest.parent / stem}.",
        manifest__isnull=False,
    ).exists()


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


def _stored_manifests(storage: Storage) -> list[StoredFile]:
    """Return the manifests in each source folder of `storage`; raise ImportRefused."""
    try:
        opened = storage.open()
        found = []
        for folder in opened.list(""):
            if not folder.is_folder:
                continue
            for entry in opened.list(folder.name):
                if not entry.is_folder and entry.name.endswith((_SUFFIX, _AGE_SUFFIX)):
                    found.append(StoredFile(opened, f"{folder.name}/{entry.name}"))
    except EngineError as error:
        raise ImportRefused(f"Storage {storage.name!r} cannot be listed: {error}") from None
    return sorted(found, key=lambda item: item.key)


def import_archives(root: Path | None = None, *, storage: Storage | None = None) -> ImportReport:
    """Import every manifest under ARCHIVE_ROOT (one folder per source); safe to run again.

    `root`, when given, must be ARCHIVE_ROOT itself: restores, verifications and prunes
    read archives only there. With `storage`, import the manifests of that storage instead
    (its folders are sources' slugs too). Raise ImportRefused otherwise.
    """
    if storage is not None:
        return _import_all(_stored_manifests(storage), storage)
    archive_root = Path(settings.ARCHIVE_ROOT)
    root = archive_root if root is None else Path(root)
    if not root.is_dir():
        raise ImportRefused(f"The archive folder {root} does not exist.")
    if os.path.realpath(root) != os.path.realpath(archive_root):
        raise ImportRefused(
            f"{root} is not ARCHIVE_ROOT ({archive_root}): restores, verifications and prunes "
            "read archives only there. Run the import with ARCHIVE_ROOT set to that folder."
        )
    manifests = sorted([*root.glob(f"*/*{_SUFFIX}"), *root.glob(f"*/*{_AGE_SUFFIX}")])
    return _import_all(manifests, None)


def _import_all(manifests: list, storage: Storage | None) -> ImportReport:
    """Import each manifest, each refusal a line of the report; then fix what follows."""
    report = ImportReport()
    identities, key_problem = _identities(manifests)
    for manifest in manifests:
        if key_problem and manifest.name.endswith(_AGE_SUFFIX):
            if _indexed(manifest):
                report.known += 1
            else:
                report.refused.append(f"{manifest}: {key_problem}")
            continue
        try:
            import_archive(manifest, report, storage, identities)
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

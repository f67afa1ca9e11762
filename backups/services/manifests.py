"""Load a backup's manifest.json into the catalog, folder by folder.

A million entries is a normal backup, so entries stream from the file in two passes (the
folders first, then the entries in batches) and memory stays flat. On PostgreSQL the
entries go in with COPY, several times faster than INSERT.

A tar can list a path twice (one produced inside a Kubernetes pod can). The catalog keeps
the first copy, as a restore does, and lets the database find the later ones: they collide
with the (folder, name) primary key, so no set of seen paths is held in memory.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Iterable, Iterator
from pathlib import Path

from django.db import IntegrityError, connection, transaction

from backups.engine.manifest import DIR, Entry, iter_manifest
from backups.engine.names import name_to_catalog
from backups.models import Manifest, ManifestDir, ManifestEntry, Run

logger = logging.getLogger(__name__)

BATCH = 5000
TYPE_CODES = {"file": "f", "dir": "d", "symlink": "l", "hardlink": "h"}
COLUMNS = ("directory_id", "name", "type", "size", "mode", "mtime", "sha256", "target")
# The start of the warning a backup records when its catalog could not be indexed; the
# file browser finds it by this prefix to explain the missing file list.
INDEX_FAILED = "The file catalog of this backup could not be indexed"


def split(path: str) -> tuple[str, str]:
    """Split a relative path into its folder ('' for the root) and its name, as catalog text.

    Names are kept as `name_to_catalog` writes them, so any file name fits a text column
    and comes back byte for byte. The root itself ("." when the tar had a member for it)
    has no name: its folder row stands for it.
    """
    path = name_to_catalog(path).strip("/")
    return ("", "") if path == "." else posixpath.split(path)


def _folders(entries: Iterable[Entry]) -> tuple[set[str], int]:
    """Return every folder the entries need, and how many entries have a row of their own."""
    folders = {""}
    listed = 0
    for entry in entries:
        folder, name = split(entry.path)
        listed += bool(name)
        if entry.type == DIR:
            folders.add(posixpath.join(folder, name))
        while folder not in folders:
            folders.add(folder)
            folder = posixpath.dirname(folder)
    return folders, listed


def _rows(entries: Iterator[Entry], dir_ids: dict[str, int]) -> Iterator[tuple]:
    for entry in entries:
        folder, name = split(entry.path)
        if not name:
            continue  # the root itself ("."): its folder row stands for it
        yield (
            dir_ids[folder],
            name,
            TYPE_CODES.get(entry.type, "f"),
            entry.size,
            entry.mode & 0o7777,
            int(entry.mtime),
            bytes.fromhex(entry.sha256) if entry.sha256 else None,
            name_to_catalog(entry.target) if entry.target is not None else None,
        )


def _copy(cursor, table: str, rows: Iterator[tuple]) -> int:
    """COPY `rows` into `table`; its errors come out as Django's database errors."""
    count = 0
    with (
        connection.wrap_database_errors,
        cursor.connection.cursor().copy(f"COPY {table} ({', '.join(COLUMNS)}) FROM STDIN") as copy,
    ):
        for row in rows:
            copy.write_row(row)
            count += 1
    return count


def _insert_postgres(rows: Iterator[tuple]) -> int:
    """COPY the rows into the table: the fast path, for a manifest without duplicates."""
    with connection.cursor() as cursor:
        return _copy(cursor, connection.ops.quote_name(ManifestEntry._meta.db_table), rows)


def _insert_postgres_first_copies(rows: Iterator[tuple]) -> int:
    """COPY the rows into a scratch table, then keep the first row of each path.

    COPY has no ON CONFLICT; the scratch table's numbering keeps the manifest's order, so
    DISTINCT ON picks the first copy by definition, not by the order rows are inserted in.
    """
    table = connection.ops.quote_name(ManifestEntry._meta.db_table)
    columns = ", ".join(COLUMNS)
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TEMPORARY TABLE manifest_scratch (LIKE {table}, "
            "seq bigint GENERATED ALWAYS AS IDENTITY)"
        )
        _copy(cursor, "manifest_scratch", rows)
        cursor.execute(
            f"INSERT INTO {table} ({columns}) SELECT DISTINCT ON (directory_id, name) "
            f"{columns} FROM manifest_scratch ORDER BY directory_id, name, seq"
        )
        count = cursor.rowcount
        cursor.execute("DROP TABLE manifest_scratch")
    return count


def _insert_generic(rows: Iterator[tuple]) -> None:
    """Insert in batches; a row whose path is already stored is skipped (first copy wins)."""
    batch: list[ManifestEntry] = []
    for row in rows:
        batch.append(ManifestEntry(**dict(zip(COLUMNS, row, strict=True))))
        if len(batch) >= BATCH:
            ManifestEntry.objects.bulk_create(batch, ignore_conflicts=True)
            batch.clear()
    ManifestEntry.objects.bulk_create(batch, ignore_conflicts=True)


@transaction.atomic
def manifest_store(run: Run, path: Path) -> Manifest:
    """Replace the catalog copy of `run`'s manifest with the contents of `path`.

    A path listed more than once is stored once, its first copy; the returned manifest's
    `duplicates` says how many later copies were skipped.
    """
    Manifest.objects.filter(run=run).delete()
    header, entries = iter_manifest(path)
    folders, listed = _folders(entries)
    totals = header.get("totals", {})
    manifest = Manifest.objects.create(
        run=run,
        path=str(path),
        files=int(totals.get("files", 0)),
        bytes=int(totals.get("bytes", 0)),
    )
    created = ManifestDir.objects.bulk_create(
        [ManifestDir(manifest=manifest, path=folder) for folder in sorted(folders)],
        batch_size=BATCH,
    )
    if any(folder.pk is None for folder in created):  # backends that cannot return ids
        created = ManifestDir.objects.filter(manifest=manifest)
    dir_ids = {folder.path: folder.pk for folder in created}
    if connection.vendor == "postgresql":
        try:
            with transaction.atomic():
                stored = _insert_postgres(_rows(iter_manifest(path)[1], dir_ids))
        except IntegrityError:
            # Rare (a tar that lists a path twice): only then pay for the scratch table.
            stored = _insert_postgres_first_copies(_rows(iter_manifest(path)[1], dir_ids))
    else:
        _insert_generic(_rows(iter_manifest(path)[1], dir_ids))
        # The batches do not say how many conflicts they ignored: count what was stored.
        stored = ManifestEntry.objects.filter(directory__manifest=manifest).count()
    manifest.entries = stored
    manifest.duplicates = listed - stored
    manifest.save(update_fields=["entries"])
    if manifest.duplicates:
        logger.warning(
            "run %s: %d path(s) of %s appear more than once; the catalog kept the first copy",
            run.pk,
            manifest.duplicates,
            path,
        )
    return manifest


def index_failed_warning(error: Exception) -> str:
    """Return the warning for a published backup whose catalog indexing raised `error`."""
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
    return (
        f"{INDEX_FAILED}: {reason}. The archive is complete and restorable, and restores "
        "read its manifest.json from disk; run `python manage.py import_archives` to index "
        "its files again."
    )


def index_failure(run: Run) -> str | None:
    """Return the warning saying why `run`'s catalog could not be indexed, if it has one.

    None once retention removed the backup: its archive is gone, the advice no longer holds.
    """
    if run.status not in Run.GOOD:
        return None
    return next((w for w in run.warnings if str(w).startswith(INDEX_FAILED)), None)

"""A backup's file catalog: loaded from its manifest.json, listed, searched, compared.

A million entries is a normal backup, so entries stream from the file and memory stays
flat. On PostgreSQL they take two passes (the folders first, then the entries, with COPY,
several times faster than INSERT); on SQLite one, each folder inserted when first needed.

Reading it, every answer is a bounded slice through an index: a folder is one lookup of
(manifest, path) and a range of its entries in name order (keyset pagination, no
OFFSET); a search stops at its first matches; a diff walks both backups in the same order
a bounded slice at a time and says where to continue.

A tar can list a path twice (one produced inside a Kubernetes pod can). The catalog keeps
the first copy, as a restore does, and lets the database find the later ones: they collide
with the (folder, name) primary key, so no set of seen paths is held in memory.
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from django.db import IntegrityError, connection, transaction
from django.db.models import Q

from backups.engine.crypto import Identity
from backups.engine.manifest import DIR, Entry, ManifestReader, open_manifest
from backups.engine.names import name_to_catalog
from backups.engine.storage import StoredFile
from backups.models import Manifest, ManifestDir, ManifestEntry, Run

logger = logging.getLogger(__name__)

BATCH = 5000
TYPE_CODES = {"file": "f", "dir": "d", "symlink": "l", "hardlink": "h", "deleted": "x"}
DELETED = "deleted"
COLUMNS = ("directory_id", "name", "type", "size", "mode", "mtime", "sha256", "target")
# The start of the warning a backup records when its catalog could not be indexed; the
# file browser finds it by this prefix to explain the missing file list.
INDEX_FAILED = "The file catalog of this backup could not be indexed"
# A diff reads at most this many entries per backup, and stops after this long: a page
# of two identical million-entry backups still answers quickly, with a link onwards.
DIFF_LIMIT = 200
DIFF_SCAN_LIMIT = 200_000
DIFF_TIME_S = 1.0
DIFF_FIRST_SLICE = 250
DIFF_MAX_SLICE = 20_000
# SQLite's trigram index of the names (migration 0003), and how many of its matches are
# worth fetching before a scan of the one backup is cheaper.
FTS = "backups_manifestentry_fts"
FTS_CAP = 20_000
_FTS_READY: dict[str, bool] = {}
ROW_COLUMNS = ("directory__path", "name", "type", "size", "mode", "mtime", "sha256", "target")


def split(path: str) -> tuple[str, str]:
    """Split a relative path into its folder ('' for the root) and its name, as catalog text.

    Names are kept as `name_to_catalog` writes them, so any file name fits a text column
    and comes back byte for byte. The root itself ("." when the tar had a member for it)
    has no name: its folder row stands for it.
    """
    path = name_to_catalog(path).strip("/")
    if path == ".":
        return "", ""
    folder, _, name = path.rpartition("/")
    # posixpath.split's answer, without its cost on every row; it also folds "a//b".
    return posixpath.split(path) if folder.endswith("/") else (folder, name)


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


def _store_sqlite(manifest: Manifest, entries: Iterator[Entry]) -> tuple[int, int]:
    """Insert the folders and rows of `entries` in one pass; return (listed, stored).

    Each folder gets its row the first time an entry needs it (its parents first), so the
    manifest is read once, not once for the folders and again for the rows. Rows go in by
    executemany in batches: the ORM's bulk_create builds a model and compiles SQL for each
    of a million rows, several times the cost of the insert itself. A path already stored
    is skipped (INSERT OR IGNORE: the first copy wins), and the changes SQLite counts are
    the rows stored.
    """
    table = connection.ops.quote_name(ManifestEntry._meta.db_table)
    dirs = connection.ops.quote_name(ManifestDir._meta.db_table)
    marks = ", ".join(["%s"] * len(COLUMNS))
    insert = f"INSERT OR IGNORE INTO {table} ({', '.join(COLUMNS)}) VALUES ({marks})"
    manifest_id = manifest.pk
    dir_ids: dict[str, int] = {}
    listed = stored = 0
    with connection.cursor() as cursor:

        def add_folder(path: str) -> int:
            missing = []
            while path not in dir_ids:
                missing.append(path)
                path = posixpath.dirname(path)
            for folder in reversed(missing):
                cursor.execute(
                    f"INSERT INTO {dirs} (manifest_id, path) VALUES (%s, %s)", [manifest_id, folder]
                )
                dir_ids[folder] = cursor.lastrowid
            return dir_ids[missing[0]] if missing else dir_ids[path]

        cursor.execute(f"INSERT INTO {dirs} (manifest_id, path) VALUES (%s, %s)", [manifest_id, ""])
        dir_ids[""] = cursor.lastrowid
        batch: list[tuple] = []
        get_id = dir_ids.get
        for entry in entries:
            folder, name = split(entry.path)
            if not name:
                continue  # the root itself ("."): its folder row stands for it
            listed += 1
            kind = entry.type
            if kind == DIR:
                path = f"{folder}/{name}" if folder else name
                if path not in dir_ids:
                    add_folder(path)
            sha256 = entry.sha256
            target = entry.target
            batch.append(
                (
                    get_id(folder) or add_folder(folder),
                    name,
                    TYPE_CODES.get(kind, "f"),
                    entry.size,
                    entry.mode & 0o7777,
                    int(entry.mtime),
                    bytes.fromhex(sha256) if sha256 else None,
                    name_to_catalog(target) if target is not None else None,
                )
            )
            if len(batch) >= BATCH:
                cursor.executemany(insert, batch)
                stored += cursor.rowcount
                batch.clear()
        if batch:
            cursor.executemany(insert, batch)
            stored += cursor.rowcount
    return listed, stored


def name_index_add(manifest: Manifest) -> None:
    """Add the names of `manifest`'s entries to SQLite's trigram index, in one statement.

    The index has no insert trigger (migration 0017): one INSERT ... SELECT after the rows
    are in costs a tenth of a trigger firing for each of them.
    """
    if not _sqlite_name_index():
        return
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {FTS}(rowid, name) SELECT e.rowid, e.name "
            "FROM backups_manifestentry e JOIN backups_manifestdir d ON d.id = e.directory_id "
            "WHERE d.manifest_id = %s",
            [manifest.pk],
        )


def _with_deleted(entries: Iterator[Entry], header: dict) -> Iterator[Entry]:
    """Yield the entries, then a marker for each path a delta records as deleted."""
    yield from entries
    for deleted in header.get("deleted") or ():
        yield Entry(path=deleted, type=DELETED)


@transaction.atomic
def manifest_store(
    run: Run,
    where: Path | StoredFile | ManifestReader,
    *,
    identities: Sequence[Identity] = (),
    recipients: Sequence[str] = (),
) -> Manifest:
    """Replace the catalog copy of `run`'s manifest with the contents of `where`.

    `where` is a manifest file (an encrypted one is opened with `identities`, naming
    `recipients` when none fits), or the manifest a backup hands over as it ends. A path
    listed more than once is stored once, its first copy; the returned manifest's
    `duplicates` says how many later copies were skipped.
    """
    reader = (
        where
        if isinstance(where, ManifestReader)
        else open_manifest(where, identities=identities, recipients=recipients)
    )
    Manifest.objects.filter(run=run).delete()
    header = reader.header
    totals = header.get("totals", {})
    manifest = Manifest.objects.create(
        run=run,
        path=str(reader),
        files=int(totals.get("files", 0)),
        bytes=int(totals.get("bytes", 0)),
    )
    if connection.vendor != "postgresql":
        listed, stored = _store_sqlite(manifest, _with_deleted(reader.entries(), header))
        name_index_add(manifest)
        return _stored(run, reader, manifest, listed, stored)
    folders, listed = _folders(_with_deleted(reader.entries(), header))
    created = ManifestDir.objects.bulk_create(
        [ManifestDir(manifest=manifest, path=folder) for folder in sorted(folders)],
        batch_size=BATCH,
    )
    if any(folder.pk is None for folder in created):  # backends that cannot return ids
        created = ManifestDir.objects.filter(manifest=manifest)
    dir_ids = {folder.path: folder.pk for folder in created}
    try:
        with transaction.atomic():
            stored = _insert_postgres(_rows(_with_deleted(reader.entries(), header), dir_ids))
    except IntegrityError:
        # Rare (a tar that lists a path twice): only then pay for the scratch table.
        stored = _insert_postgres_first_copies(
            _rows(_with_deleted(reader.entries(), header), dir_ids)
        )
    return _stored(run, reader, manifest, listed, stored)


def _stored(
    run: Run, reader: ManifestReader, manifest: Manifest, listed: int, stored: int
) -> Manifest:
    """Record how many entries `manifest` holds, and say how many copies were skipped."""
    manifest.entries = stored
    manifest.duplicates = listed - stored
    manifest.save(update_fields=["entries"])
    if manifest.duplicates:
        logger.warning(
            "run %s: %d path(s) of %s appear more than once; the catalog kept the first copy",
            run.pk,
            manifest.duplicates,
            reader,
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


# Reading the catalog ---------------------------------------------------------------------


@dataclass
class Row:
    """An entry with its full path, as a folder listing, a search and a diff show it."""

    folder: str
    name: str
    type: str
    size: int
    mode: int
    mtime: int
    sha256: bytes | None
    target: str | None

    @property
    def path(self) -> str:
        return f"{self.folder}/{self.name}" if self.folder else self.name

    @property
    def is_dir(self) -> bool:
        return self.type == ManifestEntry.Type.DIR

    @property
    def type_label(self) -> str:
        return ManifestEntry.Type(self.type).label

    @property
    def sha256_hex(self) -> str:
        return bytes(self.sha256).hex() if self.sha256 else ""

    def same_as(self, other: Row) -> bool:
        """Whether the content is the same; a new mtime alone is not a change."""
        return (
            self.type == other.type
            and self.size == other.size
            and self.mode == other.mode
            and bytes(self.sha256 or b"") == bytes(other.sha256 or b"")
            and self.target == other.target
        )


def clean_folder(path: str | None) -> str:
    """Return a folder path as the catalog stores it: relative, no leading or trailing '/'.

    Raise ValueError for a path that climbs out of the backup ('..').
    """
    parts = [part for part in (path or "").split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ValueError("No such folder.")
    return "/".join(parts)


def backup_manifest(run: Run) -> Manifest | None:
    """Return the catalog copy of backup `run`'s manifest, None when it was never indexed."""
    try:
        return run.manifest
    except Manifest.DoesNotExist:
        return None


def folder_entries(manifest: Manifest, folder: str, *, after: str, limit: int) -> list[Row] | None:
    """Return up to `limit` entries of `folder` whose name sorts after `after`, by name.

    None when the backup holds no such folder. Ordered by name within one folder: a
    range of the (directory, name) primary key.
    """
    chain = _chain_ids(manifest)
    if chain is not None:
        return _composed_folder(chain, folder, after=after, limit=limit)
    directory = ManifestDir.objects.filter(manifest=manifest, path=folder).first()
    if directory is None:
        return None
    entries = ManifestEntry.objects.filter(directory=directory)
    if after:
        entries = entries.filter(name__gt=after)
    rows = entries.order_by("name").values_list(*ROW_COLUMNS[1:])[:limit]
    return [Row(folder, *row) for row in rows]


def _chain_ids(manifest: Manifest) -> list[int] | None:
    """Return the catalog manifests of a delta's chain, its full first; None for a full."""
    run = manifest.run
    if run.level == Run.Level.FULL:
        return None
    chain = [member.pk for member in run.chain()]
    indexed = set(Manifest.objects.filter(pk__in=chain).values_list("pk", flat=True))
    return [pk for pk in chain if pk in indexed]


def _composed_folder(chain: list[int], folder: str, *, after: str, limit: int) -> list[Row] | None:
    """Return a folder as of the last backup of `chain`: each name's newest row, the
    deleted left out. Each backup's slice is read by name from `after`; a name is only
    answered once every backup's slice reaches past it, so a page is never missing one."""
    directories = dict(
        ManifestDir.objects.filter(manifest_id__in=chain, path=folder).values_list(
            "manifest_id", "pk"
        )
    )
    if not directories:
        return None
    size = limit + 1
    while True:
        merged: dict[str, tuple] = {}
        boundary = None
        for manifest_id in chain:
            if manifest_id not in directories:
                continue
            entries = ManifestEntry.objects.filter(directory_id=directories[manifest_id])
            if after:
                entries = entries.filter(name__gt=after)
            rows = list(entries.order_by("name").values_list(*ROW_COLUMNS[1:])[:size])
            if len(rows) == size and (boundary is None or rows[-1][0] < boundary):
                boundary = rows[-1][0]
            for row in rows:
                merged[row[0]] = row
        names = sorted(name for name in merged if boundary is None or name <= boundary)
        shown = [merged[name] for name in names if merged[name][1] != ManifestEntry.Type.DELETED]
        if len(shown) >= limit or boundary is None:
            return [Row(folder, *row) for row in shown[:limit]]
        size *= 2


def _sqlite_name_index() -> bool:
    """Whether SQLite's trigram index over the names exists, with its delete trigger."""
    if connection.vendor != "sqlite":
        return False
    key = connection.settings_dict["NAME"]
    if key not in _FTS_READY:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT COUNT(*) FROM sqlite_master WHERE name IN (%s, %s)",
                [FTS, f"{FTS}_delete"],
            )
            _FTS_READY[key] = cursor.fetchone()[0] == 2
    return _FTS_READY[key]


def _by_name(manifest: Manifest, text: str, limit: int):
    """Return the entries of `manifest` whose name contains `text`, at most `limit`."""
    entries = ManifestEntry.objects.filter(directory__manifest=manifest)
    if len(text) >= 3 and _sqlite_name_index():
        # FTS5 finds the few names that match among millions at once. For a term found
        # everywhere ("log") its match list is long, and a plain scan of this backup
        # finds its first matches sooner: count the matches, up to a cap, to choose.
        pattern = "%" + text.replace("%", "").replace("_", "") + "%"
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT COUNT(*) FROM (SELECT 1 FROM {FTS} WHERE name LIKE %s LIMIT %s)",
                [pattern, FTS_CAP + 1],
            )
            if cursor.fetchone()[0] <= FTS_CAP:
                # CROSS JOIN fixes the order: from the index's matches to their rows,
                # not from every row of the backup to the match list.
                cursor.execute(
                    "SELECT d.path, e.name, e.type, e.size, e.mode, e.mtime, e.sha256, "
                    f"e.target FROM {FTS} f "
                    "CROSS JOIN backups_manifestentry e ON e.rowid = f.rowid "
                    "CROSS JOIN backups_manifestdir d ON d.id = e.directory_id "
                    "WHERE f.name LIKE %s AND d.manifest_id = %s "
                    "AND e.name LIKE %s ESCAPE '\\' LIMIT %s",
                    [pattern, manifest.pk, f"%{connection.ops.prep_for_like_query(text)}%", limit],
                )
                return cursor.fetchall()
    # PostgreSQL picks the trigram index or a scan of this backup by its statistics.
    return entries.filter(name__icontains=text).values_list(*ROW_COLUMNS)[:limit]


def manifest_search(manifest: Manifest, text: str, limit: int) -> list[Row]:
    """Return up to `limit` entries whose full path contains `text` (case-insensitive).

    For a differential or incremental, the tree as of that backup is searched: each
    backup of its chain is, and each path keeps its newest row (the deleted left out).
    """
    chain = _chain_ids(manifest)
    if chain is None:
        return _search(manifest, text, limit)
    rows: dict[tuple[str, str], Row] = {}
    members = Manifest.objects.in_bulk(chain)
    for manifest_id in chain:
        for row in _search(members[manifest_id], text, limit):
            rows[(row.folder, row.name)] = row
    shown = [row for row in rows.values() if row.type != ManifestEntry.Type.DELETED]
    return sorted(shown, key=lambda row: (row.folder, row.name))[:limit]


def _search(manifest: Manifest, text: str, limit: int) -> list[Row]:
    """Search one backup's own catalog rows (see manifest_search).

    A path is `folder/name`. A `text` without '/' is inside the path exactly when it is
    inside the folder or inside the name; one with a '/' is inside the folder, or it spans
    the last '/': its head ends the folder and its tail starts the name. Each case is its
    own indexed query (folders are few; names have the trigram index, or the primary key
    per folder for the spanning case), each bounded by `limit`.
    """
    dirs = ManifestDir.objects.filter(manifest=manifest)
    in_folder = ManifestEntry.objects.filter(directory__in=dirs.filter(path__icontains=text))
    found = list(in_folder.values_list(*ROW_COLUMNS)[:limit])
    if "/" in text:
        head, _, tail = text.rpartition("/")
        spanning = dirs.filter(path__iendswith=head).exclude(path="")
        found += ManifestEntry.objects.filter(
            directory__in=spanning, name__istartswith=tail
        ).values_list(*ROW_COLUMNS)[:limit]
    else:
        found += _by_name(manifest, text, limit)
    rows = {(row[0], row[1]): Row(*row) for row in found}
    return sorted(rows.values(), key=lambda row: (row.folder, row.name))[:limit]


def diff_choices(run: Run):
    """Return the other indexed backups of `run`'s source, newest first, to compare with."""
    return (
        Run.objects.filter(source_id=run.source_id, kind=Run.Kind.BACKUP, manifest__isnull=False)
        .exclude(pk=run.pk)
        .select_related("manifest")
        .only("pk", "status", "started_at", "queued_at", "manifest__files", "manifest__bytes")
        .order_by("-started_at", "-id")
    )


def diff_partner(run: Run, against: int | None) -> Run | None:
    """Return the backup to compare `run` with: `against`, or by default the one before it.

    "What changed since last time". Raise Run.DoesNotExist when `against` is not another
    indexed backup of the same source.
    """
    others = diff_choices(run)
    if against is not None:
        return others.get(pk=against)
    return others.filter(started_at__lt=run.started_at).first() if run.started_at else None


def older_first(one: Run, other: Run) -> tuple[Run, Run]:
    """Return two backups oldest first: a diff reads as what happened since the older one."""
    if (one.started_at or one.queued_at) >= (other.started_at or other.queued_at):
        return other, one
    return one, other


@dataclass
class Change:
    """One difference between two backups: `added`, `removed` or `changed`."""

    kind: str
    old: Row | None
    new: Row | None

    @property
    def row(self) -> Row:
        return self.new or self.old

    @property
    def what(self) -> str:
        if self.kind != "changed":
            return ""
        old, new = self.old, self.new
        parts = []
        if old.type != new.type:
            parts.append(f"type {old.type_label} → {new.type_label}")
        if old.size != new.size:
            parts.append("size")
        if old.sha256_hex != new.sha256_hex:
            parts.append("content")
        if old.mode != new.mode:
            parts.append("permissions")
        if old.target != new.target:
            parts.append("link target")
        return ", ".join(parts)


def _slice(manifest_id: int, prefix: str, after, upto, limit: int) -> list[Row]:
    """Return up to `limit` entries of a manifest in (folder, name) order, after `after`
    and up to `upto` (both (folder, name) keys, compared by the database).

    Both backups are read in the database's own order and every boundary is compared by
    the database, so the walk never depends on Python sorting text the way the database's
    collation does.
    """
    entries = ManifestEntry.objects.filter(directory__manifest_id=manifest_id)
    if prefix:
        entries = entries.filter(
            Q(directory__path=prefix) | Q(directory__path__startswith=prefix + "/")
        )
    if after is not None:
        folder, name = after
        entries = entries.filter(directory__path__gte=folder).filter(
            Q(directory__path__gt=folder) | Q(name__gt=name)
        )
    if upto is not None:
        folder, name = upto
        entries = entries.filter(directory__path__lte=folder).filter(
            Q(directory__path__lt=folder) | Q(name__lte=name)
        )
    rows = entries.order_by("directory__path", "name").values_list(*ROW_COLUMNS)[:limit]
    return [Row(*row) for row in rows]


def _merge(old: list[Row], new: list[Row]):
    """Yield (key, Change or None) for the union of two slices, in their shared order.

    Both slices cover the same key range in the same order, so a key missing from the
    other side is added or removed, and equal keys meet: a merge by membership, no
    comparison of keys needed.
    """
    old_keys = {(row.folder, row.name) for row in old}
    new_keys = {(row.folder, row.name) for row in new}
    i = j = 0
    while i < len(old) or j < len(new):
        a = old[i] if i < len(old) else None
        b = new[j] if j < len(new) else None
        if a is not None and b is not None and (a.folder, a.name) == (b.folder, b.name):
            yield (a.folder, a.name), (None if a.same_as(b) else Change("changed", a, b))
            i += 1
            j += 1
        elif a is not None and (a.folder, a.name) not in new_keys:
            yield (a.folder, a.name), Change("removed", a, None)
            i += 1
        else:
            assert b is not None and (b.folder, b.name) not in old_keys
            yield (b.folder, b.name), Change("added", None, b)
            j += 1


def diff_page(
    old_id: int, new_id: int, *, prefix: str = "", after=None, newer: Run | None = None
) -> dict:
    """Return the next differences between two manifests after the key `after`.

    Read a slice of the old backup, then the new backup up to the same key (or, when the
    new one has more entries there, a slice of it and the old one up to its end), compare,
    and go on with slices sized by how dense the differences were; stop at DIFF_LIMIT
    differences, DIFF_SCAN_LIMIT entries or DIFF_TIME_S, returning the key to continue
    from. `newer` is the backup `new_id` names, when the caller has it loaded. A
    differential or incremental against its base is its own delta (`_delta_page`).
    """
    if newer is None or newer.pk != new_id:
        newer = Run.objects.filter(pk=new_id).only("level", "base_id", "full_id").first()
    if newer is not None and newer.level != Run.Level.FULL and newer.base_id == old_id:
        return _delta_page(newer, prefix=prefix, after=after)
    changes: list[Change] = []
    scanned = 0
    size = DIFF_FIRST_SLICE
    started = time.monotonic()
    while True:
        old = _slice(old_id, prefix, after, None, size)
        upto = (old[-1].folder, old[-1].name) if len(old) == size else None
        new = _slice(new_id, prefix, after, upto, size)
        if len(new) == size:
            upto = (new[-1].folder, new[-1].name)
            old = _slice(old_id, prefix, after, upto, size)
        scanned += len(old) + len(new)
        for key, change in _merge(old, new):
            if change is not None:
                changes.append(change)
                if len(changes) == DIFF_LIMIT:
                    return {"changes": changes, "scanned": scanned, "next": key}
        if upto is None:
            return {"changes": changes, "scanned": scanned, "next": None}
        after = upto
        if scanned >= DIFF_SCAN_LIMIT or time.monotonic() - started > DIFF_TIME_S:
            return {"changes": changes, "scanned": scanned, "next": after}
        # Size the next slice by how often entries differed so far: about what the page
        # still needs, never less than four times more while nothing differs.
        if changes:
            wanted = (DIFF_LIMIT - len(changes)) * scanned / len(changes) / 2 * 1.25
            size = int(min(DIFF_MAX_SLICE, max(DIFF_FIRST_SLICE, wanted)))
        else:
            size = min(size * 4, DIFF_MAX_SLICE)


def _delta_page(newer: Run, *, prefix: str, after) -> dict:
    """Return the differences of a differential or incremental from its base: its own
    delta, each row with the base's version of it (as of the base, from its chain)."""
    rows = _slice(newer.pk, prefix, after, None, DIFF_LIMIT)
    base = Run.objects.get(pk=newer.base_id)
    chain = list(reversed([member.pk for member in base.chain()]))
    changes = []
    for row in rows:
        old = _newest_row(chain, row.folder, row.name)
        if row.type == ManifestEntry.Type.DELETED:
            if old is not None:
                changes.append(Change("removed", old, None))
        elif old is None:
            changes.append(Change("added", None, row))
        elif not old.same_as(row):
            changes.append(Change("changed", old, row))
    last = (rows[-1].folder, rows[-1].name) if len(rows) == DIFF_LIMIT else None
    return {"changes": changes, "scanned": len(rows), "next": last}


def _newest_row(chain_newest_first: list[int], folder: str, name: str) -> Row | None:
    """Return a path's row as of the first backup of the list that records it."""
    for manifest_id in chain_newest_first:
        found = (
            ManifestEntry.objects.filter(
                directory__manifest_id=manifest_id, directory__path=folder, name=name
            )
            .values_list(*ROW_COLUMNS)
            .first()
        )
        if found is not None:
            row = Row(*found)
            return None if row.type == ManifestEntry.Type.DELETED else row
    return None

"""Browse what a backup holds, folder by folder; search it; compare two backups.

A manifest may list a million entries, so every page reads a bounded slice through an
index: a folder is one lookup of (manifest, path) and a range of its entries in name order
(keyset pagination, no OFFSET); a search stops at its first matches; a diff walks both
backups in the same order a bounded slice at a time and says where to continue.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.db import connection
from django.db.models import Q
from django.http import Http404
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from backups.models import Manifest, ManifestDir, ManifestEntry, Run
from backups.services.manifests import index_failure
from dashboard.views.common import permission_required_audited

ENTRIES_PER_PAGE = 200
SEARCH_LIMIT = 200
DIFF_LIMIT = 200
# A diff page reads at most this many entries per backup, and stops after this long: a
# page of two identical million-entry backups still answers quickly, with a link onwards.
DIFF_SCAN_LIMIT = 200_000
DIFF_TIME_S = 1.0
DIFF_FIRST_SLICE = 250
DIFF_MAX_SLICE = 20_000
# SQLite's trigram index of the names (migration 0003), and how many of its matches are
# worth fetching before a scan of the one backup is cheaper.
FTS = "backups_manifestentry_fts"
FTS_CAP = 20_000
_FTS_READY: dict[str, bool] = {}
COLUMNS = ("directory__path", "name", "type", "size", "mode", "mtime", "sha256", "target")


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
    """Return a folder path as the catalog stores it: relative, no leading or trailing '/'."""
    parts = [part for part in (path or "").split("/") if part not in ("", ".")]
    if ".." in parts:
        raise Http404("No such folder.")
    return "/".join(parts)


def _backup(pk: int) -> tuple[Run, Manifest | None]:
    run = get_object_or_404(
        Run.objects.select_related("source", "manifest"), pk=pk, kind=Run.Kind.BACKUP
    )
    try:
        return run, run.manifest
    except Manifest.DoesNotExist:
        return run, None


def crumbs(folder: str) -> list[tuple[str, str]]:
    """Return (name, path) for each folder from the root down to `folder`."""
    parts = folder.split("/") if folder else []
    return [(part, "/".join(parts[: index + 1])) for index, part in enumerate(parts)]


def _sqlite_name_index() -> bool:
    """Whether SQLite's trigram index over the names exists, with its triggers."""
    if connection.vendor != "sqlite":
        return False
    key = connection.settings_dict["NAME"]
    if key not in _FTS_READY:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT COUNT(*) FROM sqlite_master WHERE name IN (%s, %s, %s)",
                [FTS, f"{FTS}_insert", f"{FTS}_delete"],
            )
            _FTS_READY[key] = cursor.fetchone()[0] == 3
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
    return entries.filter(name__icontains=text).values_list(*COLUMNS)[:limit]


def search(manifest: Manifest, text: str, limit: int) -> list[Row]:
    """Return up to `limit` entries whose full path contains `text` (case-insensitive).

    A path is `folder/name`. A `text` without '/' is inside the path exactly when it is
    inside the folder or inside the name; one with a '/' is inside the folder, or it spans
    the last '/': its head ends the folder and its tail starts the name. Each case is its
    own indexed query (folders are few; names have the trigram index, or the primary key
    per folder for the spanning case), each bounded by `limit`.
    """
    dirs = ManifestDir.objects.filter(manifest=manifest)
    in_folder = ManifestEntry.objects.filter(directory__in=dirs.filter(path__icontains=text))
    found = list(in_folder.values_list(*COLUMNS)[:limit])
    if "/" in text:
        head, _, tail = text.rpartition("/")
        spanning = dirs.filter(path__iendswith=head).exclude(path="")
        found += ManifestEntry.objects.filter(
            directory__in=spanning, name__istartswith=tail
        ).values_list(*COLUMNS)[:limit]
    else:
        found += _by_name(manifest, text, limit)
    rows = {(row[0], row[1]): Row(*row) for row in found}
    return sorted(rows.values(), key=lambda row: (row.folder, row.name))[:limit]


@permission_required_audited("backups.view_run")
@require_GET
def manifest_browse(request, pk):
    """List one folder of a backup with sizes and hashes, or search the whole backup."""
    run, manifest = _backup(pk)
    context = {
        "run": run,
        "manifest": manifest,
        "source": run.source,
        "can_restore": request.user.has_perm("backups.run_restore"),
    }
    if manifest is None:
        context["index_failure"] = index_failure(run)
        return render(request, "dashboard/manifest_browse.html", context, status=404)
    text = request.GET.get("q", "").strip()
    if text:
        rows = search(manifest, text, SEARCH_LIMIT + 1)
        context.update(
            query=text,
            results=rows[:SEARCH_LIMIT],
            truncated=len(rows) > SEARCH_LIMIT,
            limit=SEARCH_LIMIT,
        )
        return render(request, "dashboard/manifest_browse.html", context)
    folder_path = clean_folder(request.GET.get("path"))
    folder = ManifestDir.objects.filter(manifest=manifest, path=folder_path).first()
    if folder is None:
        raise Http404(f"Backup #{run.pk} holds no folder {folder_path!r}.")
    after = request.GET.get("after", "")
    entries = ManifestEntry.objects.filter(directory=folder)
    if after:
        entries = entries.filter(name__gt=after)
    # Ordered by name within one folder: a range of the (directory, name) primary key.
    rows = [
        Row(folder_path, *row)
        for row in entries.order_by("name").values_list(*COLUMNS[1:])[: ENTRIES_PER_PAGE + 1]
    ]
    context.update(
        folder=folder_path,
        crumbs=crumbs(folder_path),
        parent=folder_path.rpartition("/")[0] if folder_path else None,
        entries=rows[:ENTRIES_PER_PAGE],
        next_after=rows[ENTRIES_PER_PAGE - 1].name if len(rows) > ENTRIES_PER_PAGE else None,
        after=after,
    )
    return render(request, "dashboard/manifest_browse.html", context)


# The diff -------------------------------------------------------------------------------


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
    rows = entries.order_by("directory__path", "name").values_list(*COLUMNS)[:limit]
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


def diff_page(old_id: int, new_id: int, *, prefix: str = "", after=None) -> dict:
    """Return the next differences between two manifests after the key `after`.

    Read a slice of the old backup, then the new backup up to the same key (or, when the
    new one has more entries there, a slice of it and the old one up to its end), compare,
    and go on with slices sized by how dense the differences were; stop at DIFF_LIMIT
    differences, DIFF_SCAN_LIMIT entries or DIFF_TIME_S, returning the key to continue
    from.
    """
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


@permission_required_audited("backups.view_run")
@require_GET
def manifest_diff(request, pk):
    """Compare a backup with another backup of the same source: added, removed, changed."""
    run, manifest = _backup(pk)
    others = (
        Run.objects.filter(source_id=run.source_id, kind=Run.Kind.BACKUP, manifest__isnull=False)
        .exclude(pk=run.pk)
        .select_related("manifest")
        .only("pk", "status", "started_at", "queued_at", "manifest__files", "manifest__bytes")
        .order_by("-started_at", "-id")
    )
    against_id = request.GET.get("against")
    if against_id:
        try:
            other = others.get(pk=int(against_id))
        except (ValueError, Run.DoesNotExist):
            raise Http404("No such backup of this source to compare with.") from None
    else:
        # By default, the backup just before this one: "what changed since last time".
        other = others.filter(started_at__lt=run.started_at).first() if run.started_at else None
    prefix = clean_folder(request.GET.get("path"))
    context = {
        "run": run,
        "source": run.source,
        "manifest": manifest,
        "other": other,
        "prefix": prefix,
        "choices": list(others[:50]),
        "index_failure": index_failure(run) if manifest is None else None,
    }
    if manifest is None or other is None:
        return render(request, "dashboard/manifest_diff.html", context)
    # Old and new by time: the diff reads as "what happened since the older backup".
    newer_first = (run.started_at or run.queued_at) >= (other.started_at or other.queued_at)
    old, new = (other, run) if newer_first else (run, other)
    after = None
    if "after_dir" in request.GET:
        after = (request.GET["after_dir"], request.GET.get("after_name", ""))
    result = diff_page(old.pk, new.pk, prefix=prefix, after=after)
    context.update(old=old, new=new, resumed=after is not None, **result)
    return render(request, "dashboard/manifest_diff.html", context)

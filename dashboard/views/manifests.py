"""Browse what a backup holds, folder by folder; search it; compare two backups.

The reading itself (bounded slices, the search, the diff) is the manifests service's;
these views turn a request into its arguments and its answer into a page.
"""

from __future__ import annotations

from django.http import Http404
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from backups.models import Manifest, Run
from backups.services.manifests import (
    backup_manifest,
    clean_folder,
    diff_choices,
    diff_page,
    diff_partner,
    folder_entries,
    index_failure,
    manifest_search,
    older_first,
)
from dashboard.views.common import permission_required_audited

ENTRIES_PER_PAGE = 200
SEARCH_LIMIT = 200
DIFF_CHOICES = 50


def _backup(pk: int) -> tuple[Run, Manifest | None]:
    run = get_object_or_404(
        Run.objects.select_related("source", "manifest"), pk=pk, kind=Run.Kind.BACKUP
    )
    return run, backup_manifest(run)


def _folder(request) -> str:
    try:
        return clean_folder(request.GET.get("path"))
    except ValueError as error:
        raise Http404(str(error)) from None


def crumbs(folder: str) -> list[tuple[str, str]]:
    """Return (name, path) for each folder from the root down to `folder`."""
    parts = folder.split("/") if folder else []
    return [(part, "/".join(parts[: index + 1])) for index, part in enumerate(parts)]


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
        rows = manifest_search(manifest, text, SEARCH_LIMIT + 1)
        context.update(
            query=text,
            results=rows[:SEARCH_LIMIT],
            truncated=len(rows) > SEARCH_LIMIT,
            limit=SEARCH_LIMIT,
        )
        return render(request, "dashboard/manifest_browse.html", context)
    folder = _folder(request)
    after = request.GET.get("after", "")
    rows = folder_entries(manifest, folder, after=after, limit=ENTRIES_PER_PAGE + 1)
    if rows is None:
        raise Http404(f"Backup #{run.pk} holds no folder {folder!r}.")
    context.update(
        folder=folder,
        crumbs=crumbs(folder),
        parent=folder.rpartition("/")[0] if folder else None,
        entries=rows[:ENTRIES_PER_PAGE],
        next_after=rows[ENTRIES_PER_PAGE - 1].name if len(rows) > ENTRIES_PER_PAGE else None,
        after=after,
    )
    return render(request, "dashboard/manifest_browse.html", context)


@permission_required_audited("backups.view_run")
@require_GET
def manifest_diff(request, pk):
    """Compare a backup with another backup of the same source: added, removed, changed."""
    run, manifest = _backup(pk)
    against = request.GET.get("against")
    try:
        other = diff_partner(run, int(against) if against else None)
    except (ValueError, Run.DoesNotExist):
        raise Http404("No such backup of this source to compare with.") from None
    prefix = _folder(request)
    context = {
        "run": run,
        "source": run.source,
        "manifest": manifest,
        "other": other,
        "prefix": prefix,
        "choices": list(diff_choices(run)[:DIFF_CHOICES]),
        "index_failure": index_failure(run) if manifest is None else None,
    }
    if manifest is None or other is None:
        return render(request, "dashboard/manifest_diff.html", context)
    old, new = older_first(run, other)
    after = None
    if "after_dir" in request.GET:
        after = (request.GET["after_dir"], request.GET.get("after_name", ""))
    result = diff_page(old.pk, new.pk, prefix=prefix, after=after, newer=new)
    context.update(old=old, new=new, resumed=after is not None, **result)
    return render(request, "dashboard/manifest_diff.html", context)

"""The guarded restore: choose, review what will be overwritten, type the name, go.

Every step needs `backups.run_restore`; a refusal is audited. Nothing changes before the
final POST, which carries the source's name typed by hand.
"""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from backups.models import Manifest, Run, Source
from backups.services.restore import RestoreRefused, restore_request
from backups.services.runs import SourceBusy
from dashboard.forms import RestoreConfirmForm, RestoreForm, suggested_target
from dashboard.views.common import permission_required_audited

RESTORE_POINTS = 50
PERM = "backups.run_restore"


def _restore_points(source: Source, wanted: Run | None) -> list[Run]:
    """Return the newest restorable backups of `source`, and `wanted` if it is older."""
    points = list(
        Run.objects.restore_points()
        .filter(source=source)
        .defer("log", "checks", "current_item")[:RESTORE_POINTS]
    )
    if wanted is not None and wanted.status in Run.GOOD and wanted not in points:
        points.append(wanted)
    return points


def _new_location(source: Source, backup: Run, target: str) -> dict:
    """Say what a restore to a new location writes, and what there it may overwrite."""
    kind = source.kind
    nothing = "Nothing existing is overwritten"
    if kind == Source.Kind.POSTGRES:
        return {
            "overwrites": False,
            "heading": nothing,
            "summary": (
                f"The dump in backup #{backup.pk} is loaded into the database {target}. It "
                "is created if it does not exist; if it exists it must be empty, or the "
                "restore stops before changing anything. No database object is dropped or "
                "replaced."
            ),
        }
    if kind == Source.Kind.KUBERNETES and not target.startswith("/"):
        return {
            "overwrites": True,
            "heading": "Files in the pod may be overwritten",
            "summary": (
                f"The files of backup #{backup.pk} are written into {target}: a file there "
                "with the same path as one in the backup is replaced by the backup's copy, "
                "and nothing is kept of it; other files there stay as they are."
            ),
        }
    if kind == Source.Kind.SQLITE:
        where = f"the new database file {target}; it must not exist yet"
    else:
        where = f"the folder {target}, which must be new or empty"
    return {
        "overwrites": False,
        "heading": nothing,
        "summary": (
            f"The backup is written to {where}. Files there belong to the workers' user, "
            "without set-user-ID or set-group-ID bits, whoever owned them in the backup."
        ),
    }


def _consequences(source: Source, backup: Run, *, in_place: bool, target: str, paths) -> dict:
    """Say in words what the restore will write and what it will overwrite."""
    kind = source.kind
    if not in_place:
        return _new_location(source, backup, target)
    if kind == Source.Kind.SQLITE:
        summary = (
            f"The live database file {source.location} is replaced by the snapshot in "
            f"backup #{backup.pk}. Every change made to it since that backup is lost."
        )
    elif kind == Source.Kind.POSTGRES:
        summary = (
            f"The database {source.location} is overwritten with the dump in backup "
            f"#{backup.pk} (objects in the dump are dropped and recreated). Every change "
            "made since that backup is lost."
        )
    elif kind == Source.Kind.KUBERNETES:
        scope = f"each of the {len(paths)} path(s) below" if paths else "everything"
        summary = (
            f"The files of backup #{backup.pk} ({scope}) are written over their live "
            f"copies in {source.location}: changes made to them since that backup are "
            "lost, and nothing is kept of them. Files created since stay as they are."
        )
    elif paths:
        summary = (
            f"Each of the {len(paths)} path(s) below, inside {source.location}, is replaced "
            f"by its copy in backup #{backup.pk}: files created or changed under them since "
            "that backup are lost. Everything else in the folder stays as it is."
        )
    else:
        summary = (
            f"The whole of {source.location} is replaced by the contents of backup "
            f"#{backup.pk}: every file created or changed there since that backup is lost. "
            "The current data is moved aside while the restore runs and deleted once it "
            "has succeeded."
        )
    return {"overwrites": True, "heading": "This overwrites live data", "summary": summary}


@permission_required_audited(PERM)
@require_GET
def restore_start(request):
    """Pick a restore point, a target and optionally paths (from a source, a run or files)."""
    wanted = None
    backup_id = request.GET.get("backup", "")
    if backup_id.isdigit():
        wanted = get_object_or_404(
            Run.objects.select_related("source__policy"), pk=int(backup_id), kind=Run.Kind.BACKUP
        )
        source = wanted.source
    else:
        source = get_object_or_404(
            Source.objects.select_related("policy"), slug=request.GET.get("source", "")
        )
    points = _restore_points(source, wanted)
    chosen = wanted if wanted is not None and wanted in points else (points or [None])[0]
    form = RestoreForm(
        source=source,
        backups=points,
        initial={
            "backup": chosen.pk if chosen else None,
            "mode": "new",
            "target": suggested_target(source, chosen),
            "paths": "\n".join(request.GET.getlist("path")),
        },
    )
    context = {"source": source, "form": form, "points": points, "wanted": wanted}
    return render(request, "dashboard/restore_start.html", context)


@permission_required_audited(PERM)
@require_POST
def restore_confirm(request):
    """Review (first POST) then, with the source's name typed, request the restore."""
    source = get_object_or_404(
        Source.objects.select_related("policy"), slug=request.POST.get("source", "")
    )
    wanted = None
    if request.POST.get("backup", "").isdigit():
        wanted = Run.objects.filter(
            source=source, kind=Run.Kind.BACKUP, pk=int(request.POST["backup"])
        ).first()
    points = _restore_points(source, wanted)
    confirming = "confirm_name" in request.POST
    form_class = RestoreConfirmForm if confirming else RestoreForm
    form = form_class(request.POST, source=source, backups=points)
    if not form.is_valid():
        if confirming and not form.errors.keys() - {"confirm_name"}:
            return _review(request, source, form)
        context = {"source": source, "form": form, "points": points}
        return render(request, "dashboard/restore_start.html", context)
    if not confirming:
        return _review(request, source, form)
    data = form.cleaned_data
    try:
        run = restore_request(
            backup=form.chosen,
            target=data["target"],
            in_place=form.in_place,
            paths=data.get("paths") or [],
            trigger=Run.Trigger.MANUAL,
            user=request.user,
        )
    except SourceBusy as busy:
        messages.error(request, str(busy))
        if busy.active is not None:
            return redirect("run-detail", pk=busy.active.pk)
        return redirect("source-detail", slug=source.slug)
    except RestoreRefused as refused:
        form.add_error(None, str(refused))
        context = {"source": source, "form": form, "points": points}
        return render(request, "dashboard/restore_start.html", context)
    messages.success(
        request, f"Restore #{run.pk} of backup #{form.chosen.pk} to {run.target} is queued."
    )
    return redirect("run-detail", pk=run.pk)


def _review(request, source: Source, form: RestoreForm):
    data = form.cleaned_data
    backup = form.chosen
    paths = data.get("paths") or []
    manifest = Manifest.objects.filter(run=backup).only("run", "files", "bytes").first()
    context = {
        "source": source,
        "form": form,
        "backup": backup,
        "manifest": manifest,
        "in_place": form.in_place,
        "target": data["target"],
        "paths": paths,
        "consequences": _consequences(
            source, backup, in_place=form.in_place, target=data["target"], paths=paths
        ),
    }
    return render(request, "dashboard/restore_confirm.html", context)

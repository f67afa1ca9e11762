"""A source's page (standing, charts, runs, restore points, retention) and its actions."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from backups.models import Run, Source
from backups.services.backup import backup_request
from backups.services.compliance import Health, Integrity, rpo_backup_times, source_standing
from backups.services.formats import format_bytes
from backups.services.prune import PruneRefused, prune_plan
from backups.services.reporting import proven_copies
from backups.services.runs import SourceBusy
from backups.services.verify import verify_request
from dashboard import charts
from dashboard.forms import RestorePointRangeForm, RunFilterForm
from dashboard.templatetags.dash import duration
from dashboard.views.alerts import source_alerts
from dashboard.views.common import paginate, permission_required_audited

RUNS_PER_PAGE = 25
CHART_RUNS = 60
# The newest scheduled slots that fired while the source was busy.
MISSES_SHOWN = 5
RESTORE_POINTS = 10
RETENTION_SHOWN = 50
RPO_WINDOW = timedelta(days=30)


def _history_charts(source: Source, now) -> dict:
    """Return the duration, size and RPO-age charts of a source (two queries)."""
    recent = list(
        Run.objects.filter(
            source=source, kind=Run.Kind.BACKUP, started_at__isnull=False, finished_at__isnull=False
        )
        .exclude(status=Run.Status.CANCELLED)
        .order_by("-started_at")
        .values("pk", "status", "started_at", "finished_at", "size", "payload_bytes")[:CHART_RUNS]
    )
    durations, sizes, payloads = [], [], []
    for run in recent:
        failed = run["status"] in Run.BAD
        state = "failed" if failed else run["status"]
        when = timezone.localtime(run["started_at"])
        seconds = (run["finished_at"] - run["started_at"]).total_seconds()
        head = f"#{run['pk']} {when:%Y-%m-%d %H:%M} ({state})"
        durations.append(
            charts.Point(run["started_at"], seconds, failed, f"{head}: {duration(seconds)}")
        )
        if run["size"] is not None and not failed:
            sizes.append(
                charts.Point(
                    run["started_at"], run["size"], False, f"{head}: {format_bytes(run['size'])}"
                )
            )
        if run["payload_bytes"] is not None and not failed:
            payloads.append(
                charts.Point(
                    run["started_at"],
                    run["payload_bytes"],
                    False,
                    f"{head}: {format_bytes(run['payload_bytes'])}",
                )
            )
    start = now - RPO_WINDOW
    size = format_bytes
    return {
        "duration": charts.runs_chart(
            chart_id="chart-duration",
            title=f"Backup duration, last {len(durations)} backups",
            points=durations,
            y_format=duration,
        ),
        "size": charts.runs_chart(
            chart_id="chart-size",
            title="Archive size (compressed)",
            points=sizes,
            y_format=size,
        ),
        "payload": charts.runs_chart(
            chart_id="chart-payload",
            title="Payload size (data backed up)",
            points=payloads,
            y_format=size,
        ),
        "rpo": charts.rpo_chart(
            chart_id="chart-rpo",
            backup_times=rpo_backup_times(source, start, now),
            start=start,
            end=now,
            target_s=source.policy.rpo_s if source.policy_id else None,
            y_format=duration,
        ),
    }


@permission_required_audited("backups.view_source")
@require_GET
def source_detail(request, slug):
    """Show one source: is it safe now, how did it get here, what can be done about it."""
    source = get_object_or_404(Source.objects.select_related("policy"), slug=slug)
    now = timezone.now()
    standing = source_standing(source, now=now)
    form = RunFilterForm(request.GET or None)
    runs = (
        Run.objects.filter(source=source)
        .select_related("requested_by")
        .defer("log", "checks", "current_item")
        .order_by("-queued_at", "-id")
    )
    if form.is_valid():
        if form.cleaned_data["kind"]:
            runs = runs.filter(kind=form.cleaned_data["kind"])
        if form.cleaned_data["status"]:
            runs = runs.filter(status=form.cleaned_data["status"])
    points = Run.objects.restore_points().filter(source=source)
    point_range = RestorePointRangeForm(request.GET or None, prefix="points")
    if point_range.is_valid():
        if point_range.cleaned_data["taken_from"]:
            points = points.filter(started_at__date__gte=point_range.cleaned_data["taken_from"])
        if point_range.cleaned_data["taken_until"]:
            points = points.filter(started_at__date__lte=point_range.cleaned_data["taken_until"])
    restore_points = list(
        points.select_related("storage")
        .prefetch_related(proven_copies())
        .defer("log", "checks", "current_item")[:RESTORE_POINTS]
    )
    try:
        plan, plan_refused = prune_plan(source=source, now=now), None
    except PruneRefused as refused:
        plan, plan_refused = None, str(refused)
    context = {
        "now": now,
        "source": source,
        "standing": standing,
        "health": standing.health,
        "Health": Health,
        "Integrity": Integrity,
        "charts": _history_charts(source, now),
        "form": form,
        "pager": paginate(runs, request, RUNS_PER_PAGE),
        "restore_points": restore_points,
        "point_range": point_range,
        "plan": plan,
        "plan_refused": plan_refused,
        "plan_keep": plan.keep[:RETENTION_SHOWN] if plan else [],
        "plan_remove": plan.remove[:RETENTION_SHOWN] if plan else [],
        # Per storage, once a storage keeps copies by rules of its own.
        "storage_plans": [
            (part, part.keep[:RETENTION_SHOWN], part.remove[:RETENTION_SHOWN])
            for part in plan.storages
        ]
        if plan and len(plan.storages) > 1
        else [],
        "retention_shown": RETENTION_SHOWN,
        "latest": restore_points[0] if restore_points else None,
        "misses": list(source.misses.order_by("-at")[:MISSES_SHOWN]),
        "alerts": source_alerts(source, now),
    }
    return render(request, "dashboard/source_detail.html", context)


@permission_required_audited("backups.add_run")
@require_POST
def source_backup(request, slug):
    """Queue a backup of the source now, then follow it on its run page."""
    source = get_object_or_404(Source, slug=slug)
    try:
        run = backup_request(source=source, trigger=Run.Trigger.MANUAL, user=request.user)
    except SourceBusy as busy:
        messages.warning(request, str(busy))
        if busy.active is not None:
            return redirect("run-detail", pk=busy.active.pk)
        return redirect("source-detail", slug=source.slug)
    messages.success(request, f"Backup #{run.pk} of {source.name} is queued.")
    return redirect("run-detail", pk=run.pk)


def _verify(request, slug, *, drill: bool):
    source = get_object_or_404(Source, slug=slug)
    latest = Run.objects.select_related("source").newest_restorable(source)
    what = "drill" if drill else "verification"
    if latest is None:
        verb = "drill" if drill else "verify"
        messages.error(request, f"No good backup of {source.name} yet: nothing to {verb}.")
        return redirect("source-detail", slug=source.slug)
    run = verify_request(backup=latest, trigger=Run.Trigger.MANUAL, user=request.user, drill=drill)
    if run.already_active:
        messages.info(
            request,
            f"A {what} of backup #{latest.pk} is already {run.status} as run #{run.pk}; "
            "no second one was queued.",
        )
    else:
        messages.success(request, f"A {what} of backup #{latest.pk} is queued as run #{run.pk}.")
    return redirect("run-detail", pk=run.pk)


@permission_required_audited("backups.add_run")
@require_POST
def source_verify(request, slug):
    """Queue a verification (checksum, contents, database checks) of the newest backup."""
    return _verify(request, slug, drill=False)


@permission_required_audited("backups.add_run")
@require_POST
def source_drill(request, slug):
    """Queue a restore drill of the newest backup: a timed restore that proves the RTO."""
    return _verify(request, slug, drill=True)

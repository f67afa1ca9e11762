"""A run's page: what it did or is doing, live while it runs."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from backups.models import Manifest, Run
from backups.services.runs import run_cancel
from dashboard.views.common import permission_required_audited, progress_of

LOG_TAIL_LINES = 40
USES_SHOWN = 10
# The live part polls this often while the run is queued or running (seconds).
POLL_S = 1


def _run(pk: int) -> Run:
    return get_object_or_404(
        Run.objects.select_related("source__policy", "backup", "requested_by", "storage"), pk=pk
    )


def _live_context(run: Run) -> dict:
    now = timezone.now()
    lines = run.log.splitlines()
    return {
        "run": run,
        "now": now,
        "progress": progress_of(run, now),
        "log_tail": "\n".join(lines[-LOG_TAIL_LINES:]),
        "log_lines": len(lines),
        "poll_s": POLL_S,
    }


@permission_required_audited("backups.view_run")
@require_GET
def run_detail(request, pk):
    """Show a run: status, progress, timings, archive and hash, errors, checks, log."""
    run = _run(pk)
    context = _live_context(run)
    context["restorable"] = run.kind == Run.Kind.BACKUP and run.status in Run.GOOD
    if run.kind == Run.Kind.BACKUP:
        context["manifest"] = Manifest.objects.filter(run=run).only("run", "entries").first()
        context["copies"] = list(run.copies.select_related("storage").order_by("storage__name"))
        # The verifications and restores that used this backup: its track record.
        context["uses"] = list(
            Run.objects.filter(backup=run)
            .select_related("requested_by")
            .defer("log", "current_item")
            .order_by("-queued_at", "-id")[:USES_SHOWN]
        )
    return render(request, "dashboard/run_detail.html", context)


@permission_required_audited("backups.view_run")
@require_GET
def run_live(request, pk):
    """Return the live part of a run's page; it stops polling once the run has ended."""
    return render(request, "dashboard/_run_live.html", _live_context(_run(pk)))


@permission_required_audited("backups.add_run")
@require_POST
def run_cancel_view(request, pk):
    """Stop a queued or running run, then show it."""
    run = _run(pk)
    if run_cancel(run=run, user=request.user):
        if run.publishing_at:
            messages.warning(
                request,
                f"Asked {run.kind} #{run.pk} to stop, but it is already publishing its result: "
                "it stops if it still safely can, otherwise it finishes.",
            )
        else:
            messages.success(
                request, f"Asked {run.kind} #{run.pk} to stop; it ends within seconds."
            )
    else:
        messages.info(request, f"{run.kind.capitalize()} #{run.pk} had already ended.")
    return redirect("run-detail", pk=run.pk)

"""The audit log: who did what, to which source, and how it ended."""

from __future__ import annotations

from django.db.models import Q
from django.shortcuts import render
from django.views.decorators.http import require_GET

from backups.models import AuditEvent
from dashboard.forms import ActivityFilterForm
from dashboard.views.common import paginate, permission_required_audited

PER_PAGE = 50


@permission_required_audited("backups.view_auditevent")
@require_GET
def activity(request):
    """List audit events newest first, searchable by actor, action and source."""
    form = ActivityFilterForm(request.GET or None)
    events = AuditEvent.objects.select_related("source").order_by("-at", "-id")
    if form.is_valid():
        data = form.cleaned_data
        if data["actor"]:
            events = events.filter(actor_name__icontains=data["actor"])
        if data["action"]:
            events = events.filter(action__istartswith=data["action"])
        if data["source"]:
            events = events.filter(
                Q(source__name__icontains=data["source"]) | Q(source__slug=data["source"])
            )
    context = {"form": form, "pager": paginate(events, request, PER_PAGE), "section": "activity"}
    return render(request, "dashboard/activity.html", context)

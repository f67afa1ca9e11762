"""Alerts: what fires, its history and deliveries, acknowledging, silencing; the runbook."""

from __future__ import annotations

from datetime import timedelta

from django import forms
from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from backups.fields import DurationTextField
from backups.models import Alert, Notification, Silence, Source
from backups.services.alerts import (
    LABELS,
    AlertRefused,
    alert_acknowledge,
    alert_silenced_until,
    condition_label,
    silence_create,
    silence_end,
    silences_active,
)
from backups.services.notify import notifications_enabled, targets_last_delivery
from backups.services.runbook import runbook_build
from dashboard.views.common import paginate, permission_required_audited

PER_PAGE = 50
EVENTS_SHOWN = 50
# The overview lists this many firing alerts; the alerts page has them all.
OVERVIEW_SHOWN = 10


class AckForm(forms.Form):
    """Acknowledge a firing alert, with an optional note."""

    note = forms.CharField(max_length=500, required=False)


class SilenceForm(forms.Form):
    """Silence a source, a condition, or both, for a while."""

    # A name typed, not a list: a fleet of a thousand sources is no drop-down.
    source = forms.CharField(max_length=100, required=False, help_text="its name; empty: any")
    condition = forms.ChoiceField(required=False)
    duration = DurationTextField(label="For", initial="2h", help_text="e.g. 30m, 2h, 1d")
    note = forms.CharField(max_length=500, required=False)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["condition"].choices = [("", "any"), *sorted(LABELS.items())]

    def clean_source(self) -> Source | None:
        name = self.cleaned_data["source"].strip()
        if not name:
            return None
        source = (
            Source.objects.filter(name=name).first() or Source.objects.filter(slug=name).first()
        )
        if source is None:
            raise forms.ValidationError(f"there is no source named {name!r}")
        return source


def overview_alerts(now) -> dict:
    """Return the firing alerts the overview shows first (two queries, however many)."""
    firing = list(
        Alert.objects.filter(state=Alert.State.FIRING)
        .select_related("source")
        .order_by("-since", "-pk")[: OVERVIEW_SHOWN + 1]
    )
    silences = silences_active(now=now)
    rows = [(alert, alert_silenced_until(alert, silences)) for alert in firing[:OVERVIEW_SHOWN]]
    return {"firing_alerts": rows, "more_alerts": len(firing) > OVERVIEW_SHOWN}


def source_alerts(source: Source, now) -> list[tuple[Alert, object]]:
    """Return the alerts of one source, firing first, with until when each is silenced."""
    alerts = sorted(
        Alert.objects.filter(source=source),
        key=lambda alert: (not alert.is_firing, -alert.since.timestamp()),
    )
    silences = silences_active(now=now)
    return [(alert, alert_silenced_until(alert, silences)) for alert in alerts]


@permission_required_audited("backups.view_alert")
@require_GET
def alert_list(request):
    """List alerts, firing first, with the silences in force and each target's last message."""
    now = timezone.now()
    alerts = Alert.objects.select_related("source").order_by("state", "-since", "-pk")
    pager = paginate(alerts, request, PER_PAGE)
    silences = silences_active(now=now)
    context = {
        "now": now,
        "rows": [(alert, alert_silenced_until(alert, silences)) for alert in pager.items],
        "pager": pager,
        "silences": silences,
        "deliveries": targets_last_delivery(),
        "notifications_on": notifications_enabled(),
        "silence_form": SilenceForm(),
        "section": "alerts",
    }
    return render(request, "dashboard/alerts.html", context)


@permission_required_audited("backups.view_alert")
@require_GET
def alert_detail(request, pk):
    """Show one alert: what it says, its transitions and where each message went."""
    alert = get_object_or_404(Alert.objects.select_related("source", "acknowledged_by"), pk=pk)
    now = timezone.now()
    events = list(alert.events.order_by("-at", "-pk")[:EVENTS_SHOWN])
    deliveries: dict[int, list[Notification]] = {}
    for note in Notification.objects.filter(event__in=events).order_by("pk"):
        deliveries.setdefault(note.event_id, []).append(note)
    silences = silences_active(now=now)
    initial = {"condition": alert.condition}
    if alert.source_id:
        initial["source"] = alert.source.name
    context = {
        "now": now,
        "alert": alert,
        "label": condition_label(alert.condition),
        "events": [(event, deliveries.get(event.pk, [])) for event in events],
        "silenced_until": alert_silenced_until(alert, silences),
        "ack_form": AckForm(),
        "silence_form": SilenceForm(initial=initial),
        "section": "alerts",
    }
    return render(request, "dashboard/alert_detail.html", context)


@permission_required_audited("backups.acknowledge_alert")
@require_POST
def alert_ack(request, pk):
    """Acknowledge a firing alert with an optional note (audited)."""
    alert = get_object_or_404(Alert.objects.select_related("source"), pk=pk)
    form = AckForm(request.POST)
    if not form.is_valid():
        messages.error(request, "The note is longer than 500 characters; shorten it.")
        return redirect("alert-detail", pk=alert.pk)
    try:
        alert_acknowledge(alert=alert, actor=request.user, note=form.cleaned_data["note"])
    except AlertRefused as refused:
        messages.error(request, str(refused))
    else:
        messages.success(request, f"You acknowledged {alert.summary}.")
    return redirect("alert-detail", pk=alert.pk)


@permission_required_audited("backups.acknowledge_alert")
@require_POST
def silence_add(request):
    """Silence a source, a condition or both until a time (audited)."""
    form = SilenceForm(request.POST)
    back = request.POST.get("next") or ""
    target = back if back.startswith("/") and not back.startswith("//") else None
    if not form.is_valid():
        problems = "; ".join(f"{name}: {' '.join(errs)}" for name, errs in form.errors.items())
        messages.error(request, f"Nothing was silenced: {problems}")
        return redirect(target or "alert-list")
    data = form.cleaned_data
    try:
        silence = silence_create(
            source=data["source"],
            condition=data["condition"],
            duration=timedelta(seconds=data["duration"]),
            actor=request.user,
            note=data["note"],
        )
    except AlertRefused as refused:
        messages.error(request, f"Nothing was silenced: {refused}")
    else:
        messages.success(
            request,
            f"Silenced until {timezone.localtime(silence.until):%Y-%m-%d %H:%M %Z}: alerts "
            "still show here, and notify nobody.",
        )
    return redirect(target or "alert-list")


@permission_required_audited("backups.acknowledge_alert")
@require_POST
def silence_stop(request, pk):
    """End a silence now (audited)."""
    silence = get_object_or_404(Silence.objects.select_related("source"), pk=pk)
    try:
        silence_end(silence=silence, actor=request.user)
    except AlertRefused as refused:
        messages.error(request, str(refused))
    else:
        messages.success(request, "The silence ended: alerts notify again.")
    return redirect("alert-list")


@permission_required_audited("backups.view_source")
@require_GET
def source_runbook(request, slug):
    """Show how to get this source back: restore points, measured RTO, commands, checks."""
    source = get_object_or_404(Source.objects.select_related("policy"), slug=slug)
    book = runbook_build(source)
    return render(request, "dashboard/runbook.html", {"book": book, "source": source})

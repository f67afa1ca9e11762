"""The overview: every source's standing at a glance, worst first, refreshing itself."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import timedelta

from django.db.models import Count, Q
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from backups.models import Run, Source
from backups.services.compliance import HEALTH_ORDER, Standing, fleet_standing
from dashboard.forms import OverviewFilterForm
from dashboard.views.alerts import overview_alerts
from dashboard.views.common import paginate, permission_required_audited

PER_PAGE = 50
# How often the table refreshes itself, in seconds.
REFRESH_S = 10


@dataclass
class FleetRow:
    """A source's standing plus the one word the overview sorts and counts by."""

    standing: Standing
    health: str

    def __getattr__(self, name):
        # Templates read the standing's fields straight off the row.
        return getattr(self.standing, name)


def _last_backup_at(row: FleetRow):
    last = row.standing.last_backup
    return (last.started_at or last.queued_at) if last else None


def _failed_last(row: FleetRow) -> int:
    return 0 if row.standing.last_backup_failed else 1


# Each sort key returns a tuple whose first element puts missing values last.
SORTS = {
    "status": lambda r: (HEALTH_ORDER[r.health], _failed_last(r), r.source.name.lower()),
    "name": lambda r: (0, r.source.name.lower()),
    "kind": lambda r: (0, r.source.kind, r.source.name.lower()),
    "owner": lambda r: (not r.source.owner, r.source.owner.lower(), r.source.name.lower()),
    "policy": lambda r: (
        r.source.policy_id is None,
        r.source.policy.name.lower() if r.source.policy_id else "",
    ),
    "age": lambda r: (r.age_s is None, r.age_s or 0),
    "last": lambda r: (_last_backup_at(r) is None, _last_backup_at(r) or 0),
    "next": lambda r: (r.next_run_at is None, r.next_run_at or 0),
}


def _sorted(rows: list[FleetRow], sort: str) -> list[FleetRow]:
    key = sort.lstrip("-")
    if key not in SORTS:
        key, sort = "status", "status"
    present = [row for row in rows if not SORTS[key](row)[0]]
    missing = [row for row in rows if SORTS[key](row)[0]]
    present.sort(key=SORTS[key], reverse=sort.startswith("-"))
    # Sources without a value (never backed up, no policy) stay at the end either way.
    return present + sorted(missing, key=lambda r: r.source.name.lower())


def _activity(now) -> dict:
    """Count runs in progress and failures of the last 24 hours, in one query."""
    since = now - timedelta(hours=24)
    return Run.objects.filter(
        Q(status__in=Run.ACTIVE) | Q(status__in=Run.BAD, finished_at__gte=since)
    ).aggregate(
        running=Count("pk", filter=Q(status__in=Run.ACTIVE)),
        failed_24h=Count("pk", filter=Q(status__in=Run.BAD)),
    )


@permission_required_audited("backups.view_source")
@require_GET
def overview(request):
    """Show every source's RPO, RTO and integrity, breaches and failures first.

    The table polls itself every few seconds: an htmx request gets only the partial
    `_sources_table.html`, the same one the full page includes.
    """
    now = timezone.now()
    # The 30-day figures belong to the compliance report; here they would cost a read of
    # every backup of the month on each refresh.
    standings = fleet_standing(now=now, recent=False)
    rows = [FleetRow(s, s.health) for s in standings]
    counts = Counter(row.health for row in rows)
    owners = sorted({row.source.owner for row in rows if row.source.owner}, key=str.lower)
    form = OverviewFilterForm(request.GET or None, owners=owners)
    filters = form.cleaned_data if form.is_valid() else {}
    shown = [
        row
        for row in rows
        if (not filters.get("status") or row.health == filters["status"])
        and (not filters.get("kind") or row.source.kind == filters["kind"])
        and (not filters.get("owner") or row.source.owner == filters["owner"])
    ]
    sort = request.GET.get("sort") or "status"
    shown = _sorted(shown, sort)
    context = {
        "now": now,
        "form": form,
        "pager": paginate(shown, request, PER_PAGE),
        "total": len(rows),
        "shown_count": len(shown),
        "counts": {health: counts.get(health, 0) for health in HEALTH_ORDER},
        "activity": _activity(now),
        "sort": sort if sort.lstrip("-") in SORTS else "status",
        "refresh_s": REFRESH_S,
        "kinds": dict(Source.Kind.choices),
        "section": "overview",
        **overview_alerts(now),
    }
    template = "dashboard/overview.html"
    if request.htmx and not request.htmx.boosted:
        template = "dashboard/_sources_table.html"
    return render(request, template, context)

"""The overview: every source's standing at a glance, worst first, refreshing itself.

Its table is declared once, in COLUMNS: each column's key, heading, sort order and how
its cell renders feed both the header and the rows.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Count, Q
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET

from backups.models import Run, Source
from backups.services.compliance import HEALTH_ORDER, Standing, fleet_standing
from backups.services.formats import format_bytes
from dashboard.forms import OverviewFilterForm
from dashboard.templatetags.dash import age, badge, duration
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


def _source_cell(row: FleetRow, now: datetime) -> str:
    source = row.source
    return format_html(
        '<a href="{}">{}</a><br><code class="location" title="{}">{}</code>{}',
        reverse("source-detail", args=[source.slug]),
        source.name,
        source.location,
        source.location,
        "" if source.enabled else mark_safe(" <em>(disabled)</em>"),
    )


def _last_cell(row: FleetRow, now: datetime) -> str:
    last = row.standing.last_backup
    if not last:
        return "never"
    size = f", {format_bytes(last.size)}" if last.size is not None else ""
    return format_html(
        '{} <a href="{}">{}</a>{}',
        badge(last.status),
        reverse("run-detail", args=[last.pk]),
        age(last.started_at or last.queued_at, now),
        size,
    )


def _rpo_cell(row: FleetRow, now: datetime) -> str:
    standing = row.standing
    return format_html(
        '{}<br><span class="measure">{} / target {}</span>',
        badge(standing.rpo_status),
        f"{duration(standing.age_s)} old" if standing.last_success_at else "no good backup",
        duration(standing.rpo_s),
    )


def _rto_cell(row: FleetRow, now: datetime) -> str:
    standing = row.standing
    drill = standing.last_drill_s
    return format_html(
        '{}<br><span class="measure">{} / target {}</span>',
        badge(standing.rto_status),
        f"drill {duration(drill)}" if drill is not None else "no drill",
        duration(standing.rto_s),
    )


def _integrity_cell(row: FleetRow, now: datetime) -> str:
    standing = row.standing
    if not standing.verified_at:
        return badge(standing.integrity)
    return format_html(
        '{}<br><span class="measure">checked {}</span>',
        badge(standing.integrity),
        age(standing.verified_at, now),
    )


def _offsite_cell(row: FleetRow, now: datetime) -> str:
    standing = row.standing
    if standing.offsite_status is None:
        return "—"  # the policy copies nowhere
    return format_html(
        '{}<br><span class="measure">{} / target {}</span>',
        badge(standing.offsite_status),
        "none" if standing.offsite_age_s is None else f"{duration(standing.offsite_age_s)} old",
        duration(standing.rpo_s),
    )


def _offsite_sort(row: FleetRow) -> tuple:
    # A source that should have a copy and has none is the stalest of all.
    age_s = row.standing.offsite_age_s
    return (row.standing.offsite_status is None, math.inf if age_s is None else age_s)


def _next_cell(row: FleetRow, now: datetime) -> str:
    running = row.standing.running
    if running:
        link = reverse("run-detail", args=[running.pk])
        return format_html('<a href="{}">{} now</a>', link, badge(running.status))
    if row.standing.next_run_at:
        return age(row.standing.next_run_at, now)
    return "manual only"


@dataclass(frozen=True)
class Column:
    """One column of the overview's table.

    `sort` returns a tuple whose first element puts missing values last (None: the column
    is not sortable); `cell` returns the cell's HTML for a row at `now`.
    """

    key: str
    label: str
    cell: Callable[[FleetRow, datetime], str]
    sort: Callable[[FleetRow], tuple] | None = None

    @property
    def sortable(self) -> bool:
        """Whether the header offers to sort by this column."""
        return self.sort is not None


COLUMNS = (
    Column("name", "Source", _source_cell, lambda r: (0, r.source.name.lower())),
    Column(
        "status",
        "Status",
        lambda r, now: badge(r.health),
        lambda r: (HEALTH_ORDER[r.health], _failed_last(r), r.source.name.lower()),
    ),
    Column(
        "kind",
        "Kind",
        lambda r, now: r.source.get_kind_display(),
        lambda r: (0, r.source.kind, r.source.name.lower()),
    ),
    Column(
        "owner",
        "Owner",
        lambda r, now: r.source.owner or "—",
        lambda r: (not r.source.owner, r.source.owner.lower(), r.source.name.lower()),
    ),
    Column(
        "policy",
        "Policy",
        lambda r, now: (r.source.policy.name if r.source.policy else "") or "none",
        lambda r: (
            r.source.policy_id is None,
            r.source.policy.name.lower() if r.source.policy_id else "",
        ),
    ),
    Column(
        "last",
        "Last backup",
        _last_cell,
        lambda r: (_last_backup_at(r) is None, _last_backup_at(r) or 0),
    ),
    Column("age", "RPO", _rpo_cell, lambda r: (r.age_s is None, r.age_s or 0)),
    Column("rto", "RTO", _rto_cell),
    Column("integrity", "Integrity", _integrity_cell),
    Column("offsite", "Offsite", _offsite_cell, _offsite_sort),
    Column(
        "next",
        "Next run",
        _next_cell,
        lambda r: (r.next_run_at is None, r.next_run_at or 0),
    ),
)
SORTS = {column.key: column.sort for column in COLUMNS if column.sortable}


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
        "columns": COLUMNS,
        "refresh_s": REFRESH_S,
        "kinds": dict(Source.Kind.choices),
        "section": "overview",
        **overview_alerts(now),
    }
    template = "dashboard/overview.html"
    if request.htmx and not request.htmx.boosted:
        template = "dashboard/_sources_table.html"
    return render(request, template, context)

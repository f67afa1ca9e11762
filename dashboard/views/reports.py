"""The compliance report: every source against its RPO and RTO targets, and its CSV."""

from __future__ import annotations

import csv

from django.http import HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from backups.models import Source
from backups.services.compliance import fleet_standing
from dashboard.views.common import paginate, permission_required_audited

PER_PAGE = 100
CSV_COLUMNS = [
    "source",
    "kind",
    "owner",
    "policy",
    "rpo_target_s",
    "last_success_at",
    "age_s",
    "rpo_status",
    "rto_target_s",
    "last_drill_s",
    "last_drill_at",
    "rto_status",
    "integrity",
    "verified_at",
    "within_target_30d",
    "success_rate_30d",
    "missed_30d",
]


# A spreadsheet runs a cell that starts with one of these as a formula: a source named
# `=HYPERLINK(...)` must come out as text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value):
    """Return `value` as a CSV cell a spreadsheet shows as text, never runs as a formula.

    Numbers stay numbers (a negative one too); any other text that starts like a formula
    gets a leading apostrophe, which spreadsheets hide.
    """
    if not isinstance(value, str) or not value.startswith(FORMULA_STARTS):
        return value
    try:
        float(value)
    except ValueError:
        return "'" + value
    return value


def _iso(moment) -> str:
    return moment.isoformat() if moment else ""


def _number(value, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


@permission_required_audited("backups.view_source")
@require_GET
def compliance_report(request):
    """List every source's targets, measured values and 30-day record, with a CSV export.

    The 30-day record reads every backup of the window, so only the sources of the page
    shown are measured; the CSV measures them all.
    """
    now = timezone.now()
    pager = paginate(Source.objects.order_by("name", "pk").only("pk"), request, PER_PAGE)
    page = Source.objects.filter(pk__in=[source.pk for source in pager.items])
    pager.items = fleet_standing(now=now, sources=page.order_by("name", "pk"))
    context = {"now": now, "pager": pager, "section": "compliance"}
    return render(request, "dashboard/compliance_report.html", context)


@permission_required_audited("backups.view_source")
@require_GET
def compliance_report_csv(request):
    """Return the compliance report as CSV, one row per source, for spreadsheets and audits."""
    now = timezone.now()
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="compliance-{now:%Y%m%dT%H%M%SZ}.csv"'
    writer = csv.writer(response)
    writer.writerow(CSV_COLUMNS)
    for s in sorted(fleet_standing(now=now), key=lambda s: s.source.name.lower()):
        source = s.source
        row = [
            csv_cell(cell)
            for cell in [
                source.name,
                source.kind,
                source.owner,
                source.policy.name if source.policy_id else "",
                s.rpo_s if s.rpo_s is not None else "",
                _iso(s.last_success_at),
                _number(s.age_s, 0),
                s.rpo_status,
                s.rto_s if s.rto_s is not None else "",
                _number(s.last_drill_s),
                _iso(s.last_drill_at),
                s.rto_status,
                s.integrity,
                _iso(s.verified_at),
                _number(s.within_target_30d, 4),
                _number(s.success_rate_30d, 4),
                s.missed_30d,
            ]
        ]
        writer.writerow(row)
    return response

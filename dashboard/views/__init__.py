"""Pages of the dashboard, one module per area, and the health and metrics endpoints."""

from dashboard.views.activity import activity
from dashboard.views.alerts import (
    alert_ack,
    alert_detail,
    alert_list,
    silence_add,
    silence_stop,
    source_runbook,
)
from dashboard.views.health import healthz, metrics
from dashboard.views.manifests import manifest_browse, manifest_diff
from dashboard.views.overview import overview
from dashboard.views.reports import compliance_report, compliance_report_csv
from dashboard.views.restore import restore_confirm, restore_start
from dashboard.views.runs import run_cancel_view, run_detail, run_live
from dashboard.views.sources import source_backup, source_detail, source_drill, source_verify

__all__ = [
    "activity",
    "alert_ack",
    "alert_detail",
    "alert_list",
    "silence_add",
    "silence_stop",
    "source_runbook",
    "compliance_report",
    "compliance_report_csv",
    "healthz",
    "manifest_browse",
    "manifest_diff",
    "metrics",
    "overview",
    "restore_confirm",
    "restore_start",
    "run_cancel_view",
    "run_detail",
    "run_live",
    "source_backup",
    "source_detail",
    "source_drill",
    "source_verify",
]

"""Prometheus metrics, computed from the run table at scrape time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from backups.models import Run, Source


def render_metrics() -> tuple[bytes, str]:
    """Return the exposition text and its content type."""
    registry = CollectorRegistry()
    sources = Gauge("backup_sources", "Sources known to the catalog", ["kind"], registry=registry)
    active = Gauge("backup_runs_active", "Runs queued or running", ["kind"], registry=registry)
    for kind, _label in Source.Kind.choices:
        sources.labels(kind=kind).set(Source.objects.filter(kind=kind).count())
    for kind, _label in Run.Kind.choices:
        active.labels(kind=kind).set(Run.objects.active().filter(kind=kind).count())
    return generate_latest(registry), CONTENT_TYPE_LATEST

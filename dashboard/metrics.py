"""Prometheus metrics, served from the stored standing of each source.

The per-source gauges come from the compliance service that the pages and `status` use,
which reads each source's stored standing (kept as runs end), not the run history: a
scrape costs a fixed handful of queries, whatever the history. A status is exported as one
0/1 gauge per possible value (`backup_rpo_status{source="web",status="breached"} 1`), the
usual Prometheus shape for an enum.
"""

from __future__ import annotations

from django.db.models import Count
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from backups.models import Alert, Run, Source, WorkerBeat
from backups.services.alerts import LABELS
from backups.services.compliance import (
    Health,
    Integrity,
    RpoStatus,
    RtoStatus,
    Standing,
    fleet_standing,
)
from backups.services.schedules import HOUSEKEEPING_NAME


class _Scrape:
    """The gauges of one scrape, filled once and handed to the registry as a collector.

    prometheus_client's `Gauge` keeps a child object with a lock per label set and checks
    every label name on each `labels()` call: for a thousand sources times twenty-five
    samples that cost most of a scrape. Metric families filled directly say the same.
    """

    def __init__(self) -> None:
        self.gauges: list[_Gauge] = []

    def gauge(self, name: str, documentation: str, labels: list[str]) -> _Gauge:
        gauge = _Gauge(name, documentation, labels)
        self.gauges.append(gauge)
        return gauge

    def collect(self):
        return [gauge.family for gauge in self.gauges]


class _Gauge:
    def __init__(self, name: str, documentation: str, labels: list[str]) -> None:
        self.family = GaugeMetricFamily(name, documentation, labels=labels)
        self.names = labels

    def labels(self, **values) -> _Sample:
        return _Sample(self.family, [str(values[name]) for name in self.names])


class _Sample:
    def __init__(self, family: GaugeMetricFamily, values: list[str]) -> None:
        self.family, self.values = family, values

    def set(self, value: float) -> None:
        self.family.add_metric(self.values, value)


def render_metrics() -> tuple[bytes, str]:
    """Return the exposition text and its content type."""
    scrape = _Scrape()
    registry = CollectorRegistry()
    registry.register(scrape)
    sources = scrape.gauge("backup_sources", "Sources known to the catalog", ["kind"])
    active = scrape.gauge("backup_runs_active", "Runs queued or running", ["kind"])
    standings = fleet_standing()
    by_kind = {kind: 0 for kind in Source.Kind.values}
    for standing in standings:
        by_kind[standing.source.kind] = by_kind.get(standing.source.kind, 0) + 1
    for kind, count in by_kind.items():
        sources.labels(kind=kind).set(count)
    running = dict(
        Run.objects.active().values("kind").annotate(n=Count("pk")).values_list("kind", "n")
    )
    for kind in Run.Kind.values:
        active.labels(kind=kind).set(running.get(kind, 0))
    _per_source(scrape, standings)
    _fleet(scrape)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def _fleet(scrape: _Scrape) -> None:
    """Export when a worker last ran housekeeping, and the firing alerts by condition."""
    seen = WorkerBeat.objects.filter(name=HOUSEKEEPING_NAME).values_list("at", flat=True).first()
    if seen is not None:
        scrape.gauge(
            "backup_workers_last_seen_timestamp_seconds",
            "When a worker last ran housekeeping (every minute while workers live)",
            [],
        ).labels().set(seen.timestamp())
    firing = dict(
        Alert.objects.filter(state=Alert.State.FIRING)
        .values("condition")
        .annotate(n=Count("pk"))
        .values_list("condition", "n")
    )
    alerts = scrape.gauge("backup_alerts_firing", "Alerts firing now", ["condition"])
    for condition in LABELS:
        alerts.labels(condition=condition).set(firing.get(condition, 0))


def _gauge(scrape: _Scrape, name: str, documentation: str, *labels: str) -> _Gauge:
    return scrape.gauge(name, documentation, ["source", *labels])


def _per_source(registry: _Scrape, standings: list[Standing]) -> None:
    age = _gauge(registry, "backup_age_seconds", "Age of the newest successful backup")
    rpo_target = _gauge(registry, "backup_rpo_target_seconds", "RPO target of the policy")
    rpo = _gauge(registry, "backup_rpo_status", "RPO standing (1 for the current one)", "status")
    rto_target = _gauge(registry, "backup_rto_target_seconds", "RTO target of the policy")
    rto = _gauge(registry, "backup_rto_status", "RTO standing (1 for the current one)", "status")
    drill = _gauge(registry, "backup_last_drill_seconds", "Duration of the newest drill/restore")
    size = _gauge(registry, "backup_last_archive_size_bytes", "Size of the newest good archive")
    duration = _gauge(
        registry, "backup_last_duration_seconds", "Duration of the newest successful backup"
    )
    integrity = _gauge(
        registry, "backup_integrity", "Newest verification (1 for the current result)", "status"
    )
    verified_age = _gauge(
        registry, "backup_verified_age_seconds", "Age of the newest verified backup"
    )
    within = _gauge(
        registry, "backup_within_target_ratio_30d", "Share of the last 30 days within the RPO"
    )
    success = _gauge(
        registry, "backup_success_ratio_30d", "Share of the last 30 days' backups that succeeded"
    )
    missed = _gauge(
        registry, "backup_missed_schedules_30d", "Scheduled slots missed in the last 30 days"
    )
    next_run = _gauge(
        registry, "backup_next_run_timestamp_seconds", "When the next scheduled backup starts"
    )
    running = _gauge(registry, "backup_running", "1 while a run of the source is active")
    offsite_age = _gauge(
        registry, "backup_offsite_age_seconds", "Age of the newest backup with a proven copy"
    )
    copies = _gauge(
        registry, "backup_copies", "Proven copies of the newest backup in other storages"
    )
    health = _gauge(
        registry, "backup_health", "The overview's verdict (1 for the current one)", "status"
    )
    failed = _gauge(
        registry, "backup_last_failed", "1 when the newest finished backup attempt failed"
    )

    for standing in standings:
        name = standing.source.name
        at = standing.at
        if standing.age_s is not None:
            age.labels(source=name).set(standing.age_s)
        if standing.rpo_s is not None:
            rpo_target.labels(source=name).set(standing.rpo_s)
        for status in Health.values:
            health.labels(source=name, status=status).set(int(standing.health == status))
        for status in RpoStatus.values:
            rpo.labels(source=name, status=status).set(int(standing.rpo_status == status))
        if standing.rto_s is not None:
            rto_target.labels(source=name).set(standing.rto_s)
        for status in RtoStatus.values:
            rto.labels(source=name, status=status).set(int(standing.rto_status == status))
        if standing.last_drill_s is not None:
            drill.labels(source=name).set(standing.last_drill_s)
        last = standing.last_success
        if last is not None:
            if last.size is not None:
                size.labels(source=name).set(last.size)
            if last.duration_s is not None:
                duration.labels(source=name).set(last.duration_s)
        for status in Integrity.values:
            integrity.labels(source=name, status=status).set(int(standing.integrity == status))
        if standing.verified_at is not None and at is not None:
            verified_age.labels(source=name).set((at - standing.verified_at).total_seconds())
        if standing.within_target_30d is not None:
            within.labels(source=name).set(standing.within_target_30d)
        if standing.success_rate_30d is not None:
            success.labels(source=name).set(standing.success_rate_30d)
        missed.labels(source=name).set(standing.missed_30d)
        if standing.next_run_at is not None:
            next_run.labels(source=name).set(standing.next_run_at.timestamp())
        running.labels(source=name).set(int(standing.running is not None))
        stored = getattr(standing.source, "standing", None)
        attempt = stored.last_backup if stored is not None else None
        if attempt is not None and attempt.status not in Run.ACTIVE:
            failed.labels(source=name).set(int(attempt.status in Run.BAD))
        if standing.offsite_age_s is not None:
            offsite_age.labels(source=name).set(standing.offsite_age_s)
        if standing.copies is not None:
            copies.labels(source=name).set(standing.copies)

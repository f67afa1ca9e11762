"""/metrics: the fleet totals, and per-source gauges from the compliance service."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from backups.models import Run, Source
from backups.services.catalog import source_create
from backups.services.compliance import source_standing
from backups.services.standing import standing_refresh
from tests.prune_helpers import make_backups

pytestmark = pytest.mark.django_db


def scrape(client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples[(name, tuple(sorted(labels.items())))]


def test_the_fleet_totals_are_unchanged(client, source):
    Run.objects.create(source=source, kind="backup")
    samples = scrape(client)
    assert value(samples, "backup_sources", kind="directory") == 1
    assert value(samples, "backup_sources", kind="postgres") == 0
    assert value(samples, "backup_runs_active", kind="backup") == 1
    assert value(samples, "backup_runs_active", kind="restore") == 0


def test_each_source_exports_its_age_targets_and_standing(client, source):
    now = timezone.now()
    backup = make_backups(source, [now - timedelta(minutes=100)], files=False)[0]
    Run.objects.filter(pk=backup.pk).update(size=4096, verified=True)
    Run.objects.create(
        source=source,
        kind="verify",
        backup=backup,
        status="succeeded",
        exclusive=False,
        started_at=now - timedelta(minutes=90),
        finished_at=now - timedelta(minutes=89),
        drill=True,
        restore_seconds=42.5,
    )
    standing_refresh(source.pk)  # as the drill's end does
    samples = scrape(client)
    assert value(samples, "backup_age_seconds", source="files") == pytest.approx(6000, abs=5)
    assert value(samples, "backup_rpo_target_seconds", source="files") == 7200
    # 100 minutes of a two-hour RPO is past the 75% warning line.
    assert value(samples, "backup_rpo_status", source="files", status="at_risk") == 1
    assert value(samples, "backup_rpo_status", source="files", status="ok") == 0
    assert value(samples, "backup_rpo_status", source="files", status="breached") == 0
    assert value(samples, "backup_rto_status", source="files", status="ok") == 1
    assert value(samples, "backup_rto_status", source="files", status="unproven") == 0
    assert value(samples, "backup_last_drill_seconds", source="files") == 42.5
    assert value(samples, "backup_last_archive_size_bytes", source="files") == 4096
    assert value(samples, "backup_last_duration_seconds", source="files") == 30
    assert value(samples, "backup_integrity", source="files", status="ok") == 1
    assert value(samples, "backup_integrity", source="files", status="failed") == 0
    # The overview's one word: at risk, as the RPO is.
    assert value(samples, "backup_health", source="files", status="at_risk") == 1
    assert value(samples, "backup_health", source="files", status="ok") == 0
    assert value(samples, "backup_verified_age_seconds", source="files") == pytest.approx(
        6000, abs=5
    )
    assert value(samples, "backup_running", source="files") == 0
    # Slots count from when the source was created, moments ago: none can be missed yet.
    assert value(samples, "backup_missed_schedules_30d", source="files") == 0
    assert value(samples, "backup_next_run_timestamp_seconds", source="files") > now.timestamp()


def test_missed_schedules_are_those_of_the_compliance_standing(client, source):
    # Watched for five hours of an hourly schedule, never backed up: at least four slots
    # are past their tolerance, whatever the minute the test runs at.
    Source.objects.filter(pk=source.pk).update(created_at=timezone.now() - timedelta(hours=5))
    missed = source_standing(Source.objects.get(pk=source.pk)).missed_30d
    assert missed >= 4
    assert value(scrape(client), "backup_missed_schedules_30d", source="files") == missed


def test_a_source_never_backed_up_has_an_unknown_standing_and_no_age(client, source):
    samples = scrape(client)
    assert value(samples, "backup_rpo_status", source="files", status="unknown") == 1
    assert value(samples, "backup_integrity", source="files", status="unknown") == 1
    assert ("backup_age_seconds", (("source", "files"),)) not in samples


def _scrape_queries(client) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get("/metrics").status_code == 200
    return len(queries)


def test_a_scrape_costs_the_same_queries_for_1_or_30_sources(client, source, data_dir, policy):
    make_backups(source, [timezone.now() - timedelta(hours=1)], files=False)
    one = _scrape_queries(client)
    for index in range(29):
        other = source_create(
            name=f"s{index}", kind="directory", location=str(data_dir), policy=policy
        )
        make_backups(other, [timezone.now() - timedelta(hours=h) for h in range(3)], files=False)
    assert _scrape_queries(client) == one

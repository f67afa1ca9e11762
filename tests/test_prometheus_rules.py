"""The shipped Prometheus rules: their promtool unit tests pass, and they use the names
/metrics exports."""

import re
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from django.utils import timezone

from backups.models import Alert, WorkerBeat
from tests.pages_helpers import make_policy, make_run, make_source

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
# Exported once archives are copied to other storages; the rule waits for it.
NOT_YET_EXPORTED = {"backup_offsite_age_seconds"}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is missing: install Debian's prometheus package")
    return found


def test_the_rules_pass_their_promtool_unit_tests():
    result = subprocess.run(
        [promtool(), "test", "rules", "backup-rules.test.yml"],
        cwd=RULES,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_rules_are_valid_and_name_every_alert_asked_for():
    check = subprocess.run(
        [promtool(), "check", "rules", "backup-rules.yml"], cwd=RULES, capture_output=True
    )
    assert check.returncode == 0, check.stdout
    rules = yaml.safe_load((RULES / "backup-rules.yml").read_text())["groups"][0]["rules"]
    assert [rule["alert"] for rule in rules] == [
        "BackupFailed",
        "BackupAging",
        "BackupRPOBreached",
        "BackupRTOUnproven",
        "BackupRTOBreached",
        "BackupIntegrityFailed",
        "BackupOffsiteStale",
        "BackupWorkersDown",
    ]


@pytest.mark.django_db
def test_every_metric_the_rules_read_is_exported(client, settings):
    settings.METRICS_PUBLIC = True
    source = make_source("web", policy=make_policy(drill_every_s=86400))
    make_run(source, ago_s=3000)
    make_run(source, status="failed", ago_s=60)
    WorkerBeat.beat("housekeeping")
    now = timezone.now()
    Alert.objects.create(source=source, condition="backup_failed", state="firing", since=now,
                         fired_at=now - timedelta(minutes=1), summary="x")  # fmt: skip
    exported = set(re.findall(r"^(backup_[a-z0-9_]+)", client.get("/metrics").text, re.M))
    text = (RULES / "backup-rules.yml").read_text()
    used = set(re.findall(r"\b(backup_[a-z0-9_]+)\b", text)) - {"backup-rules"}
    assert used - NOT_YET_EXPORTED <= exported, used - exported
    page = client.get("/metrics").text
    assert 'backup_last_failed{source="web"} 1.0' in page
    assert 'backup_alerts_firing{condition="backup_failed"} 1.0' in page
    assert "backup_workers_last_seen_timestamp_seconds " in page

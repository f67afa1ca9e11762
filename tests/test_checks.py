"""Start-up checks: an unsafe queue configuration is refused before any worker starts."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.checks import Error, Warning
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from backups.checks import check_queue_settings

ROOT = Path(__file__).resolve().parent.parent


def _ids(settings, **changes):
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, **changes}
    return {problem.id for problem in check_queue_settings()}


def _without(settings, key):
    settings.Q_CLUSTER = {k: v for k, v in settings.Q_CLUSTER.items() if k != key}
    return {problem.id for problem in check_queue_settings()}


def test_the_shipped_configuration_passes_every_check():
    assert check_queue_settings() == []


def test_a_timeout_at_or_above_retry_is_refused(settings):
    assert "backups.E003" in _ids(settings, timeout=700, retry=700)
    assert "backups.E003" in _ids(settings, timeout=800, retry=700)
    assert "backups.E003" not in _ids(settings, timeout=600, retry=700)


def test_a_missing_timeout_is_refused(settings):
    assert "backups.E002" in _without(settings, "timeout")
    assert "backups.E002" in _ids(settings, timeout=0)


def test_infinite_attempts_are_refused(settings):
    assert "backups.E004" in _without(settings, "max_attempts")
    assert "backups.E004" in _ids(settings, max_attempts=0)
    assert "backups.E004" not in _ids(settings, max_attempts=1)


def test_catching_up_every_missed_slot_is_refused(settings):
    assert "backups.E005" in _ids(settings, catch_up=True)
    # django-q2 catches up unless told otherwise.
    assert "backups.E005" in _without(settings, "catch_up")


def test_an_orm_broker_on_an_unknown_database_is_refused(settings):
    assert "backups.E006" in _ids(settings, orm="elsewhere")


def test_a_redis_broker_needs_no_orm_database(settings):
    settings.Q_CLUSTER = {k: v for k, v in settings.Q_CLUSTER.items() if k != "orm"} | {
        "redis": "redis://127.0.0.1:6379/0"
    }
    assert check_queue_settings() == []


def test_an_abandon_delay_of_a_few_heartbeats_is_refused(settings):
    settings.HEARTBEAT_INTERVAL_S = 5
    settings.ABANDON_AFTER_S = 10
    problems = check_queue_settings()
    assert [p.id for p in problems] == ["backups.E007"]
    assert isinstance(problems[0], Error)


def test_unacknowledged_failures_and_a_disabled_scheduler_are_warnings(settings):
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "ack_failures": False, "scheduler": False}
    problems = check_queue_settings()
    assert {p.id for p in problems} == {"backups.W001", "backups.W002"}
    assert all(isinstance(p, Warning) for p in problems)


def test_the_check_command_fails_on_an_unsafe_configuration(settings):
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "timeout": 900, "retry": 600}
    with pytest.raises(SystemCheckError, match="backups.E003"):
        call_command("check")


def test_a_worker_refuses_to_start_on_an_unsafe_configuration(tmp_path):
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "HEARTBEAT_INTERVAL_S": "5",
        "ABANDON_AFTER_S": "10",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "qcluster"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "backups.E007" in result.stderr

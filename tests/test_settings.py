"""Settings: strict environment helpers, production-safe deploy checks."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from dashboard.env import env_bool, env_int, env_list

ROOT = Path(__file__).resolve().parent.parent


def test_env_bool_refuses_a_typo(monkeypatch):
    monkeypatch.setenv("X_FLAG", "ture")
    with pytest.raises(ImproperlyConfigured, match="X_FLAG"):
        env_bool("X_FLAG", default=False)


def test_env_int_refuses_text_and_values_below_the_minimum(monkeypatch):
    monkeypatch.setenv("X_NUM", "ten")
    with pytest.raises(ImproperlyConfigured, match="not an integer"):
        env_int("X_NUM", 1)
    monkeypatch.setenv("X_NUM", "0")
    with pytest.raises(ImproperlyConfigured, match="minimum"):
        env_int("X_NUM", 1, minimum=1)


def test_env_list_splits_on_commas(monkeypatch):
    monkeypatch.setenv("X_HOSTS", "a.example, b.example,,")
    assert env_list("X_HOSTS", []) == ["a.example", "b.example"]


def _manage(*args, **env):
    base = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "SECRET_KEY")}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
    )


PRODUCTION = {
    "DEBUG": "0",
    "SECRET_KEY": "k" * 20 + "-a-long-random-production-secret-value-42",
    "ALLOWED_HOSTS": "backups.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://backups.example.com",
}


def test_check_deploy_is_clean_under_production_settings():
    result = _manage("check", "--deploy", "--fail-level", "WARNING", **PRODUCTION)
    assert result.returncode == 0, result.stderr + result.stdout


def test_production_refuses_to_start_without_a_secret_key():
    env = {k: v for k, v in PRODUCTION.items() if k != "SECRET_KEY"}
    result = _manage("check", **env)
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_a_bad_database_url_is_refused_with_its_name():
    result = _manage("check", DATABASE_URL="nosuchdb://x")
    assert result.returncode != 0
    assert "DATABASE_URL" in result.stderr


def test_redis_url_switches_the_queue_to_redis():
    code = "from django.conf import settings; print(sorted(settings.Q_CLUSTER))"
    result = _manage("shell", "-c", code, REDIS_URL="redis://127.0.0.1:6379/5")
    assert "'redis'" in result.stdout and "'orm'" not in result.stdout
    result = _manage("shell", "-c", code)
    assert "'orm'" in result.stdout and "'redis'" not in result.stdout


def test_queue_timeout_is_below_retry_and_attempts_are_finite():
    from django.conf import settings

    assert settings.Q_CLUSTER["timeout"] < settings.Q_CLUSTER["retry"]
    assert 0 < settings.Q_CLUSTER["max_attempts"] < 10


def test_restore_roots_default_to_var_restores_and_take_relative_folders_from_the_project():
    code = "from django.conf import settings; print([str(p) for p in settings.RESTORE_ROOTS])"
    last_line = _manage("shell", "-c", code).stdout.strip().splitlines()[-1]
    assert last_line == repr([str(ROOT / "var" / "restores")])
    result = _manage("shell", "-c", code, RESTORE_ROOTS="/srv/restores, scratch")
    assert result.stdout.strip().splitlines()[-1] == repr(["/srv/restores", str(ROOT / "scratch")])


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RESTORE_POSTGRES_HOSTS", "db.internal:54x2"),
        ("RESTORE_POSTGRES_HOSTS", "user@db.internal"),
        ("RESTORE_POD_NAMESPACES", "Prod_NS"),
    ],
)
def test_a_bad_restore_allow_list_is_refused_with_its_name(name, value):
    result = _manage("check", **{name: value})
    assert result.returncode != 0
    assert name in result.stderr and value in result.stderr


SHOW = (
    "from django.conf import settings as s; "
    "print(s.AXES_FAILURE_LIMIT, int(s.AXES_COOLOFF_TIME.total_seconds()), "
    "s.TRUSTED_PROXY_COUNT, s.METRICS_PUBLIC)"
)


def test_login_throttling_and_metrics_are_closed_by_default_in_production():
    result = _manage("shell", "-c", SHOW, **PRODUCTION)
    assert result.stdout.splitlines()[-1].split() == ["5", "900", "0", "False"], result.stderr


def test_login_throttling_and_metrics_follow_the_environment():
    env = {
        **PRODUCTION,
        "LOGIN_FAILURE_LIMIT": "3",
        "LOGIN_COOLOFF_S": "60",
        "TRUSTED_PROXY_COUNT": "2",
        "METRICS_PUBLIC": "1",
    }
    result = _manage("shell", "-c", SHOW, **env)
    assert result.stdout.splitlines()[-1].split() == ["3", "60", "2", "True"], result.stderr
    result = _manage("check", **{**PRODUCTION, "LOGIN_FAILURE_LIMIT": "0"})
    assert result.returncode != 0 and "LOGIN_FAILURE_LIMIT" in result.stderr

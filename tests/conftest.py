"""Shared fixtures: named users for the permission matrix, isolated ARCHIVE_ROOT and STATE_DIR."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["tests.suite_rules", "tests.s3server", "tests.notify_helpers"]

FAKE_KUBECTL = Path(__file__).resolve().parent / "engine" / "fake_kubectl"


@pytest.fixture(autouse=True)
def _fast_and_isolated(request, tmp_path):
    # The engine's tests also run without Django (`-p no:django`): nothing to set then.
    if not request.config.pluginmanager.hasplugin("django"):
        return
    settings = request.getfixturevalue("settings")
    # MD5 keeps logins fast; every test writes archives under its own folder, and may
    # restore anywhere in its own folder (tests of the restore roots narrow them).
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.ARCHIVE_ROOT = tmp_path / "archives"
    settings.ARCHIVE_ROOT.mkdir()
    settings.STATE_DIR = tmp_path / "state"
    settings.RESTORE_ROOTS = [tmp_path]
    # The web process judges "workers down" at most every 30 s; a test that wants it
    # resets the clock itself, so the others' query counts do not depend on their order.
    import time

    from backups.services import alerts

    request.getfixturevalue("monkeypatch").setattr(alerts, "_watched_at", time.monotonic())


def _user(django_user_model, username, *, staff=False, superuser=False, perms=()):
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user(
        username, password="pw", is_staff=staff, is_superuser=superuser
    )
    for codename in perms:
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label="backups", codename=codename)
        )
    return user


@pytest.fixture
def admin_user(django_user_model):
    """A superuser: may do everything."""
    return _user(django_user_model, "root", staff=True, superuser=True)


@pytest.fixture
def operator(django_user_model):
    """Staff with the operators' role: may back up, restore and read the audit log."""
    from backups.management.commands.bootstrap import ROLES

    return _user(django_user_model, "olivia", staff=True, perms=ROLES["operators"])


@pytest.fixture
def viewer(django_user_model):
    """Staff with the viewers' role: see sources, runs and reports; change nothing."""
    from backups.management.commands.bootstrap import ROLES

    return _user(django_user_model, "victor", staff=True, perms=ROLES["viewers"])


@pytest.fixture
def nobody(django_user_model):
    """A signed-in account in no group, with no permission: sees nothing."""
    return _user(django_user_model, "nadia")


@pytest.fixture
def data_dir(tmp_path):
    """A small directory tree to back up."""
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "sub" / "b.bin").write_bytes(bytes(range(256)) * 10)
    return root


@pytest.fixture
def policy(db):
    from backups.services.catalog import policy_create

    return policy_create(name="hourly", schedule="0 * * * *", rpo_s=7200, rto_s=1800, keep_last=3)


@pytest.fixture
def source(db, data_dir, policy):
    from backups.services.catalog import source_create

    return source_create(name="files", kind="directory", location=str(data_dir), policy=policy)


@pytest.fixture
def stalled_pod(policy, tmp_path, monkeypatch):
    """A pod path whose node answers nothing for seven seconds, then sends a small tree."""
    from backups.services.catalog import source_create

    pods = tmp_path / "pods"
    data = pods / "shop" / "db-0" / "data"
    data.mkdir(parents=True)
    (data / "orders.csv").write_text("1,apples\n")
    monkeypatch.setenv("PATH", f"{FAKE_KUBECTL}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_KUBECTL_ROOT", str(pods))
    monkeypatch.setenv("FAKE_KUBECTL_STALL", "7")
    return source_create(name="shop", kind="kubernetes", location="shop/db-0:/data", policy=policy)

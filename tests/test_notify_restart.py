"""Delivery across real process restarts: one message per transition, none lost, and a
sender killed mid-send re-sends that one message once, with the same transition id.

Each step is its own process on one SQLite catalog, as `backup --inline` from cron and a
restarted worker (housekeeping, then the delivery task) would be.
"""

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.notify_helpers import Webhook, write_config

ROOT = Path(__file__).resolve().parent.parent
WORKER = (
    "from backups.tasks import deliver_notifications, housekeeping; "
    "housekeeping(); deliver_notifications()"
)


@pytest.fixture
def catalog(tmp_path, webhook):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("alpha\n")
    config = write_config(tmp_path / "apprise.yml", [(webhook.url, "ops")])
    database = tmp_path / "catalog.sqlite3"
    env = dict(
        os.environ,
        DATABASE_URL=f"sqlite:///{database}",
        ARCHIVE_ROOT=str(tmp_path / "archives"),
        STATE_DIR=str(tmp_path / "state"),
        APPRISE_CONFIG=str(config),
        DASHBOARD_URL="https://backups.example.com",
    )

    def manage(*args, check=True, **kwargs):
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=check,
            capture_output=True, text=True, timeout=120, **kwargs,
        )  # fmt: skip

    manage("migrate", "-v0")
    manage("policy", "add", "watched", "--rpo", "2h", "--notify", "ops")
    manage("source", "add", "files", "--kind", "directory", "--location", str(data),
           "--policy", "watched")  # fmt: skip
    return manage, data, database, env


def event_ids(messages) -> list[int]:
    return [int(re.search(r"event #(\d+)", m["message"]).group(1)) for m in messages]


def age(database: Path, column: str) -> None:
    """Move a time of every outbox row ten minutes back, as if that time had passed."""
    with sqlite3.connect(database) as db:
        db.execute(f"UPDATE backups_notification SET {column} = datetime({column}, '-10 minutes')")


def test_one_message_per_transition_across_restarts_and_crashes(catalog, webhook):
    manage, data, database, env = catalog
    assert manage("backup", "files", "--inline").returncode == 0
    manage("shell", "-c", WORKER)
    assert webhook.messages == []

    shutil.rmtree(data)
    assert manage("backup", "files", "--inline", check=False).returncode == 1
    assert webhook.titles() == ["[FIRING] Backup failed: files"]
    for _ in range(2):  # the worker restarts, judges again, finds nothing new
        manage("shell", "-c", WORKER)
    assert len(webhook.messages) == 1

    # Mended; the sender is killed after the target took the message, before it said so.
    data.mkdir()
    (data / "a.txt").write_text("alpha\n")
    webhook.stall_s = 30
    sender = subprocess.Popen(
        [sys.executable, "manage.py", "backup", "files", "--inline"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert webhook.wait_for(2, timeout=60)
    finally:
        sender.send_signal(signal.SIGKILL)
        sender.wait()
    webhook.stall_s = 0
    manage("shell", "-c", WORKER)
    assert len(webhook.messages) == 2  # claimed by the dead sender until SENDING_STALE
    age(database, "claimed_at")
    manage("shell", "-c", WORKER)
    manage("shell", "-c", WORKER)
    assert webhook.titles()[1:] == ["[RESOLVED] Backup failed: files"] * 2
    resent = event_ids(webhook.messages[1:])
    assert resent[0] == resent[1], "a repeat carries the same transition id"


def test_a_transition_while_the_target_is_down_is_delivered_after_a_restart(catalog, webhook):
    manage, data, database, env = catalog
    manage("backup", "files", "--inline")
    port = webhook.port
    webhook.stop()
    shutil.rmtree(data)
    assert manage("backup", "files", "--inline", check=False).returncode == 1
    with sqlite3.connect(database) as db:
        status, attempts, error = db.execute(
            "SELECT status, attempts, last_error FROM backups_notification"
        ).fetchone()
    assert (status, attempts) == ("pending", 1) and error

    back = Webhook(port=port).start()
    try:
        manage("shell", "-c", WORKER)
        assert back.messages == []  # not due before its backoff
        age(database, "next_attempt_at")
        manage("shell", "-c", WORKER)
        manage("shell", "-c", WORKER)
        assert back.titles() == ["[FIRING] Backup failed: files"]
    finally:
        back.stop()

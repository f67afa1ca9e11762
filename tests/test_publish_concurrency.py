"""Publishing holds no database transaction: the dashboard stays writable meanwhile.

Each test restores a live SQLite database in place with the real CLI, in a process of its
own, against a dashboard database of its own: a SQLite file (the default set-up, where one
open write transaction locks out every other writer) or a fresh PostgreSQL database when
DATABASE_URL points at PostgreSQL (where a locked Run row blocks the heartbeat and a
cancel). The restore's publishing step, the copy into the live database, is held up by the
application holding the live database's write lock, as a busy application would; while it
waits, another process logs in or cancels through the same services the pages use.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.engine.restore_helpers import count_rows, make_database

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

PRELUDE = """\
import json, sys, time, django
django.setup()
"""


class Dashboard:
    """A dashboard database and archive folder, used by real processes."""

    def __init__(self, root: Path) -> None:
        self.url = os.environ.get("DATABASE_URL", "")
        self.drop = lambda: None
        if self.url.startswith("postgres"):
            import psycopg

            name = f"publish_{secrets.token_hex(4)}"
            admin = urlparse(self.url)._replace(path="/postgres").geturl()
            with psycopg.connect(admin, autocommit=True) as db:
                db.execute(f'CREATE DATABASE "{name}"')

            def drop():
                with psycopg.connect(admin, autocommit=True) as db:
                    db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

            self.drop = drop
            self.url = urlparse(self.url)._replace(path=f"/{name}").geturl()
        else:
            self.url = f"sqlite:///{root / 'dashboard.sqlite3'}"
        self.env = {
            **{k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"},
            "DJANGO_SETTINGS_MODULE": "dashboard.settings",
            "DATABASE_URL": self.url,
            "ARCHIVE_ROOT": str(root / "archives"),
            "STATE_DIR": str(root / "state"),
            "HEARTBEAT_INTERVAL_S": "1",
        }

    def manage(self, *args) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    def python(self, code: str) -> dict:
        """Run Django code in a process of its own; return the JSON it prints."""
        done = subprocess.run(
            [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout)

    def heartbeat(self, run_id: int) -> datetime:
        """Read a run's heartbeat with plain SQL, as an operator's query would."""
        sql = "SELECT heartbeat_at FROM backups_run WHERE id = %s"
        if self.url.startswith("postgres"):
            import psycopg

            with psycopg.connect(self.url, autocommit=True) as db:
                (value,) = db.execute(sql, (run_id,)).fetchone()
            return value.astimezone(UTC)
        path = self.url.removeprefix("sqlite:///")
        with closing(sqlite3.connect(path, timeout=1)) as db:
            (value,) = db.execute(sql.replace("%s", "?"), (run_id,)).fetchone()
        return datetime.fromisoformat(value).replace(tzinfo=UTC)


@pytest.fixture
def dashboard(tmp_path):
    world = Dashboard(tmp_path)
    try:
        world.manage("migrate", "--noinput", "-v0")
        yield world
    finally:
        world.drop()


@pytest.fixture
def live_backup(dashboard, tmp_path):
    """A live database, backed up, then changed; returns it with the backup's id."""
    live = make_database(tmp_path / "app.db", rows=20_000)
    dashboard.manage("source", "add", "app", "--kind", "sqlite", "--location", str(live))
    backup = json.loads(dashboard.manage("backup", "app", "--inline", "--json"))
    with closing(sqlite3.connect(live)) as db, db:
        db.execute("DELETE FROM projects WHERE id > 10")
    dashboard.python(
        """
        from django.contrib.auth import get_user_model
        get_user_model().objects.create_user("olivia", password="not-used-here")
        print("{}")
        """
    )
    return live, backup["id"]


@contextmanager
def application_writing(live: Path):
    """Hold the live database's write lock, as its application does mid-transaction."""
    db = sqlite3.connect(live, isolation_level=None, timeout=1)
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        db.execute("ROLLBACK")
        db.close()


def start_restore(dashboard: Dashboard, backup_id: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "manage.py", "restore", str(backup_id), "--in-place", "--yes",
         "--inline", "--json"],
        cwd=ROOT,
        env=dashboard.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def wait_until_publishing(live: Path, restore: subprocess.Popen) -> None:
    """Wait for the copy of the current database, the first thing publishing writes."""
    deadline = time.monotonic() + 60
    while not list(live.parent.glob(f".{live.name}.before-restore-*")):
        assert restore.poll() is None, restore.communicate()
        assert time.monotonic() < deadline, "the restore never reached its publishing step"
        time.sleep(0.05)


def restore_run_id(dashboard: Dashboard) -> int:
    return dashboard.python(
        """
        from backups.models import Run
        print(json.dumps(Run.objects.get(kind="restore").pk))
        """
    )


def test_while_a_restore_publishes_others_log_in_and_its_heartbeat_goes_on(dashboard, live_backup):
    live, backup_id = live_backup
    with application_writing(live):
        restore = start_restore(dashboard, backup_id)
        try:
            wait_until_publishing(live, restore)
            run_id = restore_run_id(dashboard)
            first_beat = dashboard.heartbeat(run_id)
            login = dashboard.python(
                """
                from django.contrib.auth import get_user_model
                from django.test import Client
                user = get_user_model().objects.get(username="olivia")
                started = time.monotonic()
                Client().force_login(user)
                print(json.dumps({"seconds": time.monotonic() - started}))
                """
            )
            time.sleep(2.5)
            later_beat = dashboard.heartbeat(run_id)
            assert restore.poll() is None, "the publishing step must still be held up"
        except BaseException:
            restore.kill()
            raise

    out, err = restore.communicate(timeout=60)
    assert login["seconds"] < 1.0, "a login had to wait for the restore to publish"
    assert later_beat > first_beat, "the heartbeat stopped while the restore published"
    assert restore.returncode == 0, err[-3000:]
    assert json.loads(out)["status"] == "succeeded"
    assert count_rows(live) == 20_000


def test_a_cancel_while_a_restore_publishes_stops_it_and_keeps_the_live_database(
    dashboard, live_backup
):
    live, backup_id = live_backup
    with application_writing(live):
        restore = start_restore(dashboard, backup_id)
        try:
            wait_until_publishing(live, restore)
            run_id = restore_run_id(dashboard)
            cancel = dashboard.python(
                f"""
                from backups.models import Run
                from backups.services.runs import run_cancel
                run = Run.objects.get(pk={run_id})
                started = time.monotonic()
                asked = run_cancel(run=run)
                print(json.dumps({{"asked": asked, "seconds": time.monotonic() - started}}))
                """
            )
            # Honoured while the live database is still busy: the copy stops between tries.
            out, err = restore.communicate(timeout=20)
        except BaseException:
            restore.kill()
            raise

    assert cancel == {"asked": True, "seconds": cancel["seconds"]}
    assert cancel["seconds"] < 1.0, "the cancel had to wait for the restore to publish"
    assert restore.returncode == 1, err[-3000:]
    run = json.loads(out)
    assert run["status"] == "cancelled"
    assert "while publishing" in run["error"] and "rolled back" in run["error"]
    assert count_rows(live) == 10
    assert not list(live.parent.glob(f".{live.name}.*restore-*"))

"""A small demo fleet for a fresh install: a folder and a SQLite database with a policy."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from backups.models import Policy, Source
from backups.services.catalog import policy_create, source_create

DEMO_POLICY = "demo-every-15-minutes"


def _write_sample_tree(root: Path) -> None:
    (root / "docs").mkdir(parents=True, exist_ok=True)
    (root / "config").mkdir(exist_ok=True)
    (root / "empty").mkdir(exist_ok=True)
    (root / "README.txt").write_text("Sample data backed up by the demo policy.\n")
    (root / "docs" / "runbook.md").write_text("# Restore runbook\n\n1. Pick a backup.\n" * 20)
    (root / "config" / "app.toml").write_text('[server]\nport = 8080\nname = "demo"\n')
    link = root / "config" / "current.toml"
    if not link.is_symlink():
        link.symlink_to("app.toml")


def _write_sample_database(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS projects (id INTEGER PRIMARY KEY, name TEXT)")
        if db.execute("SELECT COUNT(*) FROM projects").fetchone()[0] == 0:
            db.executemany(
                "INSERT INTO projects (name) VALUES (?)",
                [(f"project-{i}",) for i in range(100)],
            )
    sqlite3.connect(path).close()


def seed_demo(folder: Path) -> list[Source]:
    """Create the demo data under `folder`, a policy and two sources; return the sources."""
    files = folder / "files"
    database = folder / "app.sqlite3"
    _write_sample_tree(files)
    _write_sample_database(database)
    policy = Policy.objects.filter(name=DEMO_POLICY).first() or policy_create(
        name=DEMO_POLICY,
        schedule="*/15 * * * *",
        rpo_s=3600,
        rto_s=900,
        keep_last=4,
        keep_hourly=24,
        keep_daily=7,
        keep_weekly=4,
        drill_every_s=86400,
        check_queries=[{"sql": "SELECT COUNT(*) FROM projects", "expect": "> 0"}],
    )
    return [
        source_create(
            name="demo-files",
            kind=Source.Kind.DIRECTORY,
            location=str(files),
            policy=policy,
            owner="demo team",
            excludes=["*.tmp"],
        ),
        source_create(
            name="demo-db",
            kind=Source.Kind.SQLITE,
            location=str(database),
            policy=policy,
            owner="demo team",
        ),
    ]

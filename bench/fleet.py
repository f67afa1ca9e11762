"""Wall time of `manage.py apply` and `export` on a generated fleet, SQLite and PostgreSQL.

    .venv/bin/python -m bench.fleet [--quick] [--sources N] [--only sqlite postgresql]

Writes a fleet file of N sources (default 1,000; `--quick` 100) over three policies (each
writing to a storage and copying to another), a
third of them directories that exist, the rest pod paths and PostgreSQL URIs, and times
each whole command as a user runs it, start-up included: the first apply (everything
created, with its schedules), the same apply again (nothing to do), a dry run after one
policy's schedule changed, that apply (every schedule of the policy's sources moves), and
an export. PostgreSQL uses a `bench_fleet` database on BENCH_PG_URL (default
postgresql://postgres@127.0.0.1:5432/postgres), created and dropped here. Target: every
step under 10 s.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_DATABASE = "bench_fleet"
TARGET_S = 10.0
POLICIES = {"hourly": "0 * * * *", "nightly": "0 3 * * *", "weekly": "0 4 * * 0"}


def fleet_yaml(count: int, folders: Path, *, hourly_cron: str = POLICIES["hourly"]) -> str:
    """Return a fleet file of `count` sources spread over the three policies."""
    lines = ["version: 2", "storages:"]
    for name in ("nas", "offsite"):
        lines.append(f"  {name}: {{kind: local, path: {folders.parent / name}}}")
    lines.append("policies:")
    for name, cron in POLICIES.items():
        cron = hourly_cron if name == "hourly" else cron
        lines += [f"  {name}:", f"    schedule: '{cron}'", "    rpo: 2h", "    keep_daily: 7"]
        lines += ["    storage: nas", "    copy_to: [offsite]"]
    lines.append("sources:")
    names = list(POLICIES)
    for number in range(count):
        policy = names[number % len(names)]
        if number % 3 == 0:
            folder = folders / f"dir-{number}"
            folder.mkdir(exist_ok=True)
            kind, location = "directory", str(folder)
        elif number % 3 == 1:
            kind, location = "kubernetes", f"prod/app-{number}:/data"
        else:
            kind, location = "postgres", f"postgresql://app@db-{number}:5432/app"
        lines += [
            f"  source-{number}:",
            f"    kind: {kind}",
            f"    location: '{location}'",
            f"    policy: {policy}",
            "    excludes: ['*.tmp']",
            "    owner: ops",
        ]
    return "\n".join(lines) + "\n"


def _timed(env: dict, *args: str) -> float:
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.monotonic() - started


def run_steps(database_url: str, count: int) -> dict[str, float]:
    """Migrate a fresh database, then time each step; return seconds by step."""
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as scratch:
        scratch = Path(scratch)
        env = dict(os.environ, DATABASE_URL=database_url, ARCHIVE_ROOT=str(scratch / "a"))
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True
        )
        (scratch / "data").mkdir()
        first = scratch / "fleet.yaml"
        first.write_text(fleet_yaml(count, scratch / "data"))
        moved = scratch / "moved.yaml"
        moved.write_text(fleet_yaml(count, scratch / "data", hourly_cron="30 * * * *"))
        return {
            "start-up (manage.py check)": _timed(env, "check"),
            f"apply: create {count} sources": _timed(env, "apply", str(first)),
            "apply again: no change": _timed(env, "apply", str(first)),
            "apply --dry-run: one policy changed": _timed(env, "apply", str(moved), "--dry-run"),
            "apply: one policy's schedule moves": _timed(env, "apply", str(moved)),
            "export": _timed(env, "export", str(scratch / "exported.yaml")),
        }


def _pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as connection:
        connection.execute(sql)


def run_postgresql(count: int) -> dict[str, float] | None:
    try:
        _pg_admin(f'DROP DATABASE IF EXISTS "{PG_DATABASE}"')
        _pg_admin(f'CREATE DATABASE "{PG_DATABASE}"')
    except Exception as error:  # no server: say so and go on with SQLite
        print(f"PostgreSQL skipped: {error}", file=sys.stderr)
        return None
    try:
        return run_steps(urlunsplit(urlsplit(PG_URL)._replace(path=f"/{PG_DATABASE}")), count)
    finally:
        _pg_admin(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)')


def main(argv: list[str] | None = None) -> int:
    """Time the fleet commands on each database and print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100 sources")
    parser.add_argument("--sources", type=int, default=None)
    parser.add_argument(
        "--only", nargs="*", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"]
    )
    args = parser.parse_args(argv)
    count = args.sources or (100 if args.quick else 1000)
    results = {}
    for vendor in args.only:
        print(f"{vendor}: timing…", file=sys.stderr)
        if vendor == "sqlite":
            with tempfile.TemporaryDirectory(prefix="bench-fleet-db-") as folder:
                results[vendor] = run_steps(f"sqlite:///{folder}/db.sqlite3", count)
        else:
            timed = run_postgresql(count)
            if timed is not None:
                results[vendor] = timed
    if not results:
        return 1
    print(f"\nFleet as code: {count} sources, whole commands with start-up\n")
    steps = list(next(iter(results.values())))
    print(f"{'step':<38}" + "".join(f"{vendor:>14}" for vendor in results) + f"{'target':>10}")
    for step in steps:
        cells = "".join(
            f"{f'{timed[step]:.2f} s' + (' !' if timed[step] >= TARGET_S else ''):>14}"
            for timed in results.values()
        )
        print(f"{step:<38}{cells}{f'< {TARGET_S:.0f} s':>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

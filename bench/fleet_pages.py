"""What a fleet's pages, `status --json` and `/metrics` cost as its run history grows.

    .venv/bin/python -m bench.fleet_pages [--quick] [--repeat N] [--only sqlite postgresql]

A `fleet` data set: 1,000 sources under an hourly policy with a daily verification and a
weekly timed drill each, and retention as it runs in real life (the backups past the
policy's keep rules are `pruned` rows, which still count as history). A child process per
database seeds 30 days of that history (COPY on PostgreSQL, executemany in one transaction
on SQLite), derives the stored standings (`recompute_standing`, timed) and times the
overview, a source page, a run page, the compliance report and `/metrics` through
Django's test client (median of N, after two warm-ups), and `status --json` as a whole
command in a subprocess (wall time and peak RSS, median of three). It then adds the 60
older days (90 days, about 2.2 million runs), derives again and times it all again. Growth
with history is the bug: each figure at 90 days should stay within 1.5x of the one at 30.
The PostgreSQL database is `bench_fleet_pages` on BENCH_PG_URL's server, created and
dropped here. `--quick` seeds 50 sources instead of 1,000, as a smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

from bench.pages import (
    ROOT,
    RUN_COLUMNS,
    _copy_or_insert,
    _time,
    _when,
    later_run_columns,
    run_postgresql,
    run_sqlite,
)

PG_DATABASE = "bench_fleet_pages"
MODULE = "bench.fleet_pages"
HISTORIES = (30, 90)
# (figure, target median); each must also stay within GROWTH_LIMIT of its 30-day value.
TARGETS = [
    ("overview", 150),
    ("source page", 150),
    ("run page", 150),
    ("compliance report", 500),
    ("/metrics", 1000),
    ("status --json", 2000),
]
RSS_TARGET_MB = 150
GROWTH_LIMIT = 1.5


def _seed(sources: list, hour: datetime, first_day: int, last_day: int) -> None:
    """Write the hourly history of days [first_day, last_day) before `hour`.

    Backups past the keep rules (the newest 24, one a day for a week, one a week for four)
    are `pruned`, as retention leaves them; one backup in 25 failed. A verification follows
    the first backup of each day; each Sunday's is a timed drill.
    """
    from django.db import connection
    from django.db.models import Max

    from backups.models import Run

    boolean = (lambda b: b) if connection.vendor == "postgresql" else int
    rng = random.Random(first_day)
    state = {"id": Run.objects.aggregate(top=Max("pk"))["top"] or 0}
    defaults = {
        "trigger": "schedule", "keep": boolean(False), "cancel_requested": boolean(False),
        "worker": "bench:1:0", "bytes_done": 0, "bytes_total": None, "files_done": 0,
        "files_total": None, "current_item": "", "archive": "", "size": None, "sha256": "",
        "payload_bytes": None, "payload_files": None, "error": "", "warnings": "[]", "log": "",
        "backup_id": None, "target": "", "in_place": boolean(False), "paths": "[]",
        "drill": boolean(False), "checks": "[]", "restore_seconds": None, "verified": None,
        "verified_at": None, "heartbeat_at": None, **later_run_columns(boolean),
    }  # fmt: skip

    def run(**fields) -> tuple:
        state["id"] += 1
        values = {**defaults, "id": state["id"], **fields}
        return tuple(values[name] for name in RUN_COLUMNS)

    def rows():
        for source in sources:
            folder = f"/var/archives/{source.slug}"
            for hours in range(last_day * 24 - 1, first_day * 24 - 1, -1):
                started = hour - timedelta(hours=hours, seconds=-rng.randint(0, 240))
                ended = started + timedelta(seconds=rng.randint(20, 300))
                kept = hours < 24 or (
                    started.hour == 0
                    and (hours < 7 * 24 or (hours < 28 * 24 and started.weekday() == 6))
                )
                failed = rng.random() < 0.04
                status = "failed" if failed else "succeeded" if kept else "pruned"
                size = 10**6 + rng.randint(0, 10**8)
                yield run(
                    source_id=source.pk, kind="backup", status=status,
                    exclusive=boolean(True), queued_at=_when(started),
                    started_at=_when(started), finished_at=_when(ended),
                    archive="" if failed else f"{folder}/{state['id'] + 1}.tar.zst",
                    size=None if failed else size, payload_bytes=None if failed else size * 3,
                    payload_files=None if failed else 5000,
                    error="The source folder is not readable." if failed else "",
                    verified=None if failed or started.hour else boolean(True),
                )  # fmt: skip
                if failed or started.hour:
                    continue
                backup_id = state["id"]
                drill = started.weekday() == 6
                checked = ended + timedelta(seconds=30)
                yield run(
                    source_id=source.pk, kind="verify", status="succeeded",
                    exclusive=boolean(False), queued_at=_when(checked),
                    started_at=_when(checked), finished_at=_when(checked + timedelta(seconds=90)),
                    backup_id=backup_id, drill=boolean(drill),
                    restore_seconds=60.0 if drill else None,
                )  # fmt: skip

    from django.core.management.color import no_style
    from django.db import transaction

    with transaction.atomic():
        _copy_or_insert("backups_run", RUN_COLUMNS, rows())
        with connection.cursor() as cursor:
            for sql in connection.ops.sequence_reset_sql(no_style(), [Run]):
                cursor.execute(sql)


def _status_command(env: dict) -> tuple[float, float]:
    """Run `manage.py status --json` whole; return its wall time (ms) and peak RSS (MB)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "manage.py", "status", "--json"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    _pid, code, usage = os.wait4(process.pid, 0)
    elapsed = (time.perf_counter() - started) * 1000
    if code != 0:
        raise SystemExit(f"status --json exited with {code}")
    return elapsed, usage.ru_maxrss / 1024


def _measure(client, urls: dict, repeat: int) -> dict:
    from django.core.management import call_command
    from django.db import connection

    started = time.perf_counter()
    call_command("recompute_standing", stdout=open(os.devnull, "w"))  # noqa: SIM115
    recompute_s = time.perf_counter() - started
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
    times = {name: _time(client, url, repeat)[0] for name, url in urls.items()}
    status = [_status_command(dict(os.environ)) for _ in range(3)]
    times["status --json"] = statistics.median(wall for wall, _rss in status)
    from backups.models import Run

    return {
        "runs": Run.objects.count(),
        "times": times,
        "status_rss_mb": max(rss for _wall, rss in status),
        "recompute_s": recompute_s,
    }


def child(quick: bool, repeat: int) -> dict:
    """Seed the fleet on DATABASE_URL's database and time it at 30 and at 90 days."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import setup_test_environment
    from django.urls import reverse

    from backups.models import Policy, Run, Source
    from backups.services.schedules import schedule_sync_all

    if settings.DEBUG:
        setup_test_environment()
    call_command("migrate", verbosity=0)
    if not settings.DEBUG:
        call_command("collectstatic", interactive=False, verbosity=0)
    count = 50 if quick else 1000
    now = datetime.now(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0)
    policy = Policy.objects.create(
        name="hourly", schedule="0 * * * *", rpo_s=7200, rto_s=1800, keep_last=24,
        keep_daily=7, keep_weekly=4, drill_every_s=7 * 86400,
    )  # fmt: skip
    Source.objects.bulk_create(
        [
            Source(
                name=f"source-{index:04d}",
                slug=f"source-{index:04d}",
                kind="directory",
                location=f"/srv/data/app-{index:04d}",
                policy=policy,
                owner=f"team-{index % 7}",
            )
            for index in range(count)
        ]
    )
    Source.objects.update(created_at=now - timedelta(days=max(HISTORIES) + 1))
    sources = list(Source.objects.order_by("pk"))
    schedule_sync_all(now=now)
    user = get_user_model().objects.create_superuser("bench", "", "bench")
    client = Client()
    client.force_login(user)

    results = {}
    seeded_days, seeding_s = 0, 0.0
    for days in HISTORIES:
        started = time.perf_counter()
        _seed(sources, hour, seeded_days, days)
        seeding_s += time.perf_counter() - started
        seeded_days = days
        if days == HISTORIES[0]:
            # A backup of each twentieth source is running right now.
            running = Run.objects.bulk_create(
                Run(source=s, status="running", queued_at=now, started_at=now, heartbeat_at=now)
                for s in sources[::20]
            )
        urls = {
            "overview": reverse("overview"),
            "source page": reverse("source-detail", args=[sources[1].slug]),
            "run page": reverse("run-detail", args=[running[0].pk]),
            "compliance report": reverse("compliance-report"),
            "/metrics": "/metrics",
        }
        results[days] = _measure(client, urls, repeat)
        results[days]["seeding_s"] = seeding_s
    return {"vendor": connection.vendor, "sources": count, "results": results}


def _flag(value: float, target: float, base: float | None) -> str:
    over = value >= target or (base is not None and value > GROWTH_LIMIT * base)
    return " !" if over else ""


def print_table(results: list[dict], repeat: int) -> None:
    """Print each figure per database and history length, against the targets."""
    print(
        f"\nFleet: {results[0]['sources']} sources, hourly backups, daily verifies, weekly "
        f"drills; pages: median of {repeat} (after 2 warm-ups); status: median of 3 runs\n"
    )
    columns = [(r, days) for r in results for days in HISTORIES]
    head = f"{'figure':<20}" + "".join(f"{r['vendor'] + f' {d} d':>18}" for r, d in columns)
    print(head + f"{'target':>12}")
    for name, target in TARGETS:
        line = f"{name:<20}"
        for result, days in columns:
            value = result["results"][str(days)]["times"][name]
            base = result["results"][str(HISTORIES[0])]["times"][name]
            line += f"{f'{value:.0f} ms{_flag(value, target, base)}':>18}"
        print(line + f"{f'< {target} ms':>12}")
    rows = [
        ("status peak RSS", "status_rss_mb", " MB", RSS_TARGET_MB),
        ("runs", "runs", "", None),
        ("recompute (all)", "recompute_s", " s", None),
        ("seeding (total)", "seeding_s", " s", None),
    ]
    for label, key, unit, target in rows:
        line = f"{label:<20}"
        for result, days in columns:
            value = result["results"][str(days)][key]
            text = f"{value:,.0f}{unit}" + (" !" if target and value >= target else "")
            line += f"{text:>18}"
        print(line + (f"{f'< {target}{unit}':>12}" if target else ""))
    print(f"\n'!' marks a figure over its target or over {GROWTH_LIMIT}x its 30-day value.")


def main(argv: list[str] | None = None) -> int:
    """Run the fleet benchmark on each database and print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.fleet_pages", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="50 sources instead of 1,000")
    parser.add_argument("--repeat", type=int, default=15, help="timed requests per page")
    parser.add_argument(
        "--only", nargs="*", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"]
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.quick, args.repeat)))
        return 0
    results = []
    for vendor in args.only:
        print(f"{vendor}: seeding and timing…", file=sys.stderr)
        result = (
            run_sqlite(args, MODULE)
            if vendor == "sqlite"
            else run_postgresql(args, MODULE, PG_DATABASE)
        )
        if result is not None:
            results.append(result)
    if results:
        print_table(results, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())

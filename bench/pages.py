"""Server time of the dashboard's pages on a large catalog, on SQLite and on PostgreSQL.

    .venv/bin/python -m bench.pages [--quick] [--repeat N] [--only sqlite postgresql]

Each database gets its own fresh catalog: a temporary SQLite file, and a `bench_pages`
database on the PostgreSQL server of BENCH_PG_URL (default
postgresql://postgres@127.0.0.1:5432/postgres), created and dropped by the bench. A child
process per database migrates it and seeds 500 sources with 250,000 runs and two backups
of one source with a 1,000,000-entry manifest each (COPY on PostgreSQL), then times each
page N times through Django's test client, logged in, and reports the median and the 95th
percentile, and the manifest's size on disk per entry (PostgreSQL: pg_total_relation_size
of the entry table, indexes and TOAST included; SQLite: its pages in dbstat, the primary
key index included). `--quick` seeds a hundredth of that, as a smoke test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_DATABASE = "bench_pages"
# (page, target median in ms); the diff has no target but is reported.
PAGES = [
    ("overview", 150),
    ("source page", 150),
    ("run page", None),
    ("manifest folder", 100),
    ("manifest search", 100),
    ("manifest search a/b", 100),
    ("manifest diff", None),
]
SIZE_TARGET = 200

# Every column of backups_run, in the order the seeding writes them.
RUN_COLUMNS = [
    "id", "source_id", "kind", "status", "trigger", "exclusive", "keep", "cancel_requested",
    "queued_at", "started_at", "finished_at", "heartbeat_at", "worker", "bytes_done",
    "bytes_total", "files_done", "files_total", "current_item", "archive", "size", "sha256",
    "payload_bytes", "payload_files", "error", "warnings", "log", "backup_id", "target",
    "in_place", "paths", "drill", "checks", "restore_seconds", "verified", "verified_at",
    "requested_by_id", "resent_at", "resends", "worker_host", "worker_pid", "worker_started",
    "worker_pid_ns", "publishing_at", "storage_id", "level", "level_asked", "rehash",
    "base_id", "full_id", "picked_storage", "recipients", "checks_skipped", "copy_only",
]  # fmt: skip


def later_run_columns(boolean) -> dict:
    """Return the values of the run columns the seeders do not set themselves."""
    return {
        "requested_by_id": None, "resent_at": None, "resends": 0, "worker_host": "bench",
        "worker_pid": None, "worker_started": None, "worker_pid_ns": "", "publishing_at": None,
        "storage_id": None, "level": "full", "level_asked": "", "rehash": boolean(False),
        "base_id": None, "full_id": None, "picked_storage": boolean(False), "recipients": "[]",
        "checks_skipped": boolean(False), "copy_only": boolean(False),
    }  # fmt: skip


class Scale:
    """How big the seeded catalog is."""

    def __init__(self, quick: bool) -> None:
        factor = 100 if quick else 1
        self.sources = max(5, 500 // factor)
        self.runs = 250_000 // factor
        self.top_dirs = 10 if not quick else 2
        self.sub_dirs = 100 if not quick else 5
        self.files_per_dir = 1000


# --- the child: seed one database and time the pages ----------------------------------


def _copy_or_insert(table: str, columns: list[str], rows) -> int:
    """Insert rows fast: COPY on PostgreSQL, executemany in batches elsewhere."""
    from django.db import connection

    count = 0
    quoted = ", ".join(connection.ops.quote_name(c) for c in columns)
    if connection.vendor == "postgresql":
        with (
            connection.cursor() as cursor,
            cursor.connection.cursor().copy(f"COPY {table} ({quoted}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)
                count += 1
        return count
    marks = ", ".join(["%s"] * len(columns))
    sql = f"INSERT INTO {table} ({quoted}) VALUES ({marks})"
    batch = []
    with connection.cursor() as cursor:
        for row in rows:
            batch.append(row)
            if len(batch) == 20_000:
                cursor.executemany(sql, batch)
                count += len(batch)
                batch.clear()
        cursor.executemany(sql, batch)
    return count + len(batch)


def _when(moment: datetime):
    from django.db import connection

    if connection.vendor == "postgresql":
        return moment
    return connection.ops.adapt_datetimefield_value(moment)


def _reset_sequences() -> None:
    from django.core.management.color import no_style
    from django.db import connection

    from backups.models import Manifest, ManifestDir, Run, Source

    with connection.cursor() as cursor:
        for sql in connection.ops.sequence_reset_sql(
            no_style(), [Run, Source, ManifestDir, Manifest]
        ):
            cursor.execute(sql)


def _seed_runs(scale: Scale, sources: list, now: datetime) -> dict:
    """Write the run history: hourly backups per source, a verify every tenth, drills."""
    from django.db import connection

    rng = random.Random(6)
    per_source = scale.runs // len(sources)
    boolean = (lambda b: b) if connection.vendor == "postgresql" else int
    facts: dict = {"running": None, "newest": {}, "next_id": 1}
    log = "backing up directory /srv/data to /var/archives/x\npublished the archive\n"

    def run(**fields) -> tuple:
        pk = facts["next_id"]
        facts["next_id"] += 1
        values = {
            "id": pk, "trigger": "schedule", "keep": False, "cancel_requested": False,
            "worker": "bench:1:0", "bytes_done": 0, "bytes_total": None, "files_done": 0,
            "files_total": None, "current_item": "", "archive": "", "size": None,
            "sha256": "", "payload_bytes": None, "payload_files": None, "error": "",
            "warnings": "[]", "log": log, "backup_id": None, "target": "", "in_place": False,
            "paths": "[]", "drill": False, "checks": "[]", "restore_seconds": None,
            "verified": None, "verified_at": None, **later_run_columns(boolean), **fields,
        }  # fmt: skip
        for name in ("exclusive", "keep", "cancel_requested", "in_place", "drill", "verified"):
            if values[name] is not None:
                values[name] = boolean(values[name])
        for name in ("queued_at", "started_at", "finished_at", "heartbeat_at", "verified_at"):
            if values[name] is not None:
                values[name] = _when(values[name])
        return tuple(values[name] for name in RUN_COLUMNS)

    def rows():
        for index, source in enumerate(sources):
            # A few sources are behind (an RPO breach), a few are running right now.
            lag_h = 30 if index % 17 == 0 else 0
            made = 0
            for hour in range(per_source):
                if made >= per_source:
                    break
                started = now - timedelta(hours=lag_h + hour, minutes=rng.randint(0, 5))
                took = rng.randint(20, 900)
                ended = started + timedelta(seconds=took)
                pk = facts["next_id"]
                made += 1
                if index % 50 == 1 and hour == 0:
                    facts["running"] = facts["running"] or pk
                    yield run(
                        source_id=source.pk, kind="backup", status="running", exclusive=True,
                        queued_at=started, started_at=started, finished_at=None,
                        heartbeat_at=now, bytes_done=10**8, bytes_total=3 * 10**8,
                        files_done=1000, files_total=5000, current_item="data/big/file.bin",
                    )  # fmt: skip
                    continue
                roll = rng.random()
                status = "failed" if roll < 0.04 else "warning" if roll < 0.06 else "succeeded"
                if status == "failed":
                    yield run(
                        source_id=source.pk, kind="backup", status=status, exclusive=True,
                        queued_at=started, started_at=started, finished_at=ended,
                        heartbeat_at=ended, error="The source folder is not readable.",
                    )  # fmt: skip
                    continue
                facts["newest"].setdefault(source.pk, pk)
                size = rng.randint(10**6, 10**9)
                checked = hour % 10 == 0
                yield run(
                    source_id=source.pk, kind="backup", status=status, exclusive=True,
                    queued_at=started, started_at=started, finished_at=ended,
                    heartbeat_at=ended, bytes_done=size * 3, files_done=5000,
                    archive=f"/var/archives/{source.slug}/{started:%Y%m%dT%H%M%SZ}-{pk}.tar.zst",
                    size=size, sha256=hashlib.sha256(str(pk).encode()).hexdigest(),
                    payload_bytes=size * 3, payload_files=5000,
                    warnings='["a file changed while read"]' if status == "warning" else "[]",
                    verified=True if checked else None,
                    verified_at=ended + timedelta(seconds=60) if checked else None,
                )  # fmt: skip
                if checked and made < per_source:
                    # A verification of that backup; every fifth one a timed drill.
                    made += 1
                    drill = hour % 50 == 0
                    yield run(
                        source_id=source.pk, kind="verify", status="succeeded", exclusive=False,
                        queued_at=ended, started_at=ended,
                        finished_at=ended + timedelta(seconds=50),
                        heartbeat_at=ended + timedelta(seconds=50), backup_id=pk, drill=drill,
                        checks='[{"name": "checksum", "ok": true, "detail": "matches"}]',
                        restore_seconds=40.0 if drill else None,
                    )  # fmt: skip

    facts["runs"] = _copy_or_insert("backups_run", RUN_COLUMNS, rows())
    return facts


def _seed_manifest(run_id: int, scale: Scale, variant: int) -> tuple[int, str]:
    """Catalogue a big tree as the manifest of `run_id`; `variant` 1 changes about 1%."""
    from backups.models import Manifest, ManifestDir

    manifest = Manifest.objects.create(run_id=run_id, path=f"/var/archives/{run_id}.manifest.json")
    folders = [""]
    for top in range(scale.top_dirs):
        folders.append(f"d{top:02d}")
        folders.extend(f"d{top:02d}/s{sub:03d}" for sub in range(scale.sub_dirs))
    folders.sort()
    created = ManifestDir.objects.bulk_create(
        [ManifestDir(manifest=manifest, path=path) for path in folders], batch_size=5000
    )
    if any(folder.pk is None for folder in created):
        created = ManifestDir.objects.filter(manifest=manifest)
    ids = {folder.path: folder.pk for folder in created}
    mtime = 1_760_000_000

    def rows():
        number = 0
        for top in range(scale.top_dirs):
            yield (ids[""], f"d{top:02d}", "d", 0, 0o755, mtime, None, None)
            for sub in range(scale.sub_dirs):
                folder = f"d{top:02d}/s{sub:03d}"
                yield (ids[f"d{top:02d}"], f"s{sub:03d}", "d", 0, 0o755, mtime, None, None)
                for _ in range(scale.files_per_dir):
                    number += 1
                    content = number
                    if variant:
                        if number % 500 == 0:
                            continue  # removed since
                        if number % 100 == 0:
                            content = -number  # changed since
                    digest = hashlib.sha256(str(content).encode()).digest()
                    size = 1000 + number % 50_000
                    name = f"file-{number:07d}"
                    yield (ids[folder], f"{name}.dat", "f", size, 0o644, mtime, digest, None)
                    if variant and number % 450 == 0:
                        yield (ids[folder], f"{name}.new", "f", 10, 0o644, mtime, digest, None)

    columns = ["directory_id", "name", "type", "size", "mode", "mtime", "sha256", "target"]
    entries = _copy_or_insert("backups_manifestentry", columns, rows())
    Manifest.objects.filter(pk=manifest.pk).update(
        entries=entries, files=entries, bytes=entries * 25_000
    )
    return entries, f"d{scale.top_dirs - 1:02d}/s{scale.sub_dirs // 2:03d}"


def _entry_bytes(rows: int) -> tuple[float, dict[str, float]]:
    """Return the entry table's size on disk per row, indexes included, and its parts."""
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("VACUUM ANALYZE backups_manifestentry")
            cursor.execute(
                "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
                "WHERE c.relname = 'backups_manifestentry' UNION ALL "
                "SELECT i.indexrelid::regclass::text, pg_relation_size(i.indexrelid) "
                "FROM pg_index i WHERE i.indrelid = 'backups_manifestentry'::regclass"
            )
            sizes = dict(cursor.fetchall())
            total = sizes.pop("backups_manifestentry")
            sizes["table"] = total - sum(sizes.values())
        else:
            # The table, its primary key index, and the full-text index's own tables.
            cursor.execute(
                "SELECT name, SUM(pgsize) FROM dbstat WHERE name IN (SELECT name FROM "
                "sqlite_master WHERE tbl_name = 'backups_manifestentry' "
                "OR name LIKE 'backups_manifestentry_fts%') GROUP BY name"
            )
            sizes = dict(cursor.fetchall())
            total = sum(sizes.values())
    return total / rows, {name: size / rows for name, size in sorted(sizes.items())}


def _time(client, url: str, repeat: int) -> tuple[float, float]:
    for _ in range(2):  # warm the caches, as a page that is read often is
        response = client.get(url)
        if response.status_code != 200:
            raise SystemExit(f"{url} answered {response.status_code}")
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        response = client.get(url)
        samples.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, url
    samples.sort()
    p95 = samples[min(len(samples) - 1, round(0.95 * (len(samples) - 1)))]
    return statistics.median(samples), p95


def child(quick: bool, repeat: int) -> dict:
    """Migrate, seed and time the pages on the database of DATABASE_URL."""
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

    from backups.models import Policy, Source
    from backups.services.schedules import schedule_sync_all

    if settings.DEBUG:
        setup_test_environment()
    scale = Scale(quick)
    call_command("migrate", verbosity=0)
    if not settings.DEBUG:
        call_command("collectstatic", interactive=False, verbosity=0)
    started = time.perf_counter()
    now = datetime.now(UTC)
    policies = [
        Policy.objects.create(
            name="hourly", schedule="0 * * * *", rpo_s=7200, rto_s=1800, keep_last=24,
            keep_daily=7, keep_weekly=4, drill_every_s=7 * 86400,
        ),
        Policy.objects.create(
            name="frequent", schedule="*/30 * * * *", rpo_s=3600, rto_s=900, keep_hourly=48,
            keep_daily=14,
        ),
    ]  # fmt: skip
    Source.objects.bulk_create(
        [
            Source(
                name=f"source-{index:03d}",
                slug=f"source-{index:03d}",
                kind="directory",
                location=f"/srv/data/app-{index:03d}",
                policy=policies[index % 2],
                owner=f"team-{index % 7}",
            )
            for index in range(scale.sources)
        ]
    )
    sources = list(Source.objects.order_by("pk"))
    facts = _seed_runs(scale, sources, now)
    _reset_sequences()
    # Runs written by COPY bypass the services: derive the standings the pages read.
    call_command("recompute_standing", stdout=open(os.devnull, "w"))  # noqa: SIM115
    schedule_sync_all(now=now)
    target = sources[0]
    newest = facts["newest"][target.pk]
    # The backup before the newest good one: the "previous" a diff compares with.
    from backups.models import Run

    previous = (
        Run.objects.restorable()
        .filter(source=target, started_at__lt=Run.objects.get(pk=newest).started_at)
        .order_by("-started_at")
        .values_list("pk", flat=True)
        .first()
    )
    entries, folder = _seed_manifest(newest, scale, variant=1)
    entries_old, _ = _seed_manifest(previous, scale, variant=0)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    seeded_s = time.perf_counter() - started
    per_entry, parts = _entry_bytes(entries + entries_old)

    user = get_user_model().objects.create_superuser("bench", "", "bench")
    client = Client()
    client.force_login(user)
    last_file = scale.top_dirs * scale.sub_dirs * scale.files_per_dir
    urls = {
        "overview": reverse("overview"),
        "source page": reverse("source-detail", args=[target.slug]),
        "run page": reverse("run-detail", args=[facts["running"]]),
        "manifest folder": reverse("manifest-browse", args=[newest]) + f"?path={folder}",
        # One file in a million: the search has to look at every name.
        "manifest search": reverse("manifest-browse", args=[newest])
        + f"?q=file-{last_file - 7:07d}",
        "manifest search a/b": reverse("manifest-browse", args=[newest])
        + f"?q={folder}/file-{last_file - 7:07d}"[:-3],
        "manifest diff": reverse("manifest-diff", args=[newest]),
    }
    times = {name: _time(client, url, repeat) for name, url in urls.items()}
    return {
        "vendor": connection.vendor,
        "sources": len(sources),
        "runs": facts["runs"],
        "entries": entries,
        "seeded_s": seeded_s,
        "bytes_per_entry": per_entry,
        "bytes_parts": parts,
        "times": times,
    }


# --- the parent: one child per database, then the table --------------------------------


def _pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as connection:
        connection.execute(sql)


def _pg_database_url(database: str) -> str:
    parts = urlsplit(PG_URL)
    return urlunsplit(parts._replace(path=f"/{database}"))


def run_child(database_url: str, args, module: str) -> dict:
    """Run `module --child` against `database_url` with production settings; its result."""
    with tempfile.TemporaryDirectory(prefix="bench-pages-") as scratch:
        # Production settings, as the pages are served for real: DEBUG off (no SQL log,
        # no template instrumentation), hashed static files.
        env = dict(
            os.environ,
            DATABASE_URL=database_url,
            ARCHIVE_ROOT=scratch,
            DEBUG="0",
            SECRET_KEY=secrets.token_urlsafe(50),
            ALLOWED_HOSTS="testserver",
            SECURE_SSL_REDIRECT="0",
            # Scraped as Prometheus would, without a token in this throw-away setup.
            METRICS_PUBLIC="1",
        )
        argv = [sys.executable, "-m", module, "--child", "--repeat", str(args.repeat)]
        if args.quick:
            argv.append("--quick")
        result = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, check=False)
    if result.returncode != 0:
        raise SystemExit(f"the {database_url.split(':')[0]} run failed ({result.returncode})")
    return json.loads(result.stdout.decode().strip().splitlines()[-1])


def run_sqlite(args, module: str = "bench.pages") -> dict:
    """Run `module`'s child on a fresh SQLite file."""
    with tempfile.TemporaryDirectory(prefix="bench-pages-db-") as folder:
        return run_child(f"sqlite:///{folder}/bench.sqlite3", args, module)


def run_postgresql(args, module: str = "bench.pages", database: str = PG_DATABASE) -> dict | None:
    """Run `module`'s child on a fresh PostgreSQL database `database`; None without a server."""
    try:
        _pg_admin(f'DROP DATABASE IF EXISTS "{database}"')
        _pg_admin(f'CREATE DATABASE "{database}"')
    except Exception as error:  # no server: say so and go on with SQLite
        print(f"PostgreSQL skipped: {error}", file=sys.stderr)
        return None
    try:
        return run_child(_pg_database_url(database), args, module)
    finally:
        _pg_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def print_table(results: list[dict], repeat: int) -> None:
    """Print median and p95 per page and database, against the targets."""
    first = results[0]
    print(
        f"\nDashboard pages: {first['sources']} sources, {first['runs']} runs, "
        f"{first['entries']:,} manifest entries; {repeat} requests each (after 2 warm-ups)\n"
    )
    head = f"{'page':<22}" + "".join(f"{r['vendor'] + ' median / p95':>30}" for r in results)
    print(head + f"{'target':>12}")
    for name, target in PAGES:
        line = f"{name:<22}"
        for result in results:
            median, p95 = result["times"][name]
            mark = "" if target is None or median < target else " !"
            line += f"{f'{median:.1f} / {p95:.1f} ms{mark}':>30}"
        print(line + f"{f'< {target} ms' if target else '-':>12}")
    line = f"{'bytes per entry':<22}"
    for result in results:
        line += f"{result['bytes_per_entry']:>30.1f}"
    print(line + f"{f'< {SIZE_TARGET}':>12}")
    for result in results:
        parts = ", ".join(f"{name} {size:.1f}" for name, size in result["bytes_parts"].items())
        print(f"  {result['vendor']} bytes per entry: {parts}")
    line = f"{'seeding time':<22}"
    for result in results:
        line += f"{result['seeded_s']:>29.0f}s"
    print(line)


def main(argv: list[str] | None = None) -> int:
    """Run the page benchmark on each database and print the table."""
    parser = argparse.ArgumentParser(prog="python -m bench.pages", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a hundredth of the data")
    parser.add_argument("--repeat", type=int, default=20, help="timed requests per page")
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
        result = run_sqlite(args) if vendor == "sqlite" else run_postgresql(args)
        if result is not None:
            results.append(result)
    if results:
        print_table(results, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())

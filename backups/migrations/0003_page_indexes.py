"""Indexes for the dashboard's pages and the file search.

- Run: each "newest run of each sort per source" lookup of the overview, the source page
  and the compliance service becomes an index range read instead of a scan of the
  source's history (500 sources × 500 runs: from seconds to milliseconds).
- ManifestEntry: the folder's own index goes, the primary key (directory, name) already
  starts with it; a million entries per backup make every byte per entry count.
- Substring search over a backup's names, which a B-tree cannot serve:
  PostgreSQL: a trigram GIN index on upper(name) (pg_trgm), the expression Django's
  `icontains` compares, and the primary key packed full (fillfactor 100), as entries are
  written once and never updated.
  SQLite: an FTS5 trigram index over the names (external content: no copy of the text;
  detail=none, columnsize=0: only which rows hold each trigram), kept in step by triggers. A later migration that rebuilds backups_manifestentry on
  SQLite drops these triggers with the old table: it must recreate them and rebuild the
  index (the search falls back to a scan while they are missing).
Where the extension or FTS5 is not available the search still works, by scanning.
"""

import logging

import django.db.models.deletion
from django.db import migrations, models, transaction

logger = logging.getLogger(__name__)

FTS = "backups_manifestentry_fts"
ENTRIES = "backups_manifestentry"

SQLITE_CREATE = [
    f"CREATE VIRTUAL TABLE {FTS} USING fts5(name, content='{ENTRIES}', content_rowid='rowid', "
    "tokenize='trigram case_sensitive 0', detail='none', columnsize=0)",
    f"CREATE TRIGGER {FTS}_insert AFTER INSERT ON {ENTRIES} BEGIN "
    f"INSERT INTO {FTS}(rowid, name) VALUES (new.rowid, new.name); END",
    f"CREATE TRIGGER {FTS}_delete AFTER DELETE ON {ENTRIES} BEGIN "
    f"INSERT INTO {FTS}({FTS}, rowid, name) VALUES ('delete', old.rowid, old.name); END",
    f"CREATE TRIGGER {FTS}_update AFTER UPDATE OF name ON {ENTRIES} BEGIN "
    f"INSERT INTO {FTS}({FTS}, rowid, name) VALUES ('delete', old.rowid, old.name); "
    f"INSERT INTO {FTS}(rowid, name) VALUES (new.rowid, new.name); END",
    f"INSERT INTO {FTS}({FTS}) VALUES ('rebuild')",
]
SQLITE_DROP = [
    f"DROP TRIGGER IF EXISTS {FTS}_insert",
    f"DROP TRIGGER IF EXISTS {FTS}_delete",
    f"DROP TRIGGER IF EXISTS {FTS}_update",
    f"DROP TABLE IF EXISTS {FTS}",
]
POSTGRES_CREATE = [
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    f"CREATE INDEX IF NOT EXISTS {ENTRIES}_name_trgm ON {ENTRIES} "
    "USING gin (upper(name) gin_trgm_ops)",
    f"ALTER INDEX {ENTRIES}_pkey SET (fillfactor = 100)",
]
POSTGRES_DROP = [
    f"DROP INDEX IF EXISTS {ENTRIES}_name_trgm",
    f"ALTER INDEX {ENTRIES}_pkey RESET (fillfactor)",
]


def _run(schema_editor, statements) -> None:
    vendor = schema_editor.connection.vendor
    try:
        # A savepoint: a refused CREATE EXTENSION must not abort the whole migration.
        with transaction.atomic(using=schema_editor.connection.alias):
            for sql in statements:
                schema_editor.execute(sql)
    except Exception as error:  # no pg_trgm, no FTS5: the search scans instead
        logger.warning("search index not created on %s (%s); searches will scan", vendor, error)


def create_search_index(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        _run(schema_editor, POSTGRES_CREATE)
    elif vendor == "sqlite":
        _run(schema_editor, SQLITE_CREATE)


def drop_search_index(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        _run(schema_editor, POSTGRES_DROP)
    elif vendor == "sqlite":
        _run(schema_editor, SQLITE_DROP)


class Migration(migrations.Migration):
    dependencies = [
        ("backups", "0002_housekeeping_schedule"),
    ]

    operations = [
        migrations.AlterField(
            model_name="manifestentry",
            name="directory",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="+",
                to="backups.manifestdir",
            ),
        ),
        migrations.AddIndex(
            model_name="run",
            index=models.Index(
                fields=["source", "kind", "-started_at"], name="run_source_kind_started"
            ),
        ),
        migrations.AddIndex(
            model_name="run",
            index=models.Index(
                fields=["source", "kind", "-finished_at"], name="run_source_kind_finished"
            ),
        ),
        migrations.AddIndex(
            model_name="run",
            index=models.Index(fields=["source", "-queued_at", "-id"], name="run_source_queued"),
        ),
        migrations.AddIndex(
            model_name="run",
            index=models.Index(fields=["source", "status"], name="run_source_status"),
        ),
        migrations.AddIndex(
            model_name="run",
            index=models.Index(
                condition=models.Q(("restore_seconds__isnull", False)),
                fields=["source", "-finished_at"],
                name="run_source_timed_restores",
            ),
        ),
        migrations.AddIndex(
            model_name="run",
            index=models.Index(fields=["status", "finished_at"], name="run_status_finished"),
        ),
        migrations.RunPython(create_search_index, drop_search_index),
    ]

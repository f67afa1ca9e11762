"""SQLite: the trigram index of the names is filled once per backup, not by a trigger.

A trigger firing for each entry cost most of a backup's indexing time (50,000 entries:
0.9 s of 1.0 s); the catalog now adds a backup's names in one INSERT ... SELECT after
its rows are in (services.manifests.name_index_add). The delete and update triggers stay.
"""

from django.db import migrations

FTS = "backups_manifestentry_fts"
ENTRIES = "backups_manifestentry"


def drop_insert_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "sqlite":
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {FTS}_insert")


def restore_insert_trigger(apps, schema_editor):
    if schema_editor.connection.vendor != "sqlite":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM sqlite_master WHERE name = %s", [FTS])
        if not cursor.fetchone()[0]:
            return  # no FTS5 here: the search scans
    schema_editor.execute(
        f"CREATE TRIGGER {FTS}_insert AFTER INSERT ON {ENTRIES} BEGIN "
        f"INSERT INTO {FTS}(rowid, name) VALUES (new.rowid, new.name); END"
    )


class Migration(migrations.Migration):
    dependencies = [("backups", "0016_backup_levels")]

    operations = [migrations.RunPython(drop_insert_trigger, restore_insert_trigger)]

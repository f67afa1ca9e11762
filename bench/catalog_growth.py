"""What a no-change incremental of a 1,000,000-file tree adds to the catalog and the storage.

    .venv/bin/python -m bench.catalog_growth [--quick]

On `bench.datasets.million` (1,000,000 files in 1,000 folders; --quick: 20,000), with the
default SQLite catalog: a full `backup --inline`, then a no-change incremental. Reported:
the bytes the incremental added to the database file (after a WAL checkpoint, so the
pages it wrote are counted) and to the archive folder, and both commands' wall times. The
catalog stores a delta's entries, not the tree again, so both growths stay under 1 MB
whatever the tree's size.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
from pathlib import Path

from bench import datasets
from bench.incremental import catalog_with_source, manage

LIMIT = 1 << 20


def _db_size(database: Path) -> int:
    with sqlite3.connect(database) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return database.stat().st_size


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.catalog_growth")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    tree = datasets.million(args.quick)
    files = sum(len(names) for _, _, names in os.walk(tree))
    with tempfile.TemporaryDirectory(prefix="bench-growth-", dir=datasets.ROOT) as scratch:
        scratch = Path(scratch)
        database = scratch / "db.sqlite3"
        env = catalog_with_source(scratch, tree)
        full_wall, _ = manage(env, "backup", "tree", "--inline")
        db_before, archives_before = _db_size(database), _du(scratch / "archives")
        incr_wall, run = manage(env, "backup", "tree", "--inline", "--level", "incremental")
        db_growth = _db_size(database) - db_before
        with sqlite3.connect(database) as connection:
            (rows,) = connection.execute(
                "SELECT entries FROM backups_manifest WHERE run_id = ?", [run["id"]]
            ).fetchone()
        archive_growth = _du(scratch / "archives") - archives_before
    print(f"\ncatalog growth of a no-change incremental, {files:,} files (SQLite catalog)")
    print("| what | value | target |")
    print("|---|---:|---:|")
    print(f"| full backup (whole command) | {full_wall:.1f} s | |")
    print(f"| no-change incremental (whole command, {run['level']}) | {incr_wall:.2f} s | |")
    print(f"| catalog entries added | {rows:,} | |")
    print(f"| database growth | {db_growth:,} B | < {LIMIT:,} B |")
    print(f"| archive folder growth | {archive_growth:,} B | < {LIMIT:,} B |")
    return 0 if run["level"] == "incremental" and max(db_growth, archive_growth) < LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())

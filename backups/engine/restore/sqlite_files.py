"""Open, check and copy SQLite database files (also used by verify and crash recovery)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote


def sqlite_uri(path: Path, *, immutable: bool = False) -> str:
    """Return a read-only SQLite URI for `path` (immutable: no locks, no -wal needed)."""
    flags = "mode=ro&immutable=1" if immutable else "mode=ro"
    return f"file:{quote(os.fsencode(path))}?{flags}"


def sqlite_integrity(path: Path, *, quick: bool = False, immutable: bool = True) -> str:
    """Run `PRAGMA integrity_check` (or quick_check); return "ok" or the problems found."""
    pragma = "quick_check" if quick else "integrity_check"
    try:
        with contextlib.closing(
            sqlite3.connect(sqlite_uri(path, immutable=immutable), uri=True)
        ) as db:
            rows = db.execute(f"PRAGMA {pragma}(20)").fetchall()
    except sqlite3.DatabaseError as error:
        return f"cannot be opened as a SQLite database: {error}"
    lines = [str(row[0]) for row in rows]
    return "ok" if lines == ["ok"] else "; ".join(lines)


def page_count(path: Path) -> int:
    """Return how many pages the database at `path` has."""
    with contextlib.closing(sqlite3.connect(sqlite_uri(path, immutable=True), uri=True)) as db:
        return int(db.execute("PRAGMA page_count").fetchone()[0])


def sqlite_copy(
    source: Path,
    dest: Path,
    *,
    timeout: float,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Copy database `source` into `dest` with SQLite's backup API, as one transaction.

    Readers of `dest` see the old database until the copy commits, then the new one; they
    never see a half-written file.
    """

    def step(_status, remaining, total) -> None:
        if progress is not None:
            progress(total - remaining, total)

    source_db = sqlite3.connect(sqlite_uri(source, immutable=True), uri=True)
    dest_db = sqlite3.connect(os.fspath(dest), timeout=timeout)
    with contextlib.closing(source_db), contextlib.closing(dest_db):
        source_db.backup(dest_db, pages=1024, progress=step)

"""Open, check and copy SQLite database files (also used by verify and crash recovery)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
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


# What a check query may do: read tables, call functions, recurse. Everything else is
# refused, ATTACH above all: `VACUUM INTO` starts with one and writes a file anywhere
# the worker may, even on a read-only connection, and an ATTACH creates its file.
_READ_ACTIONS = {
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    sqlite3.SQLITE_RECURSIVE,
}
# Pragmas that only report, read (never set) by a check such as `PRAGMA user_version`.
_READ_PRAGMAS = {
    "application_id",
    "foreign_key_check",
    "freelist_count",
    "integrity_check",
    "page_count",
    "page_size",
    "quick_check",
    "schema_version",
    "table_info",
    "user_version",
}
_REFUSED_FUNCTIONS = {"load_extension"}
_ACTIONS = {
    getattr(sqlite3, name): name.removeprefix("SQLITE_").replace("_", " ")
    for name in dir(sqlite3)
    # The action codes share their numbers with the result codes (SQLITE_OK, SQLITE_DENY).
    if name.startswith(("SQLITE_CREATE_", "SQLITE_DROP_"))
    or name
    in {
        "SQLITE_DELETE",
        "SQLITE_INSERT",
        "SQLITE_UPDATE",
        "SQLITE_PRAGMA",
        "SQLITE_TRANSACTION",
        "SQLITE_ATTACH",
        "SQLITE_DETACH",
        "SQLITE_ALTER_TABLE",
        "SQLITE_REINDEX",
        "SQLITE_ANALYZE",
        "SQLITE_FUNCTION",
        "SQLITE_SAVEPOINT",
    }
}
# How many SQLite virtual-machine steps run between two looks at the clock.
_PROGRESS_STEPS = 10_000


class QueryRefused(ValueError):
    """A check query asked for more than reading, or ran past its time limit."""


def sqlite_read_query(path: Path, sql: str, *, time_limit_s: float) -> tuple | None:
    """Run one query on the database at `path`, reading only, and return its first row.

    An authorizer lets the query read tables and call functions, nothing else (no write,
    no ATTACH, no `VACUUM INTO`, no pragma that sets); a progress handler stops it after
    `time_limit_s`. Raise QueryRefused with a sentence naming what was refused.
    """
    refused: list[str] = []

    def authorize(action, first, second, _database, _trigger) -> int:
        if action in _READ_ACTIONS and not (
            action == sqlite3.SQLITE_FUNCTION and str(second).lower() in _REFUSED_FUNCTIONS
        ):
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_PRAGMA and second is None and first in _READ_PRAGMAS:
            return sqlite3.SQLITE_OK
        what = _ACTIONS.get(action, f"operation {action}")
        target = second if action == sqlite3.SQLITE_FUNCTION else first
        refused.append(f"{what} {target}" if target else what)
        return sqlite3.SQLITE_DENY

    deadline = time.monotonic() + time_limit_s
    late = []

    def progress() -> int:
        if time.monotonic() > deadline:
            late.append(True)
            return 1
        return 0

    with contextlib.closing(sqlite3.connect(sqlite_uri(path), uri=True)) as db:
        db.set_authorizer(authorize)
        db.set_progress_handler(progress, _PROGRESS_STEPS)
        try:
            return db.execute(sql).fetchone()
        except sqlite3.Error:
            if refused:
                raise QueryRefused(
                    f"refused: a check query may only read (SELECT), and this one asks for "
                    f"{refused[0]}"
                ) from None
            if late:
                raise QueryRefused(
                    f"stopped after {time_limit_s:g} s, its time limit: simplify it or "
                    "query an indexed column"
                ) from None
            raise

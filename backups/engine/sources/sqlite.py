"""Back up a SQLite database: a consistent snapshot, checked, stored as one tar member.

`sqlite3.Connection.backup()` copies the database in one step inside a read transaction,
so the snapshot is a state some transaction committed, whether or not other processes
write meanwhile (WAL or rollback journal). The snapshot is written next to the archive as
`<stem>.snapshot.tmp` (the stale-temp cleanup finds it after a crash), checked with
`PRAGMA integrity_check`, streamed into the archive under the database file's name, and
removed.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import hashlib
import os
import pwd
import sqlite3
import stat
import tarfile
from pathlib import Path
from urllib.parse import quote

from ..atomic import raise_if_no_space
from ..errors import SourceError
from ..locations import SQLITE
from ..manifest import FILE, Entry, clamp_mtime
from ..tarstream import BLOCK
from .base import CHUNK, Output, Plan, SourceDriver, checked

_RECORD = tarfile.RECORDSIZE
# How long the snapshot waits for a writer's lock before it gives up, in seconds.
_BUSY_TIMEOUT = 60.0


def _name_of(ids: int, lookup) -> str:
    try:
        return lookup(ids)[0]
    except (KeyError, OverflowError):
        return ""


class SqliteDriver(SourceDriver):
    """A SQLite database file."""

    def __init__(self, location: str, *, snapshot: Path | None = None) -> None:
        checked(SQLITE, location)
        self.location = location
        self.snapshot = snapshot

    def plan(self) -> Plan:
        """Return the database's size (with its WAL, if any); a snapshot is one file."""
        size = os.path.getsize(self.location)
        wal = self.location + "-wal"
        if os.path.exists(wal):
            size += os.path.getsize(wal)
        return Plan(kind=SQLITE, location=self.location, files=1, bytes=size)

    def cleanup(self) -> None:
        """Remove the snapshot, if one is left."""
        if self.snapshot is not None:
            for suffix in ("", "-journal", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{self.snapshot}{suffix}")

    def stream(self, out: Output) -> None:
        """Snapshot the database, check the snapshot, and write it as one tar member."""
        if self.snapshot is None:
            raise SourceError("A SQLite backup needs a folder for its snapshot.")
        out.hooks.check()
        self._take_snapshot()
        out.hooks.check()
        self._check_snapshot()
        out.hooks.check()
        self._write_member(out)
        self.cleanup()

    def _take_snapshot(self) -> None:
        snapshot = self.snapshot
        try:
            source = sqlite3.connect(
                f"file:{quote(self.location)}?mode=ro", uri=True, timeout=_BUSY_TIMEOUT
            )
        except sqlite3.Error as error:
            raise SourceError(f"Cannot open the database {self.location}: {error}") from None
        try:
            target = sqlite3.connect(snapshot)
            try:
                # The snapshot is a scratch copy: no journal of its own to clean up.
                target.execute("PRAGMA journal_mode=OFF")
                # One step: the whole copy happens inside one read transaction, so
                # concurrent commits cannot make it restart or tear it.
                source.backup(target, pages=-1)
            finally:
                target.close()
        except sqlite3.Error as error:
            text = str(error)
            if "full" in text.lower():
                raise_if_no_space(OSError(errno.ENOSPC, text), snapshot)
            raise SourceError(f"The snapshot of {self.location} failed: {error}") from None
        finally:
            source.close()

    def _check_snapshot(self) -> None:
        uri = f"file:{quote(str(self.snapshot))}?mode=ro&immutable=1"
        try:
            db = sqlite3.connect(uri, uri=True)
            try:
                rows = db.execute("PRAGMA integrity_check(5)").fetchall()
            finally:
                db.close()
        except sqlite3.Error as error:
            raise SourceError(
                f"The snapshot of {self.location} cannot be checked: {error}; "
                "the database may be damaged."
            ) from None
        if rows != [("ok",)]:
            detail = "; ".join(str(row[0]) for row in rows).replace("\n", "; ")
            if len(detail) > 400:
                detail = detail[:400] + "..."
            raise SourceError(
                f"The snapshot of {self.location} failed SQLite's integrity check ({detail}); "
                "the database is damaged: repair it (or restore it) before backing it up."
            )

    def _write_member(self, out: Output) -> None:
        info = os.stat(self.location)
        size = os.path.getsize(self.snapshot)
        name = os.path.basename(self.location)
        member = tarfile.TarInfo(name)
        member.size = size
        member.mtime = int(info.st_mtime)
        member.mode = stat.S_IMODE(info.st_mode)
        member.uid, member.gid = info.st_uid, info.st_gid
        member.uname = _name_of(info.st_uid, pwd.getpwuid)
        member.gname = _name_of(info.st_gid, grp.getgrgid)
        header = member.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        out.totals(files=1, bytes=size)
        out.write(header)
        digest = hashlib.sha256()
        done = 0
        check = out.hooks.check
        with open(self.snapshot, "rb", buffering=0) as handle:
            view = memoryview(bytearray(CHUNK))
            while count := handle.readinto(view):
                chunk = view[:count]
                digest.update(chunk)
                out.write(chunk)
                done += count
                out.advance(bytes_done=done, files_done=0, current=name)
                check()
        if done != size:
            raise SourceError(f"The snapshot of {self.location} changed while it was read.")
        written = len(header) + size + (-size % BLOCK) + 2 * BLOCK
        out.write(bytes(-size % BLOCK + 2 * BLOCK + (-written % _RECORD)))
        out.advance(bytes_done=done, files_done=1, current=name)
        out.add(
            Entry(
                path=name,
                type=FILE,
                size=size,
                mode=member.mode,
                mtime=clamp_mtime(member.mtime),
                sha256=digest.hexdigest(),
            )
        )

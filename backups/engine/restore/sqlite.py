"""Restore a SQLite database: a new file is moved into place, a live one is copied into."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from ..atomic import fsync_dir
from ..errors import ArchiveError, TargetError, UnsafeArchiveError
from ..safety import Selection, clean_path, shown
from .files import remove_path
from .job import RestoreJob
from .journal import Journal
from .progress import ProgressMeter
from .recovery import undone_on_failure
from .request import check_space, check_target
from .sqlite_files import page_count, sqlite_copy, sqlite_integrity
from .staging import prepare_staging, sync_filesystem


def _single_file(job: RestoreJob) -> str:
    files = [entry for entry in job.manifest.entries if entry.type == "file"]
    if len(files) != 1:
        raise ArchiveError(
            f"The archive {job.archive.name} should hold one database file but its manifest "
            f"lists {len(files)} files."
        )
    path = clean_path(files[0].path)
    if not path:
        raise UnsafeArchiveError(
            f"The database member {shown(files[0].path)} of {job.archive.name} has an unsafe name."
        )
    return path


def restore_sqlite(job: RestoreJob) -> str:
    """Restore a database file, checked with PRAGMA integrity_check first; return its path."""
    request = job.request
    check_target(request, job.manifest)
    # The place checked is the real one: a symlink is followed here as it was there.
    target = Path(os.path.realpath(request.target))
    if not target.parent.exists():
        target.parent.mkdir(parents=True)
    job.recover(target)
    member = _single_file(job)
    live = request.in_place and target.exists()
    check_space(target.parent, job.manifest.total_bytes * (2 if live else 1))
    journal = job.journal(
        kind="sqlite" if live else "file",
        target=target,
        before="file" if target.exists() else None,
    )
    staging, aside = journal.staging, journal.aside
    with undone_on_failure(journal):
        prepare_staging(staging, None)
        job.extract(staging, Selection([]))
        snapshot = staging / member
        verdict = sqlite_integrity(snapshot)
        if verdict != "ok":
            raise ArchiveError(
                f"The database restored from {job.archive.name} fails PRAGMA integrity_check: "
                f"{verdict}. Nothing was changed."
            )
        job.checks.append({"name": "database", "ok": True, "detail": "integrity_check: ok"})
        sync_filesystem(staging)
        job.tick()
        if live:
            job.publish(lambda: _copy_into_live(job, journal, snapshot, target, aside))
        else:

            def move_in() -> None:
                journal.write(phase="swapping", moved_in=True)
                os.rename(snapshot, target)
                fsync_dir(target.parent)
                journal.write(phase="done")

            job.publish(move_in)
    remove_path(staging)
    remove_path(aside)
    journal.close()
    return str(target)


def _copy_into_live(job: RestoreJob, journal: Journal, snapshot: Path, target: Path, aside: Path):
    """Copy the verified snapshot into the live database, keeping the original until it passes."""
    timeout = 60.0 if job.request.timeout_s is None else max(1.0, job.request.timeout_s)
    # A consistent copy of the current database, to put back on any failure.
    live, keep = sqlite3.connect(os.fspath(target), timeout=timeout), sqlite3.connect(aside)
    try:
        with contextlib.closing(live), contextlib.closing(keep):
            live.backup(keep)
    except sqlite3.Error as error:
        raise _live_failed(target, "cannot be read to keep a copy of it", error) from None
    job.hooks.log(f"Saved the current database to {aside}.")
    meter = ProgressMeter(job.hooks, bytes_total=None, files_total=1, current="copying into place")
    page = snapshot.stat().st_size // max(1, page_count(snapshot))

    def progress(done: int, total: int) -> None:
        job.tick()
        meter.progress.bytes_done = done * page
        meter.progress.bytes_total = total * page
        meter.update()

    journal.write(phase="copying")
    committed = False
    try:
        # A short busy wait: the backup API retries a database another process is writing
        # by itself, calling `progress` between tries, so a cancel or the deadline is seen
        # within a second or two while the live database is busy.
        sqlite_copy(snapshot, target, timeout=1.0, progress=progress)
        committed = True
        verdict = sqlite_integrity(target, quick=True, immutable=False)
        if verdict != "ok":
            raise ArchiveError(f"The restored database fails PRAGMA quick_check: {verdict}.")
    except BaseException as error:
        # An unfinished copy was rolled back by SQLite itself; a finished one is undone.
        if committed:
            sqlite_copy(aside, target, timeout=timeout)
            job.hooks.log(f"Put the original database back into {target}.")
        journal.write(phase="staging")
        if isinstance(error, sqlite3.Error):
            raise _live_failed(target, "could not be written", error) from None
        raise
    job.checks.append({"name": "database", "ok": True, "detail": "quick_check after copy: ok"})
    job.hooks.log(f"Copied the restored database into {target}.")
    journal.write(phase="done")


def _live_failed(target: Path, what: str, error: sqlite3.Error) -> TargetError:
    return TargetError(
        f"The live database {target} {what} ({error}); the restore changed nothing. If it "
        "is locked, restore again once the process holding it is done. If it is damaged, "
        "move it and its -wal and -shm files aside, then restore again: the backup is then "
        "written as a new file."
    )

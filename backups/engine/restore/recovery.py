"""Put a target back as it was, after a failed restore or a crash, from the restore's journal."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from ..atomic import fsync_dir
from ..hooks import Hooks
from ..safety import shown
from .files import remove_path
from .journal import JOURNAL_NAME, Journal
from .sqlite_files import sqlite_copy


@contextlib.contextmanager
def undone_on_failure(journal: Journal) -> Iterator[None]:
    """Put the target back as `journal` describes it, and drop the journal, if the block fails."""
    try:
        yield
    except BaseException:
        roll_back(journal.record)
        journal.close()
        raise


def recover_interrupted(folder: Path, *, hooks: Hooks | None = None) -> list[str]:
    """Undo the restores in `folder` that a crash interrupted; return what was done.

    A restore keeps its journal in the folder that holds its target (for a target that is
    a mount point, in the target itself). Journals of restores that are still running are
    left alone. Run this at worker start-up; `run_restore` runs it for its own target.
    """
    folder = Path(folder)
    done: list[str] = []
    try:
        names = sorted(entry.name for entry in os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return done
    for name in names:
        if not JOURNAL_NAME.match(name):
            continue
        journal = folder / name
        lock_path = journal.with_suffix(".lock")
        try:
            lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its restore is still running
            try:
                record = json.loads(journal.read_text())
            except FileNotFoundError:
                continue
            except ValueError:
                done.append(f"Left the unreadable restore journal {journal} alone.")
                continue
            done.extend(roll_back(record))
            journal.unlink()
            with contextlib.suppress(FileNotFoundError):
                lock_path.unlink()
            fsync_dir(folder)
        finally:
            os.close(lock_fd)
    if hooks is not None:
        for line in done:
            hooks.log(line)
    return done


def roll_back(record: dict) -> list[str]:
    """Put a target back as it was before the restore that `record` describes."""
    kind = record["kind"]
    if kind == "tree":
        return _roll_back_tree(record)
    if kind == "paths":
        return _roll_back_paths(record)
    if kind == "file":
        return _roll_back_file(record)
    if kind == "sqlite":
        return _roll_back_sqlite(record)
    if kind == "scratch":
        remove_path(Path(record["staging"]))
        return [f"Removed the staging data of an interrupted restore at {record['staging']}."]
    return [f"Left a restore journal of unknown kind {kind!r} alone."]


def _roll_back_tree(record: dict) -> list[str]:
    target, staging, aside = Path(record["target"]), Path(record["staging"]), record["aside"]
    done = []
    if record["phase"] == "done":
        if aside:
            remove_path(Path(aside))
        remove_path(staging)
        return [f"Finished cleaning up after the restore into {target}."]
    if aside and os.path.lexists(aside):
        if os.path.lexists(target):
            remove_path(target)
        os.rename(aside, target)
        fsync_dir(target.parent)
        done.append(f"Put the original data back at {target}.")
    elif (
        record["phase"] == "swapping"
        and not os.path.lexists(staging)
        and os.path.lexists(target)
        and record.get("before") in (None, "empty")
    ):
        # Staging was renamed into place: take it out again, as the run did not succeed.
        remove_path(target)
        if record.get("before") == "empty":
            os.mkdir(target)
        done.append(f"Removed the unfinished restore at {target}.")
    remove_path(staging)
    done.append(f"Removed the staging folder {staging}.")
    return done


def _roll_back_paths(record: dict) -> list[str]:
    target = Path(record["target"])
    staging, aside = Path(record["staging"]), Path(record["aside"])
    done = []
    if record["phase"] == "swapping":
        for item in reversed(record["items"]):
            live = target / item["path"]
            moved = aside / item["path"]
            if os.path.lexists(moved):
                if os.path.lexists(live):
                    remove_path(live)
                os.rename(moved, live)
                done.append(f"Put the original {shown(item['path'])} back in {target}.")
            elif not item["existed"] and os.path.lexists(live) and item.get("moved_in"):
                remove_path(live)
        for created in reversed(record.get("created", [])):
            with contextlib.suppress(OSError):
                os.rmdir(target / created)
    remove_path(staging)
    remove_path(aside)
    done.append(f"Removed the staging data of the restore into {target}.")
    return done


def _roll_back_file(record: dict) -> list[str]:
    remove_path(Path(record["staging"]))
    target = Path(record["target"])
    if (
        record["phase"] == "swapping"
        and record.get("before") is None
        and record.get("moved_in")
        and target.exists()
    ):
        remove_path(target)
        return [f"Removed the unfinished restore at {target}."]
    return [f"Removed the staging data of the restore into {target}."]


def _roll_back_sqlite(record: dict) -> list[str]:
    target, aside = Path(record["target"]), Path(record["aside"])
    done = []
    if record["phase"] == "copying" and aside.exists():
        # The copy into the live file is one SQLite transaction, so the file is either the
        # original or the restored database; copying the saved original back covers both.
        sqlite_copy(aside, target, timeout=60.0)
        done.append(f"Put the original database back into {target}.")
    remove_path(aside)
    remove_path(Path(record["staging"]))
    done.append(f"Removed the staging data of the restore into {target}.")
    return done

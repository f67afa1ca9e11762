"""Put a target back as it was, after a failed restore or a crash, from the restore's journal.

Journals are read from the workers' private state folder only (see journal). A journal is
used only when it is bound to its file name (run and token) and records exactly the paths
its target and token give; anything else is refused and left alone for a person to look
at, since a journal decides which folders are moved and deleted.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from ..atomic import TMP_SUFFIX, fsync_dir
from ..errors import StateFolderError
from ..hooks import Hooks
from ..safety import shown
from .files import remove_path
from .journal import BESIDE, INSIDE, JOURNAL_NAME, Journal, journal_paths, state_folder
from .sqlite_files import sqlite_copy

KINDS = ("tree", "paths", "file", "sqlite")
PHASES = ("staging", "swapping", "copying", "done")
BEFORE = (None, "dir", "empty", "file")


class JournalRefused(Exception):
    """A journal that cannot be trusted to say what to undo."""


@contextlib.contextmanager
def undone_on_failure(journal: Journal) -> Iterator[None]:
    """Put the target back as `journal` describes it, and drop the journal, if the block fails."""
    try:
        yield
    except BaseException:
        roll_back(journal.record)
        journal.close()
        raise


def recover_interrupted(
    state_dir: Path | None,
    *,
    run: str | None = None,
    target: Path | None = None,
    hooks: Hooks | None = None,
) -> list[str]:
    """Undo the restores a crash interrupted, from their journals in `state_dir`.

    `run` limits this to that run's journals (the reaper ending that run), `target` to
    restores into that target (a new restore first puts its target back together).
    Journals of restores that are still running (their lock is held) are left alone, and so
    are journals that do not check out. Return what was done, as lines for a log.
    """
    done: list[str] = []
    if state_dir is not None:
        try:
            folder = state_folder(state_dir)
            names = sorted(entry.name for entry in os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            names = []
        except StateFolderError as error:
            done.append(f"Did not read the restore journals: {error}")
            names = []
        for name in names:
            match = JOURNAL_NAME.match(name)
            if match and (run is None or match["run"] == run):
                done.extend(_recover(folder / name, target))
    if hooks is not None:
        for line in done:
            hooks.log(line)
    return done


def _recover(journal: Path, target: Path | None) -> list[str]:
    lock_path = journal.with_suffix(".lock")
    try:
        lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as error:
        return [f"Could not lock the restore journal {journal} ({error}); left it alone."]
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return []  # its restore is still running
        try:
            text = _read_no_follow(journal)
        except FileNotFoundError:
            # Its restore ended between the listing and the lock; the lock may be ours.
            with contextlib.suppress(FileNotFoundError):
                lock_path.unlink()
            return []
        try:
            record = checked_record(journal.name, text)
        except JournalRefused as error:
            return [f"Refused the restore journal {journal}: {error}. It was left alone."]
        if target is not None and record["target"] != os.fspath(target):
            return []
        try:
            done = roll_back(record)
        except (OSError, sqlite3.Error) as error:
            return [
                f"Could not undo the interrupted restore into {record['target']} ({error}); "
                f"its journal {journal} stays for the next attempt."
            ]
        for path in (journal, journal.with_name(journal.name + TMP_SUFFIX), lock_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        fsync_dir(journal.parent)
        return done
    finally:
        os.close(lock_fd)


def _read_no_follow(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as handle:
        return handle.read(1 << 24)


def _is_relative_path(value) -> bool:
    return (
        isinstance(value, str)
        and value not in ("", ".", "..")
        and not value.startswith(("/", "../"))
        and os.path.normpath(value) == value
    )


def checked_record(name: str, text: bytes) -> dict:
    """Return the record of the journal file `name`, or raise JournalRefused.

    The record must name the run and token its file name carries, a known kind and phase,
    an absolute target, and exactly the staging and set-aside paths derived from its
    target and token; paths restored one by one must stay below the target.
    """
    match = JOURNAL_NAME.match(name)
    if match is None:
        raise JournalRefused("its name is not a journal's")
    try:
        record = json.loads(text)
    except ValueError:
        raise JournalRefused("it is not readable JSON") from None
    if not isinstance(record, dict):
        raise JournalRefused("it is not a journal")
    if record.get("run") != match["run"] or record.get("token") != match["token"]:
        raise JournalRefused("the run or token it records is not the one its name carries")
    kind, layout, target = record.get("kind"), record.get("layout"), record.get("target")
    if kind not in KINDS or record.get("phase") not in PHASES:
        raise JournalRefused(f"its kind {kind!r} or phase {record.get('phase')!r} is unknown")
    if layout not in (BESIDE, INSIDE) or (layout == INSIDE and kind != "paths"):
        raise JournalRefused(f"its layout {layout!r} does not fit a restore of kind {kind!r}")
    if record.get("before") not in BEFORE:
        raise JournalRefused(f"what it says was there before ({record.get('before')!r}) is unknown")
    if (
        not isinstance(target, str)
        or not os.path.isabs(target)
        or os.fspath(Path(target)) != target
        or target == "/"
    ):
        raise JournalRefused(f"its target {target!r} is not an absolute path to a file or folder")
    staging, aside = journal_paths(Path(target), record["token"], layout)
    if record.get("staging") != os.fspath(staging) or record.get("aside") != os.fspath(aside):
        raise JournalRefused(
            "the staging and set-aside paths it records are not the ones its target and token give"
        )
    if kind == "paths":
        items, created = record.get("items"), record.get("created")
        if not isinstance(items, list) or not isinstance(created, list):
            raise JournalRefused("its list of restored paths is missing")
        for item in items:
            if not isinstance(item, dict) or not _is_relative_path(item.get("path")):
                raise JournalRefused("a path it lists is not a plain path below the target")
        if not all(_is_relative_path(path) for path in created):
            raise JournalRefused("a folder it lists is not a plain path below the target")
    return record


def roll_back(record: dict) -> list[str]:
    """Put a target back as it was before the restore that `record` describes."""
    kind = record["kind"]
    target = Path(record["target"])
    staging, aside = journal_paths(target, record["token"], record["layout"])
    if kind == "tree":
        return _roll_back_tree(record, target, staging, aside)
    if kind == "paths":
        return _roll_back_paths(record, target, staging, aside)
    if kind == "file":
        return _roll_back_file(record, target, staging)
    if kind == "sqlite":
        return _roll_back_sqlite(record, target, staging, aside)
    return [f"Left a restore journal of unknown kind {kind!r} alone."]


def _roll_back_tree(record: dict, target: Path, staging: Path, aside: Path) -> list[str]:
    # Only a restore over an existing folder moved anything aside.
    moved_aside = record.get("before") == "dir"
    done = []
    if record["phase"] == "done":
        if moved_aside:
            remove_path(aside)
        remove_path(staging)
        return [f"Finished cleaning up after the restore into {target}."]
    if moved_aside and os.path.lexists(aside):
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


def _roll_back_paths(record: dict, target: Path, staging: Path, aside: Path) -> list[str]:
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
            elif not item.get("existed") and os.path.lexists(live) and item.get("moved_in"):
                remove_path(live)
        for created in reversed(record["created"]):
            with contextlib.suppress(OSError):
                os.rmdir(target / created)
    remove_path(staging)
    remove_path(aside)
    done.append(f"Removed the staging data of the restore into {target}.")
    return done


def _roll_back_file(record: dict, target: Path, staging: Path) -> list[str]:
    remove_path(staging)
    if (
        record["phase"] == "swapping"
        and record.get("before") is None
        and record.get("moved_in")
        and target.exists()
    ):
        remove_path(target)
        return [f"Removed the unfinished restore at {target}."]
    return [f"Removed the staging data of the restore into {target}."]


def _roll_back_sqlite(record: dict, target: Path, staging: Path, aside: Path) -> list[str]:
    done = []
    if record["phase"] == "copying" and aside.exists():
        # The copy into the live file is one SQLite transaction, so the file is either the
        # original or the restored database; copying the saved original back covers both.
        sqlite_copy(aside, target, timeout=60.0)
        done.append(f"Put the original database back into {target}.")
    remove_path(aside)
    remove_path(staging)
    done.append(f"Removed the staging data of the restore into {target}.")
    return done

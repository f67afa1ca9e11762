"""Restore over live data path by path: a partial restore in place, or onto a mount point."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from ..safety import Selection, shown
from .files import open_dir, remove_path
from .job import RestoreJob
from .journal import BESIDE, INSIDE, Journal, journal_paths
from .recovery import undone_on_failure
from .request import check_space
from .staging import prepare_staging, sync_filesystem


def restore_paths(job: RestoreJob, target: Path, selection: Selection, helpers, *, mount: bool):
    """Restore some paths (or, on a mount point, every top-level entry) over live data.

    Each selected path is staged, then the live one is moved aside and the staged one moved
    in, path by path; staging and the set-aside data live inside the target when it is a
    mount point, since a rename cannot cross filesystems.
    """
    layout = INSIDE if mount else BESIDE
    staging, aside = journal_paths(target, job.token, layout)
    check_space(staging.parent, job.manifest.total_bytes)
    live_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if not selection.everything:
            for path in selection.paths:
                parent = os.path.dirname(path)
                # Fail before any work when a parent in the live tree is a symlink.
                with contextlib.suppress(FileNotFoundError):
                    os.close(open_dir(live_fd, parent))
        journal = job.journal(kind="paths", target=target, layout=layout, items=[], created=[])
        with undone_on_failure(journal):
            prepare_staging(staging, target)
            job.extract(staging, selection, helpers)
            sync_filesystem(staging)
            job.tick()
            if selection.everything:
                names = set(os.listdir(staging)) | set(os.listdir(target))
                names -= {staging.name, aside.name}
                if mount and "lost+found" not in os.listdir(staging):
                    names.discard("lost+found")  # the filesystem's own, not the data's
                paths = sorted(names)
            else:
                paths = list(selection.paths)
            job.publish(
                lambda: _swap_paths(
                    job, journal, target, paths, live_fd, replace=selection.everything
                )
            )
        if selection.everything:
            _copy_root_attributes(staging, target)
        remove_path(aside)
        remove_path(staging)
        journal.close()
    finally:
        os.close(live_fd)


def _swap_paths(
    job: RestoreJob,
    journal: Journal,
    target: Path,
    paths: list[str],
    live_fd: int,
    *,
    replace: bool,
) -> None:
    """Move each live path aside and its staged copy in; `replace` also drops live paths
    the archive does not hold (a full restore), where a partial one leaves them."""
    staging, aside = journal.staging, journal.aside
    os.mkdir(aside, 0o700)
    stage_fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    aside_fd = os.open(aside, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    items = [
        {"path": path, "existed": os.path.lexists(target / path), "moved_in": False}
        for path in paths
    ]
    created: list[str] = []
    journal.write(phase="swapping", items=items, created=created)
    try:
        for item in items:
            path = item["path"]
            parent, name = os.path.split(path)
            try:
                source_fd = open_dir(stage_fd, parent)
            except FileNotFoundError:
                source_fd = None
            if source_fd is None or not _lexists_at(name, source_fd):
                if source_fd is not None:
                    os.close(source_fd)
                if replace and item["existed"]:
                    # Not in the backup: set aside with the rest of the old data.
                    item["moved_in"] = True
                    journal.write(items=items)
                    os.rename(target / path, aside / path)
                else:
                    job.warn(
                        f"Left {shown(path)} as it is: the archive held nothing safe to put there."
                    )
                continue
            try:

                def record_created(relative: str) -> None:
                    created.append(relative)
                    journal.write(created=created)

                live_parent = open_dir(live_fd, parent, create=record_created)
                try:
                    if item["existed"]:
                        keep_fd = open_dir(aside_fd, parent, create=lambda _: None)
                        try:
                            os.rename(name, name, src_dir_fd=live_parent, dst_dir_fd=keep_fd)
                        finally:
                            os.close(keep_fd)
                    item["moved_in"] = True
                    journal.write(items=items)
                    os.rename(name, name, src_dir_fd=source_fd, dst_dir_fd=live_parent)
                    os.fsync(live_parent)
                finally:
                    os.close(live_parent)
            finally:
                os.close(source_fd)
        job.hooks.log(f"Moved the restored paths into place in {target}.")
        journal.write(phase="done")
    finally:
        os.close(stage_fd)
        os.close(aside_fd)


def _lexists_at(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _copy_root_attributes(source: Path, target: Path) -> None:
    info = os.stat(source)
    with contextlib.suppress(OSError):
        os.chmod(target, stat.S_IMODE(info.st_mode))
        if os.geteuid() == 0:
            os.chown(target, info.st_uid, info.st_gid)
        os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))

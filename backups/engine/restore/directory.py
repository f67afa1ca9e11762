"""Restore a folder: into a staging folder renamed into place, or path by path in place."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

from ..atomic import fsync_dir
from ..errors import TargetError
from ..safety import Selection
from .files import remove_path
from .hardlink_helpers import hardlink_helpers
from .job import RestoreJob
from .paths_in_place import restore_paths
from .recovery import undone_on_failure
from .request import check_space, check_target, selection_for
from .staging import prepare_staging, sync_filesystem


def restore_directory(job: RestoreJob) -> str:
    """Restore into a local folder; return the folder's real path."""
    request = job.request
    check_target(request, job.manifest)
    target = Path(os.path.realpath(request.target))
    job.recover(target)
    selection = selection_for(request, job.manifest)
    helpers = hardlink_helpers(job.manifest, selection)
    if not target.parent.exists():
        target.parent.mkdir(parents=True)
    existed = target.is_dir()
    mount = existed and request.in_place and os.path.ismount(target)
    if existed and request.in_place and (mount or not selection.everything):
        restore_paths(job, target, selection, helpers, mount=mount)
    else:
        _restore_tree(job, target, selection, helpers)
    return str(target)


def _restore_tree(job: RestoreJob, target: Path, selection: Selection, helpers) -> None:
    """Extract into a staging folder next to `target`, then rename it into place."""
    check_space(target.parent, job.manifest.total_bytes)
    swap_staging(job, target, lambda staging: job.extract(staging, selection, helpers))


def swap_staging(job: RestoreJob, target: Path, fill: Callable[[Path], object]) -> None:
    """Have `fill` write a staging folder next to `target`, then rename it into place."""
    request = job.request
    before = None
    if target.is_dir():
        before = "dir" if request.in_place else "empty"
    journal = job.journal(kind="tree", target=target, before=before)
    staging = journal.staging
    aside = journal.aside if before == "dir" else None
    with undone_on_failure(journal):
        prepare_staging(staging, target if before else None)
        fill(staging)
        sync_filesystem(staging)
        job.tick()

        def swap() -> None:
            journal.write(phase="swapping")
            if aside is not None:
                os.rename(target, aside)
                job.hooks.log(f"Moved the current data aside to {aside}.")
            os.rename(staging, target)
            job.hooks.log(f"Moved the restored data into place at {target}.")
            fsync_dir(target.parent)
            journal.write(phase="done")

        try:
            job.publish(swap)
        except OSError as error:
            if error.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise TargetError(
                    f"The folder {target} stopped being empty during the restore; nothing "
                    "was changed. Restore into a new folder."
                ) from None
            raise
    if aside is not None:
        remove_path(aside)
    journal.close()

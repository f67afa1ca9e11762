"""The journal of a restore, kept in the workers' private state folder (see recovery).

A journal records what a running restore has moved where, so that a crash can be undone.
It lives in a folder only the workers may write (`state_folder`), named after its run and
token, never beside or inside the target: restored data is anybody's upload, and a file in
it must never steer a recovery. Recovery trusts a journal for its target only: the staging
and set-aside paths are derived from the target and the token (`journal_paths`), and a
journal that records other paths, or that is not bound to its own name, is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import stat
from pathlib import Path

from ..atomic import fsync_dir, write_atomic
from ..errors import StateFolderError
from .staging import hidden_path

# `restore-<run>.<token>.journal`: the run that wrote it, and the token of its hidden paths.
JOURNAL_NAME = re.compile(
    r"^restore-(?P<run>[0-9A-Za-z_-]{1,64})\.(?P<token>[0-9a-f]{12})\.journal$"
)
RUN_LABEL = re.compile(r"^[0-9A-Za-z_-]{1,64}$")
TOKEN = re.compile(r"^[0-9a-f]{12}$")

# Where a restore stages: beside the target (a rename swaps them), or inside a target
# that is a mount point (a rename cannot leave its filesystem).
BESIDE = "beside"
INSIDE = "inside"


def state_folder(path: Path, *, create: bool = False) -> Path:
    """Return `path` once it is safe to keep journals in; create it (mode 0700) if asked.

    Raise StateFolderError when the folder is not a folder, belongs to another user or
    may be written by other users: whoever can write a journal can make a recovery move
    and delete files. Raise FileNotFoundError when it is missing and not to be created.
    """
    path = Path(path)
    if create:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.stat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise StateFolderError(
            f"The state folder {path} is not a folder; set STATE_DIR to a folder only the "
            "workers' user may write."
        )
    if info.st_uid != os.geteuid():
        raise StateFolderError(
            f"The state folder {path} belongs to uid {info.st_uid}, not to this worker's "
            f"user (uid {os.geteuid()}); restores keep their journals there. Give it to the "
            "workers' user with chown, or set STATE_DIR to a folder of theirs."
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise StateFolderError(
            f"The state folder {path} may be written by other users (mode "
            f"{stat.S_IMODE(info.st_mode):o}); restores keep their journals there. Make it "
            f"private with `chmod 700 {path}`."
        )
    return path


def journal_paths(target: Path, token: str, layout: str = BESIDE) -> tuple[Path, Path]:
    """Return the staging and set-aside paths of a restore into `target` with `token`."""
    home, stem = (target, "") if layout == INSIDE else (target.parent, target.name)
    return (
        hidden_path(home, stem, "restore", token),
        hidden_path(home, stem, "before-restore", token),
    )


class Journal:
    """A record of what a running restore has moved where, in the private state folder.

    The journal is rewritten atomically at each step; a lock file held for the run's
    lifetime tells `recover_interrupted` whether the run is still alive (an flock dies
    with its process, even on SIGKILL). Without a state folder the record is kept in
    memory only: a failure in this process is still undone, a crash is not.
    """

    def __init__(
        self,
        folder: Path | None,
        run: str,
        token: str,
        *,
        kind: str,
        target: Path,
        layout: str = BESIDE,
        **details,
    ) -> None:
        """Start the journal of run `run`'s restore of `kind` (see recovery.roll_back)."""
        if not RUN_LABEL.match(run) or not TOKEN.match(token):
            raise ValueError(f"Unusable run label {run!r} or token {token!r} for a journal.")
        self.staging, self.aside = journal_paths(target, token, layout)
        self.record = {
            "run": run,
            "token": token,
            "kind": kind,
            "phase": "staging",
            "target": os.fspath(target),
            "layout": layout,
            "staging": os.fspath(self.staging),
            "aside": os.fspath(self.aside),
            **details,
            "pid": os.getpid(),
        }
        self.path: Path | None = None
        self._lock_fd: int | None = None
        if folder is not None:
            self.path = state_folder(folder, create=True) / f"restore-{run}.{token}.journal"
            self._lock_fd = os.open(
                self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
            )
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self.write()

    @property
    def lock_path(self) -> Path | None:
        """The lock file held while the restore runs."""
        return None if self.path is None else self.path.with_suffix(".lock")

    def write(self, **changes) -> None:
        """Record `changes`, replacing the journal on disk in one step."""
        self.record.update(changes)
        if self.path is not None:
            write_atomic(self.path, json.dumps(self.record, indent=1).encode())

    def close(self) -> None:
        """Remove the journal and its lock: the restore needs no undoing any more."""
        if self.path is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.lock_path)
        os.close(self._lock_fd)
        with contextlib.suppress(OSError):
            fsync_dir(self.path.parent)

"""The journal a restore keeps next to its target, so a crash can be undone (see recovery)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from pathlib import Path

from ..atomic import fsync_dir, write_atomic
from .staging import hidden_path

# The journals `Journal` writes, as `recover_interrupted` finds them.
JOURNAL_NAME = re.compile(r"^\.(.*\.)?restore-[0-9a-f]+\.journal$")


class Journal:
    """A record, next to the target, of what a running restore has moved where.

    The journal is rewritten atomically at each step; a lock file held for the run's
    lifetime tells `recover_interrupted` whether the run is still alive (an flock dies
    with its process, even on SIGKILL).
    """

    def __init__(
        self,
        home: Path,
        stem: str,
        token: str,
        *,
        kind: str,
        target: Path,
        staging: Path,
        **details,
    ) -> None:
        """Start the journal of a restore of `kind` (see recovery.roll_back), in `home`."""
        name = hidden_path(home, stem, "restore", token).name + ".journal"
        self.path = home / name
        self.lock_path = self.path.with_suffix(".lock")
        self.record = {
            "kind": kind,
            "phase": "staging",
            "target": os.fspath(target),
            "staging": os.fspath(staging),
            **details,
            "pid": os.getpid(),
        }
        self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self.write()

    def write(self, **changes) -> None:
        """Record `changes`, replacing the journal on disk in one step."""
        self.record.update(changes)
        write_atomic(self.path, json.dumps(self.record, indent=1).encode())

    def close(self) -> None:
        """Remove the journal and its lock: the restore needs no undoing any more."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.lock_path)
        os.close(self._lock_fd)
        with contextlib.suppress(OSError):
            fsync_dir(self.path.parent)

"""Progress reports of a restore, throttled."""

from __future__ import annotations

import time

from ..hooks import Hooks, Progress

_PROGRESS_EVERY = 0.1


class ProgressMeter:
    """Report progress through the hooks, at most every tenth of a second."""

    def __init__(
        self, hooks: Hooks, *, bytes_total: int | None, files_total: int | None, current: str
    ) -> None:
        self.hooks = hooks
        self.progress = Progress(bytes_total=bytes_total, files_total=files_total, current=current)
        self._due = 0.0

    def update(self, bytes_done: int | None = None, *, force: bool = False) -> None:
        """Record the bytes done and report, unless a report went out very recently."""
        if bytes_done is not None:
            self.progress.bytes_done = bytes_done
        now = time.monotonic()
        if force or now >= self._due:
            self._due = now + _PROGRESS_EVERY
            self.hooks.progress(self.progress)

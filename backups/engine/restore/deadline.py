"""The timeout of a restore, enforced even on a restore blocked writing to a child."""

from __future__ import annotations

import subprocess
import threading

from ..errors import Cancelled
from ..processes import kill_group


class Deadline:
    """End a restore that runs past `timeout_s`, even one stuck writing to a child process.

    A timer thread kills the registered child processes, which unblocks a write to their
    stdin; the main thread then raises Cancelled at its next check.
    """

    def __init__(self, timeout_s: float | None) -> None:
        self.timeout_s = timeout_s
        self.outcome = "the target was rolled back."
        self.expired = False
        self._children: list[subprocess.Popen] = []
        self._lock = threading.Lock()
        self._timer = None
        if timeout_s is not None:
            self._timer = threading.Timer(max(0.0, timeout_s), self._expire)
            self._timer.daemon = True
            self._timer.start()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for child in self._children:
                kill_group(child)

    def watch(self, child: subprocess.Popen) -> None:
        """Kill `child` (and what it started) when the time is up."""
        with self._lock:
            self._children.append(child)
            if self.expired:
                kill_group(child)

    def check(self) -> None:
        """Raise Cancelled once the time is up."""
        if self.expired:
            raise Cancelled(self.message())

    def message(self) -> str:
        """Return what a user is told about a timed-out restore."""
        return f"The restore timed out after {self.timeout_s:g} s and was stopped; {self.outcome}"

    def stop(self) -> None:
        """Cancel the timer: the restore ended."""
        if self._timer is not None:
            self._timer.cancel()

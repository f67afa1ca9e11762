"""How the engine talks back to whoever runs it: progress, cancellation, publishing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Progress:
    """A snapshot of a run's progress; totals are None while unknown."""

    bytes_done: int = 0
    bytes_total: int | None = None
    files_done: int = 0
    files_total: int | None = None
    current: str = ""


class Hooks:
    """Callbacks the engine calls while it works. The defaults do nothing.

    `progress` is called often (per chunk or file); implementations rate-limit themselves.
    `check` raises `errors.Cancelled` when the run must stop; the engine calls it between
    chunks and files, so a cancel takes effect within a fraction of a second.
    `publish(action)` runs `action` (the final rename, a swap, a load) only if the run is
    still owned by this process and not cancelled; a fenced implementation raises
    `errors.FencedError` (or `Cancelled`) instead. It holds no lock while `action` runs:
    `action` calls `check` only where stopping part-way is safe, and a cancel elsewhere
    comes too late and lets the step finish.
    `warn` records a non-fatal problem (a file that changed while read, a skipped FIFO).
    `log` records a line for the run's log.
    """

    def progress(self, progress: Progress) -> None:
        """Receive a progress snapshot."""

    def check(self) -> None:
        """Raise errors.Cancelled when the run must stop."""

    def publish(self, action: Callable[[], None]) -> None:
        """Run the commit action; override to fence it against lost ownership."""
        action()

    def warn(self, message: str) -> None:
        """Record a warning."""

    def log(self, message: str) -> None:
        """Record a log line."""


class RecordingHooks(Hooks):
    """Hooks that keep what they are told; handy for tests and the CLI."""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.lines: list[str] = []
        self.last: Progress | None = None

    def progress(self, progress: Progress) -> None:
        self.last = progress

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def log(self, message: str) -> None:
        self.lines.append(message)

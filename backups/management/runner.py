"""What the run commands (backup, restore, verify) share: queue, follow or run inline."""

from __future__ import annotations

import signal
import sys
import threading
import time

from backups.cli import EXIT_FAILED, EXIT_OK, CliCommand, failed_error
from backups.models import Run
from backups.services.execution import run_execute
from backups.services.formats import format_bytes, format_duration
from backups.services.reporting import run_to_dict

POLL_S = 0.5


def add_mode_arguments(parser) -> None:
    """Add `--wait | --inline` and `--json`."""
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--wait", action="store_true", help="queue, then follow until it ends")
    mode.add_argument("--inline", action="store_true", help="run in this process (no worker)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


class ProgressLine:
    """A one-line progress display, redrawn at most a few times a second, only on a TTY."""

    def __init__(self, stream, label: str) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.label = label
        self.last = 0.0
        self.latest = (0, None, 0, None)
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def show(self, bytes_done, bytes_total, files_done, files_total, force=False) -> None:
        self.latest = (bytes_done, bytes_total, files_done, files_total)
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.25 and not force):
            return
        with self._lock:
            self._render(now, bytes_done, bytes_total, files_done, files_total)

    def refresh(self) -> None:
        """Redraw the latest numbers (keeps rate and ETA fresh while one file is read)."""
        self.show(*self.latest, force=True)

    def _render(self, now, bytes_done, bytes_total, files_done, files_total) -> None:
        self.last = now
        elapsed = max(now - self.started, 1e-6)
        rate = bytes_done / elapsed
        parts = [self.label]
        if bytes_total:
            parts.append(f"{min(100, 100 * bytes_done // max(bytes_total, 1)):3d}%")
            parts.append(f"{format_bytes(bytes_done)} / {format_bytes(bytes_total)}")
        else:
            parts.append(format_bytes(bytes_done))
        parts.append(f"{format_bytes(rate)}/s")
        files = f"{files_done:,}" + (f"/{files_total:,}" if files_total else "")
        parts.append(f"{files} files")
        if bytes_total and rate > 0 and bytes_done < bytes_total:
            parts.append(f"ETA {format_duration(int((bytes_total - bytes_done) / rate) + 1)}")
        self.stream.write("\r\033[K" + "  ".join(parts))
        self.stream.flush()

    def from_progress(self, progress) -> None:
        """Show an engine progress snapshot (what `run_execute`'s `on_progress` is given)."""
        self.show(
            progress.bytes_done, progress.bytes_total, progress.files_done, progress.files_total
        )

    def from_run(self, run: Run) -> None:
        self.show(run.bytes_done, run.bytes_total, run.files_done, run.files_total)

    def done(self) -> None:
        if self.enabled and self.last:
            self.stream.write("\r\033[K")
            self.stream.flush()


def run_inline(run: Run, display: ProgressLine) -> Run:
    """Execute `run` in this process; Ctrl-C and SIGTERM cancel it cleanly."""
    interrupt = threading.Event()

    def on_signal(signum, frame):
        interrupt.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    ticker_stop = threading.Event()

    def tick() -> None:
        # The line appears within a second and keeps moving even while the engine is in
        # a long step that reports nothing (a SQLite snapshot, one huge file).
        while not ticker_stop.wait(0.5):
            display.refresh()

    if display.enabled:
        threading.Thread(target=tick, daemon=True).start()
    try:
        return run_execute(
            run.pk, interrupt=interrupt, on_progress=display.from_progress, inline=True
        )
    finally:
        ticker_stop.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        display.done()


def follow(run: Run, display: ProgressLine) -> Run:
    """Poll the run until it ends, showing its progress; Ctrl-C stops following only."""
    try:
        while True:
            run.refresh_from_db()
            if run.status not in Run.ACTIVE:
                return run
            display.from_run(run)
            display.refresh()
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        display.done()
        sys.stderr.write(
            f"Stopped following; run #{run.pk} goes on in the workers "
            f"(`manage.py runs {run.pk}` shows it).\n"
        )
        sys.exit(130)
    finally:
        display.done()


def execute_and_report(command: CliCommand, run: Run, options: dict) -> None:
    """Queue, follow or run `run` per the options, print the outcome, exit with its code."""
    label = f"{run.kind} #{run.pk} {run.source.name}"
    display = ProgressLine(sys.stderr, label)
    display.enabled = display.enabled and not options["json"]
    if options["inline"]:
        run = run_inline(run, display)
        if run.status in Run.ACTIVE:
            if options["json"]:
                command.print_json(run_to_dict(run))
            raise failed_error(
                f"{run.kind} #{run.pk} ended, but the database refused to record its end "
                "(the log above says why); it shows as running until the next backup of "
                f"{run.source.name} or housekeeping declares it abandoned."
            )
    elif options["wait"]:
        run = follow(run, display)
    else:
        if options["json"]:
            command.print_json(run_to_dict(run))
        else:
            # The id alone on stdout, so `RUN=$(manage.py backup web)` works in scripts.
            command.stdout.write(str(run.pk))
            command.stderr.write(f"Queued {run.kind} run #{run.pk} of {run.source.name}.")
        return
    report(command, run, options["json"])
    if run.status not in Run.GOOD:
        sys.exit(EXIT_FAILED)
    sys.exit(EXIT_OK)


def report(command: CliCommand, run: Run, as_json: bool) -> None:
    """Print a finished run: JSON, or a short summary a person reads."""
    if as_json:
        command.print_json(run_to_dict(run))
        return
    duration = format_duration(run.duration_s) if run.duration_s is not None else "?"
    line = f"{run.kind} #{run.pk} of {run.source.name}: {run.status} in {duration}"
    if run.kind == Run.Kind.BACKUP and run.archive:
        line += (
            f"; {run.payload_files or 0:,} files, {format_bytes(run.payload_bytes)} -> "
            f"{format_bytes(run.size)}\n  archive {run.archive}\n  sha256  {run.sha256}"
        )
    command.stdout.write(line)
    if run.kind == Run.Kind.BACKUP and run.verified is not None:
        command.stdout.write(f"  verified: {'ok' if run.verified else 'FAILED'}")
    for warning in run.warnings[:20]:
        command.stdout.write(f"  warning: {warning}")
    if len(run.warnings) > 20:
        command.stdout.write(f"  … and {len(run.warnings) - 20} more warnings")
    for check in run.checks:
        verdict = "ok" if check.get("ok") else "FAILED"
        command.stdout.write(f"  {check.get('name')}: {verdict} {check.get('detail', '')}")
    if run.error:
        command.stderr.write(f"error: {run.error}")

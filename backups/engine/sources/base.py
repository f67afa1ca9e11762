"""What every source driver shares: the driver interface, its output, commands, excludes.

A driver writes its uncompressed payload (a tar stream, or a pg_dump) to an `Output`,
which compresses, hashes and stores it, and records one manifest entry per member. Drivers
that run a command go through `Command`, which streams the command's stdout without
blocking cancellation and never leaves the command running.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import fnmatch
import os
import re
import select
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from ..errors import SourceError
from ..hooks import Hooks, Progress
from ..locations import check_location
from ..manifest import DIR, FILE, HARDLINK, SYMLINK, Entry, EntrySpool, clamp_mtime
from ..tarstream import Member, normalise


def checked(kind: str, location: str) -> None:
    """Validate a source location as the catalog does, failing with a SourceError."""
    try:
        check_location(kind, location)
    except ValueError as error:
        raise SourceError(str(error)) from None


CHUNK = 1 << 20
# How long a read may wait before the run checks for a cancel: a stalled source (a hung
# pod, a locked database) must not make a cancel wait for it.
CHECK_INTERVAL_MS = 200
# Excluded paths listed in a plan; the rest are only counted.
PLAN_LIST_LIMIT = 100
# Warnings kept per run; a tree of a million unreadable files must not flood the run log.
WARNING_LIMIT = 1000


@dataclass
class Plan:
    """What a backup would read: totals, exclusions, skipped special files. Writes nothing."""

    kind: str
    location: str
    files: int = 0
    bytes: int = 0
    excluded: list[str] = field(default_factory=list)
    excluded_count: int = 0
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Output:
    """Where a driver puts its payload: bytes to compress, entries, progress and warnings."""

    def __init__(self, writer: BinaryIO, spool: EntrySpool, hooks: Hooks) -> None:
        self.write = writer.write
        self.spool = spool
        self.hooks = hooks
        self.warnings: list[str] = []
        self.suppressed = 0
        self.progress = Progress()
        self._last_progress = 0.0
        # A delta backup's paths gone since its base; None for a full.
        self.deleted: list[str] | None = None

    def add(self, entry: Entry) -> None:
        """Record one manifest entry."""
        self.spool.add(entry)

    def warn(self, message: str) -> None:
        """Record a non-fatal problem; past WARNING_LIMIT they are only counted."""
        if len(self.warnings) >= WARNING_LIMIT:
            self.suppressed += 1
            return
        self.warnings.append(message)
        self.hooks.warn(message)

    def finish_warnings(self) -> None:
        """Add one warning that says how many were not listed, if any."""
        if self.suppressed:
            message = f"{self.suppressed} more warnings were not listed"
            self.warnings.append(message)
            self.hooks.warn(message)
            self.suppressed = 0

    def totals(self, *, files: int | None, bytes: int | None) -> None:
        """Tell progress how much there is to do, once it is known."""
        self.progress.files_total = files
        self.progress.bytes_total = bytes

    def advance(self, *, bytes_done: int, files_done: int, current: str = "") -> None:
        """Report progress; called per chunk, forwarded at most ten times a second."""
        progress = self.progress
        progress.bytes_done = bytes_done
        progress.files_done = files_done
        if current:
            progress.current = current
        now = time.monotonic()
        if now - self._last_progress >= 0.1:
            self._last_progress = now
            self.hooks.progress(progress)

    def flush_progress(self) -> None:
        """Send the final progress snapshot."""
        self.hooks.progress(self.progress)


class SourceDriver:
    """Reads one source's data. `payload` names the archive's inner format ("tar" or "pgdump").

    (The catalog's `models.Source` is what is backed up; a driver is how it is read.)
    """

    payload = "tar"

    def stream(self, out: Output) -> None:
        """Write the payload to `out` and record its entries; raise SourceError on failure."""
        raise NotImplementedError

    def plan(self) -> Plan:
        """Return what a backup would read, writing nothing."""
        raise NotImplementedError

    def cleanup(self) -> None:
        """Remove anything the driver created outside the archive (snapshots)."""


class Excludes:
    """Exclude globs, matched (fnmatch, case-sensitive) on the relative path and the name."""

    def __init__(self, patterns: Iterable[str]) -> None:
        cleaned = [p.strip().rstrip("/") for p in patterns if p and p.strip().rstrip("/")]
        self.patterns = cleaned
        self._match = (
            re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in cleaned)).match
            if cleaned
            else None
        )

    def __bool__(self) -> bool:
        return self._match is not None

    def __call__(self, path: str, name: str) -> bool:
        """Return True when `path` (relative) or its last component `name` is excluded."""
        match = self._match
        return match is not None and (match(path) is not None or match(name) is not None)


def entry_for(member: Member) -> Entry | None:
    """Return the manifest entry of a tar member; None for the root and special files."""
    path = member.path
    if path == "." or member.type not in (FILE, DIR, SYMLINK, HARDLINK):
        return None
    target = member.target
    if member.type == HARDLINK and target is not None:
        target = normalise(target)
    return Entry(
        path=path,
        type=member.type,
        size=member.size,
        mode=member.mode,
        mtime=clamp_mtime(member.mtime),
        sha256=member.sha256,
        target=target,
    )


def command_env() -> dict[str, str]:
    """Return the environment for source commands: C locale, no injected tar options."""
    env = {k: v for k, v in os.environ.items() if k not in ("TAR_OPTIONS", "POSIXLY_CORRECT")}
    env["LC_ALL"] = "C"
    return env


class Feed(Protocol):
    """The input a command reads while `Command.pump` reads its output."""

    def more(self) -> bool:
        """Make some more input; return False once no more will come."""

    def low(self) -> bool:
        """Return whether little input is left to write (make more even with output waiting)."""

    def pending(self) -> memoryview:
        """Return the input made and not written yet (empty when there is none now)."""

    def sent(self, count: int) -> None:
        """Record that the first `count` bytes of `pending()` were written."""


class Command:
    """A source command whose stdout is streamed; stderr is kept in a temp file.

    Use as a context manager: leaving it kills the command if it is still running, so a
    cancel, an error or a Ctrl-C never leaves a tar or pg_dump behind. The command runs in
    its own session: a Ctrl-C at the terminal reaches us, and we decide what it stops.
    """

    def __init__(self, argv: Sequence[str], *, what: str, stdin: bool | BinaryIO = False) -> None:
        self.argv = list(argv)
        self.what = what
        self._stderr = tempfile.TemporaryFile(prefix="backup-stderr-")  # noqa: SIM115
        if stdin is True:
            stdin = subprocess.PIPE
        elif stdin is False:
            stdin = subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                env=command_env(),
                start_new_session=True,
            )
        except FileNotFoundError:
            self._stderr.close()
            raise SourceError(
                f"{self.argv[0]} was not found on this worker's PATH; install it to back up {what}."
            ) from None
        except OSError as error:
            self._stderr.close()
            raise SourceError(f"Cannot run {self.argv[0]} for {what}: {error}") from None
        with contextlib.suppress(OSError):
            # A bigger pipe means fewer, larger reads; refused above the system limit.
            fcntl.fcntl(self.proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, CHUNK)

    def __enter__(self) -> Command:
        return self

    def __exit__(self, *exc_info) -> None:
        self.kill()
        self._stderr.close()

    def kill(self) -> None:
        """Stop the command if it still runs and reap it; never raises."""
        proc = self.proc
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                proc.kill()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

    def pump(
        self,
        consume: Callable[[memoryview], None],
        check: Callable[[], None],
        feed: Feed | None = None,
    ) -> None:
        """Feed the command's stdout to `consume` in chunks until it closes.

        `check` runs between chunks and whenever a read has waited CHECK_INTERVAL_MS, so a
        cancel stops a stalled command too. With `feed` (the command made with
        stdin=True), the command's input is made and written in the same loop: the
        output is read first, so the command never waits on a full stdout; `feed.more()`
        runs when there is no output to read (or the input not yet written runs low), and
        stdin is closed once everything is written and `more` has said it is done.
        """
        fd = self.proc.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLPRI)
        view = memoryview(bytearray(CHUNK))
        readv = os.readv
        wait = poller.poll
        if feed is not None:
            stdin = self.proc.stdin.fileno()
            os.set_blocking(stdin, False)
            poller.register(stdin, select.POLLOUT)
        making = feed is not None
        while True:
            events = wait(0 if making else CHECK_INTERVAL_MS)
            if not events and not making:
                check()
                continue
            output = writable = False
            for ready, _ in events:
                if ready == fd:
                    output = True
                else:
                    writable = True
            if output:
                count = readv(fd, [view])
                if not count:
                    if feed is not None:
                        self._end_input(poller)
                    return
                consume(view[:count])
            if feed is not None:
                if making and (not output or feed.low()):
                    making = feed.more()
                if writable:
                    pending = feed.pending()
                    try:
                        if pending:
                            feed.sent(os.write(stdin, pending))
                    except BlockingIOError:
                        pass
                    except BrokenPipeError:
                        # The command stopped reading its input: its status says why.
                        making, feed = False, None
                        self._end_input(poller)
                    else:
                        if not pending and not making:
                            feed = None
                            self._end_input(poller)
            check()

    def _end_input(self, poller: select.poll) -> None:
        """Close the command's stdin (the end of its input) and stop polling it."""
        stdin = self.proc.stdin
        with contextlib.suppress(OSError, ValueError):
            poller.unregister(stdin.fileno())
        with contextlib.suppress(OSError):
            stdin.close()

    def wait(self, check: Callable[[], None]) -> int:
        """Wait for the command to exit (checking for a cancel meanwhile); return its status."""
        self.proc.stdout.close()
        while True:
            try:
                return self.proc.wait(timeout=CHECK_INTERVAL_MS / 1000)
            except subprocess.TimeoutExpired:
                check()

    def stderr_lines(self, limit: int = 20) -> list[str]:
        """Return the last `limit` lines the command wrote to stderr."""
        return list(collections.deque(self.iter_stderr(), maxlen=limit))

    def iter_stderr(self) -> Iterator[str]:
        """Yield every line the command wrote to stderr, decoded leniently."""
        self._stderr.seek(0)
        for raw in self._stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line.strip():
                yield line

    def failure(self, status: int) -> SourceError:
        """Build the error for a failed command, quoting the end of its own message."""
        if status < 0:
            how = f"was killed by signal {-status}"
        else:
            how = f"failed with exit status {status}"
        message = "\n".join(self.stderr_lines()) or "(no message)"
        return SourceError(f"{self.argv[0]} {how} while backing up {self.what}: {message}")

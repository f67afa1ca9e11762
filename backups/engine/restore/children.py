"""Child processes a restore feeds: started in a session of their own, killed as a group.

`ProcessSink` feeds a child's stdin (tar, or kubectl exec) from a writer thread of its own.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import queue
import subprocess
import tempfile
import threading
from collections.abc import Callable

from ..errors import EngineError, NoSpaceError
from ..processes import kill_group
from .deadline import Deadline

# As big as a chunk of the archive read at once (see reader.CHUNK).
PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def widen_pipe(fd: int) -> None:
    """Grow a pipe to PIPE_SIZE where the system allows it (a failure only costs speed)."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)


def wait_ticking(child: subprocess.Popen, tick: Callable[[], None]) -> int:
    """Wait for `child` to exit, running `tick` (cancellation, timeouts) meanwhile."""
    while True:
        try:
            return child.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            tick()


class ProcessSink:
    """Feed a child process's stdin with what the scanner forwards.

    Writes happen in a thread of their own (a blocking pipe write releases the GIL), so the
    caller parses the next chunk while the child takes in the previous one.
    """

    def __init__(
        self, argv: list[str], *, what: str, deadline: Deadline, env: dict | None = None
    ) -> None:
        self.argv = argv
        self.what = what
        self.sent = 0
        self._pending: list = []
        self._output = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the child
        try:
            # A process group of its own: a kill reaches whatever it started too, which
            # could otherwise hold the pipe open and block the writer forever.
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=self._output,
                stderr=self._output,
                env=env,
                start_new_session=True,
            )
        except FileNotFoundError:
            self._output.close()
            raise EngineError(
                f"{argv[0]} is not installed or not on PATH; it is needed to {what}."
            ) from None
        self._fd = self.proc.stdin.fileno()
        # A larger pipe lets the child work on one chunk while the next is written.
        widen_pipe(self._fd)
        deadline.watch(self.proc)
        self._broken = False
        self._error: EngineError | None = None
        self._batches: queue.Queue = queue.Queue(4)
        self._writer = threading.Thread(target=self._write_batches, daemon=True)
        self._writer.start()

    def __call__(self, data) -> None:
        self._pending.append(data)

    def operation(self, action: Callable[[], None]) -> None:
        """Queue `action` to run in the writer thread, in order with the bytes around it."""
        self._pending.append(action)

    def flush(self) -> None:
        """Hand what was queued since the last flush to the writer thread."""
        if self._error is not None:
            raise self._error
        if self._broken:
            self._stopped_early()
        if self._pending:
            batch, self._pending = self._pending, []
            self._batches.put(batch)

    def _write_batches(self) -> None:
        while True:
            batch = self._batches.get()
            if batch is None:
                return
            if self._broken:
                continue  # keep emptying the queue so the caller never blocks
            buffers: list = []
            for item in batch:
                if not callable(item):
                    buffers.append(item)
                    continue
                if buffers:
                    self._send(buffers)
                    buffers = []
                try:
                    item()
                except Exception as error:  # handed to the caller's thread, which raises it
                    self._error = _write_error(error)
                    self._broken = True
                    break
            if buffers and not self._broken:
                self._send(buffers)

    def _send(self, buffers: list) -> None:
        data = buffers[0] if len(buffers) == 1 else b"".join(buffers)
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
                self.sent += written
        except OSError:
            # The child stopped reading: normal after the end-of-archive blocks, a failure
            # otherwise; the caller tells which from the exit status.
            self._broken = True

    def _stopped_early(self) -> None:
        self._close_stdin()
        if self.proc.wait() != 0:
            raise self.failure()

    def _end_writer(self) -> None:
        if self._writer.is_alive():
            self._batches.put(None)
            self._writer.join()

    def _close_stdin(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            self.proc.stdin = None

    def finish(self, tick: Callable[[], None]) -> None:
        """Send the rest, close stdin and wait for the child; raise when it failed."""
        self.flush()
        self._end_writer()
        if self._error is not None:
            raise self._error
        self._close_stdin()
        if wait_ticking(self.proc, tick) != 0:
            raise self.failure()

    def output(self) -> str:
        """Return the end of what the child wrote to stdout and stderr."""
        self._output.seek(0, os.SEEK_END)
        size = self._output.tell()
        self._output.seek(max(0, size - 4000))
        return self._output.read().decode("utf-8", "replace").strip()

    def failure(self) -> EngineError:
        """Build the error for a child that failed, with its own words."""
        text = self.output() or "(no message)"
        code = self.proc.returncode
        if "No space left on device" in text:
            return NoSpaceError(f"{self.what} ran out of space: {text}")
        return EngineError(f"{self.what} failed (exit status {code}): {text}")

    def kill(self) -> None:
        """Stop the child and the writer now; never raises."""
        self._pending.clear()
        self._broken = True
        kill_group(self.proc)
        # The kill unblocks a pending write; the writer then drains and ends.
        self._end_writer()
        self._close_stdin()
        with contextlib.suppress(OSError):
            self.proc.wait()
        self._output.close()

    def close(self) -> None:
        """Release the child's resources after it finished."""
        self._output.close()


def _write_error(error: Exception) -> EngineError:
    if isinstance(error, EngineError):
        return error
    if isinstance(error, OSError):
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            return NoSpaceError(f"No space left while writing {error.filename or 'the restore'}.")
        return EngineError(
            f"Writing the restored files failed: {error.strerror} ({error.filename})."
        )
    return EngineError(f"Writing the restored files failed: {error!r}.")

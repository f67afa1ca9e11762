"""Restore an archive: verify while reading, stage beside the target, then swap.

Nothing is published before the whole archive has been read and every check has passed:
the archive's sha256 against the manifest and the `.sha256` checksum file, each member's
type, size and sha256 against the manifest, and the safety policy (`safety.MemberPolicy`)
on each member's headers.

The archive is decompressed and parsed once (`tarstream.TarScanner`). The members the
policy and the `--path` selection keep are forwarded, as tar bytes, to GNU tar running in
its own process (so it writes files on a second core), and nothing else is: tar never sees
a hostile member. `_Splitter` reads the forwarded bytes a second time, as tar will, to
check that tar sees exactly the approved members, and takes big files out of the stream to
write them directly, which saves a pipe and a process hop per byte.

A directory is extracted into a staging folder next to the target (same filesystem), then
renamed into place; in place, the current data is first renamed aside and removed only
after success. A journal in the same folder records each step, so `recover_interrupted`
puts the original back after a crash at any point.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import fcntl
import functools
import grp
import gzip
import hashlib
import io
import json
import os
import pwd
import queue
import re
import secrets
import shutil
import signal
import sqlite3
import stat
import subprocess
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import zstandard

from . import compression
from .atomic import format_bytes, free_bytes, fsync_dir, write_atomic
from .errors import (
    ArchiveError,
    Cancelled,
    EngineError,
    NoSpaceError,
    TargetError,
    UnsafeArchiveError,
)
from .hooks import Hooks, Progress
from .locations import (
    DIRECTORY,
    KINDS,
    KUBERNETES,
    POSTGRES,
    SQLITE,
    PodPath,
    check_postgres_uri,
    parse_pod_path,
)
from .manifest import Manifest, load_manifest, read_sidecar
from .safety import (
    ROOT,
    MemberPolicy,
    Selection,
    clean_path,
    normalise_request_path,
    shown,
)
from .tarstream import Member, TarScanner, normalise

CHUNK = 1 << 20
# Files at least this big are written directly rather than through tar (see _Splitter).
_DIRECT_MIN = 1 << 20
# Where decompression runs (see ArchiveReader, reading_mode).
INLINE, THREAD, PROCESS = "inline", "thread", "process"
_THREAD_MIN_AVERAGE = 256 << 10
# Tar headers, PAX records (times, names, a few xattrs), padding to 512 bytes, per member;
# global headers and the end-of-archive record padded to tar's 10 KiB record, overall.
_OVERHEAD_PER_ENTRY = 8 * 512
_OVERHEAD_FIXED = 4 << 20
_PROGRESS_EVERY = 0.1
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_JOURNAL_NAME = re.compile(r"^\.(.*\.)?restore-[0-9a-f]+\.journal$")


@dataclass
class RestoreRequest:
    """What to restore and where.

    `target` has the form of the source's location: a folder, a database file, a pod path
    `NAMESPACE/POD[/CONTAINER]:/ABS/PATH` or a libpq URI. `paths` restricts a restore to
    those paths (relative to the source root) and what is below them.
    """

    archive: Path
    manifest: Path
    kind: str
    target: str
    in_place: bool = False
    paths: Sequence[str] = ()
    timeout_s: float | None = None


@dataclass
class RestoreResult:
    """What a restore wrote, what it skipped and what it checked."""

    files: int
    bytes: int
    warnings: list[str]
    target: str
    duration_s: float
    checks: list[dict]


def sidecar_path(archive: Path) -> Path:
    """Return the `.sha256` checksum file that belongs to `archive`."""
    archive = Path(archive)
    return archive.with_name(archive.name + ".sha256")


# -- reading an archive -----------------------------------------------------------------


class _HashingReader(io.RawIOBase):
    """Pass reads through to a file, hashing and counting every byte."""

    def __init__(self, raw) -> None:
        self._raw = raw
        self.sha = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self._raw.readinto(buffer)
        if count:
            self.sha.update(memoryview(buffer)[:count])
            self.count += count
        return count

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        if data:
            self.sha.update(data)
            self.count += len(data)
        return data


class ArchiveReader:
    """Read an archive once: yield its payload decompressed while hashing the stored bytes.

    `limit` caps the decompressed bytes, which stops a decompression bomb or an archive
    that is larger than its manifest says. `tick` runs before every chunk, in the caller's
    thread (cancellation, timeouts).

    `mode` says where decompression runs (see `reading_mode`): "inline", in the caller's
    thread; "thread", in a thread of its own a few chunks ahead (the zstandard module
    holds the GIL while it decompresses, but hashing releases it, so the hashing on either
    side overlaps the other's work); "process", in the `zstd` program, fed by a thread
    that reads and hashes the stored bytes, so decompression runs on another core while
    the caller parses (falls back to "inline" without the program, or for gzip).
    """

    def __init__(
        self,
        archive: Path,
        *,
        limit: int | None = None,
        tick: Callable[[], None] | None = None,
        mode: str = INLINE,
    ) -> None:
        self.archive = Path(archive)
        self.compression = compression.compression_of(self.archive.name)
        self.limit = limit
        self.payload_bytes = 0
        self._tick = tick
        self._zstd = None
        if mode == PROCESS:
            self._zstd = shutil.which("zstd") if self.compression == compression.ZSTD else None
            mode = PROCESS if self._zstd else INLINE
        self._mode = mode
        self._child: subprocess.Popen | None = None
        self._feeder: threading.Thread | None = None
        self._feed_error: OSError | None = None
        self._producer: threading.Thread | None = None
        self._stop = threading.Event()
        self._queue: queue.Queue | None = None
        try:
            self._file = open(self.archive, "rb", buffering=0)  # noqa: SIM115 - closed in close()
        except FileNotFoundError:
            raise ArchiveError(f"The archive {self.archive} is missing.") from None
        except OSError as error:
            raise ArchiveError(
                f"The archive {self.archive} cannot be read: {error.strerror}."
            ) from None
        self._hashing = _HashingReader(self._file)

    @property
    def raw_bytes(self) -> int:
        """Return the stored bytes read so far."""
        return self._hashing.count

    def _decompressed(self) -> Iterator[bytes]:
        reader = compression.decompressor(self.compression, self._hashing)
        while True:
            try:
                data = reader.read(CHUNK)
            except (zstandard.ZstdError, EOFError, zlib.error, gzip.BadGzipFile) as error:
                raise ArchiveError(
                    f"The archive {self.archive.name} cannot be decompressed "
                    f"({self.compression}): {error}."
                ) from None
            except OSError as error:
                raise ArchiveError(
                    f"Reading the archive {self.archive} failed: {error.strerror or error}."
                ) from None
            if not data:
                return
            self.payload_bytes += len(data)
            if self.limit is not None and self.payload_bytes > self.limit:
                raise UnsafeArchiveError(self._too_big())
            yield data

    def chunks(self) -> Iterator[bytes]:
        """Yield the decompressed payload in chunks of up to 1 MiB."""
        if self._mode == PROCESS:
            source = self._external()
        elif self._mode == THREAD:
            source = self._read_ahead()
        else:
            source = self._decompressed()
        for data in source:
            if self._tick is not None:
                self._tick()
            yield data

    def _too_big(self) -> str:
        return (
            f"The archive {self.archive.name} holds more than the {format_bytes(self.limit)} "
            "its manifest accounts for; it was stopped there (a decompression bomb or an "
            "archive that does not match its manifest)."
        )

    def _external(self) -> Iterator[bytes]:
        errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
        try:
            self._child = subprocess.Popen(
                [self._zstd, "-d", "-q", "-c"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                start_new_session=True,
            )
            for pipe in (self._child.stdin, self._child.stdout):
                with contextlib.suppress(OSError):
                    fcntl.fcntl(pipe.fileno(), _F_SETPIPE_SZ, CHUNK)
            self._feeder = threading.Thread(target=self._feed, daemon=True)
            self._feeder.start()
            out = io.FileIO(self._child.stdout.fileno(), closefd=False)
            while True:
                # Whole chunks, though zstd writes 128 KiB at a time: fewer steps below.
                data = bytearray(CHUNK)
                view = memoryview(data)
                size = 0
                while size < CHUNK:
                    got = out.readinto(view[size:])
                    if not got:
                        break
                    size += got
                if not size:
                    break
                self.payload_bytes += size
                if self.limit is not None and self.payload_bytes > self.limit:
                    raise UnsafeArchiveError(self._too_big())
                yield data if size == CHUNK else view[:size]
            if self._child.wait() != 0:
                errors.seek(0)
                text = errors.read().decode("utf-8", "replace").strip() or "no message"
                raise ArchiveError(
                    f"The archive {self.archive.name} cannot be decompressed (zstd): {text}."
                )
        finally:
            errors.close()

    def _feed(self) -> None:
        """Hash the stored bytes and hand them to zstd; keep hashing if zstd stops."""
        target = self._child.stdin.fileno()
        sending = True
        try:
            while not self._stop.is_set():
                data = self._hashing.read(CHUNK)
                if not data:
                    break
                view = memoryview(data)
                while sending and view:
                    try:
                        view = view[os.write(target, view) :]
                    except OSError:
                        sending = False
        except OSError as error:
            self._feed_error = error
        finally:
            with contextlib.suppress(OSError):
                self._child.stdin.close()

    def _end_external(self, *, stop: bool) -> None:
        """Stop zstd; wait for the feeder (which hashes to the end unless `stop`)."""
        if self._child is None:
            return
        if stop:
            self._stop.set()
        _kill_group(self._child)
        self._child.wait()
        with contextlib.suppress(OSError):
            self._child.stdout.close()
        if self._feeder is not None:
            self._feeder.join()
        self._child = None

    def _read_ahead(self) -> Iterator[bytes]:
        self._queue = queue.Queue(4)
        self._producer = threading.Thread(target=self._produce, daemon=True)
        self._producer.start()
        while True:
            kind, value = self._queue.get()
            if kind == "data":
                yield value
            elif kind == "end":
                return
            else:
                raise value

    def _produce(self) -> None:
        try:
            for data in self._decompressed():
                if not self._put(("data", data)):
                    return
            self._put(("end", None))
        except BaseException as error:  # handed to the consumer, which raises it
            self._put(("error", error))

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _halt(self) -> None:
        """Stop the read-ahead thread; the file is then the caller's alone again."""
        if self._producer is None:
            return
        self._stop.set()
        while self._producer.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.05)
        self._producer.join()
        self._producer = None

    def finish(self) -> str:
        """Read whatever is left of the stored file and return its sha256 (hex)."""
        self._halt()
        self._end_external(stop=False)
        if self._feed_error is not None:
            raise ArchiveError(
                f"Reading the archive {self.archive} failed: "
                f"{self._feed_error.strerror or self._feed_error}."
            )
        while True:
            if self._tick is not None:
                self._tick()
            try:
                data = self._hashing.read(CHUNK)
            except OSError as error:
                raise ArchiveError(
                    f"Reading the archive {self.archive} failed: {error.strerror or error}."
                ) from None
            if not data:
                break
        return self._hashing.sha.hexdigest()

    def close(self) -> None:
        """Stop reading ahead and close the archive file."""
        self._halt()
        self._end_external(stop=True)
        self._file.close()


def expected_sha256(archive: Path, manifest: Manifest) -> str:
    """Return the archive's recorded sha256 once the manifest and checksum file agree."""
    recorded = str(manifest.archive_sha256).lower()
    side = read_sidecar(sidecar_path(archive))
    if side != recorded:
        raise ArchiveError(
            f"The checksum file of {Path(archive).name} says {side} but its manifest says "
            f"{recorded}: one of them was altered. Restore from another backup, or verify "
            "the archive to find out which one is right."
        )
    return recorded


def payload_limit(manifest: Manifest) -> int:
    """Return the most decompressed bytes an honest archive with this manifest can hold."""
    overhead = _OVERHEAD_FIXED
    for entry in manifest.entries:
        overhead += _OVERHEAD_PER_ENTRY + 2 * (len(entry.path) + len(entry.target or ""))
    return manifest.total_bytes + overhead


def scan_archive(
    reader: ArchiveReader,
    scanner: TarScanner,
    *,
    expected: str | None,
    after_chunk: Callable[[], None] | None = None,
    check_end: bool = True,
) -> str:
    """Feed a whole archive through `scanner`; return the archive's sha256.

    When reading fails on damage (an ArchiveError, from decompression, the tar parser or a
    manifest check) the rest of the file is still hashed, so the message says whether the
    archive itself differs from its recorded checksum, which is the likelier cause.
    """
    try:
        for chunk in reader.chunks():
            scanner.feed(chunk)
            if after_chunk is not None:
                after_chunk()
        if check_end:
            scanner.close()
    except ArchiveError as error:
        digest = reader.finish()
        if expected is not None and digest != expected:
            raise ArchiveError(
                f"The archive {reader.archive.name} is damaged: its sha256 is {digest}, "
                f"not the {expected} recorded at backup time ({error})"
            ) from error
        raise
    digest = reader.finish()
    if expected is not None and digest != expected:
        raise ArchiveError(
            f"The archive {reader.archive.name} is damaged: its sha256 is {digest}, not the "
            f"{expected} recorded in its manifest and checksum file."
        )
    return digest


def member_key(name: str) -> str:
    """Return the path a member or manifest entry is matched by ("" for the root)."""
    path = clean_path(name)
    return normalise(name) if path is None else path


class ContentCheck:
    """Compare archive members with the manifest: presence, type, size, link, sha256."""

    def __init__(self, manifest: Manifest, wanted: Callable[[str], bool] | None = None) -> None:
        self.entries = {}
        for entry in manifest.entries:
            self.entries.setdefault(member_key(entry.path), entry)
        self.wanted = wanted
        self.seen: set[str] = set()

    def header(self, key: str, member: Member) -> str | None:
        """Check a member's headers; return a problem, or None."""
        self.seen.add(key)
        entry = self.entries.get(key)
        if entry is None:
            if key == ROOT and member.type == "dir":
                return None
            return f"{shown(member.raw_name)} is in the archive but not in the manifest"
        if entry.type != member.type:
            return (
                f"{shown(key)} is a {member.type} in the archive but a {entry.type} in the manifest"
            )
        if member.type == "file" and entry.size != member.size:
            return (
                f"{shown(key)} holds {member.size} bytes in the archive but {entry.size} in "
                "the manifest"
            )
        if member.type == "symlink" and (entry.target or "") != (member.target or ""):
            return (
                f"the symlink {shown(key)} points to {shown(member.target or '')} in the "
                f"archive but to {shown(entry.target or '')} in the manifest"
            )
        if member.type == "hardlink" and member_key(entry.target or "") != member_key(
            member.target or ""
        ):
            return (
                f"the hardlink {shown(key)} has another target in the archive than in the manifest"
            )
        return None

    def data(self, key: str, member: Member) -> str | None:
        """Check a file's sha256 once its data has passed; return a problem, or None."""
        entry = self.entries.get(key)
        if member.type != "file" or entry is None or not entry.sha256:
            return None
        if entry.sha256.lower() != member.sha256:
            return f"{shown(key)} does not match its sha256 in the manifest"
        return None

    def missing(self, skip: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Return the manifest paths (wanted, not skipped) that no member matched."""
        return [
            key
            for key in self.entries
            if key not in self.seen
            and key != ROOT
            and key not in skip
            and (self.wanted is None or self.wanted(key))
        ]


def listed(items: Sequence[str], limit: int = 5) -> str:
    """Name the first few items of a list and count the rest."""
    names = ", ".join(shown(item) for item in items[:limit])
    if len(items) > limit:
        names += f" and {len(items) - limit} more"
    return names


# -- progress, cancellation, timeout ------------------------------------------------------


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


def _kill_group(child: subprocess.Popen) -> None:
    """Kill a child started in its own session, with everything it started; never raises."""
    if child.poll() is not None:
        return
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except OSError:
        with contextlib.suppress(OSError):
            child.kill()


class _Deadline:
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
                _kill_group(child)

    def watch(self, child: subprocess.Popen) -> None:
        with self._lock:
            self._children.append(child)
            if self.expired:
                _kill_group(child)

    def check(self) -> None:
        if self.expired:
            raise Cancelled(self.message())

    def message(self) -> str:
        return f"The restore timed out after {self.timeout_s:g} s and was stopped; {self.outcome}"

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


# -- feeding a child process ----------------------------------------------------------------


class _ProcessSink:
    """Feed a child process's stdin with what the scanner forwards.

    Writes happen in a thread of their own (a blocking pipe write releases the GIL), so the
    caller parses the next chunk while the child takes in the previous one.
    """

    def __init__(
        self, argv: list[str], *, what: str, deadline: _Deadline, env: dict | None = None
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
        with contextlib.suppress(OSError):
            fcntl.fcntl(self._fd, _F_SETPIPE_SZ, CHUNK)
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
        while True:
            try:
                code = self.proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                tick()
        if code != 0:
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
        _kill_group(self.proc)
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


@functools.lru_cache(maxsize=256)
def _owner_id(name: str, number: int, *, group: bool) -> int:
    """Map an owner the way tar does: by name when this system knows it, else by number."""
    if name:
        with contextlib.suppress(KeyError):
            return grp.getgrnam(name).gr_gid if group else pwd.getpwnam(name).pw_uid
    return number


class _DirectFile:
    """A big file written into staging by the writer thread, in stream order."""

    def __init__(self, root_fd: int, path: str, member: Member) -> None:
        self.root_fd = root_fd
        self.path = path
        self.member = member
        self.fd: int | None = None

    def open(self) -> None:
        parent, name = os.path.split(self.path)
        # Parents tar has not made yet are made here; tar finds them and sets their modes
        # and times at its end, as for any folder.
        parent_fd = _open_dir(self.root_fd, parent, create=_ignore)
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            self.fd = os.open(name, flags, 0o600, dir_fd=parent_fd)
        except OSError as error:
            error.filename = self.path
            raise
        finally:
            os.close(parent_fd)

    def write(self, data) -> Callable[[], None]:
        def action() -> None:
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self.fd, view) :]
            except OSError as error:
                error.filename = self.path
                raise

        return action

    def close(self) -> None:
        member, fd = self.member, self.fd
        self.fd = None
        try:
            if os.geteuid() == 0:
                uid = _owner_id(member.uname, member.uid, group=False)
                os.fchown(fd, uid, _owner_id(member.gname, member.gid, group=True))
            os.fchmod(fd, member.mode)  # after chown, which clears set-id bits
            when = member.mtime
            ns = when * 1_000_000_000 if isinstance(when, int) else round(when * 1e9)
            os.utime(fd, ns=(ns, ns))
        finally:
            os.close(fd)

    def abandon(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


def _ignore(_relative: str) -> None:
    return None


_EXTENDED = frozenset(b"xgLK")
_ZERO_BLOCK = bytes(512)


def _block_name(block) -> str:
    return bytes(block[:100]).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _size_field(block) -> int:
    """Read a header's size field as tar does; refuse what tars could read differently."""
    field = bytes(block[124:136])
    if field[0] & 0x80:
        return int.from_bytes(field[1:], "big") if field[0] == 0x80 else -1
    try:
        return int(field.rstrip(b"\0 ") or b"0", 8)
    except ValueError:
        raise UnsafeArchiveError(
            f"The tar header of {shown(_block_name(block))} has a size field tar may read "
            "differently."
        ) from None


def _pax_size(data: bytes) -> int | None:
    """Return the `size` record of a PAX extended header, if it has one."""
    if b" size=" not in data:
        return None
    size = None
    pos = 0
    while pos < len(data) and data[pos]:
        space = data.find(b" ", pos)
        length = int(data[pos:space]) if space > pos and data[pos:space].isdigit() else 0
        if length <= 0:
            raise UnsafeArchiveError("A PAX header that tar may read differently was refused.")
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        if key == b"size":
            size = int(value) if value.isdigit() else -1
        pos += length
    return size


_HDR, _EXT, _PASS, _DIRECT, _END = range(5)


class _Splitter:
    """Re-read the filtered stream the way tar will, and write big files directly.

    The scanner decided which members tar may see; this second reading checks that tar
    will see exactly those, with the data lengths the scanner assumed (a symlink or
    folder whose size field is not zero, which some tars read as data, is refused), so no
    header can hide in bytes the scanner took for data. Files of `direct_min` bytes or
    more are taken out of the stream and written here, by the sink's writer thread in
    stream order: one copy into the page cache instead of a pipe, a process hop and a
    write by tar. Everything else goes on to tar.
    """

    def __init__(self, out: _ProcessSink, *, root: Path | None, direct_min: int | None) -> None:
        self.out = out
        self.direct_min = direct_min if root is not None else None
        self.approved: collections.deque = collections.deque()
        self._root_fd = (
            os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW) if root else None
        )
        self._state = _HDR
        self._seq = bytearray()  # the headers of the member being read, not yet sent
        self._left = 0
        self._pad = 0
        self._ext: bytearray | None = None
        self._ext_flag = b""
        self._ext_size = 0
        self._pax_size: int | None = None
        self._file: _DirectFile | None = None
        self.direct_files: list[_DirectFile] = []

    def approve(self, member: Member, path: str) -> None:
        """Record that `member` (at `path`) may be written; called in stream order."""
        self.approved.append((member, path))

    def __call__(self, data) -> None:
        view = memoryview(data)
        size = len(view)
        pos = start = 0
        out = self.out
        while pos < size:
            state = self._state
            if state == _PASS:
                take = min(size - pos, self._left)
                pos += take
                self._left -= take
                if not self._left:
                    self._state = _HDR
            elif state == _HDR and not self._seq and size - pos >= 512:
                # The common case, a whole header in this piece: it stays in the run of bytes
                # passed on as they are, unless its file is written directly.
                block = view[pos : pos + 512]
                if block[156] in _EXTENDED or (block[0] == 0 and block == _ZERO_BLOCK):
                    self._sequence(view, pos, start)
                    pos += 512
                    start = pos
                    continue
                if self._member(block):
                    if pos > start:
                        out(view[start:pos])
                    start = pos + 512
                pos += 512
            elif state == _DIRECT:
                if pos > start:
                    out(view[start:pos])
                take = min(size - pos, self._left)
                if take:
                    out.operation(self._file.write(view[pos : pos + take]))
                    self._left -= take
                    pos += take
                skip = min(size - pos, self._pad) if not self._left else 0
                pos += skip
                self._pad -= skip
                start = pos
                if not self._left and not self._pad:
                    out.operation(self._file.close)
                    self._file = None
                    self._state = _HDR
            elif state == _END:
                pos = size
            else:
                if pos > start:
                    out(view[start:pos])
                need = (512 - len(self._seq) % 512) if state == _HDR else self._left
                take = min(size - pos, need)
                piece = view[pos : pos + take]
                self._seq += piece
                if state == _EXT:
                    if self._ext is not None:
                        self._ext += piece
                    self._left -= take
                pos += take
                start = pos
                if state == _EXT and not self._left:
                    self._ext_done()
                elif state == _HDR and not len(self._seq) % 512:
                    self._header(bytes(self._seq[-512:]))
        # Whatever is left since `start` is data tar gets as it is.
        if pos > start:
            out(view[start:pos])

    def _sequence(self, view: memoryview, pos: int, start: int) -> None:
        """Start holding headers back (at an extended or end-of-archive header)."""
        if pos > start:
            self.out(view[start:pos])
        self._seq += view[pos : pos + 512]
        self._header(bytes(self._seq[-512:]))

    def _header(self, block: bytes) -> None:
        """Handle a header block that ends the held sequence `_seq`."""
        out = self.out
        if block == _ZERO_BLOCK:
            out(bytes(self._seq))
            self._seq = bytearray()
            self._state = _END
            return
        if block[156] in _EXTENDED:
            size = _size_field(block)
            if size < 0 or size > (16 << 20):
                raise UnsafeArchiveError(f"An extended tar header of {size} bytes was refused.")
            self._ext_flag = block[156:157]
            self._ext = bytearray() if block[156] in b"xg" else None
            self._left = size + (-size % 512)
            self._ext_size = size
            self._state = _EXT if self._left else _HDR
            return
        seq, self._seq = self._seq, bytearray()
        if not self._member(block):
            out(bytes(seq))

    def _member(self, block) -> bool:
        """Match a member header with the next approved member; return True if direct."""
        try:
            member, path = self.approved.popleft()
        except IndexError:
            raise UnsafeArchiveError(
                f"The archive holds a member ({shown(_block_name(block))}) that tar would read "
                "but its checks did not see; the restore was stopped."
            ) from None
        if self._pax_size is not None:
            size = self._pax_size
            self._pax_size = None
        else:
            size = _size_field(block)
        expected = member.size if member.type == "file" else 0
        if size != expected:
            raise UnsafeArchiveError(
                f"The archive member {shown(member.raw_name)} has a size field ({size}) that "
                f"tar would read differently from the checks ({expected}); the restore was "
                "stopped."
            )
        if self.direct_min is not None and member.type == "file" and size >= self.direct_min:
            direct = _DirectFile(self._root_fd, path, member)
            self.direct_files.append(direct)
            self.out.operation(direct.open)
            self._file = direct
            self._left, self._pad = size, -size % 512
            self._state = _DIRECT
            return True
        self._left = size + (-size % 512)
        self._state = _PASS if self._left else _HDR
        return False

    def _ext_done(self) -> None:
        self._state = _HDR
        if self._ext is None:
            return
        data = bytes(self._ext[: self._ext_size])
        self._ext = None
        size = _pax_size(data)
        if size is None:
            return
        if self._ext_flag == b"g" or size < 0:
            raise UnsafeArchiveError("A PAX header that sets sizes for tar was refused.")
        self._pax_size = size

    def finish(self) -> None:
        """Check the stream ended where the scanner said it did."""
        if self._state != _END or self.approved:
            raise UnsafeArchiveError(
                "The archive ends differently for tar than for its checks; the restore was stopped."
            )

    def close(self) -> None:
        """Release the staging folder and any file left open by a failure."""
        for direct in self.direct_files:
            direct.abandon()
        if self._root_fd is not None:
            os.close(self._root_fd)
            self._root_fd = None


def _tar_env() -> dict:
    # Names pass through byte for byte: tar converts PAX names to the locale's charset.
    return dict(os.environ, LC_ALL="C.UTF-8")


def tar_extract_argv(dest: Path) -> list[str]:
    """Return the GNU tar command that extracts stdin into `dest` faithfully."""
    # --delay-directory-restore: folder modes and mtimes are set after their contents
    # (read-only folders, mtimes not bumped by later members); -p: modes exactly as stored.
    return ["tar", "-x", "-p", "--delay-directory-restore", "-f", "-", "-C", os.fspath(dest)]


# -- the filter between the archive and the writer -------------------------------------------


class _Filter:
    """Decide each member (safety, selection, manifest) and check each file's sha256."""

    def __init__(
        self,
        *,
        archive_name: str,
        manifest: Manifest,
        selection: Selection,
        helpers: frozenset[str] = frozenset(),
        meter: ProgressMeter | None = None,
    ) -> None:
        self.archive_name = archive_name
        self.approve: Callable[[Member, str], None] | None = None
        self.policy = MemberPolicy()
        self.selection = selection
        self.helpers = helpers
        self.check = ContentCheck(
            manifest,
            wanted=None if selection.everything else selection.includes,
        )
        self.meter = meter
        self.skipped: set[str] = set()
        self.files = 0
        self.bytes = 0
        self._last: tuple[Member | None, str] = (None, "")

    def decide(self, member: Member) -> bool:
        path = self.policy.review(member)
        self._last = (member, path)
        if path is None:
            self.skipped.add(member_key(member.raw_name))
            return False
        selection = self.selection
        if not selection.everything and not (
            selection.includes(path)
            or path in self.helpers
            or (member.type == "dir" and selection.is_ancestor(path))
        ):
            return False
        problem = self.check.header(path, member)
        if problem:
            raise ArchiveError(
                f"The archive {self.archive_name} does not match its manifest: {problem}."
            )
        if self.approve is not None:
            self.approve(member, path)
        return True

    def on_member(self, member: Member) -> None:
        if member.type != "file":
            return
        last, path = self._last
        if last is not member:
            path = clean_path(member.raw_name)
        problem = self.check.data(path, member)
        if problem:
            raise ArchiveError(
                f"The archive {self.archive_name} does not match its manifest: {problem}."
            )
        if path not in self.helpers or self.selection.includes(path):
            self.files += 1
            self.bytes += member.size
            if self.meter is not None:
                self.meter.progress.files_done = self.files

    def finish(self) -> None:
        """Fail when members the manifest lists never came."""
        missing = self.check.missing(self.skipped)
        if missing:
            raise ArchiveError(
                f"The archive {self.archive_name} lacks {len(missing)} of the entries its "
                f"manifest lists: {listed(missing)}."
            )

    def warnings(self) -> list[str]:
        return self.policy.warnings()


def reading_mode(manifest: Manifest) -> str:
    """Return where to decompress an archive with this manifest (see ArchiveReader).

    Many small files keep the caller's thread busy parsing, so decompression goes to the
    zstd program on another core (a thread would not help: zstandard holds the GIL). Big
    files leave the caller mostly hashing, which releases the GIL, so a thread overlaps
    well there, without pushing every byte through one more pipe.
    """
    files = max(1, manifest.total_files)
    return THREAD if manifest.total_bytes // files >= _THREAD_MIN_AVERAGE else PROCESS


def _stream_into(
    *,
    archive: Path,
    manifest: Manifest,
    expected: str,
    filter_: _Filter,
    sink: _ProcessSink | None,
    meter: ProgressMeter,
    tick: Callable[[], None],
    staging: Path | None = None,
) -> str:
    """Read, check and forward a whole archive; return its sha256.

    With `staging`, big files are written there directly and the rest goes to `sink`.
    """
    reader = ArchiveReader(
        archive, limit=payload_limit(manifest), tick=tick, mode=reading_mode(manifest)
    )
    splitter = None
    if sink is not None:
        splitter = _Splitter(sink, root=staging, direct_min=_DIRECT_MIN)
        filter_.approve = splitter.approve
    scanner = TarScanner(decide=filter_.decide, on_member=filter_.on_member, sink=splitter)

    def after_chunk() -> None:
        if sink is not None:
            sink.flush()
        meter.update(scanner.payload_bytes)

    try:
        try:
            digest = scan_archive(reader, scanner, expected=expected, after_chunk=after_chunk)
        finally:
            reader.close()
        filter_.finish()
        if sink is not None:
            splitter.finish()
            sink.finish(tick)
    finally:
        if splitter is not None:
            splitter.close()
    meter.update(scanner.payload_bytes, force=True)
    return digest


# -- journal and recovery -----------------------------------------------------------------


def _hidden(home: Path, stem: str, label: str, token: str) -> Path:
    """Return `home/.<stem>.<label>-<token>` (`home/.<label>-<token>` without a stem)."""
    # Stay well within NAME_MAX whatever the target's name.
    prefix = f".{stem[:100]}." if stem else "."
    return home / f"{prefix}{label}-{token}"


def _side_name(target: Path, label: str, token: str) -> Path:
    return _hidden(target.parent, target.name, label, token)


class _Journal:
    """A record, next to the target, of what a running restore has moved where.

    The journal is rewritten atomically at each step; a lock file held for the run's
    lifetime tells `recover_interrupted` whether the run is still alive (an flock dies
    with its process, even on SIGKILL).
    """

    def __init__(self, home: Path, stem: str, token: str, record: dict) -> None:
        self.path = _hidden(home, stem, "restore", token).with_name(
            _hidden(home, stem, "restore", token).name + ".journal"
        )
        self.lock_path = self.path.with_suffix(".lock")
        self.record = record
        self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self.write()

    def write(self, **changes) -> None:
        self.record.update(changes)
        write_atomic(self.path, json.dumps(self.record, indent=1).encode())

    def close(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.lock_path)
        os.close(self._lock_fd)
        with contextlib.suppress(OSError):
            fsync_dir(self.path.parent)


def recover_interrupted(folder: Path, *, hooks: Hooks | None = None) -> list[str]:
    """Undo the restores in `folder` that a crash interrupted; return what was done.

    A restore keeps its journal in the folder that holds its target (for a target that is
    a mount point, in the target itself). Journals of restores that are still running are
    left alone. Run this at worker start-up; `run_restore` runs it for its own target.
    """
    folder = Path(folder)
    done: list[str] = []
    try:
        names = sorted(entry.name for entry in os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return done
    for name in names:
        if not _JOURNAL_NAME.match(name):
            continue
        journal = folder / name
        lock_path = journal.with_suffix(".lock")
        try:
            lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its restore is still running
            try:
                record = json.loads(journal.read_text())
            except FileNotFoundError:
                continue
            except ValueError:
                done.append(f"Left the unreadable restore journal {journal} alone.")
                continue
            done.extend(_roll_back(record))
            journal.unlink()
            with contextlib.suppress(FileNotFoundError):
                lock_path.unlink()
            fsync_dir(folder)
        finally:
            os.close(lock_fd)
    if hooks is not None:
        for line in done:
            hooks.log(line)
    return done


def _roll_back(record: dict) -> list[str]:
    """Put a target back as it was before the restore that `record` describes."""
    kind = record["kind"]
    if kind == "tree":
        return _roll_back_tree(record)
    if kind == "paths":
        return _roll_back_paths(record)
    if kind == "file":
        return _roll_back_file(record)
    if kind == "sqlite":
        return _roll_back_sqlite(record)
    if kind == "scratch":
        _remove(Path(record["staging"]))
        return [f"Removed the staging data of an interrupted restore at {record['staging']}."]
    return [f"Left a restore journal of unknown kind {kind!r} alone."]


def _roll_back_tree(record: dict) -> list[str]:
    target, staging, aside = Path(record["target"]), Path(record["staging"]), record["aside"]
    done = []
    if record["phase"] == "done":
        if aside:
            _remove(Path(aside))
        _remove(staging)
        return [f"Finished cleaning up after the restore into {target}."]
    if aside and os.path.lexists(aside):
        if os.path.lexists(target):
            _remove(target)
        os.rename(aside, target)
        fsync_dir(target.parent)
        done.append(f"Put the original data back at {target}.")
    elif (
        record["phase"] == "swapping"
        and not os.path.lexists(staging)
        and os.path.lexists(target)
        and record.get("before") in (None, "empty")
    ):
        # Staging was renamed into place: take it out again, as the run did not succeed.
        _remove(target)
        if record.get("before") == "empty":
            os.mkdir(target)
        done.append(f"Removed the unfinished restore at {target}.")
    _remove(staging)
    done.append(f"Removed the staging folder {staging}.")
    return done


def _roll_back_paths(record: dict) -> list[str]:
    target = Path(record["target"])
    staging, aside = Path(record["staging"]), Path(record["aside"])
    done = []
    if record["phase"] == "swapping":
        for item in reversed(record["items"]):
            live = target / item["path"]
            moved = aside / item["path"]
            if os.path.lexists(moved):
                if os.path.lexists(live):
                    _remove(live)
                os.rename(moved, live)
                done.append(f"Put the original {shown(item['path'])} back in {target}.")
            elif not item["existed"] and os.path.lexists(live) and item.get("moved_in"):
                _remove(live)
        for created in reversed(record.get("created", [])):
            with contextlib.suppress(OSError):
                os.rmdir(target / created)
    _remove(staging)
    _remove(aside)
    done.append(f"Removed the staging data of the restore into {target}.")
    return done


def _roll_back_file(record: dict) -> list[str]:
    _remove(Path(record["staging"]))
    target = Path(record["target"])
    if (
        record["phase"] == "swapping"
        and record.get("before") is None
        and record.get("moved_in")
        and target.exists()
    ):
        _remove(target)
        return [f"Removed the unfinished restore at {target}."]
    return [f"Removed the staging data of the restore into {target}."]


def _roll_back_sqlite(record: dict) -> list[str]:
    target, aside = Path(record["target"]), Path(record["aside"])
    done = []
    if record["phase"] == "copying" and aside.exists():
        # The copy into the live file is one SQLite transaction, so the file is either the
        # original or the restored database; copying the saved original back covers both.
        _sqlite_copy(aside, target, timeout=60.0)
        done.append(f"Put the original database back into {target}.")
    _remove(aside)
    _remove(Path(record["staging"]))
    done.append(f"Removed the staging data of the restore into {target}.")
    return done


def _remove(path: Path) -> None:
    """Remove a file, symlink or folder tree (never following a symlink); never raises."""
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    if not stat.S_ISDIR(info.st_mode):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return

    def retry_writable(function, name, _exc_info) -> None:
        # A read-only folder (restored faithfully) must be made writable to be emptied.
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(name), 0o700)
            function(name)

    with contextlib.suppress(OSError):
        os.chmod(path, stat.S_IMODE(info.st_mode) | 0o700)
    shutil.rmtree(path, onerror=retry_writable)


def _open_dir(base_fd: int, relative: str, *, create: Callable[[str], None] | None = None) -> int:
    """Open the folder `relative` below `base_fd` without following any symlink."""
    fd = os.dup(base_fd)
    if not relative:
        return fd
    walked = ""
    try:
        for part in relative.split("/"):
            walked = f"{walked}/{part}" if walked else part
            try:
                next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                if create is None:
                    raise
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                    create(walked)
                except FileExistsError:
                    pass  # made meanwhile, by tar extracting alongside
                next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = next_fd
    except OSError as error:
        os.close(fd)
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            raise TargetError(
                f"{shown(walked)} in the target is a symlink or not a folder; a restore never "
                "writes through a symlink. Restore a parent path, or restore with --to."
            ) from None
        raise
    return fd


# -- checking a target up front ------------------------------------------------------------


def _target_kind(request: RestoreRequest) -> str:
    """Return how the target is written: a pod is one; a local folder restores locally."""
    if request.kind == KUBERNETES and request.target.startswith("/"):
        return DIRECTORY
    return request.kind


def _selection(request: RestoreRequest, manifest: Manifest) -> Selection:
    root = (manifest.header.get("source") or {}).get("location")
    if request.kind == KUBERNETES and root and ":" in root:
        root = root.split(":", 1)[1]
    try:
        paths = [normalise_request_path(path, root) for path in request.paths]
    except ValueError as error:
        raise TargetError(str(error)) from None
    selection = Selection(paths)
    unknown = selection.unmatched([member_key(entry.path) for entry in manifest.entries])
    if unknown:
        raise TargetError(
            f"This backup holds nothing at {listed(unknown)}; give paths relative to the "
            "source root, as `runs RUN --json` or the manifest lists them."
        )
    return selection


def check_target(request: RestoreRequest) -> None:
    """Refuse unusable targets up front (raises TargetError), before anything is changed.

    A non-empty folder or an existing database file is refused unless `in_place`; the
    target's parent must exist (in place, it is created); a pod path or URI must parse.
    """
    if request.kind not in KINDS:
        raise TargetError(f"Unknown source kind {request.kind!r}: use one of {', '.join(KINDS)}.")
    target = (request.target or "").strip()
    if not target:
        raise TargetError("The restore target is empty.")
    if request.paths and request.kind in (SQLITE, POSTGRES):
        raise TargetError(f"A {request.kind} backup is restored whole; --path does not apply.")
    kind = _target_kind(request)
    if kind == KUBERNETES:
        try:
            parse_pod_path(target)
        except ValueError as error:
            raise TargetError(str(error)) from None
    elif kind == POSTGRES:
        try:
            check_postgres_uri(target)
        except ValueError as error:
            raise TargetError(str(error)) from None
    elif kind == DIRECTORY:
        _check_directory_target(target, request.in_place)
    elif kind == SQLITE:
        _check_sqlite_target(target, request.in_place)
    if request.paths:
        _selection(request, load_manifest(request.manifest))


def _check_parent(path: Path, in_place: bool) -> None:
    if not path.is_absolute():
        raise TargetError(f"{path} is a relative path; give the absolute path of the target.")
    parent = path.parent
    if not parent.exists():
        if in_place:
            return
        raise TargetError(f"The folder {parent} does not exist; create it first.")
    if not parent.is_dir():
        raise TargetError(f"{parent} is not a folder.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise TargetError(f"This user may not create files in {parent}.")


def _check_directory_target(target: str, in_place: bool) -> None:
    path = Path(os.path.realpath(target)) if os.path.isabs(target) else Path(target)
    _check_parent(path, in_place)
    if not path.exists():
        return
    if not path.is_dir():
        raise TargetError(f"The target {path} exists and is not a folder.")
    if in_place:
        return
    with os.scandir(path) as entries:
        if any(True for _ in entries):
            raise TargetError(
                f"The folder {path} is not empty. Restore into a new or empty folder, or "
                "restore over the source with --in-place --yes."
            )


def _check_sqlite_target(target: str, in_place: bool) -> None:
    path = Path(target)
    _check_parent(path, in_place)
    if path.is_dir():
        raise TargetError(f"The target {path} is a folder; give the database file's path.")
    if in_place or not path.exists():
        for suffix in ("-wal", "-journal") if not path.exists() else ():
            if os.path.lexists(f"{path}{suffix}"):
                raise TargetError(
                    f"{path}{suffix} exists without its database; SQLite would apply it to "
                    "the restored file. Remove it or choose another file name."
                )
        return
    if path.stat().st_size > 0:
        raise TargetError(
            f"The database file {path} exists. Restore to a new file name, or over the "
            "source with --in-place --yes."
        )


def _check_space(folder: Path, needed: int) -> None:
    while not folder.exists():
        folder = folder.parent
    free = free_bytes(folder)
    if free < needed:
        raise NoSpaceError(
            f"Restoring needs {format_bytes(needed)} in {folder} but only {format_bytes(free)} "
            "is free; the current data stays until the restore succeeds. Free some space or "
            "restore elsewhere with --to."
        )


# -- the restore --------------------------------------------------------------------------


class _Run:
    """The state one restore shares between its steps."""

    def __init__(self, request: RestoreRequest, hooks: Hooks) -> None:
        self.request = request
        self.hooks = hooks
        self.archive = Path(request.archive)
        self.manifest = load_manifest(Path(request.manifest))
        self.deadline = _Deadline(request.timeout_s)
        self.warnings: list[str] = []
        self.checks: list[dict] = []
        self.files = 0
        self.bytes = 0
        self.token = secrets.token_hex(6)

    def tick(self) -> None:
        self.deadline.check()
        self.hooks.check()

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self.hooks.warn(message)

    def expected(self) -> str:
        if not self.archive.exists():
            raise ArchiveError(f"The archive {self.archive} is missing.")
        recorded = self.manifest.header.get("archive", {}).get("size")
        size = self.archive.stat().st_size
        if size == 0:
            raise ArchiveError(f"The archive {self.archive} is empty (0 bytes).")
        if isinstance(recorded, int) and recorded != size:
            raise ArchiveError(
                f"The archive {self.archive} is {size} bytes but its manifest says {recorded}: "
                f"it is {'truncated' if size < recorded else 'not the file that was written'}."
            )
        return expected_sha256(self.archive, self.manifest)

    def meter(self, current: str, selection: Selection | None = None) -> ProgressMeter:
        files_total = self.manifest.total_files
        if selection is not None and not selection.everything:
            files_total = sum(
                1
                for entry in self.manifest.entries
                if entry.type == "file" and selection.includes(member_key(entry.path))
            )
        meter = ProgressMeter(
            self.hooks,
            bytes_total=self.manifest.total_bytes,
            files_total=files_total,
            current=current,
        )
        meter.update(force=True)
        return meter

    def extract(self, staging: Path, selection: Selection, helpers=frozenset()) -> _Filter:
        """Extract the archive into `staging` through the filter, verifying everything."""
        expected = self.expected()
        meter = self.meter(f"restoring {self.archive.name}", selection)
        filter_ = _Filter(
            archive_name=self.archive.name,
            manifest=self.manifest,
            selection=selection,
            helpers=helpers,
            meter=meter,
        )
        sink = _ProcessSink(
            tar_extract_argv(staging),
            what=f"tar extracting into {staging}",
            deadline=self.deadline,
            env=_tar_env(),
        )
        try:
            _stream_into(
                archive=self.archive,
                manifest=self.manifest,
                expected=expected,
                filter_=filter_,
                sink=sink,
                meter=meter,
                tick=self.tick,
                staging=staging,
            )
        except BaseException:
            sink.kill()
            raise
        sink.close()
        for line in filter_.warnings():
            self.warn(line)
        self.files, self.bytes = filter_.files, filter_.bytes
        self.checks.append(
            {
                "name": "checksum",
                "ok": True,
                "detail": f"sha256 {expected} matches the manifest and the checksum file",
            }
        )
        self.checks.append(
            {
                "name": "contents",
                "ok": True,
                "detail": f"{filter_.files} files ({format_bytes(filter_.bytes)}) match "
                "their sizes and sha256 in the manifest",
            }
        )
        return filter_


def run_restore(request: RestoreRequest, hooks: Hooks) -> RestoreResult:
    """Restore `request.archive` to `request.target`, verifying every byte on the way.

    Raises ArchiveError (damaged or lying archive), UnsafeArchiveError, TargetError,
    NoSpaceError or Cancelled (also on timeout); on any failure the target is as before.
    """
    started = time.monotonic()
    run = _Run(request, hooks)
    try:
        kind = _target_kind(request)
        if kind == DIRECTORY:
            target = _restore_directory(run)
        elif kind == SQLITE:
            target = _restore_sqlite(run)
        elif kind == KUBERNETES:
            target = _restore_pod(run)
        elif kind == POSTGRES:
            target = _restore_postgres(run)
        else:
            raise TargetError(f"Unknown source kind {request.kind!r}.")
    except Cancelled:
        raise
    except BaseException as error:
        if run.deadline.expired:
            raise Cancelled(run.deadline.message()) from error
        raise
    finally:
        run.deadline.stop()
    return RestoreResult(
        files=run.files,
        bytes=run.bytes,
        warnings=run.warnings,
        target=target,
        duration_s=round(time.monotonic() - started, 3),
        checks=run.checks,
    )


def _hardlink_helpers(manifest: Manifest, selection: Selection) -> frozenset[str]:
    """Return files outside a partial selection that selected hardlinks need as targets."""
    if selection.everything:
        return frozenset()
    helpers = set()
    for entry in manifest.entries:
        if entry.type == "hardlink" and selection.includes(member_key(entry.path)):
            target = clean_path(entry.target or "")
            if target is not None and not selection.includes(target):
                helpers.add(target)
    return frozenset(helpers)


def _drop_helpers(staging: Path, selection: Selection, helpers: frozenset[str]) -> None:
    """Remove helper files (and folders tar made for them) that were not asked for."""
    for helper in sorted(helpers, key=len, reverse=True):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging / helper)
        parent = os.path.dirname(helper)
        while parent and not selection.includes(parent) and not selection.is_ancestor(parent):
            try:
                os.rmdir(staging / parent)
            except OSError:
                break
            parent = os.path.dirname(parent)


def _restore_directory(run: _Run) -> str:
    request = run.request
    check_target(RestoreRequest(**{**request.__dict__, "paths": ()}))
    target = Path(os.path.realpath(request.target))
    recover_interrupted(target.parent, hooks=run.hooks)
    if target.is_dir():
        recover_interrupted(target, hooks=run.hooks)
    selection = _selection(request, run.manifest)
    helpers = _hardlink_helpers(run.manifest, selection)
    if not target.parent.exists():
        target.parent.mkdir(parents=True)
    existed = target.is_dir()
    mount = existed and request.in_place and os.path.ismount(target)
    if existed and request.in_place and (mount or not selection.everything):
        _restore_paths(run, target, selection, helpers, mount=mount)
    else:
        _restore_tree(run, target, selection, helpers)
    return str(target)


@functools.cache
def _libc_syncfs():
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL(None, use_errno=True).syncfs
    return None


def _sync_filesystem(path: Path) -> None:
    """Make what tar wrote durable before anything old is removed (tar does not fsync)."""
    syncfs = _libc_syncfs()
    if syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _prepare_staging(staging: Path, model: Path | None) -> None:
    """Create the staging folder with the mode (and owner) the target has now."""
    os.mkdir(staging, 0o700)
    if model is not None:
        info = os.stat(model)
        os.chmod(staging, stat.S_IMODE(info.st_mode))
        if os.geteuid() == 0:
            os.chown(staging, info.st_uid, info.st_gid)
    else:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)


def _restore_tree(run: _Run, target: Path, selection: Selection, helpers) -> None:
    """Extract into a staging folder next to `target`, then rename it into place."""
    request = run.request
    _check_space(target.parent, run.manifest.total_bytes)
    before = None
    if target.is_dir():
        before = "dir" if request.in_place else "empty"
    staging = _side_name(target, "restore", run.token)
    aside = _side_name(target, "before-restore", run.token) if before == "dir" else None
    journal = _Journal(
        target.parent,
        target.name,
        run.token,
        {
            "kind": "tree",
            "phase": "staging",
            "target": os.fspath(target),
            "staging": os.fspath(staging),
            "aside": os.fspath(aside) if aside else None,
            "before": before,
            "pid": os.getpid(),
        },
    )
    try:
        _prepare_staging(staging, target if before else None)
        run.extract(staging, selection, helpers)
        _drop_helpers(staging, selection, helpers)
        _sync_filesystem(staging)
        run.tick()

        def swap() -> None:
            journal.write(phase="swapping")
            if aside is not None:
                os.rename(target, aside)
                run.hooks.log(f"Moved the current data aside to {aside}.")
            os.rename(staging, target)
            run.hooks.log(f"Moved the restored data into place at {target}.")
            fsync_dir(target.parent)
            journal.write(phase="done")

        try:
            run.hooks.publish(swap)
        except OSError as error:
            if error.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise TargetError(
                    f"The folder {target} stopped being empty during the restore; nothing "
                    "was changed. Restore into a new folder."
                ) from None
            raise
    except BaseException:
        _roll_back(journal.record)
        journal.close()
        raise
    if aside is not None:
        _remove(aside)
    journal.close()


def _restore_paths(run: _Run, target: Path, selection: Selection, helpers, *, mount: bool):
    """Restore some paths (or, on a mount point, every top-level entry) over live data.

    Each selected path is staged, then the live one is moved aside and the staged one moved
    in, path by path; staging and the set-aside data live inside the target when it is a
    mount point, since a rename cannot cross filesystems.
    """
    home = target if mount else target.parent
    stem = "" if mount else target.name
    staging = _hidden(home, stem, "restore", run.token)
    aside = _hidden(home, stem, "before-restore", run.token)
    _check_space(home, run.manifest.total_bytes)
    live_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if not selection.everything:
            for path in selection.paths:
                parent = os.path.dirname(path)
                # Fail before any work when a parent in the live tree is a symlink.
                with contextlib.suppress(FileNotFoundError):
                    os.close(_open_dir(live_fd, parent))
        journal = _Journal(
            home,
            stem,
            run.token,
            {
                "kind": "paths",
                "phase": "staging",
                "target": os.fspath(target),
                "staging": os.fspath(staging),
                "aside": os.fspath(aside),
                "items": [],
                "created": [],
                "pid": os.getpid(),
            },
        )
        try:
            _prepare_staging(staging, target)
            run.extract(staging, selection, helpers)
            _drop_helpers(staging, selection, helpers)
            _sync_filesystem(staging)
            run.tick()
            if selection.everything:
                names = set(os.listdir(staging)) | set(os.listdir(target))
                names -= {staging.name, aside.name, journal.path.name, journal.lock_path.name}
                if mount and "lost+found" not in os.listdir(staging):
                    names.discard("lost+found")  # the filesystem's own, not the data's
                paths = sorted(names)
            else:
                paths = list(selection.paths)
            run.hooks.publish(
                lambda: _swap_paths(
                    run, journal, target, paths, live_fd, replace=selection.everything
                )
            )
        except BaseException:
            _roll_back(journal.record)
            journal.close()
            raise
        if selection.everything:
            _copy_root_attributes(staging, target)
        _remove(aside)
        _remove(staging)
        journal.close()
    finally:
        os.close(live_fd)


def _swap_paths(
    run: _Run, journal: _Journal, target: Path, paths: list[str], live_fd: int, *, replace: bool
) -> None:
    """Move each live path aside and its staged copy in; `replace` also drops live paths
    the archive does not hold (a full restore), where a partial one leaves them."""
    staging, aside = Path(journal.record["staging"]), Path(journal.record["aside"])
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
                source_fd = _open_dir(stage_fd, parent)
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
                    run.warn(
                        f"Left {shown(path)} as it is: the archive held nothing safe to put there."
                    )
                continue
            try:

                def record_created(relative: str) -> None:
                    created.append(relative)
                    journal.write(created=created)

                live_parent = _open_dir(live_fd, parent, create=record_created)
                try:
                    if item["existed"]:
                        keep_fd = _open_dir(aside_fd, parent, create=lambda _: None)
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
        run.hooks.log(f"Moved the restored paths into place in {target}.")
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


# -- SQLite --------------------------------------------------------------------------------


def sqlite_uri(path: Path, *, immutable: bool = False) -> str:
    """Return a read-only SQLite URI for `path` (immutable: no locks, no -wal needed)."""
    flags = "mode=ro&immutable=1" if immutable else "mode=ro"
    return f"file:{quote(os.fsencode(path))}?{flags}"


def sqlite_integrity(path: Path, *, quick: bool = False, immutable: bool = True) -> str:
    """Run `PRAGMA integrity_check` (or quick_check); return "ok" or the problems found."""
    pragma = "quick_check" if quick else "integrity_check"
    try:
        with contextlib.closing(
            sqlite3.connect(sqlite_uri(path, immutable=immutable), uri=True)
        ) as db:
            rows = db.execute(f"PRAGMA {pragma}(20)").fetchall()
    except sqlite3.DatabaseError as error:
        return f"cannot be opened as a SQLite database: {error}"
    lines = [str(row[0]) for row in rows]
    return "ok" if lines == ["ok"] else "; ".join(lines)


def _page_count(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(sqlite_uri(path, immutable=True), uri=True)) as db:
        return int(db.execute("PRAGMA page_count").fetchone()[0])


def _sqlite_copy(
    source: Path,
    dest: Path,
    *,
    timeout: float,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Copy database `source` into `dest` with SQLite's backup API, as one transaction.

    Readers of `dest` see the old database until the copy commits, then the new one; they
    never see a half-written file.
    """

    def step(_status, remaining, total) -> None:
        if progress is not None:
            progress(total - remaining, total)

    source_db = sqlite3.connect(sqlite_uri(source, immutable=True), uri=True)
    dest_db = sqlite3.connect(os.fspath(dest), timeout=timeout)
    with contextlib.closing(source_db), contextlib.closing(dest_db):
        source_db.backup(dest_db, pages=1024, progress=step)


def _single_file(run: _Run) -> str:
    files = [entry for entry in run.manifest.entries if entry.type == "file"]
    if len(files) != 1:
        raise ArchiveError(
            f"The archive {run.archive.name} should hold one database file but its manifest "
            f"lists {len(files)} files."
        )
    path = clean_path(files[0].path)
    if not path:
        raise UnsafeArchiveError(
            f"The database member {shown(files[0].path)} of {run.archive.name} has an unsafe name."
        )
    return path


def _restore_sqlite(run: _Run) -> str:
    request = run.request
    check_target(request)
    target = Path(request.target)
    if not target.parent.exists():
        target.parent.mkdir(parents=True)
    recover_interrupted(target.parent, hooks=run.hooks)
    member = _single_file(run)
    live = request.in_place and target.exists()
    _check_space(target.parent, run.manifest.total_bytes * (2 if live else 1))
    staging = _side_name(target, "restore", run.token)
    aside = _side_name(target, "before-restore", run.token)
    journal = _Journal(
        target.parent,
        target.name,
        run.token,
        {
            "kind": "sqlite" if live else "file",
            "phase": "staging",
            "target": os.fspath(target),
            "staging": os.fspath(staging),
            "aside": os.fspath(aside),
            "before": "file" if target.exists() else None,
            "pid": os.getpid(),
        },
    )
    try:
        _prepare_staging(staging, None)
        run.extract(staging, Selection([]))
        snapshot = staging / member
        verdict = sqlite_integrity(snapshot)
        if verdict != "ok":
            raise ArchiveError(
                f"The database restored from {run.archive.name} fails PRAGMA integrity_check: "
                f"{verdict}. Nothing was changed."
            )
        run.checks.append({"name": "database", "ok": True, "detail": "integrity_check: ok"})
        _sync_filesystem(staging)
        run.tick()
        if live:
            run.hooks.publish(lambda: _copy_into_live(run, journal, snapshot, target, aside))
        else:

            def move_in() -> None:
                journal.write(phase="swapping", moved_in=True)
                os.rename(snapshot, target)
                fsync_dir(target.parent)
                journal.write(phase="done")

            run.hooks.publish(move_in)
    except BaseException:
        _roll_back(journal.record)
        journal.close()
        raise
    _remove(staging)
    _remove(aside)
    journal.close()
    return str(target)


def _copy_into_live(run: _Run, journal: _Journal, snapshot: Path, target: Path, aside: Path):
    """Copy the verified snapshot into the live database, keeping the original until it passes."""
    timeout = 60.0 if run.request.timeout_s is None else max(1.0, run.request.timeout_s)
    # A consistent copy of the current database, to put back on any failure.
    live, keep = sqlite3.connect(os.fspath(target), timeout=timeout), sqlite3.connect(aside)
    with contextlib.closing(live), contextlib.closing(keep):
        live.backup(keep)
    run.hooks.log(f"Saved the current database to {aside}.")
    meter = ProgressMeter(run.hooks, bytes_total=None, files_total=1, current="copying into place")
    page = snapshot.stat().st_size // max(1, _page_count(snapshot))

    def progress(done: int, total: int) -> None:
        run.tick()
        meter.progress.bytes_done = done * page
        meter.progress.bytes_total = total * page
        meter.update()

    journal.write(phase="copying")
    committed = False
    try:
        _sqlite_copy(snapshot, target, timeout=timeout, progress=progress)
        committed = True
        verdict = sqlite_integrity(target, quick=True, immutable=False)
        if verdict != "ok":
            raise ArchiveError(f"The restored database fails PRAGMA quick_check: {verdict}.")
    except BaseException:
        # An unfinished copy was rolled back by SQLite itself; a finished one is undone.
        if committed:
            _sqlite_copy(aside, target, timeout=timeout)
            run.hooks.log(f"Put the original database back into {target}.")
        journal.write(phase="staging")
        raise
    run.checks.append({"name": "database", "ok": True, "detail": "quick_check after copy: ok"})
    run.hooks.log(f"Copied the restored database into {target}.")
    journal.write(phase="done")


# -- Kubernetes ----------------------------------------------------------------------------


def kubectl_binary() -> str:
    """Return the kubectl command: $KUBECTL, else kubectl on PATH."""
    return os.environ.get("KUBECTL") or "kubectl"


def kubectl_extract_argv(pod: PodPath) -> list[str]:
    """Return the argv that runs `tar -x` in the pod, reading the archive from stdin."""
    argv = [kubectl_binary(), "exec", "-i", "-n", pod.namespace, pod.pod]
    if pod.container:
        argv += ["-c", pod.container]
    return argv + ["--", "tar", "-xf", "-", "-C", pod.path]


def _restore_pod(run: _Run) -> str:
    request = run.request
    check_target(request)
    pod = parse_pod_path(request.target)
    selection = _selection(request, run.manifest)
    # A pod's files cannot be staged and swapped: the whole archive is verified first, so a
    # damaged or altered archive sends nothing.
    expected = run.expected()
    filter_ = _Filter(archive_name=run.archive.name, manifest=run.manifest, selection=selection)
    meter = run.meter(f"verifying {run.archive.name}", selection)
    filter_.meter = meter
    _stream_into(
        archive=run.archive,
        manifest=run.manifest,
        expected=expected,
        filter_=filter_,
        sink=None,
        meter=meter,
        tick=run.tick,
    )
    run.checks.append(
        {
            "name": "checksum",
            "ok": True,
            "detail": f"sha256 {expected} matches the manifest and the checksum file",
        }
    )
    filter_ = _Filter(archive_name=run.archive.name, manifest=run.manifest, selection=selection)
    meter = run.meter(f"sending to {pod}", selection)
    filter_.meter = meter

    def send() -> None:
        # Unlike a local folder, a pod has no staging: what was sent before a failure stays.
        run.deadline.outcome = f"{pod} may hold part of the archive; restore it again."
        sink = _ProcessSink(
            kubectl_extract_argv(pod), what=f"kubectl exec into {pod}", deadline=run.deadline
        )
        try:
            _stream_into(
                archive=run.archive,
                manifest=run.manifest,
                expected=expected,
                filter_=filter_,
                sink=sink,
                meter=meter,
                tick=run.tick,
            )
        except BaseException:
            sink.kill()
            raise
        sink.close()

    run.hooks.publish(send)
    for line in filter_.warnings():
        run.warn(line)
    run.files, run.bytes = filter_.files, filter_.bytes
    run.checks.append(
        {
            "name": "contents",
            "ok": True,
            "detail": f"{filter_.files} files ({format_bytes(filter_.bytes)}) match their "
            "sizes and sha256 in the manifest",
        }
    )
    return str(pod)


# -- PostgreSQL ----------------------------------------------------------------------------


def decompress_verified(archive: Path, manifest: Manifest, dest: Path, *, tick, meter) -> str:
    """Decompress a single-payload archive (a pg_dump) into `dest`, verifying as it goes.

    Return the archive's sha256; raise ArchiveError when the archive, its size or (when
    the manifest lists one file) the payload's sha256 does not match.
    """
    expected = expected_sha256(archive, manifest)
    reader = ArchiveReader(archive, limit=manifest.total_bytes, tick=tick, mode=THREAD)
    payload = hashlib.sha256()
    try:
        with open(dest, "wb") as out:
            try:
                for chunk in reader.chunks():
                    payload.update(chunk)
                    out.write(chunk)
                    meter.update(reader.payload_bytes)
            except ArchiveError as error:
                digest = reader.finish()
                if digest != expected:
                    raise ArchiveError(
                        f"The archive {archive.name} is damaged: its sha256 is {digest}, "
                        f"not the recorded {expected} ({error})"
                    ) from error
                raise
        digest = reader.finish()
    finally:
        reader.close()
    if digest != expected:
        raise ArchiveError(
            f"The archive {archive.name} is damaged: its sha256 is {digest}, not the "
            f"{expected} recorded in its manifest and checksum file."
        )
    if reader.payload_bytes != manifest.total_bytes:
        raise ArchiveError(
            f"The archive {archive.name} holds {reader.payload_bytes} bytes but its "
            f"manifest says {manifest.total_bytes}."
        )
    files = [entry for entry in manifest.entries if entry.type == "file" and entry.sha256]
    if len(files) == 1 and files[0].sha256.lower() != payload.hexdigest():
        raise ArchiveError(f"The dump in {archive.name} does not match its sha256 in the manifest.")
    return digest


def pg_restore_argv(uri: str, dump: Path) -> list[str]:
    """Return the pg_restore command that replaces the database's objects with the dump's."""
    # One transaction: a failure part-way leaves the database as it was.
    return [
        os.environ.get("PG_RESTORE") or "pg_restore",
        "--clean",
        "--if-exists",
        "--no-owner",
        "--single-transaction",
        "--exit-on-error",
        "-d",
        uri,
        os.fspath(dump),
    ]


def _restore_postgres(run: _Run) -> str:
    request = run.request
    check_target(request)
    scratch = Path(tempfile.mkdtemp(prefix="restore-pgdump-"))
    try:
        _check_space(scratch, run.manifest.total_bytes)
        dump = scratch / "dump.pgdump"
        meter = run.meter(f"verifying {run.archive.name}")
        digest = decompress_verified(run.archive, run.manifest, dump, tick=run.tick, meter=meter)
        run.checks.append(
            {
                "name": "checksum",
                "ok": True,
                "detail": f"sha256 {digest} matches the manifest and the checksum file",
            }
        )
        meter.progress.current = "pg_restore"
        meter.update(force=True)

        def load() -> None:
            _run_child(pg_restore_argv(request.target, dump), run, what="pg_restore")

        run.hooks.publish(load)
        run.files, run.bytes = 1, run.manifest.total_bytes
    finally:
        _remove(scratch)
    return request.target


def _run_child(argv: list[str], run: _Run, *, what: str) -> str:
    """Run a command to completion, checking for cancellation; return its output."""
    with tempfile.TemporaryFile() as output:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=output, stderr=output)
        except FileNotFoundError:
            raise EngineError(f"{argv[0]} is not installed or not on PATH.") from None
        run.deadline.watch(proc)
        try:
            while True:
                try:
                    code = proc.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    run.tick()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        output.seek(0)
        text = output.read().decode("utf-8", "replace").strip()
    if code != 0:
        raise EngineError(
            f"{what} failed (exit status {code}); nothing was changed: {text[-4000:]}"
        )
    return text

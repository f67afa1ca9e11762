"""Crash-safe files: write `<name>.tmp`, fsync, rename, fsync the folder.

A name without `.tmp` is always complete. A crash, a kill or a full disk can leave only a
`.tmp`, which `stale_temps` finds and the caller removes once its run is known dead.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import NoSpaceError

TMP_SUFFIX = ".tmp"


def temp_path(final: Path) -> Path:
    """Return the temporary name of a file while it is being written."""
    return final.with_name(final.name + TMP_SUFFIX)


def fsync_dir(folder: Path) -> None:
    """Make a rename or unlink in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def no_space(path: Path, error: OSError | None = None) -> NoSpaceError:
    """Build the message for a full disk, naming the path and what to do."""
    free = free_bytes(path.parent if not path.is_dir() else path)
    return NoSpaceError(
        f"No space left on the device holding {path} ({format_bytes(free)} free). "
        "Free some space or move ARCHIVE_ROOT to a larger volume, then run the backup "
        "again; existing archives were not touched."
    )


def raise_if_no_space(error: OSError, path: Path) -> None:
    """Translate ENOSPC/EDQUOT into a NoSpaceError naming `path`."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        raise no_space(path, error) from error


def free_bytes(folder: Path) -> int:
    """Return the bytes an unprivileged writer may still use under `folder`."""
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize


def format_bytes(count: float | None) -> str:
    """Format a byte count for people: 1.5 GiB."""
    if count is None:
        return "?"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


class AtomicFile:
    """A file written under a temporary name and published by an atomic rename.

    Use as a context manager: on an exception the temporary file is removed. Call
    `finish()` to flush and fsync, then `publish()` to rename it into place.
    """

    def __init__(self, final: Path, buffering: int = 1 << 20) -> None:
        self.final = Path(final)
        self.tmp = temp_path(self.final)
        self.file = None
        self._buffering = buffering
        self._published = False

    def __enter__(self) -> AtomicFile:
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        self.file = os.fdopen(fd, "wb", buffering=self._buffering)
        return self

    def finish(self) -> None:
        """Flush and fsync the temporary file; its contents are then durable."""
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
        except OSError as error:
            raise_if_no_space(error, self.final)
            raise
        self.file.close()

    def publish(self) -> None:
        """Rename the finished temporary file to its final name and fsync the folder."""
        os.rename(self.tmp, self.final)
        self._published = True
        fsync_dir(self.final.parent)

    def discard(self) -> None:
        """Close and remove the temporary file; never raises."""
        if self.file is not None and not self.file.closed:
            with contextlib.suppress(OSError):
                self.file.close()
        if not self._published:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._published:
            self.discard()


def write_atomic(final: Path, data: bytes) -> None:
    """Write a small file crash-safely: temp, fsync, rename, fsync the folder."""
    with AtomicFile(final, buffering=-1) as out:
        try:
            out.file.write(data)
        except OSError as error:
            raise_if_no_space(error, final)
            raise
        out.finish()
        out.publish()


def stale_temps(folder: Path) -> Iterator[Path]:
    """Yield the `.tmp` files in `folder`; the caller decides which belong to dead runs."""
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name.endswith(TMP_SUFFIX) and entry.is_file(follow_symlinks=False):
            yield Path(entry.path)

"""Filesystem steps that never follow a symlink: removing a tree, opening a folder below another."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

from ..errors import TargetError
from ..safety import shown


def remove_path(path: Path) -> None:
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


def open_dir(base_fd: int, relative: str, *, create: Callable[[str], None] | None = None) -> int:
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

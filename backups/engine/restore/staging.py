"""Staging beside the target: hidden names on the same filesystem, made durable before a swap."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import stat
from pathlib import Path


def hidden_path(home: Path, stem: str, label: str, token: str) -> Path:
    """Return `home/.<stem>.<label>-<token>` (`home/.<label>-<token>` without a stem)."""
    # Stay well within NAME_MAX whatever the target's name.
    prefix = f".{stem[:100]}." if stem else "."
    return home / f"{prefix}{label}-{token}"


@functools.cache
def _libc_syncfs():
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL(None, use_errno=True).syncfs
    return None


def sync_filesystem(path: Path) -> None:
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


def prepare_staging(staging: Path, model: Path | None) -> None:
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

"""Change detection for a delta backup: which walked paths are new or changed since a base.

A path is unchanged when the base's tree (as of the base backup, composed from its chain)
has it with the same type, size, mtime (nanoseconds), inode and ctime, as restic and borg
compare; an unchanged file is not read. Each path handed to tar also gets its stat
recorded in order (`StatSpool`), so the manifest entry built from tar's member carries
what the next backup compares, in flat memory.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from collections.abc import Mapping
from typing import BinaryIO

from ..manifest import FILE, Entry

_RECORD = struct.Struct("<QqqI")
# Records are read back this many bytes at a time.
_WINDOW = 1 << 20


class ChangeFilter:
    """Decide, path by path, what a delta stores; afterwards `deleted` lists what is gone.

    With `rehash`, a file whose metadata did not change is read and hashed all the same,
    and stored when its content differs from the base's; `silent_changes` names those.
    """

    def __init__(self, root: str, base: Mapping[str, Entry], *, rehash: bool = False) -> None:
        self.root = root
        self._left = dict(base)
        self.rehash = rehash
        self.silent_changes: list[str] = []
        self.files = 0
        self.bytes = 0

    def changed(self, path: str, kind: str, size: int, info: os.stat_result) -> bool:
        """Return whether `path` (of `kind`, with `info`) goes into the delta."""
        before = self._left.pop(path, None)
        if (
            before is None
            or before.mtime_ns is None
            or before.type != kind
            or before.mtime_ns != info.st_mtime_ns
            or before.ino != info.st_ino
            or before.ctime_ns != info.st_ctime_ns
            or (kind == FILE and before.size != size)
        ):
            self._count(kind, size)
            return True
        if (
            self.rehash
            and kind == FILE
            and before.sha256 is not None
            and self._digest(path) not in (before.sha256, None)
        ):
            self.silent_changes.append(path)
            self._count(kind, size)
            return True
        return False

    def _count(self, kind: str, size: int) -> None:
        if kind == FILE:
            self.files += 1
            self.bytes += size

    def _digest(self, path: str) -> str | None:
        try:
            with open(os.path.join(self.root, path), "rb") as handle:
                return hashlib.file_digest(handle, "sha256").hexdigest()
        except OSError:
            return None  # gone or unreadable: tar's own read reports it

    def deleted(self) -> list[str]:
        """Return the base's paths the walk did not meet, sorted."""
        return sorted(self._left)


class StatSpool:
    """The stat of each path handed to tar, in tar's order, kept in a temporary file.

    The walk appends while tar's members read back from the front: both go on in one
    loop, so reads use their own offset (os.pread) and a window of the file.
    """

    def __init__(self, folder: str | None) -> None:
        # Closed by close(); it lives as long as the stream that fills and reads it.
        self._file: BinaryIO = tempfile.TemporaryFile(dir=folder, prefix=".stats-")  # noqa: SIM115
        self._buffer: list[bytes] = []
        self._window = b""
        self._pos = 0  # in the window
        self._offset = 0  # in the file, of the window's end

    def add(self, name: bytes, info: os.stat_result) -> None:
        """Record the stat of the next name given to tar."""
        self._buffer.append(
            _RECORD.pack(info.st_ino, info.st_mtime_ns, info.st_ctime_ns, len(name)) + name
        )

    def flush(self) -> None:
        """Write what is buffered: it must be, before tar can see the names it is for."""
        if self._buffer:
            self._file.write(b"".join(self._buffer))
            self._file.flush()
            self._buffer.clear()

    def annotate(self, entry: Entry) -> None:
        """Fill `entry`'s stat fields from its record; skip the records of names tar left out."""
        wanted = os.fsencode(entry.path)
        head = _RECORD.size
        unpack = _RECORD.unpack_from
        while True:
            window, pos = self._window, self._pos
            if len(window) - pos >= head:
                ino, mtime_ns, ctime_ns, length = unpack(window, pos)
                end = pos + head + length
                if end <= len(window):
                    self._pos = end
                    if length == len(wanted) and window.startswith(wanted, pos + head):
                        entry.mtime_ns, entry.ino, entry.ctime_ns = mtime_ns, ino, ctime_ns
                        return
                    continue
            more = os.pread(self._file.fileno(), _WINDOW, self._offset)
            if not more:
                return
            self._offset += len(more)
            self._window = window[pos:] + more
            self._pos = 0

    def close(self) -> None:
        """Remove the records."""
        self._file.close()

"""One file in a storage, named by its storage and key: an archive, a checksum file, a manifest.

Readers (restore, verify, manifests) take a `StoredFile` wherever they used to take a path.
`stored_file(path)` turns a local path into one (a LocalStorage of the path's folder, the
file's name as key), so callers that still hold paths keep working unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from ..errors import StorageError
from .base import Storage, check_key
from .local import LocalStorage

_READ_PIECE = 1 << 20


@dataclass(frozen=True)
class StoredFile:
    """The object `key` in `storage`; `str()` gives what plain tools take (a path, s3://…)."""

    storage: Storage
    key: str

    def __post_init__(self) -> None:
        check_key(self.key)

    @property
    def name(self) -> str:
        """Return the file's own name, the last part of its key."""
        return PurePosixPath(self.key).name

    @property
    def locator(self) -> str:
        """Return the path or `s3://` address of the file."""
        return self.storage.locator(self.key)

    @property
    def local_path(self) -> Path | None:
        """Return the file's path when it lies in a local folder, else None."""
        if isinstance(self.storage, LocalStorage):
            return self.storage.path(self.key)
        return None

    def sibling(self, name: str) -> StoredFile:
        """Return the file called `name` beside this one (its checksum file, its manifest)."""
        parent = str(PurePosixPath(self.key).parent)
        return StoredFile(self.storage, name if parent == "." else f"{parent}/{name}")

    def open_read(self) -> BinaryIO:
        """Return an unbuffered binary stream of the file (a plain file for a local folder)."""
        return self.storage.open_read(self.key)

    def size(self) -> int | None:
        """Return the file's size, or None when it does not exist."""
        return self.storage.size(self.key)

    def read_bytes(self, *, limit: int) -> bytes:
        """Return the whole file, refusing one larger than `limit` bytes."""
        return self.storage.read_bytes(self.key, limit=limit)

    def read_all(self, *, limit: int) -> bytearray:
        """Return the whole file in one buffer sized up front (a big manifest), up to `limit`.

        Read into a buffer of the announced size, so a file of hundreds of MB is neither
        copied nor grown chunk by chunk.
        """
        expected = self.size()
        if expected is not None and expected > limit:
            raise self._too_big(limit)
        data = bytearray(expected or 0)
        filled = 0
        with self.open_read() as stream:
            while True:
                if filled == len(data):
                    # Past the announced size: only a file that grew meanwhile has more.
                    more = stream.read(_READ_PIECE)
                    if not more:
                        break
                    data += more
                    filled = len(data)
                    if filled > limit:
                        raise self._too_big(limit)
                    continue
                count = stream.readinto(memoryview(data)[filled : filled + _READ_PIECE])
                if not count:
                    break
                filled += count
        del data[filled:]
        return data

    def _too_big(self, limit: int) -> StorageError:
        return StorageError(
            f"{self.locator} is larger than the {limit} bytes such a file can have; it is "
            "not one this project wrote."
        )

    def __str__(self) -> str:
        return self.locator


def stored_file(
    where: StoredFile | str | os.PathLike, storage: Storage | None = None
) -> StoredFile:
    """Return `where` as a StoredFile: a key in `storage`, or a local path without one."""
    if isinstance(where, StoredFile):
        return where
    if storage is not None:
        return StoredFile(storage, os.fspath(where))
    path = Path(os.path.abspath(where))
    return StoredFile(LocalStorage(path.parent), path.name)

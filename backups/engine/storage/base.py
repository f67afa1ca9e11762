"""The storage interface: where archives live, and how they get there atomically.

A key is a relative POSIX path inside a storage (`<source-slug>/<archive name>`), the same
layout as the archive folder on disk. Every key that comes from outside is checked by
`check_key` first: an absolute path, `..`, `.`, an empty part, a NUL or another control
character, a name that is not UTF-8, or a name ending in `.tmp` (the mark of a write in
progress) is refused with a sentence.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, NamedTuple

from ..atomic import TMP_SUFFIX
from ..errors import StorageError

# S3 allows keys of up to 1024 bytes; most filesystems names of up to 255 bytes.
MAX_KEY_BYTES = 1024
MAX_PART_BYTES = 255
_EXAMPLE = "keys are relative paths such as 'my-source/20260101T000000Z-1.tar.zst'"


class Entry(NamedTuple):
    """One name in a storage folder: a file with its size, or a folder (size None)."""

    name: str
    size: int | None

    @property
    def is_folder(self) -> bool:
        """Return whether this entry is a folder."""
        return self.size is None


@dataclass(frozen=True)
class Pending:
    """An incomplete write: a `.tmp` file on disk, a multipart upload on S3.

    `key` is the final key the write was for; `started` when it began (for a folder, the
    last time the `.tmp` file was written); `upload_id` names the S3 upload.
    """

    key: str
    started: datetime
    size: int | None = None
    upload_id: str | None = None


def _refuse(key: object, why: str) -> StorageError:
    return StorageError(f"The storage key {key!r} is refused: {why}; {_EXAMPLE}.")


def check_key(key: object, *, folder: bool = False) -> str:
    """Return `key` if it is a safe relative key; raise StorageError naming what is wrong.

    With `folder`, the empty key (the storage's top) is allowed and a `.tmp` name is not
    refused, since folders are never written through an upload.
    """
    if not isinstance(key, str):
        raise _refuse(key, "it is not text")
    if key == "":
        if folder:
            return key
        raise _refuse(key, "it is empty")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise _refuse(key, "it is not valid UTF-8") from None
    if any(ord(char) < 32 or ord(char) == 127 for char in key):
        raise _refuse(key, "it holds a control character")
    if key.startswith("/"):
        raise _refuse(key, "it is an absolute path")
    if size > MAX_KEY_BYTES:
        raise _refuse(key, f"it is longer than {MAX_KEY_BYTES} bytes")
    for part in key.split("/"):
        if part == "":
            raise _refuse(key, "it has an empty part")
        if part in (".", ".."):
            raise _refuse(key, f"it has a {part!r} part")
        if len(part.encode("utf-8")) > MAX_PART_BYTES:
            raise _refuse(key, f"a part is longer than {MAX_PART_BYTES} bytes")
    if not folder and key.endswith(TMP_SUFFIX):
        raise _refuse(key, f"names ending in {TMP_SUFFIX} are kept for writes in progress")
    return key


def join_key(*parts: str) -> str:
    """Join key parts with `/`, skipping empty ones."""
    return "/".join(part for part in parts if part)


class Upload(ABC):
    """A streaming write of one object, invisible under its key until `publish()`.

    Write with `write(data)`; `finish()` makes the bytes durable but not yet visible;
    `publish()` makes them visible under the key at once (replacing an older object of
    that key); `discard()` removes everything written, and never raises. As a context
    manager it discards unless it was published, so an exception leaves nothing behind
    but, after a crash, an incomplete write that `Storage.pending` lists.
    """

    key: str
    written: int = 0
    published: bool = False

    @abstractmethod
    def write(self, data) -> int:
        """Append bytes; raise StorageError (or NoSpaceError) when they cannot be stored."""

    @abstractmethod
    def flush(self) -> None:
        """Pass buffered bytes on (lets an Upload stand where a binary file is expected)."""

    @abstractmethod
    def finish(self) -> None:
        """Make every written byte durable; the object is still not visible."""

    @abstractmethod
    def publish(self) -> None:
        """Make the finished object visible under its key, atomically."""

    @abstractmethod
    def discard(self) -> None:
        """Remove what was written unless it was published; never raise."""

    def __enter__(self) -> Upload:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self.published:
            self.discard()


class Storage(ABC):
    """Where archives live: a local folder, or an S3 bucket and prefix.

    Every method raises StorageError with one sentence a person can act on (a full local
    disk raises NoSpaceError; a missing object MissingObjectError).
    """

    kind: str

    @abstractmethod
    def describe(self) -> str:
        """Return where this storage is, for people: a path or `s3://bucket/prefix`."""

    @abstractmethod
    def locator(self, key: str) -> str:
        """Return what a person gives plain tools to reach `key`: a path or `s3://...`."""

    @abstractmethod
    def open_write(self, key: str) -> Upload:
        """Start a streaming write of `key`; nothing is visible under it until publish."""

    @abstractmethod
    def put_atomic(self, key: str, data: bytes) -> None:
        """Store a small object (a sidecar, a manifest) under `key` in one atomic step."""

    @abstractmethod
    def open_read(self, key: str, offset: int = 0) -> BinaryIO:
        """Return an unbuffered binary stream of `key` from `offset`, with `readinto`."""

    @abstractmethod
    def size(self, key: str) -> int | None:
        """Return the size of the object `key`, or None when there is none."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[Entry]:
        """Yield the files (with sizes) and folders directly inside the folder `prefix`."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object `key`; removing a missing object is not an error."""

    @abstractmethod
    def pending(self, prefix: str = "") -> list[Pending]:
        """Return the incomplete writes under the folder `prefix`, at any depth."""

    @abstractmethod
    def abort(self, pending: Pending) -> None:
        """Remove an incomplete write; one already gone is not an error."""

    @abstractmethod
    def check(self) -> None:
        """Write, read back and delete a probe object; raise StorageError saying what fails."""

    def read_bytes(self, key: str, *, limit: int) -> bytes:
        """Return the whole object `key` (a sidecar, a manifest), refusing more than `limit`."""
        with self.open_read(key) as stream:
            data = bytearray()
            while len(data) <= limit:
                chunk = stream.read(min(1 << 20, limit + 1 - len(data)))
                if not chunk:
                    return bytes(data)
                data += chunk
        raise StorageError(
            f"{self.locator(key)} is larger than the {limit} bytes such a file can have; "
            "it is not one this project wrote."
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"

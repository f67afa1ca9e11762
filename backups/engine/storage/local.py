"""A storage in a local folder: the archive folder as it has always been.

A write goes to `<final name>.tmp` in the same folder, is fsynced, then renamed into
place and the folder fsynced (see `atomic.AtomicFile`). Nothing on disk is trusted: a
symbolic link standing for a folder or an object is refused, never followed.
"""

from __future__ import annotations

import errno
import io
import os
import secrets
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from ..atomic import TMP_SUFFIX, AtomicFile, fsync_dir, raise_if_no_space, write_atomic
from ..errors import MissingObjectError, NoSpaceError, StorageError
from .base import Entry, Pending, Storage, Upload, check_key

_PROBE_PREFIX = ".storage-check-"


def _oserror(error: OSError, action: str, path: Path) -> StorageError:
    """Return the sentence for a failed local operation, naming the path and a fix."""
    if error.errno in (errno.EACCES, errno.EPERM):
        return StorageError(
            f"Permission denied: this process (uid {os.getuid()}) may not {action} {path}; "
            "give the workers' user write access to the archive folder."
        )
    if error.errno == errno.EROFS:
        return StorageError(f"Cannot {action} {path}: the filesystem is mounted read-only.")
    if error.errno in (errno.ENOENT, errno.ENOTDIR):
        return StorageError(f"Cannot {action} {path}: a folder on the way does not exist.")
    return StorageError(f"Cannot {action} {path}: {error.strerror or error}.")


class LocalUpload(Upload):
    """A write of one file under `<name>.tmp`, renamed into place by `publish()`."""

    def __init__(self, key: str, final: Path) -> None:
        self.key = key
        self.final = final
        self.written = 0
        self.published = False
        self._atomic = AtomicFile(final)
        try:
            self._atomic.__enter__()
        except FileExistsError:
            raise StorageError(
                f"{self._atomic.tmp} already exists: another run is writing {final.name}, or a "
                "crashed one left it; it is removed once that run is known dead."
            ) from None
        except OSError as error:
            raise_if_no_space(error, final)
            raise _oserror(error, "create", self._atomic.tmp) from None

    def write(self, data) -> int:
        """Append bytes to the temporary file."""
        try:
            count = self._atomic.file.write(data)
        except OSError as error:
            raise_if_no_space(error, self.final)
            raise _oserror(error, "write", self._atomic.tmp) from None
        self.written += count
        return count

    def flush(self) -> None:
        """Hand buffered bytes to the operating system."""
        try:
            self._atomic.file.flush()
        except OSError as error:
            raise_if_no_space(error, self.final)
            raise _oserror(error, "write", self._atomic.tmp) from None

    def finish(self) -> None:
        """Flush and fsync the temporary file."""
        try:
            self._atomic.finish()
        except NoSpaceError:
            raise
        except OSError as error:
            raise _oserror(error, "write", self._atomic.tmp) from None

    def publish(self) -> None:
        """Rename the temporary file to its final name and fsync the folder."""
        try:
            self._atomic.publish()
        except OSError as error:
            raise _oserror(error, "rename into place", self.final) from None
        self.published = True

    def discard(self) -> None:
        """Close and remove the temporary file; never raises."""
        self._atomic.discard()


class LocalStorage(Storage):
    """Archives in a folder: `<root>/<source-slug>/<archive name>`."""

    kind = "local"

    def __init__(self, root: str | os.PathLike) -> None:
        if not str(root) or "\x00" in str(root):
            raise StorageError(f"The folder {str(root)!r} cannot hold archives: give a path.")
        self.root = Path(os.path.abspath(root))

    def describe(self) -> str:
        """Return the folder's absolute path."""
        return str(self.root)

    def locator(self, key: str) -> str:
        """Return the absolute path of `key`."""
        return str(self.path(key))

    def path(self, key: str, *, folder: bool = False) -> Path:
        """Return the path of `key` under the root, refusing hostile keys."""
        check_key(key, folder=folder)
        return self.root / key if key else self.root

    def _walk_to(self, key: str, *, folder: bool = False, create: bool = False) -> Path:
        """Return the path of `key` once no folder on the way below the root is a symlink."""
        path = self.path(key, folder=folder)
        parts = key.split("/") if key else []
        current = self.root
        for part in parts[:-1] if not folder else parts:
            current = current / part
            try:
                mode = os.lstat(current).st_mode
            except FileNotFoundError:
                if not create:
                    break
                try:
                    current.mkdir(parents=True, exist_ok=True)
                except OSError as error:
                    raise_if_no_space(error, current)
                    raise _oserror(error, "create the folder", current) from None
                continue
            except OSError as error:
                raise _oserror(error, "read", current) from None
            if stat.S_ISLNK(mode) or not stat.S_ISDIR(mode):
                raise StorageError(
                    f"{current} is not a plain folder (a symbolic link or a file); "
                    "it is neither read nor written. Remove or rename it."
                )
        return path

    def open_write(self, key: str) -> LocalUpload:
        """Start writing `key` under `<name>.tmp`."""
        return LocalUpload(key, self._walk_to(key, create=True))

    def put_atomic(self, key: str, data: bytes) -> None:
        """Write a small file crash-safely."""
        path = self._walk_to(key, create=True)
        try:
            write_atomic(path, data)
        except FileExistsError:
            raise StorageError(
                f"{path}{TMP_SUFFIX} already exists: another run is writing it, or a crashed "
                "one left it."
            ) from None
        except NoSpaceError:
            raise
        except OSError as error:
            raise _oserror(error, "write", path) from None

    def open_read(self, key: str, offset: int = 0) -> io.FileIO:
        """Return the file, unbuffered, positioned at `offset`."""
        path = self._walk_to(key)
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            raise MissingObjectError(f"{path} is missing.") from None
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise StorageError(f"{path} is a symbolic link; it is not read.") from None
            raise _oserror(error, "read", path) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StorageError(f"{path} is not a regular file; it is not read.")
        stream = io.FileIO(fd, "rb", closefd=True)
        if offset:
            stream.seek(offset)
        return stream

    def size(self, key: str) -> int | None:
        """Return the size of the regular file `key`, or None."""
        path = self._walk_to(key)
        try:
            info = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as error:
            raise _oserror(error, "read", path) from None
        return info.st_size if stat.S_ISREG(info.st_mode) else None

    def list(self, prefix: str = "") -> Iterator[Entry]:
        """Yield the regular files and folders in `prefix`, by name; no `.tmp`, no links."""
        return self._list(self._walk_to(prefix, folder=True))

    def _list(self, folder: Path) -> Iterator[Entry]:
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as error:
            raise _oserror(error, "list", folder) from None
        found = []
        for entry in entries:
            try:
                check_key(entry.name)
            except StorageError:
                continue
            if entry.is_dir(follow_symlinks=False):
                found.append(Entry(entry.name, None))
            elif entry.is_file(follow_symlinks=False):
                found.append(Entry(entry.name, entry.stat(follow_symlinks=False).st_size))
        yield from sorted(found)

    def delete(self, key: str) -> None:
        """Remove the file `key` (never a folder) and fsync its folder."""
        path = self._walk_to(key)
        try:
            if stat.S_ISDIR(os.lstat(path).st_mode):
                raise StorageError(f"{path} is a folder; only files are deleted.")
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as error:
            raise _oserror(error, "delete", path) from None
        fsync_dir(path.parent)

    def pending(self, prefix: str = "") -> list[Pending]:
        """Return the `.tmp` files under `prefix`, at any depth, without following links."""
        top = self._walk_to(prefix, folder=True)
        found = []
        for dirpath, _dirnames, filenames in os.walk(top):
            for name in filenames:
                if not name.endswith(TMP_SUFFIX):
                    continue
                path = Path(dirpath) / name
                try:
                    key = check_key(str(path.relative_to(self.root))[: -len(TMP_SUFFIX)])
                    info = os.lstat(path)
                except (StorageError, OSError):
                    continue
                if stat.S_ISREG(info.st_mode):
                    started = datetime.fromtimestamp(info.st_mtime, UTC)
                    found.append(Pending(key=key, started=started, size=info.st_size))
        return sorted(found, key=lambda item: item.key)

    def abort(self, pending: Pending) -> None:
        """Remove the `.tmp` file of an incomplete write."""
        final = self._walk_to(pending.key)
        tmp = final.with_name(final.name + TMP_SUFFIX)
        try:
            if not stat.S_ISREG(os.lstat(tmp).st_mode):
                return
            os.unlink(tmp)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as error:
            raise _oserror(error, "delete", tmp) from None
        fsync_dir(tmp.parent)

    def check(self) -> None:
        """Create the folder if needed, then write, read back and delete a probe file."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise_if_no_space(error, self.root)
            raise _oserror(error, "create the folder", self.root) from None
        if not self.root.is_dir():
            raise StorageError(f"{self.root} is not a folder: point the storage at a folder.")
        probe = _PROBE_PREFIX + secrets.token_hex(8)
        payload = secrets.token_bytes(64)
        self.put_atomic(probe, payload)
        try:
            if self.read_bytes(probe, limit=len(payload)) != payload:
                raise StorageError(
                    f"{self.root} returned other bytes than were written to it: the disk or "
                    "the filesystem is failing."
                )
        finally:
            self.delete(probe)

"""Back up a local directory: our walk chooses the files, GNU tar writes the stream.

The walk (os.scandir, sorted, no links followed) applies the exclude globs, skips FIFOs,
sockets and devices with a warning naming each, and counts what there is for progress.
It hands the names, NUL-separated, to GNU tar, which writes a PAX stream without
atime/ctime records and with integer mtimes; we read that stream once, hashing each file
as it passes (TarScanner) on its way to the compressor. GNU tar does the per-file work
in C, several times faster than Python's tarfile on small files.
"""

from __future__ import annotations

import contextlib
import functools
import operator
import os
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import BinaryIO

from ..errors import ArchiveError, SourceError
from ..locations import DIRECTORY
from ..manifest import DIR, FILE, HARDLINK, SYMLINK, Entry
from ..tarstream import TarScanner
from .base import (
    PLAN_LIST_LIMIT,
    WARNING_LIMIT,
    Command,
    Excludes,
    Output,
    Plan,
    SourceDriver,
    checked,
    command_env,
    entry_for,
)
from .changes import ChangeFilter, StatSpool

# tar's messages about one file that did not stop the archive: the file is skipped or
# stored as far as it could be read, and the stream stays valid.
_FILE_WARNINGS = (
    "file changed as we read it",
    "File removed before we read it",
    "Cannot open",
    "Cannot stat",
    "Cannot readlink",
    "Cannot savedir",
    "File shrank by",
    "socket ignored",
    "Read error",
)
_NOISE = ("Exiting with failure status due to previous errors",)

# Records of 64 KiB: fewer, larger pipe writes than tar's default 10 KiB, and the
# end-of-archive padding stays small.
_BLOCKING_FACTOR = "128"

_by_name = operator.attrgetter("name")

_SPECIAL = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


@functools.cache
def _check_gnu_tar() -> None:
    try:
        version = subprocess.run(
            ["tar", "--version"], capture_output=True, env=command_env(), timeout=30
        ).stdout
    except FileNotFoundError:
        raise SourceError("GNU tar was not found on this worker's PATH; install it.") from None
    if b"GNU tar" not in version:
        raise SourceError("The tar on this worker's PATH is not GNU tar; install GNU tar.")


class Walk:
    """A sorted, depth-first walk of a tree that applies excludes and skips special files.

    Iterate it for (relative path, is_file, size); afterwards `files`, `bytes`, `dirs`,
    `excluded`, `excluded_count` and `skipped` describe what was found.
    """

    def __init__(self, root: str, excludes: Excludes, *, skip: str | None = None) -> None:
        self.root = root
        self.excludes = excludes
        self.skip = skip
        self.files = 0
        self.bytes = 0
        self.dirs = 0
        self.excluded: list[str] = []
        self.excluded_count = 0
        self.skipped: list[str] = []
        self.problems: list[str] = []
        self.unlisted = 0

    def _note(self, notes: list[str], message: str) -> None:
        if len(notes) < WARNING_LIMIT:
            notes.append(message)
        else:
            self.unlisted += 1

    def _exclude(self, path: str) -> None:
        self.excluded_count += 1
        if len(self.excluded) < PLAN_LIST_LIMIT:
            self.excluded.append(path)

    def _scan(self, folder: str, prefix: str) -> list[os.DirEntry]:
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError as error:
            self._note(self.problems, f"{prefix or '.'}: cannot list the folder: {error.strerror}")
            return []
        entries.sort(key=_by_name)
        return entries

    def __iter__(self) -> Iterator[tuple[str, str, int, os.stat_result]]:
        """Yield (relative path, type, size, stat) in tar's order; type as in a manifest."""
        excludes = self.excludes
        linked: set[tuple[int, int]] = set()
        # A stack of (prefix, entries, index) gives tar's order: a folder, then its contents.
        stack = [("", self._scan(self.root, ""), 0)]
        while stack:
            prefix, entries, index = stack.pop()
            while index < len(entries):
                entry = entries[index]
                index += 1
                name = entry.name
                path = prefix + name
                if excludes and excludes(path, name):
                    self._exclude(path)
                    continue
                try:
                    if entry.is_file(follow_symlinks=False):
                        info = entry.stat(follow_symlinks=False)
                        size = info.st_size
                        if info.st_nlink > 1:
                            # tar stores the data of a hard-linked file once.
                            key = (info.st_dev, info.st_ino)
                            if key in linked:
                                yield path, HARDLINK, 0, info
                                continue
                            linked.add(key)
                        self.files += 1
                        self.bytes += size
                        yield path, FILE, size, info
                    elif entry.is_dir(follow_symlinks=False):
                        if entry.path == self.skip:
                            continue  # the archive folder itself, inside the source
                        self.dirs += 1
                        yield path, DIR, 0, entry.stat(follow_symlinks=False)
                        stack.append((prefix, entries, index))
                        stack.append((path + "/", self._scan(entry.path, path), 0))
                        break
                    elif entry.is_symlink():
                        yield path, SYMLINK, 0, entry.stat(follow_symlinks=False)
                    else:
                        mode = entry.stat(follow_symlinks=False).st_mode
                        what = _SPECIAL.get(stat.S_IFMT(mode), "not a regular file")
                        self._note(self.skipped, f"{path}: skipped, {what} cannot be backed up")
                except FileNotFoundError:
                    continue  # removed while we walked: nothing to back up
                except OSError as error:
                    self._note(self.problems, f"{path}: cannot be read: {error.strerror}")


class DirectoryDriver(SourceDriver):
    """A local directory tree."""

    def __init__(
        self,
        location: str,
        *,
        excludes: Sequence[str] = (),
        dest_dir: str | None = None,
        base: Mapping[str, Entry] | None = None,
        rehash: bool = False,
    ) -> None:
        """Read the tree at `location`; with `base` (a tree as of an earlier backup, by
        path), stream only what is new or changed since it (see `changes`)."""
        checked(DIRECTORY, location)
        self.root = location
        self.excludes = Excludes(excludes)
        self.scratch = dest_dir
        self.base = base
        self.rehash = rehash
        # Backing up a tree that holds the archive folder must not archive the archive.
        self.skip = None
        if dest_dir is not None:
            real_root = os.path.realpath(location)
            real_dest = os.path.realpath(dest_dir)
            if real_dest.startswith(real_root.rstrip("/") + "/"):
                self.skip = os.path.join(location, os.path.relpath(real_dest, real_root))

    def plan(self) -> Plan:
        """Walk the tree and return its totals, exclusions and skipped special files."""
        walk = Walk(self.root, self.excludes, skip=self.skip)
        for _ in walk:
            pass
        return Plan(
            kind=DIRECTORY,
            location=self.root,
            files=walk.files,
            bytes=walk.bytes,
            excluded=walk.excluded,
            excluded_count=walk.excluded_count,
            skipped=walk.skipped + walk.problems,
            notes=[f"{walk.dirs} folders"],
        )

    @staticmethod
    def _write_names(
        walk: Walk,
        names: BinaryIO,
        check: Callable[[], None],
        stats: StatSpool,
        changes: ChangeFilter | None,
    ) -> None:
        """Write the paths tar is to store, NUL-terminated, checking for a cancel as it goes.

        Without `changes` that is every walked path; with it, only the new and changed.
        """
        batch: list[bytes] = []
        fsencode = os.fsencode
        record = stats.add
        changed = changes.changed if changes is not None else None
        for path, kind, size, info in walk:
            if changed is not None and not changed(path, kind, size, info):
                continue
            name = fsencode(path)
            record(name, info)
            batch.append(name)
            if len(batch) >= 2048:
                batch.append(b"")
                names.write(b"\0".join(batch))
                batch.clear()
                check()
        if batch:
            batch.append(b"")
            names.write(b"\0".join(batch))
        names.flush()

    def stream(self, out: Output) -> None:
        """Stream the tree through GNU tar into `out`, hashing every file once."""
        _check_gnu_tar()
        argv = [
            "tar",
            "--create",
            "--file=-",
            "--format=pax",
            f"--blocking-factor={_BLOCKING_FACTOR}",
            "--pax-option=delete=atime,delete=ctime,delete=mtime",
            "--no-recursion",
            "--ignore-failed-read",
            f"--directory={self.root}",
            "--null",
            "--verbatim-files-from",
            "--no-unquote",
            "--files-from=-",
        ]
        walk = Walk(self.root, self.excludes, skip=self.skip)
        add = out.add
        progress = out.progress
        files = 0

        changes = (
            ChangeFilter(self.root, self.base, rehash=self.rehash)
            if self.base is not None
            else None
        )
        stats = StatSpool(self.scratch)
        annotate = stats.annotate

        def on_member(member) -> None:
            nonlocal files
            entry = entry_for(member)
            if entry is not None:
                annotate(entry)
                add(entry)
                if entry.type == "file":
                    files += 1
                    progress.current = entry.path

        scanner = TarScanner(on_member=on_member)
        feed = scanner.feed
        write = out.write
        advance = out.advance

        def consume(chunk: memoryview) -> None:
            feed(chunk)
            write(chunk)
            advance(bytes_done=scanner.payload_bytes, files_done=files)

        # The walk comes first, into an unnamed temporary file that becomes tar's stdin:
        # totals are known before the first byte, memory stays flat on huge trees, and no
        # thread competes with the stream for the interpreter.
        with (
            contextlib.closing(stats),
            tempfile.TemporaryFile(dir=self.scratch, prefix=".names-") as names,
        ):
            self._write_names(walk, names, out.hooks.check, stats, changes)
            stats.rewind()
            if changes is None:
                out.totals(files=walk.files, bytes=walk.bytes)
            else:
                out.totals(files=changes.files, bytes=changes.bytes)
                out.deleted = changes.deleted()
                for path in changes.silent_changes:
                    out.warn(
                        f"{path}: its content changed while its size, mtime, inode and ctime "
                        "did not; stored again"
                    )
            names.seek(0)
            with Command(argv, what=f"the directory {self.root}", stdin=names) as command:
                command.pump(consume, out.hooks.check)
                status = command.wait(out.hooks.check)
                if status not in (0, 1):
                    raise command.failure(status)
                try:
                    scanner.close()
                except ArchiveError as error:
                    reason = "; ".join(command.stderr_lines(5)) or "tar gave no reason"
                    raise SourceError(
                        f"tar's output for {self.root} ended early ({error}); {reason}"
                    ) from None
                for message in walk.skipped + walk.problems:
                    out.warn(message)
                out.suppressed += walk.unlisted
                for line in command.iter_stderr():
                    message = line[5:] if line.startswith("tar: ") else line
                    if any(noise in message for noise in _NOISE):
                        continue
                    if not any(known in message for known in _FILE_WARNINGS):
                        message = f"tar: {message}"
                    out.warn(message)
        if walk.excluded_count:
            out.hooks.log(f"excluded {walk.excluded_count} path(s) matching the exclude globs")
        out.advance(bytes_done=scanner.payload_bytes, files_done=files)

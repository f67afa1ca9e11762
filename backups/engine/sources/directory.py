"""Back up a local directory: our walk chooses the files, GNU tar writes the stream.

The walk (os.scandir, sorted, no links followed) applies the exclude globs, skips FIFOs,
sockets and devices with a warning naming each, and counts what there is for progress.
It hands the names, NUL-separated, to GNU tar as it goes (in the loop that reads tar's
output), and tar writes a PAX stream without atime/ctime records and with integer mtimes;
we read that stream once, hashing each file as it passes (TarScanner) on its way to the
compressor. GNU tar does the per-file work
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

from ..errors import ArchiveError, SourceError
from ..locations import DIRECTORY
from ..manifest import DIR, FILE, HARDLINK, SYMLINK, Entry
from ..tarstream import TarScanner
from .base import (
    CHUNK,
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
# Names handed to tar per turn of the loop that also reads its output.
_NAMES_BATCH = 1024
# Below this many bytes of names not yet taken by tar, the walk goes on even while tar's
# output waits to be read, so tar never waits for names.
_NAMES_LOW = 64 << 10

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

        def walked() -> None:
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

        # The walk runs in the loop that reads tar's output, whenever no output waits:
        # tar starts on the first names rather than after the whole walk, and the walk
        # takes the time the loop would spend waiting for tar. It still runs ahead of tar
        # (the totals are known early), into temporary files, so memory stays flat; no
        # thread competes with the stream for the interpreter.
        names = _Names(walk, out.hooks.check, stats, changes, walked, self.scratch)
        with (
            contextlib.closing(stats),
            contextlib.closing(names),
            Command(argv, what=f"the directory {self.root}", stdin=True) as command,
        ):
            command.pump(consume, out.hooks.check, names)
            status = command.wait(out.hooks.check)
            if status not in (0, 1) or not names.ended:
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


class _Names:
    """The paths tar is to store, NUL-terminated: walked into a temporary file as the
    pump asks for more, and handed to tar's stdin from there as tar takes them.

    Without `changes` that is every walked path; with it, only the new and changed.
    `done` runs once the walk has ended. A name's stat is in `stats` before tar can see
    the name.
    """

    def __init__(
        self,
        walk: Walk,
        check: Callable[[], None],
        stats: StatSpool,
        changes: ChangeFilter | None,
        done: Callable[[], None],
        folder: str | None,
    ) -> None:
        self._walked = iter(walk)
        self._check = check
        self._stats = stats
        self._changed = changes.changed if changes is not None else None
        self._done = done
        # Closed by close(); it lives as long as the stream.
        self._file = tempfile.TemporaryFile(dir=folder, prefix=".names-")  # noqa: SIM115
        self._made = 0  # bytes in the file
        self._sent = 0  # bytes of it written to tar
        self._window = memoryview(b"")  # read back from the file at _sent, not yet written
        self.ended = False

    def more(self) -> bool:
        """Walk the next batch of paths; return False once the walk has ended."""
        self._check()
        changed = self._changed
        record = self._stats.add
        fsencode = os.fsencode
        batch: list[bytes] = []
        ended = True
        for path, kind, size, info in self._walked:
            if changed is not None and not changed(path, kind, size, info):
                continue
            name = fsencode(path)
            record(name, info)
            batch.append(name)
            if len(batch) >= _NAMES_BATCH:
                ended = False
                break
        if batch:
            self._stats.flush()
            batch.append(b"")
            data = b"\0".join(batch)
            self._file.write(data)
            self._file.flush()
            self._made += len(data)
        if ended:
            self.ended = True
            self._done()
        return not ended

    def low(self) -> bool:
        """Return whether tar is close to running out of names."""
        return self._made - self._sent < _NAMES_LOW

    def pending(self) -> memoryview:
        """Return names made and not yet written to tar."""
        if not self._window and self._sent < self._made:
            self._window = memoryview(
                os.pread(self._file.fileno(), min(self._made - self._sent, CHUNK), self._sent)
            )
        return self._window

    def sent(self, count: int) -> None:
        """Record that tar took the first `count` bytes of `pending()`."""
        self._sent += count
        self._window = self._window[count:]

    def close(self) -> None:
        """Remove the names."""
        self._file.close()

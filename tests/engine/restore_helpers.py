"""Archives, manifests and trees for the restore and verify tests.

Archives are made the way a user could make them by hand: GNU tar piped into zstd (or
gzip, or nothing), or `tarfile` for hostile ones, plus a manifest written with the
engine's manifest module and a `.sha256` checksum file. Nothing here depends on the backup
side of the engine.
"""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import stat
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from backups.engine.hooks import Hooks, RecordingHooks
from backups.engine.manifest import Entry, build_spool, sidecar_text, write_manifest
from backups.engine.tarstream import Member, TarScanner, normalise

NON_UTF8 = os.fsdecode(b"caf\xe9-latin1.txt")
MTIME = 1_600_000_000


def tar_member(
    name: str, kind: str = "file", target: str | None = None, *, size: int = 0, sha256=None
) -> Member:
    """Return a member as the tar scanner would report it, owned by root, mode 0644."""
    return Member(
        path=name,
        type=kind,
        size=size,
        mode=0o644,
        mtime=0,
        target=target,
        uid=0,
        gid=0,
        uname="",
        gname="",
        raw_name=name,
        sha256=sha256,
    )


@dataclass
class Archive:
    """An archive on disk with its manifest and checksum file."""

    archive: Path
    manifest: Path

    @property
    def sidecar(self) -> Path:
        """The `.sha256` checksum file next to the archive."""
        return self.archive.with_name(self.archive.name + ".sha256")


def make_tree(root: Path) -> Path:
    """Build a small tree that exercises everything a restore must keep faithfully."""
    root.mkdir(parents=True)
    (root / "docs").mkdir()
    (root / "docs" / "readme.txt").write_text("hello\n")
    (root / "docs" / "big.bin").write_bytes(os.urandom(300_000))
    (root / "docs" / "nested" / "deeper").mkdir(parents=True)
    (root / "docs" / "nested" / "deeper" / "leaf.txt").write_text("leaf\n" * 100)
    (root / "empty-dir").mkdir()
    (root / "empty-file").write_bytes(b"")
    (root / "script.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "script.sh", 0o750)
    (root / "private.key").write_text("secret\n")
    os.chmod(root / "private.key", 0o600)
    (root / "sticky").mkdir()
    os.chmod(root / "sticky", 0o1777)
    os.symlink("docs/readme.txt", root / "link-relative")
    os.symlink("/etc/hostname", root / "link-absolute")
    os.symlink("does/not/exist", root / "link-dangling")
    os.link(root / "docs" / "readme.txt", root / "hardlink-to-readme")
    (root / NON_UTF8).write_bytes(b"latin-1 name\n")
    (root / "unicode-é.txt").write_text("unicode name\n")
    for number in range(20):
        (root / "many" / f"{number % 3}").mkdir(parents=True, exist_ok=True)
        (root / "many" / f"{number % 3}" / f"file-{number}.txt").write_text(f"{number}\n" * 50)
    (root / "readonly-dir").mkdir()
    (root / "readonly-dir" / "inside.txt").write_text("inside\n")
    os.chmod(root / "readonly-dir", 0o555)
    stamp_tree(root)
    return root


def stamp_tree(root: Path, when: int = MTIME) -> None:
    """Give every entry a distinct, known mtime (folders last, so theirs stick)."""
    paths = sorted(_walk(root), key=lambda path: -len(path.parts))
    for offset, path in enumerate(paths):
        os.utime(path, (when + offset, when + offset), follow_symlinks=False)
    os.utime(root, (when - 1, when - 1))


def _walk(root: Path):
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            yield Path(folder) / name


def snapshot(root: Path) -> dict[str, tuple]:
    """Describe a tree for comparison: type, mode, mtime, contents or link, hardlink group."""
    result = {}
    inodes: dict[int, str] = {}
    for path in sorted(_walk(root)):
        info = os.lstat(path)
        relative = os.fsdecode(os.fsencode(path.relative_to(root)))
        mode = stat.S_IMODE(info.st_mode)
        if stat.S_ISLNK(info.st_mode):
            result[relative] = ("symlink", os.readlink(path), int(info.st_mtime))
        elif stat.S_ISDIR(info.st_mode):
            result[relative] = ("dir", mode, int(info.st_mtime))
        else:
            first = inodes.setdefault(info.st_ino, relative) if info.st_nlink > 1 else None
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            result[relative] = ("file", mode, int(info.st_mtime), digest, first)
    return result


def entries_of(tar_bytes_or_path) -> list[Entry]:
    """Return manifest entries for a tar stream, member by member (the root left out)."""
    entries: list[Entry] = []

    def on_member(member) -> None:
        if member.path in (".", ""):
            return
        target = member.target
        if member.type == "hardlink" and target is not None:
            target = normalise(target)
        entries.append(
            Entry(
                path=member.path,
                type=member.type
                if member.type in ("file", "dir", "symlink", "hardlink")
                else "file",
                size=member.size,
                mode=member.mode,
                mtime=member.mtime,
                sha256=member.sha256,
                target=target,
            )
        )

    scanner = TarScanner(on_member=on_member)
    if isinstance(tar_bytes_or_path, bytes | bytearray):
        scanner.feed(tar_bytes_or_path)
    else:
        with open(tar_bytes_or_path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                scanner.feed(chunk)
    scanner.close()
    return entries


def gnu_tar(source: Path) -> bytes:
    """Return a PAX tar of `source` made by GNU tar, paths relative to its root."""
    return subprocess.run(
        ["tar", "--format=pax", "-cf", "-", "-C", str(source), "."],
        check=True,
        capture_output=True,
    ).stdout


def compress(data: bytes, compression: str) -> bytes:
    """Compress with the command-line tools a user would use."""
    if compression == "zstd":
        return subprocess.run(
            ["zstd", "-q", "-3", "-c"], input=data, check=True, capture_output=True
        ).stdout
    if compression == "gzip":
        return subprocess.run(["gzip", "-c"], input=data, check=True, capture_output=True).stdout
    return data


SUFFIX = {"zstd": ".tar.zst", "gzip": ".tar.gz", "none": ".tar"}


def write_archive(
    folder: Path,
    tar_bytes: bytes,
    *,
    stem: str = "20250101T000000Z-1",
    compression: str = "zstd",
    entries: list[Entry] | None = None,
    kind: str = "directory",
    location: str = "/srv/data",
    suffix: str | None = None,
    payload: bytes | None = None,
) -> Archive:
    """Write an archive of `tar_bytes`, its checksum file and its manifest into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    stored = payload if payload is not None else compress(tar_bytes, compression)
    archive = folder / f"{stem}{suffix or SUFFIX[compression]}"
    archive.write_bytes(stored)
    digest = hashlib.sha256(stored).hexdigest()
    (folder / f"{archive.name}.sha256").write_bytes(sidecar_text(digest, archive.name))
    if entries is None:
        entries = entries_of(tar_bytes)
    header = {
        "run": 1,
        "source": {"name": "test", "kind": kind, "location": location},
        "started_at": "2025-01-01T00:00:00Z",
        "finished_at": "2025-01-01T00:00:01Z",
        "archive": {
            "name": archive.name,
            "size": len(stored),
            "sha256": digest,
            "compression": compression,
        },
    }
    manifest = folder / f"{stem}.manifest.json"
    spool = build_spool(entries)
    try:
        write_manifest(manifest, header, spool)
    finally:
        spool.close()
    return Archive(archive=archive, manifest=manifest)


def archive_of(source: Path, folder: Path, **options) -> Archive:
    """Archive a folder with GNU tar (and zstd unless told otherwise)."""
    return write_archive(folder, gnu_tar(source), location=str(source), **options)


def hostile_tar(build) -> bytes:
    """Return the bytes of a tar made by `build(add)`, where add(info, data=b"") appends."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add(name, kind=tarfile.REGTYPE, data=b"", linkname="", mode=0o644):
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = mode
            info.mtime = MTIME
            info.linkname = linkname
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        build(add)
    return buffer.getvalue()


def make_database(path: Path, rows: int = 100, *, wal: bool = False) -> Path:
    """Create a SQLite database with a `projects` table of `rows` rows."""
    with sqlite3.connect(path) as db:
        if wal:
            db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE projects (id INTEGER PRIMARY KEY, name TEXT)")
        db.executemany(
            "INSERT INTO projects (name) VALUES (?)", [(f"project {n}",) for n in range(rows)]
        )
    db.close()
    return path


def database_archive(database: Path, folder: Path, **options) -> Archive:
    """Archive a consistent snapshot of a SQLite database as a one-member tar."""
    snapshot_dir = folder / "snapshot-src"
    snapshot_dir.mkdir(parents=True)
    snapshot_path = snapshot_dir / database.name
    source, dest = sqlite3.connect(database), sqlite3.connect(snapshot_path)
    source.backup(dest)
    source.close()
    dest.close()
    tar_bytes = subprocess.run(
        ["tar", "--format=pax", "-cf", "-", "-C", str(snapshot_dir), database.name],
        check=True,
        capture_output=True,
    ).stdout
    return write_archive(folder, tar_bytes, kind="sqlite", location=str(database), **options)


def count_rows(path: Path) -> int:
    """Return the number of rows in `projects`."""
    with sqlite3.connect(path) as db:
        (count,) = db.execute("SELECT COUNT(*) FROM projects").fetchone()
    db.close()
    return count


def leftovers(folder: Path) -> list[str]:
    """Return the hidden staging, set-aside and journal names a restore left in `folder`."""
    return sorted(
        name for name in os.listdir(folder) if ".restore-" in name or "before-restore" in name
    )


class CancelAfter(Hooks):
    """Hooks that cancel the run at the n-th check and keep what they were told."""

    def __init__(self, checks: int) -> None:
        self.remaining = checks
        self.progress_seen = []
        self.warnings: list[str] = []

    def check(self) -> None:
        from backups.engine.errors import Cancelled

        self.remaining -= 1
        if self.remaining < 0:
            raise Cancelled("Cancelled by a user.")

    def progress(self, progress) -> None:
        self.progress_seen.append(
            (progress.bytes_done, progress.bytes_total, progress.files_done, progress.files_total)
        )

    def warn(self, message: str) -> None:
        self.warnings.append(message)


class CancelWhilePublishing(RecordingHooks):
    """Hooks that let a restore start publishing, then cancel it at its first check there."""

    def __init__(self) -> None:
        super().__init__()
        self.publishing = False

    def publish(self, action) -> None:
        self.publishing = True
        try:
            action()
        finally:
            self.publishing = False

    def check(self) -> None:
        from backups.engine.errors import Cancelled

        if self.publishing:
            raise Cancelled("Cancelled by a user.")

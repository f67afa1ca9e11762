"""Back up a source into an archive, its `.sha256` sidecar and its manifest.

The payload (a PAX tar stream, or a pg_dump) flows from the source driver through the
compressor; the compressed bytes are hashed on their way into `<archive>.tmp`, and each
file is hashed for the manifest in the same pass, so every byte of the source is read
once. The sidecar and the manifest are made durable first; renaming the archive into
place is the commit point, and it happens inside `hooks.publish`, which the caller fences.
A cancel, an error, a full disk or a kill leaves at most `.tmp` files, never a final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from .atomic import AtomicFile, format_bytes, free_bytes, raise_if_no_space
from .compression import KINDS as COMPRESSIONS
from .compression import archive_suffix, compressor
from .errors import EngineError, NoSpaceError
from .hooks import Hooks
from .manifest import FORMAT as MANIFEST_FORMAT
from .manifest import EntrySpool, sidecar_text
from .sources import Output, Plan, open_source
from .sources.kubernetes import parse_kubernetes_location

__all__ = [
    "BackupRequest",
    "BackupResult",
    "Plan",
    "parse_kubernetes_location",
    "plan_backup",
    "run_backup",
]

SUCCEEDED, WARNING = "succeeded", "warning"


@dataclass
class BackupRequest:
    """What to back up and where: the service layer fills it from a source and a run."""

    kind: str
    location: str
    dest_dir: Path
    stem: str
    compression: str = "zstd"
    level: int | None = None
    excludes: Sequence[str] = ()
    manifest_header: dict[str, Any] = field(default_factory=dict)
    reserve_bytes: int = 0


@dataclass
class BackupResult:
    """The published archive, its checksum and what it holds."""

    archive: Path
    sidecar: Path
    manifest: Path
    sha256: str
    size: int
    files: int
    bytes: int
    warnings: list[str]
    status: str


class _HashingWriter:
    """Hash and count the compressed bytes on their way to the archive file."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._sha = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self._sha.update(data)
        self.size += len(data)
        return self._file.write(data)

    def flush(self) -> None:
        self._file.flush()

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def plan_backup(*, kind: str, location: str, excludes: Sequence[str] = ()) -> Plan:
    """Return what a backup of the source would read (files, bytes, exclusions); write nothing."""
    return open_source(kind, location, excludes=excludes).plan()


def run_backup(request: BackupRequest, hooks: Hooks) -> BackupResult:
    """Back up `request`'s source into `request.dest_dir` and publish the archive.

    Raise an `EngineError` (SourceError, NoSpaceError, Cancelled, FencedError...) when
    the run fails; nothing with a final name is left behind then.
    """
    if request.compression not in COMPRESSIONS:
        raise EngineError(
            f"Unknown compression {request.compression!r}: use one of {', '.join(COMPRESSIONS)}."
        )
    stem = request.stem
    if not stem or "/" in stem or stem.startswith("."):
        raise EngineError(f"Invalid archive stem {stem!r}.")
    dest = Path(request.dest_dir)
    source = open_source(
        request.kind, request.location, excludes=request.excludes, dest_dir=dest, stem=stem
    )
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise_if_no_space(error, dest)
        raise EngineError(f"Cannot create the archive folder {dest}: {error.strerror}.") from None
    _check_reserve(dest, request.reserve_bytes)

    archive = dest / (stem + archive_suffix(source.payload, request.compression))
    sidecar = archive.with_name(archive.name + ".sha256")
    manifest = dest / f"{stem}.manifest.json"
    for path in (archive, sidecar, manifest):
        if os.path.lexists(path):
            raise EngineError(f"{path} already exists; a backup never overwrites an archive.")
    hooks.check()
    hooks.log(f"writing {archive.name}")
    # The spool is an unnamed temporary file on the archive's volume: it needs about the
    # manifest's size, and a crash leaves nothing behind.
    spool = EntrySpool(dest)
    try:
        return _write(request, source, hooks, spool, archive, sidecar, manifest)
    finally:
        spool.close()
        source.cleanup()


def _write(request, source, hooks, spool, archive, sidecar, manifest) -> BackupResult:
    with contextlib.ExitStack() as stack:
        try:
            archive_file = stack.enter_context(AtomicFile(archive))
            hashed = _HashingWriter(archive_file.file)
            stream = compressor(request.compression, hashed, request.level)
            out = Output(stream, spool, hooks)
            source.stream(out)
            hooks.check()
            stream.close()
            archive_file.finish()
        except OSError as error:
            raise_if_no_space(error, archive)
            raise EngineError(f"Writing {archive} failed: {error}") from error
        out.flush_progress()
        out.finish_warnings()
        digest, size = hashed.hexdigest(), hashed.size

        header = {"format": MANIFEST_FORMAT, **request.manifest_header}
        header["finished_at"] = datetime.now(UTC).isoformat()
        header["archive"] = {
            "name": archive.name,
            "size": size,
            "sha256": digest,
            "compression": request.compression,
        }
        try:
            sidecar_file = stack.enter_context(AtomicFile(sidecar, buffering=-1))
            manifest_file = stack.enter_context(AtomicFile(manifest))
            sidecar_file.file.write(sidecar_text(digest, archive.name))
            sidecar_file.finish()
            spool.write(manifest_file.file, header)
            manifest_file.finish()
        except OSError as error:
            raise_if_no_space(error, manifest)
            raise EngineError(f"Writing {manifest} failed: {error}") from error
        hooks.check()

        def commit() -> None:
            # The sidecar and manifest reach their names (and the disk) first, so an
            # archive under its final name always has both beside it.
            sidecar_file.publish()
            manifest_file.publish()
            try:
                archive_file.publish()
            except BaseException:
                if not os.path.lexists(archive):
                    for path in (sidecar, manifest):
                        with contextlib.suppress(OSError):
                            os.unlink(path)
                raise

        hooks.publish(commit)

    return BackupResult(
        archive=archive,
        sidecar=sidecar,
        manifest=manifest,
        sha256=digest,
        size=size,
        files=spool.files,
        bytes=spool.bytes,
        warnings=list(out.warnings),
        status=WARNING if out.warnings else SUCCEEDED,
    )


def _check_reserve(dest: Path, reserve: int) -> None:
    """Refuse up front when the destination has less free space than the run needs."""
    if reserve <= 0:
        return
    free = free_bytes(dest)
    if free < reserve:
        raise NoSpaceError(
            f"Not enough free space in {dest}: {format_bytes(free)} free, and this backup "
            f"needs about {format_bytes(reserve)} (the last archive's size plus the reserve). "
            "Free some space or move ARCHIVE_ROOT to a larger volume; nothing was written."
        )

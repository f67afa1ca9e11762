"""Back up a source into an archive, its `.sha256` sidecar and its manifest, in a storage.

The payload (a PAX tar stream, or a pg_dump) flows from the source driver through the
compressor, then (for a policy with age recipients) the encryption; the stored bytes are
hashed on their way into the storage's upload (`<archive>.tmp` in a local folder, a
multipart upload on S3), and each file is hashed for the manifest in the same pass, so
every byte of the source is read once. The sidecar and the manifest are made durable
first; publishing the archive is the commit point, and it happens inside
`hooks.publish`, which the caller fences. A cancel, an error, a full disk or a kill leaves
at most incomplete writes (which `Storage.pending` lists), never a final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from .atomic import format_bytes, free_bytes, raise_if_no_space
from .chain import Delta
from .compression import KINDS as COMPRESSIONS
from .compression import archive_suffix, compressor
from .crypto import SUFFIX as AGE_SUFFIX
from .crypto import THREAD, EncryptingWriter, stream_mode
from .crypto.stream import canonical_recipients
from .errors import EngineError, NoSpaceError
from .hooks import Hooks
from .locations import DIRECTORY
from .manifest import FORMAT as MANIFEST_FORMAT
from .manifest import FULL, EntrySpool, ManifestReader, manifest_name, sidecar_text
from .sources import Output, Plan, open_source
from .sources.kubernetes import parse_kubernetes_location
from .storage import LocalStorage, Storage, StoredFile, Upload, check_key
from .storage.base import join_key

__all__ = [
    "BackupRequest",
    "BackupResult",
    "Plan",
    "parse_kubernetes_location",
    "plan_backup",
    "run_backup",
]

SUCCEEDED, WARNING = "succeeded", "warning"


@dataclass(kw_only=True)
class BackupRequest:
    """What to back up and where: the service layer fills it from a source and a run.

    The archive goes to `storage`, under the folder `folder` (the source's slug):
    `<folder>/<stem>.tar.zst` with its `.sha256` and `<stem>.manifest.json` beside it.
    `scratch_dir` is a local folder for what the run keeps while it works (the manifest's
    spool, a database snapshot); for a local storage it defaults to the archive folder,
    any other storage needs one. `dest_dir` alone is the same as a local storage of that
    folder with no `folder`.

    With `recipients` (age public keys) the archive and the manifest are encrypted:
    `….tar.zst.age` and `<stem>.manifest.json.age`; the sidecar holds the sha256 of the
    encrypted archive. `size_hint` (the last archive's size) picks where the encryption
    runs (see crypto.stream_mode). `reserve_bytes` is the free space a local folder must
    have before anything is written.

    `catalog`, when set, is called once the archive is published with the manifest as a
    ManifestReader over the run's own spool: the plaintext, readable without any key.
    It must handle its own errors: the backup is published by then.
    """

    kind: str
    location: str
    stem: str
    storage: Storage | None = None
    folder: str = ""
    scratch_dir: Path | None = None
    dest_dir: Path | None = None
    compression: str = "zstd"
    level: int | None = None
    excludes: Sequence[str] = ()
    manifest_header: dict[str, Any] = field(default_factory=dict)
    reserve_bytes: int = 0
    recipients: Sequence[str] = ()
    size_hint: int | None = None
    catalog: Callable[[ManifestReader], None] | None = None
    delta: Delta | None = None
    rehash: bool = False

    def target(self) -> tuple[Storage, str, Path]:
        """Return the storage, the folder in it, and the local scratch folder."""
        if self.storage is None:
            if self.dest_dir is None:
                raise EngineError("A backup needs a storage (or a destination folder).")
            storage, folder = LocalStorage(self.dest_dir), ""
        else:
            storage, folder = self.storage, self.folder
        if folder:
            check_key(folder, folder=True)
        if self.scratch_dir is not None:
            scratch = Path(self.scratch_dir)
        elif isinstance(storage, LocalStorage):
            scratch = storage.path(folder, folder=True)
        else:
            raise EngineError(
                f"A backup to {storage.describe()} needs a local scratch folder for its "
                "manifest spool and snapshots."
            )
        return storage, folder, scratch


@dataclass
class BackupResult:
    """The published archive, its checksum and what it holds.

    `archive_key`, `sidecar_key` and `manifest_key` are keys in `storage`; `locator` is
    where plain tools find the archive (a path, `s3://…`). For a local storage `archive`,
    `sidecar` and `manifest` are the files' paths. `recipients` is empty for an archive
    that is not encrypted.
    """

    storage: Storage
    archive_key: str
    sidecar_key: str
    manifest_key: str
    locator: str
    sha256: str
    size: int
    files: int
    bytes: int
    warnings: list[str]
    status: str
    recipients: list[str] = field(default_factory=list)

    @property
    def encrypted(self) -> bool:
        """Return whether the archive and its manifest are age-encrypted."""
        return bool(self.recipients)

    def stored(self, key: str) -> StoredFile:
        """Return one of the backup's files (`archive_key`, ...) as a file in the storage."""
        return StoredFile(self.storage, key)

    def _local(self, key: str) -> Path:
        if not isinstance(self.storage, LocalStorage):
            raise EngineError(f"{self.storage.locator(key)} is not in a local folder.")
        return self.storage.path(key)

    @property
    def archive(self) -> Path:
        """Return the archive's path (local storage only)."""
        return self._local(self.archive_key)

    @property
    def sidecar(self) -> Path:
        """Return the checksum file's path (local storage only)."""
        return self._local(self.sidecar_key)

    @property
    def manifest(self) -> Path:
        """Return the manifest's path (local storage only)."""
        return self._local(self.manifest_key)


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
    """Back up `request`'s source into its storage and publish the archive.

    Raise an `EngineError` (SourceError, StorageError, NoSpaceError, KeyFileError,
    Cancelled, FencedError...) when the run fails; nothing with a final name is left
    behind then.
    """
    if request.compression not in COMPRESSIONS:
        raise EngineError(
            f"Unknown compression {request.compression!r}: use one of {', '.join(COMPRESSIONS)}."
        )
    stem = request.stem
    if not stem or "/" in stem or stem.startswith("."):
        raise EngineError(f"Invalid archive stem {stem!r}.")
    recipients = canonical_recipients(request.recipients) if request.recipients else []
    storage, folder, scratch = request.target()
    local_folder = storage.path(folder, folder=True) if isinstance(storage, LocalStorage) else None
    source = open_source(
        request.kind,
        request.location,
        excludes=request.excludes,
        # A tree that holds the archive folder must not archive the archive.
        dest_dir=local_folder if request.kind == DIRECTORY and local_folder else scratch,
        stem=stem,
        base=request.delta.tree if request.delta is not None else None,
        rehash=request.rehash,
    )
    try:
        scratch.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise_if_no_space(error, scratch)
        raise EngineError(f"Cannot create the folder {scratch}: {error.strerror}.") from None
    if local_folder is not None:
        _check_reserve(_nearest_folder(local_folder), request.reserve_bytes)

    suffix = archive_suffix(source.payload, request.compression)
    suffix += AGE_SUFFIX if recipients else ""
    archive = join_key(folder, stem + suffix)
    keys = _Keys(
        archive=archive,
        sidecar=archive + ".sha256",
        manifest=join_key(folder, manifest_name(stem, encrypted=bool(recipients))),
    )
    for key in keys:
        if _taken(storage, key):
            raise EngineError(
                f"{storage.locator(key)} already exists; a backup never overwrites an archive."
            )
    hooks.check()
    hooks.log(f"writing {stem + suffix}")
    # The spool is an unnamed temporary file in the scratch folder: it needs about the
    # manifest's size, and a crash leaves nothing behind.
    spool = EntrySpool(scratch)
    try:
        return _write(request, source, hooks, spool, storage, keys, recipients)
    finally:
        spool.close()
        source.cleanup()


@dataclass(frozen=True)
class _Keys:
    """Where the three files of one backup go in the storage."""

    archive: str
    sidecar: str
    manifest: str

    def __iter__(self):
        return iter((self.archive, self.sidecar, self.manifest))


def _taken(storage: Storage, key: str) -> bool:
    """Return whether anything at all is at `key` (in a folder: even a link or a folder)."""
    if isinstance(storage, LocalStorage):
        return os.path.lexists(storage.path(key))
    return storage.size(key) is not None


def _write(request, source, hooks, spool, storage, keys, recipients) -> BackupResult:
    with contextlib.ExitStack() as stack:
        try:
            upload = stack.enter_context(storage.open_write(keys.archive))
            hashed = _HashingWriter(upload)
            sink = hashed
            if recipients:
                # Compress, then encrypt, then hash: the sidecar is checkable without a key.
                mode = stream_mode(request.size_hint)
                sink = stack.enter_context(EncryptingWriter(hashed, recipients, mode=mode))
            stream = compressor(request.compression, sink, request.level)
            out = Output(stream, spool, hooks)
            source.stream(out)
            hooks.check()
            stream.close()
            if sink is not hashed:
                sink.close()
            upload.finish()
        except OSError as error:
            raise _write_failed(storage, keys.archive, error) from error
        out.flush_progress()
        out.finish_warnings()
        digest, size = hashed.hexdigest(), hashed.size

        header = {"format": MANIFEST_FORMAT, **request.manifest_header, "level": FULL}
        if request.delta is not None:
            header.update(request.delta.header(), deleted=out.deleted or [])
        header["finished_at"] = datetime.now(UTC).isoformat()
        header["archive"] = {
            "name": keys.archive.rsplit("/", 1)[-1],
            "size": size,
            "sha256": digest,
            "compression": request.compression,
        }
        if recipients:
            header["encryption"] = {"format": "age", "recipients": list(recipients)}
        try:
            sidecar = stack.enter_context(storage.open_write(keys.sidecar))
            sidecar.write(sidecar_text(digest, header["archive"]["name"]))
            sidecar.finish()
            manifest = stack.enter_context(storage.open_write(keys.manifest))
            _write_manifest(manifest, spool, header, recipients)
            manifest.finish()
        except OSError as error:
            raise _write_failed(storage, keys.manifest, error) from error
        hooks.check()

        def commit() -> None:
            # The sidecar and manifest reach their names (and the disk) first, so an
            # archive under its final name always has both beside it.
            try:
                sidecar.publish()
                manifest.publish()
                upload.publish()
            except BaseException:
                _unpublish(storage, keys)
                raise

        hooks.publish(commit)

    if request.catalog is not None:
        request.catalog(spool.reader(header, storage.locator(keys.manifest)))
    return BackupResult(
        storage=storage,
        archive_key=keys.archive,
        sidecar_key=keys.sidecar,
        manifest_key=keys.manifest,
        locator=storage.locator(keys.archive),
        sha256=digest,
        size=size,
        files=spool.files,
        bytes=spool.bytes,
        warnings=list(out.warnings),
        status=WARNING if out.warnings else SUCCEEDED,
        recipients=list(recipients),
    )


def _write_manifest(upload: Upload, spool: EntrySpool, header: dict, recipients) -> None:
    """Stream the manifest into `upload`, encrypted to `recipients` when there are any."""
    if not recipients:
        spool.write(upload, header)
        return
    # A thread: the manifest is a small fraction of the archive, not worth a process.
    with EncryptingWriter(upload, recipients, mode=THREAD) as encrypted:
        spool.write(encrypted, header)


def _write_failed(storage: Storage, key: str, error: OSError) -> EngineError:
    """Return the error for a write that failed with an OSError the storage did not name."""
    if isinstance(storage, LocalStorage):
        raise_if_no_space(error, storage.path(key))
    return EngineError(f"Writing {storage.locator(key)} failed: {error}")


def _unpublish(storage: Storage, keys: _Keys) -> None:
    """Remove the sidecar and manifest of an archive whose publish failed; never raise.

    When the storage cannot say whether the archive got its name, both are left: an
    archive must never lose its checksum file and manifest.
    """
    try:
        if _taken(storage, keys.archive):
            return
    except (EngineError, OSError):
        return
    for key in (keys.sidecar, keys.manifest):
        with contextlib.suppress(EngineError, OSError):
            storage.delete(key)


def _nearest_folder(path: Path) -> Path:
    """Return `path`, or its nearest ancestor that exists (where it will be created)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


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

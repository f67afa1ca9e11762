"""Copy a published backup (archive, checksum file, manifest) to another storage, proven.

The bytes are streamed from one storage into the other's upload and hashed on the way;
the archive is published under the same key in the target only once its digest equals
the checksum file's, and then read back from the target and hashed again: the copy
counts only when what the target holds is what the checksum file says. Nothing is
decrypted or recompressed: an encrypted backup stays encrypted, byte for byte.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from .errors import ArchiveError
from .hooks import Hooks, Progress
from .manifest import parse_sidecar
from .storage import Storage, StoredFile

_PIECE = 1 << 20
_SIDECAR_LIMIT = 4096


@dataclass(frozen=True)
class CopyResult:
    """Where the copy is (`locator` of its archive), its digest and size, how long it took."""

    locator: str
    sha256: str
    size: int
    duration_s: float


def _stream(source: StoredFile, upload, hooks: Hooks, done: int, total: int | None):
    """Write `source` into `upload`; return its sha256 and the bytes done so far."""
    digest = hashlib.sha256()
    buffer = bytearray(_PIECE)
    view = memoryview(buffer)
    with source.open_read() as stream:
        while True:
            hooks.check()
            count = stream.readinto(view)
            if not count:
                break
            piece = view[:count]
            digest.update(piece)
            upload.write(piece)
            done += count
            hooks.progress(Progress(bytes_done=done, bytes_total=total, current=source.name))
    return digest.hexdigest(), done


def _hash(target: Storage, key: str, hooks: Hooks) -> str:
    """Return the sha256 of the object `key` as `target` holds it."""
    digest = hashlib.sha256()
    buffer = bytearray(_PIECE)
    view = memoryview(buffer)
    with target.open_read(key) as stream:
        while True:
            hooks.check()
            count = stream.readinto(view)
            if not count:
                return digest.hexdigest()
            digest.update(view[:count])


def copy_backup(
    *, archive: StoredFile, manifest: StoredFile, target: Storage, hooks: Hooks
) -> CopyResult:
    """Copy `archive`, its checksum file and `manifest` to the same keys in `target`.

    Raise ArchiveError when the archive read does not match its checksum file, or when
    what the target holds afterwards does not (the copy is then removed again), and
    StorageError when either storage fails; a failure leaves no object with a final name
    in the target but, after a crash, an incomplete upload the reaper aborts.
    """
    began = time.monotonic()
    sidecar = archive.sibling(archive.name + ".sha256")
    sidecar_raw = sidecar.read_bytes(limit=_SIDECAR_LIMIT)
    expected = parse_sidecar(sidecar_raw, sidecar.locator)
    archive_size = archive.size()
    manifest_size = manifest.size()
    total = None if archive_size is None or manifest_size is None else archive_size + manifest_size
    hooks.log(f"copying {archive.locator} to {target.locator(archive.key)}")
    with target.open_write(archive.key) as upload:
        sha256, done = _stream(archive, upload, hooks, 0, total)
        if sha256 != expected:
            raise ArchiveError(
                f"{archive.locator} does not match its checksum file (sha256 {sha256}, "
                f"expected {expected}): it is damaged, and was not copied."
            )
        upload.finish()
        size = upload.written
        with target.open_write(manifest.key) as manifest_upload:
            _stream(manifest, manifest_upload, hooks, done, total)
            manifest_upload.finish()
            manifest_upload.publish()
        target.put_atomic(sidecar.key, sidecar_raw)
        hooks.publish(upload.publish)
    held = _hash(target, archive.key, hooks)
    if held != expected:
        for key in (archive.key, sidecar.key, manifest.key):
            target.delete(key)
        raise ArchiveError(
            f"{target.locator(archive.key)} holds other bytes than were sent (sha256 {held}, "
            f"expected {expected}): the copy was removed; check the target storage."
        )
    return CopyResult(
        locator=target.locator(archive.key),
        sha256=held,
        size=size,
        duration_s=time.monotonic() - began,
    )

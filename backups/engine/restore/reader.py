"""Read an archive once: decompress it, hash the stored bytes, check it against its manifest.

`ArchiveReader` yields the decompressed payload, inline, from a thread or from the `zstd`
program (see `reading_mode`); `scan_archive` feeds it through a tar scanner and checks
the archive's sha256 at the end. The archive is a file in a storage (a local folder, an
S3 bucket); one named `….age` is decrypted between the hashing of the stored bytes and
the decompression, so its sha256 is that of the encrypted file, checkable without a key.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import zstandard

from .. import compression
from ..atomic import format_bytes
from ..crypto import SUFFIX as AGE_SUFFIX
from ..crypto import DecryptingReader, check_identities, stream_mode
from ..crypto.keys import Identity
from ..errors import ArchiveError, EngineError, MissingObjectError, UnsafeArchiveError
from ..manifest import MAX_SIDECAR_BYTES, Manifest, is_encrypted, parse_sidecar
from ..storage.stored import StoredFile, stored_file
from ..tarstream import TarScanner
from .children import kill_group, widen_pipe

CHUNK = 1 << 20
# Where decompression runs (see ArchiveReader, reading_mode).
INLINE, THREAD, PROCESS = "inline", "thread", "process"
_THREAD_MIN_AVERAGE = 16 << 10
# Tar headers, PAX records (times, names, a few xattrs), padding to 512 bytes, per member;
# global headers and the end-of-archive record padded to tar's 10 KiB record, overall.
_OVERHEAD_PER_ENTRY = 8 * 512
_OVERHEAD_FIXED = 4 << 20


def sidecar_path(archive: Path) -> Path:
    """Return the `.sha256` checksum file that belongs to `archive`."""
    archive = Path(archive)
    return archive.with_name(archive.name + ".sha256")


def sidecar_of(archive: StoredFile) -> StoredFile:
    """Return the `.sha256` checksum file beside `archive` in its storage."""
    return archive.sibling(archive.name + ".sha256")


def read_checksum_file(archive: StoredFile) -> str:
    """Return the sha256 recorded in the checksum file beside `archive`."""
    sidecar = sidecar_of(archive)
    try:
        raw = sidecar.read_bytes(limit=MAX_SIDECAR_BYTES)
    except MissingObjectError:
        raise ArchiveError(f"The checksum file {sidecar} is missing.") from None
    return parse_sidecar(raw, sidecar)


def archive_compression(name: str) -> str:
    """Return the compression of an archive from its name, `.age` or not."""
    return compression.compression_of(name.removesuffix(AGE_SUFFIX))


class _HashingReader(io.RawIOBase):
    """Pass reads through to a file, hashing and counting every byte."""

    def __init__(self, raw) -> None:
        self._raw = raw
        self.sha = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self._raw.readinto(buffer)
        if count:
            self.sha.update(memoryview(buffer)[:count])
            self.count += count
        return count

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        if data:
            self.sha.update(data)
            self.count += len(data)
        return data


class ArchiveReader:
    """Read an archive once: yield its payload decompressed while hashing the stored bytes.

    `limit` caps the decompressed bytes, which stops a decompression bomb or an archive
    that is larger than its manifest says. `tick` runs before every chunk, in the caller's
    thread (cancellation, timeouts).

    `mode` says where decompression runs (see `reading_mode`): "inline", in the caller's
    thread; "thread", in a thread of its own a few chunks ahead (the zstandard module
    holds the GIL while it decompresses, but hashing releases it, so the hashing on either
    side overlaps the other's work); "process", in the `zstd` program, fed by a thread
    that reads and hashes the stored bytes, so decompression runs on another core while
    the caller parses (falls back to "inline" without the program, or for gzip).

    `archive` is a file in a storage (or a local path). One named `….age` is decrypted
    with `identities` as it is read (see crypto.DecryptingReader); `recipients` (recorded
    for it) and `stored_size` (its recorded size) make the messages precise when no key
    fits or the file is damaged. Only authenticated plaintext reaches the decompressor.
    """

    def __init__(
        self,
        archive: StoredFile | Path,
        *,
        limit: int | None = None,
        tick: Callable[[], None] | None = None,
        mode: str = INLINE,
        identities: Sequence[Identity] = (),
        recipients: Sequence[str] = (),
        stored_size: int | None = None,
    ) -> None:
        self.archive = stored_file(archive)
        self.encrypted = is_encrypted(self.archive.name)
        self.compression = archive_compression(self.archive.name)
        self.limit = limit
        self.payload_bytes = 0
        self._tick = tick
        self._zstd = None
        if mode == PROCESS:
            self._zstd = shutil.which("zstd") if self.compression == compression.ZSTD else None
            mode = PROCESS if self._zstd else INLINE
        self._mode = mode
        self._child: subprocess.Popen | None = None
        self._feeder: threading.Thread | None = None
        self._feed_error: BaseException | None = None
        self._producer: threading.Thread | None = None
        self._stop = threading.Event()
        self._queue: queue.Queue | None = None
        self._identities = tuple(identities)
        self._recipients = tuple(recipients)
        self._stored_size = stored_size
        self._plain: DecryptingReader | None = None
        if self.encrypted:
            # Before a byte is read: a host without the key fails at once, saying which.
            check_identities(f"The archive {self.archive.name}", recipients, identities)
        try:
            self._file = self.archive.open_read()
        except MissingObjectError:
            raise ArchiveError(f"The archive {self.archive} is missing.") from None
        except OSError as error:
            raise ArchiveError(
                f"The archive {self.archive} cannot be read: {error.strerror}."
            ) from None
        self._hashing = _HashingReader(self._file)

    def _stored_stream(self):
        """Return what decompression reads: the hashed stored bytes, decrypted if need be."""
        if not self.encrypted:
            return self._hashing
        if self._plain is None:
            self._plain = DecryptingReader(
                self._hashing,
                self._identities,
                what=f"The archive {self.archive.name}",
                recipients=self._recipients,
                size=self._stored_size,
                mode=stream_mode(self._stored_size),
            )
        return self._plain

    def _decompressed(self) -> Iterator[bytes]:
        reader = compression.decompressor(self.compression, self._stored_stream())
        while True:
            try:
                data = reader.read(CHUNK)
            except (zstandard.ZstdError, EOFError, zlib.error, gzip.BadGzipFile) as error:
                raise ArchiveError(
                    f"The archive {self.archive.name} cannot be decompressed "
                    f"({self.compression}): {error}."
                ) from None
            except OSError as error:
                raise self._read_failed(error) from None
            if not data:
                return
            self.payload_bytes += len(data)
            if self.limit is not None and self.payload_bytes > self.limit:
                raise UnsafeArchiveError(self._too_big())
            yield data

    def chunks(self) -> Iterator[bytes]:
        """Yield the decompressed payload in chunks of up to 1 MiB."""
        if self._mode == PROCESS:
            source = self._external()
        elif self._mode == THREAD:
            source = self._read_ahead()
        else:
            source = self._decompressed()
        for data in source:
            if self._tick is not None:
                self._tick()
            yield data

    def _read_failed(self, error: BaseException) -> ArchiveError:
        if isinstance(error, ArchiveError):
            return error
        if isinstance(error, EngineError):
            return ArchiveError(str(error))
        reason = getattr(error, "strerror", None) or error
        return ArchiveError(f"Reading the archive {self.archive} failed: {reason}.")

    def _too_big(self) -> str:
        return (
            f"The archive {self.archive.name} holds more than the {format_bytes(self.limit)} "
            "its manifest accounts for; it was stopped there (a decompression bomb or an "
            "archive that does not match its manifest)."
        )

    def _external(self) -> Iterator[bytes]:
        errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
        try:
            self._child = subprocess.Popen(
                [self._zstd, "-d", "-q", "-c"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                start_new_session=True,
            )
            for pipe in (self._child.stdin, self._child.stdout):
                widen_pipe(pipe.fileno())
            self._feeder = threading.Thread(target=self._feed, daemon=True)
            self._feeder.start()
            out = io.FileIO(self._child.stdout.fileno(), closefd=False)
            while True:
                # Whole chunks, though zstd writes 128 KiB at a time: fewer steps below.
                data = bytearray(CHUNK)
                view = memoryview(data)
                size = 0
                while size < CHUNK:
                    got = out.readinto(view[size:])
                    if not got:
                        break
                    size += got
                if not size:
                    break
                self.payload_bytes += size
                if self.limit is not None and self.payload_bytes > self.limit:
                    raise UnsafeArchiveError(self._too_big())
                yield data if size == CHUNK else view[:size]
            status = self._child.wait()
            # zstd saw its input end early because reading (or decrypting) it failed.
            if self._feed_error is not None:
                raise self._read_failed(self._feed_error)
            if status != 0:
                errors.seek(0)
                text = errors.read().decode("utf-8", "replace").strip() or "no message"
                raise ArchiveError(
                    f"The archive {self.archive.name} cannot be decompressed (zstd): {text}."
                )
        finally:
            errors.close()

    def _feed(self) -> None:
        """Hash the stored bytes and hand them to zstd; keep hashing if zstd stops.

        An encrypted archive is decrypted on the way; its reader raises when the stored
        bytes fail authentication, which `finish` reports.
        """
        target = self._child.stdin.fileno()
        sending = True
        try:
            source = self._stored_stream()
            while not self._stop.is_set():
                data = source.read(CHUNK)
                if not data:
                    break
                view = memoryview(data)
                while sending and view:
                    try:
                        view = view[os.write(target, view) :]
                    except OSError:
                        sending = False
        except Exception as error:  # raised by the caller's thread, in finish
            self._feed_error = error
        finally:
            with contextlib.suppress(OSError):
                self._child.stdin.close()

    def _end_external(self, *, stop: bool) -> None:
        """Stop zstd; wait for the feeder (which hashes to the end unless `stop`)."""
        if self._child is None:
            return
        if stop:
            self._stop.set()
        kill_group(self._child)
        self._child.wait()
        with contextlib.suppress(OSError):
            self._child.stdout.close()
        if self._feeder is not None:
            self._feeder.join()
        self._child = None

    def _read_ahead(self) -> Iterator[bytes]:
        self._queue = queue.Queue(4)
        self._producer = threading.Thread(target=self._produce, daemon=True)
        self._producer.start()
        while True:
            kind, value = self._queue.get()
            if kind == "data":
                yield value
            elif kind == "end":
                return
            else:
                raise value

    def _produce(self) -> None:
        try:
            for data in self._decompressed():
                if not self._put(("data", data)):
                    return
            self._put(("end", None))
        except BaseException as error:  # handed to the consumer, which raises it
            self._put(("error", error))

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _halt(self) -> None:
        """Stop the read-ahead thread; the file is then the caller's alone again."""
        if self._producer is None:
            return
        self._stop.set()
        while self._producer.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.05)
        self._producer.join()
        self._producer = None

    def finish(self) -> str:
        """Read whatever is left of the stored file and return its sha256 (hex)."""
        self._halt()
        if self.encrypted:
            # Decryption may have stopped anywhere (damage, an early end): once it is shut
            # down the stored file is this thread's again, and the rest is hashed below.
            self._end_external(stop=True)
            self._close_plain()
        else:
            self._end_external(stop=False)
            if self._feed_error is not None:
                raise self._read_failed(self._feed_error)
        while True:
            if self._tick is not None:
                self._tick()
            try:
                data = self._hashing.read(CHUNK)
            except OSError as error:
                raise self._read_failed(error) from None
            if not data:
                break
        return self._hashing.sha.hexdigest()

    def _close_plain(self) -> None:
        if self._plain is not None:
            self._plain.close()

    def close(self) -> None:
        """Stop reading ahead and decrypting, and close the archive file."""
        self._halt()
        self._end_external(stop=True)
        self._close_plain()
        self._file.close()


def expected_sha256(
    archive: StoredFile | Path, manifest: Manifest, catalog: str | None = None
) -> str:
    """Return the archive's recorded sha256 once the manifest and checksum file agree.

    `catalog` is the sha256 the catalog recorded when the backup was written, when the
    caller has one: files beside each other can be swapped together, the catalog cannot.
    """
    archive = stored_file(archive)
    recorded = str(manifest.archive_sha256).lower()
    side = read_checksum_file(archive)
    if side != recorded:
        raise ArchiveError(
            f"The checksum file of {archive.name} says {side} but its manifest says "
            f"{recorded}: one of them was altered. Restore from another backup, or verify "
            "the archive to find out which one is right."
        )
    if catalog and catalog.lower() != recorded:
        raise ArchiveError(catalog_mismatch(archive.name, recorded, catalog))
    return recorded


def catalog_mismatch(archive_name: str, on_disk: str, catalog: str) -> str:
    """Return the sentence for an archive whose files disagree with the catalog's sha256."""
    return (
        f"The archive {archive_name}, its manifest and its checksum file say sha256 "
        f"{on_disk}, but the catalog recorded {catalog.lower()} when this backup was "
        "written: the files on disk are not the ones this backup wrote (replaced or "
        "swapped). Restore from another backup, and find out who changed the archive folder."
    )


def payload_limit(manifest: Manifest) -> int:
    """Return the most decompressed bytes an honest archive with this manifest can hold."""
    overhead = _OVERHEAD_FIXED
    for entry in manifest.entries:
        overhead += _OVERHEAD_PER_ENTRY + 2 * (len(entry.path) + len(entry.target or ""))
    return manifest.total_bytes + overhead


def scan_archive(
    reader: ArchiveReader,
    scanner: TarScanner,
    *,
    expected: str | None,
    after_chunk: Callable[[], None] | None = None,
    check_end: bool = True,
) -> str:
    """Feed a whole archive through `scanner`; return the archive's sha256.

    `scanner` is a TarScanner, or (with `check_end` off) anything with a `feed(chunk)`.

    When reading fails on damage (an ArchiveError, from decompression, the tar parser or a
    manifest check) the rest of the file is still hashed, so the message says whether the
    archive itself differs from its recorded checksum, which is the likelier cause.
    """
    try:
        for chunk in reader.chunks():
            scanner.feed(chunk)
            if after_chunk is not None:
                after_chunk()
        if check_end:
            scanner.close()
    except ArchiveError as error:
        digest = reader.finish()
        if expected is not None and digest != expected:
            raise ArchiveError(
                f"The archive {reader.archive.name} is damaged: its sha256 is {digest}, "
                f"not the {expected} recorded at backup time ({error})"
            ) from error
        raise
    digest = reader.finish()
    if expected is not None and digest != expected:
        raise ArchiveError(
            f"The archive {reader.archive.name} is damaged: its sha256 is {digest}, not the "
            f"{expected} recorded in its manifest and checksum file."
        )
    return digest


def reading_mode(manifest: Manifest) -> str:
    """Return where to decompress an archive with this manifest (see ArchiveReader).

    Many small files keep the caller's thread busy parsing, so decompression goes to the
    zstd program on another core (a thread would not help: zstandard holds the GIL). Files
    of 16 KiB and more on average leave the caller mostly hashing, which releases the GIL,
    so a thread overlaps well there, without pushing every byte through one more pipe: in
    paired runs of `bench.restore`, the Python standard library's tree (32 KiB on
    average) restored about 15 % faster this way, 50,000 files of 4.6 KiB no faster.
    """
    files = max(1, manifest.total_files)
    return THREAD if manifest.total_bytes // files >= _THREAD_MIN_AVERAGE else PROCESS

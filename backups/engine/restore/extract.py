"""Extract through GNU tar: the command, and the stream from the archive through the checks."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from ..crypto.keys import Identity
from ..manifest import Manifest
from ..storage import StoredFile
from ..tarstream import TarScanner
from .children import ProcessSink
from .member_filter import MemberFilter
from .progress import ProgressMeter
from .reader import ArchiveReader, payload_limit, reading_mode, scan_archive
from .splitter import Splitter

# Files at least this big are written directly rather than through tar (see Splitter).
_DIRECT_MIN = 1 << 20


def tar_env() -> dict:
    """Return the environment tar runs in."""
    # Names pass through byte for byte: tar converts PAX names to the locale's charset.
    return dict(os.environ, LC_ALL="C.UTF-8")


def tar_extract_argv(dest: Path, *, keep_owners: bool = True) -> list[str]:
    """Return the GNU tar command that extracts stdin into `dest` faithfully.

    Without `keep_owners` files belong to this user whoever owned them (the set-id bits
    are taken off their headers before tar reads them: see Splitter).
    """
    # --delay-directory-restore: folder modes and mtimes are set after their contents
    # (read-only folders, mtimes not bumped by later members); -p: modes exactly as stored.
    owners = [] if keep_owners else ["--no-same-owner"]
    return [
        "tar",
        "-x",
        "-p",
        *owners,
        "--delay-directory-restore",
        "-f",
        "-",
        "-C",
        os.fspath(dest),
    ]


def stream_into(
    *,
    archive: StoredFile | Path,
    manifest: Manifest,
    expected: str,
    filter_: MemberFilter,
    sink: ProcessSink | None,
    meter: ProgressMeter,
    tick: Callable[[], None],
    staging: Path | None = None,
    keep_owners: bool = True,
    identities: Sequence[Identity] = (),
    recipients: Sequence[str] = (),
    stored_size: int | None = None,
) -> str:
    """Read, check and forward a whole archive; return its sha256.

    With `staging`, big files are written there directly and the rest goes to `sink`.
    Without `keep_owners`, no member reaches the sink with a set-id bit. `identities`,
    `recipients` and `stored_size` open an encrypted archive (see ArchiveReader).
    """
    reader = ArchiveReader(
        archive,
        limit=payload_limit(manifest),
        tick=tick,
        mode=reading_mode(manifest),
        identities=identities,
        recipients=recipients,
        stored_size=stored_size,
    )
    splitter = None
    if sink is not None:
        splitter = Splitter(sink, root=staging, direct_min=_DIRECT_MIN, keep_owners=keep_owners)
        filter_.approve = splitter.approve
    scanner = TarScanner(decide=filter_.decide, on_member=filter_.on_member, sink=splitter)

    def after_chunk() -> None:
        if sink is not None:
            sink.flush()
        meter.update(scanner.payload_bytes)

    try:
        try:
            digest = scan_archive(reader, scanner, expected=expected, after_chunk=after_chunk)
        finally:
            reader.close()
        filter_.finish()
        if sink is not None:
            splitter.finish()
            sink.finish(tick)
    finally:
        if splitter is not None:
            splitter.close()
    meter.update(scanner.payload_bytes, force=True)
    return digest

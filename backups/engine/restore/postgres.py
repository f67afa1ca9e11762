"""Restore a PostgreSQL database: verify the pg_dump while decompressing it, then pg_restore."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

from ..errors import ArchiveError, EngineError
from ..manifest import Manifest
from .children import kill_group, wait_ticking
from .files import remove_path
from .reader import THREAD, ArchiveReader, expected_sha256, scan_archive
from .request import check_space, check_target
from .run import RestoreRun


class _DumpWriter:
    """Write a decompressed payload to a file, hashing it on the way (see scan_archive)."""

    def __init__(self, out) -> None:
        self.out = out
        self.sha = hashlib.sha256()

    def feed(self, chunk) -> None:
        self.sha.update(chunk)
        self.out.write(chunk)


def decompress_verified(
    archive: Path, manifest: Manifest, dest: Path, *, tick, meter, catalog_sha256=None
) -> str:
    """Decompress a single-payload archive (a pg_dump) into `dest`, verifying as it goes.

    Return the archive's sha256; raise ArchiveError when the archive, its size or (when
    the manifest lists one file) the payload's sha256 does not match, or when the
    archive is not the one whose sha256 the catalog recorded (`catalog_sha256`).
    """
    expected = expected_sha256(archive, manifest, catalog_sha256)
    reader = ArchiveReader(archive, limit=manifest.total_bytes, tick=tick, mode=THREAD)
    try:
        with open(dest, "wb") as out:
            payload = _DumpWriter(out)
            digest = scan_archive(
                reader,
                payload,
                expected=expected,
                after_chunk=lambda: meter.update(reader.payload_bytes),
                check_end=False,
            )
    finally:
        reader.close()
    if reader.payload_bytes != manifest.total_bytes:
        raise ArchiveError(
            f"The archive {archive.name} holds {reader.payload_bytes} bytes but its "
            f"manifest says {manifest.total_bytes}."
        )
    files = [entry for entry in manifest.entries if entry.type == "file" and entry.sha256]
    if len(files) == 1 and files[0].sha256.lower() != payload.sha.hexdigest():
        raise ArchiveError(f"The dump in {archive.name} does not match its sha256 in the manifest.")
    return digest


def pg_restore_argv(uri: str, dump: Path) -> list[str]:
    """Return the pg_restore command that replaces the database's objects with the dump's."""
    # One transaction: a failure part-way leaves the database as it was.
    return [
        os.environ.get("PG_RESTORE") or "pg_restore",
        "--clean",
        "--if-exists",
        "--no-owner",
        "--single-transaction",
        "--exit-on-error",
        "-d",
        uri,
        os.fspath(dump),
    ]


def restore_postgres(run: RestoreRun) -> str:
    """Load the verified dump with pg_restore, in one transaction; return the URI."""
    request = run.request
    check_target(request)
    scratch = Path(tempfile.mkdtemp(prefix="restore-pgdump-"))
    try:
        check_space(scratch, run.manifest.total_bytes)
        dump = scratch / "dump.pgdump"
        meter = run.meter(f"verifying {run.archive.name}")
        digest = decompress_verified(
            run.archive,
            run.manifest,
            dump,
            tick=run.tick,
            meter=meter,
            catalog_sha256=run.request.catalog_sha256,
        )
        run.passed_checksum(digest)
        meter.progress.current = "pg_restore"
        meter.update(force=True)

        def load() -> None:
            _run_child(pg_restore_argv(request.target, dump), run, what="pg_restore")

        run.publish(load)
        run.files, run.bytes = 1, run.manifest.total_bytes
    finally:
        remove_path(scratch)
    return request.target


def _run_child(argv: list[str], run: RestoreRun, *, what: str) -> str:
    """Run a command to completion, checking for cancellation; return its output."""
    with tempfile.TemporaryFile() as output:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                start_new_session=True,  # so a timeout or cancel kills all it started
            )
        except FileNotFoundError:
            raise EngineError(f"{argv[0]} is not installed or not on PATH.") from None
        run.deadline.watch(proc)
        try:
            code = wait_ticking(proc, run.tick)
        except BaseException:
            kill_group(proc)
            proc.wait()
            raise
        output.seek(0)
        text = output.read().decode("utf-8", "replace").strip()
    if code != 0:
        raise EngineError(
            f"{what} failed (exit status {code}); nothing was changed: {text[-4000:]}"
        )
    return text

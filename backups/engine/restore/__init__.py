"""Restore an archive: verify while reading, stage beside the target, then swap.

Nothing is published before the whole archive has been read and every check has passed:
the archive's sha256 against the manifest and the `.sha256` checksum file, each member's
type, size and sha256 against the manifest, and the safety policy (`safety.MemberPolicy`)
on each member's headers.

The archive is decompressed and parsed once (`tarstream.TarScanner`). The members the
policy and the `--path` selection keep are forwarded, as tar bytes, to GNU tar running in
its own process (so it writes files on a second core), and nothing else is: tar never sees
a hostile member. `splitter.Splitter` reads the forwarded bytes a second time, as tar
will, to check that tar sees exactly the approved members, and takes big files out of the
stream to write them directly, which saves a pipe and a process hop per byte.

A directory is extracted into a staging folder next to the target (same filesystem), then
renamed into place; in place, the current data is first renamed aside and removed only
after success. A journal records each step, so `recover_interrupted` puts the original
back after a crash at any point. Journals live in the workers' private state folder
(`RestoreRequest.state_dir`), never beside the target: data is anybody's upload, and a
journal decides what is moved and deleted.

The modules, in the order a restore meets them: `request` (what to restore, and the
checks on a target), `places` (where a restore may write: restore roots, refused
places, PostgreSQL servers and pod namespaces), `job` (the state one restore shares
between its steps), `reader` (decompressing and hashing the archive), `member_filter`
and `contents` (each member against the safety policy, the selection and the
manifest), `extract`, `splitter`,
`direct_files` and `children` (writing through tar), `staging`, `journal`, `recovery` and
`files` (staging beside the target, and putting it back after a crash), then one module
per kind of target: `directory` (with `paths_in_place` and `hardlink_helpers`), `sqlite`
(with `sqlite_files`), `kubernetes` and `postgres`.
"""

from __future__ import annotations

import time

from ..errors import Cancelled, TargetError
from ..hooks import Hooks
from ..locations import DIRECTORY, KUBERNETES, POSTGRES, SQLITE
from .chain import composed_manifest, restore_chain
from .contents import ContentCheck, listed, member_key
from .directory import restore_directory
from .extract import tar_extract_argv
from .job import RestoreJob
from .kubernetes import kubectl_binary, kubectl_extract_argv, restore_pod
from .postgres import decompress_verified, pg_restore_argv, restore_postgres
from .progress import ProgressMeter
from .reader import (
    CHUNK,
    INLINE,
    PROCESS,
    THREAD,
    ArchiveReader,
    catalog_mismatch,
    expected_sha256,
    payload_limit,
    read_checksum_file,
    reading_mode,
    scan_archive,
    sidecar_of,
    sidecar_path,
)
from .recovery import recover_interrupted
from .request import RestoreRequest, RestoreResult, check_target, target_kind
from .sqlite import restore_sqlite
from .sqlite_files import sqlite_integrity, sqlite_uri

__all__ = [
    "CHUNK",
    "INLINE",
    "PROCESS",
    "THREAD",
    "ArchiveReader",
    "ContentCheck",
    "ProgressMeter",
    "RestoreRequest",
    "RestoreResult",
    "catalog_mismatch",
    "check_target",
    "composed_manifest",
    "decompress_verified",
    "expected_sha256",
    "kubectl_binary",
    "kubectl_extract_argv",
    "listed",
    "member_key",
    "payload_limit",
    "pg_restore_argv",
    "read_checksum_file",
    "reading_mode",
    "recover_interrupted",
    "restore_archive",
    "restore_chain",
    "scan_archive",
    "sidecar_of",
    "sidecar_path",
    "sqlite_integrity",
    "sqlite_uri",
    "tar_extract_argv",
]


def restore_archive(request: RestoreRequest, hooks: Hooks) -> RestoreResult:
    """Restore `request.archive` to `request.target`, verifying every byte on the way.

    Raises ArchiveError (damaged or lying archive), UnsafeArchiveError, TargetError,
    NoSpaceError or Cancelled (also on timeout); on any failure the target is as before.
    """
    started = time.monotonic()
    job = RestoreJob(request, hooks)
    try:
        kind = target_kind(request)
        if kind == DIRECTORY:
            target = restore_directory(job)
        elif kind == SQLITE:
            target = restore_sqlite(job)
        elif kind == KUBERNETES:
            target = restore_pod(job)
        elif kind == POSTGRES:
            target = restore_postgres(job)
        else:
            raise TargetError(f"Unknown source kind {request.kind!r}.")
    except Cancelled:
        raise
    except BaseException as error:
        if job.deadline.expired:
            raise Cancelled(job.deadline.message()) from error
        raise
    finally:
        job.deadline.stop()
    return RestoreResult(
        files=job.files,
        bytes=job.bytes,
        warnings=job.warnings,
        target=target,
        duration_s=round(time.monotonic() - started, 3),
        checks=job.checks,
    )

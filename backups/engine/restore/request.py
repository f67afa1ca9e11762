"""What to restore and where, and the checks that refuse an unusable target up front."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import format_bytes, free_bytes
from ..crypto.keys import Identity
from ..errors import NoSpaceError, TargetError
from ..locations import (
    DIRECTORY,
    KINDS,
    KUBERNETES,
    POSTGRES,
    SQLITE,
    check_postgres_uri,
    parse_pod_path,
)
from ..manifest import Manifest, load_manifest
from ..safety import Selection, normalise_request_path
from ..storage import Storage, StoredFile, stored_file
from .contents import listed, member_key
from .places import check_local_place, check_pod_namespace, free_ancestor, postgres_target


@dataclass
class RestoreRequest:
    """What to restore and where.

    `target` has the form of the source's location: a folder, a database file, a pod path
    `NAMESPACE/POD[/CONTAINER]:/ABS/PATH` or a libpq URI. `paths` restricts a restore to
    those paths (relative to the source root) and what is below them. `state_dir` is the
    workers' private folder where the restore keeps its journal, named after `run_id`, so
    that a crash can be undone (see journal); without it a crash leaves the undoing to a
    person. `catalog_sha256`, when set, is the archive's sha256 as recorded apart from the
    files (the catalog): the restore refuses an archive whose manifest and checksum file
    say otherwise.

    Where it may go is the caller's to say (see `places`): `roots` are the folders a
    restore to a new location must stay inside (None: anywhere); `refused` maps places no
    restore writes in, at or around to what they are; `postgres_servers` (`HOST` or
    `HOST:PORT`) and `pod_namespaces` are where a new location may be besides the source's
    own server or namespace; `source_location` is where the backup was taken (by default
    the manifest's).

    `archive` and `manifest` are keys in `storage`, or local paths when it is None. An
    encrypted backup (`….age`) is opened with `identities` (the private keys this host
    has, see crypto.load_identities); `recipients` are the public keys the catalog
    recorded for it, which a refusal names when none of the identities fits.
    """

    archive: Path | str
    manifest: Path | str
    kind: str
    target: str
    in_place: bool = False
    paths: Sequence[str] = ()
    timeout_s: float | None = None
    state_dir: Path | None = None
    run_id: str | None = None
    catalog_sha256: str | None = None
    roots: Sequence[str] | None = None
    refused: Mapping[str, str] = field(default_factory=dict)
    postgres_servers: Sequence[str] = ()
    pod_namespaces: Sequence[str] = ()
    source_location: str | None = None
    storage: Storage | None = None
    identities: Sequence[Identity] = ()
    recipients: Sequence[str] = ()

    def archive_file(self) -> StoredFile:
        """Return the archive as a file in its storage."""
        return stored_file(self.archive, self.storage)

    def manifest_file(self) -> StoredFile:
        """Return the manifest as a file in its storage."""
        return stored_file(self.manifest, self.storage)

    def load_manifest(self) -> Manifest:
        """Read and validate the manifest, decrypting it when it is encrypted."""
        return load_manifest(
            self.manifest_file(), identities=self.identities, recipients=self.recipients
        )

    @property
    def keeps_owners(self) -> bool:
        """Return whether files get the owners and set-id bits stored in the archive.

        Only over the source itself: anywhere else a root-owned setuid file from a backup
        would become one on this host.
        """
        return self.in_place


@dataclass
class RestoreResult:
    """What a restore wrote, what it skipped and what it checked."""

    files: int
    bytes: int
    warnings: list[str]
    target: str
    duration_s: float
    checks: list[dict]


def target_kind(request: RestoreRequest) -> str:
    """Return how the target is written: a pod is one; a local folder restores locally."""
    if request.kind == KUBERNETES and request.target.startswith("/"):
        return DIRECTORY
    return request.kind


def selection_for(request: RestoreRequest, manifest: Manifest) -> Selection:
    """Return the paths `request` asks for; refuse paths the backup does not hold."""
    root = (manifest.header.get("source") or {}).get("location")
    if request.kind == KUBERNETES and root and ":" in root:
        root = root.split(":", 1)[1]
    try:
        paths = [normalise_request_path(path, root) for path in request.paths]
    except ValueError as error:
        raise TargetError(str(error)) from None
    selection = Selection(paths)
    if not paths:
        return selection  # everything: no path to look for among the entries
    unknown = selection.unmatched([member_key(entry.path) for entry in manifest.entries])
    if unknown:
        raise TargetError(
            f"This backup holds nothing at {listed(unknown)}; give paths relative to the "
            "source root, as `runs RUN --json` or the manifest lists them."
        )
    return selection


def check_target(request: RestoreRequest, manifest: Manifest | None = None) -> None:
    """Refuse unusable targets up front (raises TargetError), before anything is changed.

    A non-empty folder or an existing database file is refused unless `in_place`; the
    target's parent must exist (in place, or inside a root, it is created); the target
    must be where the request's places allow (see `places`); a pod path or URI must
    parse; `--path`s must be in the backup (`manifest`, when the caller has it loaded).
    """
    if request.kind not in KINDS:
        raise TargetError(f"Unknown source kind {request.kind!r}: use one of {', '.join(KINDS)}.")
    target = (request.target or "").strip()
    if not target:
        raise TargetError("The restore target is empty.")
    if request.paths and request.kind in (SQLITE, POSTGRES):
        raise TargetError(f"A {request.kind} backup is restored whole; --path does not apply.")
    kind = target_kind(request)
    if kind == KUBERNETES:
        try:
            parse_pod_path(target)
        except ValueError as error:
            raise TargetError(str(error)) from None
        if not request.in_place:
            check_pod_namespace(
                target,
                source_location=source_location(request, manifest),
                namespaces=request.pod_namespaces,
            )
    elif kind == POSTGRES:
        try:
            check_postgres_uri(target)
        except ValueError as error:
            raise TargetError(str(error)) from None
        if not request.in_place:
            postgres_target(
                target,
                source_location=source_location(request, manifest),
                servers=request.postgres_servers,
            )
    elif kind in (DIRECTORY, SQLITE):
        check = _check_directory_target if kind == DIRECTORY else _check_sqlite_target
        try:
            if os.path.isabs(target):
                check_local_place(
                    target,
                    in_place=request.in_place,
                    roots=request.roots,
                    refused=request.refused,
                )
            check(target, request.in_place, request.in_place or request.roots is not None)
        except OSError as error:
            where = error.filename or target
            raise TargetError(
                f"The target {where} cannot be checked: {error.strerror or error}. Check that "
                "this user may read it, or choose another target."
            ) from None
    if request.paths:
        selection_for(request, request.load_manifest() if manifest is None else manifest)


def source_location(request: RestoreRequest, manifest: Manifest | None = None) -> str | None:
    """Return where the backup was taken: the request's word, else the manifest's."""
    if request.source_location is not None:
        return request.source_location
    if manifest is None:
        manifest = request.load_manifest()
    return (manifest.header.get("source") or {}).get("location")


def _check_parent(path: Path, creates_parent: bool) -> None:
    """Check the target's folder can take it; `creates_parent`: a missing one is made."""
    if not path.is_absolute():
        raise TargetError(f"{path} is a relative path; give the absolute path of the target.")
    parent = path.parent
    if not parent.exists():
        if not creates_parent:
            raise TargetError(f"The folder {parent} does not exist; create it first.")
        parent = Path(free_ancestor(os.fspath(path)))
    if not parent.is_dir():
        raise TargetError(f"{parent} is not a folder.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise TargetError(f"This user may not create files in {parent}.")


def _check_directory_target(target: str, in_place: bool, creates_parent: bool) -> None:
    path = Path(os.path.realpath(target)) if os.path.isabs(target) else Path(target)
    _check_parent(path, creates_parent)
    if not path.exists():
        return
    if not path.is_dir():
        raise TargetError(f"The target {path} exists and is not a folder.")
    if in_place:
        return
    with os.scandir(path) as entries:
        if any(True for _ in entries):
            raise TargetError(
                f"The folder {path} is not empty. Restore into a new or empty folder, or "
                "restore over the source with --in-place --yes."
            )


def _check_sqlite_target(target: str, in_place: bool, creates_parent: bool) -> None:
    path = Path(os.path.realpath(target)) if os.path.isabs(target) else Path(target)
    _check_parent(path, creates_parent)
    if path.is_dir():
        raise TargetError(f"The target {path} is a folder; give the database file's path.")
    if in_place or not path.exists():
        for suffix in ("-wal", "-journal") if not path.exists() else ():
            if os.path.lexists(f"{path}{suffix}"):
                raise TargetError(
                    f"{path}{suffix} exists without its database; SQLite would apply it to "
                    "the restored file. Remove it or choose another file name."
                )
        return
    if path.stat().st_size > 0:
        raise TargetError(
            f"The database file {path} exists. Restore to a new file name, or over the "
            "source with --in-place --yes."
        )


def check_space(folder: Path, needed: int) -> None:
    """Refuse a restore that needs more space than `folder`'s filesystem has free."""
    while not folder.exists():
        folder = folder.parent
    free = free_bytes(folder)
    if free < needed:
        raise NoSpaceError(
            f"Restoring needs {format_bytes(needed)} in {folder} but only {format_bytes(free)} "
            "is free; the current data stays until the restore succeeds. Free some space or "
            "restore elsewhere with --to."
        )

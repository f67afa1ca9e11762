"""Restore the tree as of a differential or incremental: its whole chain, composed.

The chain's manifests are composed (`engine.chain`) into the tree as of the wanted point,
each path with the archive that holds its final version. Each archive that holds a
wanted path is then read once, oldest first, into one staging folder, with only those
members let through (a path the chain deleted or changed later is never written), every
archive checked against its manifest and checksum file and every file against its sha256,
exactly as a single archive's restore. Folders get their recorded mtimes back at the end:
files written into them by a later archive moved them. The staging folder is then
swapped in, as for one archive; an archive that holds nothing wanted is not read.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from ..chain import compose_origins
from ..errors import Cancelled, TargetError
from ..hooks import Hooks
from ..manifest import DIR, HARDLINK, Entry, Manifest
from ..safety import Selection, clean_path
from .contents import member_key
from .directory import swap_staging
from .hardlink_helpers import drop_helpers
from .job import RestoreJob
from .paths_in_place import restore_paths
from .request import (
    RestoreRequest,
    RestoreResult,
    check_space,
    check_target,
    selection_for,
    target_kind,
)


class _Exact(Selection):
    """The members one archive of a chain contributes: exactly these paths."""

    def __init__(self, paths: set[str]) -> None:
        super().__init__(())
        self.everything = False
        self._wanted = paths

    def includes(self, path: str) -> bool:
        """Return whether `path` is one of this archive's wanted members."""
        return path in self._wanted

    def is_ancestor(self, path: str) -> bool:
        """Return False: a parent folder comes from the archive that holds its final version."""
        return False


def composed_manifest(manifests: Sequence[Manifest]) -> tuple[Manifest, list[int]]:
    """Return the tree as of the last of `manifests` as one manifest, and each entry's
    archive (an index into `manifests`)."""
    origins = compose_origins(manifests)
    entries: list[Entry] = []
    where: list[int] = []
    files = size = 0
    for entry, index in origins.values():
        entries.append(entry)
        where.append(index)
        if entry.type == "file":
            files += 1
            size += entry.size
    header = dict(manifests[-1].header, totals={"files": files, "bytes": size})
    return Manifest(header=header, entries=entries), where


def restore_chain(requests: Sequence[RestoreRequest], hooks: Hooks) -> RestoreResult:
    """Restore the point `requests[-1]` names from its chain (`requests`, the full first).

    Every request names one archive of the chain and the same target, paths and places.
    A folder target only; raises as `restore_archive` does, and on failure the target is
    as before.
    """
    started = time.monotonic()
    request = requests[-1]
    if target_kind(request) != "directory":
        raise TargetError("A differential or incremental backup restores into a folder only.")
    jobs = [RestoreJob(each, hooks) for each in requests]
    point = jobs[-1]
    try:
        manifest, where = composed_manifest([job.manifest for job in jobs])
        check_target(request, manifest)
        target = Path(os.path.realpath(request.target))
        point.recover(target)
        selection = selection_for(request, manifest)
        wanted: list[set[str]] = [set() for _ in jobs]
        links: list[list[Entry]] = [[] for _ in jobs]
        for entry, index in zip(manifest.entries, where, strict=True):
            key = member_key(entry.path)
            if selection.includes(key) or (entry.type == DIR and selection.is_ancestor(key)):
                wanted[index].add(key)
                if entry.type == HARDLINK:
                    links[index].append(entry)
        helpers = _helpers(wanted, links)
        if not target.parent.exists():
            target.parent.mkdir(parents=True)

        def extract(staging: Path, *_ignored) -> None:
            for index, job in enumerate(jobs):
                if wanted[index]:
                    job.extract(staging, _Exact(wanted[index] | helpers[index]))
                    totals[0] += job.files
                    totals[1] += job.bytes
            drop_helpers(staging, selection, frozenset().union(*helpers))
            _restore_folder_times(staging, manifest, selection)

        totals = [0, 0]
        existed = target.is_dir()
        mount = existed and request.in_place and os.path.ismount(target)
        if existed and request.in_place and (mount or not selection.everything):
            restore_paths(_ChainJob(point, manifest, extract), target, selection, (), mount=mount)
        else:
            check_space(target.parent, manifest.total_bytes)
            swap_staging(point, target, extract)
    except Cancelled:
        raise
    except BaseException as error:
        if any(job.deadline.expired for job in jobs):
            raise Cancelled(point.deadline.message()) from error
        raise
    finally:
        for job in jobs:
            job.deadline.stop()
    return RestoreResult(
        files=totals[0],
        bytes=totals[1],
        warnings=[warning for job in jobs for warning in job.warnings],
        target=str(target),
        duration_s=round(time.monotonic() - started, 3),
        checks=[check for job in jobs for check in job.checks],
    )


class _ChainJob:
    """A chain's restore seen as one job: the composed manifest, and an extraction that
    reads each archive of the chain in turn (for the path-by-path restore in place)."""

    def __init__(self, point: RestoreJob, manifest: Manifest, extract) -> None:
        self._point = point
        self.manifest = manifest
        self.extract = extract

    def __getattr__(self, name: str):
        return getattr(self._point, name)


def _helpers(wanted: list[set[str]], links: list[list[Entry]]) -> list[set[str]]:
    """Return, per archive, the link targets its wanted hardlinks need but nobody asked for."""
    helpers: list[set[str]] = []
    for index, entries in enumerate(links):
        needed = set()
        for entry in entries:
            target = clean_path(entry.target or "")
            if target is not None and target not in wanted[index]:
                needed.add(target)
        helpers.append(needed)
    return helpers


def _restore_folder_times(staging: Path, manifest: Manifest, selection: Selection) -> None:
    """Set each restored folder's mtime to the recorded one, deepest first."""
    folders = [
        entry
        for entry in manifest.entries
        if entry.type == DIR and selection.includes(member_key(entry.path))
    ]
    for entry in sorted(folders, key=lambda e: e.path.count("/"), reverse=True):
        mtime_ns = int(entry.mtime) * 1_000_000_000
        try:
            os.utime(staging / entry.path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
        except FileNotFoundError:
            continue

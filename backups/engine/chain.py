"""Chains of backups: a full, then differentials and incrementals relative to it.

A delta's manifest lists only the entries new or changed since its base, and the paths
`deleted` since it. The tree as of any backup is its chain composed in order: start from
the full's entries, then for each later manifest put its entries in and take its
`deleted` paths (and anything under them) out, exactly what plain tools do when they
extract each archive over the last and then remove the listed paths.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .errors import ArchiveError
from .manifest import DIFFERENTIAL, FULL, INCREMENTAL, Entry, Manifest


@dataclass(frozen=True)
class Delta:
    """What a differential or incremental backup is relative to.

    `level` is DIFFERENTIAL or INCREMENTAL; `base` is the run id of the backup it is
    relative to and `full` that of its chain's full; `tree` is the tree as of `base`
    (`compose`), which change detection compares the source with.
    """

    level: str
    base: int
    full: int
    tree: Mapping[str, Entry] = field(repr=False)

    def __post_init__(self) -> None:
        if self.level not in (DIFFERENTIAL, INCREMENTAL):
            raise ArchiveError(
                f"A delta's level is differential or incremental, not {self.level!r}."
            )

    def header(self) -> dict:
        """Return the manifest header fields that name this delta's place in its chain."""
        return {"level": self.level, "base": self.base, "full": self.full}


def check_chain(manifests: Sequence[Manifest]) -> None:
    """Refuse a list that is not a chain: a full first, then deltas each on an earlier one."""
    if not manifests:
        raise ArchiveError("A chain needs at least its full backup.")
    if manifests[0].level != FULL:
        raise ArchiveError("A chain starts with a full backup.")
    runs = {manifests[0].header.get("run")}
    for manifest in manifests[1:]:
        if manifest.level == FULL:
            raise ArchiveError("A chain holds one full backup, at its start.")
        if manifest.base not in runs:
            raise ArchiveError(
                f"The backup of run {manifest.header.get('run')} is relative to run "
                f"{manifest.base}, which is not earlier in its chain."
            )
        runs.add(manifest.header.get("run"))


def compose(manifests: Sequence[Manifest]) -> dict[str, Entry]:
    """Return the tree as of the last of `manifests` (a chain, full first), by path."""
    return {path: entry for path, (entry, _) in compose_origins(manifests).items()}


def compose_origins(manifests: Sequence[Manifest]) -> dict[str, tuple[Entry, int]]:
    """Return the tree as of the last of `manifests`, each path with the index of the
    manifest (in `manifests`) whose archive holds its final version."""
    check_chain(manifests)
    tree: dict[str, tuple[Entry, int]] = {}
    for index, manifest in enumerate(manifests):
        for entry in manifest.entries:
            tree[entry.path] = (entry, index)
        deleted = manifest.deleted
        if deleted:
            _remove(tree, deleted)
    return tree


def _remove(tree: dict, deleted: Sequence[str]) -> None:
    """Take `deleted` paths and everything under them out of `tree`."""
    gone = set(deleted)
    prefixes = tuple(path + "/" for path in deleted)
    for path in [p for p in tree if p in gone or p.startswith(prefixes)]:
        del tree[path]

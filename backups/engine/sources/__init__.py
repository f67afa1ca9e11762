"""Source drivers: each turns a location into a payload stream and manifest entries.

`open_source` picks the driver for a kind; what every driver shares (`Output`, `Plan`,
`Command`, `Excludes`) is in `base`, one module per kind beside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import SourceError
from ..locations import DIRECTORY, KINDS, KUBERNETES, POSTGRES, SQLITE
from ..manifest import Entry
from .base import Output, Plan, SourceDriver
from .directory import DirectoryDriver
from .kubernetes import KubernetesDriver
from .postgres import PostgresDriver
from .sqlite import SqliteDriver

__all__ = ["Output", "Plan", "SourceDriver", "open_source"]


def open_source(
    kind: str,
    location: str,
    *,
    excludes: Sequence[str] = (),
    dest_dir: Path | None = None,
    stem: str | None = None,
    base: Mapping[str, Entry] | None = None,
    rehash: bool = False,
) -> SourceDriver:
    """Return the driver for `kind`, validating `location`; raise SourceError if it is bad.

    `dest_dir` and `stem` name where a driver may keep a snapshot while it runs
    (`<dest_dir>/<stem>.snapshot.tmp`, found by the stale-temp cleanup after a crash).
    `base` (a tree as of an earlier backup) makes a directory's backup a delta; the other
    kinds always take everything.
    """
    if kind == DIRECTORY:
        return DirectoryDriver(
            location,
            excludes=excludes,
            dest_dir=str(dest_dir) if dest_dir else None,
            base=base,
            rehash=rehash,
        )
    if base is not None:
        raise SourceError(f"A {kind} source always takes a full backup; it has no delta.")
    if kind == SQLITE:
        snapshot = dest_dir / f"{stem}.snapshot.tmp" if dest_dir is not None and stem else None
        return SqliteDriver(location, snapshot=snapshot)
    if kind == KUBERNETES:
        return KubernetesDriver(location, excludes=excludes)
    if kind == POSTGRES:
        return PostgresDriver(location)
    raise SourceError(f"Unknown source kind {kind!r}: use one of {', '.join(KINDS)}.")

"""The chain a backup belongs to, as the engine's restore and verification need it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from backups.engine.errors import ArchiveError
from backups.models import Run

T = TypeVar("T")


def chain_of(backup: Run) -> list[Run]:
    """Return the backups a restore of `backup` reads, its full first.

    Raise ArchiveError, naming what is missing, when the catalog lost a link of the chain.
    """
    chain = backup.chain()
    if chain[0].level != Run.Level.FULL:
        raise ArchiveError(
            f"Backup #{backup.pk} is a {backup.level} whose chain lost its backup "
            f"#{chain[0].base_id or backup.full_id} from the catalog: it cannot be restored. "
            "Run import_archives if its files are still there."
        )
    for member in chain[:-1]:
        if member.status not in Run.GOOD and member.status != Run.Status.PRUNING:
            raise ArchiveError(
                f"Backup #{member.pk}, which backup #{backup.pk} builds on, is {member.status}: "
                "the chain cannot be restored."
            )
    return chain


def chain_requests(backup: Run, make: Callable[[Run], T]) -> list[T]:
    """Return `make(member)` for each backup of `backup`'s chain, its full first."""
    return [make(member) for member in chain_of(backup)]

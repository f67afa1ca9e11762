"""Which level a backup is taken at (full, differential, incremental), and on what base.

A policy with `full_every_s` takes the lowest level that is due: a full when the newest
full is older than that, else a differential when `differential_every_s` is set and the
newest differential (or full) is older than it, else an incremental. A request can force
a level. A level that needs a base falls back to a full, with a warning that says why,
when there is no base, when any backup of the base's chain is missing, failed its
verification or is being pruned, or when the source's location, kind or excludes changed
since the base.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.utils import timezone

from backups.engine.chain import Delta, compose
from backups.engine.errors import EngineError
from backups.engine.manifest import load_manifest
from backups.models import Run, Source
from backups.services.encryption import identities_load

FULL, DIFFERENTIAL, INCREMENTAL = Run.Level.FULL, Run.Level.DIFFERENTIAL, Run.Level.INCREMENTAL
# A schedule's runs start a little late or early: a level due "every 7d" is due for the
# run that comes about 7 days after the last, not one hour later.
SLACK = dt.timedelta(minutes=5)


@dataclass
class LevelChoice:
    """The level a backup is taken at, its base and full (None for a full), and why not
    the level asked for, when it fell back."""

    level: str
    base: Run | None = None
    full: Run | None = None
    delta: Delta | None = None
    warning: str = ""


def level_due(source: Source, *, now: dt.datetime | None = None) -> str:
    """Return the level `source`'s policy says the next backup is taken at."""
    policy = source.policy
    if policy is None or not policy.full_every_s or source.kind != Source.Kind.DIRECTORY:
        return FULL
    now = now or timezone.now()
    backups = Run.objects.restore_points().filter(source=source)
    newest_full = backups.filter(level=FULL).first()
    if newest_full is None or _age(newest_full, now) >= _every(policy.full_every_s):
        return FULL
    if policy.differential_every_s:
        newest = backups.filter(level__in=(FULL, DIFFERENTIAL)).first()
        if newest is None or _age(newest, now) >= _every(policy.differential_every_s):
            return DIFFERENTIAL
    return INCREMENTAL


def _age(run: Run, now: dt.datetime) -> dt.timedelta:
    return now - (run.started_at or run.queued_at)


def _every(seconds: int) -> dt.timedelta:
    return dt.timedelta(seconds=seconds) - min(SLACK, dt.timedelta(seconds=seconds / 10))


def level_choose(run: Run) -> LevelChoice:
    """Return the level `run` (a claimed backup) is taken at, with its base's tree."""
    source = run.source
    asked = run.level_asked or level_due(source)
    if asked == FULL:
        return LevelChoice(FULL)
    if source.kind != Source.Kind.DIRECTORY:
        return LevelChoice(
            FULL,
            warning=f"A {source.get_kind_display()} source always takes a full backup; "
            f"took a full one instead of the {asked} asked for.",
        )
    backups = Run.objects.restore_points().filter(source=source).exclude(pk=run.pk)
    if asked == DIFFERENTIAL:
        backups = backups.filter(level=FULL)
    base = backups.first()
    if base is None:
        return _fallback(asked, "there is no full backup of this source to build on")
    chain = base.chain()
    problem = chain_problem(chain)
    if problem:
        return _fallback(asked, problem)
    try:
        # An encrypted chain is read with this host's key: a host without it takes a full.
        manifests = [
            load_manifest(
                each.stored_manifest(),
                identities=identities_load() if each.encrypted else (),
                recipients=list(each.recipients or []),
            )
            for each in chain
        ]
    except EngineError as error:
        return _fallback(asked, f"a manifest of its chain cannot be read ({error})")
    changed = _source_change(source, manifests[-1].header, base)
    if changed:
        return _fallback(asked, changed)
    delta = Delta(level=asked, base=base.pk, full=chain[0].pk, tree=compose(manifests))
    return LevelChoice(asked, base=base, full=chain[0], delta=delta)


def _fallback(asked: str, why: str) -> LevelChoice:
    return LevelChoice(FULL, warning=f"Took a full backup instead of an {asked} one: {why}.")


def chain_problem(chain: list[Run]) -> str:
    """Return why the backups of `chain` (full first) cannot serve as a base, or ''."""
    if chain[0].level != FULL:
        return f"backup #{chain[-1].pk} has lost a backup of its chain from the catalog"
    for each in chain:
        if each.status == Run.Status.PRUNING:
            return f"backup #{each.pk} of its chain is being pruned"
        if each.status not in Run.GOOD:
            return f"backup #{each.pk} of its chain is {each.status}"
        if each.verified is False:
            return f"backup #{each.pk} of its chain failed its verification"
        try:
            archive = each.stored_archive()
        except EngineError as error:
            return str(error).rstrip(".")
        for stored in (
            archive,
            archive.sibling(archive.name + ".sha256"),
            each.stored_manifest(),
        ):
            if stored.size() is None:
                return f"{stored.name} (backup #{each.pk} of its chain) is missing"
    return ""


def _source_change(source: Source, header: dict, base: Run) -> str:
    """Return how `source` changed since the backup whose manifest header is `header`."""
    recorded = header.get("source") or {}
    if recorded.get("kind") != source.kind:
        return f"the source's kind changed since backup #{base.pk}"
    if recorded.get("location") != source.location:
        return f"the source's location changed since backup #{base.pk}"
    if sorted(header.get("excludes") or []) != sorted(source.excludes or []):
        return f"the source's excludes changed since backup #{base.pk}"
    return ""

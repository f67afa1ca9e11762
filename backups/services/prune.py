"""Retention: decide which backups each policy keeps, and remove the others crash-safely.

The selection is the engine's (restic `forget --keep-*` semantics, buckets cut in
RETENTION_TIME_ZONE). On top of the rules, some backups are never removed: one a user
pinned (`keep`), the newest backup whose verification passed, and any backup a queued or
running restore or verification is reading. A policy without a single keep rule removes
nothing at all: it is refused.

Removing a backup is two-phase. A conditional UPDATE first moves it from a good status to
`pruning`, owned by this pruner; then, in one transaction that re-checks that ownership,
its archive, sidecar and manifest are unlinked, the folder fsynced and the run marked
`pruned` (the row stays, as history; its catalog manifest goes). A pruner that crashes in
between leaves a run in `pruning`, which the next prune (or housekeeping) finishes once the
pruner is known dead. A pruner that was only paused and wakes up after its run was taken
over finds it no longer owns it, and stops without deleting anything.

If an archive folder cannot be listed, or lists none of the archives the catalog has in
it, nothing of that source is removed and the discrepancy is reported: a missing mount
must never look like permission to delete.

A storage with keep rules of its own plans the copies it holds by them, chains kept whole
there too. A copy its rules drop while the policy keeps the backup loses only its own
files. A backup the policy drops while such a storage keeps its copy stays a restore
point: its primary files go and the catalog points at the kept copy (`copy_only`), which
its storage's rules then decide alone. A backup leaves the catalog once nothing keeps it.
Copies in storages without rules go with the backup's primary archive, as before. Only
files the catalog names are deleted; a listing only confirms they are there.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from backups.audit import audit_record
from backups.engine.atomic import fsync_dir
from backups.engine.errors import EngineError
from backups.engine.retention import PINNED, Rules, Snapshot, select
from backups.engine.storage import StoredFile
from backups.models import DEFAULT_STORAGE_NAME, KEEP_RULES, Copy, Manifest, Run, Source, Storage
from backups.services.runs import worker_identity
from backups.services.standing import standing_refresh

logger = logging.getLogger(__name__)

# Why a backup is kept besides the policy's rules (shown by `prune --dry-run`).
KEEP = "keep"
VERIFIED = "verified"
IN_USE = "in use"
MISSING = "missing"
HELD = "held"
OUTSIDE = "outside its folder"
BASE_OF = "base of #"
COPY_IN = "copy in "

# Backups claimed and deleted together: one transaction and one folder fsync per batch.
BATCH = 100


class PruneRefused(Exception):
    """Nothing may be removed for this source (no policy, or a policy with no keep rule)."""


class PruneFenced(Exception):
    """This pruner lost a run it was removing: it was paused and another one took over."""


@dataclass
class StoragePlan:
    """What one storage keeps (with the reasons) and lets go, newest first.

    The primary plan covers the backups' own archives by their policy's rules; a copies
    plan covers the proven copies a storage holds, by that storage's own rules.
    """

    name: str
    rules: Rules
    primary: bool
    storage: Storage | None = None
    keep: list[tuple[Run, list[str]]] = field(default_factory=list)
    remove: list[Run] = field(default_factory=list)
    copies: dict[int, Copy] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        """Return the rules that keep something, by name."""
        return {rule: count for rule, count in vars(self.rules).items() if count}

    @property
    def described_rules(self) -> str:
        """Return the rules for people: `daily 7, monthly 12`."""
        return ", ".join(f"{rule} {count}" for rule, count in self.counts.items())


@dataclass
class PrunePlan:
    """What retention keeps (with the reasons) and removes for one source, newest first.

    `keep` and `remove` are the catalog's: a backup stays while any storage keeps it.
    `storages` says it per storage, the primary first. `moves` are the backups whose own
    archive goes while a storage's rules keep a copy, which becomes the backup's archive;
    `copy_drops` the copies removed while their backup stays where it is.
    """

    source: Source
    keep: list[tuple[Run, list[str]]] = field(default_factory=list)
    remove: list[Run] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    storages: list[StoragePlan] = field(default_factory=list)
    moves: dict[int, list[Copy]] = field(default_factory=dict)
    copy_drops: list[Copy] = field(default_factory=list)


def _rules(source: Source) -> Rules:
    policy = source.policy
    if policy is None:
        raise PruneRefused(
            f"Source {source.name!r} has no policy, so no retention rule: nothing is removed."
        )
    rules = Rules(**policy.keep_rules)
    if rules.is_empty():
        raise PruneRefused(
            f"Policy {policy.name!r} (source {source.name!r}) has no keep rule: refusing to "
            "remove anything. Set at least one of keep-last, keep-hourly, keep-daily, "
            "keep-weekly, keep-monthly or keep-yearly."
        )
    return rules


def _folder_of(run: Run) -> tuple[int | None, str]:
    """Return the storage (None: ARCHIVE_ROOT) and the folder holding `run`'s archive."""
    return run.storage_id, run.archive.rpartition("/")[0]


def _list_folder(run: Run) -> set[str]:
    """Return the names in the folder of `run`'s archive; raise OSError or EngineError."""
    if run.storage_id is None:
        return set(os.listdir(Path(run.archive).parent))
    storage = run.storage.open()
    return {entry.name for entry in storage.list(run.source.slug) if not entry.is_folder}


def _listings(backups: list[Run]) -> tuple[dict[tuple, set[str]], list[str], bool]:
    """List each folder holding archives; return the names, the problems, and whether
    removal must be held back for the whole source."""
    folders: dict[tuple, list[Run]] = {}
    for run in backups:
        folders.setdefault(_folder_of(run), []).append(run)
    names: dict[tuple, set[str]] = {}
    problems: list[str] = []
    held = False
    for folder, runs in folders.items():
        where = folder[1]
        try:
            listed = _list_folder(runs[0])
        except OSError as error:
            problems.append(
                f"Cannot list {where} ({error.strerror or error}) while the catalog has "
                f"{len(runs)} archive(s) there: nothing of this source is removed."
            )
            held = True
            continue
        except EngineError as error:
            problems.append(
                f"Cannot list {where} ({error}) while the catalog has {len(runs)} "
                "archive(s) there: nothing of this source is removed."
            )
            held = True
            continue
        if not any(run.archive.rpartition("/")[2] in listed for run in runs):
            problems.append(
                f"{where} holds none of the {len(runs)} archive(s) the catalog has there "
                "(an unmounted volume?): nothing of this source is removed."
            )
            held = True
        names[folder] = listed
    return names, problems, held


def _split_outside(backups: list[Run]) -> tuple[list[Run], list[tuple[Run, str]]]:
    """Set apart the backups whose archive is not in their source's folder, with why."""
    inside, outside = [], []
    for run in backups:
        try:
            run.stored_archive()
        except EngineError as error:
            outside.append((run, str(error)))
        else:
            inside.append(run)
    return inside, outside


def _present(run: Run, names: dict[tuple, set[str]]) -> bool:
    return run.archive.rpartition("/")[2] in names.get(_folder_of(run), set())


def _in_use(backup_ids: list[int]) -> set[int]:
    """Return which of these backups a queued or running restore or verify reads."""
    active = Run.objects.filter(backup_id__in=backup_ids, status__in=Run.ACTIVE)
    return set(active.values_list("backup_id", flat=True).distinct())


def prune_plan(*, source: Source, now: datetime | None = None) -> PrunePlan:
    """Return what retention keeps and removes for `source`, without changing anything.

    Raise PruneRefused when the source has no policy or its policy no keep rule. `now` is
    accepted for symmetry with the other services: the selection does not depend on the
    time it is made, only on the backups' own times.
    """
    rules = _rules(source)
    backups = list(
        Run.objects.restore_points()
        .filter(source=source)
        .exclude(archive="")
        .select_related("storage")
        .defer("log")
    )
    plan = PrunePlan(source=source)
    for run in backups:
        run.source = source  # its own backups: no query per run to find their folder
    policy_storage = source.policy.storage
    primary = StoragePlan(
        name=policy_storage.name if policy_storage else DEFAULT_STORAGE_NAME,
        rules=rules,
        primary=True,
    )
    # A backup kept only as a copy is its storage's to decide, not the policy's.
    held = _plan_primary(primary, [run for run in backups if not run.copy_only], plan.problems)
    copies = _copies_by_storage(backups)
    plan.storages.append(primary)
    for storage, held_copies in copies.items():
        storage_plan = StoragePlan(
            name=storage.name, rules=Rules(**storage.keep_rules), primary=False, storage=storage
        )
        held = _plan_copies(storage_plan, held_copies, plan.problems) or held
        plan.storages.append(storage_plan)
    if held:
        # One storage that cannot be trusted holds everything back: whether a backup
        # may leave depends on what every storage keeps.
        for storage_plan in plan.storages:
            storage_plan.keep.extend((run, [HELD]) for run in storage_plan.remove)
            storage_plan.remove = []
            _newest_first(storage_plan.keep)
    _outcome(plan, backups)
    if held:
        moving = [run for run, _reasons in plan.keep if run.pk in plan.moves]
        plan.keep = [item for item in plan.keep if item[0].pk not in plan.moves]
        plan.keep.extend((run, [HELD]) for run in [*moving, *plan.remove])
        _newest_first(plan.keep)
        plan.moves, plan.remove, plan.copy_drops = {}, [], []
    return plan


def _newest_first(keep: list[tuple[Run, list[str]]]) -> None:
    keep.sort(key=lambda item: (item[0].started_at or item[0].queued_at, item[0].pk))
    keep.reverse()


def _pins(runs: list[Run], *, verified: bool) -> dict[int, list[str]]:
    """Return why each run is kept whatever the rules say (empty list: it is not)."""
    pins: dict[int, list[str]] = {run.pk: [] for run in runs}
    for run in runs:
        if run.keep:
            pins[run.pk].append(KEEP)
    newest_verified = next((run for run in runs if run.verified), None) if verified else None
    if newest_verified is not None:
        pins[newest_verified.pk].append(VERIFIED)
    for pk in _in_use([run.pk for run in runs]):
        pins[pk].append(IN_USE)
    return pins


def _select(plan: StoragePlan, present: list[Run], pins: dict[int, list[str]]) -> None:
    """Fill `plan` with what its rules keep and remove of `present`, chains kept whole."""
    by_id = {run.pk: run for run in present}
    decision = select(
        [
            Snapshot(id=run.pk, time=run.started_at or run.queued_at, pinned=bool(pins[run.pk]))
            for run in present
        ],
        plan.rules,
        ZoneInfo(settings.RETENTION_TIME_ZONE),
    )
    for snapshot, reasons in decision.keep:
        expanded = []
        for reason in reasons:
            expanded.extend(pins[snapshot.id] if reason == PINNED else [reason])
        plan.keep.append((by_id[snapshot.id], expanded))
    plan.remove = [by_id[snapshot.id] for snapshot in decision.remove]
    _keep_chains(plan)


def _plan_primary(plan: StoragePlan, backups: list[Run], problems: list[str]) -> bool:
    """Plan the backups' own archives by the policy; return whether removal is held back."""
    backups, outside = _split_outside(backups)
    problems.extend(problem for _run, problem in outside)
    if not backups:
        plan.keep.extend((run, [OUTSIDE]) for run, _problem in outside)
        return False
    names, listing_problems, held = _listings(backups)
    problems.extend(listing_problems)
    present = [run for run in backups if held or _present(run, names)]
    present_ids = {run.pk for run in present}
    missing = [run for run in backups if run.pk not in present_ids]
    for run in missing:
        problems.append(
            f"Backup #{run.pk}'s archive {run.archive} is missing: it is left in the catalog "
            "and does not count towards the rules. Run `import_archives` or check the storage."
        )
    _select(plan, present, _pins(present, verified=True))
    plan.keep.extend((run, [MISSING]) for run in missing)
    plan.keep.extend((run, [OUTSIDE]) for run, _problem in outside)
    return held


def _copies_by_storage(backups: list[Run]) -> dict[Storage, list[Copy]]:
    """Return the proven copies of `backups` in each storage that has keep rules."""
    by_id = {run.pk: run for run in backups}
    found: dict[int, tuple[Storage, list[Copy]]] = {}
    with_rules = Q()
    for rule in KEEP_RULES:
        with_rules |= Q(**{f"storage__keep_{rule}__gt": 0})
    copies = (
        Copy.objects.filter(with_rules, backup_id__in=list(by_id), status=Copy.Status.SUCCEEDED)
        .select_related("storage")
        .order_by("storage__name")
    )
    for copy in copies:
        copy.backup = by_id[copy.backup_id]
        found.setdefault(copy.storage_id, (copy.storage, []))[1].append(copy)
    return dict(found.values())


def _plan_copies(plan: StoragePlan, copies: list[Copy], problems: list[str]) -> bool:
    """Plan a storage's copies by its own rules; return whether removal is held back.

    The storage's folder is listed, as the primary's is: a copy counts towards the rules
    only when its object is there, and a folder that cannot be listed, or lists none of
    the copies the catalog has in it, holds back every removal of the source.
    """
    where = f"{plan.name}:{copies[0].backup.source.slug}/"
    plan.copies = {copy.backup_id: copy for copy in copies}
    try:
        opened = plan.storage.open()
    except EngineError as error:
        problems.append(
            f"Cannot open storage {plan.name!r} ({error}) while the catalog has "
            f"{len(copies)} copies there: nothing of this source is removed."
        )
        plan.keep.extend((copy.backup, [HELD]) for copy in copies)
        return True
    placed: list[Copy] = []
    outside: list[Copy] = []
    for copy in copies:
        try:
            copy.stored_archive(opened)
        except EngineError as error:
            problems.append(str(error))
            outside.append(copy)
        else:
            placed.append(copy)
    held = False
    listed: set[str] = set()
    if placed:
        try:
            folder = opened.list(placed[0].backup.source.slug)
            listed = {entry.name for entry in folder if not entry.is_folder}
        except (OSError, EngineError) as error:
            problems.append(
                f"Cannot list {where} ({error}) while the catalog has {len(placed)} copies "
                "there: nothing of this source is removed."
            )
            held = True
        else:
            if not any(copy.archive.rpartition("/")[2] in listed for copy in placed):
                problems.append(
                    f"{where} holds none of the {len(placed)} copies the catalog has there: "
                    "nothing of this source is removed."
                )
                held = True
    present = [copy for copy in placed if held or copy.archive.rpartition("/")[2] in listed]
    missing = [copy for copy in placed if copy not in present]
    for copy in missing:
        problems.append(
            f"The copy of backup #{copy.backup_id} in storage {plan.name!r} ({copy.archive}) "
            "is missing: it does not count towards that storage's rules."
        )
    runs = [copy.backup for copy in present]
    _select(plan, runs, _pins(runs, verified=False))
    plan.keep.extend((copy.backup, [MISSING]) for copy in missing)
    plan.keep.extend((copy.backup, [OUTSIDE]) for copy in outside)
    return held


def _outcome(plan: PrunePlan, backups: list[Run]) -> None:
    """Decide each backup's fate from every storage's plan: stay, move to a kept copy,
    lose some copies, or leave the catalog."""
    primary, copy_plans = plan.storages[0], plan.storages[1:]
    primary_keeps = {run.pk: reasons for run, reasons in primary.keep}
    dropped = {p.storage.pk: {run.pk for run in p.remove} for p in copy_plans}
    # The copies that can stand in for a backup: kept by rules, and really there.
    holders: dict[int, list[Copy]] = {}
    for p in copy_plans:
        for run, reasons in p.keep:
            if MISSING not in reasons and OUTSIDE not in reasons:
                holders.setdefault(run.pk, []).append(p.copies[run.pk])
    copy_plans_by_id = {p.storage.pk: p for p in copy_plans}
    for run in backups:
        held_by = holders.get(run.pk, [])
        if not run.copy_only:
            stays = run.pk in primary_keeps
            reasons = primary_keeps.get(run.pk, [])
        else:
            home = copy_plans_by_id.get(run.storage_id)
            stays = home is not None and run.pk not in dropped[run.storage_id]
            reasons = [f"{COPY_IN}{run.storage.name}"]
        if stays:
            plan.keep.append((run, reasons))
            plan.copy_drops.extend(
                p.copies[run.pk] for p in copy_plans if run.pk in dropped[p.storage.pk]
            )
        elif held_by:
            plan.moves[run.pk] = held_by
            plan.keep.append((run, [f"{COPY_IN}{copy.storage.name}" for copy in held_by]))
        else:
            plan.remove.append(run)
    _keep_bases(plan, copy_plans_by_id)


def _keep_bases(plan: PrunePlan, copy_plans: dict[int, StoragePlan]) -> None:
    """Keep in the catalog, where it is, every base of a backup that stays or moves.

    Each storage keeps its chains whole, but a chain may span storages (its full kept
    by the policy, its incrementals only as copies): no link may leave while a later one
    stays a restore point.
    """
    leaving = {run.pk: run for run in plan.remove}
    pending = [run for run, _reasons in plan.keep]
    while pending and leaving:
        run = pending.pop()
        base = leaving.pop(run.base_id, None) if run.base_id is not None else None
        if base is None:
            continue
        reasons = [f"{BASE_OF}{run.pk}"]
        plan.keep.append((base, reasons))
        pending.append(base)
        home = copy_plans.get(base.storage_id) if base.copy_only else plan.storages[0]
        if home is not None and base in home.remove:
            home.remove.remove(base)
            home.keep.append((base, reasons))
            _newest_first(home.keep)
    if len(leaving) < len(plan.remove):
        plan.remove = [run for run in plan.remove if run.pk in leaving]
        _newest_first(plan.keep)


def _keep_chains(plan: StoragePlan) -> None:
    """Keep every backup a kept differential or incremental builds on, saying for whom.

    A chain is restored from its full through each base: removing one would make every
    later backup of the chain unrestorable.
    """
    removing = {run.pk: run for run in plan.remove}
    kept = {run.pk: reasons for run, reasons in plan.keep}
    pending = [run for run, _reasons in plan.keep]
    moved = False
    while pending:
        run = pending.pop()
        if run.base_id is None:
            continue
        reason = f"{BASE_OF}{run.pk}"
        if run.base_id in removing:
            base = removing.pop(run.base_id)
            kept[base.pk] = [reason]
            plan.keep.append((base, kept[base.pk]))
            pending.append(base)
            moved = True
        elif run.base_id in kept and reason not in kept[run.base_id]:
            kept[run.base_id].append(reason)
    if moved:
        plan.remove = [run for run in plan.remove if run.pk in removing]
        _newest_first(plan.keep)


def _entry(run: Run, source: Source, reasons: list[str] | None = None) -> dict:
    data = {
        "id": run.pk,
        "source": source.name,
        "started_at": run.started_at.isoformat() if run.started_at else None,
    }
    if reasons is not None:
        data["reasons"] = reasons
    return data


def _storage_entries(plan: PrunePlan) -> list[dict]:
    """Return what each storage keeps (and why) and lets go, as `prune --json` shows it."""
    return [
        {
            "source": plan.source.name,
            "storage": storage_plan.name,
            "role": "primary" if storage_plan.primary else "copies",
            "rules": storage_plan.counts,
            "keep": [_entry(run, plan.source, reasons) for run, reasons in storage_plan.keep],
            "remove": [_entry(run, plan.source) for run in storage_plan.remove],
        }
        for storage_plan in plan.storages
    ]


def _files(run: Run) -> list[StoredFile]:
    """Return the files of `run` to remove: none when its archive lies outside its folder."""
    try:
        archive = run.stored_archive()
        return [archive, archive.sibling(archive.name + ".sha256"), run.stored_manifest()]
    except EngineError as error:
        logger.warning("prune removes no file of backup #%s: %s", run.pk, error)
        return []


def _copy_files(run: Run, spare: list[int] = ()) -> list[StoredFile]:
    """Return the files of `run`'s proven copies in other storages, removed with it,
    except those in the storages `spare` (whose own rules keep them)."""
    files = []
    copies = run.copies.filter(status=Copy.Status.SUCCEEDED).exclude(storage_id__in=spare)
    for copy in copies.select_related("storage"):
        copy.backup = run
        files += _files_of_copy(copy)
    return files


def _files_of_copy(copy: Copy) -> list[StoredFile]:
    """Return a copy's archive, checksum file and manifest: none when it is not in its folder."""
    try:
        archive = copy.stored_archive()
        manifest = archive.sibling(copy.backup.manifest_path.name)
    except EngineError as error:
        logger.warning("prune removes no file of %s: %s", copy, error)
        return []
    return [archive, archive.sibling(archive.name + ".sha256"), manifest]


def _unlink(files: list[StoredFile]) -> None:
    """Delete `files`, with one fsync per local folder."""
    folders = set()
    for stored in files:
        path = stored.local_path
        if path is None:
            stored.storage.delete(stored.key)
        else:
            # One fsync per folder and batch below, not one per file.
            path.unlink(missing_ok=True)
            folders.add(path.parent)
    for folder in folders:
        if folder.is_dir():
            fsync_dir(folder)


def _drop_copies(copies: list[Copy], me: str) -> tuple[list[Copy], list[str]]:
    """Remove copies their storage's rules no longer keep while their backup stays.

    The catalog first, in one transaction that re-checks each copy (still proven, its
    backup not being read, not the backup's own archive): a crash then leaves only
    unreferenced objects, never a copy a restore would be sent to and not find.
    """
    wanted = {copy.pk: copy for copy in copies}
    with transaction.atomic():
        rows = {
            row["pk"]: row
            for row in Copy.objects.select_for_update()
            .filter(pk__in=list(wanted), status=Copy.Status.SUCCEEDED)
            .values("pk", "backup_id", "storage_id", "backup__storage_id", "backup__copy_only")
        }
        in_use = _in_use([row["backup_id"] for row in rows.values()])
        dropped = [
            wanted[pk]
            for pk, row in rows.items()
            if row["backup_id"] not in in_use
            and not (row["backup__copy_only"] and row["backup__storage_id"] == row["storage_id"])
        ]
        Copy.objects.filter(pk__in=[copy.pk for copy in dropped]).update(status=Copy.Status.REMOVED)
        for copy in dropped:
            audit_record(
                actor=None,
                action="copy.prune",
                outcome="removed",
                obj=copy.backup,
                source=copy.backup.source,
                detail={"storage": copy.storage.name, "archive": copy.archive, "pruner": me},
            )
    problems = []
    for copy in dropped:
        try:
            _unlink(_files_of_copy(copy))
        except (OSError, EngineError) as error:
            problems.append(
                f"The copy of backup #{copy.backup_id} in storage {copy.storage.name!r} was "
                f"let go but its files could not all be deleted ({error}); they are no "
                "longer used."
            )
        logger.info("pruned the copy of backup #%s in %s", copy.backup_id, copy.storage)
    return dropped, problems


def _claim(runs: list[Run], me: str, now: datetime) -> tuple[list[Run], dict[int, str]]:
    """Move `runs` to `pruning` for `me`; return those claimed and why the others stay.

    Everything that pins a backup is checked again inside the transaction that claims it:
    the plan may be minutes old, and a restore may have started reading a backup since.
    A reason of "changed" means the backup is no longer a good one (another pruner took it).
    """
    wanted = {run.pk: run for run in runs}
    kept: dict[int, str] = {}
    with transaction.atomic():
        rows = {
            row["pk"]: row
            for row in Run.objects.select_for_update()
            .filter(pk__in=list(wanted), kind=Run.Kind.BACKUP, status__in=Run.GOOD)
            .values("pk", "keep", "verified", "source_id")
        }
        in_use = _in_use(list(rows))
        newest_verified = {
            Run.objects.restore_points()
            .filter(source_id=source_id, verified=True)
            .values_list("pk", flat=True)
            .first()
            for source_id in {row["source_id"] for row in rows.values()}
        }
        # A backup taken since the plan (or still running) may build on one of these.
        dependants = dict(
            Run.objects.filter(base_id__in=list(rows), kind=Run.Kind.BACKUP)
            .filter(status__in=(*Run.GOOD, *Run.ACTIVE))
            .exclude(pk__in=list(wanted))
            .values_list("base_id", "pk")
        )
        for pk in wanted:
            row = rows.get(pk)
            if row is None:
                kept[pk] = "changed"
            elif pk in dependants:
                kept[pk] = f"{BASE_OF}{dependants[pk]}"
            elif row["keep"]:
                kept[pk] = KEEP
            elif pk in in_use:
                kept[pk] = IN_USE
            elif pk in newest_verified:
                kept[pk] = VERIFIED
        claimed = [run for pk, run in wanted.items() if pk not in kept]
        Run.objects.prune_claim([run.pk for run in claimed], worker=me, now=now)
    for source_id in sorted({run.source_id for run in claimed}):
        standing_refresh(source_id)
    return claimed, kept


def _delete_owned(
    runs: list[Run], me: str, moves: dict[int, list[Copy]] | None = None
) -> list[Run]:
    """Unlink the files of runs `me` holds in `pruning`, then mark them `pruned`, or, for
    those in `moves`, point them at the copy a storage's own rules keep.

    The ownership check, the unlinks and the status change share one transaction that
    holds the rows: a pruner that lost any of them deletes nothing at all, since it was
    away long enough for its whole plan to be stale. Return the runs that left the catalog.
    """
    ids = [run.pk for run in runs]
    with transaction.atomic():
        owned = set(
            Run.objects.select_for_update()
            .filter(pk__in=ids, status=Run.Status.PRUNING, worker=me)
            .values_list("pk", flat=True)
        )
        lost = [pk for pk in ids if pk not in owned]
        if lost:
            raise PruneFenced(
                f"Backup #{lost[0]} is no longer being removed by this pruner ({me}): it "
                "was paused past ABANDON_AFTER_S and another pruner took over. Nothing "
                "more was deleted."
            )
        sources = Source.objects.in_bulk({run.source_id for run in runs})
        files = []
        spared: dict[int, list[int]] = {}
        for run in runs:
            run.source = sources[run.source_id]
            # Planned: a run the plan does not move keeps no copy.
            held = None if moves is None else moves.get(run.pk, [])
            spared[run.pk] = _kept_copies(run, held)
            files += _files(run) + _copy_files(run, spared[run.pk])
        _unlink(files)
        gone = [run for run in runs if not spared[run.pk]]
        Run.objects.mark_pruned([run.pk for run in gone], worker=me, now=timezone.now())
        Copy.mark_removed([run.pk for run in gone])
        for run in runs:
            if spared[run.pk]:
                _keep_as_copy(run, spared[run.pk], me)
                continue
            # Deleting a backup is destructive: each one leaves an audit record, as a
            # restore does.
            audit_record(
                actor=None,
                action="backup.prune",
                outcome="removed",
                obj=run,
                source=run.source,
                detail={"archive": run.archive, "pruner": me},
            )
    # Outside the transaction: a big manifest takes a while to delete, and a crash here
    # leaves only rows that the next prune removes.
    Manifest.objects.filter(run_id__in=[run.pk for run in gone]).delete()
    for source_id in sorted(sources):
        standing_refresh(source_id)
    for run in gone:
        logger.info("pruned backup #%s (%s)", run.pk, run.archive)
    return gone


def _kept_copies(run: Run, held: list[Copy] | None) -> list[int]:
    """Return the storages whose copies of `run` stay when its own archive goes, the
    one to point the run at first.

    Planned (`held`): the storages whose rules keep a copy there. Finishing a dead
    pruner's work, without its plan: every storage with rules of its own whose proven
    copy is really there, except the one the run's archive is in, which is going. Keeping
    too much is safe: the next prune applies those storages' rules.
    """
    copies = run.copies.filter(status=Copy.Status.SUCCEEDED).select_related("storage")
    if run.copy_only:
        copies = copies.exclude(storage_id=run.storage_id)
    if held is not None:
        wanted = [copy.storage_id for copy in held]
        found = set(copies.filter(storage_id__in=wanted).values_list("storage_id", flat=True))
        return [storage_id for storage_id in wanted if storage_id in found]
    kept = []
    for copy in copies.order_by("storage__name"):
        copy.backup = run
        files = _files_of_copy(copy) if copy.storage.has_keep_rules else []
        if files and files[0].size() is not None:
            kept.append(copy.storage_id)
    return kept


def _keep_as_copy(run: Run, kept: list[int], me: str) -> None:
    """Point a run whose own archive was just deleted at its first kept copy, and make it
    a restore point again."""
    old_archive = run.archive
    copy = Copy.objects.select_related("storage").get(backup=run, storage_id=kept[0])
    # Failed copies too: none is to be retried from the kept copy.
    Copy.objects.filter(backup=run).exclude(storage_id__in=kept).update(status=Copy.Status.REMOVED)
    status = Run.Status.WARNING if run.warnings else Run.Status.SUCCEEDED
    Run.objects.prune_undo(run.pk, worker=me, status=status)
    run.keep_as_copy(copy)
    Manifest.objects.filter(run=run).update(path=str(run.stored_manifest()))
    run.append_log(f"kept as its copy in storage {copy.storage.name} ({copy.archive})")
    audit_record(
        actor=None,
        action="backup.prune",
        outcome="moved",
        obj=run,
        source=run.source,
        detail={"archive": old_archive, "kept_in": copy.storage.name, "pruner": me},
    )


def _holder_gone(worker: str, heartbeat_at: datetime | None, now: datetime) -> bool:
    """Return whether the pruner named `worker` is dead or silent past ABANDON_AFTER_S."""
    if heartbeat_at is None or now - heartbeat_at > timedelta(seconds=settings.ABANDON_AFTER_S):
        return True
    host, _, rest = worker.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _finish_interrupted(runs, me: str, now: datetime) -> tuple[list[Run], list[str]]:
    """Take over runs left in `pruning` by a dead pruner and finish them.

    A run that was pinned meanwhile (a user's keep, a reader) and whose files are all
    still there goes back to its good status instead: the pin wins over a removal that
    never really started.
    """
    finished, problems = [], []
    for row in runs:
        if not _holder_gone(row.worker, row.heartbeat_at, now):
            problems.append(f"Backup #{row.pk} is being removed by {row.worker}; left to it.")
            continue
        adopted = Run.objects.prune_adopt(
            row.pk, holder=row.worker, held_since=row.heartbeat_at, worker=me, now=now
        )
        if not adopted:
            continue
        pinned = row.keep or bool(_in_use([row.pk]))
        if pinned and all(stored.size() is not None for stored in _files(row)):
            status = Run.Status.WARNING if row.warnings else Run.Status.SUCCEEDED
            Run.objects.prune_undo(row.pk, worker=me, status=status)
            standing_refresh(row.source_id)
            logger.info("backup #%s was pinned while being pruned; kept", row.pk)
            continue
        try:
            finished += _delete_owned([row], me)
        except PruneFenced as fenced:
            # Another pruner adopted it in between; it finishes the job.
            problems.append(str(fenced))
            continue
    return finished, problems


def _recover(source: Source | None, me: str, now: datetime) -> tuple[list[Run], list[str]]:
    """Finish the removals dead pruners left (of `source`, or of all); return them, problems."""
    runs = Run.objects.filter(kind=Run.Kind.BACKUP, status=Run.Status.PRUNING).defer("log")
    leftovers = Manifest.objects.filter(run__status=Run.Status.PRUNED)
    if source is not None:
        runs = runs.filter(source=source)
        leftovers = leftovers.filter(run__source=source)
    finished, problems = _finish_interrupted(list(runs), me, now)
    leftovers.delete()
    return finished, problems


def prune_recover(*, source: Source | None = None, now: datetime | None = None) -> list[int]:
    """Finish the removals interrupted by dead pruners; return the runs now `pruned`."""
    finished, _problems = _recover(source, worker_identity(), now or timezone.now())
    return [run.pk for run in finished]


def _prune_source(source: Source, me: str, dry_run: bool, result: dict) -> bool:
    """Prune one source into `result`; return False when this pruner was fenced out."""
    if not dry_run:
        finished, problems = _recover(source, me, timezone.now())
        result["problems"].extend(problems)
        result["remove"].extend(_entry(run, source) for run in finished)
    plan = prune_plan(source=source)
    planned_at = time.monotonic()
    result["problems"].extend(plan.problems)
    result["storages"].extend(_storage_entries(plan))
    keep = [_entry(run, source, reasons) for run, reasons in plan.keep]
    if dry_run:
        result["keep"].extend(keep)
        result["remove"].extend(_entry(run, source) for run in plan.remove)
        return True
    for start in range(0, len(plan.copy_drops), BATCH):
        _dropped, problems = _drop_copies(plan.copy_drops[start : start + BATCH], me)
        result["problems"].extend(problems)
    leaving = {run.pk for run in plan.remove}
    moves = plan.moves
    # The backups whose own archive goes: those leaving, and those kept as a copy.
    pending = [*plan.remove, *(run for run, _reasons in plan.keep if run.pk in moves)]
    while pending:
        # A plan older than the grace period may be stale (a pause, a slow disk): the
        # claims re-check every pin anyway, but the rules are applied afresh too.
        if time.monotonic() - planned_at > settings.ABANDON_AFTER_S / 2:
            plan = prune_plan(source=source)
            planned_at = time.monotonic()
            keep = [_entry(run, source, reasons) for run, reasons in plan.keep]
            leaving, moves = {run.pk for run in plan.remove}, plan.moves
            pending = [*plan.remove, *(run for run, _reasons in plan.keep if run.pk in moves)]
            if not pending:
                break
        batch, pending = pending[:BATCH], pending[BATCH:]
        claimed, kept = _claim(batch, me, timezone.now())
        # A backup that is no longer a good one ("changed") was handled by someone else.
        keep.extend(
            _entry(run, source, [kept[run.pk]])
            for run in batch
            if kept.get(run.pk) not in (None, "changed") and run.pk in leaving
        )
        if not claimed:
            continue
        try:
            gone = _delete_owned(claimed, me, moves)
        except PruneFenced as fenced:
            logger.warning("%s", fenced)
            result["keep"].extend(keep)
            result["problems"].append(str(fenced))
            return False
        result["remove"].extend(_entry(run, source) for run in gone)
    result["keep"].extend(keep)
    return True


def prune_execute(*, source: Source | None = None, dry_run: bool = False) -> dict:
    """Apply retention to one source, or to every source with a policy; return the report.

    The report is the contract's `{"keep": [{"id", "source", "reasons"}], "remove": [{"id",
    "source"}]}` (with `dry_run`, what would be removed), plus `storages` (per source and
    storage: its role, its rules, what it keeps and why and what it lets go), `problems`
    (discrepancies, and removals this pruner had to leave) and `skipped` (sources whose
    policy keeps everything). With a `source` whose policy has no keep rule, raise PruneRefused.
    """
    result: dict = {"keep": [], "remove": [], "storages": [], "problems": [], "skipped": []}
    if source is not None:
        _rules(source)
        sources = [source]
    else:
        sources = list(
            Source.objects.filter(policy__isnull=False).select_related("policy").order_by("name")
        )
    me = worker_identity()
    for current in sources:
        try:
            if not _prune_source(current, me, dry_run, result):
                break
        except PruneRefused as refused:
            result["skipped"].append({"source": current.name, "reason": str(refused)})
    return result


def prune_after_backup(*, run_id: int) -> dict | None:
    """Apply retention to the source of backup `run_id`, as after each scheduled backup.

    A source whose policy keeps everything is left alone quietly; return the report, or
    None when there was nothing to do.
    """
    run = Run.objects.select_related("source__policy").filter(pk=run_id).first()
    if run is None or run.source.policy is None:
        return None
    try:
        report = prune_execute(source=run.source)
    except PruneRefused as refused:
        logger.info("no prune after backup #%s: %s", run_id, refused)
        return None
    for problem in report["problems"]:
        logger.warning("prune of %s: %s", run.source.name, problem)
    return report

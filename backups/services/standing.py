"""Keep each source's standing as data, derived from the run table as runs end.

The compliance service reads one `SourceStanding` row per source, plus the per-day counts
(`SourceDay`) and the stretches out of RPO target (`RpoGap`) of the last 30 days, instead
of the run history. This module is their only writer:

- `standing_refresh(source_id)` after anything that changes what a source's runs say: a
  run reaching its final state (succeeded, failed, cancelled, abandoned), retention moving
  a backup to `pruning`/`pruned` (or back), an import creating runs, a verification
  setting a backup's verdict. It derives the newest runs of each sort with indexed
  "newest per source" reads, and the days and gaps from the previous newest backup on
  (usually one or two runs), or from `since` when older history changed.
- `standing_recompute()` derives rows from the whole window, for the data migration, the
  `recompute_standing` command and housekeeping, which re-derives a few sources each minute in
  turn (and at once those whose policy's RPO or schedule changed), so a row that drifted
  (a write lost to a crash, an edit made behind the services' back) heals.

Every function takes the models from `_models(apps)`, so the data migration runs the same
code with the historical models.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F, OuterRef, Q, Subquery
from django.utils import timezone

from backups.models import Run
from backups.services.compliance import (
    MISSED_LIMIT,
    RPO_COVERING,
    WINDOW,
    missed_slots,
    slot_tolerance_s,
)

logger = logging.getLogger(__name__)

# Days and gaps are derived this far back on a full recompute: the window and the day it
# opens on, whatever the clock says when read.
DERIVED_SPAN = WINDOW + timedelta(days=1)
# Housekeeping re-derives this many sources from the whole window on each pass (every
# minute), the least recently derived first: a fleet of a thousand is done every 100 min.
ROTATION_BATCH = 10
# Days and gaps older than this are no longer read by anyone.
KEPT_SPAN = WINDOW + timedelta(days=2)


@dataclass
class _Models:
    run: type
    source: type
    standing: type
    day: type
    gap: type


def _models(apps=None) -> _Models:
    if apps is None:
        from backups import models

        return _Models(
            models.Run, models.Source, models.SourceStanding, models.SourceDay, models.RpoGap
        )
    return _Models(*(apps.get_model("backups", name) for name in _MODEL_NAMES))


_MODEL_NAMES = ("Run", "Source", "SourceStanding", "SourceDay", "RpoGap")


def _has_field(model, name: str) -> bool:
    """Return whether `model` has the field: the migration that fills the standing runs
    on the models as they were then."""
    return any(field.name == name for field in model._meta.get_fields())


def _newest(runs, *order: str, column: str = "pk") -> Subquery:
    return Subquery(runs.order_by(*order, "-pk").values(column)[:1])


def _head_facts(m: _Models, source_ids: list[int]) -> list[dict]:
    """Return each source's newest runs of each sort, one query for them all."""
    mine = m.run.objects.filter(source=OuterRef("pk"))
    backups = mine.filter(kind=Run.Kind.BACKUP)
    good = backups.filter(status__in=Run.GOOD)
    verified = good.filter(verified=True)
    covered = mine.filter(RPO_COVERING)
    verdicts = mine.filter(
        kind=Run.Kind.VERIFY, status__in=[*Run.GOOD, Run.Status.FAILED], finished_at__isnull=False
    )
    if _has_field(m.run, "checks_skipped"):
        # A verification that could not read an encrypted backup's contents (no key on
        # its host) says nothing of its integrity: the verdict before it stands.
        verdicts = verdicts.filter(checks_skipped=False)
    proofs = mine.filter(
        kind__in=[Run.Kind.RESTORE, Run.Kind.VERIFY],
        status__in=Run.GOOD,
        restore_seconds__isnull=False,
    )
    return list(
        m.source.objects.filter(pk__in=source_ids)
        .annotate(
            last_backup_pk=_newest(backups, "-queued_at"),
            attempted_at=_newest(backups, "-queued_at", column="queued_at"),
            last_success_pk=_newest(good, "-started_at"),
            last_success_at=_newest(good, "-started_at", column="started_at"),
            last_verified_pk=_newest(verified, "-started_at"),
            verified_at=_newest(verified, "-started_at", column="started_at"),
            last_verify_pk=_newest(verdicts, "-finished_at"),
            verify_status=_newest(verdicts, "-finished_at", column="status"),
            last_proof_pk=_newest(proofs, "-finished_at"),
            proof_seconds=_newest(proofs, "-finished_at", column="restore_seconds"),
            proof_at=_newest(proofs, "-finished_at", column="finished_at"),
            covered_until=_newest(covered, "-started_at", column="started_at"),
            first_covered_at=Subquery(
                covered.order_by("started_at", "pk").values("started_at")[:1]
            ),
        )
        .values(
            "pk",
            "created_at",
            "policy__rpo_s",
            "policy__schedule",
            "last_backup_pk",
            "attempted_at",
            "last_success_pk",
            "last_success_at",
            "last_verified_pk",
            "verified_at",
            "last_verify_pk",
            "verify_status",
            "last_proof_pk",
            "proof_seconds",
            "proof_at",
            "covered_until",
            "first_covered_at",
        )
    )


def _integrity(verify_status: str | None) -> str:
    if verify_status is None:
        return "unknown"
    return "ok" if verify_status in Run.GOOD else "failed"


def _midnight(day: dt.date) -> datetime:
    return datetime.combine(day, dt.time(), tzinfo=dt.UTC)


def _day(moment: datetime) -> dt.date:
    return moment.astimezone(dt.UTC).date()


def _derive_history(m: _Models, facts: dict, from_day: dt.date) -> tuple[list, list]:
    """Return the day rows and the gap rows of one source from `from_day` on.

    Reads the source's backups queued or started since that day's midnight (and the
    newest success before it), whatever their number: on a refresh that is the runs since
    the previous newest backup, on a recompute the window.
    """
    pk = facts["pk"]
    start = _midnight(from_day)
    backups = m.run.objects.filter(source_id=pk, kind=Run.Kind.BACKUP)
    rows = list(
        backups.filter(Q(queued_at__gte=start) | Q(started_at__gte=start)).values_list(
            "status", "queued_at", "started_at"
        )
    )
    counts: dict[dt.date, list[int]] = {}
    for status, queued_at, _started in rows:
        if queued_at < start:
            continue  # counted on its own day, which is not derived again
        tally = counts.setdefault(_day(queued_at), [0, 0, 0])
        if status in Run.SUCCEEDED_ONCE:
            tally[0] += 1
        elif status in Run.BAD:
            tally[1] += 1

    cron = (facts["policy__schedule"] or "").strip()
    attempted_at = facts["attempted_at"]
    if cron and attempted_at is not None:
        # Slots up to the newest attempt are judged for good: no later attempt can be
        # queued at or before them. Those after it are judged when read.
        low = max(start - timedelta(microseconds=1), facts["created_at"])
        attempts = [queued_at for _s, queued_at, _t in rows]
        for slot in missed_slots(
            cron, low, attempted_at, attempts, slot_tolerance_s(cron), MISSED_LIMIT
        ):
            counts.setdefault(_day(slot), [0, 0, 0])[2] += 1
    days = [
        m.day(source_id=pk, day=day, succeeded=s, failed=f, missed=x)
        for day, (s, f, x) in sorted(counts.items())
    ]

    rpo_s = facts["policy__rpo_s"]
    gaps = []
    if rpo_s is not None:
        covered = m.run.objects.filter(RPO_COVERING, source_id=pk)
        anchor = list(
            covered.filter(started_at__lt=start)
            .order_by("-started_at")
            .values_list("started_at", flat=True)[:1]
        )
        times = sorted(
            {
                t
                for status, _q, t in rows
                if t is not None and t >= start and status in Run.SUCCEEDED_ONCE
            }
        )
        reach = timedelta(seconds=rpo_s)
        if not anchor and times and facts["created_at"] < times[0]:
            # Before its first backup a source under watch was out of target.
            gaps.append(
                m.gap(source_id=pk, start_s=_epoch(facts["created_at"]), end_s=_epoch(times[0]))
            )
        covered_to = anchor[0] + reach if anchor else None
        for moment in times:
            if covered_to is not None and moment > covered_to:
                gaps.append(m.gap(source_id=pk, start_s=_epoch(covered_to), end_s=_epoch(moment)))
            covered_to = max(covered_to, moment + reach) if covered_to else moment + reach
    return days, gaps


def _epoch(moment: datetime) -> float:
    return moment.timestamp()


def _lock(m: _Models, source_id: int):
    """Return the standing row of `source_id`, locked until the transaction ends."""
    for _attempt in (1, 2):
        row = m.standing.objects.select_for_update().filter(source_id=source_id).first()
        if row is not None:
            return row
        try:
            with transaction.atomic():
                return m.standing.objects.create(source_id=source_id)
        except IntegrityError:
            continue  # created meanwhile by another refresh: lock that one
    raise DatabaseError(f"the standing of source #{source_id} could not be locked")


def _store(m: _Models, pk: int, since: datetime | None, now: datetime, full: bool) -> bool:
    """Derive and write the standing of source `pk`; return False when it is gone.

    The row is locked before the runs are read: two refreshes of one source (a backup and
    a verification ending together) then write in turn, the later one from what both saw.
    """
    if not m.source.objects.filter(pk=pk).exists():
        return False
    row = _lock(m, pk)
    (facts,) = _head_facts(m, [pk])
    cron = (facts["policy__schedule"] or "").strip()
    rpo_s = facts["policy__rpo_s"]
    window_day = _day(now - DERIVED_SPAN)
    targets_changed = row.gaps_rpo_s != rpo_s or row.slots_cron != cron
    if full or targets_changed or row.attempted_at is None or row.refreshed_at is None:
        from_day = window_day
    else:
        # Runs end in the order they were queued, one backup at a time: what changed since
        # the last refresh was queued on or after the previous newest attempt's day.
        from_day = max(_day(row.attempted_at), window_day)
    if since is not None:
        from_day = min(from_day, _day(since))
    days, gaps = _derive_history(m, facts, from_day)
    m.day.objects.filter(source_id=pk, day__gte=from_day).delete()
    m.day.objects.bulk_create(days)
    m.gap.objects.filter(source_id=pk, end_s__gte=_epoch(_midnight(from_day))).delete()
    m.gap.objects.bulk_create(gaps)

    row.last_backup_id = facts["last_backup_pk"]
    row.attempted_at = facts["attempted_at"]
    row.last_success_id = facts["last_success_pk"]
    row.last_success_at = facts["last_success_at"]
    row.last_verified_id = facts["last_verified_pk"]
    row.verified_at = facts["verified_at"]
    row.last_verify_id = facts["last_verify_pk"]
    row.integrity = _integrity(facts["verify_status"])
    row.last_proof_id = facts["last_proof_pk"]
    row.proof_seconds = facts["proof_seconds"]
    row.proof_at = facts["proof_at"]
    row.first_covered_at = facts["first_covered_at"]
    row.covered_until = facts["covered_until"]
    row.gaps_rpo_s = rpo_s
    row.slots_cron = cron
    row.refreshed_at = now
    if full or from_day <= window_day:
        row.recomputed_at = now
    row.save()
    return True


def standing_refresh(source_id: int, *, since: datetime | None = None, apps=None) -> None:
    """Bring the stored standing of one source in line with its runs.

    Call it after a run of the source reached its final state, or after anything else
    changed what its runs say (a prune, an import, a verification's verdict). Pass `since`
    when runs older than the source's newest backup were created or changed (an import):
    the days and gaps from then on are derived again. A failure is logged and left to
    housekeeping's recompute: the run's own state is already written.
    """
    try:
        _refresh(_models(apps), [source_id], since=since, full=False)
    except DatabaseError:
        logger.exception("the standing of source %s could not be refreshed", source_id)


def _refresh(m: _Models, source_ids: list[int], *, since, full: bool) -> int:
    now = timezone.now()
    done = 0
    for pk in source_ids:
        with transaction.atomic():
            done += _store(m, pk, since, now, full)
    return done


def standing_recompute(*, source_ids: list[int] | None = None, apps=None) -> int:
    """Derive the standing of every source (or of `source_ids`) from the whole window.

    Return how many sources were derived. Each source is one transaction: a long
    recompute never holds more than one row's lock.
    """
    m = _models(apps)
    ids = list(m.source.objects.order_by("pk").values_list("pk", flat=True))
    if source_ids is not None:
        wanted = set(source_ids)
        ids = [pk for pk in ids if pk in wanted]
    return _refresh(m, ids, since=None, full=True)


def standing_housekeeping(*, now: datetime | None = None) -> dict:
    """Heal stored standings a little on every housekeeping pass; return what was done.

    Derives again, from the whole window, the sources whose standing is missing or was
    derived against another RPO or schedule than their policy's now, and the
    ROTATION_BATCH sources derived longest ago; removes days and gaps nobody reads.
    """
    m = _models()
    now = now or timezone.now()
    rows = m.source.objects.values_list(
        "pk",
        "policy__rpo_s",
        "policy__schedule",
        "standing__source",
        "standing__gaps_rpo_s",
        "standing__slots_cron",
    )
    stale = [
        pk
        for pk, rpo_s, cron, stored, gaps_rpo_s, slots_cron in rows
        if stored is None or gaps_rpo_s != rpo_s or (slots_cron or "") != (cron or "").strip()
    ]
    rotation = list(
        m.standing.objects.exclude(source_id__in=stale)
        .order_by(F("recomputed_at").asc(nulls_first=True), "source_id")
        .values_list("source_id", flat=True)[:ROTATION_BATCH]
    )
    derived = standing_recompute(source_ids=stale + rotation) if stale or rotation else 0
    oldest = now - KEPT_SPAN
    m.day.objects.filter(day__lt=_day(oldest)).delete()
    m.gap.objects.filter(end_s__lt=_epoch(oldest)).delete()
    return {"stale": len(stale), "derived": derived}

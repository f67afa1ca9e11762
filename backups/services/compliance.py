"""Where each source stands against its targets: RPO, RTO, integrity, the last 30 days.

One service for the pages, `status` and `/metrics`, so they never disagree. It reads all
sources at once in a fixed number of queries, whatever the number of sources and runs:
the sources with their newest runs of each sort (correlated subqueries: the id of a run
the callers use, the one or two columns read of the others), those runs, the backups of
the last 30 days, and the schedules. The math is the engine's (`engine.compliance`,
`engine.durations`), fed with the facts and a clock, so a test can walk time forward by
passing `now`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db.models import OuterRef, Q, QuerySet, Subquery
from django.utils import timezone

from backups.engine import compliance
from backups.engine.durations import cron_slots, format_duration, next_run
from backups.models import Run, Source
from backups.services.schedules import next_runs

WINDOW = timedelta(days=30)

# Missed slots are counted up to this many per source: past it the number says nothing
# more to a person (every slot of a long outage), and each slot costs a cron step, which
# would make a minutely schedule down for weeks slow down every page and scrape.
MISSED_LIMIT = 1000

# A backup that succeeded and was later pruned still covered its time: history counts it.

INTEGRITY_OK = "ok"
INTEGRITY_FAILED = "failed"
INTEGRITY_UNKNOWN = "unknown"


@dataclass
class Standing:
    """One source's standing at one instant."""

    source: Source
    last_backup: Run | None
    last_success_at: datetime | None
    age_s: float | None
    rpo_s: int | None
    rpo_status: str
    verified_at: datetime | None
    rto_s: int | None
    last_drill_s: float | None
    last_drill_at: datetime | None
    rto_status: str
    integrity: str
    running: Run | None
    next_run_at: datetime | None
    within_target_30d: float | None
    success_rate_30d: float | None
    missed_30d: int
    # The newest successful backup itself (its size and duration feed the metrics).
    last_success: Run | None = None
    # The instant this standing describes.
    at: datetime | None = None
    # Why the RPO standing cannot be judged, when a sentence is needed to say it.
    rpo_note: str = ""


def _newest(runs: QuerySet, *order: str, column: str = "pk") -> Subquery:
    return Subquery(runs.order_by(*order, "-pk").values(column)[:1])


def _annotated(sources: QuerySet, start: datetime, recent: bool = True) -> QuerySet:
    mine = Run.objects.filter(source=OuterRef("pk"))
    backups = mine.filter(kind=Run.Kind.BACKUP)
    good = backups.filter(status__in=Run.GOOD)
    proofs = mine.filter(
        kind__in=[Run.Kind.RESTORE, Run.Kind.VERIFY],
        status__in=Run.GOOD,
        restore_seconds__isnull=False,
    )
    verifies = mine.filter(
        kind=Run.Kind.VERIFY, status__in=[*Run.GOOD, Run.Status.FAILED], finished_at__isnull=False
    )
    annotated = sources.select_related("policy").annotate(
        last_backup_id=_newest(backups, "-queued_at"),
        last_success_id=_newest(good, "-started_at"),
        # Of these runs only a column or two is read: those, not ids of runs to build.
        verified_at=_newest(good.filter(verified=True), "-started_at", column="started_at"),
        proof_seconds=_newest(proofs, "-finished_at", column="restore_seconds"),
        proof_at=_newest(proofs, "-finished_at", column="finished_at"),
        verify_status=_newest(verifies, "-finished_at", column="status"),
        # A backup or in-place restore first, and a running run before a queued one.
        active_id=_newest(mine.filter(status__in=Run.ACTIVE), "-exclusive", "-status"),
    )
    if not recent:
        return annotated  # the 30-day figures, the only readers of the next one, are left out
    before_window = backups.filter(status__in=Run.SUCCEEDED_ONCE, started_at__lt=start)
    return annotated.annotate(
        success_before_window=Subquery(
            before_window.order_by("-started_at").values("started_at")[:1]
        ),
    )


def _history(source_ids: list[int], start: datetime) -> dict[int, list[tuple]]:
    """Return (status, queued_at, started_at) of each source's backups of the window."""
    rows = (
        Run.objects.filter(kind=Run.Kind.BACKUP, source_id__in=source_ids)
        .filter(Q(queued_at__gte=start) | Q(started_at__gte=start))
        .values_list("source_id", "status", "queued_at", "started_at")
    )
    history: dict[int, list[tuple]] = {pk: [] for pk in source_ids}
    for source_id, status, queued_at, started_at in rows:
        history[source_id].append((status, queued_at, started_at))
    return history


def _tolerance_s(cron: str, start: datetime, tz: ZoneInfo) -> int:
    """Return how late a backup may start and still count for its slot: the schedule's
    shortest gap between slots (a backup must come before the next slot), at least 60 s."""
    slots = [next_run(cron, start, tz)]
    for _ in range(7):
        slots.append(next_run(cron, slots[-1], tz))
    gap = min((b - a).total_seconds() for a, b in zip(slots, slots[1:], strict=False))
    return max(60, int(gap))


def _missed(cron: str, start: datetime, now: datetime, run_times: list[datetime]) -> int:
    """Count the slots of `cron` in (start, now] that no backup started in time for, up to
    MISSED_LIMIT.

    Slots are only enumerated inside the gaps between backups (a slot is missed exactly
    when the next backup after it comes later than the tolerance), so a healthy minutely
    schedule costs a few cron steps, not forty thousand.
    """
    tz = ZoneInfo(settings.TIME_ZONE)
    tolerance_s = _tolerance_s(cron, start, tz)
    tolerance = timedelta(seconds=tolerance_s)
    # A slot is judged once its tolerance has passed; until then a backup may still come.
    judged_until = now - tolerance
    if judged_until <= start:
        return 0
    times = sorted(t for t in run_times if start < t <= now)
    gaps = []
    previous = start
    for moment in times:
        gap_end = min(moment - tolerance - timedelta(microseconds=1), judged_until)
        if gap_end > previous:
            gaps.append((previous, gap_end))
        previous = max(previous, moment)
    if judged_until > previous:
        gaps.append((previous, judged_until))
    candidates: list[datetime] = []
    # Newest gaps first: when the limit cuts the count short, recent misses are the ones kept.
    for gap_start, gap_end in reversed(gaps):
        budget = MISSED_LIMIT - len(candidates)
        if budget <= 0:
            break
        candidates.extend(cron_slots(cron, gap_start, gap_end, tz, limit=budget))
    missed = compliance.missed_slots(slots=candidates, run_times=times, tolerance_s=tolerance_s)
    return min(len(missed), MISSED_LIMIT)


def _integrity(verify_status: str | None) -> str:
    if verify_status is None:
        return INTEGRITY_UNKNOWN
    return INTEGRITY_OK if verify_status in Run.GOOD else INTEGRITY_FAILED


def _standing(
    source: Source,
    runs: dict[int, Run],
    history: list[tuple],
    next_run_at: datetime | None,
    now: datetime,
    start: datetime,
    recent: bool = True,
) -> Standing:
    policy = source.policy
    rpo_s = policy.rpo_s if policy else None
    rto_s = policy.rto_s if policy else None
    last_success = runs.get(source.last_success_id)
    last_success_at = last_success.started_at if last_success else None

    # A past next run is due now: the scheduler starts it at its next pass.
    planned = max(next_run_at, now) if next_run_at is not None else None
    rpo_status = compliance.rpo_status(
        last_success_at=last_success_at, now=now, rpo_s=rpo_s, next_run_at=planned
    )
    ahead_s = compliance.stamped_ahead_s(last_success_at=last_success_at, now=now)
    rpo_note = (
        f"The newest good backup (#{last_success.pk}) is stamped {format_duration(ahead_s)} "
        "in the future: the clock of the host that made it is ahead, so the age of the data "
        "cannot be told. Set that host's clock right (NTP); the next backup then counts."
        if ahead_s
        else ""
    )
    rto_status = compliance.rto_status(
        last_drill_s=source.proof_seconds,
        last_drill_at=source.proof_at,
        now=now,
        rto_s=rto_s,
        drill_every_s=policy.drill_every_s if policy else None,
    )

    if not recent:
        history = []
    once = Run.SUCCEEDED_ONCE
    successes = [started for status, _q, started in history if status in once and started]
    ended = [status for status, _q, _s in history if status in once or status in Run.BAD]
    success_rate = sum(status in once for status in ended) / len(ended) if ended else None
    within = None
    if rpo_s is not None and recent:
        times = successes + ([source.success_before_window] if source.success_before_window else [])
        first_known = min([source.created_at, *times]) if times else source.created_at
        within = compliance.within_target_share(
            backup_times=times, rpo_s=rpo_s, start=start, end=now, first_known=first_known
        )
    missed = 0
    if next_run_at is not None and policy and policy.schedule and recent:
        watched_from = max(start, source.created_at)
        missed = _missed(policy.schedule, watched_from, now, [q for _s, q, _t in history])

    return Standing(
        source=source,
        last_backup=runs.get(source.last_backup_id),
        last_success_at=last_success_at,
        age_s=(now - last_success_at).total_seconds() if last_success_at else None,
        rpo_s=rpo_s,
        rpo_status=rpo_status,
        verified_at=source.verified_at,
        rto_s=rto_s,
        last_drill_s=source.proof_seconds,
        last_drill_at=source.proof_at,
        rto_status=rto_status,
        integrity=_integrity(source.verify_status),
        running=runs.get(source.active_id),
        next_run_at=next_run_at,
        within_target_30d=within,
        success_rate_30d=success_rate,
        missed_30d=missed,
        last_success=last_success,
        at=now,
        rpo_note=rpo_note,
    )


def fleet_standing(
    *, now: datetime | None = None, sources: QuerySet | None = None, recent: bool = True
) -> list[Standing]:
    """Return the standing of every source (or of `sources`) at `now`, in their order.

    Costs four queries however many sources and runs there are. With `recent=False` the
    30-day figures are left out (None, and 0 missed) and their query skipped: they read
    every backup of the window, which a page showing only the current standing of the
    whole fleet cannot afford on every refresh.
    """
    now = now or timezone.now()
    start = now - WINDOW
    listed = list(
        _annotated(sources if sources is not None else Source.objects.all(), start, recent)
    )
    if not listed:
        return []
    wanted = {
        pk
        for source in listed
        for pk in (source.last_backup_id, source.last_success_id, source.active_id)
        if pk is not None
    }
    # Only the small columns: a page shows these runs by status, size and time.
    heavy = ("log", "warnings", "checks", "paths", "error", "current_item", "archive")
    runs = {run.pk: run for run in Run.objects.filter(pk__in=wanted).defer(*heavy)}
    by_id = {source.pk: source for source in listed}
    for run in runs.values():
        # Every run here belongs to a listed source: spare a query per `run.source`.
        run.source = by_id[run.source_id]
    ids = list(by_id)
    history = _history(ids, start) if recent else {}
    planned = next_runs(ids)
    return [
        _standing(
            source, runs, history.get(source.pk, []), planned.get(source.pk), now, start, recent
        )
        for source in listed
    ]


def source_standing(source: Source, *, now: datetime | None = None) -> Standing:
    """Return the standing of one source at `now`."""
    return fleet_standing(now=now, sources=Source.objects.filter(pk=source.pk))[0]


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _round(value: float | None, digits: int = 1) -> float | None:
    return round(value, digits) if value is not None else None


def standing_to_dict(standing: Standing) -> dict:
    """Return the contract's `status` object for a source, plus the extra facts."""
    source = standing.source
    last = standing.last_backup
    active = standing.running
    at = standing.at or timezone.now()
    verified_age = (at - standing.verified_at).total_seconds() if standing.verified_at else None
    return {
        "name": source.name,
        "kind": source.kind,
        "last_success_at": _iso(standing.last_success_at),
        "age_s": _round(standing.age_s),
        "rpo_s": standing.rpo_s,
        "rpo_status": standing.rpo_status,
        "rpo_note": standing.rpo_note or None,
        "rto_s": standing.rto_s,
        "last_drill_s": _round(standing.last_drill_s, 3),
        "rto_status": standing.rto_status,
        "integrity": standing.integrity,
        "running": active is not None,
        "policy": source.policy.name if source.policy else None,
        "enabled": source.enabled,
        "verified_at": _iso(standing.verified_at),
        "verified_age_s": _round(verified_age),
        "last_drill_at": _iso(standing.last_drill_at),
        "next_run_at": _iso(standing.next_run_at),
        "within_target_30d": _round(standing.within_target_30d, 4),
        "success_rate_30d": _round(standing.success_rate_30d, 4),
        "missed_30d": standing.missed_30d,
        "active_run": (
            {"id": active.pk, "kind": active.kind, "status": active.status} if active else None
        ),
        "last_backup": (
            {
                "id": last.pk,
                "status": last.status,
                "started_at": _iso(last.started_at),
                "size": last.size,
                "duration_s": _round(last.duration_s, 3),
            }
            if last
            else None
        ),
    }

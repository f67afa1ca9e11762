"""Where each source stands against its targets: RPO, RTO, integrity, the last 30 days.

One service, and one vocabulary (`Health`, `RpoStatus`, `RtoStatus`, `Integrity`), for the
pages, `status` and `/metrics`, so they never disagree. It reads each source's stored
standing (`SourceStanding`, kept by `backups.services.standing` as runs end) rather than
the run history, so its cost grows with the number of sources, not with the runs: the
sources with their standing and its two runs, the runs in progress, the schedules, and for
the 30-day figures two sums over small per-source tables. The math is the engine's
(`engine.compliance`, `engine.durations`), fed with the facts and a clock, so a test can
walk time forward by passing `now`.

The 30-day figures:

- **within target** is exact: the share of the last 30 days (from when the source came
  under watch, or its first backup if that is older) during which the newest backup that
  once succeeded (a pruned one still covered its time) was at most the RPO old. The
  stretches out of target between backups are stored as they close (`RpoGap`); the one
  since the newest backup is added when read.
- **success rate** and **missed schedules** count whole UTC days: from midnight of the day
  the 30-day window opens, up to now (between 30 and 31 days). A backup counts on the day
  it was queued, a missed slot on its own day.
- Both are derived against the policy's RPO and schedule in force when they were stored.
  When either changes, the next run that ends or housekeeping's next pass (every minute)
  derives them again against the new targets over the whole window, as if the new target
  had always applied; until then the share within target is not stated (None), and slots
  already judged keep their verdict.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import models
from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet, Subquery, Sum, Value
from django.db.models.functions import Greatest, Least
from django.utils import timezone

from backups.engine import compliance as rules
from backups.engine.durations import cron_slots, format_duration, next_run
from backups.models import Copy, Policy, RpoGap, Run, Source, SourceDay
from backups.services.timetable import next_runs

WINDOW = timedelta(days=30)

# Missed slots are counted up to this many per source: past it the number says nothing
# more to a person (every slot of a long outage), and each slot costs a cron step, which
# would make a minutely schedule down for weeks slow down every page and scrape.
MISSED_LIMIT = 1000
TOLERANCE_REFERENCE = datetime(2001, 1, 1, tzinfo=dt.UTC)


class RpoStatus(models.TextChoices):
    """How old the newest good backup is against the RPO target."""

    OK = rules.OK, "OK"
    AT_RISK = rules.AT_RISK, "at risk"
    BREACHED = rules.BREACHED, "breached"
    UNKNOWN = rules.UNKNOWN, "unknown"


class RtoStatus(models.TextChoices):
    """What the newest timed restore says about the RTO target."""

    OK = rules.OK, "OK"
    BREACHED = rules.BREACHED, "breached"
    UNPROVEN = rules.UNPROVEN, "unproven"


class Integrity(models.TextChoices):
    """The verdict of the newest verification."""

    OK = "ok", "OK"
    FAILED = "failed", "failed"
    UNKNOWN = "unknown", "unknown"


class Health(models.TextChoices):
    """A source's standing in one word, in order of severity: what needs a human first."""

    BREACHED = "breached", "breached"
    AT_RISK = "at_risk", "at risk"
    NEVER = "never", "never backed up"
    OK = "ok", "OK"


HEALTH_ORDER = {health: rank for rank, health in enumerate(Health)}

# The columns the current standing needs; every other one would be read and parsed for
# each of a thousand sources on every refresh of the overview.
CURRENT_COLUMNS = (
    "name",
    "slug",
    "kind",
    "location",
    "owner",
    "enabled",
    "policy",
    "policy__name",
    "policy__schedule",
    "policy__rpo_s",
    "policy__rto_s",
    "policy__drill_every_s",
    "standing__last_success_at",
    "standing__verified_at",
    "standing__integrity",
    "standing__proof_seconds",
    "standing__proof_at",
    *(
        f"standing__last_backup__{column}"
        for column in ("kind", "status", "queued_at", "started_at", "size", "source")
    ),
)
# What the 30-day figures, `status` and the metrics read besides.
RECENT_COLUMNS = (
    "created_at",
    "standing__attempted_at",
    "standing__first_covered_at",
    "standing__covered_until",
    "standing__gaps_rpo_s",
    "standing__last_backup__finished_at",
    *(
        f"standing__last_success__{column}"
        for column in ("kind", "status", "started_at", "finished_at", "size", "source")
    ),
)
# Heavy columns of the runs in progress that no page of the fleet shows.
_HEAVY = ("log", "warnings", "checks", "paths", "error", "current_item", "archive")


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
    health: str = Health.NEVER
    # Why the RPO standing cannot be judged, when a sentence is needed to say it.
    rpo_note: str = ""
    # Offsite copies, when the policy asks for them: the age of the newest backup with a
    # proven copy, and how many proven copies the newest restore point has.
    offsite_status: str | None = None
    offsite_age_s: float | None = None
    copies: int | None = None

    @property
    def last_backup_failed(self) -> bool:
        """Return whether the newest backup attempt ended without a usable result."""
        return self.last_backup is not None and self.last_backup.status in Run.BAD


def source_health(standing: Standing) -> str:
    """Fold a source's standing into one `Health` word, for counts, sorting and alerts.

    `breached`: the RPO or the RTO target is broken, or the newest verification failed
    (there may be no usable restore point); `at_risk`: the RPO target is close to lapsing
    or the last backup failed; `never`: nothing was ever backed up; `ok`: the rest.
    """
    if RpoStatus.BREACHED in (standing.rpo_status, standing.rto_status):
        return Health.BREACHED
    if standing.integrity == Integrity.FAILED:
        return Health.BREACHED
    if standing.last_success_at is None:
        return Health.NEVER
    if standing.rpo_status == RpoStatus.AT_RISK or standing.last_backup_failed:
        return Health.AT_RISK
    return Health.OK


# The backups whose start counts for the RPO: every one that succeeded when it ran,
# whatever retention did to it since. The stored gaps and the source page's chart use it.
RPO_COVERING = Q(kind=Run.Kind.BACKUP, status__in=Run.SUCCEEDED_ONCE, started_at__isnull=False)


def rpo_backup_times(source: Source, start: datetime, end: datetime) -> list[datetime]:
    """Return which backup times count for `source`'s RPO over [start, end], oldest first.

    A backup counts from its start, once it succeeded, whatever retention did to it since
    (a pruned backup still covered its time). The newest one before `start` comes first:
    it tells how old the data was when the window opened.
    """
    covered = Run.objects.filter(RPO_COVERING, source=source)
    before = list(
        covered.filter(started_at__lt=start)
        .order_by("-started_at")
        .values_list("started_at", flat=True)[:1]
    )
    inside = covered.filter(started_at__gte=start, started_at__lte=end).order_by("started_at")
    return [*before, *inside.values_list("started_at", flat=True)]


# --- scheduled slots -------------------------------------------------------------------


def schedule_zone() -> ZoneInfo:
    """Return the zone cron schedules are read in."""
    return ZoneInfo(settings.TIME_ZONE)


def slot_tolerance_s(cron: str) -> int:
    """Return how late a backup may be queued and still count for its slot.

    That is the schedule's shortest gap between slots (a backup must come before the next
    slot), at least 60 s. It is read from eight slots after a fixed January instant, so it
    does not depend on the clock (nor on a daylight-saving change): computed once per
    expression, not once per source on every page.
    """
    return _tolerance_s(cron, settings.TIME_ZONE)


@functools.lru_cache(maxsize=256)
def _tolerance_s(cron: str, zone: str) -> int:
    tz = ZoneInfo(zone)
    slots = [next_run(cron, TOLERANCE_REFERENCE, tz)]
    for _ in range(7):
        slots.append(next_run(cron, slots[-1], tz))
    gap = min((b - a).total_seconds() for a, b in zip(slots, slots[1:], strict=False))
    return max(60, int(gap))


def missed_slots(
    cron: str,
    low: datetime,
    until: datetime,
    attempts: list[datetime],
    tolerance_s: int,
    limit: int = MISSED_LIMIT,
) -> list[datetime]:
    """Return the slots of `cron` in (low, until] that no backup was queued in time for.

    A slot is met by a backup queued at the slot or at most `tolerance_s` after it;
    `attempts` must hold every queue time after `low` that can meet a slot of the range.
    At most `limit` slots are returned, the newest: recent misses are the ones a person
    looks at. The slots come from a per-day cache, so judging a thousand sources under
    one schedule walks the cron expression once per day, not once per source.
    """
    if until <= low:
        return []
    slots = slots_between(cron, low, until)
    missed = rules.missed_slots(slots=slots, run_times=attempts, tolerance_s=tolerance_s)
    return missed[-limit:] if limit > 0 else []


def slots_between(cron: str, low: datetime, until: datetime) -> list[datetime]:
    """Return the instants in (low, until] at which `cron` fires, in UTC, oldest first."""
    low, until = low.astimezone(dt.UTC), until.astimezone(dt.UTC)
    day, last = low.date(), until.date()
    slots: list[datetime] = []
    while day <= last:
        slots.extend(t for t in _day_slots(cron, settings.TIME_ZONE, day) if low < t <= until)
        day += timedelta(days=1)
    return slots


# A minutely schedule has 1,440 slots a day: a few hundred days of several schedules.
@functools.lru_cache(maxsize=512)
def _day_slots(cron: str, zone: str, day: dt.date) -> tuple[datetime, ...]:
    start = datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    # cron_slots reads (start, end]: a hair before each midnight makes it [00:00, 24:00).
    hair = timedelta(microseconds=1)
    return tuple(cron_slots(cron, start - hair, start + timedelta(days=1) - hair, ZoneInfo(zone)))


# --- reading the fleet -----------------------------------------------------------------


def _window_days(now: datetime) -> dt.date:
    """Return the first UTC day the 30-day counts include."""
    return (now - WINDOW).astimezone(dt.UTC).date()


def _epoch(moment: datetime) -> float:
    return moment.timestamp()


def _day_sums(ids: list[int] | None, now: datetime) -> dict[int, dict]:
    rows = SourceDay.objects.filter(
        day__gte=_window_days(now), day__lte=now.astimezone(dt.UTC).date()
    )
    if ids is not None:
        rows = rows.filter(source_id__in=ids)
    sums = rows.values("source_id").annotate(
        succeeded_n=Sum("succeeded"), failed_n=Sum("failed"), missed_n=Sum("missed")
    )
    return {row["source_id"]: row for row in sums.order_by()}


def _gap_sums(ids: list[int] | None, now: datetime) -> dict[int, float]:
    start_s, end_s = _epoch(now - WINDOW), _epoch(now)
    rows = RpoGap.objects.filter(end_s__gt=start_s, start_s__lt=end_s)
    if ids is not None:
        rows = rows.filter(source_id__in=ids)
    clipped = Least(F("end_s"), Value(end_s)) - Greatest(F("start_s"), Value(start_s))
    sums = rows.values("source_id").annotate(out=Sum(clipped, output_field=models.FloatField()))
    return {row["source_id"]: row["out"] or 0.0 for row in sums.order_by()}


def _active_runs(ids: list[int] | None) -> dict[int, list[Run]]:
    active = Run.objects.filter(status__in=Run.ACTIVE).defer(*_HEAVY)
    if ids is not None:
        active = active.filter(source_id__in=ids)
    by_source: dict[int, list[Run]] = {}
    for run in active:
        by_source.setdefault(run.source_id, []).append(run)
    return by_source


def _within(source: Source, stored, rpo_s: int | None, gaps_out_s: float, now: datetime):
    """Return the share of the window within the RPO target (see the module's docstring)."""
    if rpo_s is None:
        return None
    covered_until = stored.covered_until if stored is not None else None
    if covered_until is not None and stored.gaps_rpo_s != rpo_s:
        return None  # derived against another target: housekeeping derives it again
    first_known = source.created_at
    if covered_until is not None and stored.first_covered_at is not None:
        first_known = min(first_known, stored.first_covered_at)
    start = max(now - WINDOW, first_known)
    window_s = (now - start).total_seconds()
    if window_s <= 0:
        return 1.0
    if covered_until is None:
        return 0.0
    tail_from = max(covered_until + timedelta(seconds=rpo_s), start)
    out_s = gaps_out_s + max(0.0, (now - tail_from).total_seconds())
    return max(0.0, min(1.0, 1.0 - out_s / window_s))


def _missed(source: Source, stored, days: dict, active: list[Run], next_run_at, now) -> int:
    policy = source.policy
    cron = policy.schedule.strip() if policy else ""
    if next_run_at is None or not cron:
        return 0
    first_day = datetime.combine(_window_days(now), dt.time(), tzinfo=dt.UTC)
    watched_from = max(first_day, source.created_at)
    judged = stored.attempted_at if stored is not None and stored.attempted_at else None
    low = max(watched_from, judged) if judged else watched_from
    tolerance_s = slot_tolerance_s(cron)
    until = now - timedelta(seconds=tolerance_s)
    stored_missed = days.get("missed_n") or 0
    live = []
    if until > low and stored_missed < MISSED_LIMIT:
        attempts = [run.queued_at for run in active if run.kind == Run.Kind.BACKUP]
        live = missed_slots(cron, low, until, attempts, tolerance_s, MISSED_LIMIT - stored_missed)
    return min(stored_missed + len(live), MISSED_LIMIT)


def _offsite_columns() -> dict:
    """Return the annotations of a source that tell its offsite standing, read with it.

    `offsite_wanted`: its policy copies backups elsewhere; `offsite_newest`: when the newest
    restorable backup with a proven copy started; `latest_copies`: how many proven copies
    its newest restore point has.
    """
    proven = Copy.objects.filter(status=Copy.Status.SUCCEEDED)
    return {
        "offsite_wanted": Exists(
            Policy.copy_to.through.objects.filter(policy_id=OuterRef("policy_id"))
        ),
        "offsite_newest": Subquery(
            proven.filter(backup__source_id=OuterRef("pk"), backup__status__in=Run.GOOD)
            .order_by("-backup__started_at")
            .values("backup__started_at")[:1]
        ),
        "latest_copies": Subquery(
            proven.filter(backup_id=OuterRef("standing__last_success_id"))
            .order_by()
            .values("backup_id")
            .annotate(count=Count("pk"))
            .values("count")[:1]
        ),
    }


def _standing(
    source: Source,
    active: list[Run],
    days: dict | None,
    gaps_out_s: float,
    next_run_at: datetime | None,
    now: datetime,
) -> Standing:
    policy = source.policy
    rpo_s = policy.rpo_s if policy else None
    rto_s = policy.rto_s if policy else None
    stored = getattr(source, "standing", None)
    last_backup = stored.last_backup if stored is not None else None
    # Only the 30-day readers (status, metrics, the report and a source's page) load it.
    last_success = stored.last_success if stored is not None and days is not None else None
    last_success_at = stored.last_success_at if stored is not None else None
    # A backup or in-place restore first, and a running run before a queued one.
    running = max(
        active,
        key=lambda run: (run.exclusive, run.status == Run.Status.RUNNING, run.pk),
        default=None,
    )
    # The newest attempt may be the backup in progress, which ends (and is stored) later.
    for run in active:
        if run.kind == Run.Kind.BACKUP and (
            last_backup is None or (run.queued_at, run.pk) > (last_backup.queued_at, last_backup.pk)
        ):
            last_backup = run
    proof_s = stored.proof_seconds if stored is not None else None
    proof_at = stored.proof_at if stored is not None else None

    # A past next run is due now: the scheduler starts it at its next pass.
    planned = max(next_run_at, now) if next_run_at is not None else None
    ahead_s = rules.stamped_ahead_s(last_success_at=last_success_at, now=now)
    standing = Standing(
        source=source,
        last_backup=last_backup,
        last_success_at=last_success_at,
        age_s=(now - last_success_at).total_seconds() if last_success_at else None,
        rpo_s=rpo_s,
        rpo_status=rules.rpo_status(
            last_success_at=last_success_at, now=now, rpo_s=rpo_s, next_run_at=planned
        ),
        verified_at=stored.verified_at if stored is not None else None,
        rto_s=rto_s,
        last_drill_s=proof_s,
        last_drill_at=proof_at,
        rto_status=rules.rto_status(
            last_drill_s=proof_s,
            last_drill_at=proof_at,
            now=now,
            rto_s=rto_s,
            drill_every_s=policy.drill_every_s if policy else None,
        ),
        integrity=stored.integrity if stored is not None else Integrity.UNKNOWN,
        running=running,
        next_run_at=next_run_at,
        within_target_30d=None,
        success_rate_30d=None,
        missed_30d=0,
        last_success=last_success,
        at=now,
        rpo_note=(
            f"The newest good backup (#{last_success.pk}) is stamped "
            f"{format_duration(ahead_s)} in the future: the clock of the host that made it is "
            "ahead, so the age of the data cannot be told. Set that host's clock right (NTP); "
            "the next backup then counts."
            if ahead_s
            else ""
        ),
    )
    _judge_offsite(standing, source, now)
    if days is not None:
        succeeded, failed = days.get("succeeded_n") or 0, days.get("failed_n") or 0
        standing.success_rate_30d = succeeded / (succeeded + failed) if succeeded + failed else None
        standing.within_target_30d = _within(source, stored, rpo_s, gaps_out_s, now)
        standing.missed_30d = _missed(source, stored, days, active, next_run_at, now)
    standing.health = source_health(standing)
    return standing


def _judge_offsite(standing: Standing, source: Source, now: datetime) -> None:
    """Add the offsite facts; a missing or stale offsite copy puts an `ok` RPO at risk."""
    newest = getattr(source, "offsite_newest", None)
    standing.offsite_age_s = (now - newest).total_seconds() if newest else None
    if standing.last_success_at:
        standing.copies = getattr(source, "latest_copies", None) or 0
    standing.offsite_status = rules.offsite_status(
        wanted=bool(getattr(source, "offsite_wanted", False)),
        newest_copy_at=newest,
        now=now,
        rpo_s=standing.rpo_s,
    )
    if standing.offsite_status == rules.AT_RISK and standing.rpo_status == RpoStatus.OK:
        standing.rpo_status = RpoStatus.AT_RISK
        standing.rpo_note = standing.rpo_note or (
            "No offsite copy: no backup has a proven copy in another storage yet."
            if newest is None
            else f"The newest offsite copy is {format_duration(standing.offsite_age_s)} old, "
            "older than the RPO target: the copies are failing or behind."
        )


def fleet_standing(
    *, now: datetime | None = None, sources: QuerySet | None = None, recent: bool = True
) -> list[Standing]:
    """Return the standing of every source (or of `sources`) at `now`, in their order.

    Costs five queries however many sources and runs there are: the sources with their
    stored standing, the runs in progress, the schedules, and the two sums of the 30-day
    figures. With `recent=False` the 30-day figures are left out (None, and 0 missed) with
    their two queries.
    """
    now = now or timezone.now()
    narrowed = sources is not None
    related = ["policy", "standing__last_backup"]
    columns = list(CURRENT_COLUMNS)
    if recent:
        related.append("standing__last_success")
        columns.extend(RECENT_COLUMNS)
    listed = list(
        (sources if narrowed else Source.objects.all())
        .select_related(*related)
        .only(*columns)
        .annotate(**_offsite_columns())
    )
    if not listed:
        return []
    by_id = {source.pk: source for source in listed}
    ids = list(by_id) if narrowed else None
    active = _active_runs(ids)
    for source in listed:
        stored = getattr(source, "standing", None)
        # Every run here belongs to a listed source: spare a query per `run.source`.
        runs = (stored.last_backup, stored.last_success if recent else None) if stored else ()
        for run in runs:
            if run is not None:
                run.source = source
        for run in active.get(source.pk, []):
            run.source = source
    days = _day_sums(ids, now) if recent else {}
    gaps = _gap_sums(ids, now) if recent else {}
    planned = next_runs(list(by_id))
    return [
        _standing(
            source,
            active.get(source.pk, []),
            days.get(source.pk, {}) if recent else None,
            gaps.get(source.pk, 0.0),
            planned.get(source.pk),
            now,
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
        "rpo_status": str(standing.rpo_status),
        "rpo_note": standing.rpo_note or None,
        "rto_s": standing.rto_s,
        "last_drill_s": _round(standing.last_drill_s, 3),
        "rto_status": str(standing.rto_status),
        "integrity": str(standing.integrity),
        "running": active is not None,
        "health": str(standing.health),
        "offsite_age_s": _round(standing.offsite_age_s),
        "offsite_status": standing.offsite_status,
        "copies": standing.copies,
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

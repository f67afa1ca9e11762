"""RPO and RTO standing: pure functions the dashboard applies to every source at once.

RPO (recovery point objective) is about the age of the newest good backup: how much work
would be lost if the source died now. RTO (recovery time objective) is about how long a
restore takes, which only a timed restore drill can prove. Every function takes the facts
as arguments (no clock, no database), so a page, a metric and a test all get the same answer.

Datetimes must be aware. Each function works on them in UTC: Python compares and subtracts
datetimes that share a zone on their wall clock, ignoring `fold`, which is an hour off
across the repeated autumn hour.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

OK = "ok"
AT_RISK = "at_risk"
BREACHED = "breached"
UNKNOWN = "unknown"
UNPROVEN = "unproven"

# Warn before the deadline, not at it: past three quarters of the target there is usually
# still time for one more run to land.
AT_RISK_SHARE = 0.75
# Hosts' clocks drift apart by a little. A backup stamped further in the future than this
# was timed by a clock that is wrong, and says nothing about how old the data is.
CLOCK_SKEW_S = 60


def rpo_status(
    *,
    last_success_at: datetime | None,
    now: datetime,
    rpo_s: int | None,
    next_run_at: datetime | None,
) -> str:
    """Return the RPO standing of a source: `ok`, `at_risk`, `breached` or `unknown`.

    `unknown` when there is no target or no successful backup yet, or when the newest one
    is stamped more than CLOCK_SKEW_S in the future (`stamped_ahead_s` says by how much);
    `breached` when the newest backup is older than the target; `at_risk` when it is older
    than 75% of the target, or when the next scheduled run (if any) starts after the
    deadline `last_success_at + rpo_s`, so the schedule alone will let the target lapse. An
    age of exactly the target is still within it.
    """
    if rpo_s is None or last_success_at is None:
        return UNKNOWN
    if stamped_ahead_s(last_success_at=last_success_at, now=now):
        return UNKNOWN
    last_success_at = _utc(last_success_at)
    age_s = (_utc(now) - last_success_at).total_seconds()
    if age_s > rpo_s:
        return BREACHED
    if age_s > AT_RISK_SHARE * rpo_s:
        return AT_RISK
    deadline = last_success_at + timedelta(seconds=rpo_s)
    if next_run_at is not None and _utc(next_run_at) > deadline:
        return AT_RISK
    return OK


def stamped_ahead_s(*, last_success_at: datetime | None, now: datetime) -> float | None:
    """Return how far past `now` a backup is stamped, when beyond CLOCK_SKEW_S; else None.

    A host whose clock runs ahead stamps its backups in the future: counted as they are,
    they would look fresh, their age 0, for as long as the clock is ahead.
    """
    if last_success_at is None:
        return None
    ahead_s = (_utc(last_success_at) - _utc(now)).total_seconds()
    return ahead_s if ahead_s > CLOCK_SKEW_S else None


def rto_status(
    *,
    last_drill_s: float | None,
    last_drill_at: datetime | None,
    now: datetime,
    rto_s: int | None,
    drill_every_s: int | None,
) -> str:
    """Return the RTO standing of a source: `ok`, `breached` or `unproven`.

    `unproven` when there is no target, no drill, or the last drill is older than the drill
    interval (when one is set). A drill that took longer than the target is `breached` even
    when it is old: the last evidence says the target does not hold, and only a new drill
    within target should clear that. A drill of exactly the target is within it.
    """
    if rto_s is None or last_drill_s is None:
        return UNPROVEN
    if last_drill_s > rto_s:
        return BREACHED
    if drill_every_s is not None:
        if last_drill_at is None:
            return UNPROVEN
        if (_utc(now) - _utc(last_drill_at)).total_seconds() > drill_every_s:
            return UNPROVEN
    return OK


def within_target_share(
    *,
    backup_times: Sequence[datetime],
    rpo_s: int,
    start: datetime,
    end: datetime,
    first_known: datetime | None = None,
) -> float:
    """Return the fraction (0.0 to 1.0) of [start, end] during which the RPO target held.

    The target holds at an instant when the newest backup captured at or before it is at
    most `rpo_s` old, so each backup covers [time, time + rpo_s] and the answer is the share
    of the window under the union of those intervals. Time before the first backup counts as
    out of target; pass the newest backup before `start` too, or the beginning of the window
    counts as uncovered. Time before `first_known` (when the source came under watch) is left
    out of the window altogether. When nothing of the window is left, return 1.0: no time
    was out of target. Cost: O(n log n) for n backups.
    """
    if rpo_s < 0:
        raise ValueError(f"rpo_s must be 0 or more, got {rpo_s}")
    start, end = _utc(start), _utc(end)
    if end < start:
        raise ValueError(f"the window ends ({end.isoformat()}) before it starts")
    if first_known is not None and _utc(first_known) > start:
        start = _utc(first_known)
    window_s = (end - start).total_seconds()
    if window_s <= 0:
        return 1.0
    reach = timedelta(seconds=rpo_s)
    covered_s = 0.0
    # Sweep the coverage intervals in time order, merging overlaps, clipped to the window.
    run_start: datetime | None = None
    run_end: datetime | None = None
    for captured in sorted(u for u in map(_utc, backup_times) if u <= end):
        interval_end = captured + reach
        if interval_end <= start:
            continue
        if run_end is not None and captured <= run_end:
            run_end = max(run_end, interval_end)
            continue
        if run_start is not None and run_end is not None:
            covered_s += _clipped_s(run_start, run_end, start, end)
        run_start, run_end = captured, interval_end
    if run_start is not None and run_end is not None:
        covered_s += _clipped_s(run_start, run_end, start, end)
    return min(1.0, covered_s / window_s)


def _utc(moment: datetime) -> datetime:
    # astimezone() would read a naive datetime in the server's zone, silently.
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"expected an aware datetime, got naive {moment.isoformat()}")
    return moment.astimezone(UTC)


def _clipped_s(low: datetime, high: datetime, start: datetime, end: datetime) -> float:
    return max(0.0, (min(high, end) - max(low, start)).total_seconds())


def missed_slots(
    *, slots: Sequence[datetime], run_times: Sequence[datetime], tolerance_s: int
) -> list[datetime]:
    """Return the scheduled slots (oldest first) with no backup started in time for them.

    A slot is met when some backup started at the slot or at most `tolerance_s` after it; a
    backup started before the slot does not count, as it cannot capture what changed since.
    Each slot is judged on its own, so one backup may meet several slots that lie closer
    together than the tolerance. Cost: O((s + r) log r).
    """
    if tolerance_s < 0:
        raise ValueError(f"tolerance_s must be 0 or more, got {tolerance_s}")
    runs = sorted(map(_utc, run_times))
    tolerance = timedelta(seconds=tolerance_s)
    missed = []
    for slot in sorted(slots, key=_utc):
        at = _utc(slot)
        first_after = bisect_left(runs, at)
        if first_after == len(runs) or runs[first_after] > at + tolerance:
            missed.append(slot)
    return missed


def offsite_status(
    *, wanted: bool, newest_copy_at: datetime | None, now: datetime, rpo_s: int | None
) -> str | None:
    """Return whether a source's offsite copies hold: `ok`, `at_risk`, or None (none asked).

    A source whose policy copies its backups elsewhere is at risk while no backup has a
    proven copy, or while the newest copied one is older than the RPO target: a disaster
    that takes the primary storage would lose more than the target allows.
    """
    if not wanted:
        return None
    if newest_copy_at is None:
        return AT_RISK
    if rpo_s is not None and (_utc(now) - _utc(newest_copy_at)).total_seconds() > rpo_s:
        return AT_RISK
    return OK

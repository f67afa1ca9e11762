"""RPO and RTO standing, share of time within target, and missed schedule slots."""

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from backups.engine.compliance import (
    CLOCK_SKEW_S,
    missed_slots,
    rpo_status,
    rto_status,
    stamped_ahead_s,
    within_target_share,
)

NOW = datetime(2024, 5, 10, 12, 0, tzinfo=UTC)
HOUR = 3600
DAY = 86400


def hours_ago(hours: float) -> datetime:
    return NOW - timedelta(hours=hours)


def at(hour: int, minute: int = 0, day: int = 10) -> datetime:
    return datetime(2024, 5, day, hour, minute, tzinfo=UTC)


# --- rpo_status -------------------------------------------------------------------------


def test_rpo_is_unknown_without_a_backup_or_without_a_target():
    assert rpo_status(last_success_at=None, now=NOW, rpo_s=DAY, next_run_at=None) == "unknown"
    assert (
        rpo_status(last_success_at=hours_ago(1), now=NOW, rpo_s=None, next_run_at=None) == "unknown"
    )


def test_rpo_is_unknown_for_a_backup_stamped_in_the_future_beyond_a_small_skew():
    # A host whose clock runs a day ahead: its backup would look fresh for a whole day.
    ahead = NOW + timedelta(days=1)
    assert rpo_status(last_success_at=ahead, now=NOW, rpo_s=HOUR, next_run_at=None) == "unknown"
    assert stamped_ahead_s(last_success_at=ahead, now=NOW) == DAY
    # Clocks a few seconds apart are normal: such a backup counts, as young as can be.
    near = NOW + timedelta(seconds=CLOCK_SKEW_S)
    assert rpo_status(last_success_at=near, now=NOW, rpo_s=HOUR, next_run_at=None) == "ok"
    assert stamped_ahead_s(last_success_at=near, now=NOW) is None


def test_rpo_is_ok_when_the_backup_is_young_and_the_next_run_lands_in_time():
    # Target 24h, backup 6h old: deadline in 18h; the next run in 2h comes well before.
    status = rpo_status(
        last_success_at=hours_ago(6), now=NOW, rpo_s=DAY, next_run_at=NOW + timedelta(hours=2)
    )
    assert status == "ok"


def test_rpo_is_at_risk_past_three_quarters_of_the_target():
    # 75% of 24h is 18h: at 18h the backup is still ok, at 19h it is at risk.
    assert rpo_status(last_success_at=hours_ago(18), now=NOW, rpo_s=DAY, next_run_at=None) == ("ok")
    assert rpo_status(last_success_at=hours_ago(19), now=NOW, rpo_s=DAY, next_run_at=None) == (
        "at_risk"
    )


def test_rpo_is_at_risk_when_the_next_run_lands_after_the_deadline():
    # Target 4h, backup 1h old: the deadline is in 3h, but the next run is in 4h.
    status = rpo_status(
        last_success_at=hours_ago(1),
        now=NOW,
        rpo_s=4 * HOUR,
        next_run_at=NOW + timedelta(hours=4),
    )
    assert status == "at_risk"


def test_rpo_is_ok_when_the_next_run_lands_exactly_at_the_deadline():
    status = rpo_status(
        last_success_at=hours_ago(1),
        now=NOW,
        rpo_s=4 * HOUR,
        next_run_at=NOW + timedelta(hours=3),
    )
    assert status == "ok"


def test_rpo_is_breached_once_the_backup_is_older_than_the_target():
    # Exactly 24h old is still within a 24h target (past 75%, so at risk); 24h and one
    # second is breached, whatever the schedule promises.
    assert rpo_status(last_success_at=hours_ago(24), now=NOW, rpo_s=DAY, next_run_at=None) == (
        "at_risk"
    )
    status = rpo_status(
        last_success_at=NOW - timedelta(hours=24, seconds=1),
        now=NOW,
        rpo_s=DAY,
        next_run_at=NOW + timedelta(minutes=1),
    )
    assert status == "breached"


def test_rpo_measures_age_in_real_time_across_the_autumn_hour():
    berlin = ZoneInfo("Europe/Berlin")
    # Both in Berlin's zone: 02:10 CEST (00:10 UTC) to 02:50 CET (01:50 UTC) is 1h40m,
    # though the wall clocks are only 40 minutes apart. With a 1h target that is breached.
    status = rpo_status(
        last_success_at=datetime(2024, 10, 27, 2, 10, tzinfo=berlin),
        now=datetime(2024, 10, 27, 2, 50, fold=1, tzinfo=berlin),
        rpo_s=HOUR,
        next_run_at=None,
    )
    assert status == "breached"


# --- rto_status -------------------------------------------------------------------------


def rto(**overrides):
    facts = {
        "last_drill_s": 20 * 60,
        "last_drill_at": NOW - timedelta(days=3),
        "now": NOW,
        "rto_s": HOUR,
        "drill_every_s": 30 * DAY,
    }
    facts.update(overrides)
    return rto_status(**facts)


def test_rto_is_ok_after_a_recent_drill_within_target():
    # A 20-minute drill, 3 days ago, against a 1h target and a 30-day drill interval.
    assert rto() == "ok"


def test_rto_of_exactly_the_target_is_ok():
    assert rto(last_drill_s=HOUR) == "ok"


def test_rto_is_breached_when_the_drill_took_longer_than_the_target():
    assert rto(last_drill_s=90 * 60) == "breached"


def test_rto_stays_breached_when_the_slow_drill_is_old():
    # The newest evidence says restores are too slow; only a new drill may clear it.
    assert rto(last_drill_s=90 * 60, last_drill_at=NOW - timedelta(days=40)) == "breached"


def test_rto_is_unproven_without_a_drill_or_without_a_target():
    assert rto(last_drill_s=None, last_drill_at=None) == "unproven"
    assert rto(rto_s=None) == "unproven"


def test_rto_is_unproven_when_the_drill_is_older_than_the_interval():
    # 30 days exactly is still fresh; 31 days is not.
    assert rto(last_drill_at=NOW - timedelta(days=30)) == "ok"
    assert rto(last_drill_at=NOW - timedelta(days=31)) == "unproven"


def test_rto_without_a_drill_interval_never_goes_stale():
    assert rto(last_drill_at=NOW - timedelta(days=400), drill_every_s=None) == "ok"


# --- within_target_share ----------------------------------------------------------------

DAY_START = at(0)
DAY_END = at(0, day=11)


def test_share_is_the_union_of_the_covered_stretches_over_the_window():
    # Window: one day. Target 6h. Backups at 02:00, 04:00 and 14:00 cover
    # [02:00, 08:00] + [04:00, 10:00] = [02:00, 10:00] (8h) and [14:00, 20:00] (6h):
    # 14h of 24h. Before 02:00 there is no backup yet, which counts as out of target.
    share = within_target_share(
        backup_times=[at(2), at(4), at(14)], rpo_s=6 * HOUR, start=DAY_START, end=DAY_END
    )
    assert share == pytest.approx(14 / 24)


def test_share_does_not_depend_on_the_order_of_backups():
    share = within_target_share(
        backup_times=[at(14), at(2), at(4)], rpo_s=6 * HOUR, start=DAY_START, end=DAY_END
    )
    assert share == pytest.approx(14 / 24)


def test_a_backup_before_the_window_covers_its_beginning():
    # 21:00 the day before covers until 03:00, which joins [02:00, 10:00]: [00:00, 10:00]
    # is 10h, plus [14:00, 20:00], 6h: 16h of 24h.
    share = within_target_share(
        backup_times=[at(21, day=9), at(2), at(4), at(14)],
        rpo_s=6 * HOUR,
        start=DAY_START,
        end=DAY_END,
    )
    assert share == pytest.approx(16 / 24)


def test_coverage_is_cut_at_the_end_of_the_window_and_later_backups_do_not_count():
    # 22:00 covers until 04:00 next day, of which 2h are in the window; a backup after the
    # window says nothing about it. 2h of 24h.
    share = within_target_share(
        backup_times=[at(22), at(1, day=11)], rpo_s=6 * HOUR, start=DAY_START, end=DAY_END
    )
    assert share == pytest.approx(2 / 24)


def test_time_before_the_source_was_known_is_left_out():
    # The source appeared at 12:00: the window shrinks to [12:00, 24:00], 12h, of which
    # [14:00, 20:00] is covered: half.
    share = within_target_share(
        backup_times=[at(14)],
        rpo_s=6 * HOUR,
        start=DAY_START,
        end=DAY_END,
        first_known=at(12),
    )
    assert share == pytest.approx(0.5)


def test_no_backups_means_never_within_target():
    share = within_target_share(backup_times=[], rpo_s=HOUR, start=DAY_START, end=DAY_END)
    assert share == 0.0


def test_a_window_that_ends_before_the_source_was_known_has_nothing_out_of_target():
    share = within_target_share(
        backup_times=[], rpo_s=HOUR, start=DAY_START, end=DAY_END, first_known=DAY_END
    )
    assert share == 1.0


def test_hourly_backups_meet_a_one_hour_target_and_half_meet_a_half_hour_one():
    # 30 days of backups on the hour, starting exactly at the window's start. With a 1h
    # target each covers up to the next: the whole window. With 30 minutes each covers
    # half its hour.
    start = at(0, day=1)
    end = start + timedelta(days=30)
    times = [start + timedelta(hours=n) for n in range(30 * 24)]
    share = within_target_share(backup_times=times, rpo_s=HOUR, start=start, end=end)
    assert share == pytest.approx(1.0)
    share = within_target_share(backup_times=times, rpo_s=HOUR // 2, start=start, end=end)
    assert share == pytest.approx(0.5)


def test_share_refuses_a_window_that_ends_before_it_starts():
    with pytest.raises(ValueError, match="before it starts"):
        within_target_share(backup_times=[], rpo_s=HOUR, start=DAY_END, end=DAY_START)


def test_share_refuses_naive_datetimes():
    with pytest.raises(ValueError, match="aware"):
        within_target_share(
            backup_times=[datetime(2024, 5, 10, 2)], rpo_s=HOUR, start=DAY_START, end=DAY_END
        )


# --- missed_slots -----------------------------------------------------------------------


def test_a_slot_is_missed_without_a_backup_started_within_the_tolerance_after_it():
    slots = [at(0), at(6), at(12), at(18)]
    runs = [
        at(0, 5),  # 5 minutes after 00:00: in time
        at(5, 58),  # 2 minutes before 06:00: too early to count for it
        at(12, 15),  # exactly 15 minutes after 12:00: still in time
        at(18, 20),  # 20 minutes after 18:00: too late
    ]
    assert missed_slots(slots=slots, run_times=runs, tolerance_s=15 * 60) == [at(6), at(18)]


def test_one_backup_can_meet_slots_closer_than_the_tolerance():
    # 10:07 is within 10 minutes of both 10:00 and 10:05.
    slots = [at(10, 0), at(10, 5)]
    assert missed_slots(slots=slots, run_times=[at(10, 7)], tolerance_s=600) == []


def test_missed_slots_come_back_oldest_first_whatever_the_input_order():
    slots = [at(18), at(6), at(12)]
    assert missed_slots(slots=slots, run_times=[], tolerance_s=60) == [at(6), at(12), at(18)]


def test_missed_slots_refuse_a_negative_tolerance():
    with pytest.raises(ValueError, match="tolerance_s"):
        missed_slots(slots=[], run_times=[], tolerance_s=-1)


def test_share_agrees_with_a_minute_by_minute_count():
    # Backups and target fall on whole minutes, so each minute of the window is wholly in
    # or out of target; checking the middle of every minute counts them independently.
    rng = random.Random(11)
    start = at(0)
    end = start + timedelta(days=2)
    minutes = 2 * 24 * 60
    for _ in range(20):
        times = [start + timedelta(minutes=rng.randrange(-600, minutes)) for _ in range(12)]
        rpo_s = rng.randrange(1, 300) * 60
        in_target = 0
        for minute in range(minutes):
            middle = start + timedelta(minutes=minute, seconds=30)
            before = [t for t in times if t <= middle]
            if before and (middle - max(before)).total_seconds() <= rpo_s:
                in_target += 1
        share = within_target_share(backup_times=times, rpo_s=rpo_s, start=start, end=end)
        assert share == pytest.approx(in_target / minutes)

"""Retention selection: restic's `forget --keep-*` rules over calendar buckets in one zone.

The main history is 60 days of hourly snapshots in UTC, from 2024-01-01 00:00 (id 1) to
2024-02-29 23:00 (id 1440); 2024 is a leap year, so January and February hold exactly 60
days. Calendar facts the expectations rely on: 2024-01-01 is a Monday, so ISO week 1 of
2024 starts that day and the Mondays of February are the 5th, 12th, 19th and 26th; the last
day, Thursday 2024-02-29, is in ISO week 9 (26 Feb to 3 Mar).
"""

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from backups.engine.retention import Decision, Rules, Snapshot, select

BERLIN = ZoneInfo("Europe/Berlin")
FIRST = datetime(2024, 1, 1, 0, 0, tzinfo=UTC)


def hourly_history() -> list[Snapshot]:
    """Return the 1440 hourly snapshots, id n captured n-1 hours after FIRST."""
    return [Snapshot(id=n + 1, time=FIRST + timedelta(hours=n)) for n in range(60 * 24)]


def at(month: int, day: int, hour: int, minute: int = 0, tz=UTC) -> datetime:
    return datetime(2024, month, day, hour, minute, tzinfo=tz)


def kept(decision: Decision) -> dict[datetime, list[str]]:
    """Map each kept snapshot's UTC time to its reasons."""
    return {s.time.astimezone(UTC): reasons for s, reasons in decision.keep}


def test_keep_last_keeps_the_newest_snapshots():
    decision = select(hourly_history(), Rules(last=5), UTC)
    # The five newest are 19:00 to 23:00 on the last day.
    assert kept(decision) == {at(2, 29, h): ["last"] for h in range(19, 24)}
    assert len(decision.remove) == 1440 - 5


def test_keep_hourly_keeps_one_snapshot_for_each_of_the_newest_hours():
    decision = select(hourly_history(), Rules(hourly=10), UTC)
    # One snapshot per hour, so the ten newest hours are 14:00 to 23:00 on the last day.
    assert kept(decision) == {at(2, 29, h): ["hourly"] for h in range(14, 24)}


def test_keep_daily_keeps_the_last_snapshot_of_each_of_the_newest_days():
    decision = select(hourly_history(), Rules(daily=7), UTC)
    # The 7 newest days are 23 to 29 February; the newest snapshot of each is its 23:00.
    assert kept(decision) == {at(2, day, 23): ["daily"] for day in range(23, 30)}


def test_keep_weekly_keeps_the_last_snapshot_of_each_of_the_newest_iso_weeks():
    decision = select(hourly_history(), Rules(weekly=4), UTC)
    # Week 9 has only begun (Mon 26 to Thu 29): its newest is Thu 29 at 23:00. Weeks 8, 7
    # and 6 end on Sundays 25, 18 and 11 February, at 23:00.
    assert kept(decision) == {
        at(2, 29, 23): ["weekly"],
        at(2, 25, 23): ["weekly"],
        at(2, 18, 23): ["weekly"],
        at(2, 11, 23): ["weekly"],
    }


def test_keep_monthly_past_the_history_also_keeps_the_oldest_snapshot():
    decision = select(hourly_history(), Rules(monthly=3), UTC)
    # Two months hold snapshots: February (newest 29th 23:00) and January (31st 23:00).
    # One monthly keep is left over, so, as restic does, the oldest snapshot of all is kept
    # too, marked as such because its month already has its snapshot.
    assert kept(decision) == {
        at(2, 29, 23): ["monthly"],
        at(1, 31, 23): ["monthly"],
        at(1, 1, 0): ["oldest monthly"],
    }


def test_keep_yearly_within_one_year_keeps_only_the_newest():
    decision = select(hourly_history(), Rules(yearly=1), UTC)
    # One bucket (2024) and one keep: the count is used up, so no oldest-snapshot extra.
    assert kept(decision) == {at(2, 29, 23): ["yearly"]}
    assert len(decision.remove) == 1439


def test_a_snapshot_kept_by_several_rules_lists_every_reason():
    rules = Rules(last=3, daily=7, weekly=4, monthly=12, yearly=2)
    decision = select(hourly_history(), rules, UTC)
    expected = {
        # The newest snapshot opens a bucket for every rule.
        at(2, 29, 23): ["last", "daily", "weekly", "monthly", "yearly"],
        at(2, 29, 22): ["last"],
        at(2, 29, 21): ["last"],
        # The other six of the 7 newest days, at 23:00; Sunday the 25th also closes week 8.
        at(2, 28, 23): ["daily"],
        at(2, 27, 23): ["daily"],
        at(2, 26, 23): ["daily"],
        at(2, 25, 23): ["daily", "weekly"],
        at(2, 24, 23): ["daily"],
        at(2, 23, 23): ["daily"],
        # Weeks 7 and 6 end on Sundays 18 and 11.
        at(2, 18, 23): ["weekly"],
        at(2, 11, 23): ["weekly"],
        # January's newest snapshot.
        at(1, 31, 23): ["monthly"],
        # Monthly (10 left) and yearly (1 left) could not fill their buckets: the oldest
        # snapshot is kept for both, its month and year being already represented.
        at(1, 1, 0): ["oldest monthly", "oldest yearly"],
    }
    assert kept(decision) == expected
    assert len(decision.remove) == 1440 - len(expected)


def test_keep_hourly_beyond_the_history_keeps_everything_as_hourly():
    decision = select(hourly_history(), Rules(hourly=2000), UTC)
    # Every snapshot opens its own hour, the oldest included, so none is an "oldest" extra.
    assert len(decision.keep) == 1440
    assert all(reasons == ["hourly"] for _, reasons in decision.keep)
    assert decision.remove == []


def test_keep_and_remove_partition_the_input_newest_first():
    snapshots = hourly_history()
    decision = select(snapshots, Rules(daily=10, weekly=3), UTC)
    kept_ids = [s.id for s, _ in decision.keep]
    removed_ids = [s.id for s in decision.remove]
    assert sorted(kept_ids + removed_ids) == list(range(1, 1441))
    assert kept_ids == sorted(kept_ids, reverse=True)
    assert removed_ids == sorted(removed_ids, reverse=True)


def test_the_order_of_the_input_does_not_matter():
    snapshots = hourly_history()
    shuffled = snapshots[:]
    random.Random(3).shuffle(shuffled)
    rules = Rules(last=2, hourly=30, daily=9, weekly=5, monthly=2)
    assert select(shuffled, rules, UTC) == select(snapshots, rules, UTC)


def test_days_are_counted_in_the_stated_zone():
    # 23:30 UTC on 10 March is 00:30 on 11 March in Berlin (CET, UTC+1); 22:30 UTC is still
    # 23:30 on the 10th there.
    older = Snapshot(1, at(3, 9, 12))
    evening = Snapshot(2, at(3, 10, 22, 30))
    late = Snapshot(3, at(3, 10, 23, 30))
    snapshots = [older, evening, late]

    # In UTC the two evening snapshots share 10 March, so daily=2 keeps the later of them
    # and the one of 9 March.
    in_utc = select(snapshots, Rules(daily=2), UTC)
    assert [s.id for s, _ in in_utc.keep] == [3, 1]
    assert in_utc.remove == [evening]

    # In Berlin they fall on 11 and 10 March, which fills both daily keeps.
    in_berlin = select(snapshots, Rules(daily=2), BERLIN)
    assert [s.id for s, _ in in_berlin.keep] == [3, 2]
    assert in_berlin.remove == [older]


def test_the_repeated_autumn_hour_is_one_hourly_bucket():
    # On 2024-10-27 Berlin goes from 03:00 CEST back to 02:00 CET: 00:30 and 01:30 UTC are
    # both 02:30 on Berlin's wall clock, so they share one hour, as in restic.
    snapshots = [
        Snapshot(1, datetime(2024, 10, 26, 23, 30, tzinfo=UTC)),  # 01:30 CEST
        Snapshot(2, datetime(2024, 10, 27, 0, 30, tzinfo=UTC)),  # 02:30 CEST
        Snapshot(3, datetime(2024, 10, 27, 1, 30, tzinfo=UTC)),  # 02:30 CET
    ]
    decision = select(snapshots, Rules(hourly=2), BERLIN)
    assert [s.id for s, _ in decision.keep] == [3, 1]
    assert [s.id for s in decision.remove] == [2]


def test_times_in_the_repeated_autumn_hour_are_ordered_by_instant():
    # Both in Berlin's zone: 02:50 CEST is 00:50 UTC, and 02:10 CET (fold=1) is 01:10 UTC,
    # the newer one, although its wall clock reads earlier.
    first = Snapshot(2, datetime(2024, 10, 27, 2, 50, tzinfo=BERLIN))
    second = Snapshot(1, datetime(2024, 10, 27, 2, 10, fold=1, tzinfo=BERLIN))
    decision = select([first, second], Rules(last=1), BERLIN)
    assert [s.id for s, _ in decision.keep] == [1]


def test_a_week_that_spans_new_year_is_one_bucket():
    # ISO week 1 of 2020 runs from Monday 2019-12-30 to Sunday 2020-01-05; a calendar-year
    # week number would split it in two.
    noon = [datetime(2019, 12, 28, 12, tzinfo=UTC) + timedelta(days=n) for n in range(10)]
    snapshots = [Snapshot(n + 1, t) for n, t in enumerate(noon)]  # 28 Dec (1) to 6 Jan (10)
    decision = select(snapshots, Rules(weekly=3), UTC)
    # Newest first: Mon 6 Jan opens 2020-W02, Sun 5 Jan closes 2020-W01, Sun 29 Dec closes
    # 2019-W52; the count is used up, so Sat 28 Dec goes too.
    assert [s.id for s, _ in decision.keep] == [10, 9, 2]
    assert [s.id for s in decision.remove] == [8, 7, 6, 5, 4, 3, 1]


def test_week_53_belongs_to_the_year_it_started_in():
    # 2020 has an ISO week 53, Monday 28 Dec 2020 to Sunday 3 Jan 2021.
    snapshots = [
        Snapshot(1, datetime(2020, 12, 27, 12, tzinfo=UTC)),  # Sunday, 2020-W52
        Snapshot(2, datetime(2020, 12, 31, 12, tzinfo=UTC)),  # Thursday, 2020-W53
        Snapshot(3, datetime(2021, 1, 3, 12, tzinfo=UTC)),  # Sunday, 2020-W53
        Snapshot(4, datetime(2021, 1, 4, 12, tzinfo=UTC)),  # Monday, 2021-W01
    ]
    decision = select(snapshots, Rules(weekly=2), UTC)
    assert [s.id for s, _ in decision.keep] == [4, 3]
    assert [s.id for s in decision.remove] == [2, 1]


def test_fewer_buckets_than_asked_keeps_every_bucket():
    snapshots = [Snapshot(n, at(3, n, 12)) for n in (1, 2, 3)]
    decision = select(snapshots, Rules(daily=7), UTC)
    # Three days, each its own bucket: all three are kept as daily, none as an extra.
    assert [(s.id, reasons) for s, reasons in decision.keep] == [
        (3, ["daily"]),
        (2, ["daily"]),
        (1, ["daily"]),
    ]


def test_fewer_buckets_than_asked_also_keeps_the_oldest_snapshot():
    snapshots = [Snapshot(1, at(3, 1, 9)), Snapshot(2, at(3, 1, 18)), Snapshot(3, at(3, 2, 12))]
    decision = select(snapshots, Rules(daily=7), UTC)
    # Day 2 (id 3) and day 1 (its newest, id 2) fill two of seven keeps; id 1 shares day 1
    # but is the oldest snapshot while keeps are left, so restic keeps it too.
    assert [(s.id, reasons) for s, reasons in decision.keep] == [
        (3, ["daily"]),
        (2, ["daily"]),
        (1, ["oldest daily"]),
    ]


def test_several_snapshots_in_one_hour_keep_only_the_newest():
    # Every 15 minutes from 10:00 to 11:15: ids 1 to 6.
    snapshots = [Snapshot(n + 1, at(3, 5, 10) + timedelta(minutes=15 * n)) for n in range(6)]
    decision = select(snapshots, Rules(hourly=2), UTC)
    # 11:15 (id 6) for hour 11, 10:45 (id 4) for hour 10; both keeps used, the rest go.
    assert [s.id for s, _ in decision.keep] == [6, 4]
    assert [s.id for s in decision.remove] == [5, 3, 2, 1]


def test_snapshots_at_the_same_instant_are_ordered_by_id():
    moment = at(3, 5, 10)
    snapshots = [Snapshot(8, moment), Snapshot(9, moment), Snapshot(7, moment)]
    decision = select(snapshots, Rules(last=1), UTC)
    assert [s.id for s, _ in decision.keep] == [9]
    assert [s.id for s in decision.remove] == [8, 7]


def test_pinned_snapshots_are_kept_whatever_their_age():
    snapshots = [Snapshot(s.id, s.time, pinned=s.id in (1, 500)) for s in hourly_history()]
    decision = select(snapshots, Rules(last=2), UTC)
    assert [(s.id, reasons) for s, reasons in decision.keep] == [
        (1440, ["last"]),
        (1439, ["last"]),
        (500, ["pinned"]),
        (1, ["pinned"]),
    ]


def test_a_pinned_snapshot_also_counts_towards_the_rules():
    snapshots = [Snapshot(s.id, s.time, pinned=s.id == 1440) for s in hourly_history()]
    decision = select(snapshots, Rules(last=2), UTC)
    # The pinned newest snapshot takes one of the two "last" keeps, as a tag-kept snapshot
    # does in restic, so only 1439 joins it.
    assert [(s.id, reasons) for s, reasons in decision.keep] == [
        (1440, ["pinned", "last"]),
        (1439, ["last"]),
    ]


def test_empty_rules_refuse_to_remove_anything():
    snapshots = [Snapshot(1, at(3, 1, 0), pinned=True), Snapshot(2, at(3, 2, 0))]
    assert Rules().is_empty()
    with pytest.raises(ValueError, match="the policy has no keep rule: refusing to remove"):
        select(snapshots, Rules(), UTC)


def test_rules_refuse_negative_counts():
    with pytest.raises(ValueError, match="keep-daily must be a whole number of 0 or more"):
        Rules(daily=-1)


def test_no_snapshots_means_nothing_to_keep_or_remove():
    assert select([], Rules(last=3), UTC) == Decision(keep=[], remove=[])


def test_a_naive_snapshot_time_is_refused():
    with pytest.raises(ValueError, match="naive time"):
        Snapshot(1, datetime(2024, 3, 1, 12, 0))

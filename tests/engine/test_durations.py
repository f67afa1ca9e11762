"""Durations typed by users, and cron schedules evaluated in a stated time zone."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from backups.engine.durations import (
    cron_slots,
    format_duration,
    next_run,
    parse_cron,
    parse_duration,
)

BERLIN = ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 15 * 60),
        ("6h", 6 * 3600),
        ("7d", 7 * 86400),
        ("2w", 14 * 86400),
        (" 1h ", 3600),
    ],
)
def test_parse_duration_reads_a_number_with_a_unit(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5x", "-5m", "1.5h", "15", "h", "", "15 m", "15M", "1h30m"])
def test_parse_duration_refuses_anything_else_and_says_what_to_type(text):
    with pytest.raises(ValueError) as error:
        parse_duration(text)
    assert str(error.value) == (
        f"{text!r} is not a duration: use a number with a unit s, m, h, d or w, e.g. 15m"
    )


def test_parse_duration_refuses_zero():
    with pytest.raises(ValueError, match="'0m' is not a duration: it must be longer than zero"):
        parse_duration("0m")


def test_parse_duration_refuses_a_non_string():
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(15)


def test_parse_duration_refuses_more_than_a_century():
    assert parse_duration("36500d") == 36500 * 86400
    with pytest.raises(ValueError, match="too long"):
        parse_duration("36501d")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (45, "45s"),
        (90, "1m 30s"),
        (3600, "1h"),
        (5400, "1h 30m"),
        # Two units at most, truncated: 1h 0m 1s shows as "1h", never rounded up.
        (3601, "1h"),
        (86399, "23h 59m"),
        # 3d 4h 59m 59s: the minutes are dropped, not rounded into a fifth hour.
        (3 * 86400 + 4 * 3600 + 59 * 60 + 59, "3d 4h"),
        # 1d 0h 5m: the unit after days is hours, which is zero, so days stand alone.
        (86400 + 300, "1d"),
        (14 * 86400, "14d"),
        (12.6, "13s"),
        (0.4, "0s"),
        (-90, "-1m 30s"),
    ],
)
def test_format_duration_writes_short_human_text(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("expr", ["0 3 * * *", "*/15 * * * *", "0 3 * * MON-FRI", "0 0 29 2 *"])
def test_parse_cron_accepts_five_field_expressions(expr):
    assert parse_cron(expr) is None


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("* * * *", "it has 4 fields"),
        ("0 * * * * *", "it has 6 fields"),
        ("61 * * * *", "is not a cron expression: use five fields"),
        ("0 25 * * *", "is not a cron expression: use five fields"),
        ("every day", "it has 2 fields"),
        ("", "is not a cron expression"),
        ("@daily", "write the five fields instead"),
        ("0 0 31 2 *", "never fires"),
    ],
)
def test_parse_cron_refuses_a_bad_expression_with_a_clear_message(expr, message):
    with pytest.raises(ValueError, match=message):
        parse_cron(expr)


def test_next_run_reads_the_schedule_on_the_wall_clock_of_the_zone():
    # 03:00 in Berlin in January is 02:00 UTC (CET is UTC+1).
    after = datetime(2024, 1, 10, 1, 0, tzinfo=UTC)
    assert next_run("0 3 * * *", after, BERLIN) == datetime(2024, 1, 10, 2, 0, tzinfo=UTC)


def test_next_run_answers_in_utc_so_that_arithmetic_on_it_is_exact():
    # 02:30 CET on the autumn day: in Berlin's zone Python would compare and add it on the
    # wall clock, mixing it up with 02:30 CEST an hour earlier.
    run = next_run("30 2 * * *", datetime(2024, 10, 27, 1, 0, tzinfo=UTC), BERLIN)
    assert run.tzinfo is UTC
    assert run == datetime(2024, 10, 27, 1, 30, tzinfo=UTC)


def test_next_run_is_strictly_after_the_given_instant():
    after = datetime(2024, 1, 10, 2, 0, tzinfo=UTC)  # exactly 03:00 in Berlin
    assert next_run("0 3 * * *", after, BERLIN) == datetime(2024, 1, 11, 2, 0, tzinfo=UTC)


def test_next_run_fires_a_skipped_time_right_after_the_spring_gap():
    # On 2024-03-31 Berlin jumps from 02:00 CET to 03:00 CEST: 02:30 never happens, and
    # the run happens at 03:00 CEST, which is 01:00 UTC.
    after = datetime(2024, 3, 30, 22, 0, tzinfo=UTC)
    assert next_run("30 2 * * *", after, BERLIN) == datetime(2024, 3, 31, 1, 0, tzinfo=UTC)


def test_next_run_fires_a_repeated_time_twice_in_autumn():
    # On 2024-10-27 Berlin goes back from 03:00 CEST to 02:00 CET: 02:30 happens at 00:30
    # UTC (CEST) and again at 01:30 UTC (CET).
    first = next_run("30 2 * * *", datetime(2024, 10, 26, 22, 0, tzinfo=UTC), BERLIN)
    second = next_run("30 2 * * *", first, BERLIN)
    assert first == datetime(2024, 10, 27, 0, 30, tzinfo=UTC)
    assert second == datetime(2024, 10, 27, 1, 30, tzinfo=UTC)


def test_next_run_refuses_a_naive_instant():
    with pytest.raises(ValueError, match="aware"):
        next_run("0 3 * * *", datetime(2024, 1, 1), BERLIN)


def test_cron_slots_excludes_the_start_and_includes_the_end():
    start = datetime(2024, 1, 1, 0, 0, tzinfo=UTC)
    end = datetime(2024, 1, 1, 6, 0, tzinfo=UTC)
    # Every two hours on the UTC clock: 00:00 is the start (left out), 06:00 the end (in).
    assert cron_slots("0 */2 * * *", start, end, UTC) == [
        datetime(2024, 1, 1, 2, 0, tzinfo=UTC),
        datetime(2024, 1, 1, 4, 0, tzinfo=UTC),
        datetime(2024, 1, 1, 6, 0, tzinfo=UTC),
    ]


def test_cron_slots_agree_with_next_run_across_both_daylight_saving_changes():
    for start in (
        datetime(2024, 3, 29, tzinfo=UTC),
        datetime(2024, 10, 25, tzinfo=UTC),
    ):
        end = start + timedelta(days=4)
        for expr in ("30 2 * * *", "0 * * * *", "*/20 * * * *"):
            expected = []
            moment = next_run(expr, start, BERLIN)
            while moment <= end:
                expected.append(moment)
                moment = next_run(expr, moment, BERLIN)
            assert cron_slots(expr, start, end, BERLIN) == expected, (expr, start)


def test_cron_slots_on_the_autumn_day_counts_the_repeated_hour_twice():
    # 2024-10-27 in Berlin lasts 25 hours, so an hourly schedule fires 25 times.
    start = datetime(2024, 10, 27, 0, 0, tzinfo=BERLIN)
    end = datetime(2024, 10, 28, 0, 0, tzinfo=BERLIN)
    assert len(cron_slots("0 * * * *", start, end, BERLIN)) == 25


def test_cron_slots_keeps_the_latest_slots_when_the_window_holds_too_many():
    start = datetime(2024, 1, 1, tzinfo=UTC)
    end = datetime(2024, 1, 1, 10, 0, tzinfo=UTC)
    # Every minute for 10 hours is 600 slots; with a limit of 5 the last five remain.
    slots = cron_slots("* * * * *", start, end, UTC, limit=5)
    assert slots == [end - timedelta(minutes=n) for n in (4, 3, 2, 1, 0)]


def test_cron_slots_stops_at_ten_thousand_by_default():
    start = datetime(2024, 1, 1, tzinfo=UTC)
    end = start + timedelta(days=30)  # 43,200 minutes
    slots = cron_slots("* * * * *", start, end, UTC)
    assert len(slots) == 10_000
    assert slots[-1] == end


def test_cron_slots_of_an_empty_window_is_empty():
    moment = datetime(2024, 1, 1, tzinfo=UTC)
    assert cron_slots("* * * * *", moment, moment, UTC) == []
    assert cron_slots("* * * * *", moment, moment - timedelta(hours=1), UTC) == []


def test_cron_slots_refuses_a_bad_expression():
    moment = datetime(2024, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="it has 4 fields"):
        cron_slots("* * * *", moment, moment + timedelta(days=1), UTC)

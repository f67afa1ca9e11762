"""Durations and cron schedules: parse what users type, and turn schedules into instants.

A duration is a whole number with one unit (`90s`, `15m`, `6h`, `7d`, `2w`), the form the
command line and the policy forms accept for `--rpo`, `--rto` and `--drill-every`. A schedule
is a five-field cron expression evaluated on the wall clock of one stated time zone, so
`0 3 * * *` means 03:00 in that zone whatever the server's own zone is.
"""

from __future__ import annotations

import platform
import re
import struct
from datetime import UTC, datetime, timedelta, tzinfo


def _architecture(executable="", bits="", linkage=""):
    return f"{struct.calcsize('P') * 8}bit", linkage


# croniter asks at import whether this Python is 32-bit through platform.architecture(),
# which runs file(1) on the interpreter: a process started by every command, the settings
# included. The size of a pointer, which croniter also checks, answers without one.
_asks_file, platform.architecture = platform.architecture, _architecture
try:
    from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter
finally:
    platform.architecture = _asks_file

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

# A century is far beyond any sensible RPO or drill interval, and keeps every duration well
# inside what datetime arithmetic can add to a timestamp.
MAX_DURATION_S = 36500 * 86400

# cron_slots walks at most this many slots so that a minutely schedule over a long window
# stays cheap for a page that shows every source at once.
MAX_SLOTS = 10_000

_DURATION = re.compile(r"(\d+)([smhdw])")
_DURATION_HELP = "use a number with a unit s, m, h, d or w, e.g. 15m"

# format_duration shows the two largest units, largest first; weeks are left out on purpose
# so that ages compare at a glance ("9d 4h" next to "16d 2h").
_FORMAT_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))

_CRON_HELP = (
    "use five fields (minute hour day-of-month month day-of-week), e.g. '0 3 * * *' for "
    "03:00 every day or '*/15 * * * *' for every 15 minutes"
)


def parse_duration(text: str) -> int:
    """Return the number of seconds in a duration such as `90s`, `15m`, `6h`, `7d` or `2w`.

    Raise ValueError with a message a user can act on for anything else, including zero,
    negative numbers, fractions, a missing or unknown unit, and durations over a century.
    """
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a duration: {_DURATION_HELP}")
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration: {_DURATION_HELP}")
    seconds = int(match.group(1)) * UNITS[match.group(2)]
    if seconds == 0:
        raise ValueError(f"{text!r} is not a duration: it must be longer than zero, e.g. 15m")
    if seconds > MAX_DURATION_S:
        raise ValueError(
            f"{text!r} is too long: use at most {MAX_DURATION_S // 86400}d (about a century)"
        )
    return seconds


def format_duration(seconds: float) -> str:
    """Return a short human text for a number of seconds: `45s`, `1h 30m`, `3d 4h`.

    Show at most the two largest units, truncating the rest, so the text never claims more
    time than there is. Round fractions to the nearest second; prefix negatives (clock skew
    between hosts) with a minus sign rather than failing.
    """
    if seconds < 0:
        return "-" + format_duration(-seconds)
    remaining = int(seconds + 0.5)
    if remaining == 0:
        return "0s"
    parts: list[str] = []
    for unit, size in _FORMAT_UNITS:
        count, remaining = divmod(remaining, size)
        if parts:
            # The second unit is the one right below the first, even when it is zero, so
            # that 1d 0h 5m reads "1d" and not "1d 5m".
            if count:
                parts.append(f"{count}{unit}")
            break
        if count:
            parts.append(f"{count}{unit}")
    return " ".join(parts)


def parse_cron(expr: str) -> None:
    """Check that `expr` is a five-field cron expression that fires at least once.

    Raise ValueError with a message naming the problem and the expected form. Aliases such
    as `@daily` and six-field forms with seconds are refused: the schedule is stored and
    shown as typed, and five fields are what every cron reader understands.
    """
    if not isinstance(expr, str) or not expr.strip():
        raise ValueError(f"{expr!r} is not a cron expression: {_CRON_HELP}")
    fields = expr.split()
    if expr.strip().startswith("@"):
        raise ValueError(
            f"{expr!r} is not accepted: write the five fields instead, e.g. '0 0 * * *' for "
            "@daily or '0 * * * *' for @hourly"
        )
    if len(fields) != 5:
        raise ValueError(
            f"{expr!r} is not a cron expression: it has {len(fields)} field"
            f"{'' if len(fields) == 1 else 's'}; {_CRON_HELP}"
        )
    if not croniter.is_valid(expr):
        raise ValueError(f"{expr!r} is not a cron expression: {_CRON_HELP}")
    # A valid expression can still name a date that never exists (`0 0 31 2 *`); a policy
    # with such a schedule would silently never back up.
    try:
        croniter(expr, datetime(2000, 1, 1)).get_next(datetime)
    except (CroniterBadDateError, CroniterBadCronError) as error:
        raise ValueError(
            f"{expr!r} never fires: no date matches its day-of-month and month"
        ) from error


def next_run(expr: str, after: datetime, tz: tzinfo) -> datetime:
    """Return the first instant strictly after `after` at which `expr` fires in zone `tz`.

    `after` must be aware. The result is in UTC: Python compares and adds datetimes that
    share a zone on their wall clock, ignoring `fold`, which is wrong across the autumn hour;
    convert to the zone only for display. On a daylight-saving change the wall clock
    decides: a time skipped in spring fires once, at the first instant after the gap, and a
    time repeated in autumn fires at both of its instants, so a frequent schedule keeps its
    pace through the repeated hour. (In the rare zones that shift by half an hour, such as
    Australia/Lord_Howe, croniter may fire one slot late at the change.)
    """
    parse_cron(expr)
    _require_aware(after, "after")
    try:
        return croniter(expr, after.astimezone(tz)).get_next(datetime).astimezone(UTC)
    except CroniterError as error:
        raise ValueError(f"{expr!r} has no run after {after.isoformat()}") from error


def cron_slots(
    expr: str, start: datetime, end: datetime, tz: tzinfo, *, limit: int = MAX_SLOTS
) -> list[datetime]:
    """Return the instants in (start, end] at which `expr` fires in zone `tz`, oldest first.

    The instants are in UTC and follow the same daylight-saving rules as `next_run`. Return
    at most `limit` slots: when more fall in the window, keep the latest ones, which are the
    ones an operator looks at. The walk goes backwards from `end`, so its cost depends on
    the number of slots returned, never on the length of the window.
    """
    parse_cron(expr)
    _require_aware(start, "start")
    _require_aware(end, "end")
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    if end <= start:
        return []
    # croniter's get_prev is strictly before its start; a hair past `end` makes `end`
    # itself a candidate, as the window is closed on that side.
    walker = croniter(expr, (end + timedelta(microseconds=1)).astimezone(tz))
    slots: list[datetime] = []
    previous = None
    while len(slots) < limit:
        try:
            slot = walker.get_prev(datetime).astimezone(UTC)
        except CroniterError:
            break
        if slot <= start:
            break
        if previous is not None and slot >= previous:
            # A walk that stops moving backwards would loop forever; croniter has had such
            # bugs around daylight-saving changes.
            break
        slots.append(slot)
        previous = slot
    slots.reverse()
    return slots


def _require_aware(moment: datetime, name: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime, got naive {moment.isoformat()}")

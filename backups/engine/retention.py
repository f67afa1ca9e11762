"""Retention: which snapshots a policy keeps, with restic's `forget --keep-*` semantics.

Snapshots are walked newest first. `last` keeps the N newest. Each calendar rule (hourly,
daily, weekly, monthly, yearly) keeps the newest snapshot of each of the N newest buckets
that hold a snapshot: buckets without snapshots are not counted, so the result does not
depend on when pruning runs. Buckets are wall-clock hours, days, ISO weeks, months and years
in one stated time zone. When a calendar rule still has buckets to fill after the walk, the
oldest snapshot is kept as well (reason `oldest <rule>`), as restic does since 0.17, so a
young history is not cut short. A snapshot kept for several reasons lists each of them.

Pinned snapshots (a user's "keep", the newest verified archive, one in use by a restore) are
always kept; they still count towards the rules, as restic's tag-kept snapshots do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from datetime import datetime
from zoneinfo import ZoneInfo

PINNED = "pinned"
LAST = "last"
OLDEST = "oldest"

# The order of the rules is the order of the reasons a kept snapshot lists.
_CALENDAR_BUCKETS: tuple[tuple[str, Callable[[datetime], tuple[int, ...]]], ...] = (
    ("hourly", lambda t: (t.year, t.month, t.day, t.hour)),
    ("daily", lambda t: (t.year, t.month, t.day)),
    # The ISO year, not the calendar year: 2019-12-30 belongs to 2020-W01.
    ("weekly", lambda t: tuple(t.isocalendar()[:2])),
    ("monthly", lambda t: (t.year, t.month)),
    ("yearly", lambda t: (t.year,)),
)


@dataclass(frozen=True)
class Snapshot:
    """One backup that retention may keep or remove; `time` is when it was captured."""

    id: int
    time: datetime
    pinned: bool = False

    def __post_init__(self) -> None:
        # Calendar buckets of a naive time would silently follow the server's zone.
        if self.time.tzinfo is None or self.time.utcoffset() is None:
            raise ValueError(
                f"snapshot {self.id} has a naive time {self.time.isoformat()}: "
                "retention needs aware datetimes"
            )


@dataclass(frozen=True)
class Rules:
    """How many snapshots to keep: the N newest, and the newest of the N newest buckets."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0

    def __post_init__(self) -> None:
        for rule in fields(self):
            count = getattr(self, rule.name)
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ValueError(
                    f"keep-{rule.name} must be a whole number of 0 or more, got {count!r}"
                )

    def is_empty(self) -> bool:
        """Return True when no rule keeps anything, so applying it would remove everything."""
        return not any(getattr(self, rule.name) for rule in fields(self))


@dataclass
class Decision:
    """The outcome of a selection, newest first: what to keep and why, and what to remove."""

    keep: list[tuple[Snapshot, list[str]]]
    remove: list[Snapshot]


def select(snapshots: Iterable[Snapshot], rules: Rules, tz: ZoneInfo) -> Decision:
    """Split `snapshots` into those `rules` keep (with their reasons) and those to remove.

    Compute calendar buckets on the wall clock of `tz`. Keep pinned snapshots whatever the
    rules say, with the reason `pinned` first. Order snapshots captured at the same instant
    by id, the higher id counting as newer, so the result does not depend on input order.

    Raise ValueError when `rules` is empty: an empty policy would remove every snapshot, and
    that is never what a user meant.
    """
    if rules.is_empty():
        raise ValueError(
            "the policy has no keep rule: refusing to remove anything. Set at least one of "
            "keep-last, keep-hourly, keep-daily, keep-weekly, keep-monthly or keep-yearly."
        )
    # Sort on timestamps: datetimes that share a zone compare on the wall clock, ignoring
    # `fold`, which would misorder the repeated autumn hour.
    ordered = sorted(snapshots, key=lambda s: (s.time.timestamp(), s.id), reverse=True)

    remaining = {LAST: rules.last}
    remaining.update({name: getattr(rules, name) for name, _ in _CALENDAR_BUCKETS})
    # The bucket of the last snapshot each calendar rule kept. Snapshots come newest first,
    # so every bucket is one contiguous run and "differs from the last kept" means "new".
    last_bucket: dict[str, tuple[int, ...] | None] = {name: None for name, _ in _CALENDAR_BUCKETS}

    keep: list[tuple[Snapshot, list[str]]] = []
    remove: list[Snapshot] = []
    for index, snapshot in enumerate(ordered):
        is_oldest = index == len(ordered) - 1
        reasons = [PINNED] if snapshot.pinned else []
        if remaining[LAST] > 0:
            remaining[LAST] -= 1
            reasons.append(LAST)
        local = snapshot.time.astimezone(tz)
        for name, bucket_of in _CALENDAR_BUCKETS:
            if remaining[name] <= 0:
                continue
            bucket = bucket_of(local)
            if bucket != last_bucket[name]:
                reasons.append(name)
            elif is_oldest:
                # The rule could not fill its buckets: keep the start of the history too.
                reasons.append(f"{OLDEST} {name}")
            else:
                continue
            last_bucket[name] = bucket
            remaining[name] -= 1
        if reasons:
            keep.append((snapshot, reasons))
        else:
            remove.append(snapshot)
    return Decision(keep=keep, remove=remove)

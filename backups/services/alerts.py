"""Alerts: conditions on each source's standing, their transitions, silences and acks.

A condition is evaluated from the source's stored standing (the compliance service's
`Standing`), never from its run history, so judging a thousand sources costs the same
handful of queries as the overview. Evaluation happens right after every run (for its
source) and in housekeeping every minute (for the fleet). The fleet-wide condition
"workers down" cannot wait for housekeeping, which runs on a worker: the web process
judges it too when /healthz or /metrics is asked (`alerts_watch_workers`).

Each (source, condition) is one `Alert` row; a change of state is written with a
conditional UPDATE and recorded as an `AlertEvent`, so two evaluations at once record a
transition once. Notifications are reconciled apart from transitions: an alert whose
state differs from the state its targets were last told of (`notified_state`) gets its
outbox rows, claimed with another conditional UPDATE. So a transition is notified once
(firing, then resolved), a silenced one when its silence ends if it still holds, and
nothing twice after a restart.

- A silence (a source, a condition, or both, until a time) keeps an alert on the pages
  but notifies nobody; a resolution whose firing was never sent is not sent either.
- An acknowledgement (who, when, a note) lasts until the alert resolves; it stops the
  reminders of ALERT_REMIND_S.
- A graver alert says what a milder one would: `rpo_breached` supersedes `rpo_at_risk`
  and `rto_breached` supersedes `rto_unproven`, so the milder one resolving because the
  graver one fired sends nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from backups.audit import audit_record, current_actor
from backups.engine.locations import LOCAL_KINDS, check_location
from backups.models import Alert, AlertEvent, Run, Silence, Source, WorkerBeat
from backups.services.compliance import (
    Integrity,
    RpoStatus,
    RtoStatus,
    Standing,
    fleet_standing,
    missed_slots,
    slot_tolerance_s,
)
from backups.services.formats import format_duration
from backups.services.notify import (
    NotifyConfigError,
    Targets,
    notifications_deliver_in_background,
    notifications_due,
    notifications_enabled,
    notifications_kick,
    notifications_prune,
    notifications_queue,
    targets_load,
)
from backups.validators import parse_tags

logger = logging.getLogger(__name__)

# A scheduled slot counts as missed this long after it could still have been met: the
# scheduler starts a slot within 30 s, and a worker start runs the missed ones once.
MISSED_GRACE = timedelta(minutes=2)
# Missed slots are looked for this far back at most: the count only has to say "several".
MISSED_LOOKBACK = timedelta(days=2)
# Without a drill interval, a source with an RTO target gets this long after its first
# backup before "RTO unproven" fires (with one, that interval).
UNPROVEN_GRACE_S = 86400
# The web process judges "workers down" at most this often.
WATCH_EVERY_S = 30
# Longest silence: it ends by itself, and a forgotten one must not hide a source forever.
SILENCE_MAX = timedelta(days=31)
HOUSEKEEPING_NAME = "housekeeping"


class AlertRefused(Exception):
    """An acknowledgement or silence cannot be recorded; the message says why."""


@dataclass(frozen=True)
class Condition:
    """Something that can break on a source: how to tell, and how to say it.

    `check` returns whether it holds now, or None when the standing cannot tell (the
    alert keeps its state); `describe` gives the numbers, in either state.
    """

    name: str
    label: str
    check: Callable[[Standing, datetime], bool | None]
    describe: Callable[[Standing, datetime], str]
    supersedes: str = ""


def _ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "never"
    return f"{format_duration(max(0.0, (now - moment).total_seconds()))} ago"


def _stamp(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC" if moment else "never"


def _stored_last_backup(standing: Standing) -> Run | None:
    """The newest backup attempt the standing stored (ended ones; not the one running)."""
    stored = getattr(standing.source, "standing", None)
    return stored.last_backup if stored is not None else None


def _backup_failed(standing: Standing, now: datetime) -> bool | None:
    last = _stored_last_backup(standing)
    if last is None:
        return False
    if last.status in Run.ACTIVE:
        return None  # the attempt is under way: its outcome decides
    return last.status in Run.BAD


def _describe_backup(standing: Standing, now: datetime) -> str:
    last = _stored_last_backup(standing)
    if last is None:
        return "No backup was attempted yet."
    when = _stamp(last.finished_at or last.started_at or last.queued_at)
    if last.status in Run.BAD:
        error = Run.objects.filter(pk=last.pk).values_list("error", flat=True).first() or ""
        return f"Backup #{last.pk} {last.status} at {when}: {error or 'no reason recorded.'}"
    return f"Backup #{last.pk} {last.status} at {when}."


def _rpo(status: str) -> Callable[[Standing, datetime], bool | None]:
    def check(standing: Standing, now: datetime) -> bool | None:
        return standing.rpo_status == status

    return check


def _describe_rpo(standing: Standing, now: datetime) -> str:
    target = format_duration(standing.rpo_s) if standing.rpo_s else "none"
    if standing.rpo_note:
        return f"{standing.rpo_note} Target {target}."
    if standing.last_success_at is None:
        return f"No good backup yet; RPO target {target}."
    return (
        f"The newest good backup is {format_duration(standing.age_s or 0)} old "
        f"(taken {_stamp(standing.last_success_at)}); RPO target {target}."
    )


def _rto_breached(standing: Standing, now: datetime) -> bool | None:
    return standing.rto_status == RtoStatus.BREACHED


def _rto_unproven(standing: Standing, now: datetime) -> bool | None:
    # Without a target there is nothing to prove: such a source never alerts. A drill
    # needs a backup and its interval (a day without one) to come: a new source waits.
    if standing.rto_s is None or standing.rto_status != RtoStatus.UNPROVEN:
        return False
    stored = getattr(standing.source, "standing", None)
    first = stored.first_covered_at if stored is not None else None
    policy = standing.source.policy
    grace = timedelta(seconds=(policy.drill_every_s if policy else None) or UNPROVEN_GRACE_S)
    return first is not None and now - first > grace


def _describe_rto(standing: Standing, now: datetime) -> str:
    target = format_duration(standing.rto_s) if standing.rto_s else "none"
    policy = standing.source.policy
    every = policy.drill_every_s if policy else None
    interval = f"; drills every {format_duration(every)}" if every else "; no drill interval set"
    if standing.last_drill_s is None:
        return f"No restore drill has timed a restore yet; RTO target {target}{interval}."
    return (
        f"The newest drill or restore took {format_duration(standing.last_drill_s)} "
        f"({_ago(standing.last_drill_at, now)}); RTO target {target}{interval}."
    )


def _integrity_failed(standing: Standing, now: datetime) -> bool | None:
    return standing.integrity == Integrity.FAILED


def _describe_integrity(standing: Standing, now: datetime) -> str:
    stored = getattr(standing.source, "standing", None)
    verify_id = stored.last_verify_id if stored is not None else None
    if verify_id is None:
        return "No verification has a verdict yet."
    verify = (
        Run.objects.filter(pk=verify_id)
        .values("pk", "status", "error", "backup_id", "drill")
        .first()
    )
    if verify is None:
        return "No verification has a verdict yet."
    what = "Drill" if verify["drill"] else "Verification"
    if verify["status"] in Run.GOOD:
        return f"{what} #{verify['pk']} of backup #{verify['backup_id']} passed."
    return (
        f"{what} #{verify['pk']} of backup #{verify['backup_id']} found damage: "
        f"{verify['error'] or 'see its checks.'}"
    )


def _missed(standing: Standing, now: datetime) -> list[datetime]:
    source = standing.source
    policy = source.policy
    cron = policy.schedule.strip() if policy else ""
    if not source.enabled or not cron or standing.next_run_at is None:
        return []
    last = standing.last_backup
    low = max(source.created_at, last.queued_at) if last else source.created_at
    low = max(low, now - MISSED_LOOKBACK)
    tolerance_s = slot_tolerance_s(cron)
    until = now - timedelta(seconds=tolerance_s) - MISSED_GRACE
    return missed_slots(cron, low, until, [], tolerance_s)


def _missed_schedule(standing: Standing, now: datetime) -> bool | None:
    return bool(_missed(standing, now))


def _describe_missed(standing: Standing, now: datetime) -> str:
    slots = _missed(standing, now)
    last = standing.last_backup
    attempt = f"the newest backup was queued {_stamp(last.queued_at)}" if last else "no backup yet"
    if not slots:
        return f"Scheduled backups start again; {attempt}."
    return (
        f"{len(slots)} scheduled backup(s) did not start, the first due {_stamp(slots[0])}; "
        f"{attempt}. Are the workers and their scheduler running?"
    )


def _location_problem(standing: Standing) -> str | None:
    """Say what is wrong with a local source's location on this worker host, or None.

    Folders and SQLite files are looked at every minute, so a source whose data went
    missing is known before its next backup fails. Pods and databases are only reached
    by a backup: the `backup_failed` alert covers them.
    """
    source = standing.source
    if source.kind not in LOCAL_KINDS:
        return None
    try:
        check_location(source.kind, source.location)
    except ValueError as problem:
        return str(problem)
    return None


def _source_unreachable(standing: Standing, now: datetime) -> bool | None:
    # An early warning between backups: once a backup failed, `backup_failed` says it.
    if _backup_failed(standing, now):
        return False
    return _location_problem(standing) is not None


def _describe_location(standing: Standing, now: datetime) -> str:
    problem = _location_problem(standing)
    if problem is None:
        return f"{standing.source.location} is there again."
    return f"{problem} Its next backup will fail: put the data back or fix the source's location."


def _offsite_stale(standing: Standing, now: datetime) -> bool | None:
    return standing.offsite_status == RpoStatus.AT_RISK


def _describe_offsite(standing: Standing, now: datetime) -> str:
    target = format_duration(standing.rpo_s) if standing.rpo_s else "none"
    if standing.offsite_age_s is None:
        return f"No backup has a proven copy in another storage; RPO target {target}."
    return (
        f"The newest offsite copy is of a backup {format_duration(standing.offsite_age_s)} "
        f"old; RPO target {target}."
    )


def _enabled(check):
    def guarded(standing: Standing, now: datetime) -> bool | None:
        # A disabled (retired) source is expected to age: it alerts about nothing.
        if not standing.source.enabled:
            return False
        return check(standing, now)

    return guarded


# What can break on a source.
SOURCE_CONDITIONS: tuple[Condition, ...] = (
    Condition(
        "backup_failed",
        "Backup failed",
        _enabled(_backup_failed),
        _describe_backup,
        # The failed backup's error names what is missing: it says it all from then on.
        supersedes="source_unreachable",
    ),
    Condition("rpo_at_risk", "RPO at risk", _enabled(_rpo(RpoStatus.AT_RISK)), _describe_rpo),
    Condition(
        "rpo_breached",
        "RPO breached",
        _enabled(_rpo(RpoStatus.BREACHED)),
        _describe_rpo,
        supersedes="rpo_at_risk",
    ),
    Condition(
        "rto_breached",
        "RTO breached",
        _enabled(_rto_breached),
        _describe_rto,
        supersedes="rto_unproven",
    ),
    Condition("rto_unproven", "RTO unproven", _enabled(_rto_unproven), _describe_rto),
    Condition(
        "integrity_failed", "Integrity failed", _enabled(_integrity_failed), _describe_integrity
    ),
    Condition("missed_schedule", "Missed schedule", _enabled(_missed_schedule), _describe_missed),
    Condition("offsite_stale", "Offsite copy stale", _enabled(_offsite_stale), _describe_offsite),
    Condition(
        "source_unreachable",
        "Source unreachable",
        _enabled(_source_unreachable),
        _describe_location,
    ),
)
WORKERS_DOWN = "workers_down"
LABELS = {condition.name: condition.label for condition in SOURCE_CONDITIONS}
LABELS[WORKERS_DOWN] = "Workers down"
SUPERSEDED_BY = {c.supersedes: c.name for c in SOURCE_CONDITIONS if c.supersedes}


def condition_label(name: str) -> str:
    """Return how people call a condition ("RPO breached")."""
    return LABELS.get(name, name)


# --- transitions -----------------------------------------------------------------------


def _title(state: str, source: Source | None, condition: str, *, reminder: bool = False) -> str:
    tag = "STILL FIRING" if reminder else state.upper()
    where = source.name if source is not None else "all workers"
    return f"[{tag}] {condition_label(condition)}: {where}"[:300]


def _link(source: Source | None) -> str:
    base = settings.DASHBOARD_URL
    if not base:
        return ""
    path = f"/sources/{source.slug}/" if source is not None else "/alerts/"
    return f"\n{base}{path}"


def _body(title: str, detail: str, source: Source | None, alert: Alert | None, now) -> str:
    lines = [title, detail]
    if alert is not None and not alert.is_firing and alert.fired_at:
        lasted = format_duration((now - alert.fired_at).total_seconds())
        lines.append(f"It had been firing since {_stamp(alert.fired_at)} ({lasted}).")
    return "\n".join(lines) + _link(source)


def _transition(
    alert: Alert | None,
    *,
    source: Source | None,
    condition: str,
    firing: bool,
    detail: str,
    now: datetime,
) -> Alert | None:
    """Record that the condition now holds (or no longer does); return the alert row.

    Written with a conditional UPDATE on the state it was read in: of two evaluations
    at once, one records the transition and the other finds it done.
    """
    state = Alert.State.FIRING if firing else Alert.State.RESOLVED
    title = _title(state, source, condition)
    with transaction.atomic():
        if alert is None:
            try:
                with transaction.atomic():
                    alert = Alert.objects.create(
                        source=source,
                        condition=condition,
                        state=state,
                        since=now,
                        fired_at=now,
                        summary=title,
                        detail=detail,
                    )
            except IntegrityError:
                return Alert.objects.filter(source=source, condition=condition).first()
        else:
            changes = {
                "state": state,
                "since": now,
                "summary": title,
                "detail": detail,
                # An acknowledgement holds for one firing.
                "acknowledged_by": None,
                "acknowledged_by_name": "",
                "acknowledged_at": None,
                "ack_note": "",
            }
            if firing:
                changes["fired_at"] = now
            if Alert.objects.filter(pk=alert.pk, state=alert.state).update(**changes) != 1:
                return Alert.objects.filter(pk=alert.pk).first()
            previous_fired_at = alert.fired_at
            for name, value in changes.items():
                setattr(alert, name, value)
            alert.fired_at = changes.get("fired_at", previous_fired_at)
        AlertEvent.objects.create(
            alert=alert,
            at=now,
            state=state,
            title=title,
            body=_body(title, detail, source, alert, now),
        )
    logger.info("alert %s: %s", alert, state)
    return alert


# --- notifications ---------------------------------------------------------------------


class _Router:
    """Which targets an alert goes to; APPRISE_CONFIG is read once per evaluation."""

    def __init__(self) -> None:
        self._targets: Targets | None = None
        self._error: str | None = None
        self._loaded = False

    def tags_for(self, alert: Alert) -> list[str]:
        """Return the tags of the alert's source and its policy; else its owner's; else
        NOTIFY_DEFAULT_TAGS (fleet-wide alerts too)."""
        source = alert.source
        if source is not None:
            tags = parse_tags(source.notify)
            if source.policy_id is not None:
                tags += [tag for tag in parse_tags(source.policy.notify) if tag not in tags]
            if not tags and source.owner in settings.NOTIFY_OWNER_TAGS:
                tags = [settings.NOTIFY_OWNER_TAGS[source.owner]]
            if tags:
                return tags
        return list(settings.NOTIFY_DEFAULT_TAGS)

    def targets(self, tags: list[str]):
        """Return (targets, why none) for `tags`."""
        if not self._loaded:
            self._loaded = True
            try:
                self._targets = targets_load()
            except NotifyConfigError as error:
                self._error = str(error)
        if self._targets is None:
            return [], self._error
        found = self._targets.tagged(tags)
        if not found:
            return [], f"No target in APPRISE_CONFIG has the tag(s) {', '.join(tags)}."
        return found, None


def _silenced(alert: Alert, silences: list[Silence]) -> bool:
    return any(silence.covers(alert) for silence in silences)


def _queue(event: AlertEvent, alert: Alert, router: _Router) -> bool:
    """Write the outbox rows of `event` and note the outcome on it; return whether any."""
    if not notifications_enabled():
        event.notify, event.notify_note = AlertEvent.Notify.OFF, "APPRISE_CONFIG is not set."
        return False
    tags = router.tags_for(alert)
    targets, why = router.targets(tags)
    if not targets:
        event.notify, event.notify_note = AlertEvent.Notify.NO_TARGET, (why or "")[:500]
        logger.warning("alert %s: nobody to notify: %s", alert, why)
        return False
    notifications_queue(event, targets, tags)
    event.notify = AlertEvent.Notify.QUEUED
    event.notify_note = f"to {len(targets)} target(s) tagged {', '.join(tags)}"[:500]
    return True


def _reconcile(
    alert: Alert, *, silences: list[Silence], firing: set[tuple], router: _Router, now
) -> bool:
    """Queue what the alert's targets were not told yet; return whether messages were queued."""
    wanted = alert.state
    if alert.notified_state == wanted:
        return _remind(alert, silences=silences, router=router, now=now)
    event = (
        AlertEvent.objects.filter(alert=alert, kind=AlertEvent.Kind.TRANSITION, state=wanted)
        .order_by("-at", "-pk")
        .first()
    )
    if event is None:
        return False
    if _silenced(alert, silences):
        if event.notify == AlertEvent.Notify.PENDING:
            AlertEvent.objects.filter(pk=event.pk, notify="").update(
                notify=AlertEvent.Notify.SILENCED
            )
        return False
    skip = None
    if wanted == Alert.State.RESOLVED:
        if alert.notified_state != Alert.State.FIRING:
            skip = AlertEvent.Notify.UNSENT
        elif (alert.source_id, SUPERSEDED_BY.get(alert.condition)) in firing:
            skip = AlertEvent.Notify.SUPERSEDED
    with transaction.atomic():
        claimed = Alert.objects.filter(
            pk=alert.pk, state=wanted, notified_state=alert.notified_state
        ).update(notified_state=wanted, notified_at=now)
        if claimed != 1:
            return False
        alert.notified_state, alert.notified_at = wanted, now
        if skip is not None:
            event.notify = skip
            queued = False
        else:
            queued = _queue(event, alert, router)
            if event.notify == AlertEvent.Notify.QUEUED and event.at < now - timedelta(seconds=90):
                event.notify_note = f"{event.notify_note}; sent when its silence ended"[:500]
        event.save(update_fields=["notify", "notify_note"])
    return queued


def _remind(alert: Alert, *, silences: list[Silence], router: _Router, now) -> bool:
    """Send a firing alert nobody acknowledged again every ALERT_REMIND_S (0: never)."""
    every = settings.ALERT_REMIND_S
    if (
        not every
        or not alert.is_firing
        or alert.acknowledged_at is not None
        or alert.notified_at is None
        or now - alert.notified_at < timedelta(seconds=every)
        or _silenced(alert, silences)
    ):
        return False
    with transaction.atomic():
        claimed = Alert.objects.filter(
            pk=alert.pk,
            state=Alert.State.FIRING,
            notified_at=alert.notified_at,
            acknowledged_at__isnull=True,
        ).update(notified_at=now)
        if claimed != 1:
            return False
        alert.notified_at = now
        title = _title(alert.state, alert.source, alert.condition, reminder=True)
        body = "\n".join(
            [title, f"Firing since {_stamp(alert.fired_at)}; nobody acknowledged it.", alert.detail]
        ) + _link(alert.source)
        event = AlertEvent(
            alert=alert,
            at=now,
            kind=AlertEvent.Kind.REMINDER,
            state=alert.state,
            title=title,
            body=body,
        )
        event.save()
        queued = _queue(event, alert, router)
        event.save(update_fields=["notify", "notify_note"])
    return queued


# --- evaluation ------------------------------------------------------------------------


def _workers_seen_at():
    return WorkerBeat.objects.filter(name=HOUSEKEEPING_NAME).values_list("at", flat=True).first()


# When this process started judging: on a new install no worker has beaten yet, and the
# workers started beside it get WORKERS_SILENT_S to run their first housekeeping.
_judging_since = timezone.now()


def _workers_verdict(now: datetime) -> tuple[bool, str]:
    seen = _workers_seen_at()
    silent = timedelta(seconds=settings.WORKERS_SILENT_S)
    if seen is None:
        if now - _judging_since <= silent:
            return False, "No worker has run housekeeping yet; the workers are given time to start."
        return True, (
            "No worker has run housekeeping yet: no backup, verification or schedule runs. "
            "Start the workers (`python manage.py qcluster`)."
        )
    if now - seen > silent:
        return True, (
            f"No worker has run housekeeping since {_stamp(seen)} ({_ago(seen, now)}): no "
            "backup, verification or schedule runs. Check the qcluster services and the broker."
        )
    return False, f"A worker ran housekeeping {_ago(seen, now)}."


def alerts_evaluate(
    *,
    source_ids: list[int] | None = None,
    fleet: bool = True,
    now: datetime | None = None,
    inline: bool = False,
) -> dict:
    """Judge every condition of every source (or of `source_ids`), and the fleet's.

    Record each transition, queue the notifications the targets were not given yet, and
    have them sent (by the workers; in this process with `inline`). Return the counts.
    """
    now = now or timezone.now()
    scope = Source.objects.filter(pk__in=source_ids) if source_ids is not None else None
    standings = fleet_standing(now=now, sources=scope, recent=True)
    alerts_qs: QuerySet = Alert.objects.select_related("source__policy")
    if source_ids is not None:
        alerts_qs = alerts_qs.filter(source_id__in=source_ids)
    elif not fleet:
        alerts_qs = alerts_qs.filter(source__isnull=False)
    alerts = {(alert.source_id, alert.condition): alert for alert in alerts_qs}
    transitions = 0
    for standing in standings:
        source = standing.source
        for condition in SOURCE_CONDITIONS:
            verdict = condition.check(standing, now)
            if verdict is None:
                continue
            alert = alerts.get((source.pk, condition.name))
            current = alert is not None and alert.is_firing
            if verdict == current:
                continue
            updated = _transition(
                alert,
                source=source,
                condition=condition.name,
                firing=verdict,
                detail=condition.describe(standing, now),
                now=now,
            )
            if updated is not None:
                alerts[(source.pk, condition.name)] = updated
                transitions += 1
    if fleet and source_ids is None:
        down, detail = _workers_verdict(now)
        alert = alerts.get((None, WORKERS_DOWN))
        if down != (alert is not None and alert.is_firing):
            updated = _transition(
                alert, source=None, condition=WORKERS_DOWN, firing=down, detail=detail, now=now
            )
            if updated is not None:
                alerts[(None, WORKERS_DOWN)] = updated
                transitions += 1
    queued = _reconcile_all(list(alerts.values()), now=now)
    if queued:
        notifications_kick(inline=inline)
    return {"transitions": transitions, "queued": queued, "firing": _count_firing(alerts)}


def _count_firing(alerts: dict) -> int:
    return sum(1 for alert in alerts.values() if alert.is_firing)


def _reconcile_all(alerts: list[Alert], *, now: datetime) -> int:
    silences = list(Silence.objects.filter(until__gt=now))
    firing = {(alert.source_id, alert.condition) for alert in alerts if alert.is_firing}
    router = _Router()
    queued = 0
    for alert in alerts:
        if alert.notified_state == alert.state and not settings.ALERT_REMIND_S:
            continue
        queued += _reconcile(alert, silences=silences, firing=firing, router=router, now=now)
    return queued


def alerts_after_run(run: Run, *, inline: bool = False) -> None:
    """Judge the alerts of the run's source now that the run ended (after its standing)."""
    alerts_evaluate(source_ids=[run.source_id], inline=inline)


def alerts_housekeeping(*, now: datetime | None = None) -> dict:
    """Judge every alert of the fleet, and have the messages that are due sent.

    A failure is logged and reported, and leaves the other chores of housekeeping alone.
    """
    try:
        report = alerts_evaluate(now=now)
    except Exception as error:
        logger.exception("judging the alerts failed")
        return {"error": f"{type(error).__name__}: {error}"[:300]}
    if not report["queued"] and notifications_due():
        # Retries whose time came, and rows a dead sender left claimed.
        notifications_kick()
    report["messages_forgotten"] = notifications_prune(now=now)
    return report


_watch_lock = threading.Lock()
_watched_at = 0.0


def alerts_watch_workers(*, force: bool = False) -> dict | None:
    """Judge "workers down" from the web process, at most every WATCH_EVERY_S.

    Housekeeping runs on a worker, so with every worker gone nothing else would see it.
    When the workers are down the messages are sent from a thread of this process, since
    no worker would send them. Return the counts, or None when it was judged recently.
    """
    global _watched_at
    with _watch_lock:
        if not force and time.monotonic() - _watched_at < WATCH_EVERY_S:
            return None
        _watched_at = time.monotonic()
    now = timezone.now()
    down, detail = _workers_verdict(now)
    alert = Alert.objects.filter(source__isnull=True, condition=WORKERS_DOWN).first()
    transitions = 0
    if down != (alert is not None and alert.is_firing):
        alert = _transition(
            alert, source=None, condition=WORKERS_DOWN, firing=down, detail=detail, now=now
        )
        transitions = 1
    queued = _reconcile_all([alert], now=now) if alert is not None else 0
    if notifications_enabled() and down and (queued or notifications_due()):
        notifications_deliver_in_background()
    elif queued:
        notifications_kick()
    return {"transitions": transitions, "queued": queued, "down": down}


# --- acknowledgements and silences -----------------------------------------------------


def _actor_name(actor) -> str:
    actor = actor if actor is not None else current_actor()
    if getattr(actor, "is_authenticated", False):
        return actor.get_username()
    return getattr(actor, "name", "") or "system"


def alert_acknowledge(*, alert: Alert, actor, note: str = "") -> Alert:
    """Record that `actor` is on it, with an optional note, until the alert resolves.

    Raise AlertRefused when the alert is not firing. Audited.
    """
    note = (note or "").strip()
    if len(note) > 500:
        raise AlertRefused("The note is longer than 500 characters; shorten it.")
    now = timezone.now()
    actor = actor if actor is not None else current_actor()
    user = actor if getattr(actor, "is_authenticated", False) else None
    updated = Alert.objects.filter(pk=alert.pk, state=Alert.State.FIRING).update(
        acknowledged_by=user,
        acknowledged_by_name=_actor_name(actor)[:150],
        acknowledged_at=now,
        ack_note=note,
    )
    if updated != 1:
        raise AlertRefused(f"Alert #{alert.pk} ({alert}) is not firing: nothing to acknowledge.")
    alert.refresh_from_db()
    audit_record(
        actor=actor,
        action="alert.acknowledge",
        outcome="succeeded",
        obj=alert,
        source=alert.source,
        detail={"condition": alert.condition, "note": note},
    )
    return alert


def silence_create(
    *,
    source: Source | None,
    condition: str,
    duration: timedelta,
    actor,
    note: str = "",
) -> Silence:
    """Silence the alerts of a source, of a condition, or of both, for `duration`.

    Raise AlertRefused for an unknown condition, a silence naming neither, or a duration
    that is not between a minute and SILENCE_MAX. Audited.
    """
    condition = (condition or "").strip()
    note = (note or "").strip()
    if condition and condition not in LABELS:
        raise AlertRefused(f"Unknown condition {condition!r}; known: {', '.join(sorted(LABELS))}.")
    if source is None and not condition:
        raise AlertRefused("Name a source, a condition, or both, to silence.")
    if not timedelta(minutes=1) <= duration <= SILENCE_MAX:
        raise AlertRefused(
            f"A silence lasts from 1m to {format_duration(SILENCE_MAX.total_seconds())}; "
            f"{format_duration(duration.total_seconds())} is outside that."
        )
    if len(note) > 500:
        raise AlertRefused("The note is longer than 500 characters; shorten it.")
    now = timezone.now()
    actor = actor if actor is not None else current_actor()
    user = actor if getattr(actor, "is_authenticated", False) else None
    silence = Silence.objects.create(
        source=source,
        condition=condition,
        until=now + duration,
        created_at=now,
        created_by=user,
        created_by_name=_actor_name(actor)[:150],
        note=note,
    )
    audit_record(
        actor=actor,
        action="alert.silence",
        outcome="succeeded",
        obj=silence,
        source=source,
        detail={
            "condition": condition,
            "until": silence.until.isoformat(),
            "note": note,
        },
    )
    return silence


def silence_end(*, silence: Silence, actor) -> Silence:
    """End a silence now; a firing alert it held back is notified at the next evaluation."""
    now = timezone.now()
    if silence.until <= now:
        raise AlertRefused(f"That silence already ended ({_stamp(silence.until)}).")
    Silence.objects.filter(pk=silence.pk).update(until=now)
    silence.until = now
    audit_record(
        actor=actor,
        action="alert.unsilence",
        outcome="succeeded",
        obj=silence,
        source=silence.source,
        detail={"condition": silence.condition},
    )
    return silence


def silences_active(*, now: datetime | None = None) -> list[Silence]:
    """Return the silences in force, soonest to end first."""
    now = now or timezone.now()
    return list(
        Silence.objects.filter(until__gt=now).select_related("source").order_by("until", "pk")
    )


def alert_silenced_until(alert: Alert, silences: list[Silence]) -> datetime | None:
    """Return until when `alert` is silenced (the latest covering silence), or None."""
    ends = [silence.until for silence in silences if silence.covers(alert)]
    return max(ends) if ends else None


def alert_to_dict(alert: Alert, silences: list[Silence]) -> dict:
    """Return the JSON object of an alert, as `alerts --json` prints it."""
    until = alert_silenced_until(alert, silences)
    return {
        "id": alert.pk,
        "source": alert.source.name if alert.source_id else None,
        "condition": alert.condition,
        "label": condition_label(alert.condition),
        "state": alert.state,
        "since": alert.since.isoformat(),
        "fired_at": alert.fired_at.isoformat(),
        "summary": alert.summary,
        "detail": alert.detail,
        "acknowledged_by": alert.acknowledged_by_name or None,
        "acknowledged_at": alert.acknowledged_at.isoformat() if alert.acknowledged_at else None,
        "ack_note": alert.ack_note or None,
        "silenced_until": until.isoformat() if until else None,
    }

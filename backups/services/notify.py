"""Notifications: the targets of APPRISE_CONFIG, the outbox, and its delivery with backoff.

The targets are apprise URLs (Slack, Teams, email, PagerDuty, Opsgenie, ntfy, Matrix, a
JSON webhook, ...) in an apprise configuration file, each with tags; alerts are routed to
tags. The URLs hold tokens, so they stay in that file: the catalog names a target by a
keyed hash of its URL and shows it with its secrets masked.

Delivery is an outbox. The transaction that records an alert's transition also writes one
`Notification` row per target, so no transition is lost to a crash. A sender claims a row
with a conditional UPDATE (pending, or sending but claimed long ago by a sender that died)
before it sends it, so two senders never send the same row. A target that fails or times
out is tried again later with a growing delay, up to MAX_ATTEMPTS. What this guarantees is
*at least once* per transition and target: a sender that dies after the target accepted a
message and before the row says so sends it again when the row is reclaimed. Every message
carries the transition's id (`event #N`) for a receiver to drop such a repeat.

Sending never holds up a run or housekeeping: both only write rows and queue the delivery
task; each target answers within apprise's socket timeouts (a few seconds), and one
delivery pass stops after DELIVERY_BUDGET_S.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Max, Q
from django.utils import timezone

from backups.models import AlertEvent, Notification

logger = logging.getLogger(__name__)

DELIVER_TASK = "backups.tasks.deliver_notifications"
# Delay before the next attempt after the n-th failed one; the last repeats.
BACKOFF_S = (30, 60, 120, 300, 600, 1200, 1800, 3600)
MAX_ATTEMPTS = 12
# A row claimed this long ago by a sender that never finished it is claimed again: far
# longer than any target may take (apprise's timeouts are seconds; SMTP's 15 s).
SENDING_STALE = timedelta(minutes=5)
# One delivery pass stops starting new messages after this long; the rest wait for the next.
DELIVERY_BUDGET_S = 60
# Sent and given-up messages are kept this long (each target's newest one for ever: it is
# the target's last delivery); the alert history itself (AlertEvent) is kept.
KEEP_SENT = timedelta(days=90)
BATCH = 50


class NotifyConfigError(Exception):
    """APPRISE_CONFIG cannot be used; the message says why and what to do."""


@dataclass
class Target:
    """One apprise URL of APPRISE_CONFIG: its keyed hash, its masked URL, its tags."""

    key: str
    label: str
    tags: list[str]
    service: object = field(repr=False)


def _key(url: str) -> str:
    return hmac.new(settings.SECRET_KEY.encode(), url.encode(), hashlib.sha256).hexdigest()[:32]


class Targets:
    """The targets of APPRISE_CONFIG, read once: look them up by key or by tags."""

    def __init__(self, apobj) -> None:
        self._apobj = apobj
        self.by_key: dict[str, Target] = {}
        for service in apobj.find(tag=_match_all()):
            target = _target(service)
            self.by_key.setdefault(target.key, target)

    def tagged(self, tags: list[str]) -> list[Target]:
        """Return the targets with any of `tags` (and those tagged `always`), each once."""
        found: dict[str, Target] = {}
        for service in self._apobj.find(tag=list(tags)):
            target = _target(service)
            found.setdefault(target.key, target)
        return list(found.values())

    @property
    def all_tags(self) -> list[str]:
        """Return every tag some target has, sorted."""
        return sorted({tag for target in self.by_key.values() for tag in target.tags})


def _match_all():
    import apprise

    return apprise.common.MATCH_ALL_TAG


def _target(service) -> Target:
    return Target(
        key=_key(service.url()),
        label=service.url(privacy=True)[:300],
        tags=sorted(str(tag) for tag in service.tags),
        service=service,
    )


def notifications_enabled() -> bool:
    """Return whether APPRISE_CONFIG is set: otherwise alerts notify nobody."""
    return settings.APPRISE_CONFIG is not None


def targets_load() -> Targets:
    """Read APPRISE_CONFIG; raise NotifyConfigError when it is unset, unreadable or empty."""
    import apprise

    path = settings.APPRISE_CONFIG
    if path is None:
        raise NotifyConfigError(
            "APPRISE_CONFIG is not set: name an apprise configuration file listing the "
            "targets (one URL per line, or YAML with tags)."
        )
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as error:
        raise NotifyConfigError(
            f"APPRISE_CONFIG ({path}) cannot be read ({error.strerror or error}); make it "
            "readable by the web server and the workers."
        ) from None
    config = apprise.AppriseConfig()
    config.add(str(path))
    apobj = apprise.Apprise()
    apobj.add(config)
    targets = Targets(apobj)
    if not targets.by_key:
        raise NotifyConfigError(
            f"APPRISE_CONFIG ({path}) holds no URL apprise can use; check it with "
            f"`apprise --config {path} --dry-run`."
        )
    return targets


class _Capture(logging.Handler):
    """Keep apprise's warnings logged by this thread: they say why a target refused."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.thread = threading.get_ident()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.lines.append(record.getMessage())


@contextmanager
def _captured() -> Iterator[list[str]]:
    handler = _Capture()
    apprise_logger = logging.getLogger("apprise")
    apprise_logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        apprise_logger.removeHandler(handler)


def _sentence(text: str) -> str:
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return first[:999]


def target_send(target: Target, *, title: str, body: str, kind: str = "info") -> str | None:
    """Send one message to `target`; return None when it accepted it, else why not."""
    import apprise

    notify_type = {
        "firing": apprise.NotifyType.FAILURE,
        "resolved": apprise.NotifyType.SUCCESS,
    }.get(kind, apprise.NotifyType.INFO)
    with _captured() as lines:
        try:
            accepted = target.service.notify(body=body, title=title, notify_type=notify_type)
        except Exception as error:  # a plugin's bug must not stop the other targets
            logger.exception("sending to %s failed", target.label)
            return _sentence(f"{type(error).__name__}: {error}")
    if accepted:
        return None
    return _sentence(lines[-1] if lines else "") or "The target did not accept the message."


def notifications_queue(event: AlertEvent, targets: list[Target], tags: list[str]) -> None:
    """Write the outbox rows of `event`, one per target.

    Call it inside the transaction that records the event. A row already written (by
    another evaluation of the same event) is left as it is.
    """
    now = timezone.now()
    rows = [
        Notification(
            event=event,
            target_key=target.key,
            target=target.label,
            tags=",".join(tags)[:200],
            created_at=now,
            next_attempt_at=now,
        )
        for target in targets
    ]
    Notification.objects.bulk_create(rows, ignore_conflicts=True)


def message_of(event: AlertEvent) -> tuple[str, str]:
    """Return the title and body sent for `event`, its id last for receivers to de-duplicate."""
    footer = f"Alert #{event.alert_id}, event #{event.pk}, at {event.at:%Y-%m-%d %H:%M:%S} UTC."
    return event.title, f"{event.body}\n{footer}"


def _due() -> Q:
    now = timezone.now()
    return Q(status=Notification.Status.PENDING, next_attempt_at__lte=now) | Q(
        status=Notification.Status.SENDING, claimed_at__lt=now - SENDING_STALE
    )


def notifications_due() -> bool:
    """Return whether some message waits to be sent now."""
    return Notification.objects.filter(_due()).exists()


def _sender() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def _claim(pk: int, me: str) -> bool:
    now = timezone.now()
    return (
        Notification.objects.filter(_due(), pk=pk).update(
            status=Notification.Status.SENDING,
            claimed_at=now,
            last_attempt_at=now,
            worker=me,
            attempts=F("attempts") + 1,
        )
        == 1
    )


def _record(note: Notification, me: str, error: str | None, *, permanent: bool = False) -> None:
    now = timezone.now()
    mine = Notification.objects.filter(pk=note.pk, status=Notification.Status.SENDING, worker=me)
    if error is None:
        mine.update(status=Notification.Status.DELIVERED, delivered_at=now, last_error="")
        return
    if permanent or note.attempts >= MAX_ATTEMPTS:
        mine.update(status=Notification.Status.FAILED, last_error=error[:1000])
        logger.warning("notification #%s to %s failed for good: %s", note.pk, note.target, error)
        return
    delay = BACKOFF_S[min(note.attempts, len(BACKOFF_S)) - 1]
    mine.update(
        status=Notification.Status.PENDING,
        next_attempt_at=now + timedelta(seconds=delay),
        last_error=error[:1000],
    )
    logger.info(
        "notification #%s to %s failed (%s); next try in %s s", note.pk, note.target, error, delay
    )


def notifications_deliver(*, budget_s: float = DELIVERY_BUDGET_S) -> dict:
    """Send the messages that are due, each claimed first; return how many went and failed.

    Stops starting new ones after `budget_s`; what is left waits for the next pass.
    """
    started = time.monotonic()
    me = _sender()
    targets: Targets | None = None
    config_error: str | None = None
    sent = failed = 0
    while time.monotonic() - started < budget_s:
        ids = list(
            Notification.objects.filter(_due())
            .order_by("next_attempt_at", "pk")
            .values_list("pk", flat=True)[:BATCH]
        )
        claimed_any = False
        for pk in ids:
            if time.monotonic() - started >= budget_s:
                break
            if not _claim(pk, me):
                continue
            claimed_any = True
            note = Notification.objects.select_related("event").get(pk=pk)
            if targets is None and config_error is None:
                try:
                    targets = targets_load()
                except NotifyConfigError as error:
                    config_error = str(error)
            if config_error is not None:
                _record(note, me, config_error)
                failed += 1
                continue
            target = targets.by_key.get(note.target_key)
            if target is None:
                _record(
                    note,
                    me,
                    f"{note.target} is no longer in APPRISE_CONFIG; the message was not sent.",
                    permanent=True,
                )
                failed += 1
                continue
            title, body = message_of(note.event)
            error = target_send(target, title=title, body=body, kind=note.event.state)
            _record(note, me, error)
            if error is None:
                sent += 1
            else:
                failed += 1
        if not claimed_any:
            break
    return {"sent": sent, "failed": failed}


def notifications_kick(*, inline: bool = False) -> None:
    """Have the due messages sent: now in this process (`inline`), or by a worker.

    Queued for the workers after the current transaction commits, so the rows it sends
    are visible to them.
    """
    if not notifications_enabled():
        return
    if inline:
        transaction.on_commit(notifications_deliver)
        return

    def enqueue() -> None:
        from django_q.tasks import async_task

        async_task(DELIVER_TASK, group="notify")

    transaction.on_commit(enqueue)


def notifications_deliver_in_background() -> threading.Thread:
    """Send the due messages from a thread of this process (the web server's, when no
    worker may be alive to do it); return the thread."""

    def deliver() -> None:
        try:
            notifications_deliver()
        except Exception:
            logger.exception("delivering notifications failed")
        finally:
            connection.close()

    thread = threading.Thread(target=deliver, name="notify", daemon=True)
    thread.start()
    return thread


def notify_test(tag: str) -> list[tuple[Target, str | None]]:
    """Send a test message to every target tagged `tag`; return each with why it refused.

    Raise NotifyConfigError when APPRISE_CONFIG is unusable or no target has the tag.
    """
    targets = targets_load()
    tagged = targets.tagged([tag])
    if not tagged:
        known = ", ".join(targets.all_tags) or "none"
        raise NotifyConfigError(
            f"No target in APPRISE_CONFIG has the tag {tag!r} (tags there: {known}); "
            "add `tag: " + tag + "` to an entry, or use one of those."
        )
    where = settings.DASHBOARD_URL or socket.gethostname()
    title = f"[TEST] Backup alerts reach this target (tag {tag})"
    body = (
        f"{title}\nA test message from the backup control plane at {where}, sent with "
        "`notify test`. Alerts routed to this tag arrive here."
    )
    return [(target, target_send(target, title=title, body=body)) for target in tagged]


def notifications_prune(*, now: datetime | None = None) -> int:
    """Forget messages that ended (delivered or given up) more than KEEP_SENT ago.

    Each target's newest message stays, as its last delivery. Return how many went.
    """
    cutoff = (now or timezone.now()) - KEEP_SENT
    newest = (
        Notification.objects.order_by().values("target_key").annotate(last=Max("pk")).values("last")
    )
    ended = (Notification.Status.DELIVERED, Notification.Status.FAILED)
    old = Notification.objects.filter(status__in=ended, created_at__lt=cutoff)
    deleted, _ = old.exclude(pk__in=newest).delete()
    return deleted


def targets_last_delivery(limit: int = 50) -> list[Notification]:
    """Return the newest message of each target (at most `limit` targets), newest first."""
    newest = (
        Notification.objects.order_by().values("target_key").annotate(last=Max("pk")).values("last")
    )
    return list(
        Notification.objects.filter(pk__in=newest)
        .select_related("event__alert__source")
        .order_by("-pk")[:limit]
    )

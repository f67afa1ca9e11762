"""Start-up checks that refuse a queue configuration which could lose or repeat backups.

django-q2's documented semantics decide what is safe. The ORM broker delivers at least
once: a task not acknowledged within `retry` seconds is handed out again, so a backup that
may run for `timeout` seconds needs `retry` above `timeout`, or a second worker picks up a
backup that is still running. Redis delivers at most once; `retry` does not apply there,
but the other rules do. A failed task is retried until `max_attempts`, and 0 means for ever.
`catch_up` replays every missed schedule slot after downtime, a burst of identical backups.

Our runs are claimed with a conditional UPDATE, so even a re-delivery never executes a run
twice; these checks keep the queue from depending on that alone. `qcluster`, `runserver`
and `migrate` run them, so a worker refuses to start on an unsafe configuration.
"""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

HINT_DOCS = "See django-q2's docs/configure.rst and Q_CLUSTER in dashboard/settings.py."


def _positive_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


@register(Tags.compatibility)
def check_queue_settings(app_configs=None, **kwargs) -> list:
    """Refuse queue settings that let a task run twice, retry for ever, or replay slots."""
    conf = getattr(settings, "Q_CLUSTER", None)
    if not isinstance(conf, dict):
        return [
            Error(
                "Q_CLUSTER is not set: the workers cannot start.",
                hint=HINT_DOCS,
                id="backups.E001",
            )
        ]
    problems = []
    timeout = conf.get("timeout")
    retry = conf.get("retry", 60)
    if not _positive_number(timeout):
        problems.append(
            Error(
                f"Q_CLUSTER['timeout'] is {timeout!r}: without a positive timeout a hung "
                "task holds its worker for ever.",
                hint="Set Q_TIMEOUT_S to the longest backup you accept, in seconds.",
                id="backups.E002",
            )
        )
    elif not _positive_number(retry) or timeout >= retry:
        problems.append(
            Error(
                f"Q_CLUSTER['timeout'] ({timeout}) must be below Q_CLUSTER['retry'] "
                f"({retry!r}): the ORM broker hands a task out again after `retry` seconds, "
                "so a backup still running would be delivered to a second worker.",
                hint="Keep retry at least a few minutes above timeout. " + HINT_DOCS,
                id="backups.E003",
            )
        )
    attempts = conf.get("max_attempts")
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        problems.append(
            Error(
                f"Q_CLUSTER['max_attempts'] is {attempts!r}: missing or 0 means a failing "
                "task is retried for ever.",
                hint="Set max_attempts to a small number such as 2.",
                id="backups.E004",
            )
        )
    if conf.get("catch_up", True) is not False:
        problems.append(
            Error(
                "Q_CLUSTER['catch_up'] must be False: after downtime the scheduler would "
                "start one backup per missed slot instead of one.",
                hint="Set 'catch_up': False; missed slots are reported by `status`.",
                id="backups.E005",
            )
        )
    problems.extend(_broker_problems(conf))
    problems.extend(_heartbeat_problems())
    if conf.get("ack_failures") is not True and "redis" not in conf:
        problems.append(
            Warning(
                "Q_CLUSTER['ack_failures'] is not True: the ORM broker re-delivers a failed "
                "task after `retry` seconds, which only adds noise (a run is never executed "
                "twice).",
                hint="Set 'ack_failures': True; failures are recorded on the run itself.",
                id="backups.W001",
            )
        )
    if conf.get("scheduler", True) is False:
        problems.append(
            Warning(
                "Q_CLUSTER['scheduler'] is False: this cluster starts no scheduled backup, "
                "drill or housekeeping.",
                hint="Leave the scheduler on in at least one cluster.",
                id="backups.W002",
            )
        )
    return problems


def _broker_problems(conf: dict) -> list:
    if "redis" in conf:
        if not conf["redis"]:
            return [Error("Q_CLUSTER['redis'] is empty.", id="backups.E006")]
        return []
    alias = conf.get("orm")
    if alias not in settings.DATABASES:
        return [
            Error(
                f"Q_CLUSTER['orm'] is {alias!r}, which is not a database in DATABASES, and no "
                "Redis broker is configured.",
                hint="Use 'orm': 'default', or set REDIS_URL.",
                id="backups.E006",
            )
        ]
    return []


def _heartbeat_problems() -> list:
    interval = getattr(settings, "HEARTBEAT_INTERVAL_S", 5)
    abandon = getattr(settings, "ABANDON_AFTER_S", 120)
    # A run beats at least every HEARTBEAT_INTERVAL_S; leave room for a few missed beats
    # (a slow database, a busy host) before a live run is declared dead.
    if abandon < 3 * interval:
        return [
            Error(
                f"ABANDON_AFTER_S ({abandon}) must be at least three heartbeat intervals "
                f"(3 x HEARTBEAT_INTERVAL_S = {3 * interval}): a live run would be declared "
                "abandoned after a few slow beats.",
                id="backups.E007",
            )
        ]
    return []

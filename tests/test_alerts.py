"""Alerts reach real targets once per transition; silences and acknowledgements hold them.

Targets are real: a JSON webhook and an SMTP server on 127.0.0.1, reached through apprise
from an APPRISE_CONFIG file. The workers' delivery task is called where a worker would
run it (`notifications_deliver`).
"""

from __future__ import annotations

import shutil
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from backups.models import Alert, AlertEvent, Notification, Run, WorkerBeat
from backups.services import alerts as alerts_service
from backups.services.alerts import (
    AlertRefused,
    alert_acknowledge,
    alerts_evaluate,
    silence_create,
    silence_end,
)
from backups.services.backup import backup_request
from backups.services.execution import run_execute
from backups.services.notify import notifications_deliver
from backups.services.schedules import housekeeping_run
from tests.notify_helpers import Webhook, write_config
from tests.pages_helpers import make_run

# Runs are executed as a worker does, which opens its own database connection.
pytestmark = pytest.mark.django_db(transaction=True)

FIRING = "[FIRING] Backup failed: files"
RESOLVED = "[RESOLVED] Backup failed: files"


def backup(source) -> Run:
    """Back the source up as a worker would (its follow-ups queued, not run)."""
    return run_execute(backup_request(source=source, trigger=Run.Trigger.CLI).pk)


def break_folder(data_dir):
    shutil.rmtree(data_dir)


def mend_folder(data_dir):
    data_dir.mkdir()
    (data_dir / "a.txt").write_text("alpha again\n")


def test_a_broken_source_notifies_once_on_firing_and_once_on_resolving(watched, data_dir, webhook):
    assert backup(watched).status == "succeeded"
    notifications_deliver()
    assert webhook.messages == []

    break_folder(data_dir)
    assert backup(watched).status == "failed"
    notifications_deliver()
    for _ in range(3):  # housekeeping every minute judges again: nothing new to say
        housekeeping_run()
        notifications_deliver()
    assert webhook.titles() == [FIRING]
    body = webhook.messages[0]["message"].splitlines()
    assert body[0] == FIRING
    assert "failed at" in body[1] and str(data_dir) in body[1]
    assert "https://backups.example.com/sources/files/" in body
    event = AlertEvent.objects.get()
    assert body[-1].startswith(f"Alert #{event.alert_id}, event #{event.pk}, at ")

    mend_folder(data_dir)
    assert backup(watched).status == "succeeded"
    notifications_deliver()
    housekeeping_run()
    notifications_deliver()
    assert webhook.titles() == [FIRING, RESOLVED]
    assert Alert.objects.get().state == "resolved"
    assert Notification.objects.filter(status="delivered").count() == 2


def test_a_source_folder_removed_between_backups_notifies_once_within_a_housekeeping_pass(
    watched, data_dir, webhook
):
    assert backup(watched).status == "succeeded"
    break_folder(data_dir)
    for _ in range(2):  # no backup runs: housekeeping alone notices, and says it once
        housekeeping_run()
        notifications_deliver()
    assert webhook.titles() == ["[FIRING] Source unreachable: files"]
    assert f"The directory {data_dir} does not exist." in webhook.messages[0]["message"]

    mend_folder(data_dir)
    housekeeping_run()
    notifications_deliver()
    assert webhook.titles() == [
        "[FIRING] Source unreachable: files",
        "[RESOLVED] Source unreachable: files",
    ]


def test_an_smtp_target_receives_the_mail(watched, data_dir, mailbox, settings, tmp_path):
    settings.APPRISE_CONFIG = write_config(tmp_path / "mail.yml", [(mailbox.url, "ops")])
    break_folder(data_dir)
    backup(watched)
    assert notifications_deliver() == {"sent": 1, "failed": 0}
    (mail,) = mailbox.messages
    assert mail.rcpt_tos == ["oncall@example.com"]
    text = mail.content.decode()
    assert f"Subject: {FIRING}" in text
    assert "https://backups.example.com/sources/files/" in text


def test_a_silenced_source_notifies_nobody_until_the_silence_ends(watched, data_dir, webhook):
    backup(watched)
    silence_create(source=watched, condition="", duration=timedelta(hours=1), actor=None)
    break_folder(data_dir)
    backup(watched)
    notifications_deliver()
    alert = Alert.objects.get()
    assert alert.state == "firing"
    assert webhook.messages == []
    assert AlertEvent.objects.get().notify == "silenced"

    later = timezone.now() + timedelta(minutes=61)
    alerts_evaluate(source_ids=[watched.pk], now=later)
    notifications_deliver()
    assert webhook.titles() == [FIRING]
    assert "silence ended" in AlertEvent.objects.get().notify_note


def test_a_silence_of_a_condition_holds_only_that_condition(watched, data_dir, webhook):
    silence_create(source=None, condition="rpo_breached", duration=timedelta(hours=1), actor=None)
    break_folder(data_dir)
    backup(watched)
    notifications_deliver()
    assert webhook.titles() == [FIRING]


def test_an_alert_that_fires_and_resolves_while_silenced_sends_nothing(watched, data_dir, webhook):
    backup(watched)
    silence = silence_create(source=watched, condition="", duration=timedelta(hours=1), actor=None)
    break_folder(data_dir)
    backup(watched)
    mend_folder(data_dir)
    backup(watched)
    silence_end(silence=silence, actor=None)
    alerts_evaluate()
    notifications_deliver()
    assert webhook.messages == []
    assert list(AlertEvent.objects.order_by("pk").values_list("state", "notify")) == [
        ("firing", "silenced"),
        ("resolved", "unsent"),
    ]


def test_an_acknowledgement_stops_reminders_and_ends_when_the_alert_resolves(
    watched, data_dir, webhook, settings, admin_user
):
    settings.ALERT_REMIND_S = 600
    backup(watched)
    break_folder(data_dir)
    backup(watched)
    notifications_deliver()
    start = timezone.now()
    alerts_evaluate(source_ids=[watched.pk], now=start + timedelta(minutes=11))
    notifications_deliver()
    assert webhook.titles() == [FIRING, "[STILL FIRING] Backup failed: files"]

    alert = alert_acknowledge(alert=Alert.objects.get(), actor=admin_user, note="on it")
    assert (alert.acknowledged_by, alert.ack_note) == (admin_user, "on it")
    for minutes in (25, 40, 55):
        alerts_evaluate(source_ids=[watched.pk], now=start + timedelta(minutes=minutes))
        notifications_deliver()
    assert len(webhook.messages) == 2

    mend_folder(data_dir)
    backup(watched)
    notifications_deliver()
    assert webhook.titles()[-1] == RESOLVED
    assert Alert.objects.get().acknowledged_at is None
    with pytest.raises(AlertRefused, match="not firing"):
        alert_acknowledge(alert=Alert.objects.get(), actor=admin_user)

    break_folder(data_dir)
    backup(watched)
    notifications_deliver()
    assert webhook.titles()[-1] == FIRING
    assert Alert.objects.get().acknowledged_by is None


def test_a_graver_alert_replaces_a_milder_one_without_a_resolved_message(
    watched, webhook, settings
):
    make_run(watched, ago_s=60)
    now = timezone.now()
    alerts_evaluate(source_ids=[watched.pk], now=now + timedelta(minutes=100))
    alerts_evaluate(source_ids=[watched.pk], now=now + timedelta(minutes=130))
    notifications_deliver()
    assert webhook.titles() == ["[FIRING] RPO at risk: files", "[FIRING] RPO breached: files"]
    at_risk = AlertEvent.objects.get(alert__condition="rpo_at_risk", state="resolved")
    assert at_risk.notify == "superseded"


def test_two_evaluations_racing_queue_one_message(watched, data_dir, webhook):
    break_folder(data_dir)
    backup(watched)
    stale = Alert.objects.get()
    Alert.objects.filter(pk=stale.pk).update(notified_state="")
    stale.notified_state = ""
    alerts_evaluate()  # the first evaluation claims it
    stale_copy = Alert.objects.get()
    stale_copy.notified_state = ""  # what a second evaluator read before the first wrote
    queued = alerts_service._reconcile(
        stale_copy, silences=[], firing=set(), router=alerts_service._Router(), now=timezone.now()
    )
    assert queued is False
    assert Notification.objects.count() == 1


def test_a_failing_target_is_retried_with_backoff_and_the_failure_recorded(
    watched, data_dir, webhook
):
    webhook.status = 500
    break_folder(data_dir)
    backup(watched)
    assert notifications_deliver() == {"sent": 0, "failed": 1}
    row = Notification.objects.get()
    assert (row.status, row.attempts) == ("pending", 1)
    assert row.last_error
    assert timedelta(seconds=25) < row.next_attempt_at - timezone.now() <= timedelta(seconds=30)
    assert notifications_deliver() == {"sent": 0, "failed": 0}  # not due yet

    webhook.status = 200
    Notification.objects.update(next_attempt_at=timezone.now())
    assert notifications_deliver() == {"sent": 1, "failed": 0}
    row.refresh_from_db()
    assert (row.status, row.attempts, row.last_error) == ("delivered", 2, "")


def test_without_apprise_config_alerts_are_kept_and_nobody_is_notified(watched, data_dir, settings):
    settings.APPRISE_CONFIG = None
    break_folder(data_dir)
    backup(watched)
    event = AlertEvent.objects.get()
    assert (event.notify, event.notify_note) == ("off", "APPRISE_CONFIG is not set.")
    assert not Notification.objects.exists()


def test_an_alert_goes_to_the_owners_tag_when_the_source_names_none(
    watched, data_dir, webhook, settings, tmp_path
):
    other = Webhook().start()
    try:
        settings.APPRISE_CONFIG = write_config(
            tmp_path / "two.yml", [(webhook.url, "ops"), (other.url, "web-oncall")]
        )
        settings.NOTIFY_OWNER_TAGS = {"web-team": "web-oncall"}
        watched.notify = ""
        watched.owner = "web-team"
        watched.save()
        break_folder(data_dir)
        backup(watched)
        notifications_deliver()
        assert (webhook.messages, other.titles()) == ([], [FIRING])
    finally:
        other.stop()


def test_an_alert_of_an_unknown_tag_is_recorded_as_reaching_nobody(watched, data_dir):
    watched.notify = "nobody-has-this"
    watched.save()
    break_folder(data_dir)
    backup(watched)
    event = AlertEvent.objects.get()
    assert event.notify == "no_target"
    assert "nobody-has-this" in event.notify_note


@pytest.mark.django_db(transaction=True)
def test_the_web_process_notifies_when_no_worker_has_beaten(
    client, settings, tmp_path, webhook, monkeypatch
):
    settings.APPRISE_CONFIG = write_config(tmp_path / "apprise.yml", [(webhook.url, "ops")])
    settings.NOTIFY_DEFAULT_TAGS = ["ops"]
    WorkerBeat.beat("housekeeping", at=timezone.now() - timedelta(minutes=10))
    monkeypatch.setattr(alerts_service, "_watched_at", 0.0)
    assert client.get("/healthz").json()["workers"] == "down"
    assert webhook.wait_for(1)
    assert webhook.titles() == ["[FIRING] Workers down: all workers"]
    client.get("/healthz")  # judged again: no second message
    assert not webhook.wait_for(2, timeout=1)

    WorkerBeat.beat("housekeeping")
    housekeeping_run()
    notifications_deliver()
    assert webhook.titles()[-1] == "[RESOLVED] Workers down: all workers"
    connection.close()


def test_rto_unproven_waits_for_a_backup_and_a_drill_interval_then_fires(
    watched, webhook, settings
):
    policy = watched.policy
    policy.rto_s, policy.drill_every_s = 1800, 7 * 86400
    policy.save()
    now = timezone.now()
    alerts_evaluate(source_ids=[watched.pk], now=now)
    make_run(watched, ago_s=60)
    alerts_evaluate(source_ids=[watched.pk], now=now + timedelta(days=6))
    assert not Alert.objects.filter(condition="rto_unproven").exists()
    alerts_evaluate(source_ids=[watched.pk], now=now + timedelta(days=8))
    notifications_deliver()
    assert "[FIRING] RTO unproven: files" in webhook.titles()
    body = webhook.messages[-1]["message"]
    assert "No restore drill has timed a restore yet; RTO target 30m; drills every 7d" in body


def test_workers_that_never_beat_are_down_only_once_they_had_time_to_start(
    db, settings, monkeypatch
):
    # A new install: the web server and the workers start together, and the first
    # housekeeping comes within a minute; no false "workers down" meanwhile.
    settings.WORKERS_SILENT_S = 180
    monkeypatch.setattr(alerts_service, "_judging_since", timezone.now())

    assert alerts_service.alerts_watch_workers(force=True)["down"] is False
    assert not Alert.objects.filter(condition="workers_down").exists()

    started = timezone.now() - timedelta(seconds=181)
    monkeypatch.setattr(alerts_service, "_judging_since", started)
    assert alerts_service.alerts_watch_workers(force=True)["down"] is True
    alert = Alert.objects.get(condition="workers_down")
    assert alert.is_firing and "No worker has run housekeeping yet" in alert.detail

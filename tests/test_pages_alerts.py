"""The alert pages: firing first on the overview with who acknowledged, an alert's history
and deliveries, acknowledging and silencing from the browser (audited), bounded queries."""

import shutil
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from backups.models import Alert, AlertEvent, AuditEvent, Notification, Run, Silence
from backups.services.alerts import alerts_housekeeping
from backups.services.backup import backup_request
from backups.services.execution import run_execute
from backups.services.notify import notifications_deliver
from tests.pages_helpers import make_policy, make_source

# Runs are executed as a worker does, which opens its own database connection.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def broken(watched, data_dir, webhook):
    """A source whose folder was removed and whose backup then failed, notified."""
    source = watched
    run_execute(backup_request(source=source, trigger=Run.Trigger.CLI).pk)
    shutil.rmtree(data_dir)
    run_execute(backup_request(source=source, trigger=Run.Trigger.CLI).pk)
    notifications_deliver()
    return source


def fire(source, condition="rpo_breached", **fields) -> Alert:
    now = timezone.now()
    return Alert.objects.create(
        source=source,
        condition=condition,
        state=fields.pop("state", "firing"),
        since=now,
        fired_at=now,
        summary=f"[FIRING] {condition}: {source.name}",
        **fields,
    )


def test_breaking_a_source_shows_firing_first_is_acknowledged_and_resolves_once(
    client, operator, broken, data_dir, webhook
):
    client.force_login(operator)
    page = client.get(reverse("overview")).text
    assert page.index('id="firing-alerts"') < page.index('id="sources"')
    assert "[FIRING] Backup failed: files" in page
    alert = Alert.objects.get()

    response = client.post(reverse("alert-ack", args=[alert.pk]), {"note": "looking"})
    assert response.status_code == 302
    panel = client.get(reverse("overview")).text
    assert "by <strong>olivia</strong>" in panel and "looking" in panel
    event = AuditEvent.objects.get(action="alert.acknowledge")
    assert (event.actor, event.source, event.detail["note"]) == (operator, broken, "looking")

    data_dir.mkdir()
    (data_dir / "back.txt").write_text("fixed\n")
    run_execute(backup_request(source=broken, trigger=Run.Trigger.CLI).pk)
    notifications_deliver()
    assert webhook.titles() == ["[FIRING] Backup failed: files", "[RESOLVED] Backup failed: files"]
    assert "Nothing is firing." in client.get(reverse("overview")).text


def test_the_alert_page_shows_the_history_and_where_each_message_went(
    client, viewer, broken, webhook
):
    client.force_login(viewer)
    alert = Alert.objects.get()
    page = client.get(reverse("alert-detail", args=[alert.pk])).text
    event = AlertEvent.objects.get()
    assert f"event #{event.pk}" in page
    assert f"<code>json://127.0.0.1:{webhook.port}/hook" in page
    assert 'data-status="delivered"' in page
    assert "Acknowledge</button>" not in page  # a viewer may look, not acknowledge


def test_the_alerts_page_shows_the_last_delivery_per_target(client, viewer, broken, webhook):
    client.force_login(viewer)
    page = client.get(reverse("alert-list")).text
    assert 'id="deliveries"' in page
    assert f"json://127.0.0.1:{webhook.port}/hook" in page
    assert "[FIRING] Backup failed: files" in page


def test_an_operator_silences_a_source_from_the_browser(client, operator, broken):
    client.force_login(operator)
    response = client.post(
        reverse("silence-add"),
        {"source": "files", "condition": "", "duration": "2h", "note": "maintenance"},
    )
    assert response.status_code == 302
    silence = Silence.objects.get()
    assert (silence.source, silence.created_by, silence.note) == (broken, operator, "maintenance")
    assert timedelta(minutes=119) < silence.until - timezone.now() <= timedelta(hours=2)
    assert AuditEvent.objects.get(action="alert.silence").actor == operator
    assert 'data-status="silenced"' in client.get(reverse("overview")).text

    client.post(reverse("silence-end", args=[silence.pk]))
    silence.refresh_from_db()
    assert silence.until <= timezone.now()
    assert AuditEvent.objects.filter(action="alert.unsilence").count() == 1


def test_a_silence_naming_nothing_or_too_long_is_refused_with_a_sentence(client, operator, broken):
    client.force_login(operator)
    response = client.post(reverse("silence-add"), {"duration": "1h"}, follow=True)
    assert "Nothing was silenced: Name a source, a condition, or both" in response.text
    response = client.post(
        reverse("silence-add"), {"source": "files", "duration": "60d"}, follow=True
    )
    assert "A silence lasts from 1m to" in response.text
    response = client.post(
        reverse("silence-add"), {"source": "files", "duration": "x"}, follow=True
    )
    assert "Nothing was silenced" in response.text
    response = client.post(
        reverse("silence-add"), {"source": "nosuch", "duration": "1h"}, follow=True
    )
    assert "there is no source named" in response.text
    assert not Silence.objects.exists()


def test_acknowledging_a_resolved_alert_says_so(client, operator, db):
    source = make_source("web", policy=make_policy())
    alert = fire(source, state="resolved")
    client.force_login(operator)
    response = client.post(reverse("alert-ack", args=[alert.pk]), follow=True)
    assert "is not firing: nothing to acknowledge" in response.text
    assert not AuditEvent.objects.filter(action="alert.acknowledge").exists()


@pytest.mark.parametrize("count", [2, 20])
def test_alert_pages_cost_the_same_however_many_alerts(
    client, viewer, count, django_assert_num_queries
):
    policy = make_policy()
    for n in range(count):
        source = make_source(f"s{n:02}", policy=policy)
        alert = fire(source)
        event = AlertEvent.objects.create(
            alert=alert, at=timezone.now(), state="firing", title=alert.summary, body="b"
        )
        Notification.objects.create(event=event, target_key=f"k{n}", target=f"json://t{n}/")
        Silence.objects.create(source=source, until=timezone.now() + timedelta(hours=1))
    client.force_login(viewer)
    # 2 (session, user) + 2 (the viewer's permissions) + 1 (a page of alerts with their
    # sources) + 1 (silences in force) + 1 (each target's newest message, with its alert).
    with django_assert_num_queries(7):
        response = client.get(reverse("alert-list"))
    assert len(response.context["rows"]) == count
    # 2 + 2 + 1 (the alert) + 1 (its events) + 1 (their messages) + 1 (silences).
    with django_assert_num_queries(8):
        client.get(reverse("alert-detail", args=[alert.pk]))


def test_housekeeping_forgets_old_sent_messages_but_each_targets_last_delivery(db):
    source = make_source("s", policy=make_policy())
    alert = fire(source)
    long_ago = timezone.now() - timedelta(days=91)
    lately = timezone.now() - timedelta(days=5)

    def message(key: str, status: str, created_at) -> Notification:
        # One event per message: a target gets one message per transition.
        event = AlertEvent.objects.create(
            alert=alert, at=created_at, state="firing", title=alert.summary, body="b"
        )
        return Notification.objects.create(
            event=event,
            target_key=key,
            target=f"json://{key}/",
            status=status,
            created_at=created_at,
        )

    sent_long_ago = message("a", "delivered", long_ago)
    last_of_a = message("a", "delivered", long_ago + timedelta(hours=1))  # old, yet its last
    given_up_long_ago = message("b", "failed", long_ago)
    still_trying = message("b", "pending", long_ago + timedelta(hours=1))
    sent_lately = message("c", "delivered", lately)
    message("c", "delivered", lately + timedelta(hours=1))

    history = set(AlertEvent.objects.values_list("pk", flat=True))
    report = alerts_housekeeping()

    left = set(Notification.objects.values_list("pk", flat=True))
    assert not {sent_long_ago.pk, given_up_long_ago.pk} & left
    assert {last_of_a.pk, still_trying.pk, sent_lately.pk} <= left
    assert report["messages_forgotten"] == 2
    assert history <= set(AlertEvent.objects.values_list("pk", flat=True))  # it stays

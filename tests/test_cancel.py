"""Cancelling runs: from the page, the command line and the service; always audited."""

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from backups.engine.errors import Cancelled
from backups.models import AuditEvent, Run
from backups.services.runs import RunHooks, run_cancel, run_claim

pytestmark = pytest.mark.django_db


def test_a_queued_run_is_cancelled_at_once(source, operator):
    run = Run.objects.create(source=source)
    assert run_cancel(run=run, user=operator) is True
    run.refresh_from_db()
    assert run.status == Run.Status.CANCELLED and "olivia" in run.error
    # The per-source lock is free again.
    assert Run.objects.create(source=source).status == Run.Status.QUEUED
    assert AuditEvent.objects.get(action="run.cancel").actor == operator


def test_a_running_run_stops_at_its_next_heartbeat(source):
    run = run_claim(Run.objects.create(source=source).pk, "host:1:a")
    hooks = RunHooks(run)
    assert run_cancel(run=run) is True
    hooks.beat()
    with pytest.raises(Cancelled):
        hooks.check()


def test_an_ended_run_cannot_be_cancelled(source):
    run = Run.objects.create(source=source, status=Run.Status.SUCCEEDED)
    assert run_cancel(run=run) is False
    with pytest.raises(CommandError) as caught:
        call_command("cancel", str(run.pk))
    assert caught.value.returncode == 2
    assert not AuditEvent.objects.exists()


def test_the_run_page_offers_cancel_to_operators_only(client, source, operator, viewer):
    run = Run.objects.create(source=source)
    url = reverse("run-detail", args=[run.pk])
    client.force_login(viewer)
    assert "Cancel run" not in client.get(url).text
    assert client.post(reverse("run-cancel", args=[run.pk])).status_code == 403
    client.force_login(operator)
    assert "Cancel run" in client.get(url).text
    response = client.post(reverse("run-cancel", args=[run.pk]))
    assert response.status_code == 302
    run.refresh_from_db()
    assert run.status == Run.Status.CANCELLED


def test_cancelling_a_run_that_is_publishing_says_it_may_be_too_late(
    client, source, operator, capsys
):
    run = run_claim(Run.objects.create(source=source).pk, "host:1:a")
    assert run.mark_publishing() is True

    call_command("cancel", str(run.pk))
    out = capsys.readouterr().out
    assert "already publishing its result" in out and "otherwise it finishes" in out

    client.force_login(operator)
    response = client.post(reverse("run-cancel", args=[run.pk]), follow=True)
    assert "already publishing its result" in response.text
